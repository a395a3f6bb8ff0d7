//! Deterministic, randomized simulation of TC/C across partitions. Partitions are plain state
//! machines with their own logs; a simulated network between them loses, duplicates and
//! reorders messages; partitions restart (state rebuilt by replaying their log, then the
//! coordinator re-drives); coordinators abort Tries at random. At the end, with the network
//! healed: no hold remains, money is conserved per currency, no balance is below its floor,
//! each transfer id has exactly one outcome, and replaying each log reproduces its state.
//!
//! Transfer ids are unique per source partition only (that is where their idempotency is
//! checked), so each partition numbers its transfers from 1: the same id travels from several
//! sources to one destination at once, which must keep them apart.
//!
//! Every run prints its seed; `TCC_SEED=<seed>` replays exactly that run.

use engine::command::{CommandBatch, NewAccount, NewTransfer};
use engine::digest::state_digest;
use engine::model::Currency;
use engine::partition::partition_of;
use engine::state_machine::{ApplyOutput, PartitionState};
use engine::tcc::{self, TccMessage};
use engine::ResultCode;
use std::collections::{BTreeMap, HashMap};

const PARTITIONS: u32 = 3;

struct Partition {
    state: PartitionState,
    log: Vec<(u16, rkyv::util::AlignedVec<16>, u64)>,
    clock: u64,
}

impl Partition {
    fn new(p: u32) -> Partition {
        Partition {
            state: PartitionState::new(p, PARTITIONS),
            log: Vec::new(),
            clock: 1_000,
        }
    }

    fn apply(&mut self, batch: CommandBatch, out: &mut ApplyOutput) {
        let mut body = rkyv::util::AlignedVec::<16>::new();
        batch.encode_into(&mut body);
        self.clock = self.clock.max(self.state.next_timestamp_floor()) + 5;
        let index = self.state.last_index() + 1;
        out.clear();
        self.state
            .apply_entry(index, batch.kind(), &body, self.clock, out)
            .unwrap();
        self.log.push((batch.kind(), body, self.clock));
    }

    /// A crash and restart: the state is rebuilt from the log alone.
    fn restart(&mut self) {
        let before = state_digest(&self.state);
        let mut state = PartitionState::new(self.state.partition(), PARTITIONS);
        let mut out = ApplyOutput::default();
        for (i, (kind, body, ts)) in self.log.iter().enumerate() {
            out.clear();
            state
                .apply_entry(i as u64 + 1, *kind, body, *ts, &mut out)
                .unwrap();
        }
        assert_eq!(state_digest(&state), before, "replay reproduces the state");
        self.state = state;
    }
}

