//! The invariant check at the end, through the protocol: what the node holds for the book's
//! accounts and for every id the load ever sent, compared with what the clients were told.

use super::load::{Book, LoadReport, Outcome};
use engine::model::{Account, TransferLookup};
use engine::{ResultCode, BATCH_ITEMS_MAX};
use net::Client;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// How long the final check waits for TC/C holds to drain.
const DRAIN_HOLDS_TIMEOUT: Duration = Duration::from_secs(60);
/// Violations kept word for word per kind of finding (the rest are counted).
const EXAMPLES_KEPT: usize = 5;

/// What the node answered for the book: every account, and a lookup of every id sent.
pub struct Observation {
    pub accounts: Vec<Account>,
    /// Lookups of the funding transfers, then of every load thread's ids, in order.
    pub lookups: Vec<Option<TransferLookup>>,
    /// Transfers the node stores (`status`, summed over partitions).
    pub stored: u64,
    /// A hash of all of the above (timestamps included): equal observations, equal states.
    pub fingerprint: u64,
}

fn ids(book: &Book, loads: &[LoadReport]) -> Vec<u128> {
    let mut ids: Vec<u128> = book.funding().iter().map(|t| t.id).collect();
    for load in loads {
        ids.extend((0..load.sent.len()).map(|n| LoadReport::id_of(load.thread, n)));
    }
    ids
}

pub fn observe(client: &Client, book: &Book, loads: &[LoadReport]) -> Result<Observation, String> {
    observe_as(client, book, loads, false)
}

/// `observe` with follower reads (`FOLLOWER_READ`): what this node has applied, whether or
/// not it leads the partitions (cluster mode, once the nodes' states have converged).
pub fn observe_follower(
    client: &Client,
    book: &Book,
    loads: &[LoadReport],
) -> Result<Observation, String> {
    observe_as(client, book, loads, true)
}

