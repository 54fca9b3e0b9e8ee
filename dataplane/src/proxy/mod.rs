//! The I/O side of the proxy; the proxy logic itself (sessions, HTTP, balancers, mTLS
//! configurations) is the sans-IO `mesh` crate.
//! - [`kernel`]: `mesh::net::Net` over kernel sockets (mio); the AF_XDP one is
//!   `worker::StackNet`;
//! - [`identity`]: the engine's `mesh::engine::MeshTls` over the certificate files
//!   ([`crate::certwatch`]);
//! - [`random_seed`]: the engine's seed from the OS;
//! - [`tcp_keepalive`]: a listener's `keepalive` as tcpstack settings.

pub mod identity;
pub mod kernel;

/// A listener's compiled `keepalive` (control knows nothing of tcpstack) as the stack's
/// per-connection setting.
pub fn tcp_keepalive(k: &control::snapshot::KeepaliveRt) -> tcpstack::Keepalive {
    tcpstack::Keepalive {
        idle: k.idle,
        interval: k.interval,
        probes: k.probes,
    }
}

/// A seed for `mesh::engine::Engine::new` from `getrandom(2)`: weighted picks and request
/// ids need unpredictability, not a fixed sequence.
pub fn random_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // SAFETY: writes at most seed.len() bytes into seed.
    let _ = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    seed
}
