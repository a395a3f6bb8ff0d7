//! The load: a fixed book of accounts (an issuer and wallets per partition and currency), and
//! client threads that send batches of transfers with client-chosen ids, retrying every batch
//! whose answer is lost (timeout, disconnect, server killed) or transient (`busy`,
//! `storage_full`, ...) with the same ids until each item has a definite answer.

use engine::model::Currency;
use engine::partition::partition_of;
use engine::{NewAccount, NewTransfer, ResultCode};
use net::{Client, ClientConfig, ClientError, ClusterClient};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CURRENCIES: [&str; 2] = ["EUR", "USD"];
pub const WALLETS_PER_PARTITION: usize = 8;
pub const ISSUER_FLOOR: i64 = -1_000_000_000_000_000;
pub const OPENING_DEPOSIT: u64 = 1_000_000_000;
/// Ids of the opening deposits: `FUNDING_ID_BASE + account index`.
pub const FUNDING_ID_BASE: u128 = 1 << 100;
/// How long a thread keeps retrying its last batch once the load is told to stop (the faults
/// are over by then: a batch that still gets no definite answer is a finding).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Violations a thread keeps word for word (the rest are only counted).
const VIOLATIONS_KEPT: usize = 20;

/// One account of the book.
#[derive(Clone, Copy, Debug)]
pub struct AccountSpec {
    pub id: u128,
    pub currency: Currency,
    pub floor: i64,
    pub partition: u32,
}

/// The accounts every run uses: per currency and partition, one issuer and
/// `WALLETS_PER_PARTITION` wallets.
pub struct Book {
    pub accounts: Vec<AccountSpec>,
    /// `[currency][partition]` → index of the issuer in `accounts`.
    pub issuers: Vec<Vec<u16>>,
    /// `[currency][partition]` → indexes of the wallets in `accounts`.
    pub wallets: Vec<Vec<Vec<u16>>>,
    pub partitions: u32,
}

impl Book {
    pub fn new(partitions: u32) -> Book {
        let mut accounts = Vec::new();
        let mut issuers = Vec::new();
        let mut wallets = Vec::new();
        let mut next_id = 1u128;
        for code in CURRENCIES {
            let currency = Currency::parse(code).expect("a constant, valid code");
            let mut c_issuers = Vec::new();
            let mut c_wallets = Vec::new();
            for p in 0..partitions {
                let mut take = |floor: i64| {
                    while partition_of(next_id, partitions) != p {
                        next_id += 1;
                    }
                    accounts.push(AccountSpec {
                        id: next_id,
                        currency,
                        floor,
                        partition: p,
                    });
                    next_id += 1;
                    (accounts.len() - 1) as u16
                };
                c_issuers.push(take(ISSUER_FLOOR));
                c_wallets.push((0..WALLETS_PER_PARTITION).map(|_| take(0)).collect());
            }
            issuers.push(c_issuers);
            wallets.push(c_wallets);
        }
        Book {
            accounts,
            issuers,
            wallets,
            partitions,
        }
    }

    pub fn creations(&self) -> Vec<NewAccount> {
        self.accounts
            .iter()
            .map(|a| NewAccount {
                id: a.id,
                currency: a.currency,
                flags: 0,
                floor: a.floor,
                user_data: 0,
            })
            .collect()
    }

    /// An opening deposit from the issuer of its partition to every wallet.
    pub fn funding(&self) -> Vec<NewTransfer> {
        let mut out = Vec::new();
        for (c, per_partition) in self.wallets.iter().enumerate() {
            for (p, wallets) in per_partition.iter().enumerate() {
                let issuer = self.issuers[c][p];
                for &w in wallets {
                    out.push(self.transfer(
                        FUNDING_ID_BASE + w as u128,
                        &Sent {
                            from: issuer,
                            to: w,
                            amount: OPENING_DEPOSIT as u32,
                            outcome: Outcome::Acked,
                        },
                    ));
                }
            }
        }
        out
    }

    pub fn transfer(&self, id: u128, sent: &Sent) -> NewTransfer {
        let from = &self.accounts[sent.from as usize];
        NewTransfer {
            id,
            from: from.id,
            to: self.accounts[sent.to as usize].id,
            amount: sent.amount as u64,
            currency: from.currency,
            user_data: 0,
        }
    }

