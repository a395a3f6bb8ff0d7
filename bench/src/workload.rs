//! The accounts of a run and the transfers drawn among them (seeded, reproducible).

use engine::model::Currency;
use engine::partition::partition_of;
use engine::{NewAccount, NewTransfer};

use crate::zipf::Zipf;

/// Accounts grouped by the partition that owns them, plus one issuer per partition.
pub struct Accounts {
    pub by_partition: Vec<Vec<u128>>,
    /// The same wallet ids as `u32` (they are `1..=N`), for the generators' hot loop.
    pub compact: Vec<Vec<u32>>,
    pub issuers: Vec<u128>,
    pub currency: Currency,
}

/// Every id of the bench lives below this; issuers are above.
const ISSUER_BASE: u128 = 1 << 100;

impl Accounts {
    pub fn new(count: u64, partitions: u32) -> Accounts {
        assert!(
            count <= u32::MAX as u64,
            "wallet ids must fit the compact tables"
        );
        let mut by_partition = vec![Vec::new(); partitions as usize];
        for id in 1..=count as u128 {
            by_partition[partition_of(id, partitions) as usize].push(id);
        }
        let issuers = (0..partitions)
            .map(|p| {
                (ISSUER_BASE..)
                    .find(|id| partition_of(*id, partitions) == p)
                    .expect("ids are plentiful")
            })
            .collect();
        let compact = by_partition
            .iter()
            .map(|ids| ids.iter().map(|&id| id as u32).collect())
            .collect();
        Accounts {
            by_partition,
            compact,
            issuers,
            currency: Currency::parse("EUR").expect("valid code"),
        }
    }

    /// Wallets (not issuers); their ids are `1..=wallets()`.
    pub fn wallets(&self) -> u64 {
        self.by_partition.iter().map(|w| w.len() as u64).sum()
    }

    /// Issuers and wallets, every account of the run.
    pub fn all_ids(&self) -> Vec<u128> {
        let wallets = self.by_partition.iter().flatten().copied();
        self.issuers.iter().copied().chain(wallets).collect()
    }

    pub fn creations(&self) -> Vec<NewAccount> {
        let wallets = self.by_partition.iter().flatten().map(|&id| NewAccount {
            id,
            currency: self.currency,
            flags: 0,
            floor: 0,
            user_data: 0,
        });
        let issuers = self.issuers.iter().map(|&id| NewAccount {
            id,
            currency: self.currency,
            flags: 0,
            floor: i64::MIN / 2,
            user_data: 0,
        });
        issuers.chain(wallets).collect()
    }

    /// One deposit per wallet from its partition's issuer.
    pub fn deposits(&self, amount: u64, first_id: u128) -> Vec<NewTransfer> {
        let mut id = first_id;
        let mut out = Vec::new();
        for (p, wallets) in self.by_partition.iter().enumerate() {
            for &wallet in wallets {
                out.push(NewTransfer {
                    id,
                    from: self.issuers[p],
                    to: wallet,
                    amount,
                    currency: self.currency,
                    user_data: 0,
                });
                id += 1;
            }
        }
        out
    }
}

/// Draws transfers whose source lives in one partition.
pub struct TransferGenerator {
    rng: fastrand::Rng,
    partition: usize,
    next_id: u128,
    cross_partition_ratio: f64,
    /// Pre-drawn (from, to, amount) patterns, replayed with fresh ids (see `prepare`).
    pool: Vec<NewTransfer>,
    cursor: usize,
}