struct World {
    rng: fastrand::Rng,
    partitions: Vec<Partition>,
    network: Vec<(u32, TccMessage)>,
    /// Accounts of each partition: (issuer, wallets incl. a frozen one and a USD one).
    accounts: Vec<(u128, Vec<u128>)>,
    /// Every transfer ever submitted, by source partition and id (retries reuse ids).
    submitted: BTreeMap<(u32, u128), NewTransfer>,
    /// Final outcomes reported to clients, by source partition and id: exactly one each.
    outcomes: HashMap<(u32, u128), ResultCode>,
    /// The next id of each partition's transfers.
    next_id: Vec<u128>,
    stats: BTreeMap<&'static str, u64>,
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

impl World {
    fn new(seed: u64) -> World {
        let mut partitions: Vec<Partition> = (0..PARTITIONS).map(Partition::new).collect();
        let mut accounts = Vec::new();
        let mut out = ApplyOutput::default();
        for (p, partition) in partitions.iter_mut().enumerate() {
            let ids: Vec<u128> = (1u128..)
                .filter(|id| partition_of(*id, PARTITIONS) == p as u32)
                .take(9)
                .collect();
            let issuer = ids[0];
            let mut new_accounts = vec![NewAccount {
                id: issuer,
                currency: eur(),
                flags: 0,
                floor: -1_000_000_000,
                user_data: 0,
            }];
            for (i, &id) in ids[1..].iter().enumerate() {
                let (currency, flags) = match i {
                    6 => (Currency::parse("USD").unwrap(), 0),
                    7 => (eur(), engine::model::account_flags::FROZEN),
                    _ => (eur(), 0),
                };
                new_accounts.push(NewAccount {
                    id,
                    currency,
                    flags,
                    floor: 0,
                    user_data: 0,
                });
            }
            partition.apply(CommandBatch::CreateAccounts(new_accounts), &mut out);
            assert!(out.results.iter().all(|c| *c == ResultCode::Ok));
            let deposits: Vec<NewTransfer> = ids[1..7]
                .iter()
                .enumerate()
                .map(|(i, &to)| NewTransfer {
                    id: (1u128 << 100) + (p * 10 + i) as u128,
                    from: issuer,
                    to,
                    amount: 10_000,
                    currency: eur(),
                    user_data: 0,
                })
                .collect();
            partition.apply(CommandBatch::CreateTransfers(deposits), &mut out);
            assert!(out.results.iter().all(|c| *c == ResultCode::Ok));
            accounts.push((issuer, ids[1..].to_vec()));
        }
        World {
            rng: fastrand::Rng::with_seed(seed),
            partitions,
            network: Vec::new(),
            accounts,
            submitted: BTreeMap::new(),
            outcomes: HashMap::new(),
            next_id: vec![1; PARTITIONS as usize],
            stats: BTreeMap::new(),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Collects what an apply on partition `p` produced: messages onto the network, final
    /// outcomes (of `p`'s own transfers).
    fn collect(&mut self, p: usize, out: &mut ApplyOutput) {
        self.network.append(&mut out.outbox);
        for (id, code) in out.resolved.drain(..) {
            let previous = self.outcomes.insert((p as u32, id), code);
            assert!(
                previous.is_none(),
                "transfer {id} of partition {p} decided twice ({previous:?}, then {code})"
            );
            self.count(if code == ResultCode::Ok {
                "tcc confirmed"
            } else {
                "tcc cancelled"
            });
        }
    }

    fn random_account(&mut self) -> u128 {
        if self.rng.u8(..50) == 0 {
            return 9_999_999; // never created
        }
        let p = self.rng.usize(..PARTITIONS as usize);
        let wallets = &self.accounts[p].1;
        wallets[self.rng.usize(..wallets.len())]
    }

    fn submit_batch(&mut self) {
        let p = self.rng.usize(..PARTITIONS as usize);
        let mut batch = Vec::new();
        for _ in 0..self.rng.usize(1..8) {
            let own: Vec<NewTransfer> = self
                .submitted
                .range((p as u32, 0)..(p as u32 + 1, 0))
                .map(|(_, t)| *t)
                .collect();
            let retry = !own.is_empty() && self.rng.u8(..10) == 0;
            let transfer = if retry {
                let mut t = own[self.rng.usize(..own.len())];
                if self.rng.bool() {
                    t.amount += 1; // same id, different fields
                }
                t
            } else {
                let wallets = self.accounts[p].1.clone();
                let from = wallets[self.rng.usize(..wallets.len())];
                let mut to = self.random_account();
                if to == from {
                    to = self.accounts[p].0;
                }
                let t = NewTransfer {
                    id: self.next_id[p],
                    from,
                    to,
                    amount: self.rng.u64(1..400),
                    currency: eur(),
                    user_data: 0,
                };
                self.next_id[p] += 1;
                self.submitted.insert((p as u32, t.id), t);
                t
            };
            if partition_of(transfer.from, PARTITIONS) == p as u32 {
                batch.push(transfer);
            }
        }
        let mut out = ApplyOutput::default();
        self.partitions[p].apply(CommandBatch::CreateTransfers(batch.clone()), &mut out);
        for (t, code) in batch.iter().zip(out.results.clone()) {
            let fresh = !self.outcomes.contains_key(&(p as u32, t.id));
            match code {
                ResultCode::Pending => self.count("pending"),
                ResultCode::Exists | ResultCode::ExistsWithDifferentFields => {
                    self.count("retry answered")
                }
                code if fresh && code == ResultCode::Ok => {
                    self.outcomes.insert((p as u32, t.id), ResultCode::Ok);
                    self.count("same-partition ok");
                }
                _ => self.count("rejected at once"),
            }
        }
        self.collect(p, &mut out);
    }

    fn deliver(&mut self, lossy: bool) {
        let batch_max = if lossy { 6 } else { 64 };
        if self.network.is_empty() {
            return;
        }
        // Several messages to one destination in one entry, picked out of order.
        let first = self.rng.usize(..self.network.len());
        let destination = self.network[first].0;
        let mut messages = Vec::new();
        let mut i = 0;
        while i < self.network.len() && messages.len() < batch_max {
            if self.network[i].0 == destination && (i == first || !lossy || self.rng.bool()) {
                let (_, m) = self.network.swap_remove(i);
                if lossy && self.rng.u8(..10) == 0 {
                    self.count("lost");
                    continue;
                }
                if lossy && self.rng.u8(..10) == 0 {
                    self.network.push((destination, m));
                    self.count("duplicated");
                }
                messages.push(m);
            } else {
                i += 1;
            }
        }
        if messages.is_empty() {
            return;
        }
        let mut out = ApplyOutput::default();
        self.partitions[destination as usize].apply(CommandBatch::Tcc(messages), &mut out);
        self.collect(destination as usize, &mut out);
        self.count("delivered batches");
    }

    fn abort_random(&mut self) {
        let p = self.rng.usize(..PARTITIONS as usize);
        let redrive = self.partitions[p].state.tcc_redrive();
        let trying: Vec<TccMessage> = redrive
            .into_iter()
            .filter(|(_, m)| m.kind == tcc::kind::TRY)
            .map(|(_, m)| m)
            .collect();
        if trying.is_empty() {
            return;
        }
        let mut abort = trying[self.rng.usize(..trying.len())];
        abort.kind = tcc::kind::ABORT;
        let mut out = ApplyOutput::default();
        self.partitions[p].apply(CommandBatch::Tcc(vec![abort]), &mut out);
        self.collect(p, &mut out);
        self.count("aborts");
    }

    fn restart_random(&mut self) {
        let p = self.rng.usize(..PARTITIONS as usize);
        self.partitions[p].restart();
        let redrive = self.partitions[p].state.tcc_redrive();
        self.network.extend(redrive);
        self.count("restarts");
    }

    fn step(&mut self) {
        match self.rng.u8(..100) {
            0..=34 => self.submit_batch(),
            35..=84 => self.deliver(true),
            85..=89 => self.abort_random(),
            90..=92 => self.restart_random(),
            _ => {
                let p = self.rng.usize(..PARTITIONS as usize);
                let redrive = self.partitions[p].state.tcc_redrive();
                self.network.extend(redrive);
            }
        }
    }

    /// Heals the network and runs until every TC/C is decided.
    fn settle(&mut self) {
        for round in 0..100_000 {
            let in_flight: usize = self
                .partitions
                .iter()
                .map(|p| p.state.tcc_in_flight())
                .sum();
            if in_flight == 0 && self.network.is_empty() {
                return;
            }
            if self.network.is_empty() || round % 50 == 49 {
                for p in 0..PARTITIONS as usize {
                    let redrive = self.partitions[p].state.tcc_redrive();
                    self.network.extend(redrive);
                }
            }
            self.deliver(false);
        }
        for (source, p) in self.partitions.iter().enumerate() {
            for r in p.state.tcc_records_sorted() {
                if r.phase != tcc::phase::CANCELLED {
                    let q = &self.partitions[r.destination as usize].state;
                    let part = q
                        .participants_sorted()
                        .into_iter()
                        .find(|x| x.id == r.transfer.id && x.source == source as u32);
                    eprintln!("stuck: {r:?}\n  participant: {part:?}");
                }
            }
        }
        panic!(
            "TC/C did not settle ({} messages in flight)",
            self.network.len()
        );
    }

    fn check(&mut self, seed: u64) {
        let mut total: BTreeMap<Currency, i128> = BTreeMap::new();
        for p in &self.partitions {
            for (currency, sum) in p.state.totals_by_currency() {
                *total.entry(currency).or_default() += sum;
            }
            assert_eq!(p.state.accounts_below_floor(), 0, "seed {seed}");
            assert_eq!(p.state.tcc_in_flight(), 0, "seed {seed}");
            for a in p.state.accounts_sorted() {
                assert_eq!(a.held, 0, "a hold leaked on account {} (seed {seed})", a.id);
                assert_eq!(
                    a.incoming, 0,
                    "a reservation leaked on account {} (seed {seed})",
                    a.id
                );
            }
        }
        for (currency, sum) in total {
            assert_eq!(sum, 0, "money not conserved in {currency} (seed {seed})");
        }
        // Exactly one outcome per id, and the state agrees with it.
        for (&(from_partition, id), t) in &self.submitted {
            let id = &id;
            assert_eq!(partition_of(t.from, PARTITIONS), from_partition);
            let source = &self.partitions[from_partition as usize].state;
            let applied = source.transfer(*id).is_some();
            let cancelled = source
                .tcc_record(*id)
                .is_some_and(|r| r.phase == tcc::phase::CANCELLED);
            assert!(
                !(applied && cancelled),
                "transfer {id} both applied and cancelled (seed {seed})"
            );
            match self.outcomes.get(&(from_partition, *id)) {
                Some(ResultCode::Ok) => assert!(
                    applied,
                    "transfer {id} reported ok but not applied (seed {seed})"
                ),
                Some(_) => assert!(
                    cancelled,
                    "transfer {id} reported cancelled but not filed so (seed {seed})"
                ),
                None => assert!(
                    !applied && !cancelled,
                    "transfer {id} has an outcome nobody was told (seed {seed})"
                ),
            }
            if partition_of(t.to, PARTITIONS) != partition_of(t.from, PARTITIONS) && applied {
                let destination = &self.partitions[partition_of(t.to, PARTITIONS) as usize].state;
                let credited = destination.participants_sorted().iter().any(|p| {
                    p.id == *id
                        && p.source == from_partition
                        && p.state == tcc::participant::CONFIRMED
                });
                assert!(
                    credited,
                    "transfer {id} confirmed without its credit (seed {seed})"
                );
            }
        }
        for p in &mut self.partitions {
            p.restart(); // asserts replay == live
        }
    }
}

fn run(seed: u64, steps: usize) -> BTreeMap<&'static str, u64> {
    let mut world = World::new(seed);
    for _ in 0..steps {
        world.step();
    }
    world.settle();
    world.check(seed);
    world.stats
}

#[test]
fn tcc_survives_loss_duplication_reordering_and_restarts() {
    let seeds: Vec<u64> = match std::env::var("TCC_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let base = fastrand::u64(..);
            (0..24).map(|i| base.wrapping_add(i)).collect()
        }
    };
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in seeds {
        println!("TCC_SEED={seed}");
        for (k, v) in run(seed, 3_000) {
            *totals.entry(k).or_default() += v;
        }
    }
    println!("{totals:?}");
    assert!(
        totals.get("tcc confirmed").copied().unwrap_or(0) > 1_000,
        "the workload confirms TC/Cs: {totals:?}"
    );
    assert!(
        totals.get("tcc cancelled").copied().unwrap_or(0) > 100,
        "and cancels some: {totals:?}"
    );
    assert!(
        totals.get("lost").copied().unwrap_or(0) > 100
            && totals.get("restarts").copied().unwrap_or(0) > 100
    );
}

/// A message's `source` comes over the network and says where answers go: one naming a
/// partition the cluster does not have is ignored (nothing reserved, nothing addressed to it).
#[test]
fn a_message_from_a_partition_that_does_not_exist_is_ignored() {
    let mut world = World::new(1);
    let to = world.accounts[0].1[0];
    let before = world.partitions[0]
        .state
        .accounts_sorted()
        .into_iter()
        .find(|a| a.id == to)
        .expect("the account");
    let mut out = ApplyOutput::default();
    for kind in [
        tcc::kind::TRY,
        tcc::kind::CONFIRM,
        tcc::kind::CANCEL,
        tcc::kind::TRY_RESULT,
    ] {
        let message = TccMessage {
            kind,
            code: 0,
            source: PARTITIONS + 7,
            id: 42,
            from: world.accounts[1].1[0],
            to,
            amount: 5,
            currency: eur(),
            user_data: 0,
        };
        world.partitions[0].apply(CommandBatch::Tcc(vec![message]), &mut out);
        assert!(
            out.outbox.is_empty(),
            "kind {kind} answered {:?}",
            out.outbox
        );
    }
    let after = world.partitions[0]
        .state
        .accounts_sorted()
        .into_iter()
        .find(|a| a.id == to)
        .expect("the account");
    assert_eq!(before, after, "nothing reserved or credited");
    assert!(world.partitions[0].state.participants_sorted().is_empty());
}

/// A credit must leave room for what is in flight to the same account: a local deposit that
/// fits the balance alone but not with a confirmed-later incoming amount is refused
/// (`overflow`), so the Confirm, which cannot be refused, never overflows.
#[test]
fn a_credit_leaves_room_for_a_confirm_in_flight() {
    let mut world = World::new(2);
    let (a, b) = (world.accounts[0].1[0], world.accounts[1].1[0]);
    let account = |world: &World, id: u128| {
        let p = partition_of(id, PARTITIONS) as usize;
        world.partitions[p]
            .state
            .accounts_sorted()
            .into_iter()
            .find(|x| x.id == id)
            .expect("the account")
    };
    // An issuer in b's partition that can issue up to i64::MAX.
    let big_issuer = (1u128..)
        .filter(|id| partition_of(*id, PARTITIONS) == 1)
        .nth(20)
        .unwrap();
    let mut out = ApplyOutput::default();
    world.partitions[1].apply(
        CommandBatch::CreateAccounts(vec![NewAccount {
            id: big_issuer,
            currency: eur(),
            flags: 0,
            floor: i64::MIN,
            user_data: 0,
        }]),
        &mut out,
    );
    assert_eq!(out.results, [ResultCode::Ok]);
    let transfer = |id, from, to, amount| NewTransfer {
        id,
        from,
        to,
        amount,
        currency: eur(),
        user_data: 0,
    };
    // a (partition 0) sends 100 to b (partition 1); b's partition reserves it.
    world.partitions[0].apply(
        CommandBatch::CreateTransfers(vec![transfer(1, a, b, 100)]),
        &mut out,
    );
    assert_eq!(out.results, [ResultCode::Pending]);
    world.collect(0, &mut out);
    let (destination, try_message) = world.network.pop().expect("the Try");
    assert_eq!(destination, 1);
    world.partitions[1].apply(CommandBatch::Tcc(vec![try_message]), &mut out);
    world.collect(1, &mut out);
    assert_eq!(account(&world, b).incoming, 100);

    // A deposit that fits b's balance alone, not with the 100 on their way, is refused; one
    // that leaves room is taken.
    let room = (i64::MAX - account(&world, b).balance) as u64;
    world.partitions[1].apply(
        CommandBatch::CreateTransfers(vec![
            transfer(2, big_issuer, b, room - 50),
            transfer(3, big_issuer, b, room - 100),
        ]),
        &mut out,
    );
    assert_eq!(out.results, [ResultCode::Overflow, ResultCode::Ok]);
    world.collect(1, &mut out);

    // The decision and the Confirm land without overflow: b holds exactly i64::MAX.
    world.settle();
    assert_eq!(account(&world, b).balance, i64::MAX);
    assert_eq!(account(&world, b).incoming, 0);
    assert_eq!(world.outcomes.get(&(0, 1)), Some(&ResultCode::Ok));
}
