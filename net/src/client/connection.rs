//! One pipelined connection: callers queue frames for a writer thread and wait on a oneshot; a
//! reader thread matches replies to requests by id and fails requests whose deadline passed.
//! Over TLS the two threads share the rustls state under a lock, never held across a socket
//! call (`transport.rs`); plain TCP uses the sockets directly, as before.

use super::transport::{poisoned, seal, TlsReader, Transport};
use super::{ClientConfig, ClientError};
use crate::codec::{self, role, Handshake};
use crate::frame::{self, FrameHeader, HEADER_BYTES};
use crate::operation::Operation;
use bytes::BytesMut;
use futures::channel::oneshot;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A reply body (error frames are turned into `ClientError::Refused`).
pub struct Reply {
    pub body: BytesMut,
}

/// A request waiting for its reply: when it was sent, its deadline, and who waits.
struct Waiter {
    sent: Instant,
    deadline: Instant,
    tx: oneshot::Sender<Result<Reply, ClientError>>,
}

/// Frames waiting for the writer thread of a connection.
const OUTGOING_FRAMES_MAX: usize = 64;

pub struct Connection {
    /// Frames go to a writer thread, so a caller on an async executor never blocks in a
    /// socket write; a full queue is waited for asynchronously (backpressure).
    outgoing: flume::Sender<BytesMut>,
    /// To shut the socket down when the connection is dropped.
    socket: TcpStream,
    pending: Arc<Mutex<HashMap<u64, Waiter>>>,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    partitions: u32,
    node_id: u64,
    timeout_ms: u64,
}

/// How often the reader wakes to expire overdue requests.
const REAPER_TICK_MS: u64 = 50;

