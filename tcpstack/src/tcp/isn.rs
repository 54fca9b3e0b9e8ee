//! Keyed initial sequence numbers (RFC 6528), SYN cookies and ephemeral port offsets
//! (RFC 6056 §3.3.3), all from one injected secret.

use super::seq::Seq;
use crate::time::Instant;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;
use std::net::SocketAddrV4;

#[derive(Clone)]
pub struct Secrets {
    key: [u8; 16],
}

impl core::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// The MSS values a cookie can carry (3 bits), like Linux's table.
const COOKIE_MSS: [u16; 8] = [536, 1220, 1300, 1360, 1400, 1440, 1460, 8960];
/// A cookie's time counter ticks every 64 s; cookies from the current and previous tick are valid.
const COOKIE_TICK_SECS: u64 = 64;

impl Secrets {
    pub fn new(key: [u8; 16]) -> Self {
        Secrets { key }
    }

    fn hash(&self, domain: u8, local: SocketAddrV4, remote: SocketAddrV4, extra: u64) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write_u8(domain);
        h.write(&local.ip().octets());
        h.write_u16(local.port());
        h.write(&remote.ip().octets());
        h.write_u16(remote.port());
        h.write_u64(extra);
        h.finish()
    }

    /// RFC 6528 §3: ISN = M + F(4-tuple, secret), M a 4 µs clock.
    pub fn isn(&self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4) -> Seq {
        let m = (now.as_micros() / 4) as u32;
        Seq(m.wrapping_add(self.hash(0, local, remote, 0) as u32))
    }

    /// A per-connection timestamp offset (RFC 7323 §5.4 recommends randomizing it).
    pub fn ts_offset(&self, local: SocketAddrV4, remote: SocketAddrV4) -> u32 {
        self.hash(1, local, remote, 0) as u32
    }

    /// Where an ephemeral port search starts for this destination.
    pub fn port_offset(&self, local: std::net::Ipv4Addr, remote: SocketAddrV4) -> u32 {
        self.hash(2, SocketAddrV4::new(local, 0), remote, 0) as u32
    }

    /// A SYN cookie: 5 bits of time, 3 bits of MSS index, 24 bits of keyed hash over the
    /// 4-tuple, time, the peer's ISN and `opts` (the [`CookieOpts`] carried in the
    /// timestamp, so that a peer cannot change them, or 0 without timestamps).
    pub fn cookie(
        &self,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        peer_isn: Seq,
        mss: u16,
        opts: u32,
    ) -> Seq {
        let t = now.as_micros() / 1_000_000 / COOKIE_TICK_SECS;
        let idx = COOKIE_MSS.iter().rposition(|&m| m <= mss).unwrap_or(0) as u32;
        Seq(self.cookie_with(t, idx, local, remote, peer_isn, opts))
    }

    fn cookie_with(
        &self,
        t: u64,
        idx: u32,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        peer_isn: Seq,
        opts: u32,
    ) -> u32 {
        let t5 = (t & 0x1f) as u32;
        let extra = (t << 32) | peer_isn.0 as u64;
        let extra = extra ^ ((opts as u64) << 48).rotate_left(7);
        let h = self.hash(3, local, remote, extra) as u32 & 0x00ff_ffff;
        (t5 << 27) | (idx << 24) | h
    }

    /// Checks a cookie returned as `ack - 1`, with the `opts` the ACK's timestamp echoes;
    /// on success returns the MSS it carried.
    pub fn check_cookie(
        &self,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        peer_isn: Seq,
        cookie: Seq,
        opts: u32,
    ) -> Option<u16> {
        let now_t = now.as_micros() / 1_000_000 / COOKIE_TICK_SECS;
        let idx = (cookie.0 >> 24) & 0x7;
        for t in [now_t, now_t.wrapping_sub(1)] {
            if self.cookie_with(t, idx, local, remote, peer_isn, opts) == cookie.0 {
                return Some(COOKIE_MSS[idx as usize]);
            }
        }
        None
    }
}

/// Options a SYN cookie connection keeps, carried as Linux does in the low 6 bits of the
/// SYN-ACK's timestamp value, which the peer echoes in its ACK: the peer's window scale (4
/// bits, 15 for none) and SACK-permitted (bit 4). Only with timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieOpts {
    pub window_scale: Option<u8>,
    pub sack: bool,
}

impl CookieOpts {
    pub const MASK: u32 = 0x3f;

    /// The 6 bits for the timestamp.
    pub fn bits(self) -> u32 {
        let ws = self.window_scale.map_or(0xf, |s| s.min(14) as u32);
        ws | (self.sack as u32) << 4
    }

    pub fn from_bits(b: u32) -> Self {
        let ws = b & 0xf;
        CookieOpts {
            window_scale: (ws != 0xf).then_some(ws.min(14) as u8),
            sack: b & 0x10 != 0,
        }
    }

    /// What the cookie's hash covers: the bits, marked as present.
    pub fn hash_input(bits: u32) -> u32 {
        0x100 | (bits & Self::MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn cookies_validate_only_for_their_tuple_and_time() {
        let s = Secrets::new([7; 16]);
        let l = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        let r = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000);
        let now = Instant::from_millis(1_000_000);
        let c = s.cookie(now, l, r, Seq(1234), 1460, 0);
        assert_eq!(s.check_cookie(now, l, r, Seq(1234), c, 0), Some(1460));
        assert_eq!(
            s.check_cookie(
                now + std::time::Duration::from_secs(64),
                l,
                r,
                Seq(1234),
                c,
                0
            ),
            Some(1460)
        );
        // Options in the cookie: the echoed bits must be the ones it was made with.
        let o = CookieOpts {
            window_scale: Some(7),
            sack: true,
        };
        assert_eq!(CookieOpts::from_bits(o.bits()), o);
        let none = CookieOpts {
            window_scale: None,
            sack: false,
        };
        assert_eq!(CookieOpts::from_bits(none.bits()), none);
        let oi = CookieOpts::hash_input(o.bits());
        let co = s.cookie(now, l, r, Seq(1234), 1460, oi);
        assert_eq!(s.check_cookie(now, l, r, Seq(1234), co, oi), Some(1460));
        assert_eq!(s.check_cookie(now, l, r, Seq(1234), co, 0), None);
        let tampered = CookieOpts::hash_input(o.bits() ^ 0x10);
        assert_eq!(s.check_cookie(now, l, r, Seq(1234), co, tampered), None);
        assert_eq!(
            s.check_cookie(
                now + std::time::Duration::from_secs(200),
                l,
                r,
                Seq(1234),
                c,
                0
            ),
            None
        );
        assert_eq!(s.check_cookie(now, l, r, Seq(1235), c, 0), None);
        let r2 = SocketAddrV4::new(*r.ip(), 40001);
        assert_eq!(s.check_cookie(now, l, r2, Seq(1234), c, 0), None);
        assert_eq!(s.check_cookie(now, l, r, Seq(1234), c + 1, 0), None);
    }

    #[test]
    fn isn_differs_by_tuple_and_advances_with_time() {
        let s = Secrets::new([1; 16]);
        let l = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        let r = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000);
        let r2 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40001);
        let t = Instant::from_millis(5);
        assert_ne!(s.isn(t, l, r), s.isn(t, l, r2));
        assert_eq!(
            s.isn(t + std::time::Duration::from_micros(400), l, r) - s.isn(t, l, r),
            100
        );
    }
}
