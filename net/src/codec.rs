//! Bodies of every operation: fixed-size little-endian records behind an 8-byte count prefix.
//! Decoding borrows the frame's bytes and yields items one by one (no allocation per item).

use crate::operation::ProtocolError;
use bytes::{BufMut, BytesMut};
use engine::model::{Account, Currency, Transfer, TransferLookup};
use engine::{NewAccount, NewTransfer, ResultCode, BATCH_ITEMS_MAX};

pub const NEW_ACCOUNT_BYTES: usize = 48;
pub const NEW_TRANSFER_BYTES: usize = 72;
pub const ID_BYTES: usize = 16;
pub const ACCOUNT_REPLY_BYTES: usize = 72;
pub const TRANSFER_REPLY_BYTES: usize = 80;
pub const TOKEN_BYTES_MAX: usize = 256;

/// Little-endian field readers over a record (bounds are guaranteed by the record size).
struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn u128(&self, at: usize) -> u128 {
        u128::from_le_bytes(self.0[at..at + 16].try_into().expect("16 bytes"))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    fn i64(&self, at: usize) -> i64 {
        self.u64(at) as i64
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.0[at..at + 2].try_into().expect("2 bytes"))
    }
}

/// Splits `count u32 | reserved u32 | count * record_bytes` into records.
pub fn records(
    body: &[u8],
    record_bytes: usize,
) -> Result<std::slice::ChunksExact<'_, u8>, ProtocolError> {
    if body.len() < 8 {
        return Err(ProtocolError::MalformedBody);
    }
    let count = Reader(body).u32(0) as usize;
    if count > BATCH_ITEMS_MAX {
        return Err(ProtocolError::TooManyItems);
    }
    if body.len() != 8 + count * record_bytes || Reader(body).u32(4) != 0 {
        return Err(ProtocolError::MalformedBody);
    }
    Ok(body[8..].chunks_exact(record_bytes))
}

fn put_count(out: &mut BytesMut, count: usize) {
    assert!(count <= BATCH_ITEMS_MAX);
    out.put_u32_le(count as u32);
    out.put_u32_le(0);
}

pub fn encode_new_accounts(out: &mut BytesMut, items: &[NewAccount]) {
    put_count(out, items.len());
    for a in items {
        out.put_u128_le(a.id);
        out.put_u32_le(a.currency.0);
        out.put_u32_le(a.flags);
        out.put_i64_le(a.floor);
        out.put_u64_le(a.user_data);
        out.put_u64_le(0);
    }
}

pub fn decode_new_account(record: &[u8]) -> NewAccount {
    let r = Reader(record);
    NewAccount {
        id: r.u128(0),
        currency: Currency(r.u32(16)),
        flags: r.u32(20),
        floor: r.i64(24),
        user_data: r.u64(32),
    }
}

pub fn encode_new_transfers(out: &mut BytesMut, items: &[NewTransfer]) {
    put_count(out, items.len());
    for t in items {
        out.put_u128_le(t.id);
        out.put_u128_le(t.from);
        out.put_u128_le(t.to);
        out.put_u64_le(t.amount);
        out.put_u64_le(t.user_data);
        out.put_u32_le(t.currency.0);
        out.put_u32_le(0);
    }
}

pub fn decode_new_transfer(record: &[u8]) -> NewTransfer {
    let r = Reader(record);
    NewTransfer {
        id: r.u128(0),
        from: r.u128(16),
        to: r.u128(32),
        amount: r.u64(48),
        user_data: r.u64(56),
        currency: Currency(r.u32(64)),
    }
}

pub fn encode_ids(out: &mut BytesMut, ids: &[u128]) {
    put_count(out, ids.len());
    for id in ids {
        out.put_u128_le(*id);
    }
}

pub fn decode_id(record: &[u8]) -> u128 {
    Reader(record).u128(0)
}

/// Reply to create_*: `count | reserved | count * u8 result code`.
pub fn encode_results(out: &mut BytesMut, results: &[ResultCode]) {
    put_count(out, results.len());
    out.extend(results.iter().map(|c| *c as u8));
}

pub fn decode_results(body: &[u8]) -> Result<Vec<ResultCode>, ProtocolError> {
    records(body, 1)?
        .map(|b| ResultCode::from_u8(b[0]).ok_or(ProtocolError::MalformedBody))
        .collect()
}

