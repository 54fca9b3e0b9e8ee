//! The harness shared by the engine tests: one engine over a [`MemNet`] on a virtual clock.

#![allow(dead_code)]

pub mod hop;

use mesh::engine::{Engine, MeshTls, NoMeshTls, ProxyStats};
use mesh::memnet::{MemConn, MemNet};
use mesh::net::Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tcpstack::Instant;

pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
pub const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 50000);

pub fn publisher(tables: &str, base: &Path) -> Arc<control::Publisher> {
    let src = control::Source::new("t.toml", tables.to_string());
    let compiled =
        control::compile(&src, &control::Context::new(base)).unwrap_or_else(|e| panic!("{e}"));
    let publisher = Arc::new(control::Publisher::new());
    publisher.publish(compiled.snapshot, Arc::from(tables), "test");
    publisher
}

/// One engine, its network and its clock.
pub struct Gw {
    pub engine: Engine<MemConn>,
    pub net: MemNet,
    pub now: Instant,
}

impl Gw {
    pub fn new(tables: &str) -> Gw {
        Gw::with(
            publisher(tables, Path::new(".")),
            Arc::new(NoMeshTls),
            Ipv4Addr::new(10, 0, 3, 100),
        )
    }

    /// An engine over `publisher`'s tables with `tls`; its connects leave from `local_ip`.
    pub fn with(
        publisher: Arc<control::Publisher>,
        tls: Arc<dyn MeshTls>,
        local_ip: Ipv4Addr,
    ) -> Gw {
        Gw::seeded(publisher, tls, local_ip, [7; 32])
    }

    /// As [`Gw::with`], the engine seeded with `seed` (two gateways in one test draw
    /// different ids, as real ones do from the OS).
    pub fn seeded(
        publisher: Arc<control::Publisher>,
        tls: Arc<dyn MeshTls>,
        local_ip: Ipv4Addr,
        seed: [u8; 32],
    ) -> Gw {
        Gw {
            engine: Engine::new(publisher, tls, seed),
            net: MemNet::new(local_ip),
            now: Instant::from_micros(1_000_000),
        }
    }

    /// Handles every event and moves every byte at the current instant.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            let mut any = false;
            while let Some(ev) = self.net.poll_event() {
                any = true;
                self.engine.handle(&mut self.net, self.now, ev);
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
                any = true;
                self.engine.handle_timeout(&mut self.net, self.now);
            }
            self.engine.progress(&mut self.net, self.now);
            if !any {
                return;
            }
        }
        panic!("the engine did not settle");
    }

    /// Moves the clock forward by `d`, waking the engine at each deadline on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.settle();
            match self.engine.poll_timeout() {
                Some(t) if t <= end => self.now = t.max(self.now),
                _ => break,
            }
        }
        self.now = end;
        self.settle();
    }

    pub fn client(&mut self) -> MemConn {
        let c = self.net.peer_connect(CLIENT, LISTEN);
        self.settle();
        c
    }

    pub fn send(&mut self, c: MemConn, data: &[u8]) {
        self.net.peer_send(c, data);
        self.settle();
    }

    pub fn take(&mut self, c: MemConn) -> String {
        let out = self.net.peer_take(c);
        self.settle();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The one outgoing connect the engine is waiting on.
    pub fn pending(&self) -> (MemConn, SocketAddrV4) {
        let p = self.net.pending_connects();
        assert_eq!(p.len(), 1, "one upstream connect pending: {p:?}");
        p[0]
    }

    /// Where the request just sent went: the one pending connect, accepted (`true`: a new
    /// connection), else the one upstream connection it was written on (from the pool or
    /// kept by the session).
    pub fn upstream(&mut self) -> (MemConn, bool) {
        let p = self.net.pending_connects();
        if let [(u, _)] = p[..] {
            self.net.peer_accept(u);
            self.settle();
            return (u, true);
        }
        assert!(p.is_empty(), "more than one connect pending: {p:?}");
        let w = self.net.outgoing_with_data();
        assert_eq!(w.len(), 1, "one upstream connection written on: {w:?}");
        (w[0], false)
    }

    /// Did the request just sent go to an upstream: a connect pending, or bytes written on an
    /// upstream connection (a pooled one)?
    pub fn sent_upstream(&self) -> bool {
        !self.net.pending_connects().is_empty() || !self.net.outgoing_with_data().is_empty()
    }

    pub fn stats(&self) -> ProxyStats {
        self.engine.stats
    }

    /// Nothing outstanding on either endpoint of service 0.
    pub fn balanced(&self) {
        for ep in 0..2 {
            assert_eq!(
                self.engine.outstanding(0, ep).unwrap_or(0),
                0,
                "endpoint {ep} still counted outstanding"
            );
        }
    }
}

pub fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
