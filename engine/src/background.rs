//! Helper threads stay off the shards' cores; the prefault thread also runs only on CPU time
//! the shards leave idle.
//!
//! A shard's thread is pinned to its core, and a thread inherits the CPU mask of the thread
//! that starts it: the prefault thread, started by a shard on first use, and the snapshot
//! writers would be pinned to that shard's core, sharing it with the shard while another core
//! sits idle. With equal priority the scheduler also lets a helper finish its slice first: a
//! scheduler trace of an open-loop run at 500,000 transfers/s showed shard 0 woken with a
//! request and waiting 5.1 ms while the prefault thread (zeroing pages in the kernel) kept
//! core 0, and a network thread waiting 9.6 ms behind it.
//!
//! So every helper takes back the whole process's CPU mask (the main thread's: what walletd
//! was started with, e.g. the housekeeping CPUs under `isolcpus=`). The prefault thread also
//! lowers itself to `SCHED_IDLE`: it runs only when no ordinary thread wants that CPU, and an
//! ordinary thread that wakes takes the CPU from it at once. Its work is optional (memory it
//! has not reached yet just faults lazily on the shard), so starving it is harmless. Snapshot
//! writers keep normal priority: a follower may be waiting for the snapshot, and a saturated
//! machine would never give a `SCHED_IDLE` thread the seconds a big snapshot takes.

/// For a helper thread whose work must still finish under full load (snapshot writers): the
/// process's CPU mask instead of the inherited pin. Best effort: a refusal is logged at debug
/// level and the thread keeps its mask.
pub fn leave_the_shard_core() {
    if let Err(e) = use_the_process_cpu_mask() {
        tracing::debug!(error = %e, "a helper thread kept its inherited CPU mask");
    }
}

/// For a helper thread whose work is optional (the prefault thread): the process's CPU mask
/// and `SCHED_IDLE`. Best effort, as `leave_the_shard_core`.
pub fn become_background_thread() {
    leave_the_shard_core();
    if let Err(e) = lower_to_idle_priority() {
        tracing::debug!(error = %e, "a background thread kept its priority");
    }
}

/// Sets the calling thread's CPU mask to the main thread's.
fn use_the_process_cpu_mask() -> std::io::Result<()> {
    // SAFETY: `cpu_set_t` is plain bits; all zero is the empty set.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the pid of the process names its main thread; `mask` is a valid buffer of `size`.
    if unsafe { libc::sched_getaffinity(libc::getpid(), size, &mut mask) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pid 0 is the calling thread; `mask` was filled by the kernel above.
    if unsafe { libc::sched_setaffinity(0, size, &mask) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread to the `SCHED_IDLE` policy.
fn lower_to_idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid parameter block.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_mask(pid: libc::pid_t) -> Vec<usize> {
        // SAFETY: as in `use_the_process_cpu_mask`.
        let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(unsafe { libc::sched_getaffinity(pid, size, &mut mask) }, 0);
        // SAFETY: `cpu` < CPU_SETSIZE, inside the set.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &mask) })
            .collect()
    }

    fn pin_to(cpu: usize) {
        // SAFETY: as in `use_the_process_cpu_mask`.
        let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` came from the process's own mask, inside the set.
        unsafe { libc::CPU_SET(cpu, &mut mask) };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(unsafe { libc::sched_setaffinity(0, size, &mask) }, 0);
    }

    #[test]
    fn a_helper_started_by_a_pinned_thread_leaves_its_core_and_yields() {
        // SAFETY: getpid has no preconditions.
        let process = cpu_mask(unsafe { libc::getpid() });
        let first = process[0];
        let (inherited, after, policy) = std::thread::spawn(move || {
            // A pinned shard starts a helper: the helper inherits the pin.
            pin_to(first);
            std::thread::spawn(|| {
                let inherited = cpu_mask(0);
                become_background_thread();
                // SAFETY: pid 0 is the calling thread.
                (inherited, cpu_mask(0), unsafe {
                    libc::sched_getscheduler(0)
                })
            })
            .join()
            .expect("helper thread")
        })
        .join()
        .expect("pinned thread");
        assert_eq!(inherited, vec![first]);
        assert_eq!(after, process, "the helper takes the process's mask back");
        assert_eq!(policy, libc::SCHED_IDLE);
    }
}
