//! The id of every transfer a run saw acknowledged `ok`, kept for the consistency check.
//!
//! A run at 500,000 transfers/s acknowledges millions of ids. In one growing `Vec`, every
//! doubling copies all ids so far into fresh memory (100 MB at 6 million): a burst of CPU and
//! page faults in the middle of the measured window, on the two cores the server under test
//! shares with the load generator. Fixed chunks never copy: a full chunk is left as it is and
//! the next one is started.

/// Ids per chunk: 16 MiB.
const CHUNK_IDS: usize = 1 << 20;

/// Append-only list of ids in fixed chunks.
#[derive(Default)]
pub struct AckedIds {
    chunks: Vec<Vec<u128>>,
    len: usize,
}

impl AckedIds {
    pub fn push(&mut self, id: u128) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK_IDS => chunk.push(id),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK_IDS);
                chunk.push(id);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Every id, in the order pushed, in slices of at most `max` (lookup batches).
    pub fn slices(&self, max: usize) -> impl Iterator<Item = &[u128]> {
        self.chunks.iter().flat_map(move |chunk| chunk.chunks(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_id_in_order_across_chunks() {
        let mut ids = AckedIds::default();
        let count = 2 * CHUNK_IDS + 5;
        for id in 0..count as u128 {
            ids.push(id);
        }
        assert_eq!(ids.len(), count);
        assert_eq!(ids.chunks.len(), 3);
        assert!(ids.slices(8190).all(|s| !s.is_empty() && s.len() <= 8190));
        let back: Vec<u128> = ids.slices(8190).flatten().copied().collect();
        assert_eq!(back, (0..count as u128).collect::<Vec<_>>());
    }
}
