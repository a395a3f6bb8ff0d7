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
/// mistaken for the old one) or the transfers re-driven at start, which nobody waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    Batch { slot: usize, generation: u64 },
    Redriven,
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
    /// Transfers re-driven after a restart (no client waits for them).
    redriven: Vec<TransferId>,
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

    /// Tracks transfers re-driven at start (nobody waits for them).
    pub(super) fn redrive(&mut self, ids: impl Iterator<Item = TransferId>) {
        for id in ids {
            self.running.entry(id).or_insert(Running {
                waiter: None,
                more: Vec::new(),
            });
            self.redriven.push(id);
        }
        self.timeline.push_back((Instant::now(), Timer::Redriven));
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
                Timer::Redriven => {
                    let running = &self.running;
                    self.redriven.retain(|id| running.contains_key(id));
                    due.extend(self.redriven.iter().copied());
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
                }
            } else {
                self.running.remove(&id);
            }
        }
    }

    pub(super) fn resolve(&mut self, id: TransferId, code: ResultCode) {
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        for (slot, position) in running.waiter.into_iter().chain(running.more) {
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
