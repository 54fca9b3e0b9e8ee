//! What the HTTP/2 front ([`crate::h2front`]) and back ([`crate::h2back`]) share: the `h2`
//! crate's I/O over in-memory buffers, the chunked coding undone, and the fields that do not
//! cross between HTTP/1.1 and HTTP/2 (RFC 9113 §8.2.2).

use crate::leg::Leg;
use crate::net::{Net, NetError};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tcpstack::Instant;

/// A trailer section is at most this large.
const TRAILERS_MAX: usize = 32 << 10;

#[derive(Default)]
pub(crate) struct IoBufs {
    pub rx: Vec<u8>,
    pub rx_pos: usize,
    pub rx_eof: bool,
    pub tx: Vec<u8>,
    /// Past this many bytes in `tx`, writes wait (`Pending`).
    pub tx_max: usize,
}

/// The `h2` crate's I/O: a pair of in-memory buffers the caller fills from and drains to
/// the transport.
#[derive(Clone)]
pub(crate) struct BufIo(Arc<Mutex<IoBufs>>);

impl BufIo {
    pub fn new(tx_max: usize) -> Self {
        BufIo(Arc::new(Mutex::new(IoBufs {
            tx_max,
            ..IoBufs::default()
        })))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, IoBufs> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl tokio::io::AsyncRead for BufIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut b = self.lock();
        let avail = b.rx.len() - b.rx_pos;
        if avail > 0 {
            let n = avail.min(buf.remaining());
            let at = b.rx_pos;
            buf.put_slice(&b.rx[at..at + n]);
            b.rx_pos += n;
            if b.rx_pos == b.rx.len() {
                // Emptied: an idle connection keeps no burst's buffer.
                if b.rx.capacity() > 16 << 10 {
                    b.rx = Vec::new();
                } else {
                    b.rx.clear();
                }
                b.rx_pos = 0;
            }
            Poll::Ready(Ok(()))
        } else if b.rx_eof {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl tokio::io::AsyncWrite for BufIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut b = self.lock();
        let room = b.tx_max.saturating_sub(b.tx.len());
        if room == 0 {
            return Poll::Pending;
        }
        let n = room.min(data.len());
        b.tx.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size(u64, bool),
    /// The chunk extension or the CR before the size line's LF.
    SizeLine(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailers,
}

pub(crate) fn trailer_map(raw: &[u8]) -> ::http::HeaderMap {
    let mut map = ::http::HeaderMap::new();
    let mut fields = [httparse::EMPTY_HEADER; 64];
    if let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(raw, &mut fields) {
        for f in fields.iter().filter(|f| !connection_specific(f.name)) {
            if let (Ok(k), Ok(v)) = (
                ::http::HeaderName::from_bytes(f.name.as_bytes()),
                ::http::HeaderValue::from_bytes(f.value),
            ) {
                map.append(k, v);
            }
        }
    }
    map
}

/// Fields that do not cross between HTTP/1.1 and HTTP/2 (RFC 9113 §8.2.2); the name in any
/// case (an HTTP/1.1 head's, not lowercased into a new string).
pub(crate) fn connection_specific(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ]
    .iter()
    .any(|c| name.eq_ignore_ascii_case(c))
}

/// Appends a field to a message for the `h2` crate, its name in any case (`HeaderName`
/// lowercases it); `None` when HTTP/2 cannot carry the name or the value. Messages are built
/// this way, not with `http`'s builders, which move the whole message on every field
/// (2.5–2.8k instructions per message, counted with callgrind).
///
/// The fields a gateway makes unique to each request (and a response that echoes them) go out
/// as never-indexed literals (RFC 7541 §6.2.3): indexed, each would evict another entry from
/// the HPACK table and lengthen the encoder's chain of entries with the same name, searched
/// on every later request, and no later request could refer to it.
pub(crate) fn append_field(map: &mut ::http::HeaderMap, name: &str, value: &[u8]) -> Option<()> {
    let n = ::http::HeaderName::from_bytes(name.as_bytes()).ok()?;
    let mut v = ::http::HeaderValue::from_bytes(value).ok()?;
    if matches!(n.as_str(), "x-request-id" | "traceparent") {
        v.set_sensitive(true);
    }
    // Past the map's size limit: refused, as the builders did (`append` would panic).
    map.try_append(n, v).ok()?;
    Some(())
}

/// Takes chunked-coded bytes: how many were used, the body bytes in them, and whether the
/// last chunk and the trailer section ended (RFC 9112 §7.1).
pub(crate) fn dechunk(
    st: &mut Chunk,
    data: &[u8],
    trailers: &mut Vec<u8>,
) -> Result<(usize, Vec<u8>, bool), ()> {
    let mut body = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        match st {
            Chunk::Size(n, any) => {
                if let Some(d) = (b as char).to_digit(16) {
                    *n = n
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(d as u64))
                        .ok_or(())?;
                    *any = true;
                } else if *any {
                    *st = Chunk::SizeLine(*n);
                    continue; // look at this byte again
                } else {
                    return Err(());
                }
            }
            Chunk::SizeLine(n) => {
                if b == b'\n' {
                    *st = if *n == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(*n)
                    };
                }
            }
            Chunk::Data(left) => {
                let n = (*left).min((data.len() - i) as u64) as usize;
                body.extend_from_slice(&data[i..i + n]);
                *left -= n as u64;
                i += n;
                if *left == 0 {
                    *st = Chunk::DataCr;
                }
                continue;
            }
            Chunk::DataCr => {
                if b != b'\r' {
                    return Err(());
                }
                *st = Chunk::DataLf;
            }
            Chunk::DataLf => {
                if b != b'\n' {
                    return Err(());
                }
                *st = Chunk::Size(0, false);
            }
            Chunk::Trailers => {
                trailers.push(b);
                if trailers.len() > TRAILERS_MAX {
                    return Err(());
                }
                if trailers == b"\r\n" {
                    trailers.clear();
                    return Ok((i + 1, body, true));
                }
                if trailers.ends_with(b"\r\n\r\n") {
                    return Ok((i + 1, body, true));
                }
            }
        }
        i += 1;
    }
    Ok((i, body, false))
}

