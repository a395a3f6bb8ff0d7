//! The TC/C coordinator's bookkeeping for one partition: which client replies wait for which
//! cross-partition transfers, their Try timers, and the messages not yet handed to other
//! partitions. It holds no ledger state (that lives in `PartitionState`'s phase table, which is
//! durable); everything here is rebuilt from that table after a restart (`redrive`).

use super::request::{BatchReply, Request};
use crate::model::TransferId;
use crate::partition::PartitionId;
use crate::result_code::ResultCode;
use crate::state_machine::PartitionState;
use crate::tcc::{self, TccMessage};
use futures::channel::oneshot;
use hashbrown::HashMap;
use std::time::{Duration, Instant};

/// A client batch whose reply waits for TC/C outcomes.
pub(super) struct HeldReply {
    reply: oneshot::Sender<BatchReply>,
    answer: BatchReply,
    /// (item position, transfer id) of the items that were pending when the batch was held.
    pending: Vec<(usize, TransferId)>,
    remaining: usize,
}

/// A TC/C of this partition that is not decided yet, as the coordinator tracks it.
pub(super) struct Running {
    /// The client reply slot and item position waiting for its outcome (none after a restart).
    waiter: Option<(u32, u32)>,
    /// Further waiters (retries of the same id while it runs): rare, so usually empty and
    /// not allocated.
    more: Vec<(u32, u32)>,
}

/// Whose Try timer is this: a held client batch (slot + generation, so a reused slot is not
/// mistaken for the old one) or one group of re-driven transfers, which nobody waits for
/// (key into `Coordinator::redriven`: each group has its own start time).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    Batch { slot: usize, generation: u64 },
    Redriven { group: u64 },
}

#[derive(Default)]
pub(super) struct Coordinator {
    pub(super) held: Vec<Option<HeldReply>>,
    generations: Vec<u64>,
    free_slots: Vec<usize>,
    /// Every running TC/C of this partition, and who waits for it.
    pub(super) running: HashMap<TransferId, Running>,
    /// Timers in start order, one per held batch (not per transfer), so checking them costs
    /// nothing per transfer.
    timeline: std::collections::VecDeque<(Instant, Timer)>,
    /// Transfers re-driven after a restart or found running later (no client waits for
    /// them), in groups that started their timers together; a group goes when its last
    /// transfer finished, so a long-lived leader does not collect empty ones.
    redriven: HashMap<u64, Vec<TransferId>>,
    next_group: u64,
    /// Messages to other partitions not yet accepted by their queues.
    pub(super) outbox: Vec<(PartitionId, Vec<TccMessage>)>,
    /// Local messages (aborts) to log in the next group.
    pub(super) local: Vec<TccMessage>,
}

impl Coordinator {
    pub(super) fn has_work(&self) -> bool {
        !self.outbox.is_empty() || !self.local.is_empty() || !self.running.is_empty()
    }

