//! `RaftPartition`, openraft's state machine over `PartitionState`: openraft 0.9.25's own
//! storage conformance tests that involve the state machine (run against the real log store
//! and this state machine), then walletd's: Raft apply agrees with `apply_entry`, Raft's own
//! entries touch no balance, snapshots carry the state and the membership across, timestamps
//! are clamped alike on every replica, a single-node log's digest is what it was before the
//! clamp existed, and a one-voter openraft cluster moves money through `client_write`.

mod raft_support;

use engine::command::{entry_kind, CommandBatch};
use engine::digest::state_digest;
use engine::raft::entry_record::log_id;
use engine::raft::types::{Entry, LogId};
use engine::raft::{EntryData, GroupResult, RaftPartition};
use engine::state_machine::{ApplyOutput, PartitionState};
use futures::executor::block_on;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use raft_support::{blank, encode, ledger_batches, ledger_timestamp, membership};
use std::path::Path;

/// openraft's storage conformance suite (`openraft::testing::Suite`), the tests that use the
/// state machine, each on its own glommio executor (see `raft_log_store.rs` for why not
/// `test_all`) with a real `RaftLogStore` and a `RaftPartition`, both in a fresh directory.
///
/// Not run: `get_initial_state_membership_from_log_and_sm` appends below its own purge point,
/// which the segment log refuses (see `raft_log_store.rs`). The log-only tests run in
/// `raft_log_store.rs`.
mod conformance {
    use super::raft_support::{on_glommio_with_tokio_timer, open_store};
    use engine::raft::types::StorageError;
    use engine::raft::{RaftLogStore, RaftPartition, WalletRaft};
    use openraft::testing::{StoreBuilder, Suite};

    /// Opens a store and a state machine in a fresh temporary directory, which the returned
    /// guard keeps alive. `transfer_snapshot` builds two this way (leader and follower).
    struct InTempDir;

    async fn open(dir: &std::path::Path) -> (RaftLogStore, RaftPartition) {
        let store = open_store(&dir.join("log")).await;
        let sm = RaftPartition::open(&dir.join("snapshots"), 0, 1).unwrap();
        (store, sm)
    }

    impl StoreBuilder<WalletRaft, RaftLogStore, RaftPartition, tempfile::TempDir> for InTempDir {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, RaftLogStore, RaftPartition), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let (store, sm) = open(dir.path()).await;
            Ok((dir, store, sm))
        }
    }

    type Tests = Suite<WalletRaft, RaftLogStore, RaftPartition, InTempDir, tempfile::TempDir>;

    macro_rules! conformance {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().to_path_buf();
                on_glommio_with_tokio_timer(move || async move {
                    let (store, sm) = open(&path).await;
                    Tests::$name(store, sm).await.unwrap();
                });
            }
        )*};
    }

    conformance!(
        last_applied_state,
        snapshot_meta,
        apply_single,
        apply_multiple,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
    );

    #[test]
    fn transfer_snapshot() {
        on_glommio_with_tokio_timer(|| async {
            Tests::transfer_snapshot(&InTempDir).await.unwrap()
        });
    }
}

/// The Raft entry of `batch` at raft index `index` of `term`, stamped `timestamp`.
fn command(term: u64, index: u64, batch: &CommandBatch, timestamp: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(EntryData::new(batch.kind(), timestamp, encode(batch))),
    }
}

/// The initial membership and the leader's blank (raft 0 and 1), then the ledger workload at
/// the single-node path's timestamps (raft 2..).
fn ledger_entries(transfer_batches: u64) -> Vec<Entry> {
    let mut entries = vec![membership(1, 0), blank(1, 1)];
    for (n, batch) in ledger_batches(transfer_batches).iter().enumerate() {
        entries.push(command(1, n as u64 + 2, batch, ledger_timestamp(n as u64)));
    }
    entries
}

