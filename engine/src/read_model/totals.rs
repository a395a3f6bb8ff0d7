//! Money per currency as the read model sees it: the sum of `balance + held` over the
//! partition's accounts, kept up to date event by event (the same figure as
//! `PartitionState::totals_by_currency`). One entry per currency, in currency order.

use crate::model::Currency;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    by_currency: BTreeMap<Currency, i128>,
}

impl Totals {
    /// Adds `delta` to `currency`'s total. A currency appears once an account of it exists.
    pub fn add(&mut self, currency: Currency, delta: i128) {
        *self.by_currency.entry(currency).or_default() += delta;
    }

    /// `(currency, balance + held)` in currency order.
    pub fn to_vec(&self) -> Vec<(Currency, i128)> {
        self.by_currency.iter().map(|(c, t)| (*c, *t)).collect()
    }

    pub fn get(&self, currency: Currency) -> Option<i128> {
        self.by_currency.get(&currency).copied()
    }
}
