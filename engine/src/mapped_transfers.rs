//! Transfers an offline replay applied, kept where they already are: in the mapped log.
//!
//! A live partition copies each applied transfer (80 bytes) into its `TransferStore`. A replay
//! of millions of transfers (`wallet audit replay`) would then build a second copy of the
//! log's transfers in fresh memory, which on a VM costs more than the replay's own work (the
//! kernel zeroing and the host providing ~1 GiB of pages). Instead the replay keeps every
//! segment mapped and remembers, per transfer, which segment and offset hold its archived
//! `NewTransfer` plus the timestamp it was applied at: 16 bytes, read back (zero-copy, through
//! rkyv's checked access) only when an id is looked up or the digest walks the transfers.
//!
//! A transfer that was not read from the current entry's body (a TC/C confirmation files the
//! transfer its record held) is kept by value in `spilled`, so the store never depends on
//! where a caller's bytes came from.

use crate::command::ArchivedNewTransfer;
use crate::model::Transfer;
use memmap2::Mmap;
use std::sync::Arc;

/// `Place::segment` of a transfer kept by value in `spilled`.
const SPILLED: u32 = u32::MAX;

/// Where one transfer is.
#[derive(Clone, Copy)]
struct Place {
    /// Index into `segments`, or `SPILLED`.
    segment: u32,
    /// Byte offset of the archived `NewTransfer` in its segment (or index into `spilled`).
    offset: u32,
    timestamp: u64,
}

#[derive(Clone, Default)]
pub struct MappedTransfers {
    /// Every segment mapped so far; the last one is the one being applied.
    segments: Vec<Arc<Mmap>>,
    places: Vec<Place>,
    spilled: Vec<Transfer>,
}

impl MappedTransfers {
    /// An empty set with room for `capacity` transfers (a replay knows an upper bound from
    /// its log's record headers, so `places` never doubles and copies).
    pub fn with_capacity(capacity: usize) -> MappedTransfers {
        MappedTransfers {
            segments: Vec::new(),
            places: Vec::with_capacity(capacity),
            spilled: Vec::new(),
        }
    }

    /// The segment whose records are applied next.
    pub fn add_segment(&mut self, map: Arc<Mmap>) {
        assert!(self.segments.len() < SPILLED as usize);
        self.segments.push(map);
    }

    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Files `transfer`, which was applied from `item`: by place when `item` lies in the
    /// current segment (the replay's case), by value otherwise.
    pub fn push(&mut self, transfer: Transfer, item: Option<&ArchivedNewTransfer>) {
        let place = item.and_then(|item| self.place_of(item, transfer.timestamp));
        let place = place.unwrap_or_else(|| {
            self.spilled.push(transfer);
            Place {
                segment: SPILLED,
                offset: u32::try_from(self.spilled.len() - 1).expect("spilled transfers fit u32"),
                timestamp: transfer.timestamp,
            }
        });
        self.places.push(place);
        debug_assert!(self.get(self.places.len() - 1) == transfer);
    }

    fn place_of(&self, item: &ArchivedNewTransfer, timestamp: u64) -> Option<Place> {
        let map = self.segments.last()?;
        let start = map.as_ptr() as usize;
        let at = item as *const ArchivedNewTransfer as usize;
        let size = std::mem::size_of::<ArchivedNewTransfer>();
        if at < start || at + size > start + map.len() {
            return None;
        }
        Some(Place {
            segment: (self.segments.len() - 1) as u32,
            offset: u32::try_from(at - start).ok()?,
            timestamp,
        })
    }

    /// The transfer at `position` (0 = the first one filed here).
    pub fn get(&self, position: usize) -> Transfer {
        let place = self.places[position];
        if place.segment == SPILLED {
            return self.spilled[place.offset as usize];
        }
        let size = std::mem::size_of::<ArchivedNewTransfer>();
        let start = place.offset as usize;
        let bytes = &self.segments[place.segment as usize][start..start + size];
        // SAFETY: `bytes` is exactly one `ArchivedNewTransfer` long (the slice is bounds
        // checked), at the address `push` was given a reference to, so it is aligned for one
        // (rkyv checked the whole vector of items when the entry applied). Every field is a
        // plain integer, so any bytes are a valid value: even a file changed under the map
        // could not make this read unsound, only wrong (and the digest would show it).
        let item = unsafe { rkyv::access_unchecked::<ArchivedNewTransfer>(bytes) };
        item.applied_at(place.timestamp)
    }

    /// The id of the transfer at `position` (what an index probe compares).
    pub fn id_at(&self, position: usize) -> u128 {
        self.get(position).id
    }
}
