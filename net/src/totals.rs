//! Money per currency, per partition (operation `GetTotals`, docs/PROTOCOL.md): the auditor's
//! "how much money is there" question, answered from each partition's read model.
//!
//! A partition's total of a currency is `balance + held` over its accounts. Across all the
//! partitions of a ledger each currency sums to zero (issuers run negative), except for what
//! cross-partition transfers have in flight between a Confirm on one side and its
//! acknowledgement on the other; each partition answers as of its own read position.
//!
//! Wire format of the reply (little-endian; the request body is empty):
//!
//! ```text
//! partition_count u32 | row_count u32
//! partition_count × (partition u32 | status u8 (0 ok, 1 read model off) | reserved 3 |
//!                    position u64)
//! row_count × (partition u32 | currency u32 | total i128)
//! ```
//!
//! Rows come in partition order, then currency order, and name only partitions listed above.

use crate::operation::ProtocolError;
use bytes::{BufMut, BytesMut};
use engine::model::Currency;

/// Most partitions a reply lists (as the partition map).
pub const TOTALS_PARTITIONS_MAX: usize = 65_536;
/// Most (partition, currency) rows in a reply: 24 bytes each, so a reply stays below 800 KiB.
pub const TOTALS_ROWS_MAX: usize = 32_768;

const HEADER_BYTES: usize = 8;
const PARTITION_BYTES: usize = 16;
const ROW_BYTES: usize = 24;

/// One partition's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTotals {
    pub partition: u32,
    /// `None` when the partition has no read model (`read_model_history_per_account = 0`).
    pub totals: Option<engine::runtime::PartitionTotals>,
}

/// Encodes `partitions` (in partition order). Refuses more partitions or rows than the limits
/// (with the error the handler sends back).
pub fn encode_totals_reply(
    out: &mut BytesMut,
    partitions: &[PartitionTotals],
) -> Result<(), ProtocolError> {
    let rows: usize = partitions
        .iter()
        .map(|p| p.totals.as_ref().map_or(0, |t| t.by_currency.len()))
        .sum();
    if partitions.len() > TOTALS_PARTITIONS_MAX || rows > TOTALS_ROWS_MAX {
        return Err(ProtocolError::MalformedBody);
    }
    out.reserve(HEADER_BYTES + partitions.len() * PARTITION_BYTES + rows * ROW_BYTES);
    out.put_u32_le(partitions.len() as u32);
    out.put_u32_le(rows as u32);
    for p in partitions {
        out.put_u32_le(p.partition);
        out.put_u8(if p.totals.is_some() { 0 } else { 1 });
        out.put_bytes(0, 3);
        out.put_u64_le(p.totals.as_ref().map_or(0, |t| t.position));
    }
    for p in partitions {
        for (currency, total) in p.totals.iter().flat_map(|t| &t.by_currency) {
            out.put_u32_le(p.partition);
            out.put_u32_le(currency.0);
            out.put_i128_le(*total);
        }
    }
    Ok(())
}

/// Decodes a reply, checking every count, status, order and reference (never panics).
pub fn decode_totals_reply(body: &[u8]) -> Result<Vec<PartitionTotals>, ProtocolError> {
    let bad = ProtocolError::MalformedBody;
    if body.len() < HEADER_BYTES {
        return Err(bad);
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
    let (partition_count, row_count) = (u32_at(0) as usize, u32_at(4) as usize);
    if partition_count > TOTALS_PARTITIONS_MAX
        || row_count > TOTALS_ROWS_MAX
        || body.len() != HEADER_BYTES + partition_count * PARTITION_BYTES + row_count * ROW_BYTES
    {
        return Err(bad);
    }
    let mut partitions: Vec<PartitionTotals> = Vec::with_capacity(partition_count);
    for i in 0..partition_count {
        let at = HEADER_BYTES + i * PARTITION_BYTES;
        let partition = u32_at(at);
        if partitions.last().is_some_and(|p| p.partition >= partition)
            || body[at + 5..at + 8] != [0; 3]
        {
            return Err(bad);
        }
        let position = u64::from_le_bytes(body[at + 8..at + 16].try_into().map_err(|_| bad)?);
        let totals = match body[at + 4] {
            0 => Some(engine::runtime::PartitionTotals {
                position,
                by_currency: Vec::new(),
            }),
            1 if position == 0 => None,
            _ => return Err(bad),
        };
        partitions.push(PartitionTotals { partition, totals });
    }
    let rows_at = HEADER_BYTES + partition_count * PARTITION_BYTES;
    let mut last: Option<(u32, u32)> = None;
    for i in 0..row_count {
        let at = rows_at + i * ROW_BYTES;
        let (partition, currency) = (u32_at(at), u32_at(at + 4));
        if last.is_some_and(|l| l >= (partition, currency)) {
            return Err(bad);
        }
        last = Some((partition, currency));
        let total = i128::from_le_bytes(body[at + 8..at + 24].try_into().map_err(|_| bad)?);
        let owner = partitions
            .binary_search_by_key(&partition, |p| p.partition)
            .map_err(|_| bad)?;
        match &mut partitions[owner].totals {
            Some(t) => t.by_currency.push((Currency(currency), total)),
            None => return Err(bad),
        }
    }
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn sample() -> Vec<PartitionTotals> {
        vec![
            PartitionTotals {
                partition: 0,
                totals: Some(engine::runtime::PartitionTotals {
                    position: 7 << 16,
                    // In currency order (the read model's), which is the codes' numeric order.
                    by_currency: {
                        let mut rows = vec![(eur(), -1_000), (Currency::parse("USD").unwrap(), 5)];
                        rows.sort_by_key(|(c, _)| c.0);
                        rows
                    },
                }),
            },
            PartitionTotals {
                partition: 1,
                totals: None,
            },
            PartitionTotals {
                partition: 2,
                totals: Some(engine::runtime::PartitionTotals {
                    position: 3 << 16,
                    by_currency: vec![(eur(), i128::MAX)],
                }),
            },
        ]
    }

    #[test]
    fn a_reply_round_trips() {
        let mut out = BytesMut::new();
        encode_totals_reply(&mut out, &sample()).unwrap();
        assert_eq!(decode_totals_reply(&out).unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_a_row_of_a_partition_without_a_model_are_refused() {
        let mut out = BytesMut::new();
        encode_totals_reply(&mut out, &sample()).unwrap();
        for len in 0..out.len() {
            assert!(decode_totals_reply(&out[..len]).is_err(), "{len}");
        }
        // Point the last row (partition 2) at partition 1, which has no read model.
        let mut bad = out.to_vec();
        let last_row = bad.len() - ROW_BYTES;
        bad[last_row..last_row + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(decode_totals_reply(&bad).is_err());
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_totals_reply(&bytes);
        }
    }
}