pub fn encode_account_replies(out: &mut BytesMut, items: &[Option<Account>]) {
    put_count(out, items.len());
    for item in items {
        let (code, a) = match item {
            Some(a) => (ResultCode::Ok, *a),
            None => (
                ResultCode::NotFound,
                Account {
                    id: 0,
                    currency: Currency(0),
                    flags: 0,
                    balance: 0,
                    held: 0,
                    incoming: 0,
                    floor: 0,
                    user_data: 0,
                    timestamp: 0,
                },
            ),
        };
        out.put_u8(code as u8);
        out.put_bytes(0, 7);
        out.put_u128_le(a.id);
        out.put_u32_le(a.currency.0);
        out.put_u32_le(a.flags);
        out.put_i64_le(a.balance);
        out.put_i64_le(a.held);
        out.put_i64_le(a.floor);
        out.put_u64_le(a.user_data);
        out.put_u64_le(a.timestamp);
    }
}

pub fn decode_account_replies(body: &[u8]) -> Result<Vec<Option<Account>>, ProtocolError> {
    records(body, ACCOUNT_REPLY_BYTES)?
        .map(|rec| {
            let r = Reader(&rec[8..]);
            match ResultCode::from_u8(rec[0]) {
                Some(ResultCode::Ok) => Ok(Some(Account {
                    id: r.u128(0),
                    currency: Currency(r.u32(16)),
                    flags: r.u32(20),
                    balance: r.i64(24),
                    held: r.i64(32),
                    incoming: 0,
                    floor: r.i64(40),
                    user_data: r.u64(48),
                    timestamp: r.u64(56),
                })),
                Some(ResultCode::NotFound) => Ok(None),
                _ => Err(ProtocolError::MalformedBody),
            }
        })
        .collect()
}

/// Reply to lookup_transfers. The status byte is `ok` (applied), `pending` (a cross-partition
/// transfer still running), a cancellation reason, or `not_found`.
pub fn encode_transfer_replies(out: &mut BytesMut, items: &[Option<TransferLookup>]) {
    put_count(out, items.len());
    for item in items {
        let (code, t) = match item {
            Some(found) => (found.status, found.transfer),
            None => (
                ResultCode::NotFound,
                Transfer {
                    id: 0,
                    from: 0,
                    to: 0,
                    amount: 0,
                    currency: Currency(0),
                    user_data: 0,
                    timestamp: 0,
                },
            ),
        };
        out.put_u128_le(t.id);
        out.put_u128_le(t.from);
        out.put_u128_le(t.to);
        out.put_u64_le(t.amount);
        out.put_u64_le(t.user_data);
        out.put_u64_le(t.timestamp);
        out.put_u32_le(t.currency.0);
        out.put_u8(code as u8);
        out.put_bytes(0, 3);
    }
}

pub fn decode_transfer_replies(body: &[u8]) -> Result<Vec<Option<TransferLookup>>, ProtocolError> {
    records(body, TRANSFER_REPLY_BYTES)?
        .map(|rec| {
            let r = Reader(rec);
            match ResultCode::from_u8(rec[76]) {
                Some(ResultCode::NotFound) => Ok(None),
                Some(status) => Ok(Some(TransferLookup {
                    transfer: Transfer {
                        id: r.u128(0),
                        from: r.u128(16),
                        to: r.u128(32),
                        amount: r.u64(48),
                        user_data: r.u64(56),
                        timestamp: r.u64(64),
                        currency: Currency(r.u32(72)),
                    },
                    status,
                })),
                None => Err(ProtocolError::MalformedBody),
            }
        })
        .collect()
}

/// Roles a connection can take at handshake.
pub mod role {
    pub const CLIENT: u8 = 1;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub role: u8,
    pub cluster_id: u64,
    pub token: Vec<u8>,
}

pub fn encode_handshake(out: &mut BytesMut, h: &Handshake) {
    assert!(h.token.len() <= TOKEN_BYTES_MAX);
    out.put_u16_le(crate::frame::PROTOCOL_VERSION as u16);
    out.put_u8(h.role);
    out.put_u8(0);
    out.put_u16_le(h.token.len() as u16);
    out.put_u16_le(0);
    out.put_u64_le(h.cluster_id);
    out.extend_from_slice(&h.token);
}

