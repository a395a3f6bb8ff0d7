//! Applied transfers in log order, with an index by id for idempotency and lookups.
//!
//! Records live in fixed-size chunks. A full chunk is never written again, so it is shared
//! behind an `Arc`: a snapshot takes the full chunks by reference and copies only the open one,
//! which keeps the shard's pause short however many transfers there are.
//!
//! An offline replay files the transfers it applies by their place in the mapped log instead
//! (`keep_in_log`, see `mapped_transfers`): positions past the copied records are there.

use crate::command::ArchivedNewTransfer;
use crate::mapped_transfers::MappedTransfers;
use crate::model::{Transfer, TransferId};
use crate::prefault;
use crate::transfer_index::TransferIndex;
use std::sync::Arc;

/// Transfers per chunk (64 Ki records, ~5.5 MiB).
pub const CHUNK_RECORDS: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct TransferStore {
    full: Vec<Arc<Vec<Transfer>>>,
    open: Vec<Transfer>,
    /// The chunk that follows `open`, asked for when `open` is half full (see `push_applied`).
    spare: SpareChunk,
    index: TransferIndex,
    /// Transfers after the copied ones, read from the mapped log (offline replays only).
    mapped: Option<Box<MappedTransfers>>,
}

/// An immutable view of a store at one moment, cheap to take, safe to send to another thread.
#[derive(Clone)]
pub struct TransferStoreView {
    pub full: Vec<Arc<Vec<Transfer>>>,
    pub open: Vec<Transfer>,
}

