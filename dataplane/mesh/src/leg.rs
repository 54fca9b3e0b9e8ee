//! One end of a proxied connection: a transport connection with optional TLS on top. The
//! engine reads and writes plaintext; with TLS, the leg moves ciphertext between rustls and
//! the transport and keeps what the transport has not taken yet.

use super::net::{Net, NetError};
use std::io::{self, Read, Write};

/// Ciphertext (or plaintext, without TLS) the transport has not taken yet, above which the
/// leg accepts no more bytes to send: backpressure reaches the other side's reads.
const OUT_LIMIT: usize = 64 * 1024;

/// Why a leg failed.
#[derive(Clone, Debug, PartialEq)]
pub enum LegError {
    /// The transport reset.
    Reset,
    /// TLS failed (handshake, certificate, record): rustls's own error, kept typed.
    Tls(rustls::Error),
    /// The transport ended without TLS close_notify: whoever cut it may have cut the data
    /// too (RFC 8446 §6.1), so this is never taken as a clean end.
    Truncated,
}

impl LegError {
    /// The refusal a failure of this leg is counted (and answered) as.
    pub fn refusal(&self) -> crate::engine::Refusal {
        use crate::engine::Refusal;
        match self {
            LegError::Reset => Refusal::UpstreamReset,
            LegError::Truncated => Refusal::Truncated,
            LegError::Tls(e) if crate::tls::identity_mismatch(e).is_some() => Refusal::PeerIdentity,
            LegError::Tls(_) => Refusal::TlsHandshake,
        }
    }
}

pub struct Leg<C> {
    pub conn: C,
    // Boxed: a connection is ~1.2 KiB and a leg moves in and out of sessions and the pool.
    tls: Option<Box<rustls::Connection>>,
    /// Ciphertext read from the transport that rustls has not taken yet.
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// The transport reached end of stream.
    net_eof: bool,
    /// We asked to finish: close_notify (TLS) then FIN once `out` drains.
    finishing: bool,
    shut: bool,
    /// The transport connection completed (always true for accepted ones).
    pub connected: bool,
    /// An upstream connection's place under its service's `circuit_breaker.max_connections`,
    /// given back when the leg is dropped.
    pub held: Option<crate::breaker::Held>,
}

impl<C: Copy + Eq + std::hash::Hash + std::fmt::Debug> Leg<C> {
    pub fn plain(conn: C, connected: bool) -> Self {
        Leg {
            conn,
            tls: None,
            inbuf: Vec::new(),
            out: Vec::new(),
            net_eof: false,
            finishing: false,
            shut: false,
            connected,
            held: None,
        }
    }

    pub fn tls(conn: C, tls: rustls::Connection, connected: bool) -> Self {
        let mut l = Self::plain(conn, connected);
        l.tls = Some(Box::new(tls));
        l
    }

    /// The same leg on another layer's handle for its connection (a `Net` wrapper handing
    /// a connection it wraps to the one beneath, or back).
    pub fn map_conn<D>(self, f: impl FnOnce(C) -> D) -> Leg<D> {
        Leg {
            conn: f(self.conn),
            tls: self.tls,
            inbuf: self.inbuf,
            out: self.out,
            net_eof: self.net_eof,
            finishing: self.finishing,
            shut: self.shut,
            connected: self.connected,
            held: self.held,
        }
    }

    pub fn tls_state(&self) -> Option<&rustls::Connection> {
        self.tls.as_deref()
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Moves what the transport has into rustls, as far as rustls takes it (its plaintext
    /// buffer is bounded; what it refuses waits in `inbuf`). On a TLS error the alert is
    /// queued for sending first.
    fn pump_in<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        scratch: &mut [u8],
    ) -> Result<(), LegError> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        let result = loop {
            // Feed what is waiting first.
            let mut fed = Ok(());
            while !self.inbuf.is_empty() {
                let mut d = &self.inbuf[..];
                let took = tls.read_tls(&mut d).unwrap_or(0);
                self.inbuf.drain(..took);
                fed = tls.process_new_packets().map(|_| ());
                if took == 0 || fed.is_err() {
                    break;
                }
            }
            if let Err(e) = fed.and_then(|_| tls.process_new_packets().map(|_| ())) {
                break Err(LegError::Tls(e));
            }
            if !self.inbuf.is_empty() || !tls.wants_read() || self.net_eof {
                break Ok(());
            }
            match net.read(self.conn, scratch) {
                Ok(0) | Err(NetError::Closed) => {
                    self.net_eof = true;
                    // An empty read tells rustls the transport ended.
                    let _ = tls.read_tls(&mut io::empty());
                }
                Ok(n) => self.inbuf.extend_from_slice(&scratch[..n]),
                Err(NetError::WouldBlock) => break Ok(()),
                Err(NetError::Reset) => break Err(LegError::Reset),
            }
        };
        self.queue_tls_output();
        result
    }

    fn queue_tls_output(&mut self) {
        if let Some(tls) = self.tls.as_deref_mut() {
            while tls.wants_write() {
                if tls.write_tls(&mut self.out).is_err() {
                    break;
                }
            }
        }
    }

