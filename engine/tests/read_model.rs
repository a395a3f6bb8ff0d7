//! The read model against a brute-force recomputation. Random workloads (accounts, transfers
//! inside a partition and across partitions, TC/C messages delivered late, duplicated, aborted)
//! run through `PartitionState::apply_entry` on two partitions; each entry's events feed a read
//! model with a small random `history_per_account_max`, plus a second read model seeded from a
//! mid-run state (a restart from a snapshot). Checks:
//! - after every entry: balances and held amounts of every account, and per-currency totals,
//!   equal the state's;
//! - at the end: every history page (newest first, cursor paging, time ranges) and every
//!   balance-as-of answer (by position and by timestamp, at and around every change) equals
//!   what a brute-force pass over all events computes, and a point outside the retained window
//!   is refused (never answered wrongly).
//!
//! Every run prints its seed; `READ_MODEL_SEED=<seed>` replays exactly that run.
//!
//! `runtime`: the read model inside a running node in local mode; `raft`: in Raft mode, fed by
//! the state machine, against the same brute force (over the node's committed log), live and
//! after a restart, with a subscriber that must see every change exactly once.

use engine::command::{CommandBatch, NewAccount, NewTransfer};
use engine::event::Event;
use engine::model::{account_flags, Currency};
use engine::partition::partition_of;
use engine::read_model::position::{end_of_entry, position};
use engine::read_model::{
    At, BalanceAsOf, HistoryKind, HistoryPage, HistoryQuery, QueryError, ReadModel, FROM_NOW,
};
use engine::state_machine::{ApplyOutput, PartitionState};
use engine::tcc::{self, TccMessage};

const PARTITIONS: u32 = 2;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}
fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

/// One event as the brute force sees it: position, time, event.
type Logged = (u64, u64, Event);

struct Partition {
    state: PartitionState,
    model: ReadModel,
    /// Seeded from `state` after entry `.0` (a restart from a snapshot; `.1` the state's last
    /// timestamp then), fed from then on.
    seeded: Option<(u64, u64, ReadModel)>,
    events: Vec<Logged>,
    clock: u64,
    ids: Vec<u128>,
}

struct World {
    rng: fastrand::Rng,
    partitions: Vec<Partition>,
    network: Vec<(u32, TccMessage)>,
    max: usize,
    next_transfer: u128,
    out: ApplyOutput,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let max = rng.usize(1..8);
        let partitions = (0..PARTITIONS)
            .map(|p| Partition {
                state: PartitionState::new(p, PARTITIONS),
                model: ReadModel::new(p, PARTITIONS, max),
                seeded: None,
                events: Vec::new(),
                clock: 1_000,
                ids: (1u128..)
                    .filter(|id| partition_of(*id, PARTITIONS) == p)
                    .take(8)
                    .collect(),
            })
            .collect();
        World {
            rng,
            partitions,
            network: Vec::new(),
            max,
            next_transfer: 1,
            out: ApplyOutput::default(),
        }
    }

    fn apply(&mut self, p: usize, batch: CommandBatch) {
        let part = &mut self.partitions[p];
        let mut body = rkyv::util::AlignedVec::<16>::new();
        batch.encode_into(&mut body);
        part.clock = part.clock.max(part.state.next_timestamp_floor()) + self.rng.u64(1..50);
        let index = part.state.last_index() + 1;
        self.out.clear();
        part.state
            .apply_entry(index, batch.kind(), &body, part.clock, &mut self.out)
            .unwrap();
        part.model.apply(index, part.clock, &self.out.events);
        if let Some((_, _, seeded)) = &mut part.seeded {
            seeded.apply(index, part.clock, &self.out.events);
        }
        log_events(index, part.clock, &self.out.events, &mut part.events);
        self.network
            .extend(self.out.outbox.iter().map(|(to, m)| (*to, *m)));
        check_live(part);
    }

    fn step(&mut self) {
        let p = self.rng.usize(..PARTITIONS as usize);
        match self.rng.u32(..100) {
            0..=9 => {
                let ids = self.partitions[p].ids.clone();
                let accounts = (0..self.rng.usize(1..4))
                    .map(|_| {
                        let i = self.rng.usize(..ids.len());
                        NewAccount {
                            id: ids[i],
                            currency: if i == 7 { usd() } else { eur() },
                            flags: if i == 6 { account_flags::FROZEN } else { 0 },
                            floor: if i == 0 { -1_000_000_000 } else { 0 },
                            user_data: 0,
                        }
                    })
                    .collect();
                self.apply(p, CommandBatch::CreateAccounts(accounts));
            }
            10..=69 => {
                let from_ids = self.partitions[p].ids.clone();
                let all: Vec<u128> = self
                    .partitions
                    .iter()
                    .flat_map(|q| q.ids.iter().copied())
                    .collect();
                let transfers = (0..self.rng.usize(0..12))
                    .map(|_| {
                        // Issuers (index 0) fund the others; retries reuse recent ids.
                        let from = if self.rng.u32(..3) == 0 {
                            from_ids[0]
                        } else {
                            from_ids[self.rng.usize(..from_ids.len())]
                        };
                        let id = if self.rng.u32(..10) == 0 && self.next_transfer > 3 {
                            self.next_transfer - self.rng.u128(1..3)
                        } else {
                            self.next_transfer += 1;
                            self.next_transfer
                        };
                        NewTransfer {
                            id,
                            from,
                            to: all[self.rng.usize(..all.len())],
                            amount: self.rng.u64(1..3_000),
                            currency: if self.rng.u32(..20) == 0 {
                                usd()
                            } else {
                                eur()
                            },
                            user_data: 0,
                        }
                    })
                    .collect();
                self.apply(p, CommandBatch::CreateTransfers(transfers));
            }
            70..=94 => self.deliver(p, false),
            _ => {
                // The coordinator gives up on a Try.
                let records = self.partitions[p].state.tcc_records_sorted();
                let trying: Vec<TccMessage> = records
                    .iter()
                    .filter(|r| r.phase == tcc::phase::TRYING)
                    .map(|r| TccMessage::about(tcc::kind::ABORT, p as u32, &r.transfer))
                    .collect();
                if !trying.is_empty() {
                    self.apply(p, CommandBatch::Tcc(trying));
                }
            }
        }
    }

    /// Delivers some (or, with `all`, every) message bound to `p`, sometimes twice.
    fn deliver(&mut self, p: usize, all: bool) {
        let mut batch = Vec::new();
        let mut kept = Vec::new();
        for (to, m) in std::mem::take(&mut self.network) {
            if to as usize == p && (all || self.rng.bool()) {
                batch.push(m);
                if !all && self.rng.u32(..10) == 0 {
                    kept.push((to, m)); // duplicate: delivered again later
                }
            } else {
                kept.push((to, m));
            }
        }
        self.network = kept;
        if !batch.is_empty() {
            self.apply(p, CommandBatch::Tcc(batch));
        }
    }

    fn settle(&mut self) {
        for _ in 0..20 {
            if self.network.is_empty() {
                return;
            }
            for p in 0..PARTITIONS as usize {
                self.deliver(p, true);
            }
        }
        panic!("messages still flowing after 20 rounds");
    }
}

