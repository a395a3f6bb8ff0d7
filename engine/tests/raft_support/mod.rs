//! Helpers for the Raft storage tests: a glommio executor with a tokio timer at hand (for
//! openraft's conformance tests), a minimal in-memory state machine, entry builders, a
//! network for one-voter clusters, and a deterministic ledger workload.
#![allow(dead_code)] // each test crate uses a subset

#[path = "../log_support/mod.rs"]
mod log_support;

use engine::command::{entry_kind, CommandBatch, NewAccount, NewTransfer};
use engine::log::WriterOptions;
use engine::model::Currency;
use engine::raft::entry_record::log_id;
use engine::raft::types::{Entry, LogId, Membership, StorageError};
use engine::raft::{EntryData, GroupResult, NodeAddr, RaftLogStore, SnapshotHandle, WalletRaft};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Config, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use std::path::Path;
use std::sync::Arc;

/// Segments small enough that a few hundred entries rotate through many of them.
pub const SEGMENT_BYTES: u64 = 16 << 10;

pub fn options() -> WriterOptions {
    WriterOptions {
        segment_bytes: SEGMENT_BYTES,
        pending_bytes_max: (SEGMENT_BYTES / 4) as usize,
        ..Default::default()
    }
}

pub async fn open_store(dir: &Path) -> RaftLogStore {
    RaftLogStore::open(dir, options()).await.unwrap()
}

/// Runs `f` on a fresh glommio executor, with a tokio runtime entered on that thread: some
/// conformance tests wait with `tokio::time::sleep` (after a purge, "which may run in the
/// background"), and its timer is driven by the runtime's worker thread. Nothing else of
/// tokio runs. A panic inside `f` resumes in the caller.
pub fn on_glommio_with_tokio_timer<
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let handle = tokio.handle().clone();
    log_support::on_glommio(move || async move {
        let _entered = handle.enter();
        f().await
    })
}

/// A normal entry at raft index `index` of `term`, with a body derived from the index (so a
/// misplaced body is caught) and sizes from 0 to ~1.5 KiB (so segments fill unevenly).
pub fn normal(term: u64, index: u64) -> Entry {
    let body: Vec<u8> = (0..(index * 97) % 1500)
        .map(|i| (index + i) as u8)
        .collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(EntryData::new(
            entry_kind::CREATE_TRANSFERS,
            1_000_000 + index,
            body.into(),
        )),
    }
}

pub fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

/// A membership entry: voters 1..=3 with addresses, learner 4.
pub fn membership(term: u64, index: u64) -> Entry {
    let nodes = (1..=4u64)
        .map(|n| {
            let addr = NodeAddr {
                raft_addr: format!("10.0.0.{n}:7001"),
                client_addr: format!("10.0.0.{n}:7000"),
            };
            (n, addr)
        })
        .collect::<std::collections::BTreeMap<_, _>>();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![[1, 2, 3].into()], nodes)),
    }
}

/// The entries `from..=to` of `term`: every 7th blank, every 11th a membership, the rest
/// normal.
pub fn entries(term: u64, from: u64, to: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| match i {
            i if i % 7 == 3 => blank(term, i),
            i if i % 11 == 5 => membership(term, i),
            i => normal(term, i),
        })
        .collect()
}

/// The smallest state machine openraft's storage tests accept: it remembers the last applied
/// id and membership, nothing else. Its "snapshots" are that metadata alone (openraft builds
/// one at start when the log was purged); installing one is refused. The suite's
/// state-machine tests are not run against it: they would test this double, not the log store.
#[derive(Default)]
pub struct TestStateMachine {
    applied: Option<LogId>,
    membership: StoredMembership<u64, NodeAddr>,
}

/// Builds a metadata-only snapshot of what was applied when it was made.
pub struct MetaOnlySnapshot(SnapshotMeta<u64, NodeAddr>);