/// Applies `entries` straight through `PartitionState::apply_entry`, as recovery replays a log
/// holding them (log index = raft index + 1), returning the state and each entry's results.
fn apply_directly(entries: &[Entry]) -> (PartitionState, Vec<GroupResult>) {
    let mut state = PartitionState::new(0, 1);
    let mut out = ApplyOutput::default();
    let mut results = Vec::new();
    for entry in entries {
        let (kind, timestamp, body) = match &entry.payload {
            EntryPayload::Normal(d) => (d.kind(), d.timestamp_ns(), d.body().to_vec()),
            EntryPayload::Blank => (entry_kind::BLANK, 0, Vec::new()),
            EntryPayload::Membership(_) => (entry_kind::MEMBERSHIP, 0, Vec::new()),
        };
        out.clear();
        let applied_at = state.effective_timestamp(timestamp);
        state
            .apply_entry(entry.log_id.index + 1, kind, &body, timestamp, &mut out)
            .unwrap();
        results.push(match kind {
            entry_kind::BLANK | entry_kind::MEMBERSHIP => GroupResult::default(),
            _ => GroupResult {
                results: out.results.clone(),
                timestamp: applied_at,
                outbox: out.outbox.clone(),
                resolved: out.resolved.clone(),
            },
        });
    }
    (state, results)
}

fn open_sm(dir: &Path) -> RaftPartition {
    RaftPartition::open(dir, 0, 1).unwrap()
}

fn digest_of(sm: &RaftPartition) -> u128 {
    state_digest(&sm.state().borrow())
}

fn applied(sm: &mut RaftPartition) -> Option<LogId> {
    block_on(sm.applied_state()).unwrap().0
}

#[test]
fn commands_through_raft_reach_the_state_and_results_of_apply_entry() {
    let dir = tempfile::tempdir().unwrap();
    let entries = ledger_entries(30);
    let (direct, direct_results) = apply_directly(&entries);
    let mut sm = open_sm(dir.path());
    // In uneven slices, as openraft hands committed entries over.
    let mut results = Vec::new();
    for slice in entries.chunks(7) {
        results.extend(block_on(sm.apply(slice.to_vec())).unwrap());
    }
    assert_eq!(results, direct_results);
    assert_eq!(digest_of(&sm), state_digest(&direct));
    assert_eq!(applied(&mut sm), Some(entries.last().unwrap().log_id));
    let state = sm.state();
    let state = state.borrow();
    assert_eq!(state.last_index(), entries.len() as u64);
    assert!(state.transfer_count() > 500, "{}", state.transfer_count());
    let total: i128 = state.totals_by_currency().iter().map(|(_, t)| t).sum();
    assert_eq!(total, 0, "money is only moved, never made");
}

#[test]
fn blank_and_membership_entries_take_an_index_and_touch_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let batches = ledger_batches(6);
    // Commands alone, and the same commands with Raft entries between and around them.
    let commands_only: Vec<Entry> = batches
        .iter()
        .enumerate()
        .map(|(n, b)| command(1, n as u64, b, ledger_timestamp(n as u64)))
        .collect();
    let (reference, _) = apply_directly(&commands_only);
    let mut mixed = Vec::new();
    for (n, batch) in batches.iter().enumerate() {
        let next = mixed.len() as u64;
        mixed.push(if n % 2 == 0 {
            blank(2, next)
        } else {
            membership(2, next)
        });
        mixed.push(command(2, next + 1, batch, ledger_timestamp(n as u64)));
    }
    mixed.push(blank(3, mixed.len() as u64));
    let mut sm = open_sm(dir.path());
    let results = block_on(sm.apply(mixed.clone())).unwrap();
    for (entry, result) in mixed.iter().zip(&results) {
        if !matches!(entry.payload, EntryPayload::Normal(_)) {
            assert_eq!(result, &GroupResult::default(), "{}", entry.log_id);
        }
    }
    let state = sm.state();
    let state = state.borrow();
    assert_eq!(state.accounts_sorted(), reference.accounts_sorted());
    assert!(state.transfers().eq(reference.transfers()));
    assert_eq!(state.last_timestamp(), reference.last_timestamp());
    assert_eq!(state.last_index(), mixed.len() as u64);
    drop(state);
    let (last, stored) = block_on(sm.applied_state()).unwrap();
    assert_eq!(last, Some(log_id(3, mixed.len() as u64 - 1)));
    let last_membership = mixed
        .iter()
        .rev()
        .find(|e| matches!(e.payload, EntryPayload::Membership(_)));
    assert_eq!(stored.log_id(), &last_membership.map(|e| e.log_id));
}

