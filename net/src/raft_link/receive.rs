//! The receiving side's work for one request: call the partition's Raft, or collect a
//! snapshot's chunks into a file and install it, and produce the reply.
//!
//! Runs on the executor of the link, which is the executor of the partitions' Rafts (their
//! handles are `!Send`; `registry.rs`). Each request is its own task (`server.rs`), so a slow
//! partition (an fsync, a snapshot install) does not hold up the others on the link.
//!
//! **Snapshot transfers** are per connection and partition: the first chunk (offset 0) asks
//! the Raft for a place (`Raft::begin_receiving_snapshot`, a fresh path in the partition's
//! snapshot directory), later chunks must continue at the file's current length and carry
//! the same snapshot id, and `SnapshotInstall` checks the total length, syncs the file and
//! calls `Raft::install_full_snapshot` (which loads and checks the snapshot's CRCs before it
//! replaces anything). A transfer that breaks off leaves its file behind until the next
//! transfer of that partition on the connection replaces it, or the connection ends (the
//! files of unfinished transfers are deleted then). Writes are blocking `write`s on the
//! executor (page cache; ~1 ms per MiB chunk); the one `fsync` at the end runs on a helper
//! thread, so a large snapshot does not stall the executor's other partitions.

use super::limits::SNAPSHOTS_RECEIVING_PER_CONNECTION_MAX;
use super::message::{
    Failure, FailureCode, LinkReply, LinkRequest, SnapshotChunk, SnapshotInstall,
};
use super::registry::RaftRegistry;
use engine::raft::{SnapshotHandle, WalletRaft};
use openraft::error::{Fatal, RaftError};
use openraft::storage::Snapshot;
use openraft::Raft;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

/// A snapshot file being received.
struct Receiving {
    snapshot_id: String,
    path: PathBuf,
    file: std::fs::File,
    received_bytes: u64,
}