fn no_snapshots() -> StorageError {
    StorageIOError::read_snapshot(
        None,
        openraft::AnyError::error("the test state machine installs no snapshots"),
    )
    .into()
}

impl RaftSnapshotBuilder<WalletRaft> for MetaOnlySnapshot {
    async fn build_snapshot(&mut self) -> Result<Snapshot<WalletRaft>, StorageError> {
        Ok(Snapshot {
            meta: self.0.clone(),
            snapshot: Box::new(SnapshotHandle::default()),
        })
    }
}

impl RaftStateMachine<WalletRaft> for TestStateMachine {
    type SnapshotBuilder = MetaOnlySnapshot;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, NodeAddr>), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            if let EntryPayload::Membership(m) = entry.payload {
                self.membership = StoredMembership::new(Some(entry.log_id), m);
            }
            results.push(GroupResult::default());
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> MetaOnlySnapshot {
        MetaOnlySnapshot(SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("{:?}", self.applied),
        })
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotHandle>, StorageError> {
        Err(no_snapshots())
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, NodeAddr>,
        _snapshot: Box<SnapshotHandle>,
    ) -> Result<(), StorageError> {
        Err(no_snapshots())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<WalletRaft>>, StorageError> {
        Ok(None)
    }
}

/// A one-voter test cluster's timing: elections within a few hundred ms.
pub fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

/// A network with no peers: a one-voter cluster never sends anything.
pub use engine::raft::NoPeers;

/// The accounts of `ledger_batches`: id 1 is an issuer (may go 10^12 below zero), 2..=20 are
/// wallets; all EUR.
pub const LEDGER_ACCOUNTS: u128 = 20;

/// A deterministic ledger workload for one partition of one: the accounts (plus a repeat and
/// an invalid id, rejected), then `transfer_batches` batches of 40 transfers from a fixed
/// linear congruential sequence (so the bytes, and every digest over them, never depend on a
/// library's random generator): issuance, wallet-to-wallet moves that some lack the funds for,
/// repeated transfer ids (answered `exists` or rejected as different) and an empty batch.
pub fn ledger_batches(transfer_batches: u64) -> Vec<CommandBatch> {
    let eur = Currency::parse("EUR").unwrap();
    let mut accounts: Vec<NewAccount> = (1..=LEDGER_ACCOUNTS)
        .map(|id| NewAccount {
            id,
            currency: eur,
            flags: 0,
            floor: if id == 1 { -1_000_000_000_000 } else { 0 },
            user_data: id as u64,
        })
        .collect();
    accounts.push(accounts[3]);
    accounts.push(NewAccount {
        id: 0,
        ..accounts[0]
    });
    let mut batches = vec![CommandBatch::CreateAccounts(accounts)];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % n
    };
    for b in 0..transfer_batches {
        if b == transfer_batches / 2 {
            batches.push(CommandBatch::CreateTransfers(Vec::new()));
        }
        let transfers = (0..40)
            .map(|i| {
                let issue = i % 4 == 0;
                NewTransfer {
                    id: 1 + u128::from(next(b * 40 + 60)),
                    from: if issue { 1 } else { 2 + u128::from(next(19)) },
                    to: 2 + u128::from(next(19)),
                    amount: 1 + next(if issue { 5_000 } else { 2_000 }),
                    currency: eur,
                    user_data: i,
                }
            })
            .collect();
        batches.push(CommandBatch::CreateTransfers(transfers));
    }
    batches
}

/// A command batch's archived body, as a log record carries it.
pub fn encode(batch: &CommandBatch) -> bytes::Bytes {
    let mut body = rkyv::util::AlignedVec::<16>::new();
    batch.encode_into(&mut body);
    bytes::Bytes::copy_from_slice(&body)
}

/// The timestamp the single-node path would give batch `n` of `ledger_batches`: strictly above
/// every item of the batches before it.
pub fn ledger_timestamp(n: u64) -> u64 {
    1_700_000_000_000_000_000 + n * 1_000_000
}
