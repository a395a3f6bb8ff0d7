//! Offline audit of a data dir (a live one or a copied set of segments and snapshots):
//! verifying every record of every log, dumping them, and replaying them to rebuild the state
//! as of any moment. These answer the auditor's questions from the log alone: the state machine
//! is deterministic, so the same log always yields the same balances.
//!
//! They read every record still on disk, also those a Raft log purged and keeps as history
//! behind its oldest snapshot (`scan_log_history`): a replay as of a past day starts from
//! that day's snapshot and reads on from there.

use crate::command::{entry_kind, ArchivedNewAccount, ArchivedNewTransfer};
use crate::digest::{combine_digests, state_digest};
use crate::event::Event;
use crate::log::{
    body_bytes_of_kinds, scan_log_history, scan_log_history_segments, LogError, RecordRef,
};
use crate::model::Transfer;
use crate::recovery::{log_dir, partition_dir, snapshot_dir};
use crate::result_code::ResultCode;
use crate::snapshot::{list_snapshots, load_snapshot, snapshot_timestamp};
use crate::state_machine::{ApplyOutput, PartitionState};
use memmap2::Mmap;
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}: not a walletd data dir (no `partitions` file)")]
    NotADataDir(String),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The replay would start below what the log still holds: a Raft log purges the entries
    /// its snapshots cover (keeping, with daily snapshots, those from the oldest kept one on),
    /// so only a replay from a snapshot whose log is still there works.
    #[error("partition {partition}: the replay must start at log entry {from}, but the log holds entries only from {first} on (purged after a snapshot); replay from a newer snapshot instead of from genesis, or pass an --until at or after that snapshot")]
    Purged {
        partition: u32,
        from: u64,
        first: u64,
    },
    /// The log's first segment starts later than anything was purged: segments are missing
    /// from the front (deleted or not copied), which no checksum inside the others shows.
    #[error("partition {partition}: the log starts at entry {first}, but nothing before entry {expected} was purged: entries {expected}..{first} are missing (a deleted or uncopied segment)")]
    MissingStart {
        partition: u32,
        expected: u64,
        first: u64,
    },
    #[error("partition {partition}, log entry {index}: {reason}")]
    Apply {
        partition: u32,
        index: u64,
        reason: String,
    },
}

/// The partition count recorded in a data dir.
pub fn partition_count(data_dir: &Path) -> Result<u32, AuditError> {
    std::fs::read_to_string(data_dir.join("partitions"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| AuditError::NotADataDir(data_dir.display().to_string()))
}

/// What `verify` found in one partition's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReport {
    pub partition: u32,
    pub segments: usize,
    pub records: u64,
    pub first_index: u64,
    pub last_index: u64,
    /// A torn tail (file, offset) that a start would cut off.
    pub torn_tail: Option<(String, u64)>,
}

/// Validates every record of every partition's log: checksums, index continuity, and the
/// torn-tail rule. The first damage is an error naming file and offset.
pub fn verify(data_dir: &Path) -> Result<Vec<LogReport>, AuditError> {
    let mut reports = Vec::new();
    for partition in 0..partition_count(data_dir)? {
        let dir = log_dir(&partition_dir(data_dir, partition));
        let mut records = 0u64;
        let tail = scan_log_history::<LogError>(&dir, 1, |_| {
            records += 1;
            Ok(())
        })?;
        // A local log is never purged (it starts at 1); a Raft log holds everything after
        // its last purge (a purge deletes whole segments, so it may hold a little before too).
        let expected = tail.raft_meta.first_unpurged_index();
        if records > 0 && tail.first_index > expected {
            return Err(AuditError::MissingStart {
                partition,
                expected,
                first: tail.first_index,
            });
        }
        reports.push(LogReport {
            partition,
            segments: tail.segments.len(),
            records,
            first_index: if records == 0 { 0 } else { tail.first_index },
            last_index: tail.last_index,
            torn_tail: tail.torn.map(|t| (t.path.display().to_string(), t.offset)),
        });
    }
    Ok(reports)
}

