//! Memory that is paid for when it is reserved, not when the hot path first touches it.
//!
//! The kernel hands out anonymous memory lazily: the first write to each page faults and the
//! kernel zeroes it (2 MiB at a time with transparent huge pages). A partition reserves its
//! big tables (the idempotency index, TC/C records) for millions of transfers, and inserts land
//! at random positions, so without this every insert early in a run may fault a fresh page:
//! profiles of a cross-partition run showed ~40% of the shard cores in `clear_page_erms`,
//! inside `apply_entry`. Faulting a whole allocation in as soon as it is made (start-up, the
//! rare table growth, a new transfer-store chunk), on a background thread, moves that cost off
//! the per-transfer path and out of the latency tail without slowing start-up. It is
//! TigerBeetle's "allocate at start-up" applied to tables that may still grow.
//!
//! Small allocations are left alone: they are cheap to fault and usually reused.

use allocator_api2::alloc::{AllocError, Allocator, Global};
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Allocations at least this big are faulted in (in the background) when they are made.
pub const PREFAULT_MIN_BYTES: usize = 1 << 20;

const PAGE_BYTES: usize = 4096;

/// The global allocator, plus: big blocks are made resident by a background thread right after
/// they are allocated (huge-page backed when the kernel allows), so writes into them stop
/// faulting once it has been there.
#[derive(Clone, Copy, Default, Debug)]
pub struct Prefaulted;

/// A hash table whose memory is faulted in (in the background) when it is allocated.
pub type Table<K, V> = hashbrown::HashMap<K, V, hashbrown::DefaultHashBuilder, Prefaulted>;

/// An empty `Table` (allocates nothing).
pub fn table<K, V>() -> Table<K, V> {
    hashbrown::HashMap::with_hasher_in(Default::default(), Prefaulted)
}

/// A `Table` with room for `capacity` entries, made resident in the background.
pub fn table_with_capacity<K, V>(capacity: usize) -> Table<K, V> {
    hashbrown::HashMap::with_capacity_and_hasher_in(capacity, Default::default(), Prefaulted)
}

// SAFETY: small blocks are forwarded to `Global` with the same layout; big ones (`is_mapped`,
// decided by the layout alone, so `deallocate` takes the same branch as the allocation) are
// private anonymous mappings of at least `layout.size()` bytes, page aligned (`is_mapped`
// requires `align <= PAGE_BYTES`) and zero-filled by the kernel. `prefault` never changes a
// block's contents.
unsafe impl Allocator for Prefaulted {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if !is_mapped(layout) {
            return Global.allocate(layout);
        }
        let block = map_zeroed(layout.size())?;
        // SAFETY: `block` is a fresh mapping of `block.len()` writable bytes.
        unsafe { prefault(block.cast::<u8>().as_ptr(), block.len()) };
        Ok(block)
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if !is_mapped(layout) {
            return Global.allocate_zeroed(layout);
        }
        // A fresh mapping is zero already: nothing is written here, so a table of hundreds of
        // MiB costs its thread nothing until it touches it (the prefault thread gets there
        // first, in the background). Through the general allocator, recycled memory had to be
        // cleared on the spot: a 0.25-0.5 s stall of the shard when the transfer index doubled.
        self.allocate(layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if !is_mapped(layout) {
            // SAFETY: forwarded unchanged; `ptr` came from `Global` with this layout.
            return unsafe { Global.deallocate(ptr, layout) };
        }
        // SAFETY: `ptr` is the start of a mapping of `mapped_len(layout.size())` bytes made by
        // `map_zeroed` for this layout, and nothing uses it any more.
        unsafe { libc::munmap(ptr.as_ptr().cast(), mapped_len(layout.size())) };
    }
}

/// Big blocks get their own mapping: zeroed by the kernel, returned to it when freed.
fn is_mapped(layout: Layout) -> bool {
    layout.size() >= PREFAULT_MIN_BYTES && layout.align() <= PAGE_BYTES
}

fn mapped_len(bytes: usize) -> usize {
    bytes.next_multiple_of(PAGE_BYTES)
}