/// The brute force's own record of the events of entry `index` applied at `applied_at`, with
/// their positions and times (the item's timestamp where the event carries one, else the
/// latest time seen in the entry).
fn log_events(index: u64, applied_at: u64, events: &[Event], into: &mut Vec<Logged>) {
    let mut clock = applied_at;
    for (ordinal, event) in events.iter().enumerate() {
        let own = match event {
            Event::AccountCreated(a) => a.timestamp,
            Event::TransferApplied(t) | Event::TccTried(t) => t.timestamp,
            Event::TransferRejected { timestamp, .. }
            | Event::TccCredited { timestamp, .. }
            | Event::TccCancelled { timestamp, .. } => *timestamp,
            _ => 0,
        };
        clock = clock.max(own);
        into.push((position(index, ordinal), clock, *event));
    }
}

/// After every entry: the read models agree with the state on every balance and total.
fn check_live(part: &Partition) {
    let state = &part.state;
    assert_eq!(part.model.totals(), state.totals_by_currency(), "totals");
    assert_eq!(part.model.last_index(), state.last_index());
    assert_eq!(
        part.model
            .lag(state.last_index(), state.last_timestamp())
            .entries,
        0
    );
    for a in state.accounts_sorted() {
        assert_eq!(
            part.model.balance(a.id),
            Some((a.balance, a.held)),
            "account {}",
            a.id
        );
        if let Some((_, _, seeded)) = &part.seeded {
            assert_eq!(seeded.balance(a.id), Some((a.balance, a.held)));
        }
    }
    if let Some((_, _, seeded)) = &part.seeded {
        assert_eq!(seeded.totals(), state.totals_by_currency());
    }
}

/// One change of one account, computed from the raw events.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Change {
    position: u64,
    time: u64,
    transfer_id: u128,
    counterparty: u128,
    amount: i64,
    balance: i64,
    held: i64,
    kind: HistoryKind,
}

/// Brute force: the creation point and every change of `account`, from all events.
fn changes_of(
    events: &[Logged],
    account: u128,
    partition: u32,
) -> (Option<(u64, u64)>, Vec<Change>) {
    let mut created = None;
    let mut changes = Vec::new();
    let (mut balance, mut held) = (0i64, 0i64);
    for &(position, time, event) in events {
        let (id, counterparty, amount, held_delta, kind) = match event {
            Event::AccountCreated(a) if a.id == account => {
                created = Some((position, time));
                continue;
            }
            Event::TransferApplied(t) if partition_of(t.to, PARTITIONS) != partition => {
                if t.from != account {
                    continue;
                }
                (t.id, t.to, 0, -(t.amount as i64), HistoryKind::TccSettle)
            }
            Event::TransferApplied(t) if t.from == account => {
                (t.id, t.to, -(t.amount as i64), 0, HistoryKind::Transfer)
            }
            Event::TransferApplied(t) if t.to == account => {
                (t.id, t.from, t.amount as i64, 0, HistoryKind::Transfer)
            }
            Event::TccTried(t) if t.from == account => (
                t.id,
                t.to,
                -(t.amount as i64),
                t.amount as i64,
                HistoryKind::TccHold,
            ),
            Event::TccCredited {
                id,
                from,
                to,
                amount,
                ..
            } if to == account => (id, from, amount as i64, 0, HistoryKind::TccCredit),
            Event::TccCancelled {
                id,
                from,
                to,
                amount,
                ..
            } if from == account => (
                id,
                to,
                amount as i64,
                -(amount as i64),
                HistoryKind::TccRefund,
            ),
            _ => continue,
        };
        balance += amount;
        held += held_delta;
        changes.push(Change {
            position,
            time,
            transfer_id: id,
            counterparty,
            amount,
            balance,
            held,
            kind,
        });
    }
    (created, changes)
}

/// `(balance, held)` after every change at or before `at`.
fn expected_at(changes: &[Change], at: At) -> (i64, i64) {
    let key = |c: &Change| match at {
        At::Position(_) => c.position,
        At::Timestamp(_) => c.time,
    };
    let point = match at {
        At::Position(p) | At::Timestamp(p) => p,
    };
    changes
        .iter()
        .rev()
        .find(|c| key(c) <= point)
        .map(|c| (c.balance, c.held))
        .unwrap_or((0, 0))
}

