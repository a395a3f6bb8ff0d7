//! Operation codes and protocol-level error codes (see docs/PROTOCOL.md).

/// What a frame asks for. The reply carries the same code with the REPLY flag.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Handshake = 1,
    Ping = 2,
    Status = 3,
    CreateAccounts = 16,
    CreateTransfers = 17,
    LookupAccounts = 18,
    LookupTransfers = 19,
    /// Read model: a page of an account's history.
    GetAccountHistory = 20,
    /// Read model: an account's balance as of a timestamp or position.
    GetBalanceAt = 21,
    /// Read model: position and lag per partition.
    ReadModelStatus = 22,
    /// Read model: subscribe to changes (reply, then push frames with the same request id).
    Subscribe = 23,
    /// The state digest of every partition (a full pass over each partition's state).
    StateDigest = 24,
    /// Which node leads each partition and where clients reach every node
    /// (`partition_map.rs`).
    PartitionMap = 25,
    /// Cluster administration: init, add or remove a node, link fault injection
    /// (`cluster_admin.rs`).
    ClusterChange = 26,
    /// Each partition's Raft group as the answering node sees it: role, term, leader, log,
    /// applied and commit indexes, and on the leader every member's matched index
    /// (`raft_status.rs`).
    RaftStatus = 27,
    /// Read model: money per currency in every partition (`totals.rs`).
    GetTotals = 28,
    /// Node link only (`raft_link`, its own listener): a batch of Raft messages of any
    /// partitions; its reply (REPLY flag, "RaftBatchReply") batches answers the same way.
    RaftBatch = 32,
}

impl Operation {
    pub fn from_u8(value: u8) -> Option<Operation> {
        Some(match value {
            1 => Operation::Handshake,
            2 => Operation::Ping,
            3 => Operation::Status,
            16 => Operation::CreateAccounts,
            17 => Operation::CreateTransfers,
            18 => Operation::LookupAccounts,
            19 => Operation::LookupTransfers,
            20 => Operation::GetAccountHistory,
            21 => Operation::GetBalanceAt,
            22 => Operation::ReadModelStatus,
            23 => Operation::Subscribe,
            24 => Operation::StateDigest,
            25 => Operation::PartitionMap,
            26 => Operation::ClusterChange,
            27 => Operation::RaftStatus,
            28 => Operation::GetTotals,
            32 => Operation::RaftBatch,
            _ => return None,
        })
    }
}

/// Why a request was refused as a whole (the body of an error frame). Framing errors
/// (1..=5) close the connection after the error frame; the others leave it open.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad_magic")]
    BadMagic = 1,
    #[error("bad_version")]
    BadVersion = 2,
    #[error("header_checksum")]
    HeaderChecksum = 3,
    #[error("frame_too_large")]
    FrameTooLarge = 4,
    #[error("body_checksum")]
    BodyChecksum = 5,
    #[error("unknown_operation")]
    UnknownOperation = 6,
    #[error("malformed_body")]
    MalformedBody = 7,
    #[error("handshake_required")]
    HandshakeRequired = 8,
    #[error("auth_failed")]
    AuthFailed = 9,
    #[error("too_many_items")]
    TooManyItems = 10,
    #[error("shutting_down")]
    ShuttingDown = 11,
    #[error("cluster_mismatch")]
    ClusterMismatch = 12,
    /// A read that needs the leader (a lookup) reached a node that does not lead one of the
    /// partitions asked: ask the leader (the partition map says which node it is).
    #[error("not_leader")]
    NotLeader = 13,
}

impl ProtocolError {
    pub fn from_u16(value: u16) -> Option<ProtocolError> {
        use ProtocolError::*;
        Some(match value {
            1 => BadMagic,
            2 => BadVersion,
            3 => HeaderChecksum,
            4 => FrameTooLarge,
            5 => BodyChecksum,
            6 => UnknownOperation,
            7 => MalformedBody,
            8 => HandshakeRequired,
            9 => AuthFailed,
            10 => TooManyItems,
            11 => ShuttingDown,
            12 => ClusterMismatch,
            13 => NotLeader,
            _ => return None,
        })
    }

    /// True when the connection is closed after this error (the byte stream is untrusted).
    pub fn closes_connection(self) -> bool {
        (self as u16) <= 5
            || self == ProtocolError::AuthFailed
            || self == ProtocolError::HandshakeRequired
    }
}

impl From<crate::frame::FrameError> for ProtocolError {
    fn from(e: crate::frame::FrameError) -> ProtocolError {
        use crate::frame::FrameError::*;
        match e {
            BadMagic(_) => ProtocolError::BadMagic,
            BadVersion(_) => ProtocolError::BadVersion,
            HeaderChecksum => ProtocolError::HeaderChecksum,
            TooLarge(_) => ProtocolError::FrameTooLarge,
            BodyChecksum => ProtocolError::BodyChecksum,
        }
    }
}
