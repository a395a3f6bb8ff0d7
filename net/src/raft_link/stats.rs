//! `LinkStats`: counters of one `RaftLink`'s outgoing side, for tests and (later) metrics.
//! `messages_sent / frames_sent` is the batching the link achieves: how many Raft messages,
//! of any partitions, shared a write.

use std::cell::Cell;

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
}

/// The live counters (single-threaded: the link's executor only).
#[derive(Default)]
pub(crate) struct LinkCounters {
    frames_sent: Cell<u64>,
    messages_sent: Cell<u64>,
    messages_per_frame_max: Cell<u64>,
    connects: Cell<u64>,
    connect_failures: Cell<u64>,
}

impl LinkCounters {
    pub(crate) fn frame(&self, messages: usize) {
        let messages = messages as u64;
        self.frames_sent.set(self.frames_sent.get() + 1);
        self.messages_sent.set(self.messages_sent.get() + messages);
        self.messages_per_frame_max
            .set(self.messages_per_frame_max.get().max(messages));
    }

    pub(crate) fn connected(&self) {
        self.connects.set(self.connects.get() + 1);
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.set(self.connect_failures.get() + 1);
    }

    pub(crate) fn snapshot(&self) -> LinkStats {
        LinkStats {
            frames_sent: self.frames_sent.get(),
            messages_sent: self.messages_sent.get(),
            messages_per_frame_max: self.messages_per_frame_max.get(),
            connects: self.connects.get(),
            connect_failures: self.connect_failures.get(),
        }
    }
}
