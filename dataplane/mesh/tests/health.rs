//! Endpoint health in the engine on the virtual clock: outlier detection ejects an endpoint
//! that keeps failing and every balancer skips it until its time is up; the worker that runs
//! the active health checks probes the endpoints it owns, skips an unhealthy one, shares the
//! verdicts on the board the other workers read, and takes it back once healthy.

mod common;

use common::{status, Gw};
use mesh::health::HealthBoard;
use mesh::memnet::MemConn;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }, { address = "10.0.3.2:8080" }, { address = "10.0.3.3:8080" }]
outlier = { consecutive_failures = 3, base_ejection = "30s", interval = "10s" }
"#;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const ERR: &[u8] = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
const BAD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 2), 8080);

/// One GET on a new client connection; the endpoint that got it answers `ERR` when it is
/// `bad`, else `OK`. Returns the endpoint and the status the client got.
fn get(gw: &mut Gw, bad: Option<SocketAddrV4>) -> (SocketAddrV4, u16) {
    let c = gw.client();
    gw.send(c, b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (u, _) = gw.upstream();
    let to = gw.net.remote(u).expect("an upstream");
    let _ = gw.take(u);
    gw.send(u, if Some(to) == bad { ERR } else { OK });
    let st = status(&gw.take(c));
    gw.net.peer_shutdown(c);
    gw.settle();
    (to, st)
}

#[test]
fn an_endpoint_failing_in_a_row_is_ejected_then_returns() {
    let mut gw = Gw::new(TABLES);
    let mut to_bad = 0;
    while to_bad < 3 {
        let (to, _) = get(&mut gw, Some(BAD));
        to_bad += u32::from(to == BAD);
    }
    // Ejected: round robin goes on over the other two.
    for _ in 0..30 {
        let (to, st) = get(&mut gw, Some(BAD));
        assert_ne!(to, BAD, "an ejected endpoint was picked");
        assert_eq!(st, 200);
    }
    gw.advance(Duration::from_secs(30));
    let back = (0..6).filter(|_| get(&mut gw, None).0 == BAD).count();
    assert!(back >= 1, "back after 30 s");
}

#[test]
fn health_checks_skip_an_unhealthy_endpoint_and_take_it_back() {
    let tables = format!(
        "{TABLES}health_check = {{ tcp = true, interval = \"1s\", timeout = \"500ms\", unhealthy = 2, healthy = 1 }}\n"
    );
    let mut gw = Gw::new(&tables);
    let board = HealthBoard::new();
    gw.engine.set_health(board.clone(), 0, true);
    // The checker starts with the first timer round; answer its probes: BAD refuses.
    let answer_probes = |gw: &mut Gw, bad_up: bool| {
        let probes: Vec<(MemConn, SocketAddrV4)> = gw.net.pending_connects();
        for (p, to) in probes {
            if to == BAD && !bad_up {
                gw.net.peer_reset(p);
            } else {
                gw.net.peer_accept(p);
            }
        }
        gw.settle();
    };
    for _ in 0..30 {
        gw.advance(Duration::from_millis(100));
        answer_probes(&mut gw, false);
    }
    assert!(board.unhealthy().contains(&("web".to_string(), BAD)));
    assert!(board.version() >= 1);
    for _ in 0..12 {
        let (to, st) = get(&mut gw, None);
        assert_ne!(to, BAD, "an unhealthy endpoint was picked");
        assert_eq!(st, 200);
    }
    // The engine reports the verdicts for `GET /endpoints` at most once a second.
    gw.advance(Duration::from_secs(1));
    let json = board.json();
    assert!(
        json.contains("\"endpoint\": \"10.0.3.2:8080\", \"health\": \"unhealthy\""),
        "{json}"
    );
    // It answers again: one good probe (healthy = 1) brings it back.
    for _ in 0..20 {
        gw.advance(Duration::from_millis(100));
        answer_probes(&mut gw, true);
    }
    assert!(board.unhealthy().is_empty());
    let back = (0..6).filter(|_| get(&mut gw, None).0 == BAD).count();
    assert_eq!(back, 2, "round robin over all three again");
    // A worker that does not run the checks reads the same verdicts from the board.
    let mut other = Gw::new(&tables);
    other.engine.set_health(board.clone(), 1, false);
    for _ in 0..10 {
        other.advance(Duration::from_millis(100));
    }
    assert!(other.net.pending_connects().is_empty(), "no probes from it");
}

#[test]
fn every_verdict_is_published_and_one_no_longer_checked_goes_with_its_check() {
    use mesh::engine::NoMeshTls;
    use std::sync::Arc;
    let checked = format!(
        "{TABLES}health_check = {{ tcp = true, interval = \"1s\", timeout = \"500ms\", unhealthy = 1, healthy = 1 }}\n"
    );
    let publisher = common::publisher(&checked, std::path::Path::new("."));
    let mut gw = Gw::with(
        publisher.clone(),
        Arc::new(NoMeshTls),
        Ipv4Addr::new(10, 0, 3, 100),
    );
    let board = HealthBoard::new();
    gw.engine.set_health(board.clone(), 0, true);
    let probe = |gw: &mut Gw, bad_up: bool| {
        for _ in 0..15 {
            gw.advance(Duration::from_millis(100));
            for (p, to) in gw.net.pending_connects() {
                if to == BAD && !bad_up {
                    gw.net.peer_reset(p);
                } else {
                    gw.net.peer_accept(p);
                }
            }
            gw.settle();
        }
    };
    // Endpoints that only ever pass are shown healthy (their first verdict is no change).
    probe(&mut gw, true);
    let json = board.json();
    assert_eq!(json.matches("\"health\": \"healthy\"").count(), 3, "{json}");
    probe(&mut gw, false);
    assert!(board.unhealthy().contains(&("web".to_string(), BAD)));
    // The check is taken out of the tables: its verdict goes with it.
    let src = control::Source::new("t.toml", TABLES.to_string());
    let compiled = control::compile(&src, &control::Context::new(std::path::Path::new(".")))
        .unwrap_or_else(|e| panic!("{e}"));
    publisher.publish(compiled.snapshot, Arc::from(TABLES), "test");
    gw.advance(Duration::from_millis(100));
    assert!(
        board.unhealthy().is_empty(),
        "a stale verdict outlived its check"
    );
    let back = (0..6).filter(|_| get(&mut gw, None).0 == BAD).count();
    assert_eq!(back, 2);
}
