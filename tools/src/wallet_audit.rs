//! `wallet log verify|dump` and `wallet audit replay`: offline tools over a data dir (or a
//! copied set of segments and snapshots). Output contract in ../shared/CLI.md.

use engine::command::{entry_kind, ArchivedNewAccount, ArchivedNewTransfer};
use engine::log::RecordRef;
use engine::state_machine::{entry_timestamp, last_timestamp_of};
use engine::tcc::ArchivedTccMessage;
use rkyv::vec::ArchivedVec;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

pub enum LogAction {
    Verify {
        data_dir: PathBuf,
    },
    Dump {
        data_dir: PathBuf,
        partition: Option<u32>,
    },
}

pub fn log(action: LogAction, as_json: bool) -> Result<(), String> {
    match action {
        LogAction::Verify { data_dir } => {
            let reports = engine::audit::verify(&data_dir).map_err(|e| e.to_string())?;
            let torn_of = |r: &engine::audit::LogReport| {
                r.torn_tail
                    .as_ref()
                    .map(|(file, offset)| format!("{file} at offset {offset}"))
            };
            if as_json {
                // One object (../shared/CLI.md): a failure is an error exit, so `ok` is true.
                let partitions: Vec<serde_json::Value> = reports
                    .iter()
                    .map(|r| {
                        json!({"partition": r.partition, "segments": r.segments, "records": r.records,
                               "first_index": r.first_index, "last_index": r.last_index,
                               "torn_tail": torn_of(r)})
                    })
                    .collect();
                println!("{}", json!({"ok": true, "partitions": partitions}));
                return Ok(());
            }
            for r in &reports {
                println!(
                    "partition {}: {} records in {} segments (index {}..={}), checksums and continuity ok{}",
                    r.partition,
                    r.records,
                    r.segments,
                    r.first_index,
                    r.last_index,
                    torn_of(r)
                        .map(|t| format!("; torn tail (cut at next start): {t}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        LogAction::Dump {
            data_dir,
            partition,
        } => {
            let stdout = std::io::stdout();
            let mut dump = Dump::new(std::io::BufWriter::new(stdout.lock()), as_json);
            let mut failure: Option<String> = None;
            engine::audit::visit_records(&data_dir, |p, record| {
                if failure.is_some() || partition.is_some_and(|only| only != p) {
                    return;
                }
                if let Err(e) = dump.record(p, record) {
                    failure = Some(e);
                }
            })
            .map_err(|e| e.to_string())?;
            let mut out = dump.out;
            out.flush().map_err(|e| e.to_string())?;
            failure.map_or(Ok(()), Err)
        }
    }
}

/// `wallet log dump`'s printer: records in log order, each item at the time the state machine
/// applies it, which is the entry's stamp only if that is above the partition's last time
/// used (a Raft leader's stamp may be clamped above it: `state_machine::entry_timestamp`).
struct Dump<W: Write> {
    out: W,
    as_json: bool,
    /// Per partition, the last timestamp used so far (0: none yet).
    last_used: std::collections::BTreeMap<u32, u64>,
}

impl<W: Write> Dump<W> {
    fn new(out: W, as_json: bool) -> Dump<W> {
        Dump {
            out,
            as_json,
            last_used: Default::default(),
        }
    }

    /// Prints `record` of `partition` (the next record of that partition's log).
    fn record(&mut self, partition: u32, record: &RecordRef<'_>) -> Result<(), String> {
        let last = self.last_used.entry(partition).or_insert(0);
        // Raft's own records take no time.
        let applied_at = if entry_kind::is_raft(record.header.kind) {
            0
        } else {
            entry_timestamp(*last, record.header.timestamp)
        };
        let items = dump_record(&mut self.out, partition, record, applied_at, self.as_json)?;
        if applied_at > 0 {
            *last = last_timestamp_of(applied_at, items);
        }
        Ok(())
    }
}

/// Prints one record, item by item at `applied_at + i` (the time the state machine applies item
/// `i` at: the entry's stamp, or just above the previous entry's last item); returns how many
/// items it holds. (A dump of a log purged after a snapshot starts without the snapshot's last
/// time, so its first entries show their stamps.)
fn dump_record(
    out: &mut impl Write,
    partition: u32,
    r: &RecordRef<'_>,
    applied_at: u64,
    as_json: bool,
) -> Result<usize, String> {
    let h = &r.header;
    let mut line = |value: serde_json::Value, text: String| -> Result<(), String> {
        if as_json {
            writeln!(out, "{value}")
        } else {
            writeln!(out, "{text}")
        }
        .map_err(|e| e.to_string())
    };
    let at = format!("p{partition} #{} t={} ts={applied_at}", h.index, h.term);
    let bad = |e: rkyv::rancor::Error| {
        format!("partition {partition}, entry {}: bad archive: {e}", h.index)
    };
    let count = match h.kind {
        entry_kind::CREATE_ACCOUNTS => {
            let items =
                rkyv::access::<ArchivedVec<ArchivedNewAccount>, rkyv::rancor::Error>(r.body)
                    .map_err(bad)?;
            for (i, a) in items.iter().enumerate() {
                let (id, currency, floor, flags) = (
                    a.id.to_native(),
                    a.currency.to_native(),
                    a.floor.to_native(),
                    a.flags.to_native(),
                );
                line(
                    json!({"partition": partition, "index": h.index, "item": i, "timestamp": applied_at + i as u64,
                           "kind": "create_account", "id": id, "currency": currency.code(), "floor": floor, "flags": flags}),
                    format!("{at} create_account id={id} {currency} floor={floor} flags={flags}"),
                )?;
            }
            items.len()
        }
        entry_kind::CREATE_TRANSFERS => {
            let items =
                rkyv::access::<ArchivedVec<ArchivedNewTransfer>, rkyv::rancor::Error>(r.body)
                    .map_err(bad)?;
            for (i, t) in items.iter().enumerate() {
                let (id, from, to, amount, currency) = (
                    t.id.to_native(),
                    t.from.to_native(),
                    t.to.to_native(),
                    t.amount.to_native(),
                    t.currency.to_native(),
                );
                line(
                    json!({"partition": partition, "index": h.index, "item": i, "timestamp": applied_at + i as u64,
                           "kind": "transfer", "id": id, "from": from, "to": to, "amount": amount, "currency": currency.code()}),
                    format!("{at} transfer id={id} {from}->{to} {amount} {currency}"),
                )?;
            }
            items.len()
        }
        entry_kind::TCC_MESSAGES => {
            let items =
                rkyv::access::<ArchivedVec<ArchivedTccMessage>, rkyv::rancor::Error>(r.body)
                    .map_err(bad)?;
            for (i, m) in items.iter().enumerate() {
                let m = m.to_native();
                let kind = tcc_kind_name(m.kind);
                line(
                    json!({"partition": partition, "index": h.index, "item": i, "timestamp": applied_at + i as u64,
                           "kind": format!("tcc_{kind}"), "id": m.id, "from": m.from, "to": m.to, "amount": m.amount,
                           "source": m.source, "code": engine::ResultCode::from_u8(m.code).map(|c| c.name())}),
                    format!(
                        "{at} tcc {kind} id={} {}->{} {} (source p{})",
                        m.id, m.from, m.to, m.amount, m.source
                    ),
                )?;
            }
            items.len()
        }
        entry_kind::BLANK => {
            line(
                json!({"partition": partition, "index": h.index, "kind": "raft_blank"}),
                format!("{at} raft blank"),
            )?;
            0
        }
        entry_kind::MEMBERSHIP => {
            let membership = engine::raft::membership::decode_membership(r.body)
                .map_err(|e| format!("partition {partition}, entry {}: {e}", h.index))?;
            let configs: Vec<Vec<u64>> = membership
                .get_joint_config()
                .iter()
                .map(|voters| voters.iter().copied().collect())
                .collect();
            let nodes: Vec<u64> = membership.nodes().map(|(id, _)| *id).collect();
            line(
                json!({"partition": partition, "index": h.index, "kind": "raft_membership",
                       "voters": configs, "nodes": nodes}),
                format!("{at} raft membership voters={configs:?} nodes={nodes:?}"),
            )?;
            0
        }
        other => {
            line(
                json!({"partition": partition, "index": h.index, "timestamp": h.timestamp, "kind": other, "bytes": r.body.len()}),
                format!("{at} kind={other} ({} bytes)", r.body.len()),
            )?;
            0
        }
    };
    Ok(count)
}

fn tcc_kind_name(kind: u8) -> &'static str {
    use engine::tcc::kind::*;
    match kind {
        TRY => "try",
        TRY_RESULT => "try_result",
        CONFIRM => "confirm",
        CONFIRM_ACK => "confirm_ack",
        CANCEL => "cancel",
        CANCEL_ACK => "cancel_ack",
        ABORT => "abort",
        _ => "unknown",
    }
}

pub fn replay(
    data_dir: &Path,
    until: Option<u64>,
    from_genesis: bool,
    balances: bool,
    as_json: bool,
) -> Result<(), String> {
    let report = engine::audit::replay(data_dir, until, from_genesis).map_err(|e| e.to_string())?;
    let digest = format!("{:032x}", report.digest);
    if as_json {
        let mut value = json!({
            "events": report.events, "entries": report.entries, "seconds": report.seconds,
            "events_per_sec": report.events_per_sec, "digest": digest,
            "balances_total": report.balances_total.to_string(), "until": until,
            "threads": report.states.len(),
        });
        if balances {
            let accounts: Vec<_> = report
                .states
                .iter()
                .flat_map(|s| s.accounts_sorted())
                .map(|a| json!({"id": a.id, "currency": a.currency.code(), "balance": a.balance, "held": a.held}))
                .collect();
            value["accounts"] = json!(accounts);
        }
        println!("{value}");
    } else {
        println!(
            "replayed {} entries ({} events) in {:.3} s = {:.0} events/s ({} partitions in parallel)",
            report.entries,
            report.events,
            report.seconds,
            report.events_per_sec,
            report.states.len()
        );
        println!("digest {digest}, balances total {}", report.balances_total);
        if balances {
            for a in report.states.iter().flat_map(|s| s.accounts_sorted()) {
                println!(
                    "  account {}: {} {} (held {})",
                    a.id, a.balance, a.currency, a.held
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::command::{CommandBatch, NewAccount, NewTransfer};
    use engine::log::RecordHeader;
    use engine::model::Currency;
    use engine::state_machine::{ApplyOutput, PartitionState};
    use std::collections::BTreeMap;

    fn transfers(ids: std::ops::Range<u128>) -> CommandBatch {
        CommandBatch::CreateTransfers(
            ids.map(|id| NewTransfer {
                id,
                from: 1,
                to: 2,
                amount: 5,
                currency: Currency::parse("EUR").unwrap(),
                user_data: 0,
            })
            .collect(),
        )
    }

    /// The dump prints every item at the time a replay of the same log applies it, clamped
    /// stamps included (a stamp at or below the previous entry's last time, an empty entry,
    /// a Raft record between them).
    #[test]
    fn dump_times_are_the_times_a_replay_applies_items_at() {
        let eur = Currency::parse("EUR").unwrap();
        let accounts = CommandBatch::CreateAccounts(vec![
            NewAccount {
                id: 1,
                currency: eur,
                flags: 0,
                floor: -1_000_000,
                user_data: 0,
            },
            NewAccount {
                id: 2,
                currency: eur,
                flags: 0,
                floor: 0,
                user_data: 0,
            },
        ]);
        // (kind, body, stamp): accounts at 1000-1001; then a stamp below the last time used
        // (clamped to 1002), a Raft blank, an empty entry consuming 2000, a stamp equal to it
        // (clamped to 2001), and one far above.
        let entries: Vec<(u16, Option<CommandBatch>, u64)> = vec![
            (entry_kind::CREATE_ACCOUNTS, Some(accounts), 1000),
            (entry_kind::CREATE_TRANSFERS, Some(transfers(10..13)), 999),
            (entry_kind::BLANK, None, 0),
            (entry_kind::CREATE_TRANSFERS, Some(transfers(0..0)), 2000),
            (entry_kind::CREATE_TRANSFERS, Some(transfers(13..15)), 2000),
            (entry_kind::CREATE_TRANSFERS, Some(transfers(15..16)), 5000),
        ];
        let mut state = PartitionState::new(0, 1);
        let mut out = ApplyOutput::default();
        let mut dump = Dump::new(Vec::new(), true);
        for (i, (kind, batch, stamp)) in entries.into_iter().enumerate() {
            let mut body = rkyv::util::AlignedVec::<16>::new();
            if let Some(batch) = &batch {
                batch.encode_into(&mut body);
            }
            let index = i as u64 + 1;
            state
                .apply_entry(index, kind, &body, stamp, &mut out)
                .unwrap();
            let header = RecordHeader {
                body_checksum: 0,
                body_len: body.len() as u32,
                index,
                term: 1,
                timestamp: stamp,
                kind,
            };
            let record = RecordRef {
                offset: 0,
                header,
                body: &body,
            };
            dump.record(0, &record).unwrap();
        }
        let printed: BTreeMap<u128, u64> = String::from_utf8(dump.out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|v| v["kind"] == "transfer")
            .map(|v| {
                (
                    v["id"].as_u64().unwrap() as u128,
                    v["timestamp"].as_u64().unwrap(),
                )
            })
            .collect();
        let replayed: BTreeMap<u128, u64> =
            state.transfers().map(|t| (t.id, t.timestamp)).collect();
        assert_eq!(printed, replayed);
        let expected = [
            (10, 1002),
            (11, 1003),
            (12, 1004),
            (13, 2001),
            (14, 2002),
            (15, 5000),
        ];
        assert_eq!(printed, BTreeMap::from(expected));
    }
}
