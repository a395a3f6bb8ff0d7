//! The accounts of a run and the transfers drawn among them (seeded, reproducible).

use engine::model::Currency;
use engine::partition::partition_of;
use engine::{NewAccount, NewTransfer};

/// Accounts grouped by the partition that owns them, plus one issuer per partition.
pub struct Accounts {
    pub by_partition: Vec<Vec<u128>>,
    pub issuers: Vec<u128>,
    pub currency: Currency,
}

/// Every id of the bench lives below this; issuers are above.
const ISSUER_BASE: u128 = 1 << 100;

impl Accounts {
    pub fn new(count: u64, partitions: u32) -> Accounts {
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
        Accounts {
            by_partition,
            issuers,
            currency: Currency::parse("EUR").expect("valid code"),
        }
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
        }
    }

    pub fn fill(&mut self, accounts: &Accounts, count: usize, out: &mut Vec<NewTransfer>) {
        out.clear();
        let local = &accounts.by_partition[self.partition];
        let partitions = accounts.by_partition.len();
        for _ in 0..count {
            let from_at = self.rng.usize(..local.len());
            let from = local[from_at];
            let cross = partitions > 1
                && self.cross_partition_ratio > 0.0
                && self.rng.f64() < self.cross_partition_ratio;
            let to = if cross {
                let mut q = self.rng.usize(..partitions - 1);
                if q >= self.partition {
                    q += 1;
                }
                let there = &accounts.by_partition[q];
                there[self.rng.usize(..there.len())]
            } else {
                let mut to_at = self.rng.usize(..local.len());
                if to_at == from_at {
                    to_at = (to_at + 1) % local.len();
                }
                local[to_at]
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