/// Calls `visit(partition, record)` for every valid record of every partition, in order.
pub fn visit_records(
    data_dir: &Path,
    mut visit: impl FnMut(u32, &RecordRef<'_>),
) -> Result<(), AuditError> {
    for partition in 0..partition_count(data_dir)? {
        let dir = log_dir(&partition_dir(data_dir, partition));
        scan_log_history::<LogError>(&dir, 1, |record| {
            visit(partition, &record);
            Ok(())
        })?;
    }
    Ok(())
}

/// The result of a replay.
#[derive(Clone)]
pub struct ReplayReport {
    /// Events derived (one or more per command item).
    pub events: u64,
    pub entries: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub digest: u128,
    /// Sum of `balance + held` over every account (0 when nothing is in flight).
    pub balances_total: i128,
    pub states: Vec<PartitionState>,
}

/// Rebuilds every partition from its log, as of `until` (ns since the epoch: every item whose
/// time is at or before it, item `i` of an entry being at the entry's time + `i`, as the read
/// model's balance-as-of counts; `None` = everything). A snapshot is used as the
/// starting point when it lies before `until` (`from_genesis` forces a full replay).
/// Partitions are independent, so each replays on its own thread (the partitions of one core
/// would otherwise wait for each other); the result does not depend on thread timing.
pub fn replay(
    data_dir: &Path,
    until: Option<u64>,
    from_genesis: bool,
) -> Result<ReplayReport, AuditError> {
    let count = partition_count(data_dir)?;
    let started = Instant::now();
    let until = until.unwrap_or(u64::MAX);
    let replayed = each_on_its_own_thread(0..count, |partition| {
        replay_partition(
            data_dir,
            partition,
            count,
            until,
            from_genesis,
            false,
            |_, _, _| {},
        )
    });
    let mut events = 0u64;
    let mut entries = 0u64;
    let mut states = Vec::new();
    for r in replayed {
        let r = r?;
        events += r.events;
        entries += r.entries;
        states.push(r.state);
    }
    let seconds = started.elapsed().as_secs_f64();
    // Each digest walks a whole partition (and sorts its accounts): one thread per partition,
    // as the replay itself, combined in partition order. (A state is not `Sync`: each moves
    // to its thread and back.)
    let (states, digests): (Vec<PartitionState>, Vec<u128>) =
        each_on_its_own_thread(states, |state| {
            let digest = state_digest(&state);
            (state, digest)
        })
        .into_iter()
        .unzip();
    let balances_total = states
        .iter()
        .flat_map(|s| s.totals_by_currency())
        .map(|(_, total)| total)
        .sum();
    Ok(ReplayReport {
        events,
        entries,
        seconds,
        events_per_sec: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
        digest: combine_digests(&digests),
        balances_total,
        states,
    })
}

/// `work(item)` for every item, each on a thread of its own; the results in item order.
fn each_on_its_own_thread<T: Send, R: Send>(
    items: impl IntoIterator<Item = T>,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let work = &work;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("an audit thread panicked"))
            .collect()
    })
}

/// One partition rebuilt by `replay_partition`.
struct PartitionReplay {
    state: PartitionState,
    events: u64,
    entries: u64,
}

