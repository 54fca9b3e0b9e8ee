//! Packet I/O backends (AF_XDP, TAP, in-memory), the workers that join them to tcpstack (one
//! per core, a queue of every interface each, with hand-offs between them) and run the `mesh`
//! engine over them or over kernel sockets, certificate file polling, the gateway runtime that
//! starts it all from a node file, test support for network namespaces, and the `xdpmesh`
//! binary.

pub mod accesslog;
pub mod certwatch;
pub mod clock;
pub mod config_dump;
pub mod dashboard;
pub mod device;
pub mod gateway;
pub mod inspect;
pub mod livecheck;
pub mod logging;
pub mod memlink;
pub mod netns;
pub mod proxy;
pub mod shard;
pub mod shutdown;
pub mod spin;
pub mod tap;
pub mod tap_hub;
pub mod tapcli;
pub mod traces;
pub mod wake;
pub mod worker;
pub mod xdp;