impl Receiving {
    fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The transfers of one connection, by partition.
#[derive(Default)]
pub struct Transfers {
    receiving: RefCell<HashMap<u32, Receiving>>,
}

impl Drop for Transfers {
    fn drop(&mut self) {
        for (_, r) in self.receiving.borrow_mut().drain() {
            r.discard();
        }
    }
}

/// `fsync`s and closes `file` on a thread of its own: syncing a snapshot of many MiB can take
/// long, and the executor keeps the heartbeats of every partition going meanwhile.
async fn sync_off_executor(file: std::fs::File) -> std::io::Result<()> {
    let (done, result) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("raft-link-sync".into())
        .spawn(move || {
            let _ = done.send(file.sync_all());
        })?;
    result
        .await
        .map_err(|_| std::io::Error::other("the sync thread panicked"))?
}

fn failure(code: FailureCode, message: impl Into<String>) -> LinkReply {
    LinkReply::Failure(Failure {
        code,
        message: message.into(),
    })
}

fn fatal(f: &Fatal<u64>) -> LinkReply {
    let code = match f {
        Fatal::StorageError(_) => FailureCode::Storage,
        Fatal::Panicked => FailureCode::RaftPanicked,
        Fatal::Stopped => FailureCode::RaftStopped,
    };
    failure(code, f.to_string())
}

fn raft_error(e: RaftError<u64>) -> LinkReply {
    match e {
        RaftError::APIError(never) => match never {},
        RaftError::Fatal(f) => fatal(&f),
    }
}

/// Answers one request addressed to `partition`.
pub async fn answer(
    registry: &RaftRegistry,
    transfers: &Transfers,
    partition: u32,
    request: LinkRequest,
) -> LinkReply {
    let Some(raft) = registry.get(partition) else {
        return failure(
            FailureCode::NoSuchPartition,
            format!("no Raft of partition {partition} runs here"),
        );
    };
    match request {
        LinkRequest::Vote(rpc) => match raft.vote(rpc).await {
            Ok(r) => LinkReply::Vote(r),
            Err(e) => raft_error(e),
        },
        LinkRequest::AppendEntries(rpc) => match raft.append_entries(rpc).await {
            Ok(r) => LinkReply::AppendEntries(r),
            Err(e) => raft_error(e),
        },
        LinkRequest::SnapshotChunk(chunk) => receive_chunk(&raft, transfers, partition, chunk)
            .await
            .unwrap_or_else(|message| {
                // Said here, where the cause is (a full disk, a broken sender); the leader
                // only learns that the transfer failed, and sends the snapshot again.
                tracing::warn!(partition, %message, "a snapshot transfer to this node failed");
                failure(FailureCode::SnapshotTransfer, message)
            }),
        LinkRequest::SnapshotInstall(install) => {
            let reply = install_snapshot(&raft, transfers, partition, install).await;
            if let LinkReply::Failure(f) = &reply {
                tracing::warn!(partition, message = %f.message, "a snapshot install on this node failed");
            }
            reply
        }
        LinkRequest::TccForward(messages) => match registry.queue(partition) {
            // Never waits: a full queue drops them (their sources send them again).
            Some(queue) => match queue.try_send(engine::runtime::Request::Tcc { messages }) {
                Ok(()) => LinkReply::TccAccepted,
                Err(_) => failure(FailureCode::Busy, "the partition's queue is full"),
            },
            None => failure(
                FailureCode::NoSuchPartition,
                format!("no queue of partition {partition} here"),
            ),
        },
    }
}

async fn receive_chunk(
    raft: &Raft<WalletRaft>,
    transfers: &Transfers,
    partition: u32,
    chunk: SnapshotChunk,
) -> Result<LinkReply, String> {
    if chunk.offset == 0 {
        if let Some(old) = transfers.receiving.borrow_mut().remove(&partition) {
            old.discard();
        }
        if transfers.receiving.borrow().len() >= SNAPSHOTS_RECEIVING_PER_CONNECTION_MAX {
            return Err("too many snapshot transfers on this connection".into());
        }
        let handle = match raft.begin_receiving_snapshot().await {
            Ok(handle) => handle,
            Err(RaftError::APIError(never)) => match never {},
            Err(RaftError::Fatal(f)) => return Ok(fatal(&f)),
        };
        let file = std::fs::File::create(&handle.path)
            .map_err(|e| format!("cannot create {}: {e}", handle.path.display()))?;
        let previous = transfers.receiving.borrow_mut().insert(
            partition,
            Receiving {
                snapshot_id: chunk.snapshot_id.clone(),
                path: handle.path,
                file,
                received_bytes: 0,
            },
        );
        // Another chunk 0 of this partition raced this one on the same connection: the
        // sender sends one chunk at a time, so that is a broken sender; keep the newest.
        if let Some(previous) = previous {
            previous.discard();
        }
    }
    let mut receiving = transfers.receiving.borrow_mut();
    let Some(r) = receiving.get_mut(&partition) else {
        return Err(format!(
            "a chunk at offset {} of a transfer that was never started",
            chunk.offset
        ));
    };
    if r.snapshot_id != chunk.snapshot_id || r.received_bytes != chunk.offset {
        let message = format!(
            "chunk of {} at offset {}, but receiving {} at {}",
            chunk.snapshot_id, chunk.offset, r.snapshot_id, r.received_bytes
        );
        if let Some(r) = receiving.remove(&partition) {
            r.discard();
        }
        return Err(message);
    }
    if let Err(e) = r.file.write_all(&chunk.data) {
        let message = format!("cannot write {}: {e}", r.path.display());
        if let Some(r) = receiving.remove(&partition) {
            r.discard();
        }
        return Err(message);
    }
    r.received_bytes += chunk.data.len() as u64;
    Ok(LinkReply::ChunkAck {
        received_bytes: r.received_bytes,
    })
}

async fn install_snapshot(
    raft: &Raft<WalletRaft>,
    transfers: &Transfers,
    partition: u32,
    install: SnapshotInstall,
) -> LinkReply {
    let Some(r) = transfers.receiving.borrow_mut().remove(&partition) else {
        return failure(
            FailureCode::SnapshotTransfer,
            "an install without a transfer",
        );
    };
    if r.snapshot_id != install.meta.snapshot_id || r.received_bytes != install.total_bytes {
        let message = format!(
            "install of {} ({} bytes), but received {} ({} bytes)",
            install.meta.snapshot_id, install.total_bytes, r.snapshot_id, r.received_bytes
        );
        r.discard();
        return failure(FailureCode::SnapshotTransfer, message);
    }
    let Receiving { path, file, .. } = r;
    if let Err(e) = sync_off_executor(file).await {
        let _ = std::fs::remove_file(&path);
        let message = format!("cannot sync {}: {e}", path.display());
        return failure(FailureCode::SnapshotTransfer, message);
    }
    let snapshot = Snapshot {
        meta: install.meta,
        snapshot: Box::new(SnapshotHandle { path }),
    };
    match raft.install_full_snapshot(install.vote, snapshot).await {
        Ok(r) => LinkReply::Snapshot(r),
        Err(f) => fatal(&f),
    }
}
