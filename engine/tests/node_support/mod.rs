//! Helpers for tests that drive a whole `Node` in process.

use engine::runtime::Node;
use std::time::{Duration, Instant};

/// Waits until no partition of `node` has a TC/C in flight: a cross-partition transfer is
/// answered at its decision, and its credit and hold release follow.
pub fn wait_tcc_settled(node: &Node, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while node
        .all_stats()
        .unwrap()
        .iter()
        .any(|s| s.tcc_in_flight > 0)
    {
        assert!(
            Instant::now() < deadline,
            "TC/C did not finish in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
