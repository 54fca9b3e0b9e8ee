//! Hostile clients and servers against one engine on the virtual clock: what the gateway
//! forwards, what it refuses, and that every session it opened is gone afterwards. The
//! same cases run for real on the rig in `dataplane/tests/hostile_rig.rs`.

mod common;

use common::{status, Gw};
use control::snapshot::Timeouts;
use mesh::engine::{Expiry, Outcome, Refusal, LINGER, MAX_INTERIM};
use mesh::memnet::{EngineClose, MemConn};
use std::time::Duration;

const TABLES: &str = r#"
[[listener]]
name = "web"
bind = "10.0.0.1:80"
protocol = "http"

[[service]]
name = "web"
hosts = ["web.test"]
endpoints = [{ address = "10.0.3.1:8080" }]

[[service]]
name = "admin"
endpoints = [{ address = "10.0.3.9:8080" }]

[[route]]
service = "web"
match = { path = { prefix = "/admin" } }
backends = [{ service = "admin" }]

[[route]]
service = "web"
"#;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Sends `req` on a new client connection; returns the client and the upstream it reached
/// (accepted), with what the upstream received.
fn forwarded(gw: &mut Gw, req: &[u8]) -> (MemConn, MemConn, String) {
    let c = gw.client();
    gw.send(c, req);
    let (u, _) = gw.upstream();
    let got = gw.take(u);
    (c, u, got)
}

/// The client finishes, and no session, connection or timer of the gateway is left.
fn all_gone(gw: &mut Gw, clients: &[MemConn]) {
    for &c in clients {
        gw.net.peer_shutdown(c);
    }
    gw.settle();
    assert_eq!(gw.engine.active(), 0, "every session ended");
    assert_eq!(gw.stats().sessions, 0, "the gauge agrees");
    assert_eq!(
        gw.net.open_count(),
        gw.engine.pooled(),
        "every connection closed but those idle in the pool"
    );
}

