//! The proxy: what a gateway does with a connection once tcpstack (or the kernel) has
//! terminated it.
//! - [`engine`]: sessions (TCP, HTTP, inbound mesh) over any [`net::Net`]; [`leg`]: one end of
//!   a session, with TLS on top where the hop needs it;
//! - [`http`]: HTTP/1.1 heads, body framing, header additions (sans-IO);
//! - [`lb`]: load balancers over a service's endpoints (sans-IO, time passed in);
//! - [`tls`]: rustls configurations for the mTLS hop, SPIFFE identities, certificate reload;
//!   [`identity`]: the engine's view of them;
//! - [`kernel`]: the `Net` over kernel sockets (mio); the AF_XDP one is `worker::StackNet`.

pub mod engine;
pub mod http;
pub mod identity;
pub mod kernel;
pub mod lb;
pub mod leg;
pub mod net;
pub mod tls;
