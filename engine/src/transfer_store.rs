//! Applied transfers in log order, with an index by id for idempotency and lookups.
//!
//! Records live in fixed-size chunks. A full chunk is never written again, so it is shared
//! behind an `Arc`: a snapshot takes the full chunks by reference and copies only the open one,
//! which keeps the shard's pause short however many transfers there are.

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
    index: TransferIndex,
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
            index: TransferIndex::with_capacity(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.full.len() * CHUNK_RECORDS + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: TransferId) -> Option<&Transfer> {
        let position = self.index.find(id, |p| self.at(p).id)?;
        Some(self.at(position))
    }

    /// Asks the CPU to fetch what `get(id)` and `push` will read, without waiting for it.
    #[inline]
    pub fn prefetch(&self, id: TransferId) {
        self.index.prefetch(id);
    }

    fn at(&self, position: u64) -> &Transfer {
        record_at(&self.full, &self.open, position)
    }

    /// Appends a transfer whose id is not in the store yet.
    pub fn push(&mut self, transfer: Transfer) {
        let position = self.len() as u64;
        // At most once: the invariant the whole ledger rests on, checked in release builds too
        // (the probe finds the lines `try_transfer`'s lookup just brought into cache).
        assert!(
            self.get(transfer.id).is_none(),
            "transfer ids are unique in the store"
        );
        self.open.push(transfer);
        let (full, open) = (&self.full, &self.open);
        self.index
            .insert(transfer.id, position, |p| record_at(full, open, p).id);
        if self.open.len() == CHUNK_RECORDS {
            let sealed = std::mem::replace(&mut self.open, fresh_chunk());
            self.full.push(Arc::new(sealed));
        }
    }

    /// Every transfer in log order.
    pub fn iter(&self) -> impl Iterator<Item = &Transfer> {
        self.full
            .iter()
            .flat_map(|c| c.iter())
            .chain(self.open.iter())
    }

    pub fn view(&self) -> TransferStoreView {
        TransferStoreView {
            full: self.full.clone(),
            open: self.open.clone(),
        }
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

/// An empty chunk whose memory is already resident, so filling it does not fault page by page.
fn fresh_chunk() -> Vec<Transfer> {
    let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
    prefault::prefault_spare_capacity(&mut chunk);
    chunk
}