/// Rebuilds one partition up to `until`, calling `after_entry(state, output, entry timestamp)`
/// after each applied entry.
fn replay_partition(
    data_dir: &Path,
    partition: u32,
    count: u32,
    until: u64,
    from_genesis: bool,
    keep_events: bool,
    mut after_entry: impl FnMut(&PartitionState, &ApplyOutput, u64),
) -> Result<PartitionReplay, AuditError> {
    let pdir = partition_dir(data_dir, partition);
    let mut state = PartitionState::new(partition, count);
    if !from_genesis {
        for (_, path) in list_snapshots(&snapshot_dir(&pdir))?.into_iter().rev() {
            // The header says when it was taken: a snapshot after `until` is not loaded (it
            // may be gigabytes) just to learn that.
            if snapshot_timestamp(&path).is_some_and(|t| t > until) {
                continue;
            }
            match load_snapshot(&path) {
                Ok(loaded)
                    if loaded.state.last_timestamp() <= until
                        && loaded.state.partition_count() == count
                        && loaded.state.partition() == partition =>
                {
                    state = loaded.state;
                    break;
                }
                Ok(_) => {}
                // An older snapshot (or genesis) gives the same answer, only slower.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a snapshot that does not load")
                }
            }
        }
    }
    let from = state.last_index() + 1;
    // Room for every transfer the log can hold (an upper bound: rejected items take room too),
    // so the index does not rehash and fault in memory again each time it doubles.
    let [account_bytes, transfer_bytes] = body_bytes_of_kinds(
        &log_dir(&pdir),
        from,
        until,
        [entry_kind::CREATE_ACCOUNTS, entry_kind::CREATE_TRANSFERS],
    )?;
    state.reserve_accounts(
        (account_bytes / std::mem::size_of::<ArchivedNewAccount>() as u64) as usize,
    );
    let transfers_max =
        (transfer_bytes / std::mem::size_of::<ArchivedNewTransfer>() as u64) as usize;
    // Zero-copy: the transfers applied stay in the mapped segments (`mapped_transfers`)
    // instead of being copied into ~1 GiB of fresh memory per 12M transfers; the index is
    // sized for them once.
    state.keep_transfers_in_log(transfers_max);
    let (mut events, mut entries) = (0u64, 0u64);
    // A replay for balances only counts events; a trace compares them.
    let mut out = if keep_events {
        ApplyOutput::default()
    } else {
        ApplyOutput::counting_events()
    };
    let mut failure: Option<AuditError> = None;
    let mut past_until = false;
    // Never a silent partial replay: the first record read must be the one the state needs
    // next, and a log purged past it (a Raft log purges what its snapshots cover) is refused
    // even when no record is left to read (checked after the scan, from its `raft_meta`).
    let mut first_seen: Option<u64> = None;
    // A segment just mapped, handed to the state before its first record applies.
    let next_segment: Cell<Option<Arc<Mmap>>> = Cell::new(None);
    let tail = scan_log_history_segments::<LogError>(
        &log_dir(&pdir),
        from,
        |segment| next_segment.set(segment.shared_map()),
        |record| {
            if let Some(map) = next_segment.take() {
                state.add_log_segment(map);
            }
            if first_seen.is_none() {
                first_seen = Some(record.header.index);
                if record.header.index != from {
                    failure = Some(AuditError::Purged {
                        partition,
                        from,
                        first: record.header.index,
                    });
                }
            }
            // Entries apply in index order, so the first entry past `until` ends the replay (a
            // later Raft blank or membership entry, stamped 0, must not be applied after a gap).
            // A command entry counts at the time it is applied at, which a Raft log may have
            // clamped above its header's (`PartitionState::effective_timestamp`).
            let applied_at = state.effective_timestamp(record.header.timestamp);
            past_until =
                past_until || (!entry_kind::is_raft(record.header.kind) && applied_at > until);
            if failure.is_some() || past_until {
                return Ok(());
            }
            // Item `i` of an entry happened at `applied_at + i`: the entry `until` falls inside
            // counts up to its item at `until`, as the read model's balance-as-of does.
            let items_max = usize::try_from(until.saturating_sub(applied_at).saturating_add(1))
                .unwrap_or(usize::MAX);
            out.clear();
            match state.apply_entry_prefix(
                record.header.index,
                record.header.kind,
                record.body,
                record.header.timestamp,
                items_max,
                &mut out,
            ) {
                Ok(items) => {
                    past_until = items > items_max;
                    events += out.events_emitted;
                    entries += 1;
                    after_entry(&state, &out, record.header.timestamp);
                }
                Err(e) => {
                    failure = Some(AuditError::Apply {
                        partition,
                        index: record.header.index,
                        reason: e.to_string(),
                    })
                }
            }
            Ok(())
        },
    )?;
    let first_kept = tail.raft_meta.first_unpurged_index();
    if failure.is_none() && first_seen.is_none() && first_kept > from {
        failure = Some(AuditError::Purged {
            partition,
            from,
            first: first_kept,
        });
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(PartitionReplay {
            state,
            events,
            entries,
        }),
    }
}