#[test]
fn routes_match_the_normalized_path_and_the_normalized_target_is_forwarded() {
    let mut gw = Gw::new(TABLES);
    for (target, forwarded) in [
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("//admin", "/admin"),
        ("/%61dmin/x?q=/../y", "/admin/x?q=/../y"),
        ("/admin;jsessionid=1", "/admin;jsessionid=1"),
        ("/./admin/./", "/admin/"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let c = gw.client();
        gw.send(c, req.as_bytes());
        let (u, _) = gw.upstream();
        let to = gw.net.remote(u).expect("an upstream");
        assert_eq!(to.port(), 8080);
        assert_eq!(
            to.ip().octets()[3],
            9,
            "{target} routed as /admin (to the admin service)"
        );
        let got = gw.take(u);
        assert!(
            got.starts_with(&format!("GET {forwarded} HTTP/1.1\r\n")),
            "{target}: {got}"
        );
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
        all_gone(&mut gw, &[c]);
    }
    // The query is never part of the path: /public?x=/admin is not /admin.
    let (c, u, _) = forwarded(
        &mut gw,
        b"GET /public?x=/admin HTTP/1.1\r\nHost: web.test\r\n\r\n",
    );
    let _ = (c, u);
    for bad in [
        "/a%zz",
        "/a%2",
        "/admin%2Fx",
        "/a%5Cb",
        "/a\\b",
        "/a%00",
        "*x",
        "web.test:80",
        "/public/..;/admin",
        "/admin/;/../x",
    ] {
        let c = gw.client();
        let before = gw.stats().refused(Refusal::BadRequest);
        gw.send(
            c,
            format!("GET {bad} HTTP/1.1\r\nHost: web.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(status(&gw.take(c)), 400, "{bad}");
        assert_eq!(gw.stats().refused(Refusal::BadRequest), before + 1, "{bad}");
        gw.net.peer_shutdown(c);
        gw.settle();
        assert_eq!(gw.net.closed(c), Some(EngineClose::Close), "{bad}");
    }
    // CONNECT would open a tunnel no route sees.
    let c = gw.client();
    gw.send(
        c,
        b"CONNECT web.test:443 HTTP/1.1\r\nHost: web.test:443\r\n\r\n",
    );
    assert_eq!(status(&gw.take(c)), 400);
    assert!(gw.net.pending_connects().is_empty());
}

#[test]
fn an_upgrade_request_body_is_a_body_and_never_a_second_request() {
    let mut gw = Gw::new(TABLES);
    let hidden = "GET /admin HTTP/1.1\r\nHost: web.test\r\n\r\n";
    let req = format!(
        "POST /public HTTP/1.1\r\nHost: web.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let (c, u, got) = forwarded(&mut gw, req.as_bytes());
    assert!(got.ends_with(hidden), "the body went on as a body: {got}");
    assert!(got.contains("upgrade: websocket\r\nconnection: upgrade\r\n"));
    // The server does not switch: its 200 ends the exchange, and nothing else was routed.
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    assert!(gw.net.pending_connects().is_empty(), "no hidden request");
    assert_eq!(gw.stats().requests, 1);
    let (c2, u2, _) = {
        gw.send(c, b"GET /public HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let got = gw.take(u);
        assert!(got.starts_with("GET /public "), "{got}");
        (c, u, got)
    };
    gw.send(u2, OK);
    assert_eq!(status(&gw.take(c2)), 200);
    all_gone(&mut gw, &[c]);
}

#[test]
fn a_101_the_client_did_not_ask_for_is_a_bad_response() {
    let mut gw = Gw::new(TABLES);
    let (c, u, _) = forwarded(&mut gw, b"GET /public HTTP/1.1\r\nHost: web.test\r\n\r\n");
    gw.send(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
    );
    let resp = gw.take(c);
    assert_eq!(status(&resp), 502, "{resp}");
    assert!(resp.contains("x-xdpmesh-error: bad_response"));
    assert_eq!(gw.net.closed(u), Some(EngineClose::Abort));
    all_gone(&mut gw, &[c]);

    // h2c is never offered: the request goes on as HTTP/1.1 without its upgrade fields,
    // so a 101 to it is refused the same way.
    let (c, u, got) = forwarded(
        &mut gw,
        b"GET /public HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    );
    let lower = got.to_ascii_lowercase();
    assert!(!lower.contains("upgrade"), "{got}");
    assert!(!lower.contains("http2-settings"), "{got}");
    gw.send(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    );
    assert_eq!(status(&gw.take(c)), 502);
    all_gone(&mut gw, &[c]);

    // An upgrade the client asked for still works: 101, then bytes both ways.
    let (c, u, _) = forwarded(
        &mut gw,
        b"GET /chat HTTP/1.1\r\nHost: web.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    gw.send(
        u,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    let resp = gw.take(c);
    assert_eq!(status(&resp), 101);
    assert!(
        resp.contains("upgrade: websocket\r\nconnection: upgrade\r\n"),
        "{resp}"
    );
    gw.send(c, b"frame-up");
    assert_eq!(gw.take(u), "frame-up");
    gw.send(u, b"frame-down");
    assert_eq!(gw.take(c), "frame-down");
}

#[test]
fn hop_by_hop_fields_stop_at_the_gateway_both_ways() {
    let mut gw = Gw::new(TABLES);
    let (c, u, got) = forwarded(
        &mut gw,
        b"GET /public HTTP/1.1\r\nHost: web.test\r\nConnection: X-Foo, Content-Length\r\nX-Foo: 1\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: foo\r\nX-Kept: yes\r\n\r\n",
    );
    let lower = got.to_ascii_lowercase();
    for gone in [
        "x-foo",
        "keep-alive",
        "proxy-connection",
        "te:",
        "upgrade",
        "connection",
    ] {
        assert!(!lower.contains(gone), "{gone} reached the server: {got}");
    }
    assert!(got.contains("X-Kept: yes\r\n"));
    gw.send(
        u,
        b"HTTP/1.1 200 OK\r\nConnection: X-Bar\r\nX-Bar: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nX-Also: kept\r\nContent-Length: 2\r\n\r\nok",
    );
    let resp = gw.take(c);
    let lower = resp.to_ascii_lowercase();
    for gone in [
        "x-bar",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "connection",
    ] {
        assert!(!lower.contains(gone), "{gone} reached the client: {resp}");
    }
    assert!(resp.contains("X-Also: kept\r\n") && resp.ends_with("ok"));

    // An HTTP/1.0 client that asked for keep-alive is told it has it; one closing is told so.
    gw.send(
        c,
        b"GET /public HTTP/1.0\r\nHost: web.test\r\nConnection: keep-alive\r\n\r\n",
    );
    let got = gw.take(u);
    assert!(got.starts_with("GET /public HTTP/1.0\r\n"), "{got}");
    gw.send(u, OK);
    let resp = gw.take(c);
    assert!(resp.contains("connection: keep-alive\r\n"), "{resp}");
    gw.send(
        c,
        b"GET /public HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    );
    gw.take(u);
    gw.send(u, OK);
    let resp = gw.take(c);
    assert!(resp.contains("connection: close\r\n"), "{resp}");
    all_gone(&mut gw, &[c]);
}

#[test]
fn sessions_end_after_an_early_answer_whatever_the_client_sends_after_it() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    // A 404 for an unknown host, with a body (and more) after the head.
    let c1 = gw.client();
    gw.send(
        c1,
        b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n",
    );
    assert_eq!(status(&gw.take(c1)), 404);
    // Bytes pipelined after Connection: close, and after an HTTP/1.0 request.
    let mut served = Vec::new();
    for (req, extra) in [
        (
            &b"GET /public HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n"[..],
            &b"GET /admin HTTP/1.1\r\nHost: web.test\r\n\r\n"[..],
        ),
        (
            &b"GET /public HTTP/1.0\r\nHost: web.test\r\n\r\n"[..],
            &b"GET /x"[..],
        ),
    ] {
        let c = gw.client();
        let mut all = req.to_vec();
        all.extend_from_slice(extra);
        gw.send(c, &all);
        let (u, _) = gw.upstream();
        gw.take(u);
        gw.send(u, OK);
        assert_eq!(status(&gw.take(c)), 200);
        gw.send(c, b"and more bytes");
        served.push(c);
    }
    assert_eq!(gw.stats().requests, 3, "nothing after the close was routed");
    // Body bytes that keep coming after the server answered early.
    let c4 = gw.client();
    gw.send(
        c4,
        b"POST /public HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\npart",
    );
    let (u, _) = gw.upstream();
    gw.take(u);
    gw.send(
        u,
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status(&gw.take(c4)), 413);
    for _ in 0..10 {
        gw.send(c4, &[b'x'; 10_000]);
    }
    // Every one of them had our FIN; each ends at the client's.
    for &c in [c1, c4].iter().chain(&served) {
        assert!(gw.net.shut(c), "the gateway finished its side");
    }
    all_gone(&mut gw, &[c1, served[0], served[1], c4]);
    assert_eq!(gw.stats().timeouts(Expiry::Linger), 0);

    // A client that never finishes its side is closed at LINGER.
    let c = gw.client();
    gw.send(
        c,
        b"GET / HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&gw.take(c)), 404);
    gw.advance(LINGER - Duration::from_millis(1));
    assert_eq!(gw.net.closed(c), None);
    gw.advance(Duration::from_millis(1));
    assert_eq!(gw.net.closed(c), Some(EngineClose::Close));
    assert_eq!(gw.stats().timeouts(Expiry::Linger), 1);
    assert_eq!(gw.engine.active(), 0);
    // A partial head followed by the client's FIN ends at once.
    let c = gw.client();
    gw.send(c, b"GET / HTT");
    gw.net.peer_shutdown(c);
    gw.settle();
    assert_eq!(gw.net.closed(c), Some(EngineClose::Close));
    assert_eq!(gw.engine.active(), 0);
    let _ = t;

    // A bodyless keep-alive request the gateway refuses keeps its connection: the next one
    // on it is served.
    let c = gw.client();
    gw.send(c, b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n");
    let resp = gw.take(c);
    assert_eq!(status(&resp), 404);
    assert!(!resp.contains("connection: close"), "{resp}");
    gw.send(c, b"GET /public HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
    all_gone(&mut gw, &[c]);
}

#[test]
fn an_interim_flood_is_cut_and_interims_wait_for_a_reading_client() {
    let mut gw = Gw::new(TABLES);
    let (c, u, _) = forwarded(&mut gw, b"GET /public HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    for _ in 0..MAX_INTERIM {
        gw.send(u, interim);
    }
    assert_eq!(gw.net.closed(u), None, "up to the limit is fine");
    gw.send(u, interim);
    assert_eq!(gw.net.closed(u), Some(EngineClose::Abort));
    let resp = gw.take(c);
    assert!(resp.ends_with("interim_flood\n"), "{resp}");
    assert_eq!(gw.stats().refused(Refusal::InterimFlood), 1);
    all_gone(&mut gw, &[c]);

    // A client that reads nothing: interim responses stop at the buffer, not past it.
    gw.net.window = 16;
    let (c, u, _) = forwarded(&mut gw, b"GET /public HTTP/1.1\r\nHost: web.test\r\n\r\n");
    let flood: Vec<u8> = interim.iter().copied().cycle().take(1 << 20).collect();
    gw.net.peer_send(u, &flood);
    gw.settle();
    assert!(
        gw.net.closed(u).is_some(),
        "the flood ends the attempt once past the limit"
    );
    let _ = c;
}

#[test]
fn misbehaving_servers_give_502_or_a_cut_and_their_connection_is_not_reused() {
    let mut gw = Gw::new(TABLES);
    let big_head = {
        let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
        while h.len() < 20 * 1024 {
            h.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        h.extend_from_slice(b"\r\n");
        h
    };
    for (what, reply, close, want) in [
        (
            "half a head",
            &b"HTTP/1.1 200 OK\r\nContent-"[..],
            true,
            Some(502),
        ),
        ("a 20 KiB head", &big_head[..], false, Some(502)),
        (
            "a short body",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."[..],
            true,
            None,
        ),
        (
            "a bad chunk",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            false,
            None,
        ),
    ] {
        let (c, u, _) = forwarded(&mut gw, b"GET /public HTTP/1.1\r\nHost: web.test\r\n\r\n");
        gw.net.peer_send(u, reply);
        if close {
            gw.net.peer_shutdown(u);
        }
        gw.settle();
        let resp = gw.take(c);
        match want {
            Some(code) => {
                assert_eq!(status(&resp), code, "{what}: {resp}");
                all_gone(&mut gw, &[c]);
            }
            None => {
                assert_eq!(gw.net.closed(c), Some(EngineClose::Abort), "{what}: a cut");
                assert_eq!(gw.engine.active(), 0, "{what}");
            }
        }
        assert_eq!(
            gw.net.closed(u),
            Some(EngineClose::Abort),
            "{what}: not reused"
        );
    }
    let s = gw.stats();
    assert_eq!(s.attempts(Outcome::ResetBeforeResponse), 2);
    assert_eq!(s.attempts(Outcome::ResetMidResponse), 2);
    assert_eq!(s.refused(Refusal::BadResponse), 4);
}

#[test]
fn connection_caps_per_listener_per_source_and_per_worker() {
    let tables = TABLES.replace(
        "protocol = \"http\"\n",
        "protocol = \"http\"\nmax_connections = 3\nmax_connections_per_source = 2\n",
    );
    let mut gw = Gw::new(&tables);
    let listen = common::LISTEN;
    let from = |last: u8, port: u16| {
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 1, last), port)
    };
    let a1 = gw.net.peer_connect(from(2, 1), listen);
    let a2 = gw.net.peer_connect(from(2, 2), listen);
    let a3 = gw.net.peer_connect(from(2, 3), listen);
    gw.settle();
    assert_eq!(
        gw.net.closed(a3),
        Some(EngineClose::Abort),
        "third from one address"
    );
    assert_eq!(gw.stats().refused(Refusal::SourceOverflow), 1);
    let b1 = gw.net.peer_connect(from(3, 1), listen);
    let b2 = gw.net.peer_connect(from(3, 2), listen);
    gw.settle();
    assert_eq!(gw.net.closed(b1), None);
    assert_eq!(
        gw.net.closed(b2),
        Some(EngineClose::Abort),
        "fourth on the listener"
    );
    assert_eq!(gw.stats().refused(Refusal::ListenerOverflow), 1);
    // A slot comes back when its session ends.
    gw.net.peer_reset(a1);
    gw.settle();
    let a4 = gw.net.peer_connect(from(2, 4), listen);
    gw.settle();
    assert_eq!(gw.net.closed(a4), None);
    for c in [a2, b1, a4] {
        gw.net.peer_reset(c);
    }
    gw.settle();
    assert_eq!(gw.engine.active(), 0);

    gw.engine.set_max_sessions(1);
    let c1 = gw.net.peer_connect(from(4, 1), listen);
    let c2 = gw.net.peer_connect(from(5, 1), listen);
    gw.settle();
    assert_eq!(gw.net.closed(c1), None);
    assert_eq!(gw.net.closed(c2), Some(EngineClose::Abort));
    assert_eq!(gw.stats().refused(Refusal::WorkerOverflow), 1);
}

#[test]
fn a_request_body_with_bad_chunk_framing_gets_400_not_a_reset() {
    let mut gw = Gw::new(TABLES);
    for (body, what) in [
        (&b"-1\r\n"[..], "a negative size"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "a 0x prefix"),
        (b"10000000000000000\r\n", "an overflow"),
        (
            b"5;a=\"open\r\nhello\r\n0\r\n\r\n",
            "an unterminated quoted extension",
        ),
        (
            b"5;a\x01\r\nhello\r\n0\r\n\r\n",
            "a control byte in an extension",
        ),
        (b"5;=x\r\nhello\r\n0\r\n\r\n", "an extension without a name"),
    ] {
        let (c, u, _) = forwarded(
            &mut gw,
            b"POST /public HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        gw.send(c, body);
        let resp = gw.take(c);
        assert_eq!(status(&resp), 400, "{what}: {resp}");
        assert_eq!(gw.net.closed(u), Some(EngineClose::Abort), "{what}");
        all_gone(&mut gw, &[c]);
    }
    // Well-formed extensions, quoted ones included, pass.
    let (c, u, got) = forwarded(
        &mut gw,
        b"POST /public HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n5 ; a = \"x\\\"y;z\" ; b ;c=d\r\nhello\r\n0\r\n\r\n",
    );
    assert!(got.ends_with("hello\r\n0\r\n\r\n"), "{got}");
    gw.send(u, OK);
    assert_eq!(status(&gw.take(c)), 200);
}

#[test]
fn a_whole_request_pipelined_before_the_fin_is_served_and_a_refused_head_closes() {
    let mut gw = Gw::new(TABLES);
    let c = gw.client();
    gw.send(
        c,
        b"GET /public HTTP/1.1\r\nHost: web.test\r\n\r\nGET /second HTTP/1.1\r\nHost: web.test\r\n\r\n",
    );
    gw.net.peer_shutdown(c);
    gw.settle();
    let (u, _) = gw.pending();
    gw.net.peer_accept(u);
    gw.settle();
    assert!(gw.take(u).starts_with("GET /public "));
    gw.send(u, OK);
    let got = gw.take(u);
    assert!(
        got.starts_with("GET /second "),
        "the second is served: {got}"
    );
    gw.send(u, OK);
    let resp = gw.take(c);
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
    assert_eq!(gw.engine.active(), 0);

    // A refused HEAD gets no body it would not read... and the connection closes.
    let c = gw.client();
    gw.send(c, b"HEAD / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n");
    let resp = gw.take(c);
    assert_eq!(status(&resp), 404);
    assert!(resp.contains("connection: close"), "{resp}");
    assert!(gw.net.shut(c));
}

#[test]
fn an_upload_to_a_server_that_reads_nothing_is_cut_even_while_the_client_trickles() {
    let t = Timeouts::default();
    let mut gw = Gw::new(TABLES);
    gw.net.window = 64;
    let (c, u, _) = forwarded(
        &mut gw,
        b"POST /public HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1000000\r\n\r\n",
    );
    // The server takes nothing more; the client keeps sending a byte every 2 s, which our
    // buffers still have room for.
    let mut waited = Duration::ZERO;
    while gw.net.closed(c).is_none() && waited < t.body_stall * 3 {
        gw.send(c, b"x");
        gw.advance(Duration::from_secs(2));
        waited += Duration::from_secs(2);
    }
    assert_eq!(gw.net.closed(c), Some(EngineClose::Abort), "cut");
    assert!(
        waited <= t.body_stall + Duration::from_secs(2),
        "within body_stall of the last byte the server took: {waited:?}"
    );
    assert_eq!(gw.net.closed(u), Some(EngineClose::Abort));
    assert_eq!(gw.engine.active(), 0);
}
