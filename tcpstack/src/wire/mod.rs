//! Wire formats: borrowed views for parsing, `emit` into the caller's buffer. Every parser
//! checks lengths first; after that no accessor panics, whatever the bytes.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;

pub use ethernet::MacAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("malformed")]
    Malformed,
    #[error("bad checksum")]
    Checksum,
    #[error("unsupported")]
    Unsupported,
    #[error("fragment")]
    Fragment,
}