#[test]
fn a_command_entry_after_a_gap_or_below_the_applied_one_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let batches = ledger_batches(2);
    let mut sm = open_sm(dir.path());
    block_on(sm.apply(vec![command(1, 0, &batches[0], ledger_timestamp(0))])).unwrap();
    let before = digest_of(&sm);
    let gap = command(1, 2, &batches[1], ledger_timestamp(1));
    let again = command(1, 0, &batches[1], ledger_timestamp(1));
    for entry in [gap, again] {
        assert!(block_on(sm.apply(vec![entry])).is_err());
        assert_eq!(digest_of(&sm), before);
        assert_eq!(applied(&mut sm), Some(log_id(1, 0)));
    }
}

#[test]
fn a_reception_cut_short_by_a_stop_is_deleted_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    let receiving = block_on(sm.begin_receiving_snapshot()).unwrap();
    std::fs::write(&receiving.path, b"the first chunk of a snapshot").unwrap();
    drop(sm); // the node stops before the last chunk
    let reopened = open_sm(dir.path());
    assert!(!receiving.path.exists(), "the partial file is gone");
    assert_eq!(
        reopened.state().borrow().last_index(),
        0,
        "nothing was installed from it"
    );
}

#[test]
fn a_snapshot_installed_into_a_fresh_state_machine_carries_the_state_and_membership() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entries = ledger_entries(20);
    let (first, rest) = entries.split_at(15);
    let mut leader = open_sm(leader_dir.path());
    block_on(leader.apply(first.to_vec())).unwrap();
    let mut builder = block_on(leader.get_snapshot_builder());
    // Applied after the builder was made: not in the snapshot.
    block_on(leader.apply(rest[..1].to_vec())).unwrap();
    let snapshot = block_on(builder.build_snapshot()).unwrap();
    assert_eq!(
        snapshot.meta.last_log_id,
        Some(first.last().unwrap().log_id)
    );
    assert_eq!(snapshot.meta.last_membership.log_id(), &Some(log_id(1, 0)));
    let (at_snapshot, _) = apply_directly(first);
    let current = block_on(leader.get_current_snapshot()).unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);

    // The transport's part: the leader's file, byte for byte, into the receiving handle.
    let mut follower = open_sm(follower_dir.path());
    let receiving = block_on(follower.begin_receiving_snapshot()).unwrap();
    std::fs::copy(&snapshot.snapshot.path, &receiving.path).unwrap();
    block_on(follower.install_snapshot(&snapshot.meta, receiving.clone())).unwrap();
    assert!(!receiving.path.exists(), "the received file was taken in");
    assert_eq!(digest_of(&follower), state_digest(&at_snapshot));
    assert_eq!(
        block_on(follower.applied_state()).unwrap(),
        (
            snapshot.meta.last_log_id,
            snapshot.meta.last_membership.clone()
        )
    );
    let installed = block_on(follower.get_current_snapshot()).unwrap().unwrap();
    assert_eq!(installed.meta, snapshot.meta);
    assert_eq!(
        std::fs::read(&installed.snapshot.path).unwrap(),
        std::fs::read(&snapshot.snapshot.path).unwrap(),
        "the installed file is the one that was sent"
    );

    // Both go on alike, and a restart of the follower comes back from its snapshot.
    block_on(follower.apply(rest[..1].to_vec())).unwrap();
    block_on(follower.apply(rest[1..].to_vec())).unwrap();
    block_on(leader.apply(rest[1..].to_vec())).unwrap();
    assert_eq!(digest_of(&follower), digest_of(&leader));
    let mut restarted = open_sm(follower_dir.path());
    assert_eq!(digest_of(&restarted), state_digest(&at_snapshot));
    assert_eq!(applied(&mut restarted), snapshot.meta.last_log_id);
}