/// What one log entry produced, as `trace` reports it: the input to `wallet audit diff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLine {
    pub partition: u32,
    pub index: u64,
    pub timestamp: u64,
    /// Chained digest of every output so far in this partition (result codes, TC/C messages
    /// and decisions), in a representation that does not depend on the build: two builds
    /// agree on it exactly when they decided the same things.
    pub outputs: u128,
    /// Digest of the whole partition state after this entry (checkpoints only: it costs a
    /// pass over the partition).
    pub state: Option<u128>,
}

/// Replays every partition from genesis, partition by partition, calling `line` for every
/// entry. The full state digest is taken every `checkpoint_every` entries and after the last
/// one, so a divergence that changes balances but no result code is still located to within
/// `checkpoint_every` entries.
pub fn trace(
    data_dir: &Path,
    checkpoint_every: u64,
    mut line: impl FnMut(&TraceLine),
) -> Result<(), AuditError> {
    assert!(checkpoint_every > 0);
    let count = partition_count(data_dir)?;
    for partition in 0..count {
        let mut chain = 0u128;
        let mut pending: Option<TraceLine> = None;
        let replayed = replay_partition(
            data_dir,
            partition,
            count,
            u64::MAX,
            true,
            true,
            |state, out, timestamp| {
                if let Some(previous) = pending.take() {
                    line(&previous);
                }
                chain = outputs_digest(chain, out);
                let index = state.last_index();
                pending = Some(TraceLine {
                    partition,
                    index,
                    timestamp,
                    outputs: chain,
                    state: (index % checkpoint_every == 0).then(|| state_digest(state)),
                });
            },
        )?;
        if let Some(mut last) = pending.take() {
            last.state = Some(state_digest(&replayed.state));
            line(&last);
        }
    }
    Ok(())
}

/// Everything an entry's apply said to the outside, chained onto `previous`: result codes,
/// every field of every TC/C message (a build that sends a Confirm to the wrong account
/// changes neither partition's replayed state: each replays its own log), the resolved
/// transfers, and the events (what read models and subscribers see). Fields are hashed one by
/// one in a fixed order, so the digest does not depend on how a build lays out its types.
fn outputs_digest(previous: u128, out: &ApplyOutput) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&previous.to_le_bytes());
    h.update(&(out.results.len() as u64).to_le_bytes());
    for code in &out.results {
        h.update(&[*code as u8]);
    }
    h.update(&(out.outbox.len() as u64).to_le_bytes());
    for (destination, m) in &out.outbox {
        h.update(&destination.to_le_bytes());
        h.update(&[m.kind, m.code]);
        h.update(&m.source.to_le_bytes());
        for id in [m.id, m.from, m.to] {
            h.update(&id.to_le_bytes());
        }
        h.update(&m.amount.to_le_bytes());
        h.update(&m.currency.0.to_le_bytes());
        h.update(&m.user_data.to_le_bytes());
    }
    h.update(&(out.resolved.len() as u64).to_le_bytes());
    for (id, code) in &out.resolved {
        h.update(&id.to_le_bytes());
        h.update(&[*code as u8]);
    }
    h.update(&(out.events.len() as u64).to_le_bytes());
    for event in &out.events {
        hash_event(&mut h, event);
    }
    h.digest128()
}

