//! The faults and their seeded schedule.

use super::node::NodeHandle;
use std::time::{Duration, Instant};

/// The file size limit while a node's disk is "full": every log write past the first block of
/// a segment fails with EFBIG, and so does preallocating the next segment.
const FULL_DISK_FILE_SIZE_BYTES: u64 = 4096;

/// A fault the harness injects into one node.
///
/// TODO(raft): `Partition { groups }` once walletd has a peer transport: cut (or delay) the
/// loopback links between groups of nodes, e.g. with a small forwarding proxy per peer link
/// that the harness can stall, so leaders lose quorum and elections happen under load. Until
/// then a node has no peers, and a network partition is the same as a client disconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL, then a restart on the same data dir.
    Kill,
    /// SIGSTOP for 0.2-2 s, then SIGCONT.
    Pause,
    /// The disk runs full for 2-4 s (`RLIMIT_FSIZE` lowered on the live process), then space
    /// returns.
    DiskFull,
    /// SIGTERM (clean stop: drain, flush, snapshot; must exit 0), then a restart.
    Terminate,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::DiskFull,
        FaultKind::Terminate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "sigkill",
            FaultKind::Pause => "sigstop",
            FaultKind::DiskFull => "disk_full",
            FaultKind::Terminate => "sigterm",
        }
    }
}

/// One injected fault, for the log and the summary.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// Since the start of the load.
    pub at: Duration,
    /// `FaultKind::name` (or `cluster::ClusterFault::name`).
    pub kind: &'static str,
    pub node: String,
    pub detail: String,
}

/// The seeded schedule: faults come in rounds that hold every kind once, in a random order (so
/// even a short run sees each kind), separated by random gaps of at least a second.
pub struct Schedule {
    rng: fastrand::Rng,
    round: Vec<FaultKind>,
}

impl Schedule {
    pub fn new(seed: u64) -> Schedule {
        Schedule {
            rng: fastrand::Rng::with_seed(seed ^ 0xfa17_5eed),
            round: Vec::new(),
        }
    }

    /// The pause before the next fault: 1-2.5 s.
    pub fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(1_000..=2_500))
    }

    /// The next fault and the index of the node it hits (of `nodes`).
    pub fn next(&mut self, nodes: usize) -> (FaultKind, usize) {
        if self.round.is_empty() {
            self.round = FaultKind::ALL.to_vec();
            self.rng.shuffle(&mut self.round);
        }
        let kind = self.round.pop().unwrap_or(FaultKind::Kill);
        (kind, self.rng.usize(..nodes.max(1)))
    }

    /// Injects `kind` into `node` and undoes it (restart, SIGCONT, space back) before
    /// returning a description. An error means the node could not be brought back.
    pub fn inject(
        &mut self,
        kind: FaultKind,
        node: &mut NodeHandle,
        violations: &mut Vec<String>,
    ) -> Result<String, String> {
        let pid = node.pid().unwrap_or(0);
        match kind {
            FaultKind::Kill => {
                node.kill();
                let took = node.start()?;
                Ok(format!(
                    "pid {pid} killed; restarted in {:.2} s",
                    took.as_secs_f64()
                ))
            }
            FaultKind::Pause => {
                let pause = Duration::from_millis(self.rng.u64(200..=2_000));
                node.pause()?;
                std::thread::sleep(pause);
                node.resume()?;
                Ok(format!(
                    "pid {pid} stopped for {:.2} s",
                    pause.as_secs_f64()
                ))
            }
            FaultKind::DiskFull => {
                let full = Duration::from_millis(self.rng.u64(2_000..=4_000));
                node.limit_file_size(Some(FULL_DISK_FILE_SIZE_BYTES))?;
                std::thread::sleep(full);
                node.limit_file_size(None)?;
                Ok(format!(
                    "pid {pid}: file size limit {FULL_DISK_FILE_SIZE_BYTES} bytes for {:.2} s",
                    full.as_secs_f64()
                ))
            }
            FaultKind::Terminate => {
                let stopping = Instant::now();
                let code = node.terminate()?;
                let stopped_in = stopping.elapsed();
                if code != Some(0) {
                    violations.push(format!(
                        "{}: clean stop (SIGTERM) of pid {pid} exited with {code:?}, not 0",
                        node.name
                    ));
                }
                let took = node.start()?;
                Ok(format!(
                    "pid {pid} stopped cleanly in {:.2} s (exit {code:?}); restarted in {:.2} s",
                    stopped_in.as_secs_f64(),
                    took.as_secs_f64()
                ))
            }
        }
    }
}