    /// A random valid transfer: 10% deposits from an issuer, the rest between wallets of one
    /// currency; `cross_ratio` of them to a wallet of another partition (TC/C).
    fn draw(&self, rng: &mut fastrand::Rng, cross_ratio: f64) -> Sent {
        let c = rng.usize(..self.wallets.len());
        let p = rng.usize(..self.partitions as usize);
        let q = if self.partitions > 1 && rng.f64() < cross_ratio {
            (p + 1 + rng.usize(..self.partitions as usize - 1)) % self.partitions as usize
        } else {
            p
        };
        let wallets = &self.wallets[c];
        let (from, amount) = if rng.u8(..10) == 0 {
            (self.issuers[c][p], rng.u32(100..=10_000))
        } else {
            (wallets[p][rng.usize(..wallets[p].len())], rng.u32(1..=100))
        };
        let mut to = wallets[q][rng.usize(..wallets[q].len())];
        if to == from {
            to = wallets[q]
                [(wallets[q].iter().position(|&w| w == from).unwrap_or(0) + 1) % wallets[q].len()];
        }
        Sent {
            from,
            to,
            amount,
            outcome: Outcome::Unanswered,
        }
    }
}

/// What became of a transfer the load sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No definite answer (only if the drain timed out: a finding in itself).
    Unanswered,
    /// `ok`, or `exists` on a retry: applied, and the client was told so.
    Acked,
    /// A definite refusal (`insufficient_funds`, a cancelled TC/C, ...): not applied.
    Rejected(ResultCode),
    /// Cluster mode: `exists` (on a retry, or on a first call whose routing resent the item
    /// after losing a node): an earlier attempt was logged; it applied, or (a TC/C cut short
    /// by a failover) was cancelled. It must be present; `ok` is not promised.
    Existing,
}

/// A transfer the load sent, compactly (12 bytes: runs of millions stay small). Its id is
/// implied by its position (`LoadReport::id_of`), its accounts are indexes into the `Book`.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub from: u16,
    pub to: u16,
    pub amount: u32,
    pub outcome: Outcome,
}

pub struct LoadConfig {
    pub addr: String,
    /// Cluster mode: the client addresses of every node. The load then goes through a
    /// `ClusterClient` (routed to each partition's leader), `pending` is retried like
    /// `not_leader`, and `exists` is recorded as `Outcome::Existing` even on a first call.
    pub cluster_seeds: Option<Vec<String>>,
    pub seed: u64,
    /// Transfers per second of this thread (paced; no catch-up burst after a stall).
    pub rate: f64,
    pub batch_max: usize,
    pub cross_ratio: f64,
    /// Upper bound of transfers this thread sends (bounds the memory of its record).
    pub max_transfers: usize,
    pub timeout_ms: u64,
}

/// Everything one load thread did.
#[derive(Default)]
pub struct LoadReport {
    pub thread: u32,
    pub sent: Vec<Sent>,
    pub batches: u64,
    /// Batches that needed more than one attempt.
    pub batches_retried: u64,
    pub attempts: u64,
    /// Per-item answers by result code name, over all attempts.
    pub codes: BTreeMap<&'static str, u64>,
    /// Failed attempts by kind (timeout, disconnected, connect, refused, ...).
    pub errors: BTreeMap<&'static str, u64>,
    /// `exists` answers on a retry: the first attempt applied, its answer was lost.
    pub exists_on_retry: u64,
    pub violations: Vec<String>,
    pub violations_total: u64,
}

impl LoadReport {
    /// The id of the `n`th transfer of thread `thread` (never 0, never shared between threads).
    pub fn id_of(thread: u32, n: usize) -> u128 {
        ((thread as u128 + 1) << 64) | (n as u128 + 1)
    }

    fn violation(&mut self, what: String) {
        self.violations_total += 1;
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(what);
        }
    }
}

/// Answers after which the same ids are simply sent again.
fn is_transient(code: ResultCode) -> bool {
    matches!(
        code,
        ResultCode::Busy
            | ResultCode::StorageFull
            | ResultCode::StorageError
            | ResultCode::ShuttingDown
            | ResultCode::NotLeader
    )
}

/// What the load sends through: one node, or a cluster by its partition map.
enum Target {
    Node(Client),
    Cluster(ClusterClient),
}

impl Target {
    fn connect(config: &ClientConfig, seeds: Option<&Vec<String>>) -> Result<Target, ClientError> {
        match seeds {
            None => Client::connect(config.clone()).map(Target::Node),
            Some(seeds) => ClusterClient::connect(config.clone(), seeds).map(Target::Cluster),
        }
    }

    fn create_transfers(&self, items: &[NewTransfer]) -> Result<Vec<ResultCode>, ClientError> {
        match self {
            Target::Node(c) => c.create_transfers(items),
            Target::Cluster(c) => c.create_transfers(items),
        }
    }
}

