//! The client's byte stream: plain TCP, or TLS (rustls) over TCP.
//!
//! `Transport` is the blocking stream one thread uses end to end (handshakes, subscriptions).
//! A pipelined `Connection` over TLS splits it instead: one `rustls::ClientConnection` under a
//! mutex, a reader thread that reads raw bytes from its own socket clone *without* the lock
//! and then locks only to decrypt (`TlsReader`), and a writer thread that locks only to
//! encrypt into a buffer (`seal`) and writes that buffer after releasing the lock. No socket
//! call is ever made under the lock, so a server that waits for us to read cannot deadlock us,
//! and only the writer thread writes the socket, so TLS records leave in the order they were
//! made.

use super::{ClientConfig, ClientError};
use crate::tls::ClientTls;
use bytes::BytesMut;
use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// Connects (each resolved address within `timeout_ms`), sets TCP_NODELAY and a read
    /// timeout of `timeout_ms`, and completes the TLS handshake when `config.tls` is set
    /// (bounded by the same timeout).
    pub(super) fn open(config: &ClientConfig) -> Result<Transport, ClientError> {
        let connect_error = |e: io::Error| ClientError::Connect {
            addr: config.addr.clone(),
            reason: e.to_string(),
        };
        let timeout_ms = Duration::from_millis(config.timeout_ms.max(1));
        let mut stream = connect(&config.addr, timeout_ms).map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let timeout = Some(timeout_ms);
        stream.set_read_timeout(timeout).map_err(connect_error)?;
        let Some(tls) = &config.tls else {
            return Ok(Transport::Plain(stream));
        };
        stream.set_write_timeout(timeout).map_err(connect_error)?;
        let conn = tls_handshake(&mut stream, tls, &config.addr)?;
        stream.set_write_timeout(None).map_err(connect_error)?;
        Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
            conn, stream,
        ))))
    }

    pub(super) fn socket(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => &s.sock,
        }
    }
}

/// `TcpStream::connect` with a bound: a host that drops packets (powered off, firewalled)
/// would otherwise hold the caller in the kernel's SYN retries for about two minutes.
fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "the address resolved to nothing",
    );
    for resolved in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&resolved, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// Runs the TLS handshake on a connected socket (blocking, within its timeouts).
fn tls_handshake(
    stream: &mut TcpStream,
    tls: &ClientTls,
    addr: &str,
) -> Result<ClientConnection, ClientError> {
    let mut conn =
        ClientConnection::new(tls.config.clone(), tls.server_name.clone()).map_err(|e| {
            ClientError::Tls {
                addr: addr.to_string(),
                reason: e.to_string(),
            }
        })?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(stream) {
            return Err(handshake_error(addr, e));
        }
    }
    Ok(conn)
}

/// A TLS failure (bad certificate, a peer that does not speak TLS) is permanent; a socket
/// error or a close during the handshake is a connection error like any other (retried).
fn handshake_error(addr: &str, e: io::Error) -> ClientError {
    let Some(tls_error) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return ClientError::Connect {
            addr: addr.to_string(),
            reason: format!("during the TLS handshake: {e}"),
        };
    };
    let hint = match tls_error {
        rustls::Error::InvalidMessage(_) => " (does this port speak TLS?)",
        _ => "",
    };
    ClientError::Tls {
        addr: addr.to_string(),
        reason: format!("handshake failed: {tls_error}{hint}"),
    }
}

/// Ciphertext read from the socket and not yet handed to rustls.
const RAW_BYTES: usize = 32 * 1024;

/// The reader side of a split TLS connection (see the module doc).
pub(super) struct TlsReader {
    socket: TcpStream,
    conn: Arc<Mutex<ClientConnection>>,
    raw: Box<[u8]>,
    start: usize,
    end: usize,
    /// To ask the writer thread to send what rustls queued while reading (an alert, a key
    /// update): an empty frame. Weak, so it does not keep the writer's queue open.
    wake_writer: flume::WeakSender<BytesMut>,
}

impl TlsReader {
    pub(super) fn new(
        socket: TcpStream,
        conn: Arc<Mutex<ClientConnection>>,
        wake_writer: flume::WeakSender<BytesMut>,
    ) -> TlsReader {
        TlsReader {
            socket,
            conn,
            raw: vec![0u8; RAW_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            wake_writer,
        }
    }
}

impl Read for TlsReader {
    /// Plaintext, like a socket read: the socket's read timeout comes back as `WouldBlock` or
    /// `TimedOut` with nothing lost; `Ok(0)` at the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            {
                let mut conn = self.conn.lock().map_err(|_| poisoned())?;
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let mut pending = &self.raw[self.start..self.end];
                    self.start += conn.read_tls(&mut pending)?;
                    conn.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    if conn.wants_write() {
                        if let Some(writer) = self.wake_writer.upgrade() {
                            // A full queue means the writer will flush soon anyway.
                            let _ = writer.try_send(BytesMut::new());
                        }
                    }
                    continue;
                }
            }
            // Nothing buffered: wait for the socket, without the lock.
            let n = self.socket.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            self.start = 0;
            self.end = n;
        }
    }
}

/// Encrypts `plain` into `out` (appended), with whatever else rustls had queued before it.
pub(super) fn seal(
    conn: &mut ClientConnection,
    mut plain: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        while conn.wants_write() {
            conn.write_tls(out)?;
        }
        if plain.is_empty() {
            return Ok(());
        }
        // Accepts at least one byte: its outgoing buffer was just emptied.
        let n = conn.writer().write(plain)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        plain = &plain[n..];
    }
}

pub(super) fn poisoned() -> io::Error {
    io::Error::other("TLS state poisoned")
}
