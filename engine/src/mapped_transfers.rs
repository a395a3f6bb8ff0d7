//! Transfers an offline replay applied, kept where they already are: in the mapped log.
//!
//! A live partition copies each applied transfer (80 bytes) into its `TransferStore`. A replay
//! of millions of transfers (`wallet audit replay`) would then build a second copy of the
//! log's transfers in fresh memory, which on a VM costs more than the replay's own work (the
//! kernel zeroing and the host providing ~1 GiB of pages). Instead the replay keeps every
//! segment mapped and remembers which items of which entries were applied: about one bit per
//! item. A transfer is read back (zero-copy) only when an id is looked up or the digest walks
//! the transfers.
//!
//! The bookkeeping is per *run*: consecutive transfers whose items lie in one segment at
//! offsets `origin + k * size_of(item)`, `k` increasing, applied at `base + k` (item `i` of an
//! entry applies at the entry's time + `i`, so the items of one entry always form one run).
//! A run keeps its segment, origin and time base once, and one bit per `k`: set when that
//! item was filed (an item the state machine rejected leaves its bit clear). The transfer at
//! a position is the run's n-th set bit; its run is found by binary search (a replay of 12M
//! transfers in batches of 8,190 has about 1,500 runs).
//!
//! A transfer that was not read from the current entry's body (a TC/C confirmation files the
//! transfer its record held) is kept by value in `spilled`, in a run of its own kind, so the
//! store never depends on where a caller's bytes came from.

use crate::command::ArchivedNewTransfer;
use crate::model::Transfer;
use memmap2::Mmap;
use std::sync::Arc;

/// Bytes of one archived item: the items of an entry are this far apart.
const ITEM_BYTES: usize = std::mem::size_of::<ArchivedNewTransfer>();

/// `Run::segment` of transfers kept by value in `spilled`.
const SPILLED: u32 = u32::MAX;

/// Most items one run spans, so that finding a run's n-th transfer scans at most
/// `RUN_ITEMS_MAX / 64` words (a batch is at most 8,190 items: one run per entry fits).
const RUN_ITEMS_MAX: u64 = 1 << 14;

/// Consecutive transfers filed from one segment with one time base (see the module doc).
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Position of the run's first transfer.
    first: usize,
    /// Index into `segments`, or `SPILLED`.
    segment: u32,
    /// Byte offset of item `k = 0` in the segment (for `SPILLED`: the index in `spilled` of
    /// the run's first transfer).
    origin: u32,
    /// Item `k` was applied at `base + k`.
    base: u64,
    /// Index in `filed` of the run's first word: bit `k % 64` of word `k / 64` is set when
    /// item `k` was filed (no words for `SPILLED`).
    words: usize,
}

#[derive(Clone, Default)]
pub struct MappedTransfers {
    /// Every segment mapped so far; the last one is the one being applied.
    segments: Vec<Arc<Mmap>>,
    /// In position order, the first one starting at position 0.
    runs: Vec<Run>,
    /// The runs' bits, run after run.
    filed: Vec<u64>,
    /// The open run's last `k` (its transfers are filed in increasing `k`).
    last_k: u64,
    spilled: Vec<Transfer>,
    len: usize,
}

impl MappedTransfers {
    pub fn new() -> MappedTransfers {
        MappedTransfers::default()
    }

    /// The segment whose records are applied next.
    pub fn add_segment(&mut self, map: Arc<Mmap>) {
        assert!(self.segments.len() < SPILLED as usize);
        self.segments.push(map);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Files `transfer`, which was applied from `item`: by place when `item` lies in the
    /// current segment (the replay's case), by value otherwise.
    pub fn push(&mut self, transfer: Transfer, item: Option<&ArchivedNewTransfer>) {
        let position = self.len;
        match item.and_then(|item| self.offset_in_last_segment(item)) {
            Some(offset) => self.file_in_place(transfer.timestamp, offset),
            None => {
                if self.runs.last().is_none_or(|run| run.segment != SPILLED) {
                    self.runs.push(Run {
                        first: position,
                        segment: SPILLED,
                        origin: u32::try_from(self.spilled.len()).expect("spilled fit u32"),
                        base: 0,
                        words: self.filed.len(),
                    });
                }
                self.spilled.push(transfer);
            }
        }
        self.len += 1;
        debug_assert!(self.get(position) == transfer);
    }

    /// Files the item at `offset` of the last segment, applied at `timestamp`: in the open
    /// run when it continues it, else in a new run.
    fn file_in_place(&mut self, timestamp: u64, offset: u32) {
        let segment = (self.segments.len() - 1) as u32;
        let continues = self.runs.last().and_then(|run| {
            let from_origin = offset.checked_sub(run.origin)? as usize;
            let k = (from_origin / ITEM_BYTES) as u64;
            let fits = run.segment == segment
                && from_origin.is_multiple_of(ITEM_BYTES)
                && k > self.last_k
                && k < RUN_ITEMS_MAX
                && run.base.wrapping_add(k) == timestamp;
            fits.then_some((run.words, k))
        });
        let (words, k) = continues.unwrap_or_else(|| {
            self.runs.push(Run {
                first: self.len,
                segment,
                origin: offset,
                base: timestamp,
                words: self.filed.len(),
            });
            (self.filed.len(), 0)
        });
        let word = words + (k / 64) as usize;
        if word >= self.filed.len() {
            self.filed.resize(word + 1, 0);
        }
        self.filed[word] |= 1 << (k % 64);
        self.last_k = k;
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
        assert!(position < self.len);
        let at = self.runs.partition_point(|run| run.first <= position) - 1;
        let run = self.runs[at];
        let nth = position - run.first;
        if run.segment == SPILLED {
            return self.spilled[run.origin as usize + nth];
        }
        self.read(run, self.nth_filed(at, nth))
    }

    /// The `k` of run `at`'s `nth` filed item.
    fn nth_filed(&self, at: usize, mut nth: usize) -> u64 {
        for (i, &word) in self.filed[self.run_words(at)].iter().enumerate() {
            let ones = word.count_ones() as usize;
            if nth < ones {
                let mut rest = word;
                for _ in 0..nth {
                    rest &= rest - 1;
                }
                return i as u64 * 64 + u64::from(rest.trailing_zeros());
            }
            nth -= ones;
        }
        unreachable!("a run has a bit for each of its transfers")
    }

    /// The range of `filed` that run `at` owns.
    fn run_words(&self, at: usize) -> std::ops::Range<usize> {
        let end = self
            .runs
            .get(at + 1)
            .map_or(self.filed.len(), |next| next.words);
        self.runs[at].words..end
    }

    /// Every transfer in the order filed, walking the runs' bits.
    pub fn iter(&self) -> impl Iterator<Item = Transfer> + '_ {
        self.runs.iter().enumerate().flat_map(move |(at, &run)| {
            let spilled_end = self.runs.get(at + 1).map_or(self.len, |next| next.first);
            let spilled = (run.segment == SPILLED).then(|| {
                let from = run.origin as usize;
                self.spilled[from..from + spilled_end - run.first]
                    .iter()
                    .copied()
            });
            let in_place = self.filed[self.run_words(at)]
                .iter()
                .enumerate()
                .flat_map(|(i, &word)| BitsSet(word).map(move |bit| i as u64 * 64 + bit))
                .map(move |k| self.read(run, k));
            spilled.into_iter().flatten().chain(in_place)
        })
    }

