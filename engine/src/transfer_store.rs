//! Applied transfers in log order, with an index by id for idempotency and lookups.
//!
//! Records live in fixed-size chunks. A full chunk is never written again, so it is shared
//! behind an `Arc`: a snapshot takes the full chunks by reference and copies only the open one,
//! which keeps the shard's pause short however many transfers there are.

use crate::model::{Transfer, TransferId};
use crate::prefault::{self, Table};
use std::sync::Arc;

/// Transfers per chunk (64 Ki records, ~5.5 MiB).
pub const CHUNK_RECORDS: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct TransferStore {
    full: Vec<Arc<Vec<Transfer>>>,
    open: Vec<Transfer>,
    index: Table<TransferId, u64>,
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
            index: prefault::table_with_capacity(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.full.len() * CHUNK_RECORDS + self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: TransferId) -> Option<&Transfer> {
        let position = *self.index.get(&id)? as usize;
        let chunk = position / CHUNK_RECORDS;
        let slot = position % CHUNK_RECORDS;
        if chunk < self.full.len() {
            Some(&self.full[chunk][slot])
        } else {
            Some(&self.open[slot])
        }
    }

    /// Appends a transfer whose id is not in the store yet.
    pub fn push(&mut self, transfer: Transfer) {
        let position = self.len() as u64;
        let previous = self.index.insert(transfer.id, position);
        assert!(previous.is_none(), "transfer ids are unique in the store");
        self.open.push(transfer);
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

/// An empty chunk whose memory is already resident, so filling it does not fault page by page.
fn fresh_chunk() -> Vec<Transfer> {
    let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
    prefault::prefault_spare_capacity(&mut chunk);
    chunk
}
