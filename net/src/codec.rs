//! Bodies of every operation: fixed-size little-endian records behind an 8-byte count prefix.
//! Decoding borrows the frame's bytes and yields items one by one (no allocation per item).

use crate::operation::ProtocolError;
use bytes::{BufMut, BytesMut};
use engine::model::{Account, Currency, Transfer, TransferLookup};
use engine::read_model::{
    At, BalanceAsOf, ChangeEvent, HistoryEntry, HistoryKind, HistoryPage, HistoryQuery, QueryError,
    EVENTS_PAGE_MAX, HISTORY_PAGE_MAX,
};
use engine::{NewAccount, NewTransfer, ResultCode, BATCH_ITEMS_MAX};

pub const NEW_ACCOUNT_BYTES: usize = 48;
pub const NEW_TRANSFER_BYTES: usize = 72;
pub const ID_BYTES: usize = 16;
pub const ACCOUNT_REPLY_BYTES: usize = 72;
pub const TRANSFER_REPLY_BYTES: usize = 80;
pub const TOKEN_BYTES_MAX: usize = 256;
/// The largest handshake body (16 fixed bytes and the token): all an unauthenticated
/// connection may send, on the client port and on the node link.
pub const HANDSHAKE_BODY_BYTES_MAX: usize = 16 + TOKEN_BYTES_MAX;

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
            None => (ResultCode::NotFound, Account::ZERO),
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
    /// Another node, on the node link's listener (`raft_link`); the client port refuses it.
    pub const PEER: u8 = 2;
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

// ---- Read model (operations 20-22) ----

pub const HISTORY_QUERY_BYTES: usize = 48;
pub const HISTORY_HEADER_BYTES: usize = 40;
pub const HISTORY_ENTRY_BYTES: usize = 80;
pub const BALANCE_AT_QUERY_BYTES: usize = 32;
pub const BALANCE_AT_REPLY_BYTES: usize = 64;
pub const READ_MODEL_STATUS_BYTES: usize = 32;

/// `At` on the wire: 1 = timestamp, 2 = position.
pub mod at_kind {
    pub const TIMESTAMP: u8 = 1;
    pub const POSITION: u8 = 2;
}

/// GetAccountHistory request: `account u128 | before_position u64 | from_timestamp u64 |
/// to_timestamp u64 | limit u32 | reserved u32`; 0 in a bound means "none".
pub fn encode_history_query(out: &mut BytesMut, q: &HistoryQuery) {
    out.put_u128_le(q.account);
    out.put_u64_le(q.before_position.unwrap_or(0));
    out.put_u64_le(q.from_timestamp.unwrap_or(0));
    out.put_u64_le(q.to_timestamp.unwrap_or(0));
    out.put_u32_le(q.limit.min(u32::MAX as usize) as u32);
    out.put_u32_le(0);
}

pub fn decode_history_query(body: &[u8]) -> Result<HistoryQuery, ProtocolError> {
    if body.len() != HISTORY_QUERY_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    let some = |v: u64| (v != 0).then_some(v);
    Ok(HistoryQuery {
        account: r.u128(0),
        before_position: some(r.u64(16)),
        from_timestamp: some(r.u64(24)),
        to_timestamp: some(r.u64(32)),
        limit: r.u32(40) as usize,
    })
}

/// A query error as `(status, position, timestamp)`; 0 is "ok".
fn query_error_fields(e: &QueryError) -> (u8, u64, u64) {
    match *e {
        QueryError::Disabled | QueryError::AccountNotFound(_) => (e.code(), 0, 0),
        QueryError::NotCreatedYet {
            created_position,
            created_timestamp,
            ..
        } => (e.code(), created_position, created_timestamp),
        QueryError::BeforeRetained {
            oldest_position,
            oldest_timestamp,
            ..
        } => (e.code(), oldest_position, oldest_timestamp),
        QueryError::Ahead { position, .. } => (e.code(), position, 0),
    }
}

