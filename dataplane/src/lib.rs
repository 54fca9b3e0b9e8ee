//! Packet I/O backends (AF_XDP, TAP), the worker loop that joins them to tcpstack, test
//! support for network namespaces, and the `xdpmesh` binary. Core pinning, several queues and
//! the proxy engine are not built yet: see the dataplane and mesh issues.

pub mod device;
pub mod netns;
pub mod tap;
pub mod worker;
pub mod xdp;
