//! TCP (RFC 9293) pieces: sequence numbers, buffers, reassembly, timers, the connection state
//! machine, keyed ISNs and SYN cookies.

pub mod assembler;
pub mod cc;
pub mod config;
pub mod conn;
pub mod isn;
pub mod ring;
pub mod rtt;
pub mod sack;
pub mod seq;

pub use cc::Congestion;
pub use config::{Keepalive, TcpConfig};
pub use conn::{ConnInfo, ResetReason, State};