/// What `check_account` asks: a read model itself, or a running node's (`raft` below).
trait Answers {
    fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, QueryError>;
    fn balance_at(&self, account: u128, at: At) -> Result<BalanceAsOf, QueryError>;
    fn read_position(&self) -> u64;
}

impl Answers for ReadModel {
    fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, QueryError> {
        ReadModel::history(self, q)
    }
    fn balance_at(&self, account: u128, at: At) -> Result<BalanceAsOf, QueryError> {
        ReadModel::balance_at(self, account, at)
    }
    fn read_position(&self) -> u64 {
        ReadModel::read_position(self)
    }
}

/// Checks one read model's answers for `account` against the brute force. `seeded_at`:
/// the entry index the model was seeded at and the state's last timestamp then (None: fed
/// from the first entry).
fn check_account(
    model: &impl Answers,
    events: &[Logged],
    account: u128,
    partition: u32,
    max: usize,
    seeded_at: Option<(u64, u64)>,
    rng: &mut fastrand::Rng,
) {
    let (created, changes) = changes_of(events, account, partition);
    let Some((created_position, created_time)) = created else {
        return;
    };
    // The retained window: the last `max` changes after the seed point.
    let after_seed: Vec<&Change> = changes
        .iter()
        .filter(|c| seeded_at.is_none_or(|(index, _)| c.position > end_of_entry(index)))
        .collect();
    let seed_known = seeded_at.filter(|(index, _)| created_position <= end_of_entry(*index));
    let retained: Vec<&Change> = after_seed.iter().rev().take(max).rev().copied().collect();
    // The oldest exactly known point: (position, time), and whether it is the creation.
    let (base_position, base_time, complete) = if after_seed.len() > max {
        let dropped = after_seed[after_seed.len() - max - 1];
        (dropped.position, dropped.time, false)
    } else if let Some((index, time)) = seed_known {
        (end_of_entry(index), time, false)
    } else {
        (created_position, created_time, true)
    };

    // Balance as of: at, just before and just after every change and the base, and random
    // points.
    let mut points = vec![
        base_position,
        base_position.saturating_sub(1),
        model.read_position(),
    ];
    let mut times = vec![
        base_time,
        base_time.saturating_sub(1),
        created_time,
        u64::MAX,
    ];
    for c in &changes {
        points.extend([c.position.saturating_sub(1), c.position, c.position + 1]);
        times.extend([c.time.saturating_sub(1), c.time, c.time + 1]);
    }
    for _ in 0..8 {
        points.push(rng.u64(..=model.read_position() + 10));
        times.push(rng.u64(..=events.last().map_or(0, |e| e.1) + 10));
    }
    let queries = points
        .into_iter()
        .map(At::Position)
        .chain(times.into_iter().map(At::Timestamp));
    for at in queries {
        let answer = model.balance_at(account, at);
        let (point, base) = match at {
            At::Position(p) => (p, base_position),
            At::Timestamp(t) => (t, base_time),
        };
        if matches!(at, At::Position(p) if p > model.read_position()) {
            assert!(
                matches!(answer, Err(QueryError::Ahead { .. })),
                "{at:?}: {answer:?}"
            );
            continue;
        }
        if point < base {
            match answer {
                Err(QueryError::BeforeRetained {
                    oldest_position,
                    oldest_timestamp,
                    ..
                }) => {
                    assert!(!complete || matches!(at, At::Timestamp(t) if t >= created_time));
                    assert_eq!(
                        (oldest_position, oldest_timestamp),
                        (base_position, base_time)
                    );
                }
                Err(QueryError::NotCreatedYet { .. }) => {
                    let before_creation = match at {
                        At::Position(p) => p < created_position,
                        At::Timestamp(t) => t < created_time,
                    };
                    assert!(before_creation, "{at:?}");
                }
                other => panic!("account {account} {at:?}: expected a refusal, got {other:?}"),
            }
            continue;
        }
        let got = answer.unwrap_or_else(|e| panic!("account {account} {at:?}: {e}"));
        assert_eq!(
            (got.balance, got.held),
            expected_at(&changes, at),
            "account {account} as of {at:?}"
        );
    }

    // History: newest first, paged with the cursor, equals the retained changes.
    let limit = rng.usize(1..4);
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = model
            .history(&HistoryQuery {
                account,
                before_position: before,
                limit,
                ..Default::default()
            })
            .unwrap();
        assert!(page.entries.len() <= limit);
        assert_eq!(page.truncated_at.is_none(), complete);
        if !complete {
            assert_eq!(page.truncated_at, Some((base_position, base_time)));
        }
        pages.extend(page.entries);
        match page.next_before {
            Some(p) => before = Some(p),
            None => break,
        }
    }
    let got: Vec<Change> = pages
        .iter()
        .rev()
        .map(|e| Change {
            position: e.position,
            time: e.timestamp,
            transfer_id: e.transfer_id,
            counterparty: e.counterparty,
            amount: e.amount,
            balance: e.balance_after,
            held: e.held_after,
            kind: e.kind,
        })
        .collect();
    let want: Vec<Change> = retained.iter().map(|c| **c).collect();
    assert_eq!(got, want, "history of account {account}");

    // A time range: complete inside the window, refused when it reaches below it.
    if let (Some(a), Some(b)) = (changes.first(), changes.last()) {
        let from = rng.u64(a.time.saturating_sub(2)..=b.time + 1);
        let to = rng.u64(from..=b.time + 2);
        let answer = model.history(&HistoryQuery {
            account,
            from_timestamp: Some(from),
            to_timestamp: Some(to),
            limit: 0,
            ..Default::default()
        });
        if !complete && (from <= base_time || to < base_time) {
            assert!(
                matches!(answer, Err(QueryError::BeforeRetained { .. })),
                "{answer:?}"
            );
        } else {
            let page = answer.unwrap();
            let want: Vec<u64> = changes
                .iter()
                .rev()
                .filter(|c| c.time >= from && c.time <= to)
                .map(|c| c.position)
                .collect();
            let got: Vec<u64> = page.entries.iter().map(|e| e.position).collect();
            assert_eq!(got, want, "account {account} range {from}..={to}");
        }
    }
}

