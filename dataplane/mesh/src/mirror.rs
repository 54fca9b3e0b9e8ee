//! Request mirroring (`mirror` on a route): a copy of a request goes to a shadow service and
//! its response is read and thrown away. A mirror is not a session: no client waits on it,
//! it never touches the client's bytes, and it ends at the end of its response, at its
//! deadline, or at its first failure. The engine owns the slab of mirrors; this module is
//! one mirror's state machine over its upstream [`Leg`].

use super::http::{self, BodyFramer, RequestHead};
use super::leg::{Leg, LegError};
use super::net::{Net, NetError};
use std::sync::Arc;
use tcpstack::Instant;

/// Request body kept for a copy; a longer body is not mirrored (`skipped{reason="body"}`).
pub const MIRROR_BODY_CAP: usize = 64 * 1024;

/// Copies in flight per worker; one more is not sent (`skipped{reason="overflow"}`). A
/// shadow service that hangs then costs at most this many connections per worker, each
/// until the route's request timeout.
pub const MAX_MIRRORS: usize = 1024;

/// A response head (and unread framing) the mirror holds at most while discarding.
const HEAD_CAP: usize = 64 * 1024;

/// A copy being collected while the original request's body arrives.
pub(crate) struct Pending {
    pub label: Arc<str>,
    /// The shadow service's index in the tables the request was routed under.
    pub service: u32,
    /// The copy's head, then its body so far.
    pub bytes: Vec<u8>,
    pub head_len: usize,
    /// How long the copy may take from when it is sent (the route's request timeout).
    pub timeout: std::time::Duration,
    /// The original method: a HEAD's response has no body.
    pub head_request: bool,
}

impl Pending {
    /// Keeps `body` for the copy; `false` when it no longer fits (the copy is dropped).
    pub fn keep(&mut self, body: &[u8]) -> bool {
        if self.bytes.len() - self.head_len + body.len() > MIRROR_BODY_CAP {
            return false;
        }
        self.bytes.extend_from_slice(body);
        true
    }
}

/// The head a copy carries: the forwarded head with the host's name suffixed `-shadow` (as
/// Istio marks mirrored traffic, so the shadow's logs tell copies apart), in origin-form, no
/// `Expect` (the body goes whole), and `connection: close`.
pub(crate) fn copy_head(head: &RequestHead, forward: &str, out: &mut Vec<u8>) {
    let mut h = head.clone();
    h.upgrade = None;
    h.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("expect"));
    let host = head.host().map(shadow_host);
    h.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
    // An absolute-form target names the authority too (RFC 9112 §3.2.2): send the path only.
    let target = match forward.split_once("://") {
        Some((_, rest)) => match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            _ => "/",
        },
        None => forward,
    };
    let mut add: Vec<(&str, &[u8])> = Vec::with_capacity(2);
    if let Some(host) = &host {
        add.push(("host", host.as_bytes()));
    }
    add.push(("connection", b"close"));
    http::write_forwarded_request(&h, target, out, &add);
}

