//! Runs every file of the committed corpus (`tests/corpus/*.bin`: valid frames of every
//! operation, known-bad ones, and seeded mutations) through the whole decode path a server
//! applies to untrusted bytes. Nothing may panic; valid seeds must decode.
//! (The generative counterpart is `codec::tests::decoders_never_panic_on_garbage`.)

use net::codec;
use net::frame::{FrameHeader, HEADER_BYTES};
use net::operation::Operation;

/// Decodes a byte stream as a server would: frame after frame until the bytes run out or a
/// framing error. Returns (frames decoded, framing error seen).
fn decode_stream(mut bytes: &[u8]) -> (usize, bool) {
    let mut frames = 0;
    while bytes.len() >= HEADER_BYTES {
        let header: &[u8; HEADER_BYTES] = bytes[..HEADER_BYTES].try_into().unwrap();
        let Ok(header) = FrameHeader::decode(header) else {
            return (frames, true);
        };
        let end = HEADER_BYTES + header.body_len as usize;
        if bytes.len() < end {
            return (frames, false); // would wait for more bytes
        }
        let body = &bytes[HEADER_BYTES..end];
        if header.check_body(body).is_err() {
            return (frames, true);
        }
        // Decoding results are deliberately ignored: refusing is fine, panicking is not.
        let _ = match Operation::from_u8(header.operation) {
            Some(Operation::Handshake) => codec::decode_handshake(body).map(|_| 1),
            Some(Operation::CreateAccounts) => codec::records(body, codec::NEW_ACCOUNT_BYTES)
                .map(|r| r.map(codec::decode_new_account).count()),
            Some(Operation::CreateTransfers) => codec::records(body, codec::NEW_TRANSFER_BYTES)
                .map(|r| r.map(codec::decode_new_transfer).count()),
            Some(Operation::LookupAccounts) | Some(Operation::LookupTransfers) => {
                codec::records(body, codec::ID_BYTES).map(|r| r.map(codec::decode_id).count())
            }
            Some(Operation::GetAccountHistory) => codec::decode_history_query(body).map(|_| 1),
            Some(Operation::GetBalanceAt) => codec::decode_balance_at_query(body).map(|_| 1),
            Some(Operation::Subscribe) => codec::decode_subscribe(body).map(|_| 1),
            // The request is empty; a client decodes the reply, which must not panic either.
            Some(Operation::PartitionMap) => {
                net::partition_map::decode_partition_map(body).map(|_| 1)
            }
            // The request, and the reply a client decodes.
            Some(Operation::ClusterChange) => net::cluster_admin::decode_request(body)
                .map(|_| 1)
                .or_else(|_| net::cluster_admin::decode_outcomes(body).map(|o| o.len())),
            // The request, and the reply a client decodes.
            Some(Operation::RaftStatus) => net::raft_status::decode_request(body)
                .map(|_| 1)
                .or_else(|_| net::raft_status::decode_reply(body).map(|r| r.partitions.len())),
            // The request is empty; a client decodes the reply.
            Some(Operation::GetTotals) => net::totals::decode_totals_reply(body).map(|p| p.len()),
            Some(Operation::RaftBatch) => net::raft_link::decode_batch(body)
                .map(|batch| {
                    batch
                        .messages
                        .iter()
                        .filter(|m| {
                            net::raft_link::message::LinkRequest::decode(m.kind, m.body).is_ok()
                        })
                        .count()
                })
                .map_err(|_| net::ProtocolError::MalformedBody),
            Some(Operation::Ping)
            | Some(Operation::Status)
            | Some(Operation::ReadModelStatus)
            | Some(Operation::StateDigest)
            | None => Ok(0),
        };
        frames += 1;
        bytes = &bytes[end..];
    }
    (frames, false)
}

#[test]
fn the_committed_corpus_decodes_without_panics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "corpus present ({} files)", files.len());
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (frames, framing_error) = decode_stream(&bytes);
        let valid = [
            "handshake",
            "ping",
            "status",
            "create_accounts",
            "create_transfers",
            "lookup_accounts",
            "lookup_transfers",
        ];
        if valid.iter().any(|v| name == format!("{v}.bin")) {
            assert_eq!(
                (frames, framing_error),
                (1, false),
                "{name} is a valid frame"
            );
        }
        if name == "huge_length.bin" || name == "bad_version.bin" {
            assert!(framing_error, "{name} is refused at the header");
        }
    }
}
