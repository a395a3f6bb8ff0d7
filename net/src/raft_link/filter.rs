//! `LinkFilter`: fault injection for partition tests (RAFT_PLAN §5), without network
//! namespaces. A set of isolated node ids: the link drops every message to or from any of
//! them, on both sides (the sender refuses to send to an isolated node, or anything while it is
//! isolated itself; the receiver drops what comes from an isolated node, or anything while it is
//! isolated, and the replies it would send).
//!
//! Dropping on both sides means one filter per node is enough to cut that node off, and one
//! filter shared by all nodes of a test (as in `tests/raft_link.rs`) cuts a node off from the
//! rest with a single `isolate` call. Connections stay up. A new request to a cut-off node
//! fails at once as unreachable (as a refused connection would, so openraft backs off);
//! requests already in flight, and replies, vanish as in a real partition and time out.
//!
//! Changed at run time from any thread (an admin operation or a test), read on every message:
//! a read lock on an uncontended `RwLock` over a small set.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, Default)]
pub struct LinkFilter {
    isolated: Arc<RwLock<BTreeSet<u64>>>,
}

impl LinkFilter {
    pub fn new() -> LinkFilter {
        LinkFilter::default()
    }

    /// Drops all traffic to and from `node` from now on.
    pub fn isolate(&self, node: u64) {
        self.write().insert(node);
    }

    /// Lets `node` talk again.
    pub fn heal(&self, node: u64) {
        self.write().remove(&node);
    }

    pub fn heal_all(&self) {
        self.write().clear();
    }

    pub fn isolated(&self) -> BTreeSet<u64> {
        self.read().clone()
    }

    /// True when a message from `from` to `to` must be dropped.
    pub fn blocks(&self, from: u64, to: u64) -> bool {
        let isolated = self.read();
        isolated.contains(&from) || isolated.contains(&to)
    }

    // A panic while holding the lock cannot leave the set half-updated (each method does one
    // set operation), so a poisoned lock is used as is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<u64>> {
        self.isolated.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<u64>> {
        self.isolated.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolating_a_node_cuts_both_directions_and_healing_restores_them() {
        let f = LinkFilter::new();
        assert!(!f.blocks(1, 2));
        f.isolate(2);
        assert!(f.blocks(1, 2) && f.blocks(2, 1) && f.blocks(2, 3));
        assert!(!f.blocks(1, 3));
        f.heal(2);
        assert!(!f.blocks(1, 2));
        f.isolate(0);
        f.heal_all();
        assert!(f.isolated().is_empty());
    }
}