impl TransferStoreView {
    pub fn iter(&self) -> impl Iterator<Item = &Transfer> {
        self.full
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.open.iter())
    }

    pub fn len(&self) -> usize {
        self.full.len() * CHUNK_RECORDS + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TransferStore {
    pub fn with_capacity(capacity: usize) -> TransferStore {
        TransferStore {
            full: Vec::new(),
            open: fresh_chunk(),
            spare: SpareChunk::default(),
            index: TransferIndex::with_capacity(capacity),
            mapped: None,
        }
    }

    /// From now on, transfers applied from a log entry are filed by their place in the mapped
    /// log (`add_log_segment` hands over each segment before its records apply) instead of
    /// copied: what an offline replay does, with room for `capacity` of them. The index is
    /// rebuilt once, packed for exactly that many more (`TransferIndex::with_fixed_capacity`).
    pub fn keep_in_log(&mut self, capacity: usize) {
        assert!(self.mapped.is_none(), "keep_in_log is called once");
        let mut index = TransferIndex::with_fixed_capacity(self.len() + capacity);
        let (full, open) = (&self.full, &self.open);
        for position in 0..self.copied_len() as u64 {
            let id = record_at(full, open, position).id;
            index.insert(id, position, |p| record_at(full, open, p).id);
        }
        self.index = index;
        self.mapped = Some(Box::new(MappedTransfers::new()));
    }

    /// The segment whose records apply next (only after `keep_in_log`).
    pub fn add_log_segment(&mut self, map: Arc<memmap2::Mmap>) {
        self.mapped
            .as_mut()
            .expect("add_log_segment follows keep_in_log")
            .add_segment(map);
    }

    /// Records copied into chunks (all of them unless `keep_in_log` was called).
    fn copied_len(&self) -> usize {
        self.full.len() * CHUNK_RECORDS + self.open.len()
    }

    pub fn len(&self) -> usize {
        self.copied_len() + self.mapped.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: TransferId) -> Option<Transfer> {
        let position = self.index.find(id, |p| self.id_at(p))?;
        Some(self.at(position))
    }

    /// Asks the CPU to fetch what `get(id)` and `push` will read, without waiting for it.
    #[inline]
    pub fn prefetch(&self, id: TransferId) {
        self.index.prefetch(id);
    }

    fn at(&self, position: u64) -> Transfer {
        match position.checked_sub(self.copied_len() as u64) {
            Some(mapped) => self.mapped_part().get(mapped as usize),
            None => *record_at(&self.full, &self.open, position),
        }
    }

    fn id_at(&self, position: u64) -> u128 {
        id_at(&self.full, &self.open, self.mapped.as_deref(), position)
    }

    fn mapped_part(&self) -> &MappedTransfers {
        self.mapped
            .as_deref()
            .expect("positions past the copied records are mapped")
    }

    /// Appends a transfer whose id is not in the store yet.
    pub fn push(&mut self, transfer: Transfer) {
        self.push_applied(transfer, None);
    }

    /// Appends a transfer whose id is not in the store yet, applied from `item` of the log
    /// entry being applied (kept in place after `keep_in_log`, copied otherwise).
    pub fn push_applied(&mut self, transfer: Transfer, item: Option<&ArchivedNewTransfer>) {
        let position = self.len() as u64;
        // At most once: the invariant the whole ledger rests on, checked in release builds too
        // (the probe finds the lines `try_transfer`'s lookup just brought into cache).
        assert!(
            self.get(transfer.id).is_none(),
            "transfer ids are unique in the store"
        );
        if let Some(mapped) = self.mapped.as_mut() {
            mapped.push(transfer, item);
        } else {
            self.open.push(transfer);
        }
        let (full, open, mapped) = (&self.full, &self.open, self.mapped.as_deref());
        self.index
            .insert(transfer.id, position, |p| id_at(full, open, mapped, p));
        // The next chunk is asked for halfway through this one, from the prefault thread:
        // fresh memory is the most expensive thing on this path (a VM backs each new page with
        // a host fault: ~9 ms of CPU per chunk on the project's VM). Made here when this one is
        // full, its pages were faulted in by the shard itself, inside a group commit: one in 16
        // took 5-15 ms instead of 1 at 500,000 transfers/s.
        if self.open.len() == CHUNK_RECORDS / 2 && self.mapped.is_none() {
            self.spare.request();
        }
        if self.open.len() == CHUNK_RECORDS {
            let next = self.spare.take().unwrap_or_else(fresh_chunk);
            let sealed = std::mem::replace(&mut self.open, next);
            self.full.push(Arc::new(sealed));
        }
    }

    /// Every transfer in log order.
    pub fn iter(&self) -> impl Iterator<Item = Transfer> + '_ {
        let mapped = self.mapped.as_deref().into_iter();
        self.full
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.open.iter())
            .copied()
            .chain(mapped.flat_map(|m| m.iter()))
    }

    /// A view for a snapshot. Transfers kept in the log are copied into it (a replay that
    /// kept them there is not expected to snapshot, but a snapshot of it is still whole).
    pub fn view(&self) -> TransferStoreView {
        if self.mapped.as_ref().is_some_and(|m| !m.is_empty()) {
            let mut copy = TransferStore::with_capacity(self.len());
            for transfer in self.iter() {
                copy.push(transfer);
            }
            return copy.view();
        }
        TransferStoreView {
            full: self.full.clone(),
            open: self.open.clone(),
        }
    }
}

/// The id at `position` of a store made of copied chunks and an optional mapped part.
#[inline]
fn id_at(
    full: &[Arc<Vec<Transfer>>],
    open: &[Transfer],
    mapped: Option<&MappedTransfers>,
    position: u64,
) -> u128 {
    let copied = (full.len() * CHUNK_RECORDS + open.len()) as u64;
    match (position.checked_sub(copied), mapped) {
        (Some(p), Some(mapped)) => mapped.id_at(p as usize),
        _ => record_at(full, open, position).id,
    }
}

/// The transfer at `position` (in log order) of a store made of `full` chunks and `open`.
fn record_at<'a>(
    full: &'a [Arc<Vec<Transfer>>],
    open: &'a [Transfer],
    position: u64,
) -> &'a Transfer {
    let position = position as usize;
    let (chunk, slot) = (position / CHUNK_RECORDS, position % CHUNK_RECORDS);
    if chunk < full.len() {
        &full[chunk][slot]
    } else {
        &open[slot]
    }
}

/// The next chunk, being made on the prefault thread.
#[derive(Default)]
struct SpareChunk {
    made: Option<std::sync::mpsc::Receiver<Vec<Transfer>>>,
    /// Chunks that came from here (for tests).
    taken: u64,
}