/// `web.test:8080` → `web.test-shadow:8080`.
fn shadow_host(authority: &str) -> String {
    // A port follows the last `:` unless it sits inside an IPv6 literal's brackets.
    match authority.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[derive(Debug)]
enum Resp {
    Head,
    Body(BodyFramer),
}

/// Why a mirror ended early (counted as a failure; nobody else sees it).
#[derive(Debug, PartialEq)]
pub(crate) enum MirrorError {
    Leg(LegError),
    /// The response was malformed, too big a head, or cut short.
    BadResponse,
    /// The route's request timeout passed first.
    TimedOut,
    /// The worker stopped (a drain's end): not counted as a failure.
    Stopped,
}

impl From<LegError> for MirrorError {
    fn from(e: LegError) -> Self {
        MirrorError::Leg(e)
    }
}

/// One copy in flight.
pub(crate) struct Mirror<C> {
    pub up: Leg<C>,
    /// The preamble (over a mesh hop) and the request still to hand to the leg.
    out: Vec<u8>,
    written: usize,
    /// Response bytes read but not yet consumed by the head parser or the framer.
    inbuf: Vec<u8>,
    resp: Resp,
    head_request: bool,
    pub deadline: Instant,
    pub label: Arc<str>,
    /// (service, endpoint, balancer generation) the balancer counts outstanding.
    pub lb: (u32, u32, u64),
    pub started: Instant,
    /// Tells this mirror's timer entry from those of an earlier mirror in the slot.
    pub epoch: u64,
}

impl<C: Copy + Eq + std::hash::Hash + std::fmt::Debug> Mirror<C> {
    pub fn new(
        up: Leg<C>,
        out: Vec<u8>,
        p: &Pending,
        now: Instant,
        lb: (u32, u32, u64),
        epoch: u64,
    ) -> Self {
        Mirror {
            up,
            out,
            written: 0,
            inbuf: Vec::new(),
            resp: Resp::Head,
            head_request: p.head_request,
            deadline: now + p.timeout,
            label: p.label.clone(),
            lb,
            started: now,
            epoch,
        }
    }

    /// Moves what can move. `Ok(true)`: the response ended (read whole and discarded).
    pub fn step<N: Net<Conn = C>>(
        &mut self,
        net: &mut N,
        buf: &mut [u8],
    ) -> Result<bool, MirrorError> {
        if !self.up.connected {
            return Ok(false);
        }
        self.up.handshake(net)?;
        if self.up.is_handshaking() {
            return Ok(false);
        }
        while self.written < self.out.len() {
            let n = self.up.write(net, &self.out[self.written..])?;
            if n == 0 {
                break;
            }
            self.written += n;
        }
        if self.written == self.out.len() && !self.out.is_empty() {
            self.out = Vec::new();
            self.written = 0;
        }
        loop {
            match self.up.read(net, buf)? {
                Ok(0) | Err(NetError::Closed) => return self.at_eof(),
                Ok(n) => {
                    if self.inbuf.len() + n > HEAD_CAP {
                        // Only a head or a chunk line waits here; either is this big only
                        // when the shadow misbehaves.
                        return Err(MirrorError::BadResponse);
                    }
                    self.inbuf.extend_from_slice(&buf[..n]);
                    if self.consume()? {
                        return Ok(true);
                    }
                }
                Err(NetError::WouldBlock) => return Ok(false),
                Err(NetError::Reset) => return Err(MirrorError::Leg(LegError::Reset)),
            }
        }
    }

    /// Parses and discards what `inbuf` holds; `Ok(true)` once the final response is whole.
    fn consume(&mut self) -> Result<bool, MirrorError> {
        loop {
            match &mut self.resp {
                Resp::Head => {
                    let method = if self.head_request { "HEAD" } else { "GET" };
                    match http::parse_response(&self.inbuf, &http::Limits::default(), method) {
                        Err(_) => return Err(MirrorError::BadResponse),
                        Ok(None) => return Ok(false),
                        Ok(Some((head, len))) => {
                            self.inbuf.drain(..len);
                            if !head.is_interim() {
                                self.resp = Resp::Body(BodyFramer::new(head.body));
                            }
                        }
                    }
                }
                Resp::Body(framer) => {
                    let a = framer
                        .advance(&self.inbuf)
                        .map_err(|_| MirrorError::BadResponse)?;
                    self.inbuf.drain(..a.body_bytes);
                    return Ok(a.done);
                }
            }
        }
    }

    fn at_eof(&mut self) -> Result<bool, MirrorError> {
        match &self.resp {
            // A close-delimited body ends here; anything else was cut.
            Resp::Body(f) if self.inbuf.is_empty() && f.eof().is_ok() => Ok(true),
            _ => Err(MirrorError::BadResponse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("web.test"), "web.test-shadow");
        assert_eq!(shadow_host("web.test:8080"), "web.test-shadow:8080");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
    }

    #[test]
    fn a_copy_is_origin_form_without_expect_and_closes() {
        let raw = b"PUT http://web.test/a?b HTTP/1.1\r\nHost: web.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\nx-a: 1\r\n\r\n";
        let (head, _) = http::parse_request(raw, &http::Limits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        copy_head(&head, "http://web.test/a?b", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("PUT /a?b HTTP/1.1\r\n"), "{s}");
        assert!(s.contains("host: web.test-shadow\r\n"), "{s}");
        assert!(s.contains("connection: close\r\n"), "{s}");
        assert!(s.contains("Content-Length: 3\r\n"), "{s}");
        assert!(!s.to_ascii_lowercase().contains("expect"), "{s}");
        assert_eq!(s.matches("ost:").count(), 1, "{s}");

        let mut out = Vec::new();
        copy_head(&head, "http://web.test", &mut out);
        assert!(out.starts_with(b"PUT / HTTP/1.1\r\n"));
    }

    #[test]
    fn a_body_over_the_cap_drops_the_copy() {
        let mut p = Pending {
            label: Arc::from("r"),
            service: 0,
            bytes: b"HEAD".to_vec(),
            head_len: 4,
            timeout: std::time::Duration::from_secs(1),
            head_request: false,
        };
        assert!(p.keep(&vec![0; MIRROR_BODY_CAP - 1]));
        assert!(p.keep(b"x"));
        assert!(!p.keep(b"y"));
        assert_eq!(p.bytes.len(), 4 + MIRROR_BODY_CAP);
    }
}