/// The read model of a follower that installs a snapshot (`engine::raft::read_side`): it
/// starts over from the snapshot's balances; the history of the entries the snapshot covers
/// is refused, naming the snapshot's point, never answered wrongly; from there on it follows
/// the committed entries exactly as the leader's does, with the same positions.
#[test]
fn a_follower_read_model_restarts_at_an_installed_snapshot_and_then_follows_the_leader() {
    use engine::read_model::position::end_of_entry;
    use engine::read_model::{At, HistoryQuery, QueryError};
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let entries = ledger_entries(20);
    let (first, rest) = entries.split_at(15);
    let open = |dir: &Path| RaftPartition::open_with_read_model(dir, 0, 1, 1024, None).unwrap();
    let mut leader = open(leader_dir.path());
    block_on(leader.apply(first.to_vec())).unwrap();
    let snapshot = block_on(block_on(leader.get_snapshot_builder()).build_snapshot()).unwrap();
    let at = end_of_entry(first.last().unwrap().log_id.index + 1);

    // The follower saw the first entries only, then gets the snapshot.
    let mut follower = open(follower_dir.path());
    block_on(follower.apply(first[..3].to_vec())).unwrap();
    let receiving = block_on(follower.begin_receiving_snapshot()).unwrap();
    std::fs::copy(&snapshot.snapshot.path, &receiving.path).unwrap();
    block_on(follower.install_snapshot(&snapshot.meta, receiving)).unwrap();
    block_on(follower.apply(rest.to_vec())).unwrap();
    block_on(leader.apply(rest.to_vec())).unwrap();

    let (leader_side, follower_side) = (leader.read_side(), follower.read_side());
    let (leader_side, follower_side) = (leader_side.borrow(), follower_side.borrow());
    let (lead, follow) = (leader_side.model().unwrap(), follower_side.model().unwrap());
    assert_eq!(follow.read_position(), lead.read_position());
    assert_eq!(follow.totals(), lead.totals());
    let mut moved = 0;
    for account in leader.state().borrow().accounts_sorted() {
        let id = account.id;
        assert_eq!(follow.balance(id), lead.balance(id), "account {id}");
        let query = HistoryQuery {
            account: id,
            ..Default::default()
        };
        let (led, followed) = (
            lead.history(&query).unwrap(),
            follow.history(&query).unwrap(),
        );
        let after: Vec<_> = led.entries.iter().filter(|e| e.position > at).collect();
        assert_eq!(followed.entries.iter().collect::<Vec<_>>(), after);
        assert_eq!(followed.truncated_at.map(|(p, _)| p), Some(at));
        if led.entries.iter().any(|e| e.position <= at) {
            moved += 1;
            let before = follow.balance_at(id, At::Position(at - 1));
            assert!(
                matches!(before, Err(QueryError::BeforeRetained { oldest_position, .. }) if oldest_position == at),
                "{before:?}"
            );
        }
        // The same money at the snapshot's point (the answers name different points: the
        // leader its last change before it, the follower the snapshot it started from).
        let money = |b: engine::read_model::BalanceAsOf| (b.balance, b.held);
        assert_eq!(
            follow.balance_at(id, At::Position(at)).map(money),
            lead.balance_at(id, At::Position(at)).map(money)
        );
    }
    assert!(moved > 0, "accounts moved money before the snapshot");
    assert!(matches!(
        follow.events_since(0, u64::MAX, None, 10),
        Err(QueryError::BeforeRetained { oldest_position, .. }) if oldest_position == at + 1
    ));
    assert_eq!(
        follow.events_since(at + 1, u64::MAX, None, 4096),
        lead.events_since(at + 1, u64::MAX, None, 4096)
    );
}

