//! `wallet history`, `wallet balance --at` and the read-model part of `wallet status`: the
//! queries answered by the server's CQRS read model (see docs/ARCHITECTURE.md, "Read model").

use engine::read_model::{At, BalanceAsOf, HistoryEntry, HistoryQuery, QueryError};
use net::Client;
use serde_json::json;

/// What `wallet history` asks for.
pub struct HistoryArgs {
    pub id: u128,
    /// Entries to print in all (pages are fetched until this many or the end).
    pub limit: usize,
    pub before_position: Option<u64>,
    pub from_timestamp: Option<u64>,
    pub to_timestamp: Option<u64>,
}

/// Most entries `wallet history` prints in one run.
pub const HISTORY_LIMIT_MAX: usize = 100_000;

fn query_error(e: QueryError) -> String {
    e.to_string()
}

/// Prints an account's history, newest first: one JSON object with `--json`
/// (`{"id","currency","entries":[...],"next_before","truncated_at","read_position"}`), else one
/// line per entry.
pub fn history(client: &Client, args: &HistoryArgs, as_json: bool) -> Result<(), String> {
    if args.limit == 0 || args.limit > HISTORY_LIMIT_MAX {
        return Err(format!("--limit must be 1..={HISTORY_LIMIT_MAX}"));
    }
    let mut entries: Vec<HistoryEntry> = Vec::new();
    let mut before = args.before_position;
    let (mut next_before, mut truncated_at, mut read_position);
    loop {
        let want = args.limit - entries.len();
        let page = client
            .history(&HistoryQuery {
                account: args.id,
                before_position: before,
                from_timestamp: args.from_timestamp,
                to_timestamp: args.to_timestamp,
                limit: want.min(engine::read_model::HISTORY_PAGE_MAX),
            })
            .map_err(|e| e.to_string())?
            .map_err(query_error)?;
        entries.extend(page.entries.iter().take(want).copied());
        next_before = page.next_before;
        truncated_at = page.truncated_at;
        read_position = page.read_position;
        match page.next_before {
            Some(p) if entries.len() < args.limit => before = Some(p),
            _ => break,
        }
    }
    let currency = client
        .lookup_accounts(&[args.id])
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .flatten()
        .map(|a| a.currency.code());
    if as_json {
        let items: Vec<_> = entries.iter().map(entry_json).collect();
        println!(
            "{}",
            json!({
                "id": args.id, "currency": currency, "entries": items,
                "next_before": next_before,
                "truncated_at": truncated_at.map(|(position, timestamp)| json!({"position": position, "timestamp": timestamp})),
                "read_position": read_position,
            })
        );
    } else {
        let currency = currency.unwrap_or_default();
        println!(
            "account {}: {} entries, newest first",
            args.id,
            entries.len()
        );
        for e in &entries {
            println!(
                "  at {} (position {}): {:<10} {:+} {currency} transfer {} with {} -> balance {} held {}",
                e.timestamp,
                e.position,
                e.kind.name(),
                e.amount,
                e.transfer_id,
                e.counterparty,
                e.balance_after,
                e.held_after
            );
        }
        if let Some(p) = next_before {
            println!("  more: --before {p}");
        }
        if let Some((position, timestamp)) = truncated_at {
            if next_before.is_none() {
                println!(
                    "  older history is not retained (oldest retained point: timestamp {timestamp}, position {position})"
                );
            }
        }
    }
    Ok(())
}

fn entry_json(e: &HistoryEntry) -> serde_json::Value {
    json!({
        "position": e.position, "timestamp": e.timestamp, "kind": e.kind.name(),
        "transfer_id": e.transfer_id, "counterparty": e.counterparty, "amount": e.amount,
        "balance_after": e.balance_after, "held_after": e.held_after,
    })
}

/// Prints an account's balance as of a timestamp or position.
pub fn balance_at(client: &Client, id: u128, at: At, as_json: bool) -> Result<(), String> {
    let b: BalanceAsOf = client
        .balance_at(id, at)
        .map_err(|e| e.to_string())?
        .map_err(query_error)?;
    let (at_kind, at_value) = match at {
        At::Timestamp(t) => ("timestamp", t),
        At::Position(p) => ("position", p),
    };
    // The floor never changes after creation, so any node's copy of the account gives what
    // was available then (as `balance ID` reports it now).
    let floor = client
        .lookup_accounts_follower(&[id])
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .flatten()
        .ok_or(format!("account {id} not found"))?
        .floor;
    let available = b.balance as i128 - floor as i128;
    if as_json {
        println!(
            "{}",
            json!({
                "id": b.account, "currency": b.currency.code(), "balance": b.balance,
                "available": available, "held": b.held, "floor": floor,
                "at": {at_kind: at_value}, "position": b.position,
                "timestamp": b.timestamp, "read_position": b.read_position,
            })
        );
    } else {
        println!(
            "account {} as of {at_kind} {at_value}: {} {} (available {available}, held {}; last change at timestamp {}, position {})",
            b.account, b.balance, b.currency, b.held, b.timestamp, b.position
        );
    }
    Ok(())
}