    /// Item `k` of `run`, read in place.
    fn read(&self, run: Run, k: u64) -> Transfer {
        let offset = run.origin as usize + k as usize * ITEM_BYTES;
        let bytes = &self.segments[run.segment as usize][offset..offset + ITEM_BYTES];
        // SAFETY: `bytes` is exactly one `ArchivedNewTransfer` long (the slice is bounds
        // checked), at the address `push` was given a reference to, so it is aligned for one
        // (rkyv checked the whole vector of items when the entry applied). Every field is a
        // plain integer, so any bytes are a valid value: even a file changed under the map
        // could not make this read unsound, only wrong (and the digest would show it).
        let item = unsafe { rkyv::access_unchecked::<ArchivedNewTransfer>(bytes) };
        item.applied_at(run.base.wrapping_add(k))
    }

    /// The id of the transfer at `position` (what an index probe compares).
    pub fn id_at(&self, position: usize) -> u128 {
        self.get(position).id
    }
}

/// The set bits of a word, lowest first.
struct BitsSet(u64);

impl Iterator for BitsSet {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.0 == 0 {
            return None;
        }
        let bit = u64::from(self.0.trailing_zeros());
        self.0 &= self.0 - 1;
        Some(bit)
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

    /// Transfers filed by place across entries and segments, with skipped (rejected) items
    /// (gaps inside a run) and spilled ones in between (which end a run): every position
    /// reads back as filed, by lookup and by walk, in few runs.
    #[test]
    fn reads_back_every_transfer_as_filed() {
        let seed: u64 = std::env::var("MAPPED_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("seed {seed} (rerun with MAPPED_SEED={seed})");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut store = MappedTransfers::new();
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
                // Sometimes the next entry's time continues the last one's.
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
        // About a bit per item: a run's words cover its items (filed and rejected, about 8/7
        // of those filed), plus at most one part-used word per run.
        assert!(
            store.filed.len() * 64 <= 2 * filed.len() + 64 * store.runs.len(),
            "{} words for {} transfers in {} runs",
            store.filed.len(),
            filed.len(),
            store.runs.len()
        );
    }

    /// Items filed against their order (never the state machine's way, but nothing here may
    /// depend on it) start new runs instead of landing on a bit before the open run's last.
    #[test]
    fn items_filed_out_of_order_read_back_in_the_order_filed() {
        let entry: Vec<NewTransfer> = (1..=100).map(new_transfer).collect();
        let (map, ranges) = segment(&[entry]);
        let mut store = MappedTransfers::new();
        store.add_segment(map.clone());
        let items = items(&map, ranges[0].clone());
        let order: Vec<usize> = (0..100).rev().chain([7, 3, 50]).collect();
        let mut filed = Vec::new();
        for &i in &order {
            let transfer = items[i].applied_at(1_000 + i as u64);
            store.push(transfer, Some(&items[i]));
            filed.push(transfer);
        }
        for (position, transfer) in filed.iter().enumerate() {
            assert_eq!(store.get(position), *transfer, "position {position}");
        }
        assert!(store.iter().eq(filed.iter().copied()));
    }

    /// An item from memory that is not the current segment is kept by value.
    #[test]
    fn an_item_outside_the_current_segment_is_kept_by_value() {
        let (first, ranges) = segment(&[vec![new_transfer(1), new_transfer(2)]]);
        let (second, _) = segment(&[vec![new_transfer(9)]]);
        let mut store = MappedTransfers::new();
        store.add_segment(first.clone());
        store.add_segment(second);
        let item = &items(&first, ranges[0].clone())[1];
        let transfer = item.applied_at(42);
        store.push(transfer, Some(item));
        assert_eq!(store.runs[0].segment, SPILLED);
        assert_eq!(store.get(0), transfer);
    }
}