fn query_error_from(
    status: u8,
    account: u128,
    position: u64,
    timestamp: u64,
    read_position: u64,
) -> Result<QueryError, ProtocolError> {
    Ok(match status {
        1 => QueryError::Disabled,
        2 => QueryError::AccountNotFound(account),
        3 => QueryError::NotCreatedYet {
            account,
            created_timestamp: timestamp,
            created_position: position,
        },
        4 => QueryError::BeforeRetained {
            account,
            oldest_timestamp: timestamp,
            oldest_position: position,
        },
        5 => QueryError::Ahead {
            position,
            read_position,
        },
        _ => return Err(ProtocolError::MalformedBody),
    })
}

/// GetAccountHistory reply: a 40-byte header (`status u8 | flags u8 | reserved u16 | count u32 |
/// read_position u64 | next_before u64 | point_position u64 | point_timestamp u64`), then
/// `count` 80-byte entries, newest first.
pub fn encode_history_reply(out: &mut BytesMut, answer: &Result<HistoryPage, QueryError>) {
    match answer {
        Ok(page) => {
            let (flags, (position, timestamp)) = match page.truncated_at {
                Some(point) => (1u8, point),
                None => (0u8, (0, 0)),
            };
            out.put_u8(0);
            out.put_u8(flags);
            out.put_u16_le(0);
            out.put_u32_le(page.entries.len() as u32);
            out.put_u64_le(page.read_position);
            out.put_u64_le(page.next_before.unwrap_or(0));
            out.put_u64_le(position);
            out.put_u64_le(timestamp);
            for e in &page.entries {
                out.put_u64_le(e.position);
                out.put_u64_le(e.timestamp);
                out.put_u128_le(e.transfer_id);
                out.put_u128_le(e.counterparty);
                out.put_i64_le(e.amount);
                out.put_i64_le(e.balance_after);
                out.put_i64_le(e.held_after);
                out.put_u8(e.kind as u8);
                out.put_bytes(0, 7);
            }
        }
        Err(e) => {
            let (status, position, timestamp) = query_error_fields(e);
            out.put_u8(status);
            out.put_bytes(0, 7);
            out.put_u64_le(0);
            out.put_u64_le(0);
            out.put_u64_le(position);
            out.put_u64_le(timestamp);
        }
    }
}

pub fn decode_history_reply(
    body: &[u8],
    account: u128,
) -> Result<Result<HistoryPage, QueryError>, ProtocolError> {
    if body.len() < HISTORY_HEADER_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    let (status, flags, count) = (body[0], body[1], r.u32(4) as usize);
    let read_position = r.u64(8);
    let (position, timestamp) = (r.u64(24), r.u64(32));
    if status != 0 {
        return Ok(Err(query_error_from(
            status,
            account,
            position,
            timestamp,
            read_position,
        )?));
    }
    if count > HISTORY_PAGE_MAX || body.len() != HISTORY_HEADER_BYTES + count * HISTORY_ENTRY_BYTES
    {
        return Err(ProtocolError::MalformedBody);
    }
    let entries = body[HISTORY_HEADER_BYTES..]
        .chunks_exact(HISTORY_ENTRY_BYTES)
        .map(|rec| {
            let r = Reader(rec);
            Ok(HistoryEntry {
                position: r.u64(0),
                timestamp: r.u64(8),
                transfer_id: r.u128(16),
                counterparty: r.u128(32),
                amount: r.i64(48),
                balance_after: r.i64(56),
                held_after: r.i64(64),
                kind: HistoryKind::from_u8(rec[72]).ok_or(ProtocolError::MalformedBody)?,
            })
        })
        .collect::<Result<Vec<_>, ProtocolError>>()?;
    let next_before = r.u64(16);
    Ok(Ok(HistoryPage {
        entries,
        next_before: (next_before != 0).then_some(next_before),
        truncated_at: (flags & 1 != 0).then_some((position, timestamp)),
        read_position,
    }))
}

/// GetBalanceAt request: `account u128 | kind u8 (1 timestamp, 2 position) | reserved 7 |
/// value u64`.
pub fn encode_balance_at_query(out: &mut BytesMut, account: u128, at: At) {
    let (kind, value) = match at {
        At::Timestamp(t) => (at_kind::TIMESTAMP, t),
        At::Position(p) => (at_kind::POSITION, p),
    };
    out.put_u128_le(account);
    out.put_u8(kind);
    out.put_bytes(0, 7);
    out.put_u64_le(value);
}