/// A pump reads its connection's transport this much at a time.
pub(crate) const READ_CHUNK: usize = 16 << 10;

/// Reads an HTTP/2 connection's transport: through its TLS for a multiplexed hop.
pub fn read_real<N: Net>(
    inner: &mut N,
    leg: Option<&mut Leg<N::Conn>>,
    c: N::Conn,
    buf: &mut [u8],
) -> Result<usize, NetError> {
    match leg {
        None => inner.read(c, buf),
        Some(leg) => {
            // A TLS error, or an end without close_notify, ends the connection: its
            // streams fail as with a reset.
            leg.read(inner, buf).unwrap_or(Err(NetError::Reset))
        }
    }
}

/// Writes to an HTTP/2 connection's transport: through its TLS for a hop (0 under
/// backpressure).
pub fn write_real<N: Net>(
    inner: &mut N,
    leg: Option<&mut Leg<N::Conn>>,
    c: N::Conn,
    data: &[u8],
) -> Result<usize, NetError> {
    match leg {
        None => inner.write(c, data),
        Some(leg) => leg.write(inner, data).map_err(|_| NetError::Reset),
    }
}

/// Writes as much of `tx` as the transport takes (through TLS for a hop), and removes it
/// from `tx`.
pub fn write_out<N: Net>(
    inner: &mut N,
    mut leg: Option<&mut Leg<N::Conn>>,
    c: N::Conn,
    tx: &mut Vec<u8>,
) {
    while !tx.is_empty() {
        match write_real(inner, leg.as_deref_mut(), c, tx) {
            Ok(n) if n > 0 => {
                tx.drain(..n);
            }
            _ => break,
        }
    }
}

/// Closes an HTTP/2 connection's transport: close_notify first on a hop.
pub fn close_real<N: Net>(inner: &mut N, now: Instant, c: N::Conn, leg: Option<Leg<N::Conn>>) {
    if let Some(mut leg) = leg {
        let _ = leg.finish(inner);
    }
    inner.close(now, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_and_trailers_decode_across_every_split() {
        let coded = b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
        for split in 0..=coded.len() {
            let mut st = Chunk::Size(0, false);
            let mut trailers = Vec::new();
            let (n1, mut body, d1) = dechunk(&mut st, &coded[..split], &mut trailers).unwrap();
            assert_eq!(n1, split);
            assert!(!d1 || split == coded.len());
            let (n2, b2, d2) = dechunk(&mut st, &coded[split..], &mut trailers).unwrap();
            body.extend(b2);
            assert_eq!(n1 + n2, coded.len());
            assert!(d1 || d2, "split {split}");
            assert_eq!(body, b"hello world");
            assert_eq!(trailers, b"grpc-status: 0\r\n\r\n");
        }
    }

    #[test]
    fn bad_chunk_sizes_are_errors() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"ffffffffffffffffff\r\n"] {
            let mut st = Chunk::Size(0, false);
            assert!(dechunk(&mut st, bad, &mut Vec::new()).is_err(), "{bad:?}");
        }
    }
}