/// Runs one load thread until `stop`; then finishes its last batch (bounded by
/// `DRAIN_TIMEOUT`) and returns what it did.
pub fn run_load(
    thread: u32,
    book: Arc<Book>,
    config: LoadConfig,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let mut report = LoadReport {
        thread,
        ..LoadReport::default()
    };
    let mut rng = fastrand::Rng::with_seed(
        config.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(thread as u64 + 1)),
    );
    let mut client_config = ClientConfig::new(config.addr.clone());
    client_config.retries = 0; // the harness retries, with the same ids, and counts it
    client_config.timeout_ms = config.timeout_ms;
    let cluster = config.cluster_seeds.is_some();
    let mut client: Option<Target> = None;
    let mut next_at = Instant::now();
    while !stop.load(Ordering::Relaxed) && report.sent.len() < config.max_transfers {
        let now = Instant::now();
        if next_at > now {
            std::thread::sleep(next_at - now);
        } else if now - next_at > Duration::from_secs(1) {
            next_at = now; // behind after a stall: no burst to catch up
        }
        let size = rng
            .usize(1..=config.batch_max)
            .min(config.max_transfers - report.sent.len());
        next_at += Duration::from_secs_f64(size as f64 / config.rate.max(1.0));
        let first = report.sent.len();
        for _ in 0..size {
            report.sent.push(book.draw(&mut rng, config.cross_ratio));
        }
        report.batches += 1;
        let mut pending: Vec<usize> = (first..first + size).collect();
        let mut attempt = 0u32;
        let mut give_up: Option<Instant> = None;
        loop {
            attempt += 1;
            report.attempts += 1;
            let transfers: Vec<NewTransfer> = pending
                .iter()
                .map(|&n| book.transfer(LoadReport::id_of(thread, n), &report.sent[n]))
                .collect();
            if client.is_none() {
                // The first connection (the pool reconnects by itself after that).
                match Target::connect(&client_config, config.cluster_seeds.as_ref()) {
                    Ok(c) => client = Some(c),
                    Err(e) => *report.errors.entry(e.kind()).or_default() += 1,
                }
            }
            let result = match &client {
                Some(c) => c.create_transfers(&transfers),
                None => Err(ClientError::Connect {
                    addr: config.addr.clone(),
                    reason: "not connected yet".into(),
                }),
            };
            match result {
                Ok(codes) if codes.len() == pending.len() => {
                    let mut still = Vec::new();
                    for (&n, code) in pending.iter().zip(codes) {
                        *report.codes.entry(code.name()).or_default() += 1;
                        let id = LoadReport::id_of(thread, n);
                        match code {
                            ResultCode::Ok => report.sent[n].outcome = Outcome::Acked,
                            ResultCode::Exists if cluster => {
                                if attempt > 1 {
                                    report.exists_on_retry += 1;
                                }
                                report.sent[n].outcome = Outcome::Existing;
                            }
                            ResultCode::Pending if cluster => still.push(n),
                            ResultCode::Exists if attempt > 1 => {
                                report.exists_on_retry += 1;
                                report.sent[n].outcome = Outcome::Acked;
                            }
                            ResultCode::Exists => {
                                report.violation(format!(
                                    "transfer {id} answered `exists` on its first send"
                                ));
                                report.sent[n].outcome = Outcome::Acked;
                            }
                            ResultCode::ExistsWithDifferentFields | ResultCode::Pending => {
                                report.violation(format!("transfer {id} answered `{code}`"));
                                report.sent[n].outcome = Outcome::Rejected(code);
                            }
                            code if is_transient(code) => still.push(n),
                            code => report.sent[n].outcome = Outcome::Rejected(code),
                        }
                    }
                    pending = still;
                }
                Ok(codes) => report.violation(format!(
                    "{} answers to a batch of {}",
                    codes.len(),
                    pending.len()
                )),
                Err(e) => *report.errors.entry(e.kind()).or_default() += 1,
            }
            if pending.is_empty() {
                break;
            }
            if attempt == 1 {
                report.batches_retried += 1;
            }
            if stop.load(Ordering::Relaxed) {
                let deadline = *give_up.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if Instant::now() > deadline {
                    report.violation(format!(
                        "{} transfers got no definite answer within {DRAIN_TIMEOUT:?} after the faults stopped",
                        pending.len()
                    ));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis((20 * attempt as u64).min(250)));
        }
    }
    report
}