pub fn decode_balance_at_query(body: &[u8]) -> Result<(u128, At), ProtocolError> {
    if body.len() != BALANCE_AT_QUERY_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    let at = match body[16] {
        at_kind::TIMESTAMP => At::Timestamp(r.u64(24)),
        at_kind::POSITION => At::Position(r.u64(24)),
        _ => return Err(ProtocolError::MalformedBody),
    };
    Ok((r.u128(0), at))
}

/// GetBalanceAt reply (64 bytes): `status u8 | reserved 3 | currency u32 | balance i64 |
/// held i64 | position u64 | timestamp u64 | read_position u64 | account u128`.
pub fn encode_balance_at_reply(
    out: &mut BytesMut,
    account: u128,
    answer: &Result<BalanceAsOf, QueryError>,
) {
    match answer {
        Ok(b) => {
            out.put_u8(0);
            out.put_bytes(0, 3);
            out.put_u32_le(b.currency.0);
            out.put_i64_le(b.balance);
            out.put_i64_le(b.held);
            out.put_u64_le(b.position);
            out.put_u64_le(b.timestamp);
            out.put_u64_le(b.read_position);
        }
        Err(e) => {
            let (status, position, timestamp) = query_error_fields(e);
            let read_position = match e {
                QueryError::Ahead { read_position, .. } => *read_position,
                _ => 0,
            };
            out.put_u8(status);
            out.put_bytes(0, 23);
            out.put_u64_le(position);
            out.put_u64_le(timestamp);
            out.put_u64_le(read_position);
        }
    }
    out.put_u128_le(account);
}

pub fn decode_balance_at_reply(
    body: &[u8],
) -> Result<Result<BalanceAsOf, QueryError>, ProtocolError> {
    if body.len() != BALANCE_AT_REPLY_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    let account = r.u128(48);
    let (position, timestamp, read_position) = (r.u64(24), r.u64(32), r.u64(40));
    if body[0] != 0 {
        return Ok(Err(query_error_from(
            body[0],
            account,
            position,
            timestamp,
            read_position,
        )?));
    }
    Ok(Ok(BalanceAsOf {
        account,
        currency: Currency(r.u32(4)),
        balance: r.i64(8),
        held: r.i64(16),
        position,
        timestamp,
        read_position,
    }))
}

/// One partition's line in a StateDigest reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionDigest {
    pub partition: u32,
    /// The last applied log entry the digest covers.
    pub last_index: u64,
    pub digest: u128,
}

/// Bytes per partition in a StateDigest reply.
pub const PARTITION_DIGEST_BYTES: usize = 32;

/// StateDigest reply: `count u32 | reserved u32 | count * (partition u32 | reserved u32 |
/// last_index u64 | digest u128)`, little-endian.
pub fn encode_state_digests(out: &mut BytesMut, parts: &[PartitionDigest]) {
    put_count(out, parts.len());
    for p in parts {
        out.put_u32_le(p.partition);
        out.put_u32_le(0);
        out.put_u64_le(p.last_index);
        out.put_u128_le(p.digest);
    }
}

pub fn decode_state_digests(body: &[u8]) -> Result<Vec<PartitionDigest>, ProtocolError> {
    Ok(records(body, PARTITION_DIGEST_BYTES)?
        .map(|l| {
            let r = Reader(l);
            PartitionDigest {
                partition: r.u32(0),
                last_index: r.u64(8),
                digest: r.u128(16),
            }
        })
        .collect())
}

/// One partition's read model in a ReadModelStatus reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadModelStatus {
    pub partition: u32,
    pub enabled: bool,
    pub position: u64,
    pub lag_entries: u64,
    pub lag_ms: u64,
}

/// ReadModelStatus reply: `count u32 | reserved u32 | count * (partition u32 | enabled u8 |
/// reserved 3 | position u64 | lag_entries u64 | lag_ms u64)`.
pub fn encode_read_model_status(out: &mut BytesMut, parts: &[ReadModelStatus]) {
    out.put_u32_le(parts.len() as u32);
    out.put_u32_le(0);
    for p in parts {
        out.put_u32_le(p.partition);
        out.put_u8(p.enabled as u8);
        out.put_bytes(0, 3);
        out.put_u64_le(p.position);
        out.put_u64_le(p.lag_entries);
        out.put_u64_le(p.lag_ms);
    }
}