#[test]
fn a_snapshot_that_does_not_match_its_meta_or_partition_is_refused() {
    let (leader_dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = open_sm(leader_dir.path());
    block_on(leader.apply(ledger_entries(3))).unwrap();
    let snapshot = block_on(block_on(leader.get_snapshot_builder()).build_snapshot()).unwrap();
    let mut wrong_meta = snapshot.meta.clone();
    wrong_meta.last_log_id = Some(log_id(1, 2));
    let mut follower = open_sm(other_dir.path());
    assert!(block_on(follower.install_snapshot(&wrong_meta, snapshot.snapshot.clone())).is_err());
    let mut other_partition = RaftPartition::open(other_dir.path(), 1, 2).unwrap();
    assert!(
        block_on(other_partition.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()))
            .is_err()
    );
    assert_eq!(applied(&mut follower), None);
    assert!(block_on(follower.get_current_snapshot()).unwrap().is_none());
}

#[test]
fn timestamps_at_or_below_the_last_one_are_clamped_alike_on_every_replica() {
    let batches = ledger_batches(4);
    // A leader stamps the first entries; a new leader with a clock behind stamps the rest
    // lower, one even at 0, and one entry repeats the previous timestamp.
    let stamps = [5_000, 6_000, 1_000, 1_000, 0, 9_000_000];
    let entries: Vec<Entry> = batches
        .iter()
        .zip(stamps)
        .enumerate()
        .map(|(n, (batch, ts))| command(1 + (n as u64 >= 2) as u64, n as u64, batch, ts))
        .collect();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut replicas: Vec<RaftPartition> = dirs.iter().map(|d| open_sm(d.path())).collect();
    let mut answers = Vec::new();
    for replica in &mut replicas {
        let mut results = Vec::new();
        for entry in &entries {
            results.extend(block_on(replica.apply(vec![entry.clone()])).unwrap());
        }
        answers.push(results);
    }
    assert_eq!(digest_of(&replicas[0]), digest_of(&replicas[1]));
    assert_eq!(answers[0], answers[1]);
    let (direct, _) = apply_directly(&entries);
    assert_eq!(digest_of(&replicas[0]), state_digest(&direct));
    // Each entry starts right after the last timestamp used unless its own is higher.
    let mut last_used = 0;
    for ((batch, stamp), answer) in batches.iter().zip(stamps).zip(&answers[0]) {
        assert_eq!(answer.timestamp, stamp.max(last_used + 1));
        last_used = answer.timestamp + batch.len().max(1) as u64 - 1;
    }
    let state = replicas[0].state();
    let stamps: Vec<u64> = state.borrow().transfers().map(|t| t.timestamp).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

/// The digest of `ledger_batches(40)` applied at `ledger_timestamp` as the single-node path
/// would (one entry per batch, log index 1..), computed with the code before the timestamp
/// clamp and the Raft kinds existed (main at 86ab9f6). A single-node log never needs the clamp,
/// so its state, and every digest `wallet audit replay` printed for it, must stay the same.
const SINGLE_NODE_DIGEST: u128 = 0x3561aa148b782eb14109accf2e18a7b8;

#[test]
fn a_single_node_log_replays_to_the_digest_it_had_before_the_clamp() {
    let mut state = PartitionState::new(0, 1);
    let mut out = ApplyOutput::default();
    for (n, batch) in ledger_batches(40).iter().enumerate() {
        let body = encode(batch);
        out.clear();
        state
            .apply_entry(
                n as u64 + 1,
                batch.kind(),
                &body,
                ledger_timestamp(n as u64),
                &mut out,
            )
            .unwrap();
    }
    assert_eq!(
        state_digest(&state),
        SINGLE_NODE_DIGEST,
        "{:#x}",
        state_digest(&state)
    );
}

/// End to end on one voter: openraft drives `RaftLogStore` and `RaftPartition`; transfers go
/// in through `client_write` and come out as balances; a snapshot and a restart bring the same
/// state back (from the snapshot, then the log after it).
mod single_node {
    use super::raft_support::{
        encode, ledger_batches, ledger_timestamp, on_glommio_with_tokio_timer, open_store,
        raft_config, NoPeers,
    };
    use super::{apply_directly, ledger_entries};
    use engine::digest::state_digest;
    use engine::raft::{EntryData, NodeAddr, RaftPartition, WalletRaft};
    use engine::state_machine::PartitionState;
    use engine::ResultCode;
    use openraft::{Raft, ServerState};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::rc::Rc;
    use std::time::Duration;

    const WAIT: Option<Duration> = Some(Duration::from_secs(5));
    const BATCHES: u64 = 12;

    async fn start(dir: &Path) -> (Raft<WalletRaft>, Rc<RefCell<PartitionState>>) {
        let store = open_store(&dir.join("log")).await;
        let sm = RaftPartition::open(&dir.join("snapshots"), 0, 1).unwrap();
        let state = sm.state();
        let raft = Raft::new(1, raft_config(), NoPeers, store, sm)
            .await
            .unwrap();
        (raft, state)
    }

    #[test]
    fn a_one_voter_cluster_moves_money_through_client_write_and_restarts_from_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        // Raft 0: the initial membership, 1: the leader's blank, then one entry per batch:
        // the same entries `ledger_entries` builds, so the same state as applying those.
        let want = state_digest(&apply_directly(&ledger_entries(BATCHES - 1)).0);
        let snapshot_digest = on_glommio_with_tokio_timer(move || async move {
            let (raft, state) = start(&path).await;
            let node = NodeAddr {
                raft_addr: "127.0.0.1:7001".into(),
                client_addr: "127.0.0.1:7000".into(),
            };
            raft.initialize(BTreeMap::from([(1, node)])).await.unwrap();
            raft.wait(WAIT)
                .state(ServerState::Leader, "elected")
                .await
                .unwrap();
            let mut issued = 0i64;
            for (n, batch) in ledger_batches(BATCHES - 1).iter().enumerate() {
                let data = EntryData::new(batch.kind(), ledger_timestamp(n as u64), encode(batch));
                let response = raft.client_write(data).await.unwrap();
                assert_eq!(response.log_id.index, n as u64 + 2);
                let answer = response.data;
                assert_eq!(answer.results.len(), batch.len());
                assert_eq!(answer.timestamp, ledger_timestamp(n as u64));
                if let engine::CommandBatch::CreateTransfers(transfers) = batch {
                    issued += transfers
                        .iter()
                        .zip(&answer.results)
                        .filter(|(t, code)| t.from == 1 && **code == ResultCode::Ok)
                        .map(|(t, _)| t.amount as i64)
                        .sum::<i64>();
                }
            }
            {
                let state = state.borrow();
                assert_eq!(state_digest(&state), want);
                assert_eq!(state.account(1).unwrap().balance, -issued);
                let wallets: i64 = (2..=20).map(|id| state.account(id).unwrap().balance).sum();
                assert_eq!(wallets, issued);
            }
            let last = raft.metrics().borrow().last_applied;
            raft.trigger().snapshot().await.unwrap();
            raft.wait(WAIT)
                .metrics(|m| m.snapshot == last, "snapshot of everything applied")
                .await
                .unwrap();
            raft.shutdown().await.unwrap();
            let digest = state_digest(&state.borrow());
            digest
        });
        assert_eq!(snapshot_digest, want);

        let path = dir.path().to_path_buf();
        on_glommio_with_tokio_timer(move || async move {
            let (raft, state) = start(&path).await;
            raft.wait(WAIT)
                .state(ServerState::Leader, "re-elected")
                .await
                .unwrap();
            raft.wait(WAIT)
                .applied_index_at_least(Some(BATCHES), "applied again")
                .await
                .unwrap();
            assert_eq!(state_digest(&state.borrow()), want);
            // The log goes on after the snapshot; a stale timestamp is clamped.
            let batch = ledger_batches(BATCHES).pop().unwrap();
            let data = EntryData::new(batch.kind(), 1, encode(&batch));
            let answer = raft.client_write(data).await.unwrap().data;
            assert_eq!(answer.results.len(), batch.len());
            assert!(answer.timestamp > ledger_timestamp(BATCHES - 2));
            raft.shutdown().await.unwrap();
        });
    }
}
