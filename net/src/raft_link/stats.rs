//! `LinkStats`: counters of a node's outgoing node-link side, for tests and the metrics
//! (`walletd_link_*`).
//! `messages_sent / frames_sent` is the batching the link achieves: how many Raft messages,
//! of any partitions, shared a write.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// RaftBatch frames written to peers.
    pub frames_sent: u64,
    /// Requests in those frames.
    pub messages_sent: u64,
    /// Most requests in one frame.
    pub messages_per_frame_max: u64,
    /// Connections established to peers (handshake done).
    pub connects: u64,
    /// Connect attempts that failed (refused, timed out, handshake refused).
    pub connect_failures: u64,
    /// AppendEntries with entries that openraft gave up waiting for (its timeout is the
    /// heartbeat interval) and retried while the first one was still unanswered.
    pub appends_retried_unanswered: u64,
    /// Of those retries, the ones answered by the first request's reply, so that its entries
    /// were not sent again (`network.rs`, "Retries after a timeout").
    pub appends_answered_by_earlier: u64,
}

/// The live counters, shared by every core's link of a node (`LinkConfig::counters`: each
/// core's link is made from a clone of one config) and read by the metrics thread; a frame
/// carries many messages, so one relaxed increment per frame costs nothing on the path.
#[derive(Debug, Default)]
pub struct LinkCounters {
    frames_sent: AtomicU64,
    messages_sent: AtomicU64,
    messages_per_frame_max: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    appends_retried_unanswered: AtomicU64,
    appends_answered_by_earlier: AtomicU64,
}

impl LinkCounters {
    pub(crate) fn frame(&self, messages: usize) {
        let messages = messages as u64;
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.messages_sent.fetch_add(messages, Ordering::Relaxed);
        self.messages_per_frame_max
            .fetch_max(messages, Ordering::Relaxed);
    }

    pub(crate) fn connected(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn append_retried_unanswered(&self) {
        self.appends_retried_unanswered
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn append_answered_by_earlier(&self) {
        self.appends_answered_by_earlier
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: a snapshot taken under load may be a frame
    /// apart between fields).
    pub fn snapshot(&self) -> LinkStats {
        LinkStats {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_per_frame_max: self.messages_per_frame_max.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            appends_retried_unanswered: self.appends_retried_unanswered.load(Ordering::Relaxed),
            appends_answered_by_earlier: self.appends_answered_by_earlier.load(Ordering::Relaxed),
        }
    }
}