pub fn decode_read_model_status(body: &[u8]) -> Result<Vec<ReadModelStatus>, ProtocolError> {
    if body.len() < 8 {
        return Err(ProtocolError::MalformedBody);
    }
    let count = Reader(body).u32(0) as usize;
    if count > 65_536 || body.len() != 8 + count * READ_MODEL_STATUS_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    Ok(body[8..]
        .chunks_exact(READ_MODEL_STATUS_BYTES)
        .map(|rec| {
            let r = Reader(rec);
            ReadModelStatus {
                partition: r.u32(0),
                enabled: rec[4] != 0,
                position: r.u64(8),
                lag_entries: r.u64(16),
                lag_ms: r.u64(24),
            }
        })
        .collect())
}

// ---- Subscriptions (operation 23) ----

pub const SUBSCRIBE_HEADER_BYTES: usize = 24;
pub const SUBSCRIBE_REPLY_HEADER_BYTES: usize = 24;
pub const PUSH_HEADER_BYTES: usize = 24;
pub const CHANGE_BYTES: usize = 88;
/// Most start positions a Subscribe request may carry (one per partition).
pub const SUBSCRIBE_STARTS_MAX: usize = 4096;

/// What a client subscribes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// One account's changes (`None`: every change of every partition).
    pub account: Option<u128>,
    /// Positions to start from (inclusive; `FROM_NOW` = the next change): one for an account;
    /// for all changes either one per partition (in partition order) or one for every
    /// partition.
    pub from: Vec<u64>,
}

/// Subscribe request: `account u128 (0 = all) | count u32 | reserved u32 | count * from u64`.
pub fn encode_subscribe(out: &mut BytesMut, s: &Subscribe) {
    out.put_u128_le(s.account.unwrap_or(0));
    out.put_u32_le(s.from.len() as u32);
    out.put_u32_le(0);
    for f in &s.from {
        out.put_u64_le(*f);
    }
}

pub fn decode_subscribe(body: &[u8]) -> Result<Subscribe, ProtocolError> {
    if body.len() < SUBSCRIBE_HEADER_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    let count = r.u32(16) as usize;
    if count == 0
        || count > SUBSCRIBE_STARTS_MAX
        || body.len() != SUBSCRIBE_HEADER_BYTES + count * 8
    {
        return Err(ProtocolError::MalformedBody);
    }
    let account = r.u128(0);
    Ok(Subscribe {
        account: (account != 0).then_some(account),
        from: body[SUBSCRIBE_HEADER_BYTES..]
            .chunks_exact(8)
            .map(|c| Reader(c).u64(0))
            .collect(),
    })
}

/// Subscribe reply: `status u8 | reserved 3 | count u32 | point_position u64 |
/// point_timestamp u64 | count * (partition u32 | reserved u32 | start u64)`: on success the
/// resolved start of each subscribed partition.
pub fn encode_subscribe_reply(out: &mut BytesMut, answer: &Result<Vec<(u32, u64)>, QueryError>) {
    match answer {
        Ok(starts) => {
            out.put_u8(0);
            out.put_bytes(0, 3);
            out.put_u32_le(starts.len() as u32);
            out.put_u64_le(0);
            out.put_u64_le(0);
            for (partition, start) in starts {
                out.put_u32_le(*partition);
                out.put_u32_le(0);
                out.put_u64_le(*start);
            }
        }
        Err(e) => {
            let (status, position, timestamp) = query_error_fields(e);
            out.put_u8(status);
            out.put_bytes(0, 7);
            out.put_u64_le(position);
            out.put_u64_le(timestamp);
        }
    }
}

pub fn decode_subscribe_reply(
    body: &[u8],
    account: u128,
) -> Result<Result<Vec<(u32, u64)>, QueryError>, ProtocolError> {
    if body.len() < SUBSCRIBE_REPLY_HEADER_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    if body[0] != 0 {
        return Ok(Err(query_error_from(
            body[0],
            account,
            r.u64(8),
            r.u64(16),
            0,
        )?));
    }
    let count = r.u32(4) as usize;
    if count > SUBSCRIBE_STARTS_MAX || body.len() != SUBSCRIBE_REPLY_HEADER_BYTES + count * 16 {
        return Err(ProtocolError::MalformedBody);
    }
    Ok(Ok(body[SUBSCRIBE_REPLY_HEADER_BYTES..]
        .chunks_exact(16)
        .map(|c| (Reader(c).u32(0), Reader(c).u64(8)))
        .collect()))
}