/// What a run exercised (summed over runs, so the test can insist the workload is not trivial).
#[derive(Default, Debug)]
struct Coverage {
    events: u64,
    credits: u64,
    refunds: u64,
    settles: u64,
    local: u64,
    refused: u64,
}

fn run(seed: u64, coverage: &mut Coverage) {
    let mut world = World::new(seed);
    let steps = world.rng.usize(50..300);
    let seed_at = world.rng.usize(..steps);
    for step in 0..steps {
        if step == seed_at {
            for part in &mut world.partitions {
                let model = ReadModel::from_state(&part.state.clone(), world.max);
                let (index, time) = (part.state.last_index(), part.state.last_timestamp());
                part.seeded = Some((index, time, model));
            }
        }
        world.step();
    }
    world.settle();
    for part in &world.partitions {
        coverage.events += part.events.len() as u64;
        for (_, _, e) in &part.events {
            match e {
                Event::TccCredited { .. } => coverage.credits += 1,
                Event::TccCancelled { .. } => coverage.refunds += 1,
                Event::TransferApplied(t)
                    if partition_of(t.to, PARTITIONS) != t_partition(t.from) =>
                {
                    coverage.settles += 1
                }
                Event::TransferApplied(_) => coverage.local += 1,
                _ => {}
            }
        }
        for a in part.state.accounts_sorted() {
            if let Err(QueryError::BeforeRetained { .. }) =
                part.model.balance_at(a.id, At::Position(0))
            {
                coverage.refused += 1;
            }
        }
    }
    for (p, part) in world.partitions.iter().enumerate() {
        assert_eq!(part.state.tcc_in_flight(), 0);
        let mut rng = fastrand::Rng::with_seed(seed ^ p as u64);
        for a in part.state.accounts_sorted() {
            check_account(
                &part.model,
                &part.events,
                a.id,
                p as u32,
                world.max,
                None,
                &mut rng,
            );
            if let Some((index, seed_time, seeded)) = &part.seeded {
                check_account(
                    seeded,
                    &part.events,
                    a.id,
                    p as u32,
                    world.max,
                    Some((*index, *seed_time)),
                    &mut rng,
                );
            }
        }
        assert!(matches!(
            part.model.balance_at(u128::MAX - 1, At::Timestamp(0)),
            Err(QueryError::AccountNotFound(_))
        ));
        check_subscriptions(part, p as u32, &mut rng);
    }
}

#[test]
fn read_model_matches_brute_force() {
    let base = match std::env::var("READ_MODEL_SEED") {
        Ok(s) => {
            let seed = s.parse().expect("READ_MODEL_SEED is a number");
            println!("read model seed {seed}");
            run(seed, &mut Coverage::default());
            return;
        }
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7),
    };
    let mut coverage = Coverage::default();
    for i in 0..40 {
        let seed = base.wrapping_add(i);
        println!("read model seed {seed} (READ_MODEL_SEED={seed} replays it)");
        run(seed, &mut coverage);
    }
    println!("{coverage:?}");
    assert!(coverage.credits > 0 && coverage.refunds > 0 && coverage.settles > 0);
    assert!(coverage.local > 0 && coverage.refused > 0);
}

fn t_partition(account: u128) -> u32 {
    partition_of(account, PARTITIONS)
}

mod runtime {
    //! The read model inside the running node: fed by the partition tasks, queried through
    //! `Node`, rebuilt by recovery.
    use engine::command::{NewAccount, NewTransfer};
    use engine::model::Currency;
    use engine::read_model::{At, HistoryKind, HistoryQuery, QueryError};
    use engine::runtime::{EngineConfig, Node};
    use engine::ResultCode;
    use futures::executor::block_on;

    fn config(dir: &std::path::Path, history: usize) -> EngineConfig {
        let mut c = EngineConfig::new(dir);
        c.cores = vec![0, 1];
        c.partitions = 2;
        c.segment_bytes = 4 << 20;
        c.snapshot_interval_entries = 0;
        c.read_model_history_per_account = history;
        c
    }

    fn t(id: u128, from: u128, to: u128, amount: u64) -> NewTransfer {
        NewTransfer {
            id,
            from,
            to,
            amount,
            currency: Currency::parse("EUR").unwrap(),
            user_data: 0,
        }
    }

