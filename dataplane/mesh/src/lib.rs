//! The mesh logic, sans-IO: sessions (inbound mesh, TCP, HTTP) over a [`net::Net`] it is
//! handed ([`engine`], [`leg`]), the HTTP/1.1 codec ([`http`]), load balancers ([`lb`]) and
//! the mTLS configurations, SPIFFE identities and SNI mapping of the mesh hop ([`tls`]); a
//! route's request policies ([`policy`]) and mirror ([`mirror`]); endpoint health: the pool of
//! upstream connections ([`pool`]), circuit breaking ([`breaker`]), outlier detection
//! ([`outlier`]), active health checks ([`healthcheck`]) and what the workers share of it
//! ([`health`]); the connection caps all workers share ([`admission`]), and an in-memory
//! [`net::Net`] for deterministic tests on a virtual clock ([`memnet`]); one span per request
//! and its W3C trace context ([`trace`]), and their OTLP/JSON encoding ([`otlp`]); HTTP/2
//! clients in front of the engine, each stream an HTTP/1.1 request ([`h2front`]); HTTP/2
//! (h2c) servers behind it, each request a stream on a shared connection ([`h2back`]).
//!
//! No sockets, threads, files, clock or `getrandom` here: the caller passes `now`, seeds,
//! table snapshots and certificate material (the data plane is the I/O shell around it).

pub mod admission;
pub mod breaker;
pub mod engine;
pub mod golden;
pub mod h2back;
pub mod h2front;
mod h2io;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod lb;
pub mod leg;
pub mod memnet;
pub mod mirror;
pub mod net;
pub mod otlp;
pub mod outlier;
pub mod policy;
pub mod pool;
pub mod tls;
pub mod trace;

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