impl SpareChunk {
    fn request(&mut self) {
        if self.made.is_none() {
            self.made = prefault::vec_in_background(CHUNK_RECORDS);
        }
    }

    /// The chunk if it is ready (`None`: never asked for, or not made yet; one not made yet
    /// is kept coming, for the chunk after).
    fn take(&mut self) -> Option<Vec<Transfer>> {
        let made = self.made.as_ref()?.try_recv();
        if !matches!(made, Err(std::sync::mpsc::TryRecvError::Empty)) {
            self.made = None;
        }
        let chunk = made.ok()?;
        assert!(chunk.is_empty() && chunk.capacity() >= CHUNK_RECORDS);
        self.taken += 1;
        Some(chunk)
    }
}

impl Clone for SpareChunk {
    /// A copy of the store makes its own next chunk.
    fn clone(&self) -> SpareChunk {
        SpareChunk::default()
    }
}

/// An empty chunk whose memory is made resident in the background (the fallback when no spare
/// is ready: its first touches may fault on the caller's thread).
fn fresh_chunk() -> Vec<Transfer> {
    let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
    prefault::prefault_spare_capacity(&mut chunk);
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Currency;

    fn transfer(n: u64) -> Transfer {
        Transfer {
            id: u128::from(n) + 1,
            from: 7,
            to: 8,
            amount: n,
            currency: Currency(0),
            user_data: n ^ 0x5a5a,
            timestamp: 1_000 + n,
        }
    }

    /// Across chunk boundaries, whether the next chunk came ready from the prefault thread
    /// (the store waits for it here) or was made on the spot (a copy of the store has no
    /// spare), every transfer is found and the order is the log order.
    #[test]
    fn chunks_made_in_the_background_keep_every_transfer_in_order() {
        let total = 3 * CHUNK_RECORDS as u64 + 5;
        let mut store = TransferStore::with_capacity(total as usize);
        for n in 0..total {
            if n == CHUNK_RECORDS as u64 - 1 || n == 2 * CHUNK_RECORDS as u64 - 1 {
                // The spare was asked for halfway through this chunk: let it arrive.
                assert!(prefault::wait_until_resident(
                    std::time::Duration::from_secs(10)
                ));
                assert!(store.spare.made.is_some(), "the spare is asked for at half");
            }
            if n == 3 * CHUNK_RECORDS as u64 - 1 {
                assert_eq!(store.spare.taken, 2, "both switches took the spare");
                store = store.clone(); // its spare is gone: the next chunk is made on the spot
                assert!(store.spare.made.is_none());
            }
            store.push(transfer(n));
        }
        assert_eq!(
            store.spare.taken, 0,
            "the copy had no spare ready at its switch"
        );
        assert_eq!(store.len() as u64, total);
        assert_eq!(store.full.len(), 3);
        assert!(store.full.iter().all(|chunk| chunk.len() == CHUNK_RECORDS));
        assert!(store.iter().map(|t| t.amount).eq(0..total));
        for n in [
            0,
            1,
            CHUNK_RECORDS as u64 - 1,
            CHUNK_RECORDS as u64,
            total - 1,
        ] {
            assert_eq!(store.get(transfer(n).id), Some(transfer(n)));
        }
        assert_eq!(store.get(u128::from(total) + 1), None);
        assert_eq!(store.view().len() as u64, total);
    }

    #[test]
    fn a_vec_made_in_the_background_is_empty_with_the_asked_capacity() {
        // The other tests of this binary queue prefault jobs on the same thread, which runs at
        // SCHED_IDLE: its queue may be full for a while (then the job is refused, `None`, as
        // documented). Ask again until it takes the job; it must within 10 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let made = loop {
            if let Some(made) = prefault::vec_in_background::<u64>(1 << 20) {
                break made;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the prefault thread refused the job for 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let vec = made
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("made");
        assert!(vec.is_empty());
        assert!(vec.capacity() >= 1 << 20);
    }
}
