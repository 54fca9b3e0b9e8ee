//! tcpstack: a sans-IO Ethernet/ARP/IPv4/ICMP-echo/TCP stack, with glue to run rustls over it.
//!
//! No sockets, no threads, no clock: every input takes `now` ([`time::Instant`]), outputs are
//! polled into the caller's buffers, and randomness comes from an injected secret. The data
//! plane drives a [`Stack`] per worker over AF_XDP; tests drive two of them on a virtual clock.
//!
//! Layout: [`wire`] parses and emits frames; [`neigh`] is the ARP cache; [`tcp`] holds the
//! connection state machine; [`stack`] ties them to one interface; [`tls`] moves rustls records
//! over a connection.

pub mod neigh;
pub mod stack;
pub mod stats;
pub mod tcp;
pub mod time;
pub mod tls;
pub mod wire;

pub use neigh::NeighborConfig;
pub use stack::{ConnId, Error, Event, Ipv4Cidr, PortFilter, Stack, StackConfig};
pub use stats::{Counter, DropReason, Stats};
pub use tcp::{Congestion, Keepalive, ResetReason, State, TcpConfig};
pub use time::Instant;
pub use wire::MacAddr;