    /// Nothing to read, known without reading: the transport saw nothing since a read came
    /// back empty ([`Net::may_have_input`]), no ciphertext waits here and rustls holds no
    /// plaintext nor a peer's close.
    pub fn known_quiet<N: Net<Conn = C>>(&mut self, net: &N) -> bool {
        if net.may_have_input(self.conn) || !self.inbuf.is_empty() || self.net_eof {
            return false;
        }
        match self.tls.as_deref_mut() {
            None => true,
            Some(tls) => tls
                .process_new_packets()
                .is_ok_and(|s| s.plaintext_bytes_to_read() == 0 && !s.peer_has_closed()),
        }
    }

    /// Reads plaintext: `Ok(0)` at end of stream, `Err(WouldBlock)` when nothing is there.
    pub fn read<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        buf: &mut [u8],
        scratch: &mut [u8],
    ) -> Result<Result<usize, NetError>, LegError> {
        if self.tls.is_none() {
            return match net.read(self.conn, buf) {
                Err(NetError::Reset) => Err(LegError::Reset),
                Err(NetError::Closed) => Ok(Ok(0)),
                r => Ok(r),
            };
        }
        self.pump_in(net, scratch)?;
        let net_eof = self.net_eof;
        let tls = self.tls.as_deref_mut().expect("checked above");
        match tls.reader().read(buf) {
            Ok(n) => Ok(Ok(n)),
            // After close_notify rustls reads Ok(0); a transport end without it is a cut: a
            // close-delimited response or a TCP hop would otherwise end "cleanly" wherever
            // an attacker on the path dropped the connection.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if net_eof {
                    Err(LegError::Truncated)
                } else {
                    Ok(Err(NetError::WouldBlock))
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(LegError::Truncated),
            // rustls's reader fails this way only after an error it already reported.
            Err(e) => Err(LegError::Tls(rustls::Error::General(e.to_string()))),
        }
    }

    /// Drives a TLS handshake as far as the bytes allow (reads and flushes).
    pub fn handshake<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        scratch: &mut [u8],
    ) -> Result<(), LegError> {
        self.pump_in(net, scratch)?;
        self.flush(net)
    }

    /// Takes plaintext to send; returns how much was taken (0 under backpressure).
    pub fn write<N: Net<Conn = C>>(&mut self, net: &mut N, data: &[u8]) -> Result<usize, LegError> {
        if self.finishing || data.is_empty() {
            return Ok(0);
        }
        self.flush(net)?;
        if self.out.len() >= OUT_LIMIT || !self.connected {
            return Ok(0);
        }
        let n = match self.tls.as_deref_mut() {
            None => {
                if self.out.is_empty() {
                    match net.write(self.conn, data) {
                        Ok(n) => return Ok(n),
                        Err(NetError::WouldBlock) => return Ok(0),
                        Err(NetError::Reset) => return Err(LegError::Reset),
                        Err(NetError::Closed) => return Err(LegError::Reset),
                    }
                }
                0
            }
            Some(tls) => {
                let room = OUT_LIMIT - self.out.len();
                let n = tls
                    .writer()
                    .write(&data[..data.len().min(room)])
                    .unwrap_or(0);
                self.queue_tls_output();
                n
            }
        };
        self.flush(net)?;
        Ok(n)
    }

    /// Hands queued bytes to the transport; sends the FIN once a finish drained.
    pub fn flush<N: Net<Conn = C>>(&mut self, net: &mut N) -> Result<(), LegError> {
        self.queue_tls_output();
        if !self.connected {
            return Ok(());
        }
        let mut sent = 0;
        while sent < self.out.len() {
            match net.write(self.conn, &self.out[sent..]) {
                Ok(0) | Err(NetError::WouldBlock) => break,
                Ok(n) => sent += n,
                Err(NetError::Reset) | Err(NetError::Closed) => {
                    self.out.clear();
                    return Err(LegError::Reset);
                }
            }
        }
        self.out.drain(..sent);
        if self.finishing && self.out.is_empty() && !self.shut {
            net.shutdown_write(self.conn);
            self.shut = true;
        }
        Ok(())
    }

    /// Ends our direction: close_notify with TLS, then FIN after the queued bytes.
    pub fn finish<N: Net<Conn = C>>(&mut self, net: &mut N) -> Result<(), LegError> {
        if !self.finishing {
            self.finishing = true;
            if let Some(tls) = self.tls.as_deref_mut() {
                tls.send_close_notify();
            }
        }
        self.flush(net)
    }

    /// We asked to finish our direction.
    pub fn is_finishing(&self) -> bool {
        self.finishing
    }

    /// Our direction is finished and everything is handed to the transport.
    pub fn done_sending(&self) -> bool {
        self.shut
    }

    /// Gives back buffers larger than `keep` while they are empty (an idle connection).
    pub fn release_idle(&mut self, keep: usize) {
        for v in [&mut self.inbuf, &mut self.out] {
            if v.is_empty() && v.capacity() > keep {
                *v = Vec::new();
            }
        }
    }

    pub fn pending_out(&self) -> usize {
        self.out.len()
    }
}
