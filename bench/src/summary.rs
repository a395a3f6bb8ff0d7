//! The JSON summary every mode prints (schema in ../shared/CLI.md and docs/BENCHMARKS.md).

use crate::machine::Machine;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize, Debug)]
pub struct Summary {
    pub mode: &'static str,
    pub config: serde_json::Value,
    pub machine: Machine,
    /// Transfers acknowledged (any result code).
    pub transfers: u64,
    pub seconds: f64,
    pub transfers_per_sec: f64,
    /// Per batch, from the moment the batch was ready to send until its durable reply.
    pub latency_us: Latency,
    pub results: BTreeMap<String, u64>,
    pub check: Check,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Check {
    /// Sum of all balances (plus holds) per currency is unchanged (zero, issuers counted).
    pub conserved: bool,
    /// Accounts below their floor (must be 0).
    pub negative_balances: u64,
    /// Transfers acknowledged `ok` that the engine does not have as applied (absent, or a
    /// cross-partition transfer found pending or cancelled).
    pub missing_acks: u64,
    /// Cross-partition transfers not settled once the check gave them 30 s (must be 0: a
    /// Confirm that never landed leaves its amount held, where the sum of balances plus holds
    /// alone would not show it). `run` counts the accounts still holding money (what the
    /// protocol shows); `engine` counts the TC/C transfers still in flight.
    pub unsettled_holds: u64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.conserved
            && self.negative_balances == 0
            && self.missing_acks == 0
            && self.unsettled_holds == 0
    }
}

/// How many of a lookup's answers are not an applied transfer: absent, or a cross-partition
/// transfer still pending or cancelled. For acknowledged-`ok` ids that count must be 0.
pub fn not_applied(found: &[Option<engine::model::TransferLookup>]) -> u64 {
    found
        .iter()
        .filter(|t| t.is_none_or(|t| t.status != engine::ResultCode::Ok))
        .count() as u64
}

impl Summary {
    pub fn print_human(&self) {
        println!(
            "{} transfers in {:.2} s = {:.0} transfers/s",
            self.transfers, self.seconds, self.transfers_per_sec
        );
        println!(
            "batch latency (us): p50 {}  p99 {}  p999 {}  max {}",
            self.latency_us.p50, self.latency_us.p99, self.latency_us.p999, self.latency_us.max
        );
        let results: Vec<String> = self
            .results
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("results: {}", results.join(" "));
        println!(
            "check: conserved={} negative_balances={} missing_acks={} unsettled_holds={} -> {}",
            self.check.conserved,
            self.check.negative_balances,
            self.check.missing_acks,
            self.check.unsettled_holds,
            if self.check.passed() { "PASS" } else { "FAIL" }
        );
        println!(
            "machine: {} cores, {}, kernel {}, commit {}",
            self.machine.cores, self.machine.cpu, self.machine.kernel, self.machine.commit
        );
    }

    pub fn write_json(&self, path: &std::path::Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}
