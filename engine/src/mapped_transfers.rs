//! Transfers an offline replay applied, kept where they already are: in the mapped log.
//!
//! A live partition copies each applied transfer (80 bytes) into its `TransferStore`. A replay
//! of millions of transfers (`wallet audit replay`) would then build a second copy of the
//! log's transfers in fresh memory, which on a VM costs more than the replay's own work (the
//! kernel zeroing and the host providing ~1 GiB of pages). Instead the replay keeps every
//! segment mapped and remembers, per transfer, only the byte offset of its archived
//! `NewTransfer` in its segment: 4 bytes, read back (zero-copy) only when an id is looked up
//! or the digest walks the transfers.
//!
//! What the offset does not say is kept once per *run* of transfers: the segment, and the
//! timestamp. Item `i` of an entry applies at the entry's time + `i`, so within one entry
//! `timestamp - offset / size_of(item)` is the same for every transfer; a run is a stretch of
//! consecutive transfers of one segment for which that holds (one entry, usually), and a
//! transfer that does not fit the open run starts the next. A lookup finds its run by binary
//! search (a replay of 12M transfers has about 1,500 runs).
//!
//! A transfer that was not read from the current entry's body (a TC/C confirmation files the
//! transfer its record held) is kept by value in `spilled`, in a run of its own kind, so the
//! store never depends on where a caller's bytes came from.

use crate::command::ArchivedNewTransfer;
use crate::model::Transfer;
use memmap2::Mmap;
use std::sync::Arc;

/// Bytes of one archived item: offsets of an entry's items are this far apart.
const ITEM_BYTES: usize = std::mem::size_of::<ArchivedNewTransfer>();

/// `Run::segment` of transfers kept by value in `spilled`.
const SPILLED: u32 = u32::MAX;

/// Consecutive transfers that lie in one segment and share one time base.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Position of the run's first transfer.
    first: usize,
    /// Index into `segments`, or `SPILLED` (the run's offsets then index `spilled`).
    segment: u32,
    /// `timestamp - offset / ITEM_BYTES` of every transfer of the run (wrapping; 0 when
    /// spilled, whose transfers carry their own timestamp).
    base: u64,
}

#[derive(Clone, Default)]
pub struct MappedTransfers {
    /// Every segment mapped so far; the last one is the one being applied.
    segments: Vec<Arc<Mmap>>,
    /// Per transfer: the byte offset of its item in its run's segment (or index into
    /// `spilled`).
    offsets: Vec<u32>,
    /// In position order, the first one starting at position 0.
    runs: Vec<Run>,
    spilled: Vec<Transfer>,
}

impl MappedTransfers {
    /// An empty set with room for `capacity` transfers (a replay knows an upper bound from
    /// its log's record headers, so `offsets` never doubles and copies).
    pub fn with_capacity(capacity: usize) -> MappedTransfers {
        MappedTransfers {
            offsets: Vec::with_capacity(capacity),
            ..MappedTransfers::default()
        }
    }

    /// The segment whose records are applied next.
    pub fn add_segment(&mut self, map: Arc<Mmap>) {
        assert!(self.segments.len() < SPILLED as usize);
        self.segments.push(map);
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Files `transfer`, which was applied from `item`: by place when `item` lies in the
    /// current segment (the replay's case), by value otherwise.
    pub fn push(&mut self, transfer: Transfer, item: Option<&ArchivedNewTransfer>) {
        let position = self.offsets.len();
        match item.and_then(|item| self.offset_in_last_segment(item)) {
            Some(offset) => {
                let base = transfer
                    .timestamp
                    .wrapping_sub((offset as usize / ITEM_BYTES) as u64);
                self.offsets.push(offset);
                self.extend_or_start_run(position, (self.segments.len() - 1) as u32, base);
            }
            None => {
                self.spilled.push(transfer);
                let index = u32::try_from(self.spilled.len() - 1).expect("spilled fit u32");
                self.offsets.push(index);
                self.extend_or_start_run(position, SPILLED, 0);
            }
        }
        debug_assert!(self.get(position) == transfer);
    }

    fn extend_or_start_run(&mut self, position: usize, segment: u32, base: u64) {
        let open = self.runs.last();
        if open.is_some_and(|run| run.segment == segment && run.base == base) {
            return;
        }
        self.runs.push(Run {
            first: position,
            segment,
            base,
        });
    }

    fn offset_in_last_segment(&self, item: &ArchivedNewTransfer) -> Option<u32> {
        let map = self.segments.last()?;
        let start = map.as_ptr() as usize;
        let at = item as *const ArchivedNewTransfer as usize;
        if at < start || at + ITEM_BYTES > start + map.len() {
            return None;
        }
        u32::try_from(at - start).ok()
    }

    /// The transfer at `position` (0 = the first one filed here).
    pub fn get(&self, position: usize) -> Transfer {
        assert!(position < self.offsets.len());
        let run = self.runs[self.runs.partition_point(|run| run.first <= position) - 1];
        self.get_in(run, position)
    }

    /// Every transfer in the order filed, walking the runs instead of searching each one.
    pub fn iter(&self) -> impl Iterator<Item = Transfer> + '_ {
        self.runs.iter().enumerate().flat_map(move |(i, &run)| {
            let end = self.runs.get(i + 1).map_or(self.len(), |next| next.first);
            (run.first..end).map(move |position| self.get_in(run, position))
        })
    }

