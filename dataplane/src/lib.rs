//! Packet I/O backends (AF_XDP, TAP, in-memory), the workers that join them to tcpstack (one
//! per queue, with hand-offs between them), the gateway runtime that starts them from a node
//! file, test support for network namespaces, and the `xdpmesh` binary. The proxy engine is
//! not built yet: see the mesh issue.

pub mod device;
pub mod gateway;
pub mod memlink;
pub mod netns;
pub mod proxy;
pub mod shard;
pub mod tap;
pub mod wake;
pub mod worker;
pub mod xdp;
