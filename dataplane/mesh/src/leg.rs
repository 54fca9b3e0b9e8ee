//! One end of a proxied connection: a transport connection with optional TLS on top. The
//! engine reads and writes plaintext; with TLS, rustls reads ciphertext from the transport's
//! receive buffer and writes records into its send buffer, keeping what it cannot hand over.

use super::net::{Net, NetError};
use std::io::{self, Read, Write};

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
    // rustls reads ciphertext straight from the transport and writes its records straight
    // into it ([`NetIo`]); what the transport does not take yet stays in rustls, whose
    // buffer limit (64 KiB by default) is the backpressure on `write`.
    tls: Option<Box<rustls::Connection>>,
    /// The transport reached end of stream.
    net_eof: bool,
    /// We asked to finish: close_notify (TLS) then FIN once the records left.
    finishing: bool,
    shut: bool,
    /// The transport connection completed (always true for accepted ones).
    pub connected: bool,
    /// An upstream connection's place under its service's `circuit_breaker.max_connections`,
    /// given back when the leg is dropped.
    pub held: Option<crate::breaker::Held>,
}

/// The transport as rustls's `io::Read` and `io::Write`, so ciphertext moves between
/// rustls's buffers and the transport's without a copy in between. A reset is kept in
/// `reset` (rustls sees an I/O error); the transport's end reads as `Ok(0)`.
struct NetIo<'a, N: Net> {
    net: &'a mut N,
    conn: N::Conn,
    reset: bool,
}

impl<N: Net> Read for NetIo<'_, N> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.net.read(self.conn, buf) {
            Ok(n) => Ok(n),
            Err(NetError::Closed) => Ok(0),
            Err(NetError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(NetError::Reset) => {
                self.reset = true;
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
    }
}