fn observe_as(
    client: &Client,
    book: &Book,
    loads: &[LoadReport],
    follower: bool,
) -> Result<Observation, String> {
    let account_ids: Vec<u128> = book.accounts.iter().map(|a| a.id).collect();
    let accounts = if follower {
        client.lookup_accounts_follower(&account_ids)
    } else {
        client.lookup_accounts(&account_ids)
    };
    let accounts = accounts
        .map_err(|e| format!("lookup accounts: {e}"))?
        .into_iter()
        .zip(&account_ids)
        .map(|(a, id)| a.ok_or_else(|| format!("account {id} is missing")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lookups = Vec::new();
    for chunk in ids(book, loads).chunks(BATCH_ITEMS_MAX) {
        let found = if follower {
            client.lookup_transfers_follower(chunk)
        } else {
            client.lookup_transfers(chunk)
        };
        let found = found.map_err(|e| format!("lookup transfers: {e}"))?;
        if found.len() != chunk.len() {
            return Err(format!(
                "{} lookups answered for {}",
                found.len(),
                chunk.len()
            ));
        }
        lookups.extend(found);
    }
    let status = client.status().map_err(|e| format!("status: {e}"))?;
    let stored: u64 = status.partitions.iter().map(|p| p.transfers).sum();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for a in &accounts {
        (a.id, a.currency.0, a.flags, a.balance, a.held, a.incoming).hash(&mut h);
        (a.floor, a.user_data, a.timestamp).hash(&mut h);
    }
    for l in &lookups {
        match l {
            None => 0u8.hash(&mut h),
            Some(l) => {
                let t = &l.transfer;
                (1u8, l.status as u8, t.id, t.from, t.to, t.amount).hash(&mut h);
                (t.currency.0, t.user_data, t.timestamp).hash(&mut h);
            }
        }
    }
    stored.hash(&mut h);
    Ok(Observation {
        accounts,
        lookups,
        stored,
        fingerprint: h.finish(),
    })
}

/// Waits (bounded) until no account holds money for a running TC/C.
pub fn wait_for_holds(client: &Client, book: &Book) -> Result<Duration, String> {
    wait_for_holds_as(client, book, false)
}

/// `wait_for_holds` by follower reads (cluster mode: on every node).
pub fn wait_for_holds_follower(client: &Client, book: &Book) -> Result<Duration, String> {
    wait_for_holds_as(client, book, true)
}

fn wait_for_holds_as(client: &Client, book: &Book, follower: bool) -> Result<Duration, String> {
    let ids: Vec<u128> = book.accounts.iter().map(|a| a.id).collect();
    let started = Instant::now();
    loop {
        let accounts = if follower {
            client.lookup_accounts_follower(&ids)
        } else {
            client.lookup_accounts(&ids)
        };
        let held: i64 = accounts
            .map_err(|e| format!("lookup accounts: {e}"))?
            .iter()
            .map(|a| a.map_or(0, |a| a.held))
            .sum();
        if held == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > DRAIN_HOLDS_TIMEOUT {
            return Err(format!(
                "{held} minor units still held by TC/Cs {DRAIN_HOLDS_TIMEOUT:?} after the load stopped"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The verdict of the final check.
#[derive(Default, Debug)]
pub struct Verdict {
    /// Acknowledged transfers the node does not hold as applied (with the acknowledged fields).
    pub lost: u64,
    /// Transfers applied more than once, or applied though refused: stored transfers beyond
    /// those the lookups account for, plus refused ids found applied.
    pub duplicated: u64,
    /// Ids without a definite answer that turned out applied (allowed: applied once).
    pub unanswered_applied: u64,
    pub applied: u64,
    /// Ids found stored but not applied (TC/Cs cancelled, e.g. `tcc_timeout`).
    pub cancelled: u64,
    pub violations: Vec<String>,
}

impl Verdict {
    fn finding(&mut self, kind: &str, counts: &mut BTreeMap<String, u64>, what: String) {
        let n = counts.entry(kind.to_string()).or_default();
        *n += 1;
        if *n <= EXAMPLES_KEPT as u64 {
            self.violations.push(what);
        }
    }
}

/// Checks conservation, floors, every acknowledgement, and that nothing was applied twice.
pub fn verify(book: &Book, loads: &[LoadReport], seen: &Observation) -> Verdict {
    let mut v = Verdict::default();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    // Expected balances, rebuilt from the transfers the node reports applied.
    let mut expected = vec![0i128; book.accounts.len()];
    let index_of: BTreeMap<u128, usize> = book
        .accounts
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id, i))
        .collect();
    let funding = book.funding();
    let mut lookups = seen.lookups.iter();
    for t in &funding {
        match lookups.next().copied().flatten() {
            Some(l) if l.status == ResultCode::Ok && l.transfer.amount == t.amount => {
                v.applied += 1;
                expected[index_of[&t.from]] -= t.amount as i128;
                expected[index_of[&t.to]] += t.amount as i128;
            }
            other => v.finding(
                "lost",
                &mut counts,
                format!("opening deposit {} not applied as sent: {other:?}", t.id),
            ),
        }
    }
    for load in loads {
        for (n, sent) in load.sent.iter().enumerate() {
            let id = LoadReport::id_of(load.thread, n);
            let want = book.transfer(id, sent);
            let found = lookups.next().copied().flatten();
            let applied = match found {
                Some(l) if l.status == ResultCode::Ok => {
                    let t = l.transfer;
                    if (t.from, t.to, t.amount, t.currency)
                        != (want.from, want.to, want.amount, want.currency)
                    {
                        v.finding(
                            "different_fields",
                            &mut counts,
                            format!("transfer {id} stored as {t:?}, sent as {want:?}"),
                        );
                        false
                    } else {
                        true
                    }
                }
                Some(l) if l.status == ResultCode::Pending => {
                    v.finding(
                        "pending",
                        &mut counts,
                        format!("transfer {id} still pending after the holds drained"),
                    );
                    false
                }
                _ => false, // absent, or a cancelled TC/C
            };
            if !applied && found.is_some() {
                v.cancelled += 1;
            }
            if applied {
                v.applied += 1;
                expected[index_of[&want.from]] -= want.amount as i128;
                expected[index_of[&want.to]] += want.amount as i128;
            }
            match (sent.outcome, applied) {
                (Outcome::Acked, false) => {
                    v.lost += 1;
                    v.finding(
                        "lost",
                        &mut counts,
                        format!("acknowledged transfer {id} is not applied: lookup {found:?}"),
                    );
                }
                (Outcome::Rejected(code), true) => {
                    v.duplicated += 1;
                    v.finding(
                        "applied_though_refused",
                        &mut counts,
                        format!("transfer {id} was refused ({code}) but is applied"),
                    );
                }
                (Outcome::Existing, false) if found.is_none() => {
                    v.lost += 1;
                    v.finding(
                        "lost",
                        &mut counts,
                        format!("transfer {id} answered `exists` is not stored at all"),
                    );
                }
                (Outcome::Unanswered, true) => v.unanswered_applied += 1,
                _ => {}
            }
        }
    }
    // Nothing stored beyond what the lookups account for (an id applied twice, or a phantom).
    if seen.stored != v.applied {
        v.duplicated += seen.stored.saturating_sub(v.applied);
        v.finding(
            "stored_count",
            &mut counts,
            format!(
                "the node stores {} transfers; the lookups of every id sent account for {}",
                seen.stored, v.applied
            ),
        );
    }
    // Balances: exactly what the applied transfers make them (a transfer applied twice, or
    // money moved by a half-done TC/C, shows here), within the floors, summing to zero.
    let mut totals: BTreeMap<String, i128> = BTreeMap::new();
    for (i, (spec, a)) in book.accounts.iter().zip(&seen.accounts).enumerate() {
        *totals.entry(spec.currency.code()).or_default() += a.balance as i128 + a.held as i128;
        if a.held != 0 {
            v.finding(
                "held",
                &mut counts,
                format!("account {} holds {}", a.id, a.held),
            );
        }
        if a.balance < a.floor {
            v.finding(
                "below_floor",
                &mut counts,
                format!(
                    "account {} balance {} is below its floor {}",
                    a.id, a.balance, a.floor
                ),
            );
        }
        if (a.currency, a.floor) != (spec.currency, spec.floor) {
            v.finding(
                "account_fields",
                &mut counts,
                format!("account {} stored as {a:?}", a.id),
            );
        }
        if a.balance as i128 + a.held as i128 != expected[i] {
            v.finding(
                "balance",
                &mut counts,
                format!(
                    "account {} balance {} (held {}), but the applied transfers make it {}",
                    a.id, a.balance, a.held, expected[i]
                ),
            );
        }
    }
    for (currency, total) in totals {
        if total != 0 {
            v.finding(
                "conservation",
                &mut counts,
                format!("{currency}: balances sum to {total}, not 0 (money created or destroyed)"),
            );
        }
    }
    for (kind, n) in counts {
        if n > EXAMPLES_KEPT as u64 {
            v.violations
                .push(format!("... {n} findings of kind {kind} in all"));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::load::Sent;
    use engine::model::Transfer;

    /// The node's answers for `book` after the funding, plus `moves` applied `times` times.
    fn observation(book: &Book, load: &LoadReport, applied: bool, times: i64) -> Observation {
        let mut balances = vec![0i64; book.accounts.len()];
        let index = |id: u128| book.accounts.iter().position(|a| a.id == id).unwrap();
        let mut lookups = Vec::new();
        let mut stored = 0;
        let mut apply = |t: &engine::NewTransfer, times: i64, stored: &mut u64| {
            balances[index(t.from)] -= t.amount as i64 * times;
            balances[index(t.to)] += t.amount as i64 * times;
            *stored += times as u64;
            Some(TransferLookup {
                transfer: Transfer {
                    id: t.id,
                    from: t.from,
                    to: t.to,
                    amount: t.amount,
                    currency: t.currency,
                    user_data: 0,
                    timestamp: 1,
                },
                status: ResultCode::Ok,
            })
        };
        for t in book.funding() {
            lookups.push(apply(&t, 1, &mut stored));
        }
        for (n, sent) in load.sent.iter().enumerate() {
            let t = book.transfer(LoadReport::id_of(load.thread, n), sent);
            lookups.push(if applied {
                apply(&t, times, &mut stored)
            } else {
                None
            });
        }
        let accounts = book
            .accounts
            .iter()
            .zip(balances)
            .map(|(a, balance)| Account {
                id: a.id,
                currency: a.currency,
                flags: 0,
                balance,
                held: 0,
                incoming: 0,
                floor: a.floor,
                user_data: 0,
                timestamp: 1,
            })
            .collect();
        Observation {
            accounts,
            lookups,
            stored,
            fingerprint: 0,
        }
    }

    fn one_transfer(book: &Book) -> LoadReport {
        LoadReport {
            thread: 0,
            sent: vec![Sent {
                from: book.wallets[0][0][0],
                to: book.wallets[0][1][0],
                amount: 5,
                outcome: Outcome::Acked,
            }],
            ..LoadReport::default()
        }
    }

    #[test]
    fn a_consistent_ledger_passes() {
        let book = Book::new(2);
        let load = one_transfer(&book);
        let v = verify(
            &book,
            std::slice::from_ref(&load),
            &observation(&book, &load, true, 1),
        );
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!((v.lost, v.duplicated), (0, 0));
    }

    #[test]
    fn a_lost_acknowledgement_is_found() {
        let book = Book::new(2);
        let load = one_transfer(&book);
        let v = verify(
            &book,
            std::slice::from_ref(&load),
            &observation(&book, &load, false, 0),
        );
        assert_eq!(v.lost, 1);
        assert!(!v.violations.is_empty());
    }

    #[test]
    fn a_transfer_applied_twice_is_found() {
        let book = Book::new(2);
        let load = one_transfer(&book);
        let v = verify(
            &book,
            std::slice::from_ref(&load),
            &observation(&book, &load, true, 2),
        );
        assert_eq!(v.duplicated, 1);
        assert!(v
            .violations
            .iter()
            .any(|s| s.contains("applied transfers make it")));
    }

    #[test]
    fn a_refused_transfer_found_applied_is_found() {
        let book = Book::new(2);
        let mut load = one_transfer(&book);
        load.sent[0].outcome = Outcome::Rejected(ResultCode::InsufficientFunds);
        let v = verify(
            &book,
            std::slice::from_ref(&load),
            &observation(&book, &load, true, 1),
        );
        assert_eq!(v.duplicated, 1);
    }
}
