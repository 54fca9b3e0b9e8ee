//! TCP segments (RFC 9293 §3.1) with the options MSS, window scale (RFC 7323 §2), SACK-permitted
//! and SACK blocks (RFC 2018) and timestamps (RFC 7323 §3).

use super::checksum;
use super::WireError;
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;
pub const MAX_HEADER_LEN: usize = 60;
/// RFC 7323 §2.3: a shift above 14 is treated as 14.
pub const MAX_WINDOW_SHIFT: u8 = 14;
pub const MAX_SACK_BLOCKS: usize = 4;

#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    pub const FIN: Flags = Flags(0x01);
    pub const SYN: Flags = Flags(0x02);
    pub const RST: Flags = Flags(0x04);
    pub const PSH: Flags = Flags(0x08);
    pub const ACK: Flags = Flags(0x10);
    pub const URG: Flags = Flags(0x20);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, o: Flags) -> Flags {
        Flags(self.0 | o.0)
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let names = ["F", "S", "R", "P", ".", "U", "E", "C"];
        for (i, n) in names.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                f.write_str(n)?;
            }
        }
        Ok(())
    }
}

/// Up to four SACK blocks, `(left, right)` sequence numbers, right exclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SackBlocks {
    len: u8,
    blocks: [(u32, u32); MAX_SACK_BLOCKS],
}

impl SackBlocks {
    pub fn push(&mut self, left: u32, right: u32) -> bool {
        if (self.len as usize) < MAX_SACK_BLOCKS {
            self.blocks[self.len as usize] = (left, right);
            self.len += 1;
            true
        } else {
            false
        }
    }
    pub fn as_slice(&self) -> &[(u32, u32)] {
        &self.blocks[..self.len as usize]
    }
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n as u8);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub sack: SackBlocks,
    /// (TSval, TSecr)
    pub timestamp: Option<(u32, u32)>,
}

impl Options {
    /// Bytes these options take on the wire, padded to a multiple of 4.
    pub fn wire_len(&self) -> usize {
        let mut n = 0;
        if self.mss.is_some() {
            n += 4;
        }
        if self.sack_permitted && self.timestamp.is_some() {
            n += 12; // SACK-permitted (2) + timestamps (10) pack into 12
        } else {
            if self.sack_permitted {
                n += 4;
            }
            if self.timestamp.is_some() {
                n += 12;
            }
        }
        if self.window_scale.is_some() {
            n += 4;
        }
        if !self.sack.is_empty() {
            n += 4 + 8 * self.sack.len();
        }
        n
    }

    fn parse(mut buf: &[u8]) -> Result<Options, WireError> {
        let mut o = Options::default();
        while let Some(&kind) = buf.first() {
            match kind {
                0 => break,
                1 => {
                    buf = &buf[1..];
                    continue;
                }
                _ => {}
            }
            let len = *buf.get(1).ok_or(WireError::Malformed)? as usize;
            if len < 2 || len > buf.len() {
                return Err(WireError::Malformed);
            }
            let body = &buf[2..len];
            match (kind, len) {
                (2, 4) => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                (3, 3) => o.window_scale = Some(body[0].min(MAX_WINDOW_SHIFT)),
                (4, 2) => o.sack_permitted = true,
                (5, _) if (len - 2).is_multiple_of(8) && len > 2 => {
                    for b in body.chunks_exact(8) {
                        let l = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        let r = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                        o.sack.push(l, r);
                    }
                }
                (8, 10) => {
                    o.timestamp = Some((
                        u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                        u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    ))
                }
                (2..=5, _) | (8, _) => return Err(WireError::Malformed),
                _ => {} // unknown option: skipped by its length
            }
            buf = &buf[len..];
        }
        Ok(o)
    }

    fn emit(&self, buf: &mut [u8]) -> usize {
        let mut i = 0;
        let mut put = |bytes: &[u8]| {
            buf[i..i + bytes.len()].copy_from_slice(bytes);
            i += bytes.len();
        };
        if let Some(mss) = self.mss {
            let m = mss.to_be_bytes();
            put(&[2, 4, m[0], m[1]]);
        }
        match (self.sack_permitted, self.timestamp) {
            (true, Some(_)) => put(&[4, 2]),
            (true, None) => put(&[1, 1, 4, 2]),
            (false, Some(_)) => put(&[1, 1]),
            (false, None) => {}
        }
        if let Some((val, ecr)) = self.timestamp {
            put(&[8, 10]);
            put(&val.to_be_bytes());
            put(&ecr.to_be_bytes());
        }
        if let Some(ws) = self.window_scale {
            put(&[1, 3, 3, ws]);
        }
        if !self.sack.is_empty() {
            put(&[1, 1, 5, 2 + 8 * self.sack.len() as u8]);
            for &(l, r) in self.sack.as_slice() {
                put(&l.to_be_bytes());
                put(&r.to_be_bytes());
            }
        }
        i
    }
}

/// A TCP header without its payload; used on both parse and emit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: Flags,
    pub window: u16,
    pub options: Options,
}

