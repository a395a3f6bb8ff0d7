//! walletd's openraft type configuration (`WalletRaft`, docs/RAFT_PLAN.md §2.1) and the types
//! it names.
//!
//! Node ids are `u64` (openraft reserves none of them; 0 is valid). Log ids are
//! `(term, index)` (feature `single-term-leader`), which is what our record header stores.

use crate::command::entry_kind;
use crate::model::TransferId;
use crate::partition::PartitionId;
use crate::raft::runtime::GlommioRuntime;
use crate::result_code::ResultCode;
use crate::tcc::TccMessage;
use bytes::Bytes;
use std::path::PathBuf;

openraft::declare_raft_types!(
    /// The Raft of one partition.
    pub WalletRaft:
        D            = EntryData,
        R            = GroupResult,
        NodeId       = u64,
        Node         = NodeAddr,
        Entry        = openraft::Entry<WalletRaft>,
        SnapshotData = SnapshotHandle,
        AsyncRuntime = GlommioRuntime,
        Responder    = openraft::impls::OneshotResponder<WalletRaft>,
);

/// openraft's storage error, as every storage method returns it.
pub type StorageError = openraft::StorageError<u64>;
/// A log entry's id: (term, index) in Raft's index space (see `log_store` for how it maps
/// onto the segment log's indexes).
pub type LogId = openraft::LogId<u64>;
/// One Raft log entry of walletd.
pub type Entry = openraft::Entry<WalletRaft>;
/// A membership config of walletd's Raft.
pub type Membership = openraft::Membership<u64, NodeAddr>;

/// The payload of a normal Raft entry: exactly what one log record carries besides its index
/// and term, so a follower writes the leader's record as is.
///
/// - `kind`: the record kind (`command::entry_kind`: a command batch today, a group commit
///   later). Never `BLANK` or `MEMBERSHIP`: those are openraft's own payloads.
/// - `timestamp_ns`: the log time the leader assigned (ns since the Unix epoch); every replica
///   applies the entry at this time.
/// - `body`: the record body (an rkyv archive). `Bytes`, because openraft clones entries
///   (replication, the responder) and a clone must not copy the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryData {
    kind: u16,
    timestamp_ns: u64,
    body: Bytes,
}

impl EntryData {
    /// Panics on a kind reserved for openraft's blank and membership entries: encoding one as
    /// a normal entry would make it read back as something else.
    pub fn new(kind: u16, timestamp_ns: u64, body: Bytes) -> EntryData {
        assert!(
            !entry_kind::is_raft(kind),
            "record kind {kind} is reserved for openraft's own entries"
        );
        EntryData {
            kind,
            timestamp_ns,
            body,
        }
    }
    pub fn kind(&self) -> u16 {
        self.kind
    }
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// What applying one entry produced, for the client that proposed it (openraft hands it to
/// the entry's responder on the leader). Raft's own entries (blank, membership) produce the
/// default: no items, timestamp 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupResult {
    /// One code per item of the entry's command batch (`Pending` for a TC/C still running).
    pub results: Vec<ResultCode>,
    /// The timestamp the entry was applied at: the leader's, or just above the last one used
    /// when the leader's was not above it (`PartitionState::effective_timestamp`). Item `i`
    /// got `timestamp + i`.
    pub timestamp: u64,
    /// TC/C messages to other partitions (shipped by the leader only, RAFT_PLAN §7).
    pub outbox: Vec<(PartitionId, TccMessage)>,
    /// TC/C transfers of this partition that reached their final result in this entry.
    pub resolved: Vec<(TransferId, ResultCode)>,
}

/// Where a node listens, as the membership config records it (openraft keeps one per member
/// and hands it to the network factory). Strings of the form `host:port`, not resolved
/// addresses: a host name is a valid address, and openraft needs a `Default` (empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddr {
    /// The node-to-node link (Raft messages, RAFT_PLAN §5).
    pub raft_addr: String,
    /// The client protocol: what a `not_leader` answer points clients to.
    pub client_addr: String,
}

/// A snapshot as openraft hands it around (feature `generic-snapshot-data`: the type is ours,
/// and so is its transfer): the path of a snapshot file in the engine's format (`snapshot.rs`:
/// checksummed records, the engine's `SnapshotMeta` first). openraft's own meta for it (last
/// log id, last membership, snapshot id) travels beside it in `openraft::Snapshot`, and lies
/// beside the file on disk (`raft::snapshot_files`).
///
/// A handle from `begin_receiving_snapshot` names a file that does not exist yet: the
/// transport writes the received bytes there, then installs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotHandle {
    pub path: PathBuf,
}
