//! Reading and writing whole frames of the node link: the client protocol's 32-byte header
//! (`crate::frame`) with the link's own body limit, decided per read (a connection that has
//! not completed its handshake gets only a handshake-sized limit, so an unauthenticated peer
//! cannot make us allocate 32 MiB).

use crate::frame::{FrameError, FrameHeader, HEADER_BYTES};
use bytes::BytesMut;
use futures::future::Either;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use std::pin::pin;
use std::time::Duration;

/// Why a link connection ends.
#[derive(Debug, thiserror::Error)]
pub enum LinkIoError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("message: {0}")]
    Decode(#[from] super::wire::DecodeError),
    #[error("{0}")]
    Protocol(String),
    /// The peer answered the handshake with an error frame.
    #[error("handshake refused: {error:?} {message}")]
    Refused {
        error: Option<crate::operation::ProtocolError>,
        message: String,
    },
}

/// Reads one frame whose body may be up to `body_bytes_max` bytes; checks both checksums.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    body_bytes_max: usize,
) -> Result<(FrameHeader, BytesMut), LinkIoError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    reader.read_exact(&mut header_bytes).await?;
    let header = FrameHeader::decode_limited(&header_bytes, body_bytes_max)?;
    let mut body = BytesMut::zeroed(header.body_len as usize);
    reader.read_exact(&mut body).await?;
    header.check_body(&body)?;
    Ok((header, body))
}

/// Writes and flushes `bytes`, or fails if that takes longer than `stall`: a peer that stops
/// reading must not hold a connection (and the queues behind it) forever.
pub async fn write_within<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    let timer = pin!(glommio::timer::sleep(stall));
    match futures::future::select(pin!(write), timer).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("a write stalled for {stall:?}"),
        )),
    }
}
