//! IPv4 (RFC 791). Options are skipped; fragments are refused (the stack never reassembles).

use super::checksum;
use super::WireError;
use std::net::Ipv4Addr;

pub const HEADER_LEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;

/// A parsed IPv4 header with a borrowed payload.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Packet<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    pub payload: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    /// Validates version, lengths and the header checksum. Trailing bytes past the total
    /// length (Ethernet padding) are ignored.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if buf[0] >> 4 != 4 {
            return Err(WireError::Unsupported);
        }
        let ihl = ((buf[0] & 0x0f) as usize) * 4;
        let total = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if ihl < HEADER_LEN || total < ihl || total > buf.len() {
            return Err(WireError::Malformed);
        }
        if checksum::checksum(&buf[..ihl]) != 0 {
            return Err(WireError::Checksum);
        }
        let frag = u16::from_be_bytes([buf[6], buf[7]]);
        // MF set or a non-zero offset: a fragment.
        if frag & 0x2000 != 0 || frag & 0x1fff != 0 {
            return Err(WireError::Fragment);
        }
        Ok(Ipv4Packet {
            src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
            dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
            protocol: buf[9],
            ttl: buf[8],
            payload: &buf[ihl..total],
        })
    }
}

/// Writes a 20-byte IPv4 header (DF set, no options) for a payload of `payload_len` bytes.
pub fn emit(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    ident: u16,
) {
    let total = (HEADER_LEN + payload_len) as u16;
    buf[0] = 0x45;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&total.to_be_bytes());
    buf[4..6].copy_from_slice(&ident.to_be_bytes());
    buf[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    buf[8] = 64;
    buf[9] = protocol;
    buf[10..12].copy_from_slice(&[0, 0]);
    buf[12..16].copy_from_slice(&src.octets());
    buf[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&buf[..HEADER_LEN]);
    buf[10..12].copy_from_slice(&c.to_be_bytes());
}
