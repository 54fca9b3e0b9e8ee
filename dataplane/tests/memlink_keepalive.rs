//! A listener's `keepalive` on the AF_XDP path: a worker (over an in-memory link, no root)
//! gives each connection it accepts its listener's keepalive, and none to a connection of a
//! listener without the table. The client stays idle; the worker's stack probes it.

use dataplane::device::Device;
use dataplane::memlink::{MemDevice, MemLink, SideConfig};
use dataplane::worker::Worker;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};
use tcpstack::{ConnId, Counter, Event, Ipv4Cidr, MacAddr, Stack, StackConfig};

const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

struct Client {
    dev: MemDevice,
    stack: Stack,
    start: WallInstant,
}

impl Client {
    fn pump(&mut self) {
        let now = tcpstack::Instant::from_micros(self.start.elapsed().as_micros() as u64);
        let stack = &mut self.stack;
        self.dev
            .receive(64, |f| stack.handle_frame(now, f))
            .unwrap();
        while self
            .dev
            .transmit(64, |b| stack.poll_transmit(now, b))
            .unwrap()
            == 64
        {}
    }
}

/// Keepalive probes the worker's stack sent while one idle client connection was open on
/// `port` of these tables, over `idle_for`.
fn probes_sent(tables: &str, port: u16, idle_for: Duration) -> u64 {
    let src = control::Source::new("t.toml", tables.to_string());
    let compiled =
        control::compile(&src, &control::Context::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let publisher = Arc::new(control::Publisher::new());
    publisher.publish(compiled.snapshot, Arc::from(tables), "test");
    let link = MemLink::new(
        SideConfig::single([2, 0, 0, 0, 0, 1]),
        SideConfig::single([2, 0, 0, 0, 0, 2]),
        1500,
    )
    .unwrap();
    let cfg = StackConfig::new(
        MacAddr([2, 0, 0, 0, 0, 1]),
        vec![Ipv4Cidr::new(GW, 24)],
        [9; 16],
    );
    let engine = mesh::engine::Engine::new(publisher, Arc::new(mesh::engine::NoMeshTls), [1; 32]);
    let mut w = Worker::new(link.device(0, 0), Stack::new(cfg)).with_engine(engine);
    w.listen_proxy(SocketAddrV4::new(GW, port)).unwrap();
    let mut c = Client {
        dev: link.device(1, 0),
        stack: Stack::new(StackConfig::new(
            MacAddr([2, 0, 0, 0, 0, 2]),
            vec![Ipv4Cidr::new(CLIENT, 24)],
            [4; 16],
        )),
        start: WallInstant::now(),
    };
    let id: ConnId = c
        .stack
        .connect(tcpstack::Instant::ZERO, SocketAddrV4::new(GW, port))
        .unwrap();
    let mut connected = None;
    let deadline = WallInstant::now() + Duration::from_secs(10);
    loop {
        assert!(WallInstant::now() < deadline, "no connection in 10 s");
        c.pump();
        w.poll_once().unwrap();
        while let Some(e) = c.stack.poll_event() {
            match e {
                Event::Connected(i) if i == id => connected = Some(WallInstant::now()),
                other => panic!("unexpected {other:?}"),
            }
        }
        if let Some(at) = connected {
            if at.elapsed() >= idle_for {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(w.stats.accepted, 1);
    w.stack().stats().get(Counter::KeepalivesSent)
}

fn tables(keepalive: &str) -> String {
    format!(
        r#"
[[service]]
name = "s"
endpoints = [{{ address = "10.0.0.9:80" }}]
[[listener]]
name = "web"
bind = "0.0.0.0:80"
protocol = "http"
{keepalive}
"#
    )
}

#[test]
fn an_accepted_connection_gets_its_listeners_keepalive() {
    // Idle 100 ms; each answered probe starts the idle time again: about 4 probes in 0.5 s.
    let n = probes_sent(
        &tables(r#"keepalive = { idle = "100ms", interval = "50ms", probes = 3 }"#),
        80,
        Duration::from_millis(500),
    );
    assert!((2..=10).contains(&n), "{n} keepalive probes in 0.5 s");
}

#[test]
fn a_listener_without_keepalive_sends_no_probes() {
    assert_eq!(probes_sent(&tables(""), 80, Duration::from_millis(500)), 0);
}
