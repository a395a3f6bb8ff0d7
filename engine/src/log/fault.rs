//! Fault injection for the log writer. **Test-only**: production configs leave it unset, and
//! then the writer pays one `Option` check per write and per fsync.
//!
//! A test keeps an `Arc<FaultPlan>` and arms it while the node runs (the counters are atomics,
//! shared with the shard threads): "the next 2 fdatasyncs fail with EIO", "the next segment
//! preallocation fails with ENOSPC", "every write takes 20 ms longer".

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct FaultPlan {
    /// The next N fdatasyncs fail with EIO (a real I/O error: the writer is poisoned).
    pub fsync_failures: AtomicU32,
    /// The next N writes fail with ENOSPC before reaching the disk (the disk-full path).
    pub write_full_failures: AtomicU32,
    /// The next N segment preallocations fail with ENOSPC (the disk-full path at rotation).
    pub preallocate_full_failures: AtomicU32,
    /// Added before every write, in milliseconds (a slow disk).
    pub write_delay_ms: AtomicU64,
}

impl FaultPlan {
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// Arms `count` more failures on `counter` (one of the fields).
    pub fn arm(counter: &AtomicU32, count: u32) {
        counter.fetch_add(count, Ordering::SeqCst);
    }

    /// Consumes one armed failure of `counter`; true when the caller must fail now.
    pub(crate) fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn write_delay_ms(&self) -> u64 {
        self.write_delay_ms.load(Ordering::Relaxed)
    }
}
