//! ICMP echo (RFC 792). Other ICMP messages are recognised and counted, not acted on.

use super::checksum;
use super::WireError;

pub const HEADER_LEN: usize = 8;
pub const ECHO_REPLY: u8 = 0;
pub const ECHO_REQUEST: u8 = 8;

#[derive(Clone, Copy, Debug)]
pub struct IcmpPacket<'a> {
    pub kind: u8,
    pub code: u8,
    /// Identifier and sequence number for echo; the "rest of header" otherwise.
    pub rest: [u8; 4],
    pub data: &'a [u8],
}

impl<'a> IcmpPacket<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if checksum::checksum(buf) != 0 {
            return Err(WireError::Checksum);
        }
        Ok(IcmpPacket {
            kind: buf[0],
            code: buf[1],
            rest: [buf[4], buf[5], buf[6], buf[7]],
            data: &buf[HEADER_LEN..],
        })
    }

    pub fn len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes this message into `buf[..self.len()]` with its checksum.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.kind;
        buf[1] = self.code;
        buf[2..4].copy_from_slice(&[0, 0]);
        buf[4..8].copy_from_slice(&self.rest);
        buf[HEADER_LEN..self.len()].copy_from_slice(self.data);
        let c = checksum::checksum(&buf[..self.len()]);
        buf[2..4].copy_from_slice(&c.to_be_bytes());
    }
}