    fn get_in(&self, run: Run, position: usize) -> Transfer {
        let offset = self.offsets[position] as usize;
        if run.segment == SPILLED {
            return self.spilled[offset];
        }
        let bytes = &self.segments[run.segment as usize][offset..offset + ITEM_BYTES];
        // SAFETY: `bytes` is exactly one `ArchivedNewTransfer` long (the slice is bounds
        // checked), at the address `push` was given a reference to, so it is aligned for one
        // (rkyv checked the whole vector of items when the entry applied). Every field is a
        // plain integer, so any bytes are a valid value: even a file changed under the map
        // could not make this read unsound, only wrong (and the digest would show it).
        let item = unsafe { rkyv::access_unchecked::<ArchivedNewTransfer>(bytes) };
        item.applied_at(run.base.wrapping_add((offset / ITEM_BYTES) as u64))
    }

    /// The id of the transfer at `position` (what an index probe compares).
    pub fn id_at(&self, position: usize) -> u128 {
        self.get(position).id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::NewTransfer;
    use crate::model::Currency;
    use rkyv::vec::ArchivedVec;

    /// One mapped segment holding `entries` (each an archived vector of items, 16-aligned)
    /// and the byte range of each entry's archive in it.
    fn segment(entries: &[Vec<NewTransfer>]) -> (Arc<Mmap>, Vec<std::ops::Range<usize>>) {
        let mut bytes: Vec<u8> = Vec::new();
        let mut ranges = Vec::new();
        for items in entries {
            // A varying gap, so entries start at offsets of every remainder modulo the item.
            bytes.resize((bytes.len() + 16 * (ranges.len() % 5)).div_ceil(16) * 16, 0);
            let archive = rkyv::to_bytes::<rkyv::rancor::Error>(items).unwrap();
            ranges.push(bytes.len()..bytes.len() + archive.len());
            bytes.extend_from_slice(&archive);
        }
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).unwrap();
        map[..bytes.len()].copy_from_slice(&bytes);
        (Arc::new(map.make_read_only().unwrap()), ranges)
    }

    fn items(map: &Mmap, range: std::ops::Range<usize>) -> &ArchivedVec<ArchivedNewTransfer> {
        rkyv::access::<ArchivedVec<ArchivedNewTransfer>, rkyv::rancor::Error>(&map[range]).unwrap()
    }

    fn new_transfer(id: u128) -> NewTransfer {
        NewTransfer {
            id,
            from: 3,
            to: 4,
            amount: id as u64 * 7,
            currency: Currency(1),
            user_data: id as u64 ^ 0x55,
        }
    }

    /// Transfers filed by place across entries and segments, with skipped (rejected) items,
    /// spilled ones in between and entries whose time base happens to match the open run:
    /// every position reads back as filed, by lookup and by walk, in few runs.
    #[test]
    fn reads_back_every_transfer_as_filed() {
        let seed = fastrand::u64(..);
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut store = MappedTransfers::with_capacity(0);
        let mut filed: Vec<Transfer> = Vec::new();
        let mut next_id = 1u128;
        let mut timestamp = 1u64;
        for _ in 0..3 {
            let entries: Vec<Vec<NewTransfer>> = (0..6)
                .map(|_| {
                    (0..rng.usize(1..300))
                        .map(|_| {
                            next_id += 1;
                            new_transfer(next_id)
                        })
                        .collect()
                })
                .collect();
            let (map, ranges) = segment(&entries);
            store.add_segment(map.clone());
            for range in ranges {
                // Sometimes the next entry's time continues the last one's exactly.
                if rng.bool() {
                    timestamp += rng.u64(1..1_000_000);
                }
                let entry = items(&map, range);
                for (i, item) in entry.iter().enumerate() {
                    if rng.u32(0..8) == 0 {
                        continue; // rejected: not filed
                    }
                    let transfer = item.applied_at(timestamp + i as u64);
                    store.push(transfer, Some(item));
                    filed.push(transfer);
                    if rng.u32(0..50) == 0 {
                        next_id += 1;
                        let confirmed = Transfer {
                            id: next_id,
                            from: 5,
                            to: 6,
                            amount: 1,
                            currency: Currency(1),
                            user_data: 0,
                            timestamp: timestamp + i as u64,
                        };
                        store.push(confirmed, None);
                        filed.push(confirmed);
                    }
                }
                timestamp += entry.len() as u64;
            }
        }
        assert_eq!(store.len(), filed.len());
        for (position, transfer) in filed.iter().enumerate() {
            assert_eq!(store.get(position), *transfer, "position {position}");
            assert_eq!(store.id_at(position), transfer.id);
        }
        assert!(store.iter().eq(filed.iter().copied()));
        assert!(
            store.runs.len() < filed.len() / 10,
            "{} runs",
            store.runs.len()
        );
    }

    /// An item from memory that is not the current segment is kept by value.
    #[test]
    fn an_item_outside_the_current_segment_is_kept_by_value() {
        let (first, ranges) = segment(&[vec![new_transfer(1), new_transfer(2)]]);
        let (second, _) = segment(&[vec![new_transfer(9)]]);
        let mut store = MappedTransfers::with_capacity(2);
        store.add_segment(first.clone());
        store.add_segment(second);
        let item = &items(&first, ranges[0].clone())[1];
        let transfer = item.applied_at(42);
        store.push(transfer, Some(item));
        assert_eq!(store.runs[0].segment, SPILLED);
        assert_eq!(store.get(0), transfer);
    }
}