/// Prints money per currency: every partition's total (as of its read position) and their sum
/// over the node's partitions. Across a whole ledger each currency sums to zero (issuers run
/// negative) but for cross-partition transfers in flight.
pub fn totals(client: &Client, as_json: bool) -> Result<(), String> {
    let partitions = client.totals().map_err(|e| e.to_string())?;
    let mut sums: std::collections::BTreeMap<String, i128> = std::collections::BTreeMap::new();
    for p in &partitions {
        for (currency, total) in p.totals.iter().flat_map(|t| &t.by_currency) {
            *sums.entry(currency.code()).or_default() += total;
        }
    }
    if as_json {
        let parts: Vec<_> = partitions
            .iter()
            .map(|p| match &p.totals {
                Some(t) => json!({
                    "partition": p.partition, "read_model": true, "position": t.position,
                    "totals": t.by_currency.iter()
                        .map(|(c, total)| json!({"currency": c.code(), "total": total.to_string()}))
                        .collect::<Vec<_>>(),
                }),
                None => json!({"partition": p.partition, "read_model": false}),
            })
            .collect();
        let sums: Vec<_> = sums
            .iter()
            .map(|(c, total)| json!({"currency": c, "total": total.to_string()}))
            .collect();
        println!("{}", json!({"partitions": parts, "totals": sums}));
    } else {
        for p in &partitions {
            match &p.totals {
                Some(t) => {
                    let each: Vec<String> = t
                        .by_currency
                        .iter()
                        .map(|(c, total)| format!("{total} {c}"))
                        .collect();
                    println!(
                        "partition {} (position {}): {}",
                        p.partition,
                        t.position,
                        if each.is_empty() {
                            "no accounts".to_string()
                        } else {
                            each.join(", ")
                        }
                    );
                }
                None => println!("partition {}: read model off", p.partition),
            }
        }
        for (c, total) in &sums {
            println!("all partitions: {total} {c}");
        }
    }
    Ok(())
}

/// The read model's line of a partition in `wallet status`.
pub fn status_json(s: &net::codec::ReadModelStatus) -> serde_json::Value {
    json!({
        "enabled": s.enabled, "position": s.position,
        "lag_entries": s.lag_entries, "lag_ms": s.lag_ms,
    })
}

pub fn status_human(s: &net::codec::ReadModelStatus) -> String {
    if s.enabled {
        format!(
            "read model lag {} entries, {} ms (position {})",
            s.lag_entries, s.lag_ms, s.position
        )
    } else {
        "read model off".to_string()
    }
}

/// Prints changes as they become durable (JSON lines with `--json`), from `from` (default:
/// only new ones), of one account or of all. Reconnects after a disconnect and resumes right
/// after the last change printed (no gap, no duplicate) while the server still retains it.
/// Stops after `count` changes when given.
pub fn watch(
    config: &net::ClientConfig,
    account: Option<u128>,
    from: Option<u64>,
    count: Option<u64>,
    as_json: bool,
) -> Result<(), String> {
    use net::client::{Subscription, SubscriptionError};
    use std::io::Write;
    let mut starts = vec![from.unwrap_or(engine::read_model::FROM_NOW)];
    let mut printed = 0u64;
    let mut failures = 0u32;
    let stdout = std::io::stdout();
    loop {
        let mut subscription = match Subscription::open(config, account, &starts) {
            Ok(s) => s,
            Err(SubscriptionError::Client(e)) if failures < config.retries => {
                failures += 1;
                eprintln!("wallet: watch: {e}; reconnecting");
                std::thread::sleep(std::time::Duration::from_millis(200 * failures as u64));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        loop {
            if count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
            match subscription.next(None) {
                Ok(Some((partition, c))) => {
                    failures = 0;
                    printed += 1;
                    let line = if as_json {
                        json!({
                            "partition": partition, "position": c.position,
                            "timestamp": c.timestamp, "kind": c.kind.name(),
                            "transfer_id": c.transfer_id, "from": c.from, "to": c.to,
                            "amount": c.amount, "currency": c.currency.code(),
                        })
                        .to_string()
                    } else {
                        format!(
                            "partition {partition} position {} at {}: {} transfer {} {} -> {} {} {}",
                            c.position,
                            c.timestamp,
                            c.kind.name(),
                            c.transfer_id,
                            c.from,
                            c.to,
                            c.amount,
                            c.currency
                        )
                    };
                    let mut out = stdout.lock();
                    writeln!(out, "{line}").map_err(|e| e.to_string())?;
                    out.flush().map_err(|e| e.to_string())?;
                }
                Ok(None) => {}
                Err(SubscriptionError::Client(e)) if failures < config.retries => {
                    failures += 1;
                    eprintln!("wallet: watch: {e}; resuming");
                    // One start per subscribed partition, in partition order.
                    let mut resume = subscription.resume_from();
                    resume.sort_unstable();
                    starts = resume.into_iter().map(|(_, position)| position).collect();
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
