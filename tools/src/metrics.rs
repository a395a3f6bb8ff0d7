//! `walletd --metrics-listen ADDR`: Prometheus text metrics at `GET /metrics`.
//!
//! A plain thread with a blocking listener: scrapes are rare and tiny, so they stay off the
//! shard and network executors. Each scrape asks every partition for its counters (cheap: no
//! state digest).

use engine::runtime::timing::{Histogram, BUCKET_BOUNDS_US};
use engine::runtime::Node;
use net::raft_link::{LinkCounters, LinkStats};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head read from a scraper.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Binds `addr` and serves metrics on a background thread for the life of the process.
/// `link`: the node link's counters, in a cluster (`walletd_link_*`).
pub fn serve(
    addr: SocketAddr,
    node: Arc<Node>,
    link: Option<Arc<LinkCounters>>,
) -> Result<(), String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("metrics: cannot listen on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &node, link.as_deref()) {
                    tracing::debug!(error = %e, "metrics scrape failed");
                }
            }
        })
        .map_err(|e| format!("metrics: cannot start the thread: {e}"))?;
    Ok(())
}

fn answer(mut stream: TcpStream, node: &Node, link: Option<&LinkCounters>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_BYTES_MAX {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?")
    {
        match render(node, link) {
            Ok(text) => ("200 OK", text),
            Err(reason) => ("503 Service Unavailable", format!("{reason}\n")),
        }
    } else {
        (
            "404 Not Found",
            "only GET /metrics is served here\n".to_string(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The metrics text (Prometheus exposition format).
pub fn render(node: &Node, link: Option<&LinkCounters>) -> Result<String, String> {
    let mut stats = Vec::new();
    for p in 0..node.partition_count() {
        stats.push(futures::executor::block_on(node.counters(p)).map_err(|e| e.to_string())?);
    }
    let mut out = String::new();
    let mut family =
        |name: &str,
         kind: &str,
         help: &str,
         value: &dyn Fn(&engine::runtime::PartitionStats) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for s in &stats {
                let _ = writeln!(out, "{name}{{partition=\"{}\"}} {}", s.partition, value(s));
            }
        };
    family(
        "walletd_log_last_index",
        "gauge",
        "Index of the last log entry applied.",
        &|s| s.last_index,
    );
    family(
        "walletd_log_durable_index",
        "gauge",
        "Index of the last log entry known to be fsynced.",
        &|s| s.durable_index,
    );
    family(
        "walletd_fsyncs_total",
        "counter",
        "Group commits (one durable write each) since start.",
        &|s| s.fsyncs,
    );
    family(
        "walletd_accounts",
        "gauge",
        "Accounts in the partition.",
        &|s| s.accounts,
    );
    family(
        "walletd_transfers",
        "gauge",
        "Applied transfers stored in the partition.",
        &|s| s.transfers,
    );
    family(
        "walletd_tcc_in_flight",
        "gauge",
        "Cross-partition transfers started here and not finished.",
        &|s| s.tcc_in_flight,
    );
    family(
        "walletd_snapshots_written_total",
        "counter",
        "Snapshots written since start.",
        &|s| s.snapshots_written,
    );
    family(
        "walletd_replayed_entries",
        "gauge",
        "Log entries replayed at start.",
        &|s| s.replayed_entries,
    );
    family(
        "walletd_read_model_enabled",
        "gauge",
        "1 when the CQRS read model (history, balance as of) is on.",
        &|s| s.read_model as u64,
    );
    family(
        "walletd_read_model_position",
        "gauge",
        "Read model position (log entry << 16 | event ordinal) it has applied up to.",
        &|s| s.read_model_position,
    );
    family(
        "walletd_read_model_lag_entries",
        "gauge",
        "Log entries applied by the partition and not yet by its read model.",
        &|s| s.read_model_lag_entries,
    );
    family(
        "walletd_read_model_lag_ms",
        "gauge",
        "Milliseconds the read model is behind its partition.",
        &|s| s.read_model_lag_ms,
    );
    family(
        "walletd_storage_full",
        "gauge",
        "1 while the disk is full: writes are refused with storage_full until space returns.",
        &|s| s.storage_full as u64,
    );
    family(
        "walletd_storage_failed",
        "gauge",
        "1 after a log write or fsync error: writes are refused with storage_error until a restart.",
        &|s| s.storage_failed as u64,
    );
    if stats.iter().any(|s| s.raft.is_some()) {
        let raft = |s: &engine::runtime::PartitionStats| s.raft.clone().unwrap_or_default();
        family(
            "walletd_raft_term",
            "gauge",
            "The partition's Raft term as this node knows it.",
            &|s| raft(s).term,
        );
        family(
            "walletd_raft_is_leader",
            "gauge",
            "1 while this node leads the partition's Raft group.",
            &|s| raft(s).is_leader as u64,
        );
        family(
            "walletd_raft_last_log_index",
            "gauge",
            "The last entry in this node's Raft log of the partition (log index).",
            &|s| raft(s).last_log_index,
        );
        family(
            "walletd_raft_applied_index",
            "gauge",
            "The last Raft entry applied to the partition's state (log index).",
            &|s| raft(s).applied_index,
        );
        family(
            "walletd_raft_commit_index",
            "gauge",
            "On a leader: the highest log index a majority of the voters hold; elsewhere the applied index (log index).",
            &|s| raft(s).commit_index,
        );
        family(
            "walletd_raft_follower_lag_max_entries",
            "gauge",
            "On a leader: the most entries any follower is behind its log (0 without followers).",
            &|s| raft(s).follower_lag_max,
        );
    }
    let _ = writeln!(
        out,
        "# HELP walletd_queue_depth Requests waiting in the partition's queue (bounded by queue_depth_max; full means clients get busy)."
    );
    let _ = writeln!(out, "# TYPE walletd_queue_depth gauge");
    for s in &stats {
        let depth = node.queue_depth(s.partition);
        let _ = writeln!(
            out,
            "walletd_queue_depth{{partition=\"{}\"}} {depth}",
            s.partition
        );
    }
    let _ = writeln!(
        out,
        "# HELP walletd_results_total Items of client batches (accounts, transfers) answered with each result code."
    );
    let _ = writeln!(out, "# TYPE walletd_results_total counter");
    for (code, count) in node.results().snapshot() {
        let _ = writeln!(
            out,
            "walletd_results_total{{code=\"{}\"}} {count}",
            code.name()
        );
    }
    histogram(
        &mut out,
        &stats,
        "walletd_queue_wait_seconds",
        "Time a command batch waited in its partition's queue before its group commit started.",
        |s| &s.timing.queue,
    );
    histogram(
        &mut out,
        &stats,
        "walletd_group_apply_seconds",
        "Time from a group commit's start until it is encoded, appended and applied (shard CPU). Raft mode: an apply of committed entries.",
        |s| &s.timing.apply,
    );
    histogram(
        &mut out,
        &stats,
        "walletd_group_fsync_seconds",
        "Time from a group commit's start until its durable write completed (disk; the apply overlaps it). Raft mode: from an entry's proposal until committed and applied.",
        |s| &s.timing.fsync,
    );
    histogram(
        &mut out,
        &stats,
        "walletd_log_append_seconds",
        "Raft mode: time from a log append's start until durable, on leaders and followers alike.",
        |s| &s.timing.append,
    );
    if let Some(link) = link {
        link_metrics(&mut out, link.snapshot());
    }
    Ok(out)
}

/// The node link's counters (node-wide: every core's link counts into them).
/// `messages_sent / frames_sent` is how well Raft messages of all partitions share writes.
fn link_metrics(out: &mut String, stats: LinkStats) {
    for (name, kind, help, value) in [
        (
            "walletd_link_frames_sent_total",
            "counter",
            "Node-link frames (RaftBatch) written to peers.",
            stats.frames_sent,
        ),
        (
            "walletd_link_messages_sent_total",
            "counter",
            "Raft messages (of any partition) in those frames.",
            stats.messages_sent,
        ),
        (
            "walletd_link_messages_per_frame_max",
            "gauge",
            "Most Raft messages sent in one frame since start.",
            stats.messages_per_frame_max,
        ),
        (
            "walletd_link_connects_total",
            "counter",
            "Connections to peers established (handshake done).",
            stats.connects,
        ),
        (
            "walletd_link_connect_failures_total",
            "counter",
            "Connects to peers that failed (refused, timed out, handshake refused).",
            stats.connect_failures,
        ),
        (
            "walletd_link_appends_retried_unanswered_total",
            "counter",
            "AppendEntries with entries retried by openraft after its timeout while the first \
             copy was still unanswered (a follower or the link behind by a heartbeat interval).",
            stats.appends_retried_unanswered,
        ),
        (
            "walletd_link_appends_answered_by_earlier_total",
            "counter",
            "Of those retries, the ones answered by the first copy's reply: entries not sent twice.",
            stats.appends_answered_by_earlier,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

/// One Prometheus histogram family, a series per partition (cumulative buckets, sum, count).
fn histogram(
    out: &mut String,
    stats: &[engine::runtime::PartitionStats],
    name: &str,
    help: &str,
    pick: impl Fn(&engine::runtime::PartitionStats) -> &Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for s in stats {
        let h = pick(s);
        let partition = s.partition;
        let mut cumulative = 0u64;
        for (bound_us, count) in BUCKET_BOUNDS_US.iter().zip(h.counts) {
            cumulative += count;
            let le = *bound_us as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{partition=\"{partition}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{partition=\"{partition}\",le=\"+Inf\"}} {}",
            h.count()
        );
        let _ = writeln!(
            out,
            "{name}_sum{{partition=\"{partition}\"}} {}",
            h.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{name}_count{{partition=\"{partition}\"}} {}",
            h.count()
        );
    }
}
