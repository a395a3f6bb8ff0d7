//! Helpers for the Raft storage tests: a glommio executor with a tokio timer at hand (for
//! openraft's conformance tests), a minimal in-memory state machine, and entry builders.
#![allow(dead_code)] // each test crate uses a subset

use engine::command::entry_kind;
use engine::log::WriterOptions;
use engine::raft::entry_record::log_id;
use engine::raft::types::{Entry, LogId, Membership, StorageError};
use engine::raft::{EntryData, GroupResult, NodeAddr, RaftLogStore, SnapshotHandle, WalletRaft};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use std::path::Path;

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
    let joined = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let _entered = handle.enter();
            f().await
        })
        .unwrap()
        .join();
    match joined {
        Ok(value) => value,
        Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p))) => {
            std::panic::resume_unwind(p)
        }
        Err(other) => panic!("glommio executor: {other}"),
    }
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