pub fn decode_handshake(body: &[u8]) -> Result<Handshake, ProtocolError> {
    if body.len() < 16 {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    if r.u16(0) != crate::frame::PROTOCOL_VERSION as u16 {
        return Err(ProtocolError::BadVersion);
    }
    let token_len = r.u16(4) as usize;
    if token_len > TOKEN_BYTES_MAX || body.len() != 16 + token_len {
        return Err(ProtocolError::MalformedBody);
    }
    Ok(Handshake {
        role: body[2],
        cluster_id: r.u64(8),
        token: body[16..].to_vec(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeReply {
    pub partitions: u32,
    pub cluster_id: u64,
    pub node_id: u64,
}

pub fn encode_handshake_reply(out: &mut BytesMut, h: &HandshakeReply) {
    out.put_u16_le(crate::frame::PROTOCOL_VERSION as u16);
    out.put_u16_le(0);
    out.put_u32_le(h.partitions);
    out.put_u64_le(h.cluster_id);
    out.put_u64_le(h.node_id);
}

pub fn decode_handshake_reply(body: &[u8]) -> Result<HandshakeReply, ProtocolError> {
    if body.len() != 24 {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    Ok(HandshakeReply {
        partitions: r.u32(4),
        cluster_id: r.u64(8),
        node_id: r.u64(16),
    })
}

/// One partition's line in a status reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: u32,
    pub last_index: u64,
    pub durable_index: u64,
    pub accounts: u64,
    pub transfers: u64,
    pub fsyncs: u64,
}

pub fn encode_status(out: &mut BytesMut, cores: u32, partitions: &[PartitionStatus]) {
    out.put_u32_le(partitions.len() as u32);
    out.put_u32_le(cores);
    for p in partitions {
        out.put_u32_le(p.partition);
        out.put_u32_le(0);
        out.put_u64_le(p.last_index);
        out.put_u64_le(p.durable_index);
        out.put_u64_le(p.accounts);
        out.put_u64_le(p.transfers);
        out.put_u64_le(p.fsyncs);
    }
}

pub fn decode_status(body: &[u8]) -> Result<(u32, Vec<PartitionStatus>), ProtocolError> {
    if body.len() < 8 {
        return Err(ProtocolError::MalformedBody);
    }
    let count = Reader(body).u32(0) as usize;
    if count > 65_536 || body.len() != 8 + count * 48 {
        return Err(ProtocolError::MalformedBody);
    }
    let cores = Reader(body).u32(4);
    let parts = body[8..]
        .chunks_exact(48)
        .map(|rec| {
            let r = Reader(rec);
            PartitionStatus {
                partition: r.u32(0),
                last_index: r.u64(8),
                durable_index: r.u64(16),
                accounts: r.u64(24),
                transfers: r.u64(32),
                fsyncs: r.u64(40),
            }
        })
        .collect();
    Ok((cores, parts))
}

/// Error frame body: `code u16 | message_len u16 | reserved u32 | message (UTF-8)`.
pub fn encode_error(out: &mut BytesMut, error: ProtocolError, message: &str) {
    let message = &message.as_bytes()[..message.len().min(1024)];
    out.put_u16_le(error as u16);
    out.put_u16_le(message.len() as u16);
    out.put_u32_le(0);
    out.extend_from_slice(message);
}

pub fn decode_error(body: &[u8]) -> (Option<ProtocolError>, String) {
    if body.len() < 8 {
        return (None, String::new());
    }
    let r = Reader(body);
    let len = (r.u16(2) as usize).min(body.len() - 8);
    (
        ProtocolError::from_u16(r.u16(0)),
        String::from_utf8_lossy(&body[8..8 + len]).into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn transfers_round_trip(items in prop::collection::vec((any::<u128>(), any::<u128>(), any::<u128>(), any::<u64>(), any::<u64>(), any::<u32>()), 0..50)) {
            let items: Vec<NewTransfer> = items.into_iter().map(|(id, from, to, amount, user_data, c)| NewTransfer { id, from, to, amount, user_data, currency: Currency(c) }).collect();
            let mut out = BytesMut::new();
            encode_new_transfers(&mut out, &items);
            let back: Vec<NewTransfer> = records(&out, NEW_TRANSFER_BYTES).unwrap().map(decode_new_transfer).collect();
            prop_assert_eq!(back, items);
        }

        #[test]
        fn decoders_never_panic_on_garbage(body in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = records(&body, NEW_TRANSFER_BYTES).map(|r| r.map(decode_new_transfer).count());
            let _ = records(&body, NEW_ACCOUNT_BYTES).map(|r| r.map(decode_new_account).count());
            let _ = decode_results(&body);
            let _ = decode_account_replies(&body);
            let _ = decode_transfer_replies(&body);
            let _ = decode_handshake(&body);
            let _ = decode_handshake_reply(&body);
            let _ = decode_status(&body);
            let _ = decode_error(&body);
        }
    }

    #[test]
    fn a_count_that_lies_is_malformed() {
        let mut out = BytesMut::new();
        encode_ids(&mut out, &[1, 2, 3]);
        out[0] = 4;
        assert_eq!(
            records(&out, ID_BYTES).err(),
            Some(ProtocolError::MalformedBody)
        );
        out[0..4].copy_from_slice(&(BATCH_ITEMS_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            records(&out, ID_BYTES).err(),
            Some(ProtocolError::TooManyItems)
        );
    }
}
