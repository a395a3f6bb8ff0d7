//! Who wants to hear that a partition made new entries durable: subscription tasks register a
//! wake-up channel (`Request::Watch`); after each group commit the partition task sends `()`
//! to each without blocking (a full channel already holds a wake-up; a closed one is dropped).

/// Most wake-up channels one partition keeps (a subscriber beyond it polls on its timer).
pub const WATCHERS_MAX: usize = 4096;

#[derive(Default)]
pub(crate) struct Watchers {
    senders: Vec<flume::Sender<()>>,
    /// Durable index of the last wake-up sent.
    notified: u64,
}

impl Watchers {
    pub fn add(&mut self, wake: flume::Sender<()>) {
        if self.senders.len() >= WATCHERS_MAX {
            self.senders.retain(|s| !s.is_disconnected());
        }
        if self.senders.len() < WATCHERS_MAX {
            self.senders.push(wake);
        }
    }

    /// Wakes every watcher when `durable_index` moved since the last call.
    pub fn notify(&mut self, durable_index: u64) {
        if durable_index <= self.notified {
            return;
        }
        self.notified = durable_index;
        self.senders
            .retain(|s| !matches!(s.try_send(()), Err(flume::TrySendError::Disconnected(_))));
    }
}
