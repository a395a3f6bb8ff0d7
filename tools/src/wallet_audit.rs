//! `wallet log verify|dump` and `wallet audit replay`: offline tools over a data dir (or a
//! copied set of segments and snapshots). Output contract in ../shared/CLI.md.

use engine::command::{entry_kind, ArchivedNewAccount, ArchivedNewTransfer};
use engine::log::RecordRef;
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
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut failure: Option<String> = None;
            // Per partition: the last item time used, so that each entry prints the time the
            // state machine applies it at (a Raft leader's stamp may be clamped above).
            let mut last_used: std::collections::HashMap<u32, u64> = Default::default();
            engine::audit::visit_records(&data_dir, |p, record| {
                if failure.is_some() || partition.is_some_and(|only| only != p) {
                    return;
                }
                let last = last_used.entry(p).or_insert(0);
                let applied_at = if entry_kind::is_raft(record.header.kind) {
                    0
                } else {
                    record.header.timestamp.max(*last + 1)
                };
                match dump_record(&mut out, p, record, applied_at, as_json) {
                    Ok(items) if applied_at > 0 => *last = applied_at + items.max(1) as u64 - 1,
                    Ok(_) => {}
                    Err(e) => failure = Some(e),
                }
            })
            .map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
            failure.map_or(Ok(()), Err)
        }
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
