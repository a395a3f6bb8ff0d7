//! Every bound of the node link in one place (TIGER_STYLE: a limit on every queue and every
//! length read from the wire). Units are in the names.

/// Largest frame body on the node link. The client port's 1 MiB (`frame::BODY_BYTES_MAX`) is
/// too small for an AppendEntries of a few large group entries; 32 MiB leaves room for
/// several 4 MiB groups (RAFT_PLAN §6) and one snapshot chunk in the same frame.
pub const LINK_BODY_BYTES_MAX: usize = 32 << 20;

/// Bytes of messages the sender packs into one frame before it starts another. Below the
/// frame limit so that a frame plus the batch header never exceeds it.
pub const BATCH_BODY_BYTES_TARGET: usize = 8 << 20;

/// Largest single message (one encoded RPC). An AppendEntries larger than this is refused
/// with openraft's `PayloadTooLarge`, and openraft retries with fewer entries.
pub const MESSAGE_BYTES_MAX: usize = LINK_BODY_BYTES_MAX - BATCH_HEADER_BYTES - ENVELOPE_BYTES;

/// Messages per frame (either direction). Bounds the work one frame can queue at once.
pub const MESSAGES_PER_FRAME_MAX: usize = 4096;

/// Entries per AppendEntries message (openraft's `max_payload_entries` is 300 by default).
pub const ENTRIES_PER_APPEND_MAX: usize = 65_536;

/// Bytes of a frame body before the messages: from u64, to u64, count u32, reserved u32.
pub const BATCH_HEADER_BYTES: usize = 24;
/// Bytes of a message's envelope: partition u32, kind u8, 3 reserved, msg_id u64, len u32.
pub const ENVELOPE_BYTES: usize = 20;

/// Bytes of snapshot file per chunk message: each chunk is acknowledged before the next is
/// sent, so at most one chunk per transfer is in flight (flow control by round trip).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The largest chunk a receiver accepts (a sender may be configured with larger chunks).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 4 << 20;
/// Longest snapshot id accepted (openraft's ids are "<term>-<index>").
pub const SNAPSHOT_ID_BYTES_MAX: usize = 256;
/// Longest snapshot meta (`raft::snapshot_meta` record: membership of all nodes included).
pub const SNAPSHOT_META_BYTES_MAX: usize = 1 << 20;
/// Longest error text in an error reply (longer ones are cut at a character boundary).
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// Requests a sender may have queued for one peer (not yet written). A full outbox makes the
/// caller wait, within its RPC timeout.
pub const OUTBOX_MESSAGES_MAX: usize = 1024;
/// Bytes of requests a sender may have queued for one peer and not yet written (a message
/// larger than this takes the whole budget alone).
pub const OUTBOX_BYTES_MAX: u64 = 64 << 20;
/// Requests a sender may have written to one peer and not yet seen answered. Beyond it an
/// RPC fails at once as unreachable (the peer is not keeping up; openraft backs off).
pub const PENDING_REPLIES_MAX: usize = 4096;
/// Retries of a timed-out AppendEntries that wait for the first copy's reply instead of
/// sending its entries again (`network.rs`, "Retries after a timeout"); the retry after them
/// goes out in full. A reply that never comes (a link filter cutting replies, a stuck
/// receiver) thus delays a follower by at most this many RPC timeouts.
pub const APPEND_RETRIES_ON_EARLIER_COPY_MAX: u32 = 4;
/// Requests a receiving connection handles at once; beyond it the connection stops reading
/// (TCP pushes back on the sender).
pub const MESSAGES_IN_FLIGHT_PER_CONNECTION_MAX: u64 = 1024;
/// Bytes of requests a receiving connection holds decoded and unanswered (a message larger
/// than this takes the whole budget alone). With `MESSAGES_IN_FLIGHT_PER_CONNECTION_MAX`, what
/// one peer can make this node hold is bounded by count and by size.
pub const MESSAGE_BYTES_IN_FLIGHT_PER_CONNECTION_MAX: u64 = 64 << 20;
/// Replies a receiving connection may have queued for its writer.
pub const REPLY_QUEUE_MAX: usize = 1024;
/// Snapshots one receiving connection may be receiving at once (one per partition).
pub const SNAPSHOTS_RECEIVING_PER_CONNECTION_MAX: usize = 64;
/// Incoming node-link connections per listener (peers reconnecting leave a few behind).
pub const CONNECTIONS_MAX: usize = 256;

/// Most TC/C messages in one forward (a follower hands what reached it to the leader).
pub const TCC_MESSAGES_PER_FORWARD_MAX: usize = 65_536;
/// Most forwards of TC/C messages in flight per executor; more are dropped (their sources
/// send them again).
pub const TCC_FORWARDS_IN_FLIGHT_MAX: usize = 64;
