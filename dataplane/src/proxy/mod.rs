//! The I/O side of the proxy; the proxy logic itself (sessions, HTTP, balancers, mTLS
//! configurations) is the sans-IO `mesh` crate.
//! - [`kernel`]: `mesh::net::Net` over kernel sockets (mio); the AF_XDP one is
//!   `worker::StackNet`;
//! - [`identity`]: the engine's `mesh::engine::MeshTls` over the certificate files
//!   ([`crate::certwatch`]);
//! - [`random_seed`]: the engine's seed from the OS;
//! - [`tcp_keepalive`]: a listener's `keepalive` as tcpstack settings;
//! - [`h2_front`]: each worker's HTTP/2 front (`mesh::h2front`), counting into [`h2_stats`];
//! - [`h2_back`]: each worker's HTTP/2 back to h2c servers (`mesh::h2back`), counting into
//!   [`h2_upstream_stats`].

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

/// What every worker's HTTP/2 front counted (`xdpmesh_h2_*` on `/metrics`).
pub fn h2_stats() -> &'static std::sync::Arc<mesh::h2front::H2Stats> {
    static STATS: std::sync::OnceLock<std::sync::Arc<mesh::h2front::H2Stats>> =
        std::sync::OnceLock::new();
    STATS.get_or_init(Default::default)
}

/// A worker's HTTP/2 front: it tells HTTP/2 from HTTP/1.1 on the `http` listeners of the
/// tables current at accept time.
pub fn h2_front<C: Copy + Eq + std::hash::Hash + std::fmt::Debug>(
    publisher: &std::sync::Arc<control::Publisher>,
) -> mesh::h2front::H2Front<C> {
    let p = publisher.clone();
    mesh::h2front::H2Front::new(
        mesh::h2front::H2Config::default(),
        move |local| {
            p.load()
                .listener_at(local.into())
                .filter(|l| l.protocol == control::schema::Protocol::Http)
                .map(|l| mesh::h2front::HttpListener {
                    request_head: l.timeouts.request_head,
                    body_stall: l.timeouts.body_stall,
                })
        },
        h2_stats().clone(),
    )
}

/// What every worker's HTTP/2 back counted (`xdpmesh_h2_upstream_*` on `/metrics`).
pub fn h2_upstream_stats() -> &'static std::sync::Arc<mesh::h2back::H2UpstreamStats> {
    static STATS: std::sync::OnceLock<std::sync::Arc<mesh::h2back::H2UpstreamStats>> =
        std::sync::OnceLock::new();
    STATS.get_or_init(Default::default)
}

/// A worker's HTTP/2 back: the engine's connections to the local endpoints that the tables
/// current at connect time say speak h2c (`upstream_protocol`) carry their requests as
/// streams.
pub fn h2_back<C: Copy + Eq + std::hash::Hash + std::fmt::Debug>(
    publisher: &std::sync::Arc<control::Publisher>,
) -> mesh::h2back::H2Back<C> {
    let p = publisher.clone();
    mesh::h2back::H2Back::new(
        mesh::h2back::H2BackConfig::default(),
        move |remote| p.cell().load().upstream_h2c(remote.into()),
        h2_upstream_stats().clone(),
    )
}