/// What a push frame carries: changes, or why the subscription ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    Changes(Vec<(u32, ChangeEvent)>),
    /// The subscription ended (e.g. the subscriber fell behind the retained changes).
    Ended(QueryError),
}

/// Push frame body: `status u8 | reserved 3 | count u32 | point_position u64 |
/// point_timestamp u64 | count * 88-byte change`. Change: `partition u32 | kind u8 |
/// reserved 3 | position u64 | timestamp u64 | transfer_id u128 | from u128 | to u128 |
/// amount u64 | currency u32 | reserved u32`.
pub fn encode_push_changes(out: &mut BytesMut, partition: u32, changes: &[ChangeEvent]) {
    assert!(changes.len() <= EVENTS_PAGE_MAX);
    out.put_u8(0);
    out.put_bytes(0, 3);
    out.put_u32_le(changes.len() as u32);
    out.put_u64_le(0);
    out.put_u64_le(0);
    for c in changes {
        out.put_u32_le(partition);
        out.put_u8(c.kind as u8);
        out.put_bytes(0, 3);
        out.put_u64_le(c.position);
        out.put_u64_le(c.timestamp);
        out.put_u128_le(c.transfer_id);
        out.put_u128_le(c.from);
        out.put_u128_le(c.to);
        out.put_u64_le(c.amount);
        out.put_u32_le(c.currency.0);
        out.put_u32_le(0);
    }
}

pub fn encode_push_end(out: &mut BytesMut, why: &QueryError) {
    let (status, position, timestamp) = query_error_fields(why);
    out.put_u8(status);
    out.put_bytes(0, 7);
    out.put_u64_le(position);
    out.put_u64_le(timestamp);
}

