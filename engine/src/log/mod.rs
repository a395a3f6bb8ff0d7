//! The segment log: per partition, an append-only sequence of checksummed records in
//! fixed-size segment files. Shaped for Raft log storage: every record has an index and a term,
//! the vote is persisted beside it, and the log can be purged from the front (logically, through
//! `raft_meta`, then whole segments).

pub(crate) mod atomic_file;
pub mod error;
pub mod fault;
pub mod offset_hints;
pub mod raft_meta;
pub mod range;
pub mod record;
pub mod scan;
pub mod segments;
pub mod vote;
pub mod writer;

pub use error::{ignore_file_size_signal, LogError};
pub use fault::FaultPlan;
pub use offset_hints::OffsetHints;
pub use raft_meta::{load_raft_meta, save_raft_meta, EntryId, RaftMeta};
pub use range::read_range;
pub use record::{RecordError, RecordHeader};
pub use scan::{
    body_bytes_of_kinds, find_tail, repair_log, scan_log, scan_log_history,
    scan_log_history_segments, LogTail, TornTail,
};
pub use segments::{list_segments, MappedSegment, RecordRef, SegmentInfo};
pub use writer::{LogWriter, WriterOptions};
