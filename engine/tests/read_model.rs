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

use engine::command::{CommandBatch, NewAccount, NewTransfer};
use engine::event::Event;
use engine::model::{account_flags, Currency};
use engine::partition::partition_of;
use engine::read_model::position::{end_of_entry, position};
use engine::read_model::{At, HistoryKind, HistoryQuery, QueryError, ReadModel, FROM_NOW};
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
        // The brute force's own record of every event, with its time (the item's timestamp
        // where the event carries one, else the latest time seen in the entry).
        let mut clock = part.clock;
        for (ordinal, event) in self.out.events.iter().enumerate() {
            let own = match event {
                Event::AccountCreated(a) => a.timestamp,
                Event::TransferApplied(t) | Event::TccTried(t) => t.timestamp,
                Event::TransferRejected { timestamp, .. } => *timestamp,
                _ => 0,
            };
            clock = clock.max(own);
            part.events.push((position(index, ordinal), clock, *event));
        }
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

/// Checks one read model's answers for `account` against the brute force. `seeded_at`:
/// the entry index the model was seeded at (None: fed from the first entry).
fn check_account(
    model: &ReadModel,
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
    // Every change of every account, once per event (a local transfer is one change).
    let mut want: Vec<(u64, HistoryKind, u128)> = Vec::new();
    for a in part.state.accounts_sorted() {
        for c in changes_of(&part.events, a.id, partition).1 {
            want.push((c.position, c.kind, c.transfer_id));
        }
    }
    want.sort_unstable();
    want.dedup();
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