fn map_zeroed(bytes: usize) -> Result<NonNull<[u8]>, AllocError> {
    let len = mapped_len(bytes);
    // SAFETY: a new private anonymous mapping; no existing memory is affected.
    let start = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if start == libc::MAP_FAILED {
        return Err(AllocError);
    }
    let start = NonNull::new(start.cast::<u8>()).ok_or(AllocError)?;
    Ok(NonNull::slice_from_raw_parts(start, len))
}

/// Types whose all-zero bit pattern is a valid value (the empty slot of a flat table).
///
/// # Safety
/// Every field must be an integer or a type for which all-zero bytes are valid.
pub unsafe trait ZeroIsValid: Copy {}

// SAFETY: integers.
unsafe impl ZeroIsValid for u64 {}
unsafe impl ZeroIsValid for u32 {}

/// `len` zeroed values, allocated zeroed instead of written: a big table costs no time on the
/// thread that makes it (a write of every slot would fault in and zero the whole block right
/// there: a stall of about a second for 512 MiB on this VM); the prefault thread makes it
/// resident in the background.
pub fn zeroed_vec<T: ZeroIsValid>(len: usize) -> allocator_api2::vec::Vec<T, Prefaulted> {
    if len == 0 || std::mem::size_of::<T>() == 0 {
        let mut empty = allocator_api2::vec::Vec::new_in(Prefaulted);
        empty.resize(len, zeroed_value());
        return empty;
    }
    let layout = Layout::array::<T>(len).expect("a table that fits the address space");
    let Ok(block) = Prefaulted.allocate_zeroed(layout) else {
        std::alloc::handle_alloc_error(layout)
    };
    // SAFETY: the block was allocated by `Prefaulted` with the layout of `len` values of `T`,
    // is zeroed, and all-zero bytes are a valid `T` (`ZeroIsValid`).
    unsafe {
        allocator_api2::vec::Vec::from_raw_parts_in(
            block.cast::<T>().as_ptr(),
            len,
            len,
            Prefaulted,
        )
    }
}

fn zeroed_value<T: ZeroIsValid>() -> T {
    // SAFETY: all-zero bytes are a valid `T` (`ZeroIsValid`).
    unsafe { std::mem::zeroed() }
}

/// Has the whole uninitialized spare capacity of `vec` made resident in the background (for
/// buffers that are filled on the hot path, such as the transfer store's open chunk).
pub fn prefault_spare_capacity<T>(vec: &mut Vec<T>) {
    if std::mem::size_of_val(vec.spare_capacity_mut()) < PREFAULT_MIN_BYTES {
        return;
    }
    if let Some((begin, end)) = spare_pages(vec) {
        queue_job(Job::Populate(PopulateJob { begin, end }));
    }
}

/// The whole pages of `vec`'s (owned, uninitialized) spare capacity, asked to be backed by
/// huge pages.
fn spare_pages<T>(vec: &mut Vec<T>) -> Option<(usize, usize)> {
    let spare = vec.spare_capacity_mut();
    huge_page_range(
        spare.as_mut_ptr().cast::<u8>(),
        std::mem::size_of_val(spare),
    )
}

/// An empty `Vec` with room for `capacity` values, allocated and made resident on the prefault
/// thread: what a hot path will need soon, made without its own thread touching a page. Even
/// the allocation itself touches memory (the allocator writes its bookkeeping into a fresh
/// block), and on a VM a fresh huge page costs milliseconds: 6.6 ms of a shard's group commit
/// was one such touch in a profile. `None` when the thread is unavailable or far behind: the
/// caller then makes it itself.
pub fn vec_in_background<T: Send + 'static>(capacity: usize) -> Option<Receiver<Vec<T>>> {
    let (done, made) = sync_channel(1);
    let job = Job::Run(Box::new(move || {
        let mut vec = Vec::with_capacity(capacity);
        if let Some((begin, end)) = spare_pages(&mut vec) {
            populate(PopulateJob { begin, end });
        }
        let _ = done.send(vec);
    }));
    queue_job(job).then_some(made)
}

