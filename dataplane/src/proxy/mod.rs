//! The proxy: what a gateway does with a connection once tcpstack (or the kernel) has
//! terminated it. Sans-IO parts that both backends share:
//! - [`http`]: HTTP/1.1 heads, body framing, header additions;
//! - [`lb`]: load balancers over a service's endpoints;
//! - [`tls`]: rustls configurations for the mTLS hop, SPIFFE identities, certificate reload.

pub mod engine;
pub mod http;
pub mod identity;
pub mod kernel;
pub mod lb;
pub mod leg;
pub mod net;
pub mod tls;
