//! The primitives of the node link's hand encoding (no serde, RAFT_PLAN §1): little-endian
//! integers, and openraft's `Vote` and `LogId` as fixed-size records.
//!
//! Decoding reads bytes from another process, so `WireReader` never indexes past the end:
//! every read is a checked `take`, every count is checked against the bytes left before
//! anything is allocated, and every problem is a `DecodeError` (never a panic).
//!
//! ```text
//! Vote  (17 bytes): u64 term, u64 voted_for (0 when none), u8 flags
//!                   (bit 0: voted_for present, bit 1: committed; other bits must be 0)
//! LogId (17 bytes): u8 present (0 or 1), u64 term, u64 index (both 0 when absent)
//! ```
//!
//! `voted_for` has its own flag because openraft reserves no node id: 0 is a valid node.
//! A log id's leader is its term alone (feature `single-term-leader`).

use engine::raft::entry_record::log_id;
use engine::raft::types::LogId;
use openraft::{LeaderId, Vote};

pub const VOTE_BYTES: usize = 17;
pub const LOG_ID_BYTES: usize = 17;

const VOTED_FOR: u8 = 1;
const COMMITTED: u8 = 2;

/// Why bytes from a peer are not a valid message. The connection that carried them is
/// closed: after one bad message the stream cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("cut short: {wanted} bytes wanted, {left} left")]
    Truncated { wanted: usize, left: usize },
    #[error("{0} bytes left over after the message")]
    TrailingBytes(usize),
    #[error("{what}: {count} is more than the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u64 },
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Appends little-endian fields to a message.
pub fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// A length that the encoder's own limits keep below `u32::MAX` (asserted: a longer one is a
/// bug of the caller, not input).
pub fn put_len32(out: &mut Vec<u8>, len: usize) {
    put_u32(
        out,
        u32::try_from(len).expect("lengths on the link fit in u32"),
    );
}
/// A string of at most `max` bytes (asserted), with a u16 length.
pub fn put_str16(out: &mut Vec<u8>, s: &str, max: usize) {
    assert!(
        s.len() <= max && s.len() <= u16::MAX as usize,
        "string of {} bytes",
        s.len()
    );
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn put_vote(out: &mut Vec<u8>, vote: &Vote<u64>) {
    put_u64(out, vote.leader_id.term);
    put_u64(out, vote.leader_id.voted_for.unwrap_or(0));
    let flags =
        (vote.leader_id.voted_for.is_some() as u8 * VOTED_FOR) | (vote.committed as u8 * COMMITTED);
    put_u8(out, flags);
}

pub fn put_log_id(out: &mut Vec<u8>, id: Option<&LogId>) {
    put_u8(out, id.is_some() as u8);
    let (term, index) = id.map_or((0, 0), |id| (id.leader_id.term, id.index));
    put_u64(out, term);
    put_u64(out, index);
}

/// A cursor over a message that fails instead of reading past its end.
pub struct WireReader<'a> {
    bytes: &'a [u8],
    /// Bytes consumed so far (for alignment relative to the message start).
    consumed: usize,
}

impl<'a> WireReader<'a> {
    pub fn new(bytes: &'a [u8]) -> WireReader<'a> {
        WireReader { bytes, consumed: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// The bytes not read yet (without consuming them).
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated {
                wanted: n,
                left: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        self.consumed += n;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A 0/1 byte.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::Unknown {
                what,
                value: v.into(),
            }),
        }
    }

    /// Bytes that must all be zero (reserved fields, padding).
    pub fn zeros(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.take(n)?.iter().any(|b| *b != 0) {
            return Err(DecodeError::Invalid("a reserved byte is not zero".into()));
        }
        Ok(())
    }

    /// A u32 length of at most `max`, not more than the bytes left; then those bytes.
    pub fn bytes32(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooMany {
                what,
                count: len,
                max,
            });
        }
        self.take(len)
    }

    /// A u16-length UTF-8 string of at most `max` bytes.
    pub fn str16(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(DecodeError::TooMany {
                what,
                count: len,
                max,
            });
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| DecodeError::Invalid(format!("{what} is not UTF-8")))
    }

    /// A count of items that take at least `min_item_bytes` each, at most `max`: a count
    /// the bytes left cannot hold is refused before anything is allocated for it.
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_item_bytes: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(DecodeError::TooMany { what, count, max });
        }
        let wanted = count.saturating_mul(min_item_bytes);
        if wanted > self.bytes.len() {
            return Err(DecodeError::Truncated {
                wanted,
                left: self.bytes.len(),
            });
        }
        Ok(count)
    }

    pub fn vote(&mut self) -> Result<Vote<u64>, DecodeError> {
        let term = self.u64()?;
        let voted_for = self.u64()?;
        let flags = self.u8()?;
        if flags & !(VOTED_FOR | COMMITTED) != 0 {
            return Err(DecodeError::Unknown {
                what: "vote flags",
                value: flags.into(),
            });
        }
        if flags & VOTED_FOR == 0 && voted_for != 0 {
            return Err(DecodeError::Invalid(
                "a vote for nobody names a node".into(),
            ));
        }
        Ok(Vote {
            leader_id: LeaderId {
                term,
                voted_for: (flags & VOTED_FOR != 0).then_some(voted_for),
            },
            committed: flags & COMMITTED != 0,
        })
    }

    pub fn log_id(&mut self) -> Result<Option<LogId>, DecodeError> {
        let present = self.bool("log id flag")?;
        let term = self.u64()?;
        let index = self.u64()?;
        match present {
            true => Ok(Some(log_id(term, index))),
            false if term == 0 && index == 0 => Ok(None),
            false => Err(DecodeError::Invalid("an absent log id has fields".into())),
        }
    }

    /// Nothing may follow the message.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