pub fn decode_push(body: &[u8], account: u128) -> Result<Push, ProtocolError> {
    if body.len() < PUSH_HEADER_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    let r = Reader(body);
    if body[0] != 0 {
        let why = query_error_from(body[0], account, r.u64(8), r.u64(16), 0)?;
        return Ok(Push::Ended(why));
    }
    let count = r.u32(4) as usize;
    if count > EVENTS_PAGE_MAX || body.len() != PUSH_HEADER_BYTES + count * CHANGE_BYTES {
        return Err(ProtocolError::MalformedBody);
    }
    body[PUSH_HEADER_BYTES..]
        .chunks_exact(CHANGE_BYTES)
        .map(|rec| {
            let r = Reader(rec);
            Ok((
                r.u32(0),
                ChangeEvent {
                    kind: HistoryKind::from_u8(rec[4]).ok_or(ProtocolError::MalformedBody)?,
                    position: r.u64(8),
                    timestamp: r.u64(16),
                    transfer_id: r.u128(24),
                    from: r.u128(40),
                    to: r.u128(56),
                    amount: r.u64(72),
                    currency: Currency(r.u32(80)),
                },
            ))
        })
        .collect::<Result<Vec<_>, ProtocolError>>()
        .map(Push::Changes)
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
            let _ = decode_history_query(&body);
            let _ = decode_history_reply(&body, 1);
            let _ = decode_balance_at_query(&body);
            let _ = decode_balance_at_reply(&body);
            let _ = decode_read_model_status(&body);
            let _ = decode_subscribe(&body);
            let _ = decode_subscribe_reply(&body, 1);
            let _ = decode_push(&body, 1);
            let _ = crate::raft_status::decode_request(&body);
            let _ = crate::raft_status::decode_reply(&body);
            let _ = crate::cluster_admin::decode_request(&body);
        }

        #[test]
        fn history_replies_round_trip(entries in prop::collection::vec((any::<u64>(), any::<u64>(), any::<u128>(), any::<u128>(), any::<i64>(), any::<i64>(), any::<i64>(), 1u8..=5), 0..20), next in any::<u64>(), truncated in any::<Option<(u64, u64)>>()) {
            let page = HistoryPage {
                entries: entries.into_iter().map(|(position, timestamp, transfer_id, counterparty, amount, balance_after, held_after, kind)| HistoryEntry { position, timestamp, transfer_id, counterparty, amount, balance_after, held_after, kind: HistoryKind::from_u8(kind).unwrap() }).collect(),
                next_before: (next != 0).then_some(next),
                truncated_at: truncated,
                read_position: 77,
            };
            let mut out = BytesMut::new();
            encode_history_reply(&mut out, &Ok(page.clone()));
            prop_assert_eq!(decode_history_reply(&out, 5).unwrap(), Ok(page));
        }
    }

    #[test]
    fn subscription_bodies_round_trip() {
        let s = Subscribe {
            account: Some(7),
            from: vec![1, u64::MAX],
        };
        let mut out = BytesMut::new();
        encode_subscribe(&mut out, &s);
        assert_eq!(decode_subscribe(&out).unwrap(), s);
        let starts = Ok(vec![(0, 65536), (1, 131072)]);
        let mut out = BytesMut::new();
        encode_subscribe_reply(&mut out, &starts);
        assert_eq!(decode_subscribe_reply(&out, 7).unwrap(), starts);
        let change = ChangeEvent {
            position: 65537,
            timestamp: 9,
            kind: HistoryKind::TccCredit,
            transfer_id: 3,
            from: 4,
            to: 5,
            amount: 6,
            currency: Currency(0x00525545),
        };
        let mut out = BytesMut::new();
        encode_push_changes(&mut out, 1, &[change]);
        assert_eq!(
            decode_push(&out, 0).unwrap(),
            Push::Changes(vec![(1, change)])
        );
        let why = QueryError::BeforeRetained {
            account: 0,
            oldest_timestamp: 1,
            oldest_position: 2,
        };
        let mut out = BytesMut::new();
        encode_push_end(&mut out, &why);
        assert_eq!(decode_push(&out, 0).unwrap(), Push::Ended(why));
    }

    #[test]
    fn read_model_errors_and_queries_round_trip() {
        let errors = [
            QueryError::Disabled,
            QueryError::AccountNotFound(9),
            QueryError::NotCreatedYet {
                account: 9,
                created_timestamp: 5,
                created_position: 6,
            },
            QueryError::BeforeRetained {
                account: 9,
                oldest_timestamp: 7,
                oldest_position: 8,
            },
            QueryError::Ahead {
                position: 10,
                read_position: 4,
            },
        ];
        for e in errors {
            let mut out = BytesMut::new();
            encode_balance_at_reply(&mut out, 9, &Err(e.clone()));
            assert_eq!(decode_balance_at_reply(&out).unwrap(), Err(e.clone()));
            if !matches!(e, QueryError::Ahead { .. }) {
                let mut out = BytesMut::new();
                encode_history_reply(&mut out, &Err(e.clone()));
                assert_eq!(decode_history_reply(&out, 9).unwrap(), Err(e));
            }
        }
        let q = HistoryQuery {
            account: 3,
            before_position: Some(1 << 20),
            from_timestamp: None,
            to_timestamp: Some(99),
            limit: 10,
        };
        let mut out = BytesMut::new();
        encode_history_query(&mut out, &q);
        assert_eq!(decode_history_query(&out).unwrap(), q);
        for at in [At::Timestamp(5), At::Position(6)] {
            let mut out = BytesMut::new();
            encode_balance_at_query(&mut out, 3, at);
            assert_eq!(decode_balance_at_query(&out).unwrap(), (3, at));
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
    #[test]
    fn state_digests_round_trip_and_a_wrong_length_is_refused() {
        let parts = [
            PartitionDigest {
                partition: 0,
                last_index: 7,
                digest: u128::MAX - 3,
            },
            PartitionDigest {
                partition: 1,
                last_index: 0,
                digest: 42,
            },
        ];
        let mut out = BytesMut::new();
        encode_state_digests(&mut out, &parts);
        assert_eq!(out.len(), 8 + 2 * PARTITION_DIGEST_BYTES);
        assert_eq!(decode_state_digests(&out).unwrap(), parts);
        assert!(decode_state_digests(&out[..out.len() - 1]).is_err());
        assert!(decode_state_digests(&out[..4]).is_err());
    }
}