fn hash_event(h: &mut xxhash_rust::xxh3::Xxh3, event: &Event) {
    let transfer = |h: &mut xxhash_rust::xxh3::Xxh3, t: &Transfer| {
        for id in [t.id, t.from, t.to] {
            h.update(&id.to_le_bytes());
        }
        for n in [t.amount, t.user_data, t.timestamp] {
            h.update(&n.to_le_bytes());
        }
        h.update(&t.currency.0.to_le_bytes());
    };
    let code = |h: &mut xxhash_rust::xxh3::Xxh3, id: u128, code: ResultCode| {
        h.update(&id.to_le_bytes());
        h.update(&[code as u8]);
    };
    match event {
        Event::AccountCreated(a) => {
            h.update(&[1]);
            h.update(&a.id.to_le_bytes());
            h.update(&a.currency.0.to_le_bytes());
            h.update(&a.flags.to_le_bytes());
            for n in [a.balance, a.held, a.incoming, a.floor] {
                h.update(&n.to_le_bytes());
            }
            h.update(&a.user_data.to_le_bytes());
            h.update(&a.timestamp.to_le_bytes());
        }
        Event::AccountRejected { id, code: c } => {
            h.update(&[2]);
            code(h, *id, *c);
        }
        Event::TransferApplied(t) => {
            h.update(&[3]);
            transfer(h, t);
        }
        Event::TransferRejected {
            id,
            code: c,
            timestamp,
        } => {
            h.update(&[4]);
            code(h, *id, *c);
            h.update(&timestamp.to_le_bytes());
        }
        Event::TccTried(t) => {
            h.update(&[5]);
            transfer(h, t);
        }
        Event::TccParticipantTried { id, code: c } => {
            h.update(&[6]);
            code(h, *id, *c);
        }
        Event::TccCredited {
            id,
            from,
            to,
            amount,
            timestamp,
        } => {
            h.update(&[7]);
            for id in [*id, *from, *to] {
                h.update(&id.to_le_bytes());
            }
            h.update(&amount.to_le_bytes());
            h.update(&timestamp.to_le_bytes());
        }
        Event::TccCancelled {
            id,
            from,
            to,
            amount,
            code: c,
            timestamp,
        } => {
            h.update(&[8]);
            for id in [*from, *to] {
                h.update(&id.to_le_bytes());
            }
            h.update(&amount.to_le_bytes());
            code(h, *id, *c);
            h.update(&timestamp.to_le_bytes());
        }
        Event::TccCancelledBeforeTry { id } => {
            h.update(&[9]);
            h.update(&id.to_le_bytes());
        }
        Event::TccIgnored { id, kind } => {
            h.update(&[10]);
            h.update(&id.to_le_bytes());
            h.update(&[*kind]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Currency;
    use crate::tcc::{kind, TccMessage};

    fn transfer() -> Transfer {
        Transfer {
            id: 7,
            from: 1,
            to: 2,
            amount: 5,
            currency: Currency(1),
            user_data: 0,
            timestamp: 9,
        }
    }

    /// Every field the outside sees counts: a Confirm to another account, or an event with
    /// another amount, is a divergence even when every result code is the same.
    #[test]
    fn outputs_that_differ_in_any_message_or_event_field_differ_in_digest() {
        let mut base = ApplyOutput::default();
        base.results.push(ResultCode::Pending);
        base.outbox
            .push((1, TccMessage::about(kind::CONFIRM, 0, &transfer())));
        base.events.push(Event::TccTried(transfer()));
        let digest = outputs_digest(0, &base);
        assert_eq!(digest, outputs_digest(0, &base), "deterministic");

        let mut other_to = ApplyOutput::default();
        other_to.results = base.results.clone();
        other_to.outbox = base.outbox.clone();
        other_to.outbox[0].1.to = 3;
        other_to.events = base.events.clone();
        assert_ne!(digest, outputs_digest(0, &other_to), "the message's `to`");

        let mut other_event = ApplyOutput::default();
        other_event.results = base.results.clone();
        other_event.outbox = base.outbox.clone();
        other_event.events = vec![Event::TccTried(Transfer {
            amount: 6,
            ..transfer()
        })];
        assert_ne!(
            digest,
            outputs_digest(0, &other_event),
            "the event's amount"
        );
    }
}