impl<N: Net> Write for NetIo<'_, N> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.net.write(self.conn, data) {
            Ok(0) | Err(NetError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(NetError::Reset) | Err(NetError::Closed) => {
                self.reset = true;
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<C: Copy + Eq + std::hash::Hash + std::fmt::Debug> Leg<C> {
    pub fn plain(conn: C, connected: bool) -> Self {
        Leg {
            conn,
            tls: None,
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

    /// Moves what the transport has into rustls, as far as rustls takes it: rustls reads
    /// only while it wants to (its plaintext buffer is bounded), so what it does not want
    /// waits in the transport's receive buffer and the peer's window closes. On a TLS error
    /// the alert stays queued in rustls for the next `flush`.
    fn pump_in<N: Net<Conn = C>>(&mut self, net: &mut N) -> Result<(), LegError> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Ok(());
        };
        loop {
            tls.process_new_packets().map_err(LegError::Tls)?;
            if self.net_eof {
                return Ok(());
            }
            if !tls.wants_read() {
                // In the handshake rustls reads no further while it has records to send (its
                // ChangeCipherSpec after ServerHello, a flight of its own): send them and read
                // on, or the rest of the peer's flight waits in the transport, which signals
                // no new Readable for bytes it already has.
                if !(tls.is_handshaking() && tls.wants_write() && self.connected) {
                    return Ok(());
                }
                send_records(tls, net, self.conn)?;
                if !tls.wants_read() {
                    return Ok(());
                }
            }
            let mut io = NetIo {
                net: &mut *net,
                conn: self.conn,
                reset: false,
            };
            match tls.read_tls(&mut io) {
                // The transport ended; rustls saw the empty read and knows it too.
                Ok(0) => self.net_eof = true,
                Ok(_) => {}
                Err(_) if io.reset => return Err(LegError::Reset),
                // WouldBlock; or rustls refusing a read (its buffers full, which `wants_read`
                // rules out): nothing more to take now.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Nothing to read, known without reading: the transport saw nothing since a read came
    /// back empty ([`Net::may_have_input`]) and rustls holds no plaintext nor a peer's close.
    pub fn known_quiet<N: Net<Conn = C>>(&mut self, net: &N) -> bool {
        if net.may_have_input(self.conn) || self.net_eof {
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
    ) -> Result<Result<usize, NetError>, LegError> {
        if self.tls.is_none() {
            return match net.read(self.conn, buf) {
                Err(NetError::Reset) => Err(LegError::Reset),
                Err(NetError::Closed) => Ok(Ok(0)),
                r => Ok(r),
            };
        }
        let pumped = self.pump_in(net);
        // Whatever reading made rustls queue (an alert, a key update's answer, tickets)
        // leaves now. A reset found sending is reported once the plaintext before it is
        // read: a kernel socket reports its error once, and the next read sees an end.
        let flushed = self.flush(net);
        pumped?;
        let net_eof = self.net_eof;
        let tls = self.tls.as_deref_mut().expect("checked above");
        match tls.reader().read(buf) {
            Ok(n) => Ok(Ok(n)),
            // After close_notify rustls reads Ok(0); a transport end without it is a cut: a
            // close-delimited response or a TCP hop would otherwise end "cleanly" wherever
            // an attacker on the path dropped the connection.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                flushed?;
                if net_eof {
                    Err(LegError::Truncated)
                } else {
                    Ok(Err(NetError::WouldBlock))
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                flushed?;
                Err(LegError::Truncated)
            }
            // rustls's reader fails this way only after an error it already reported.
            Err(e) => Err(LegError::Tls(rustls::Error::General(e.to_string()))),
        }
    }

    /// Drives a TLS handshake as far as the bytes allow (reads and flushes).
    pub fn handshake<N: Net<Conn = C>>(&mut self, net: &mut N) -> Result<(), LegError> {
        let pumped = self.pump_in(net);
        // The alert for a failed handshake goes out before the error is reported.
        let flushed = self.flush(net);
        pumped?;
        flushed
    }

    /// Takes plaintext to send; returns how much was taken (0 under backpressure).
    pub fn write<N: Net<Conn = C>>(&mut self, net: &mut N, data: &[u8]) -> Result<usize, LegError> {
        if self.finishing || data.is_empty() || !self.connected {
            return Ok(0);
        }
        // Records waiting in rustls go first: rustls refuses plaintext while they fill its
        // limit, and a refusal is only backpressure if the transport refused them too (then
        // its `Writable` comes back here).
        self.flush(net)?;
        let n = match self.tls.as_deref_mut() {
            None => {
                return match net.write(self.conn, data) {
                    Ok(n) => Ok(n),
                    Err(NetError::WouldBlock) => Ok(0),
                    Err(NetError::Reset) | Err(NetError::Closed) => Err(LegError::Reset),
                };
            }
            // rustls encrypts what its buffer limit allows; its records go out below.
            Some(tls) => tls.writer().write(data).unwrap_or(0),
        };
        self.flush(net)?;
        Ok(n)
    }

    /// Hands queued records to the transport; sends the FIN once a finish drained.
    pub fn flush<N: Net<Conn = C>>(&mut self, net: &mut N) -> Result<(), LegError> {
        if !self.connected {
            return Ok(());
        }
        if let Some(tls) = self.tls.as_deref_mut() {
            send_records(tls, net, self.conn)?;
        }
        if self.finishing && self.pending_out() == 0 && !self.shut {
            net.shutdown_write(self.conn);
            self.shut = true;
        }
        Ok(())
    }

    /// Ends our direction: close_notify with TLS, then FIN after the queued records.
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

    /// Non-zero while records wait in rustls for the transport to take them (a count, not
    /// their size: rustls does not say).
    pub fn pending_out(&self) -> usize {
        self.tls
            .as_deref()
            .map_or(0, |t| usize::from(t.wants_write()))
    }
}

/// Hands rustls's records to the transport until it takes no more.
fn send_records<N: Net>(
    tls: &mut rustls::Connection,
    net: &mut N,
    conn: N::Conn,
) -> Result<(), LegError> {
    while tls.wants_write() {
        let mut io = NetIo {
            net: &mut *net,
            conn,
            reset: false,
        };
        match tls.write_tls(&mut io) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) if io.reset => return Err(LegError::Reset),
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memnet::{MemConn, MemNet};
    use crate::test_support::*;
    use crate::tls::{client_config, server_config, sni_for_service};
    use rustls::{ClientConnection, ServerConnection};
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// A client leg (with `a`'s identity, expecting gw-b) on a connected in-memory
    /// connection, and the server's rustls end (with `b`'s), before the handshake.
    fn connected(root: &Ca, a: &Leaf, b: &Leaf) -> (MemNet, Leg<MemConn>, ServerConnection) {
        let t = trust(&[root]);
        let cc = client_config(&identity(GW_A, a), &t, GW_B).unwrap();
        let sc = server_config(&identity(GW_B, b), &t).unwrap();
        let mut net = MemNet::new(Ipv4Addr::new(10, 0, 0, 1));
        let c = net
            .connect(
                tcpstack::Instant::from_millis(0),
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 443),
            )
            .unwrap();
        net.peer_accept(c);
        let tls = ClientConnection::new(cc, sni_for_service("reviews").unwrap()).unwrap();
        let leg = Leg::tls(c, tls.into(), true);
        (net, leg, ServerConnection::new(sc).unwrap())
    }

    /// A client leg on a connected in-memory connection and the server's rustls end, with
    /// the handshake done.
    fn pair() -> (MemNet, Leg<MemConn>, ServerConnection) {
        let root = ca("mesh root");
        let (a, b) = (leaf(&root, GW_A), leaf(&root, GW_B));
        let (mut net, mut leg, mut s) = connected(&root, &a, &b);
        let c = leg.conn;
        for _ in 0..16 {
            leg.handshake(&mut net).unwrap();
            to_server(&mut net, c, &mut s);
            from_server(&mut net, c, &mut s);
        }
        assert!(!leg.is_handshaking() && !s.is_handshaking());
        (net, leg, s)
    }

    /// What the leg wrote, into the server; returns the plaintext it decrypted.
    fn to_server(net: &mut MemNet, c: MemConn, s: &mut ServerConnection) -> Vec<u8> {
        let wire = net.peer_take(c);
        let mut rd = &wire[..];
        let mut plain = Vec::new();
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
            let _ = s.reader().read_to_end(&mut plain);
        }
        plain
    }

    fn from_server(net: &mut MemNet, c: MemConn, s: &mut ServerConnection) {
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        net.peer_send(c, &wire);
    }

    /// A peer that never reads: the leg takes a bounded amount (rustls's 64 KiB limit on
    /// records waiting, beyond what the transport holds), then every byte arrives in order
    /// once the peer reads.
    #[test]
    fn a_peer_that_never_reads_bounds_what_the_leg_takes_and_nothing_is_lost() {
        let (mut net, mut leg, mut s) = pair();
        net.window = 4096;
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut sent = 0;
        loop {
            let n = leg.write(&mut net, &data[sent..]).unwrap();
            if n == 0 {
                break;
            }
            sent += n;
        }
        assert!(sent > 0 && sent <= 64 * 1024 + 4096, "took {sent} bytes");
        assert!(leg.pending_out() > 0, "records wait in rustls");
        let mut got = Vec::new();
        while got.len() < data.len() {
            got.extend(to_server(&mut net, leg.conn, &mut s));
            if sent == data.len() {
                leg.flush(&mut net).unwrap();
                continue;
            }
            // The transport has room again: a refusal now would be a stall (no `Writable`
            // comes for a transport that refused nothing).
            let n = leg.write(&mut net, &data[sent..]).unwrap();
            assert!(n > 0, "the transport is empty, yet the leg refused bytes");
            sent += n;
            while sent < data.len() {
                match leg.write(&mut net, &data[sent..]).unwrap() {
                    0 => break,
                    n => sent += n,
                }
            }
        }
        assert!(got == data, "not byte-exact");
        assert_eq!(leg.pending_out(), 0);
    }

    /// Records split across transport reads and several records in one read all arrive;
    /// a transport end after close_notify is a clean end, without it a truncation.
    #[test]
    fn split_records_arrive_whole_and_only_close_notify_ends_cleanly() {
        for clean in [true, false] {
            let (mut net, mut leg, mut s) = pair();
            let data: Vec<u8> = (0..60_000u32).map(|i| (i % 253) as u8).collect();
            s.writer().write_all(&data).unwrap();
            if clean {
                s.send_close_notify();
            }
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 3000];
            // Odd-sized pieces: records straddle reads.
            for piece in wire.chunks(977) {
                net.peer_send(leg.conn, piece);
                while let Ok(n) = leg.read(&mut net, &mut buf).unwrap() {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
            net.peer_shutdown(leg.conn);
            let end = loop {
                match leg.read(&mut net, &mut buf) {
                    Ok(Ok(0)) => break Ok(()),
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                    Ok(Err(e)) => panic!("{e:?} after the end"),
                    Err(e) => break Err(e),
                }
            };
            assert!(got == data, "not byte-exact");
            if clean {
                assert_eq!(end, Ok(()));
            } else {
                assert_eq!(end, Err(LegError::Truncated));
            }
        }
    }

    /// A server flight larger than one of rustls's 4 KiB reads (here a certificate with 400
    /// extra names) arriving in one piece completes the handshake in one call, as the engine
    /// makes one per Readable: rustls stops reading while it has records to send (its
    /// ChangeCipherSpec), and nothing would call again for the bytes left behind.
    #[test]
    fn a_large_server_flight_is_read_whole_in_one_handshake_call() {
        let root = ca("mesh root");
        let a = leaf(&root, GW_A);
        let b = {
            let key = rcgen::KeyPair::generate().unwrap();
            let names: Vec<String> = (0..400).map(|i| format!("host-{i}.padding.test")).collect();
            let mut p = rcgen::CertificateParams::new(names).unwrap();
            p.subject_alt_names
                .push(rcgen::SanType::URI(GW_B.try_into().unwrap()));
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2100, 1, 1);
            Leaf {
                cert: p.signed_by(&key, &root.cert, &root.key).unwrap(),
                key,
            }
        };
        let (mut net, mut leg, mut s) = connected(&root, &a, &b);
        let c = leg.conn;
        leg.handshake(&mut net).unwrap();
        to_server(&mut net, c, &mut s);
        let mut flight = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut flight).unwrap();
        }
        assert!(flight.len() > 8192, "flight of {} bytes", flight.len());
        net.peer_send(c, &flight);
        leg.handshake(&mut net).unwrap();
        assert!(
            !leg.is_handshaking(),
            "the client read only part of the flight"
        );
        to_server(&mut net, c, &mut s);
        assert!(!s.is_handshaking());
    }

    /// A reset is reported as such by reads, writes and flushes.
    #[test]
    fn a_reset_transport_fails_the_leg() {
        let (mut net, mut leg, _s) = pair();
        net.peer_reset(leg.conn);
        assert_eq!(leg.write(&mut net, b"x"), Err(LegError::Reset));
        assert_eq!(leg.flush(&mut net), Err(LegError::Reset));
        assert_eq!(leg.read(&mut net, &mut [0u8; 16]), Err(LegError::Reset));
    }
}