impl Header {
    pub fn len(&self) -> usize {
        HEADER_LEN + self.options.wire_len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the header into `buf[..self.len()]` with a zero checksum; see [`fill_checksum`].
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.len();
        debug_assert!(len <= MAX_HEADER_LEN);
        buf[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        buf[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        buf[4..8].copy_from_slice(&self.seq.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ack.to_be_bytes());
        buf[12] = ((len / 4) as u8) << 4;
        buf[13] = self.flags.0;
        buf[14..16].copy_from_slice(&self.window.to_be_bytes());
        buf[16..20].copy_from_slice(&[0, 0, 0, 0]);
        let n = self.options.emit(&mut buf[HEADER_LEN..len]);
        debug_assert_eq!(HEADER_LEN + n, len);
        len
    }
}

/// A parsed segment: header plus borrowed payload.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// Parses and verifies the checksum over the pseudo-header (RFC 9293 §3.1).
    pub fn parse(buf: &'a [u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let off = ((buf[12] >> 4) as usize) * 4;
        if off < HEADER_LEN || off > buf.len() {
            return Err(WireError::Malformed);
        }
        let acc = checksum::pseudo_header(src, dst, super::ipv4::PROTO_TCP, buf.len());
        if checksum::finish(checksum::accumulate(acc, buf)) != 0 {
            return Err(WireError::Checksum);
        }
        let options = Options::parse(&buf[HEADER_LEN..off])?;
        let header = Header {
            src_port: u16::from_be_bytes([buf[0], buf[1]]),
            dst_port: u16::from_be_bytes([buf[2], buf[3]]),
            seq: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ack: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            flags: Flags(buf[13]),
            window: u16::from_be_bytes([buf[14], buf[15]]),
            options,
        };
        Ok(Segment {
            header,
            payload: &buf[off..],
        })
    }
}

/// Computes and stores the checksum of a complete segment (header and payload) in `buf`.
pub fn fill_checksum(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
    buf[16..18].copy_from_slice(&[0, 0]);
    let acc = checksum::pseudo_header(src, dst, super::ipv4::PROTO_TCP, buf.len());
    let c = checksum::finish(checksum::accumulate(acc, buf));
    buf[16..18].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn roundtrip(h: Header, payload: &[u8]) {
        let mut buf = vec![0u8; h.len() + payload.len()];
        let n = h.emit(&mut buf);
        buf[n..].copy_from_slice(payload);
        fill_checksum(&mut buf, A, B);
        let seg = Segment::parse(&buf, A, B).unwrap();
        assert_eq!(seg.header, h);
        assert_eq!(seg.payload, payload);
        // Any single flipped bit is caught by the checksum or the parser.
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            if let Ok(seg) = Segment::parse(&bad, A, B) {
                panic!("bit {i} flipped and still parsed: {seg:?}");
            }
        }
    }

    #[test]
    fn syn_options_roundtrip() {
        let options = Options {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamp: Some((1, 0)),
            ..Default::default()
        };
        assert_eq!(options.wire_len(), 20);
        roundtrip(
            Header {
                src_port: 1,
                dst_port: 2,
                seq: 3,
                ack: 0,
                flags: Flags::SYN,
                window: 65535,
                options,
            },
            b"",
        );
    }

    #[test]
    fn data_with_sack_roundtrip() {
        let mut sack = SackBlocks::default();
        sack.push(100, 200);
        sack.push(300, 400);
        sack.push(500, 600);
        let options = Options {
            timestamp: Some((7, 9)),
            sack,
            ..Default::default()
        };
        assert_eq!(options.wire_len(), 40);
        roundtrip(
            Header {
                src_port: 80,
                dst_port: 4000,
                seq: u32::MAX,
                ack: 5,
                flags: Flags::ACK | Flags::PSH,
                window: 9,
                options,
            },
            b"hello",
        );
    }

    #[test]
    fn every_prefix_of_a_segment_is_rejected_cleanly() {
        let options = Options {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamp: Some((1, 0)),
            ..Default::default()
        };
        let h = Header {
            src_port: 1,
            dst_port: 2,
            seq: 3,
            ack: 0,
            flags: Flags::SYN,
            window: 65535,
            options,
        };
        let mut buf = vec![0u8; h.len() + 3];
        h.emit(&mut buf);
        fill_checksum(&mut buf, A, B);
        for n in 0..buf.len() {
            assert!(Segment::parse(&buf[..n], A, B).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn malformed_options_are_errors() {
        for opts in [
            &[2u8, 3, 0, 0][..],
            &[8, 200, 0, 0],
            &[5, 3, 0, 0],
            &[3, 4, 1, 0],
            &[9, 1, 0, 0],
            &[2],
        ] {
            let mut buf = vec![0u8; 20];
            buf.extend_from_slice(opts);
            while !buf.len().is_multiple_of(4) {
                buf.push(0);
            }
            buf[12] = ((buf.len() / 4) as u8) << 4;
            fill_checksum(&mut buf, A, B);
            assert_eq!(
                Segment::parse(&buf, A, B).unwrap_err(),
                WireError::Malformed,
                "{opts:?}"
            );
        }
    }

    #[test]
    fn window_shift_is_clamped() {
        let mut buf = vec![0u8; 24];
        buf[20..24].copy_from_slice(&[1, 3, 3, 20]);
        buf[12] = 6 << 4;
        fill_checksum(&mut buf, A, B);
        assert_eq!(
            Segment::parse(&buf, A, B)
                .unwrap()
                .header
                .options
                .window_scale,
            Some(14)
        );
    }
}