    pub(super) fn hold(
        &mut self,
        reply: oneshot::Sender<BatchReply>,
        answer: BatchReply,
        pending: Vec<(usize, TransferId)>,
    ) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.held.push(None);
            self.generations.push(0);
            self.held.len() - 1
        });
        for &(position, id) in &pending {
            let waiter = (slot as u32, position as u32);
            let running = self.running.entry(id).or_insert(Running {
                waiter: None,
                more: Vec::new(),
            });
            if running.waiter.is_none() {
                running.waiter = Some(waiter);
            } else {
                running.more.push(waiter);
            }
        }
        self.held[slot] = Some(HeldReply {
            reply,
            answer,
            remaining: pending.len(),
            pending,
        });
        self.generations[slot] += 1;
        let timer = Timer::Batch {
            slot,
            generation: self.generations[slot],
        };
        self.timeline.push_back((Instant::now(), timer));
    }

    /// Tracks transfers re-driven at start, or found running later (a new leader learns of
    /// Tries of the previous term only as it applies them): nobody waits for them, but their
    /// Try timer runs from now. Ids already tracked keep their timers.
    pub(super) fn redrive(&mut self, ids: impl Iterator<Item = TransferId>) {
        let mut group = Vec::new();
        for id in ids {
            if let hashbrown::hash_map::Entry::Vacant(slot) = self.running.entry(id) {
                slot.insert(Running {
                    waiter: None,
                    more: Vec::new(),
                });
                group.push(id);
            }
        }
        if group.is_empty() {
            return;
        }
        self.next_group += 1;
        self.redriven.insert(self.next_group, group);
        let timer = Timer::Redriven {
            group: self.next_group,
        };
        self.timeline.push_back((Instant::now(), timer));
    }

    /// Transfers whose timer started before `cutoff` and that still run; their timers restart
    /// at `now`.
    pub(super) fn overdue(&mut self, cutoff: Instant, now: Instant) -> Vec<TransferId> {
        let mut due = Vec::new();
        let mut rearm = Vec::new();
        while let Some(&(at, timer)) = self.timeline.front() {
            if at > cutoff {
                break;
            }
            self.timeline.pop_front();
            let before = due.len();
            match timer {
                Timer::Batch { slot, generation } => {
                    if self.generations[slot] != generation {
                        continue;
                    }
                    if let Some(held) = &self.held[slot] {
                        due.extend(
                            held.pending
                                .iter()
                                .filter(|(position, _)| {
                                    held.answer.results[*position] == ResultCode::Pending
                                })
                                .map(|(_, id)| *id),
                        );
                    }
                }
                Timer::Redriven { group } => {
                    let running = &self.running;
                    if let Some(ids) = self.redriven.get_mut(&group) {
                        ids.retain(|id| running.contains_key(id));
                        if ids.is_empty() {
                            self.redriven.remove(&group);
                        } else {
                            due.extend(ids.iter().copied());
                        }
                    }
                }
            }
            if due.len() > before {
                rearm.push(timer);
            }
        }
        for timer in rearm {
            self.timeline.push_back((now, timer));
        }
        due
    }

    /// Turns Tries that waited longer than `try_timeout` into ABORT commands for the next entry
    /// of this partition (`local`: logged, so the decision is deterministic on replay), and
    /// sends a CONFIRM again whose ack is overdue.
    pub(super) fn abort_overdue(&mut self, state: &PartitionState, try_timeout: Duration) {
        let now = Instant::now();
        let Some(cutoff) = now.checked_sub(try_timeout) else {
            return;
        };
        for id in self.overdue(cutoff, now) {
            if let Some(record) = state.tcc_record(id) {
                if record.phase == tcc::phase::TRYING {
                    self.local.push(TccMessage::about(
                        tcc::kind::ABORT,
                        state.partition(),
                        &record.transfer,
                    ));
                } else if record.phase == tcc::phase::CONFIRMING {
                    // The confirm or its ack got lost: send it again (idempotent).
                    self.queue(&[(
                        record.destination,
                        TccMessage::about(tcc::kind::CONFIRM, state.partition(), &record.transfer),
                    )]);
                } else {
                    // Settled (confirmed, or cancelled with its acknowledgement perhaps still
                    // to come, which the re-drive resends): no timer left to run. Kept, it
                    // would keep `has_work` true and the task waking for good.
                    self.running.remove(&id);
                }
            } else {
                self.running.remove(&id);
            }
        }
    }

    /// Answers every held client batch now, its still-pending items with `code`, and forgets
    /// who waited (the transfers themselves stay tracked).
    pub(super) fn refuse_held(&mut self, code: ResultCode) {
        for (slot, held) in self.held.iter_mut().enumerate() {
            let Some(mut held) = held.take() else {
                continue;
            };
            for (position, _) in &held.pending {
                let result = &mut held.answer.results[*position];
                if *result == ResultCode::Pending {
                    *result = code;
                }
            }
            let _ = held.reply.send(held.answer);
            self.generations[slot] += 1;
            self.free_slots.push(slot);
        }
        for running in self.running.values_mut() {
            running.waiter = None;
            running.more.clear();
        }
    }

    /// Answers the waiters of a decided transfer. The first waiter is the request that started
    /// it (or, after a restart or a refusal, the first retry since): it gets `code`. Later ones
    /// are retries of the same id that found it running; like a retry of an applied transfer
    /// they get `exists` when it was confirmed (a client counting `ok` answers would count the
    /// transfer twice otherwise), and the same code when it was cancelled.
    pub(super) fn resolve(&mut self, id: TransferId, code: ResultCode) {
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        let retry_code = match code {
            ResultCode::Ok => ResultCode::Exists,
            other => other,
        };
        let waiters = running
            .waiter
            .map(|w| (w, code))
            .into_iter()
            .chain(running.more.into_iter().map(|w| (w, retry_code)));
        for ((slot, position), code) in waiters {
            let slot = slot as usize;
            let Some(held) = self.held[slot].as_mut() else {
                continue;
            };
            held.answer.results[position as usize] = code;
            held.remaining -= 1;
            if held.remaining == 0 {
                if let Some(done) = self.held[slot].take() {
                    let _ = done.reply.send(done.answer);
                }
                self.generations[slot] += 1;
                self.free_slots.push(slot);
            }
        }
    }

    /// Queues messages by destination (one batch per destination).
    pub(super) fn queue(&mut self, messages: &[(PartitionId, TccMessage)]) {
        for &(destination, message) in messages {
            match self.outbox.iter_mut().find(|(d, _)| *d == destination) {
                Some((_, batch)) => batch.push(message),
                None => self.outbox.push((destination, vec![message])),
            }
        }
    }

    /// Hands queued batches to their partitions' queues without ever blocking (two tasks
    /// waiting on each other's full queues would deadlock); what does not fit waits for the
    /// next tick.
    pub(super) fn ship(&mut self, peers: &[flume::Sender<Request>]) {
        let mut kept = Vec::new();
        for (destination, messages) in self.outbox.drain(..) {
            // The state machine addresses only partitions that exist (it refuses a message
            // naming another source), so this is a bug, not input: say so and drop them.
            let Some(peer) = peers.get(destination as usize) else {
                tracing::error!(
                    destination,
                    "TC/C messages for a partition that does not exist"
                );
                debug_assert!(false, "TC/C messages for partition {destination}");
                continue;
            };
            match peer.try_send(Request::Tcc { messages }) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(Request::Tcc { messages })) => {
                    kept.push((destination, messages))
                }
                Err(_) => {} // the peer stopped: the source re-drives after the next start
            }
        }
        self.outbox = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandBatch, NewAccount, NewTransfer};
    use crate::model::Currency;
    use crate::partition::partition_of;
    use crate::state_machine::ApplyOutput;

    fn apply(state: &mut PartitionState, batch: CommandBatch) -> ApplyOutput {
        let mut out = ApplyOutput::default();
        state.apply_next(&batch, &mut out).expect("applies");
        out
    }

    #[test]
    fn a_redriven_group_keeps_its_own_timer_and_known_ids_keep_theirs() {
        let mut c = Coordinator::default();
        let start = Instant::now();
        c.redrive([1u128, 2].into_iter());
        std::thread::sleep(Duration::from_millis(20));
        let later = Instant::now();
        // 2 is tracked already: only 3 starts a timer now.
        c.redrive([2u128, 3].into_iter());
        assert_eq!(c.running.len(), 3);
        // At a cutoff between the two groups only the first is due (3 started later).
        let mut due = c.overdue(start + Duration::from_millis(10), later);
        due.sort_unstable();
        assert_eq!(due, [1, 2]);
        // Everything tracked again changes nothing.
        c.redrive([1u128, 2, 3].into_iter());
        assert_eq!(c.redriven.values().map(Vec::len).sum::<usize>(), 3);
        // A group whose transfers all finished goes when its timer comes round.
        c.resolve(1, ResultCode::Ok);
        c.resolve(2, ResultCode::Ok);
        c.resolve(3, ResultCode::Ok);
        assert!(c.overdue(Instant::now(), Instant::now()).is_empty());
        assert!(c.redriven.is_empty(), "empty groups are dropped");
        assert!(c.timeline.is_empty());
    }

    #[test]
    fn a_retry_that_waited_for_a_running_transfer_answers_exists_or_its_cancel() {
        let mut c = Coordinator::default();
        let batch = |n: usize| BatchReply {
            results: vec![ResultCode::Pending; n],
            index: 1,
            timestamp: 1,
        };
        // The original request of transfer 5, then a retry of it in another batch (and one
        // inside the same batch), all waiting; then transfer 6 with a retry, cancelled.
        let (reply, mut original) = oneshot::channel();
        c.hold(reply, batch(2), vec![(0, 5), (1, 5)]);
        let (reply, mut retry) = oneshot::channel();
        c.hold(reply, batch(1), vec![(0, 5)]);
        c.resolve(5, ResultCode::Ok);
        let original = original.try_recv().unwrap().expect("answered");
        assert_eq!(original.results, [ResultCode::Ok, ResultCode::Exists]);
        let retry = retry.try_recv().unwrap().expect("answered");
        assert_eq!(retry.results, [ResultCode::Exists]);

        let (reply, mut first) = oneshot::channel();
        c.hold(reply, batch(1), vec![(0, 6)]);
        let (reply, mut again) = oneshot::channel();
        c.hold(reply, batch(1), vec![(0, 6)]);
        c.resolve(6, ResultCode::TccTimeout);
        for answered in [&mut first, &mut again] {
            let got = answered.try_recv().unwrap().expect("answered");
            assert_eq!(got.results, [ResultCode::TccTimeout]);
        }
    }

    #[test]
    fn refused_held_replies_answer_their_pending_items_and_nothing_else() {
        let mut c = Coordinator::default();
        let (reply, mut answered) = oneshot::channel();
        let answer = BatchReply {
            results: vec![ResultCode::Ok, ResultCode::Pending, ResultCode::Pending],
            index: 3,
            timestamp: 9,
        };
        c.hold(reply, answer, vec![(1, 11), (2, 12)]);
        c.resolve(12, ResultCode::Ok);
        assert!(answered.try_recv().unwrap().is_none(), "11 still runs");
        c.refuse_held(ResultCode::StorageError);
        let got = answered.try_recv().unwrap().expect("answered");
        assert_eq!(
            got.results,
            [ResultCode::Ok, ResultCode::StorageError, ResultCode::Ok]
        );
        // The transfer is still tracked, with nobody waiting: a late decision is harmless.
        assert!(c.running.contains_key(&11));
        c.resolve(11, ResultCode::Ok);
        assert!(c.running.is_empty());
    }

    #[test]
    fn a_settled_transfer_leaves_the_running_set_at_its_timer() {
        // A cross-partition transfer from partition 0 of 2, then aborted: CANCELLED, its
        // CANCEL not acknowledged yet.
        let mut state = PartitionState::new(0, 2);
        let ids: Vec<u128> = (1u128..)
            .filter(|id| partition_of(*id, 2) == 0)
            .take(2)
            .collect();
        let remote = (1u128..).find(|id| partition_of(*id, 2) == 1).unwrap();
        let eur = Currency::parse("EUR").unwrap();
        let accounts = ids
            .iter()
            .map(|&id| NewAccount {
                id,
                currency: eur,
                flags: 0,
                floor: if id == ids[0] { -1_000 } else { 0 },
                user_data: 0,
            })
            .collect();
        apply(&mut state, CommandBatch::CreateAccounts(accounts));
        let transfer = |id, from, to| NewTransfer {
            id,
            from,
            to,
            amount: 5,
            currency: eur,
            user_data: 0,
        };
        apply(
            &mut state,
            CommandBatch::CreateTransfers(vec![transfer(1, ids[0], ids[1])]),
        );
        let out = apply(
            &mut state,
            CommandBatch::CreateTransfers(vec![transfer(7, ids[1], remote)]),
        );
        assert_eq!(out.results, [ResultCode::Pending]);
        let abort = TccMessage::about(
            tcc::kind::ABORT,
            0,
            &state.tcc_record(7).expect("running").transfer,
        );
        apply(&mut state, CommandBatch::Tcc(vec![abort]));
        assert_eq!(
            state.tcc_record(7).map(|r| r.phase),
            Some(tcc::phase::CANCELLED)
        );

        let mut c = Coordinator::default();
        c.redrive([7u128].into_iter());
        assert!(c.has_work());
        std::thread::sleep(Duration::from_millis(5));
        c.abort_overdue(&state, Duration::from_millis(1));
        assert!(
            c.running.is_empty(),
            "a settled transfer has no timer to run"
        );
        assert!(c.local.is_empty(), "and nothing to abort");
        assert!(!c.has_work());
    }
}