/// Asks for `[start, start + len)` to be backed by huge pages, then has the prefault thread
/// fault its whole-page interior in. Populating in the background keeps start-up and the
/// shard's allocation itself fast; until the thread gets there, a touch faults as usual.
///
/// # Safety
/// The range must be memory the caller owns.
unsafe fn prefault(start: *mut u8, len: usize) {
    if let Some((begin, end)) = huge_page_range(start, len) {
        queue_job(Job::Populate(PopulateJob { begin, end }));
    }
}

/// The whole pages of `[start, start + len)`, asked to be backed by huge pages (`None`: not
/// one whole page). The range must be memory the caller owns.
fn huge_page_range(start: *mut u8, len: usize) -> Option<(usize, usize)> {
    let begin = (start as usize).next_multiple_of(PAGE_BYTES);
    let end = (start as usize + len) / PAGE_BYTES * PAGE_BYTES;
    if end <= begin {
        return None;
    }
    // SAFETY: [begin, end) lies inside memory the caller owns; MADV_HUGEPAGE only changes how
    // the kernel backs the range. Refused on kernels without transparent huge pages: harmless.
    unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE) };
    Some((begin, end))
}

/// Hands `job` to the prefault thread; false if it is unavailable or far behind.
fn queue_job(job: Job) -> bool {
    let Some(jobs) = prefault_thread() else {
        return false;
    };
    JOBS_PENDING.fetch_add(1, Ordering::SeqCst);
    if jobs.try_send(job).is_err() {
        // The thread is far behind: the caller's memory faults lazily instead.
        JOBS_PENDING.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

/// Jobs (populate, or `vec_in_background`) queued or running.
static JOBS_PENDING: AtomicUsize = AtomicUsize::new(0);

/// Waits until every queued range is resident (and every `vec_in_background` made), or
/// `timeout` passes; true if it is all done.
/// A benchmark calls this after its setup so that the measured run starts from steady state
/// (the one-time cost of zeroing the reserved memory is reported as setup).
pub fn wait_until_resident(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while JOBS_PENDING.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Jobs waiting for the prefault thread; beyond this, ranges are left to fault lazily.
const PREFAULT_QUEUE_MAX: usize = 64;

/// A page-aligned address range to fault in.
#[derive(Clone, Copy, Debug)]
struct PopulateJob {
    begin: usize,
    end: usize,
}

/// Work for the prefault thread.
enum Job {
    Populate(PopulateJob),
    /// Make something for a caller that picks it up later (`vec_in_background`).
    Run(Box<dyn FnOnce() + Send>),
}

/// The queue of the one process-wide prefault thread (started on first use; `None` if the
/// thread could not be started, in which case memory simply faults lazily).
fn prefault_thread() -> Option<&'static SyncSender<Job>> {
    static JOBS: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    JOBS.get_or_init(|| {
        let (jobs, queue) = sync_channel::<Job>(PREFAULT_QUEUE_MAX);
        std::thread::Builder::new()
            .name("prefault".into())
            .spawn(move || {
                crate::background::become_background_thread();
                for job in queue {
                    match job {
                        Job::Populate(range) => {
                            populate(range);
                        }
                        Job::Run(make) => {
                            // A job that panics (an allocation too big) must not take the
                            // thread, and every later prefault, with it; its caller sees
                            // nothing arrive and makes the memory itself.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make));
                        }
                    }
                    JOBS_PENDING.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .ok()
            .map(|_| jobs)
    })
    .as_ref()
}

/// Faults `job`'s range in as writable without changing a byte of it
/// (`MADV_POPULATE_WRITE`, Linux 5.14+). That is what makes populating from another thread
/// safe even if the block was freed and reused meanwhile: contents are never touched, and a
/// range that is no longer mapped just makes the call fail. Older kernels refuse the advice
/// and the memory faults lazily, as without this module.
///
/// The range is populated a step at a time: the kernel holds the process's memory-map lock
/// while it populates, and a thread that maps or unmaps memory meanwhile (the allocator, a
/// table being freed) waits for it, and every page fault of every other thread then queues
/// behind that waiter. Populating 256 MiB in one call stalled a shard for 1.1 s that way.
fn populate(job: PopulateJob) -> bool {
    let mut all = true;
    let mut begin = job.begin;
    while begin < job.end {
        let end = (begin + POPULATE_STEP_BYTES).min(job.end);
        // SAFETY: madvise never dereferences the range in user space; POPULATE_WRITE
        // preserves contents and fails (ENOMEM/EFAULT) on unmapped parts.
        let done = unsafe {
            libc::madvise(
                begin as *mut libc::c_void,
                end - begin,
                libc::MADV_POPULATE_WRITE,
            ) == 0
        };
        all &= done;
        begin = end;
    }
    all
}

/// How much the prefault thread populates per call: two huge pages, a few milliseconds of page
/// zeroing at most on a slow VM, so a thread waiting for the memory-map lock waits no longer.
const POPULATE_STEP_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_work_like_hash_maps_at_any_size() {
        let mut small: Table<u64, u64> = table();
        small.insert(1, 2);
        assert_eq!(small.get(&1), Some(&2));
        let mut big: Table<u128, u64> = table_with_capacity(1 << 17);
        assert!(big.allocation_size() >= PREFAULT_MIN_BYTES);
        for i in 0..(1u128 << 17) {
            big.insert(i, i as u64);
        }
        assert!((0..(1u128 << 17)).all(|i| big.get(&i) == Some(&(i as u64))));
    }

    #[test]
    fn populating_keeps_contents() {
        let mut v: Vec<u64> = (0..(1u64 << 20)).collect();
        let begin = (v.as_mut_ptr() as usize).next_multiple_of(PAGE_BYTES);
        let end = (v.as_mut_ptr() as usize + v.len() * 8) / PAGE_BYTES * PAGE_BYTES;
        let supported = populate(PopulateJob { begin, end });
        eprintln!("MADV_POPULATE_WRITE supported: {supported}");
        assert!(v.iter().enumerate().all(|(i, x)| *x == i as u64));
    }

    #[test]
    fn zeroed_vecs_read_as_zero_at_any_size() {
        for len in [0, 1, 1000, 1 << 18] {
            let v = zeroed_vec::<u64>(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|x| *x == 0));
        }
    }

    #[test]
    fn spare_capacity_is_left_uninitialized_but_usable() {
        let mut v: Vec<u64> = Vec::with_capacity(1 << 18);
        prefault_spare_capacity(&mut v);
        assert!(v.is_empty());
        v.extend(0..(1u64 << 18));
        assert_eq!(v.iter().sum::<u64>(), (1u64 << 18) * ((1u64 << 18) - 1) / 2);
    }

    #[test]
    fn the_prefault_thread_is_a_background_thread() {
        let made = vec_in_background::<u64>(1 << 10).expect("a prefault thread");
        made.recv().expect("the prefault thread makes the vec");
        let field = |status: &str, key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(|value| value.trim().to_string())
        };
        let process = std::fs::read_to_string("/proc/self/status").expect("own status");
        let mut seen = false;
        for task in std::fs::read_dir("/proc/self/task")
            .expect("own tasks")
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != "prefault" {
                continue;
            }
            seen = true;
            let stat = std::fs::read_to_string(task.path().join("stat")).expect("task stat");
            // Field 41 is the scheduling policy; the fields after the command name start at 3.
            let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
            let policy: i32 = after_name
                .split(' ')
                .nth(41 - 3)
                .expect("policy")
                .parse()
                .expect("number");
            assert_eq!(
                policy,
                libc::SCHED_IDLE,
                "the prefault thread runs only when a CPU idles"
            );
            let status = std::fs::read_to_string(task.path().join("status")).expect("status");
            assert_eq!(
                field(&status, "Cpus_allowed_list:"),
                field(&process, "Cpus_allowed_list:"),
                "the prefault thread may run on every CPU of the process"
            );
        }
        assert!(seen, "no thread named prefault");
    }
}