impl TransferGenerator {
    /// Ids are `partition << 64 | counter`, so generators never collide.
    pub fn new(seed: u64, partition: usize, cross_partition_ratio: f64) -> TransferGenerator {
        TransferGenerator {
            rng: fastrand::Rng::with_seed(
                seed ^ (partition as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ),
            partition,
            next_id: ((partition as u128 + 1) << 64) | 1,
            cross_partition_ratio,
            pool: Vec::new(),
            cursor: 0,
        }
    }

    /// Draws `len` transfers up front. The generator shares the two cores with the engine,
    /// and drawing random accounts out of tables of a million ids costs a cache miss or two
    /// per transfer, which would be measured as engine time; replaying a pre-drawn pool
    /// (uniform over the accounts, fresh ids each time) is a sequential copy instead.
    pub fn prepare(&mut self, accounts: &Accounts, len: usize) {
        let mut pool = Vec::with_capacity(len);
        self.draw(accounts, len, &mut pool);
        self.pool = pool;
        self.cursor = 0;
    }

    /// The next `count` transfers (from the pool when prepared), each with a new id.
    pub fn fill(&mut self, accounts: &Accounts, count: usize, out: &mut Vec<NewTransfer>) {
        if self.pool.is_empty() {
            return self.draw(accounts, count, out);
        }
        out.clear();
        out.reserve(count);
        while out.len() < count {
            let take = (count - out.len()).min(self.pool.len() - self.cursor);
            for t in &self.pool[self.cursor..self.cursor + take] {
                out.push(NewTransfer {
                    id: self.next_id,
                    ..*t
                });
                self.next_id += 1;
            }
            self.cursor = (self.cursor + take) % self.pool.len();
        }
    }

    fn draw(&mut self, accounts: &Accounts, count: usize, out: &mut Vec<NewTransfer>) {
        out.clear();
        let local = &accounts.compact[self.partition];
        let partitions = accounts.compact.len();
        for _ in 0..count {
            let from_at = self.rng.usize(..local.len());
            let from = local[from_at] as u128;
            let cross = partitions > 1
                && self.cross_partition_ratio > 0.0
                && self.rng.f64() < self.cross_partition_ratio;
            let to = if cross {
                let mut q = self.rng.usize(..partitions - 1);
                if q >= self.partition {
                    q += 1;
                }
                let there = &accounts.compact[q];
                there[self.rng.usize(..there.len())] as u128
            } else {
                let mut to_at = self.rng.usize(..local.len());
                if to_at == from_at {
                    to_at = (to_at + 1) % local.len();
                }
                local[to_at] as u128
            };
            out.push(NewTransfer {
                id: self.next_id,
                from,
                to,
                amount: 1 + self.rng.u64(..100),
                currency: accounts.currency,
                user_data: 0,
            });
            self.next_id += 1;
        }
    }
}

/// How sources and destinations are picked among the wallets of a run.
pub enum Popularity {
    Uniform,
    /// Wallet `k` (ids are `1..=N`) is drawn with probability proportional to `1 / k^s`.
    Zipf(Zipf),
}

/// Draws transfers over all wallets, whatever partition they live in (run mode: the server
/// routes each transfer to its source's partition). `cross_partition_ratio` of them go to a
/// wallet of another partition, the rest stay in the source's partition. Seeded, reproducible.
pub struct MixedGenerator {
    rng: fastrand::Rng,
    next_id: u128,
    cross_partition_ratio: f64,
    popularity: std::sync::Arc<Popularity>,
}

/// Tries at drawing a destination with the right partition before falling back to a uniform
/// pick there (only matters for very skewed Zipf exponents).
const DRAW_TRIES: usize = 32;

impl MixedGenerator {
    /// Transfer ids are `first_id, first_id + 1, ...`; give each generator its own range.
    pub fn new(
        seed: u64,
        stream: u64,
        first_id: u128,
        cross_partition_ratio: f64,
        popularity: std::sync::Arc<Popularity>,
    ) -> MixedGenerator {
        MixedGenerator {
            rng: fastrand::Rng::with_seed(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            next_id: first_id,
            cross_partition_ratio,
            popularity,
        }
    }

    /// A wallet id in `1..=wallets`.
    fn draw(&mut self, wallets: u64) -> u128 {
        match &*self.popularity {
            Popularity::Uniform => 1 + self.rng.u64(..wallets) as u128,
            Popularity::Zipf(zipf) => zipf.sample(&mut self.rng) as u128,
        }
    }

    pub fn fill(&mut self, accounts: &Accounts, count: usize, out: &mut Vec<NewTransfer>) {
        out.clear();
        let partitions = accounts.by_partition.len() as u32;
        let wallets = accounts.wallets();
        for _ in 0..count {
            let from = self.draw(wallets);
            let home = partition_of(from, partitions);
            let cross = partitions > 1
                && self.cross_partition_ratio > 0.0
                && self.rng.f64() < self.cross_partition_ratio;
            let mut to = None;
            for _ in 0..DRAW_TRIES {
                let candidate = self.draw(wallets);
                let there = partition_of(candidate, partitions);
                if (cross && there != home) || (!cross && there == home && candidate != from) {
                    to = Some(candidate);
                    break;
                }
            }
            let to = to.unwrap_or_else(|| {
                let p = if cross {
                    let q = self.rng.u32(..partitions - 1);
                    if q >= home {
                        q + 1
                    } else {
                        q
                    }
                } else {
                    home
                };
                let list = &accounts.by_partition[p as usize];
                loop {
                    let candidate = list[self.rng.usize(..list.len())];
                    if candidate != from {
                        break candidate;
                    }
                }
            });
            out.push(NewTransfer {
                id: self.next_id,
                from,
                to,
                amount: 1 + self.rng.u64(..100),
                currency: accounts.currency,
                user_data: 0,
            });
            self.next_id += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_generator_keeps_the_cross_partition_ratio() {
        let accounts = Accounts::new(10_000, 4);
        for popularity in [
            Popularity::Uniform,
            Popularity::Zipf(Zipf::new(10_000, 1.1)),
        ] {
            let popularity = std::sync::Arc::new(popularity);
            let mut generator = MixedGenerator::new(9, 0, 1 << 64, 0.25, popularity);
            let mut out = Vec::new();
            generator.fill(&accounts, 40_000, &mut out);
            let cross = out
                .iter()
                .filter(|t| partition_of(t.from, 4) != partition_of(t.to, 4))
                .count() as f64
                / out.len() as f64;
            assert!((cross - 0.25).abs() < 0.02, "cross share {cross}");
            assert!(out.iter().all(|t| t.from != t.to));
            assert!(out
                .iter()
                .all(|t| (1..=10_000).contains(&t.from) && (1..=10_000).contains(&t.to)));
            assert!(out.windows(2).all(|w| w[1].id == w[0].id + 1));
        }
    }
}