impl Connection {
    pub fn open(config: &ClientConfig) -> Result<Connection, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: config.addr.clone(),
            reason,
        };
        let mut transport = Transport::open(config)?;
        let hello = handshake(&mut transport, config)?;
        // The last byte heard so far: the handshake's reply.
        let handshaken = Instant::now();

        let pending: Arc<Mutex<HashMap<u64, Waiter>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (outgoing, frames) = flume::bounded::<BytesMut>(OUTGOING_FRAMES_MAX);
        let reader_pending = pending.clone();
        let reader_alive = alive.clone();
        let writer_alive = alive.clone();
        let socket = match transport {
            Transport::Plain(stream) => {
                let reader = stream
                    .try_clone()
                    .map_err(|e| connect_error(e.to_string()))?;
                reader
                    .set_read_timeout(Some(Duration::from_millis(REAPER_TICK_MS)))
                    .map_err(|e| connect_error(e.to_string()))?;
                spawn_reader(reader, reader_pending, reader_alive, handshaken)
                    .map_err(|e| connect_error(e.to_string()))?;
                let mut writer = stream
                    .try_clone()
                    .map_err(|e| connect_error(e.to_string()))?;
                std::thread::Builder::new()
                    .name("walletd-client-writer".into())
                    .spawn(move || {
                        while let Ok(frame) = frames.recv() {
                            if writer.write_all(&frame).is_err() {
                                // The reader sees the broken socket and fails every pending
                                // request.
                                writer_alive.store(false, Ordering::Release);
                                let _ = writer.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                        }
                    })
                    .map_err(|e| connect_error(e.to_string()))?;
                stream
            }
            Transport::Tls(tls) => {
                let rustls::StreamOwned { conn, sock } = *tls;
                sock.set_read_timeout(Some(Duration::from_millis(REAPER_TICK_MS)))
                    .map_err(|e| connect_error(e.to_string()))?;
                let conn = Arc::new(Mutex::new(conn));
                let reader = TlsReader::new(
                    sock.try_clone().map_err(|e| connect_error(e.to_string()))?,
                    conn.clone(),
                    outgoing.downgrade(),
                );
                spawn_reader(reader, reader_pending, reader_alive, handshaken)
                    .map_err(|e| connect_error(e.to_string()))?;
                let writer = sock.try_clone().map_err(|e| connect_error(e.to_string()))?;
                std::thread::Builder::new()
                    .name("walletd-client-writer".into())
                    .spawn(move || tls_write_loop(writer, conn, frames, writer_alive))
                    .map_err(|e| connect_error(e.to_string()))?;
                sock
            }
        };
        Ok(Connection {
            outgoing,
            socket,
            pending,
            next_id: AtomicU64::new(1),
            alive,
            partitions: hello.partitions,
            node_id: hello.node_id,
            timeout_ms: config.timeout_ms,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The id of the node that answered the handshake.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues one request for the writer; the returned receiver completes with its reply.
    /// (`flags`: request flags, `frame::flags::FOLLOWER_READ`; 0 for most.)
    pub async fn send_flagged(
        &self,
        operation: Operation,
        flags: u16,
        body: &[u8],
    ) -> Result<oneshot::Receiver<Result<Reply, ClientError>>, ClientError> {
        if !self.is_alive() {
            return Err(ClientError::Disconnected("connection closed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let sent = Instant::now();
        let waiter = Waiter {
            sent,
            deadline: sent + Duration::from_millis(self.timeout_ms),
            tx,
        };
        self.pending
            .lock()
            .map_err(|_| ClientError::Disconnected("poisoned".into()))?
            .insert(id, waiter);
        // The reader may have failed every pending request between the check above and the
        // insert (it marks the connection dead first, then drains under the lock): then
        // nobody would ever answer this one, and its caller would wait forever.
        if !self.is_alive() {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            return Err(ClientError::Disconnected("connection closed".into()));
        }
        let mut frame = BytesMut::with_capacity(HEADER_BYTES + body.len());
        frame::encode_frame(&mut frame, operation as u8, flags, id, body);
        // The queue may stay full (a server that stopped reading): the reader expires the
        // request at its deadline meanwhile, which ends this wait too.
        let queued = {
            let send = self.outgoing.send_async(frame);
            futures::pin_mut!(send);
            match futures::future::select(send, &mut rx).await {
                futures::future::Either::Left((queued, _)) => queued.is_ok(),
                futures::future::Either::Right((answer, _)) => {
                    return Err(match answer {
                        Ok(Err(e)) => e,
                        // A reply to a request never sent: the server is confused.
                        Ok(Ok(_)) => ClientError::BadReply,
                        Err(_) => ClientError::Disconnected("connection closed".into()),
                    });
                }
            }
        };
        if !queued {
            self.alive.store(false, Ordering::Release);
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            return Err(ClientError::Disconnected("writer stopped".into()));
        }
        Ok(rx)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Ends both helper threads: the reader sees EOF, the writer a closed queue.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Sends the handshake on a fresh stream and reads its reply (the stream's read timeout
/// bounds the wait: `Transport::open` sets `timeout_ms`).
pub(super) fn handshake<S: Read + Write>(
    stream: &mut S,
    config: &ClientConfig,
) -> Result<codec::HandshakeReply, ClientError> {
    let connect_error = |reason: String| ClientError::Connect {
        addr: config.addr.clone(),
        reason,
    };
    let mut out = BytesMut::new();
    frame::encode_frame_with(&mut out, Operation::Handshake as u8, 0, 0, |b| {
        codec::encode_handshake(
            b,
            &Handshake {
                role: role::CLIENT,
                cluster_id: config.cluster_id,
                token: config.token.clone().unwrap_or_default(),
            },
        )
    });
    stream
        .write_all(&out)
        .and_then(|()| stream.flush())
        .map_err(|e| connect_error(e.to_string()))?;
    // The reply header by hand: what a TLS port answers a plain client is worth recognizing.
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        match stream.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if filled == 0 || !looks_like_tls(&header[..filled]) => {
                return Err(connect_error(e.to_string()))
            }
            Err(_) => break,
        }
    }
    if config.tls.is_none() && looks_like_tls(&header[..filled]) {
        return Err(ClientError::Tls {
            addr: config.addr.clone(),
            reason: "the server speaks TLS; connect with TLS (wallet --tls-ca FILE)".into(),
        });
    }
    if filled < HEADER_BYTES {
        return Err(connect_error(
            "the server closed the connection during the handshake (at its connection limit?)"
                .into(),
        ));
    }
    let (header, body) = read_body(stream, &header).map_err(|e| connect_error(e.to_string()))?;
    if header.flags & frame::flags::ERROR != 0 {
        let (error, message) = codec::decode_error(&body);
        return Err(match error {
            Some(error) => ClientError::Refused { error, message },
            None => ClientError::BadReply,
        });
    }
    codec::decode_handshake_reply(&body).map_err(|_| ClientError::BadReply)
}

/// A TLS record header (alert or handshake, version 3.x): what a TLS server sends.
fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

pub(super) fn read_frame<S: Read>(stream: &mut S) -> std::io::Result<(FrameHeader, BytesMut)> {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header)?;
    read_body(stream, &header)
}

/// Decodes a header and reads and checks its body.
fn read_body<S: Read>(
    stream: &mut S,
    header: &[u8; HEADER_BYTES],
) -> std::io::Result<(FrameHeader, BytesMut)> {
    let header = FrameHeader::decode(header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut body = BytesMut::zeroed(header.body_len as usize);
    stream.read_exact(&mut body)?;
    header
        .check_body(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((header, body))
}

fn spawn_reader<R: Read + Send + 'static>(
    reader: R,
    pending: Arc<Mutex<HashMap<u64, Waiter>>>,
    alive: Arc<AtomicBool>,
    last_byte: Instant,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("walletd-client-reader".into())
        .spawn(move || read_loop(reader, pending, alive, last_byte))
        .map(|_| ())
}

/// Bytes of queued frames sealed into one socket write.
const TLS_COALESCE_BYTES: usize = 256 * 1024;

/// The writer thread of a TLS connection: encrypts under the lock, writes without it.
fn tls_write_loop(
    mut socket: TcpStream,
    conn: Arc<Mutex<rustls::ClientConnection>>,
    frames: flume::Receiver<BytesMut>,
    alive: Arc<AtomicBool>,
) {
    let mut out = Vec::new();
    while let Ok(frame) = frames.recv() {
        out.clear();
        let sealed = match conn.lock() {
            Ok(mut conn) => {
                let mut sealed = seal(&mut conn, &frame, &mut out);
                while sealed.is_ok() && out.len() < TLS_COALESCE_BYTES {
                    match frames.try_recv() {
                        Ok(frame) => sealed = seal(&mut conn, &frame, &mut out),
                        Err(_) => break,
                    }
                }
                sealed
            }
            Err(_) => Err(poisoned()),
        };
        if sealed.is_err() || socket.write_all(&out).is_err() {
            // The reader sees the broken socket and fails every pending request.
            alive.store(false, Ordering::Release);
            let _ = socket.shutdown(std::net::Shutdown::Both);
            break;
        }
    }
}

/// What the reader knows of the connection's traffic, for expiring requests.
struct Reaper {
    /// When a byte last arrived.
    last_byte: Instant,
    /// When overdue requests were last expired.
    expired_at: Instant,
}

/// Reads exactly `buf`, waking every tick to expire overdue requests.
fn read_full<R: Read>(
    stream: &mut R,
    buf: &mut [u8],
    pending: &Mutex<HashMap<u64, Waiter>>,
    alive: &AtomicBool,
    reaper: &mut Reaper,
) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                filled += n;
                reaper.last_byte = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !alive.load(Ordering::Acquire) {
                    return Err(std::io::ErrorKind::NotConnected.into());
                }
                expire(pending, reaper, alive)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fails the requests whose deadline passed with `Timeout`. When one of them heard nothing at
/// all from the server while it waited (not a byte since it was sent), the connection itself
/// is taken for dead (a host that vanished without a reset looks alive to TCP for many
/// minutes): the error ends the reader, which fails the other requests as disconnected, and
/// the client opens a fresh connection for its retries.
fn expire(
    pending: &Mutex<HashMap<u64, Waiter>>,
    reaper: &mut Reaper,
    alive: &AtomicBool,
) -> std::io::Result<()> {
    let now = Instant::now();
    reaper.expired_at = now;
    let mut silent_ms = None;
    if let Ok(mut p) = pending.lock() {
        let overdue: Vec<u64> = p
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let waited_ms = |w: &Waiter| w.deadline.duration_since(w.sent).as_millis() as u64;
        silent_ms = overdue
            .iter()
            .map(|id| &p[id])
            .filter(|w| w.sent > reaper.last_byte)
            .map(waited_ms)
            .max();
        // Dead before anyone hears of the timeout: a caller that retries at once must find
        // the connection gone (and open a fresh one), not send into it as the reader stops.
        if silent_ms.is_some() {
            alive.store(false, Ordering::Release);
        }
        for id in overdue {
            if let Some(w) = p.remove(&id) {
                let waited = waited_ms(&w);
                let _ = w.tx.send(Err(ClientError::Timeout(waited)));
            }
        }
    }
    match silent_ms {
        Some(ms) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the server sent nothing for {ms} ms while a request waited"),
        )),
        None => Ok(()),
    }
}

fn read_loop<R: Read>(
    mut stream: R,
    pending: Arc<Mutex<HashMap<u64, Waiter>>>,
    alive: Arc<AtomicBool>,
    last_byte: Instant,
) {
    // Overdue requests are also expired between frames, at most once a tick: a connection
    // whose other replies keep arriving never goes quiet for a tick, and a request stuck on
    // the server would otherwise wait for good.
    // (`last_byte` comes from the handshake, not from this thread's start: a request may
    // leave before this thread first runs.)
    let mut reaper = Reaper {
        last_byte,
        expired_at: Instant::now(),
    };
    let reason = loop {
        if reaper.expired_at.elapsed() >= Duration::from_millis(REAPER_TICK_MS) {
            if let Err(e) = expire(&pending, &mut reaper, &alive) {
                break e.to_string();
            }
        }
        let mut header = [0u8; HEADER_BYTES];
        if let Err(e) = read_full(&mut stream, &mut header, &pending, &alive, &mut reaper) {
            break e.to_string();
        }
        let header = match FrameHeader::decode(&header) {
            Ok(h) => h,
            Err(e) => break e.to_string(),
        };
        let mut body = BytesMut::zeroed(header.body_len as usize);
        if let Err(e) = read_full(&mut stream, &mut body, &pending, &alive, &mut reaper) {
            break e.to_string();
        }
        if let Err(e) = header.check_body(&body) {
            break e.to_string();
        }
        let waiter = pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&header.request_id));
        let result = if header.flags & frame::flags::ERROR != 0 {
            let (error, message) = codec::decode_error(&body);
            match error {
                Some(error) => Err(ClientError::Refused { error, message }),
                None => Err(ClientError::BadReply),
            }
        } else {
            Ok(Reply { body })
        };
        match waiter {
            Some(w) => {
                let _ = w.tx.send(result);
            }
            None if header.request_id == 0 => {
                // A connection-level error frame (e.g. the server is closing us).
                if let Err(e) = result {
                    break e.to_string();
                }
            }
            None => {} // its caller timed out already
        }
    };
    alive.store(false, Ordering::Release);
    if let Ok(mut p) = pending.lock() {
        for (_, w) in p.drain() {
            let _ = w.tx.send(Err(ClientError::Disconnected(reason.clone())));
        }
    }
}