    fn history(node: &Node, account: u128) -> Vec<(HistoryKind, i64, i64)> {
        let page = block_on(node.history(HistoryQuery {
            account,
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        page.entries
            .iter()
            .map(|e| (e.kind, e.amount, e.balance_after))
            .collect()
    }

    fn wait_for_tcc(node: &Node) {
        for _ in 0..500 {
            let running: u64 = (0..2)
                .map(|p| block_on(node.counters(p)).unwrap().tcc_in_flight)
                .sum();
            if running == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("TC/C still running");
    }

    #[test]
    fn node_serves_history_and_recovery_rebuilds_it() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(config(dir.path(), 8)).unwrap();
        let issuer = (1u128..).find(|id| node.partition_of(*id) == 0).unwrap();
        let a = (issuer + 1..)
            .find(|id| node.partition_of(*id) == 0)
            .unwrap();
        let other = (1u128..).find(|id| node.partition_of(*id) == 1).unwrap();
        let accounts: Vec<NewAccount> = [(issuer, -1_000_000), (a, 0), (other, 0)]
            .iter()
            .map(|&(id, floor)| NewAccount {
                id,
                currency: Currency::parse("EUR").unwrap(),
                flags: 0,
                floor,
                user_data: 0,
            })
            .collect();
        assert_eq!(
            block_on(node.create_accounts(&accounts)).unwrap(),
            vec![ResultCode::Ok; 3]
        );
        let results =
            block_on(node.create_transfers(&[t(1, issuer, a, 500), t(2, a, other, 200)])).unwrap();
        assert_eq!(results, vec![ResultCode::Ok, ResultCode::Ok]);
        wait_for_tcc(&node);
        let newest = block_on(node.history(HistoryQuery {
            account: a,
            limit: 1,
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert_eq!(newest.entries.len(), 1);
        assert!(newest.next_before.is_some());
        use HistoryKind::*;
        let live_a = history(&node, a);
        assert_eq!(
            live_a,
            vec![
                (TccSettle, 0, 300),
                (TccHold, -200, 300),
                (Transfer, 500, 500)
            ]
        );
        assert_eq!(history(&node, other), vec![(TccCredit, 200, 200)]);
        let deposit = *block_on(node.history(HistoryQuery {
            account: a,
            ..Default::default()
        }))
        .unwrap()
        .unwrap()
        .entries
        .last()
        .unwrap();
        let then = block_on(node.balance_at(a, At::Position(deposit.position)))
            .unwrap()
            .unwrap();
        assert_eq!((then.balance, then.held), (500, 0));
        let then = block_on(node.balance_at(a, At::Timestamp(deposit.timestamp - 1)))
            .unwrap()
            .unwrap();
        assert_eq!(then.balance, 0);
        for p in 0..2 {
            let stats = block_on(node.counters(p)).unwrap();
            assert!(stats.read_model);
            assert_eq!(
                (stats.read_model_lag_entries, stats.read_model_lag_ms),
                (0, 0)
            );
        }
        node.shutdown().unwrap();

        // Without snapshots, recovery replays the whole log and the history comes back whole.
        for p in 0..2 {
            let snapshots = dir
                .path()
                .join(format!("partition-{p:05}"))
                .join("snapshots");
            std::fs::remove_dir_all(&snapshots).unwrap();
        }
        let node = Node::start(config(dir.path(), 8)).unwrap();
        assert_eq!(history(&node, a), live_a);
        node.shutdown().unwrap();

        // With the shutdown snapshot, the history starts at the snapshot: older points are
        // refused, naming the oldest retained one.
        let node = Node::start(config(dir.path(), 8)).unwrap();
        let page = block_on(node.history(HistoryQuery {
            account: a,
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        assert!(page.entries.is_empty());
        assert!(page.truncated_at.is_some());
        let old = block_on(node.balance_at(a, At::Position(deposit.position))).unwrap();
        assert!(
            matches!(old, Err(QueryError::BeforeRetained { .. })),
            "{old:?}"
        );
        let now = block_on(node.balance_at(a, At::Timestamp(u64::MAX)))
            .unwrap()
            .unwrap();
        assert_eq!(now.balance, 300);
        node.shutdown().unwrap();

        // Off: queries say so.
        let node = Node::start(config(dir.path(), 0)).unwrap();
        let off = block_on(node.balance_at(a, At::Timestamp(u64::MAX))).unwrap();
        assert_eq!(off, Err(QueryError::Disabled));
        assert!(!block_on(node.counters(0)).unwrap().read_model);
        node.shutdown().unwrap();
    }
}

/// Every change of every account of `state`, once per event (a local transfer is one change),
/// in position order: what a subscriber to the whole partition sees.
fn all_changes(
    state: &PartitionState,
    events: &[Logged],
    partition: u32,
) -> Vec<(u64, HistoryKind, u128)> {
    let mut want: Vec<(u64, HistoryKind, u128)> = Vec::new();
    for a in state.accounts_sorted() {
        for c in changes_of(events, a.id, partition).1 {
            want.push((c.position, c.kind, c.transfer_id));
        }
    }
    want.sort_unstable();
    want.dedup();
    want
}

/// Subscriptions: reading the changes in small pages, resuming each time from `next_from`,
/// yields every change exactly once, in position order: all of them, or one account's (equal
/// to the brute-force change list); a model seeded mid-run refuses positions before its seed.
fn check_subscriptions(part: &Partition, partition: u32, rng: &mut fastrand::Rng) {
    let mut read_all = |model: &ReadModel, from: u64, account: Option<u128>| {
        let mut got = Vec::new();
        let mut from = from;
        loop {
            let page = model
                .events_since(from, u64::MAX, account, rng.usize(1..5))
                .unwrap();
            if page.events.is_empty() && page.next_from == from {
                return got;
            }
            assert!(page.next_from > from);
            got.extend(
                page.events
                    .iter()
                    .map(|e| (e.position, e.kind, e.transfer_id)),
            );
            from = page.next_from;
        }
    };
    let want = all_changes(&part.state, &part.events, partition);
    assert_eq!(read_all(&part.model, 0, None), want, "all changes");
    for a in part.state.accounts_sorted() {
        let mine: Vec<_> = changes_of(&part.events, a.id, partition)
            .1
            .iter()
            .map(|c| (c.position, c.kind, c.transfer_id))
            .collect();
        assert_eq!(
            read_all(&part.model, 0, Some(a.id)),
            mine,
            "account {}",
            a.id
        );
    }
    // From the middle: exactly the changes at or after that position.
    if let Some(&(middle, _, _)) = want.get(want.len() / 2) {
        let tail: Vec<_> = want.iter().filter(|w| w.0 >= middle).copied().collect();
        assert_eq!(read_all(&part.model, middle, None), tail);
    }
    // Nothing durable yet below `below`: nothing is returned at or above it.
    if let Some(&(p, _, _)) = want.last() {
        let page = part.model.events_since(p, p, None, 10).unwrap();
        assert!(page.events.is_empty());
    }
    // From now: nothing (everything is already applied).
    let now = part
        .model
        .events_since(FROM_NOW, u64::MAX, None, 10)
        .unwrap();
    assert!(now.events.is_empty());
    if let Some((index, _, seeded)) = &part.seeded {
        let seed_end = end_of_entry(*index);
        let after: Vec<_> = want.iter().filter(|w| w.0 > seed_end).copied().collect();
        assert_eq!(read_all(seeded, seed_end + 1, None), after);
        if *index == 0 {
            assert_eq!(
                read_all(seeded, 0, None),
                want,
                "seeded at genesis: everything"
            );
        } else {
            assert!(matches!(
                seeded.events_since(0, u64::MAX, None, 10),
                Err(QueryError::BeforeRetained { .. })
            ));
        }
    }
}

mod raft {
    //! The read model in Raft mode (`engine::raft::read_side`): fed by the state machine with
    //! every committed entry, queried through `Node`, rebuilt at a restart from an older
    //! snapshot plus the retained log. A seeded random workload (accounts, local and
    //! cross-partition transfers, refusals, retried ids, client batches merged into entries)
    //! runs on a one-node Raft cluster of two partitions; the brute force replays each
    //! partition's Raft log through `apply_entry` (its records are the committed entries: the
    //! node is idle when it reads them) and `check_account` compares every answer of the
    //! running node to it, live and after a restart. A subscriber per partition polls from
    //! position 0 while the workload runs and must see every change exactly once, in order.
    //! `RAFT_READ_MODEL_SEED=<seed>` replays a run.

    use super::{all_changes, check_account, log_events, Answers, Logged, PARTITIONS};
    use engine::command::{entry_kind, NewAccount, NewTransfer};
    use engine::digest::state_digest;
    use engine::log::scan::scan_log;
    use engine::log::LogError;
    use engine::model::{account_flags, Currency};
    use engine::partition::partition_of;
    use engine::read_model::position::end_of_entry;
    use engine::read_model::{At, BalanceAsOf, HistoryKind, HistoryPage, HistoryQuery, QueryError};
    use engine::recovery::{log_dir, partition_dir};
    use engine::runtime::{EngineConfig, Node, Replication};
    use engine::state_machine::{ApplyOutput, PartitionState};
    use engine::ResultCode;
    use futures::executor::block_on;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Committed entries a restart re-applies into the read model at least
    /// (`read_model_rebuild_entries`).
    const REBUILD: u64 = 10;
    /// Entries per partition after the mid-run snapshot: more than `REBUILD`, fewer than the
    /// log kept behind the newest snapshot with a read model (2 × `REBUILD` here).
    const AFTER_SNAPSHOT: usize = 12;

    fn config(dir: &Path, history: usize) -> EngineConfig {
        let mut c = EngineConfig::new(dir);
        c.cores = vec![0, 1];
        c.partitions = PARTITIONS;
        c.segment_bytes = 4 << 20;
        c.snapshot_interval_entries = 0;
        c.snapshot_daily_days = 0;
        c.replication = Replication::Raft;
        c.read_model_history_per_account = history;
        c.read_model_rebuild_entries = REBUILD;
        c
    }

    /// A partition's read model as a running node answers for it (through its queue).
    struct NodeModel<'a> {
        node: &'a Node,
        partition: u32,
    }

    impl Answers for NodeModel<'_> {
        fn history(&self, q: &HistoryQuery) -> Result<HistoryPage, QueryError> {
            block_on(self.node.history(q.clone())).expect("the node answers")
        }
        fn balance_at(&self, account: u128, at: At) -> Result<BalanceAsOf, QueryError> {
            block_on(self.node.balance_at(account, at)).expect("the node answers")
        }
        fn read_position(&self) -> u64 {
            block_on(self.node.counters(self.partition))
                .expect("the node answers")
                .read_model_position
        }
    }

    /// The brute force of one partition: its committed log replayed through `apply_entry`.
    struct Replayed {
        state: PartitionState,
        events: Vec<Logged>,
        /// The state's last timestamp after each entry, by log index (a snapshot's seed time).
        last_timestamps: BTreeMap<u64, u64>,
    }

    impl Replayed {
        fn new(partition: u32) -> Replayed {
            Replayed {
                state: PartitionState::new(partition, PARTITIONS),
                events: Vec::new(),
                last_timestamps: BTreeMap::new(),
            }
        }

        /// Replays the entries of the partition's log after the last one replayed (they must
        /// all still be there: nothing may be purged before the brute force read it).
        fn catch_up(&mut self, data_dir: &Path) {
            let dir = log_dir(&partition_dir(data_dir, self.state.partition()));
            let mut out = ApplyOutput::default();
            let from = self.state.last_index() + 1;
            scan_log::<LogError>(&dir, from, |record| {
                let h = record.header;
                assert_eq!(h.index, self.state.last_index() + 1, "no entry missed");
                // As `RaftPartition::apply_one`: Raft's own entries carry nothing to apply.
                let (body, timestamp) = match h.kind {
                    entry_kind::BLANK | entry_kind::MEMBERSHIP => (&[][..], 0),
                    _ => (record.body, h.timestamp),
                };
                let applied_at = self.state.effective_timestamp(timestamp);
                out.clear();
                self.state
                    .apply_entry(h.index, h.kind, body, timestamp, &mut out)
                    .expect("a committed entry applies");
                log_events(h.index, applied_at, &out.events, &mut self.events);
                self.last_timestamps
                    .insert(h.index, self.state.last_timestamp());
                Ok(())
            })
            .expect("the log reads");
        }
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    /// Every account id the workload uses, 8 per partition: index 0 an issuer, 6 frozen, 7 in
    /// USD.
    fn ids() -> Vec<Vec<u128>> {
        (0..PARTITIONS)
            .map(|p| {
                (1u128..)
                    .filter(|id| partition_of(*id, PARTITIONS) == p)
                    .take(8)
                    .collect()
            })
            .collect()
    }

    fn new_account(ids: &[u128], i: usize) -> NewAccount {
        NewAccount {
            id: ids[i],
            currency: if i == 7 {
                Currency::parse("USD").unwrap()
            } else {
                eur()
            },
            flags: if i == 6 { account_flags::FROZEN } else { 0 },
            floor: if i == 0 { -1_000_000_000 } else { 0 },
            user_data: 0,
        }
    }

    /// `n` transfers from accounts of partition `from` to accounts of `to` (any partition when
    /// `None`); issuers fund the others, some ids are retries of recent ones.
    fn transfers(
        rng: &mut fastrand::Rng,
        ids: &[Vec<u128>],
        next_id: &mut u128,
        from: usize,
        to: Option<usize>,
        n: usize,
    ) -> Vec<NewTransfer> {
        (0..n)
            .map(|_| {
                let source = if rng.u32(..3) == 0 {
                    ids[from][0]
                } else {
                    ids[from][rng.usize(..8)]
                };
                let q = to.unwrap_or_else(|| rng.usize(..ids.len()));
                let id = if rng.u32(..10) == 0 && *next_id > 3 {
                    *next_id - rng.u128(1..3)
                } else {
                    *next_id += 1;
                    *next_id
                };
                NewTransfer {
                    id,
                    from: source,
                    to: ids[q][rng.usize(..8)],
                    amount: rng.u64(1..3_000),
                    currency: if rng.u32(..20) == 0 {
                        Currency::parse("USD").unwrap()
                    } else {
                        eur()
                    },
                    user_data: 0,
                }
            })
            .collect()
    }

    /// Waits until no TC/C runs and nothing new is applied (every entry proposed is committed
    /// and applied, the read model with it); returns each partition's last index.
    fn quiesce(node: &Node) -> Vec<u64> {
        let mut last = Vec::new();
        for _ in 0..1_000 {
            let stats: Vec<_> = (0..PARTITIONS)
                .map(|p| block_on(node.counters(p)).unwrap())
                .collect();
            let now: Vec<u64> = stats.iter().map(|s| s.last_index).collect();
            let settled = stats.iter().all(|s| {
                s.tcc_in_flight == 0
                    && s.read_model_position == end_of_entry(s.last_index)
                    && s.read_model_lag_entries == 0
            });
            if settled && now == last {
                return now;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the node does not settle");
    }

    /// Polls `partition`'s changes from position 0 in small pages, woken by `Node::watch` (or
    /// every 20 ms), until `stop` is set and it has caught up. Returns what it saw and how
    /// many wake-ups it got.
    fn subscribe(
        node: &Node,
        partition: u32,
        stop: &AtomicBool,
        seed: u64,
    ) -> (Vec<(u64, HistoryKind, u128)>, u64) {
        let mut rng = fastrand::Rng::with_seed(seed ^ u64::from(partition));
        let (wake, woken) = flume::bounded(1);
        block_on(node.watch(partition, wake)).unwrap();
        let (mut from, mut got, mut wakes) = (0u64, Vec::new(), 0u64);
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let page = block_on(node.events(partition, from, None, rng.usize(1..40)))
                .unwrap()
                .unwrap();
            assert!(page.next_from >= from);
            let idle = page.events.is_empty() && page.next_from == from;
            got.extend(
                page.events
                    .iter()
                    .map(|e| (e.position, e.kind, e.transfer_id)),
            );
            from = page.next_from;
            if idle {
                if stopping {
                    return (got, wakes);
                }
                if woken.recv_timeout(Duration::from_millis(20)).is_ok() {
                    wakes += 1;
                }
            }
        }
    }

    fn check_all(node: &Node, replayed: &[Replayed], max: usize, seeds: &[Option<(u64, u64)>]) {
        for (p, r) in replayed.iter().enumerate() {
            let model = NodeModel {
                node,
                partition: p as u32,
            };
            let mut rng = fastrand::Rng::with_seed(p as u64);
            for a in r.state.accounts_sorted() {
                check_account(&model, &r.events, a.id, p as u32, max, seeds[p], &mut rng);
            }
        }
    }

    fn run(seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let max = rng.usize(2..12);
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(config(dir.path(), max)).unwrap();
        let ids = ids();
        let mut next_id = 0u128;
        let stop = AtomicBool::new(false);

        // 1. A random workload, watched by a subscriber per partition from position 0.
        let seen = std::thread::scope(|scope| {
            let subscribers: Vec<_> = (0..PARTITIONS)
                .map(|p| {
                    let (node, stop) = (&node, &stop);
                    scope.spawn(move || subscribe(node, p, stop, seed))
                })
                .collect();
            // Most accounts at once (the others later, when the workload creates them).
            let accounts: Vec<NewAccount> = ids
                .iter()
                .flat_map(|ids| (0..8).map(|i| new_account(ids, i)))
                .filter(|a| a.id % 5 != 0)
                .collect();
            block_on(node.create_accounts(&accounts)).unwrap();
            let steps = rng.usize(20..60);
            for _ in 0..steps {
                if rng.u32(..8) == 0 {
                    let p = rng.usize(..ids.len());
                    let accounts: Vec<NewAccount> = (0..rng.usize(1..5))
                        .map(|_| new_account(&ids[p], rng.usize(..8)))
                        .collect();
                    block_on(node.create_accounts(&accounts)).unwrap();
                    continue;
                }
                // Several client batches at once: RaftTask merges them into entries.
                let batches: Vec<Vec<NewTransfer>> = (0..rng.usize(1..4))
                    .map(|_| {
                        let p = rng.usize(..ids.len());
                        let n = rng.usize(1..12);
                        transfers(&mut rng, &ids, &mut next_id, p, None, n)
                    })
                    .collect();
                let answers = block_on(futures::future::join_all(
                    batches.iter().map(|b| node.create_transfers(b)),
                ));
                for answer in answers {
                    assert!(answer
                        .unwrap()
                        .iter()
                        .all(|c| *c != ResultCode::StorageError));
                }
            }
            quiesce(&node);
            stop.store(true, Ordering::Release);
            subscribers
                .into_iter()
                .map(|s| s.join().unwrap())
                .collect::<Vec<_>>()
        });
        let mut replayed: Vec<Replayed> = (0..PARTITIONS).map(Replayed::new).collect();
        for r in &mut replayed {
            r.catch_up(dir.path());
        }
        for (p, r) in replayed.iter().enumerate() {
            let digest = block_on(node.stats(p as u32)).unwrap().digest;
            assert_eq!(
                digest,
                state_digest(&r.state),
                "the brute force replayed the log"
            );
            let (got, wakes) = &seen[p];
            assert_eq!(
                got,
                &all_changes(&r.state, &r.events, p as u32),
                "partition {p}: every change exactly once, in order"
            );
            assert!(*wakes > 0, "the subscriber was woken");
        }
        let changes: Vec<_> = seen.iter().flat_map(|(got, _)| got).collect();
        let credits = changes
            .iter()
            .filter(|c| c.1 == HistoryKind::TccCredit)
            .count();
        println!(
            "history {max} per account; {} changes seen, {credits} TC/C credits; entries {:?}",
            changes.len(),
            replayed
                .iter()
                .map(|r| r.state.last_index())
                .collect::<Vec<_>>()
        );
        assert!(changes.len() > 10, "the workload moved money");
        check_all(&node, &replayed, max, &[None, None]);

        // 2. A snapshot, then exactly AFTER_SNAPSHOT entries per partition (local transfers,
        //    one client batch each), so a restart can start from that snapshot.
        let snapshots: Vec<u64> = (0..PARTITIONS)
            .map(|p| block_on(node.snapshot(p)).unwrap().unwrap())
            .collect();
        for p in 0..ids.len() {
            for _ in 0..AFTER_SNAPSHOT {
                let n = rng.usize(1..8);
                let batch = transfers(&mut rng, &ids, &mut next_id, p, Some(p), n);
                block_on(node.create_transfers(&batch)).unwrap();
            }
        }
        let last = quiesce(&node);
        for (p, r) in replayed.iter_mut().enumerate() {
            r.catch_up(dir.path());
            assert_eq!(last[p], snapshots[p] + AFTER_SNAPSHOT as u64);
        }
        check_all(&node, &replayed, max, &[None, None]);
        node.shutdown().unwrap();

        // 3. A restart: the state machine starts from the mid-run snapshot (the newest one at
        //    least REBUILD entries before the end), not from the shutdown's, and openraft
        //    re-applies the entries after it, so their history is back; what lies before it
        //    is refused with that point.
        let node = Node::start(config(dir.path(), max)).unwrap();
        let mut seeds = Vec::new();
        for (p, r) in replayed.iter().enumerate() {
            let stats = block_on(node.counters(p as u32)).unwrap();
            assert_eq!(
                stats.last_index - stats.replayed_entries,
                snapshots[p],
                "partition {p} restarted from the mid-run snapshot"
            );
            seeds.push(Some((snapshots[p], r.last_timestamps[&snapshots[p]])));
            let seed_end = end_of_entry(snapshots[p]);
            let old = block_on(node.events(p as u32, 0, None, 10)).unwrap();
            assert!(
                matches!(old, Err(QueryError::BeforeRetained { oldest_position, .. }) if oldest_position == seed_end + 1),
                "{old:?}"
            );
            let after: Vec<_> = all_changes(&r.state, &r.events, p as u32)
                .into_iter()
                .filter(|c| c.0 > seed_end)
                .collect();
            let page = block_on(node.events(p as u32, seed_end + 1, None, 4096))
                .unwrap()
                .unwrap();
            let got: Vec<_> = page
                .events
                .iter()
                .map(|e| (e.position, e.kind, e.transfer_id))
                .collect();
            assert_eq!(got, after, "partition {p}: the changes after the snapshot");
        }
        check_all(&node, &replayed, max, &seeds);
        node.shutdown().unwrap();
    }

    #[test]
    fn raft_read_model_matches_brute_force_live_and_after_a_restart() {
        let seed = match std::env::var("RAFT_READ_MODEL_SEED") {
            Ok(s) => s.parse().expect("RAFT_READ_MODEL_SEED is a number"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7),
        };
        println!("raft read model seed {seed} (RAFT_READ_MODEL_SEED={seed} replays it)");
        run(seed);
    }
}
