//! How many items of client batches ended with each result code, node-wide, for the metrics
//! endpoint: the one number that tells an operator at once whether clients see `ok`, are
//! running out of funds, retrying (`exists`) or hitting a full disk (`storage_full`).
//!
//! Counted where a routed batch's answers are put together (`Node::create_transfers`,
//! `create_accounts`), once per batch: codes are tallied in a local array and added to the
//! shared atomics afterwards, so the cost is a few atomic adds per batch, not per item.

use crate::result_code::ResultCode;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter per possible code value (codes are a `u8` on the wire).
const CODE_VALUES: usize = 256;

pub struct ResultCounts {
    by_code: [AtomicU64; CODE_VALUES],
}

impl Default for ResultCounts {
    fn default() -> Self {
        ResultCounts {
            by_code: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ResultCounts {
    /// Adds the codes of one batch's answers.
    pub fn record(&self, results: &[ResultCode]) {
        let mut tally = [0u64; CODE_VALUES];
        for code in results {
            tally[*code as usize] += 1;
        }
        for (counter, count) in self.by_code.iter().zip(tally) {
            if count > 0 {
                counter.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Every known code with its count so far (zeros included: a metric series should not
    /// appear out of nowhere).
    pub fn snapshot(&self) -> Vec<(ResultCode, u64)> {
        ResultCode::ALL
            .iter()
            .map(|code| (*code, self.by_code[*code as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_code_across_batches() {
        let counts = ResultCounts::default();
        counts.record(&[
            ResultCode::Ok,
            ResultCode::Ok,
            ResultCode::InsufficientFunds,
        ]);
        counts.record(&[ResultCode::Ok]);
        let snapshot = counts.snapshot();
        let of = |code| snapshot.iter().find(|(c, _)| *c == code).map(|(_, n)| *n);
        assert_eq!(of(ResultCode::Ok), Some(3));
        assert_eq!(of(ResultCode::InsufficientFunds), Some(1));
        assert_eq!(of(ResultCode::Exists), Some(0));
        assert_eq!(snapshot.len(), ResultCode::ALL.len());
    }
}
