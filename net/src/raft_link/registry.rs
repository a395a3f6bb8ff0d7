//! `RaftRegistry`: partition id -> the `Raft` of that partition on this executor. The receiving
//! side of the link looks each message's partition up here and calls that Raft.
//!
//! A `Raft<WalletRaft>` is `!Send` (feature `singlethreaded`): it lives on the executor that
//! created it, and every call must be made there. So a registry is per executor, shared by
//! `Rc`, and the link that dispatches to it runs on the same executor (see `mod.rs` for the
//! one-executor-per-link deviation from RAFT_PLAN §5).

use engine::raft::WalletRaft;
use engine::runtime::Request;
use openraft::Raft;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Clone, Default)]
pub struct RaftRegistry {
    rafts: Rc<RefCell<HashMap<u32, Raft<WalletRaft>>>>,
    /// The partitions' request queues (forwarded TC/C messages go there).
    queues: Rc<RefCell<HashMap<u32, flume::Sender<Request>>>>,
}

impl RaftRegistry {
    pub fn new() -> RaftRegistry {
        RaftRegistry::default()
    }

    /// Routes messages for `partition` to `raft` (replacing an earlier one).
    pub fn register(&self, partition: u32, raft: Raft<WalletRaft>) {
        self.rafts.borrow_mut().insert(partition, raft);
    }

    /// Stops routing to `partition`; its messages are answered `NoSuchPartition`.
    pub fn unregister(&self, partition: u32) -> Option<Raft<WalletRaft>> {
        self.rafts.borrow_mut().remove(&partition)
    }

    /// Forwarded TC/C messages for `partition` go to `queue`.
    pub fn register_queue(&self, partition: u32, queue: flume::Sender<Request>) {
        self.queues.borrow_mut().insert(partition, queue);
    }

    pub fn queue(&self, partition: u32) -> Option<flume::Sender<Request>> {
        self.queues.borrow().get(&partition).cloned()
    }

    /// The Raft of `partition` (a cheap clone of the handle: no borrow outlives the call).
    pub fn get(&self, partition: u32) -> Option<Raft<WalletRaft>> {
        self.rafts.borrow().get(&partition).cloned()
    }
}
