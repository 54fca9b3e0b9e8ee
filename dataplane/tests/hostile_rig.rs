//! The hostile suite (issue #14, "Proof"): hostile clients, peers and servers against the mesh
//! on the four-namespace rig (`scripts/rig.sh`), for both backends, one after the other:
//! client in xm-cli → gateway A (xm-gwa, HTTP listener) ══ mTLS ══ gateway B (xm-gwb) → our
//! own servers in xm-srv (nginx for the normal client, and small Rust servers that log what
//! they receive or misbehave on purpose).
//!
//! One function per case. Each asserts the status or the cut the hostile party gets, the
//! counter that names it, that a normal client is served meanwhile (a GET through the mesh on
//! a fresh connection every 100 ms while the case runs, and one after it), and that the
//! gateways' open sessions (`xdpmesh_proxy_sessions`) come back to where they were. A failing
//! case does not stop the others: every case runs and the test fails at the end with the list
//! (`case <name>: ok` / `case <name>: FAILED ...` lines show as they go).
//!
//! Cases (see each function): authz (path normalization, `tcp` preamble for an HTTP policy),
//! smuggle (upgrade smuggling, h2c, an unasked 101), leaks (session leak patterns with a
//! half-closing client), hop (hop-by-hop headers both ways), limits (one header limit over two
//! hops), interim (a flood of 100 Continue), badservers (silent, half head, huge head, short
//! body, bad chunk), admin (the admin API under slowloris), tcp_oow (out-of-window ACKs),
//! zero_window (a client that never reads), tcp_rst (a server's RST reaches the client as a
//! RST), memory (2000 idle connections of each kind; prints `memory:` lines), stuck_posts (100
//! uploads stuck behind a server that reads nothing), caps (connection caps per source and per
//! listener), framing (RFC 9112 framing ambiguities), slowloris (head and body), handshake
//! (idle and half-open TLS handshakes on B's mesh port), synflood (raw SYNs while a normal
//! client is served).
//!
//! Needs root; under CI=true it must run. While developing, `XM_HOSTILE_CASES=authz,leaks`
//! selects cases and `XM_HOSTILE_BACKENDS=kernel` a backend; CI runs all of them.
//! Only addresses inside the rig's namespaces and loopback receive traffic.

use dataplane::netns::{skip_unless_root, NetNs};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const A_HTTP: SocketAddrV4 = SocketAddrV4::new(A_IP, 80);
const A_BULK: SocketAddrV4 = SocketAddrV4::new(A_IP, 5201);
const B_MESH: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 10, 2, 2), 15443);
const SRV_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 3, 2);
const CLIENT_ID: &str = "spiffe://rig.mesh/sa/client";
const GW_B_ID: &str = "spiffe://rig.mesh/gateway/gw-b";

const REFUSED: &str = "xdpmesh_proxy_refused_total";
const ATTEMPTS: &str = "xdpmesh_proxy_attempts_total";
const TIMEOUTS: &str = "xdpmesh_proxy_timeouts_total";
const SESSIONS: &str = "xdpmesh_proxy_sessions";
const TCP_EVENTS: &str = "xdpmesh_tcp_events_total";

/// nginx: the normal client's server ("v1" at /, a large file for the zero-window case).
const P_WEB: u16 = 8080;
/// Logs every request (head and raw body) and every byte it reads; answers 200 with the head
/// it saw as the body; on `/hop...` also sends hop-by-hop response headers.
const P_LOG: u16 = 8082;
const BIG_LEN: usize = 32 << 20;

/// The misbehaving servers, by service name (Host `<name>.rig.mesh` on A's web listener).
const SERVICES: &[(&str, u16, Behave)] = &[
    ("log", P_LOG, Behave::Log),
    ("switch", 8083, Behave::Switch),
    ("flood", 8084, Behave::Flood),
    ("halfhead", 8085, Behave::HalfHead),
    ("bighead", 8086, Behave::BigHead),
    ("shortbody", 8087, Behave::Short),
    ("badchunk", 8088, Behave::BadChunk),
    ("early", 8089, Behave::Early),
    ("silent", 8090, Behave::Silent),
    ("noread", 8091, Behave::NoRead),
];

/// A's web listener in the base tables: the head timeout is short for the slowloris case,
/// the body stall short for the stuck uploads and the client that never reads.
const A_WEB_TIMEOUTS: &str = r#"timeouts = { request_head = "5s", body_stall = "3s" }"#;

// ---------------------------------------------------------------------------------------------
// The cases, in the order they run.

struct Case {
    name: &'static str,
    run: fn(&Ctx),
    /// Run a normal client (a GET every 100 ms) while the case runs. Off where it would
    /// disturb what the case measures (counts of sessions or connections, memory).
    meanwhile: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "authz",
        run: case_authz,
        meanwhile: true,
    },
    Case {
        name: "smuggle",
        run: case_smuggle,
        meanwhile: true,
    },
    Case {
        name: "leaks",
        run: case_leaks,
        meanwhile: false,
    },
    Case {
        name: "hop",
        run: case_hop,
        meanwhile: true,
    },
    Case {
        name: "limits",
        run: case_limits,
        meanwhile: true,
    },
    Case {
        name: "interim",
        run: case_interim,
        meanwhile: true,
    },
    Case {
        name: "badservers",
        run: case_badservers,
        meanwhile: true,
    },
    Case {
        name: "admin",
        run: case_admin,
        meanwhile: true,
    },
    Case {
        name: "tcp_oow",
        run: case_tcp_oow,
        meanwhile: true,
    },
    Case {
        name: "zero_window",
        run: case_zero_window,
        meanwhile: true,
    },
    Case {
        name: "tcp_rst",
        run: case_tcp_rst,
        meanwhile: true,
    },
    Case {
        name: "framing",
        run: case_framing,
        meanwhile: true,
    },
    Case {
        name: "slowloris",
        run: case_slowloris,
        meanwhile: true,
    },
    Case {
        name: "handshake",
        run: case_handshake,
        meanwhile: true,
    },
    Case {
        name: "synflood",
        run: case_synflood,
        meanwhile: false,
    },
    Case {
        name: "stuck_posts",
        run: case_stuck_posts,
        meanwhile: false,
    },
    Case {
        name: "memory",
        run: case_memory,
        meanwhile: false,
    },
    Case {
        name: "caps",
        run: case_caps,
        meanwhile: false,
    },
];

// ---------------------------------------------------------------------------------------------
// 1. Path normalization and authorization at B.

fn case_authz(c: &Ctx) {
    let mut ck = Check::default();
    let denied0 = c.counter(Gw::B, REFUSED, &[("reason", "denied")]);
    let bad0 = c.counter(Gw::A, REFUSED, &[("reason", "bad_request")])
        + c.counter(Gw::B, REFUSED, &[("reason", "bad_request")]);
    let log0 = c.servers.log_len();
    let denied = [
        "/admin",
        "/admin?x=1",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "//admin",
        "/%61dmin",
        "/admin;x=1",
    ];
    for p in denied {
        match c.request(&get("log.rig.mesh", p)) {
            Ok(r) => ck.that(
                r.status == 403,
                format!("GET {p}: {} from the mesh, want 403 from B", r.status),
            ),
            Err(e) => ck.fail(format!("GET {p}: {e}")),
        }
    }
    match c.request(&get("log.rig.mesh", "/public/x")) {
        Ok(r) => ck.that(
            r.status == 200 && r.text().contains("seen /public/x"),
            format!(
                "GET /public/x: {} {:?}, want 200 from the server",
                r.status,
                r.text()
            ),
        ),
        Err(e) => ck.fail(format!("GET /public/x: {e}")),
    }
    match c.request(&get("log.rig.mesh", "/a%zz")) {
        Ok(r) => ck.that(
            r.status == 400,
            format!("GET /a%zz: {}, want 400", r.status),
        ),
        Err(e) => ck.fail(format!("GET /a%zz: {e}")),
    }
    let want = denied0 + denied.len() as f64;
    let got = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        let d = c.counter(Gw::B, REFUSED, &[("reason", "denied")]);
        (d >= want).then_some(d)
    })
    .unwrap_or_else(|| c.counter(Gw::B, REFUSED, &[("reason", "denied")]));
    ck.that(
        got == want,
        format!(
            "B counted {} denials (reason=denied), want {}",
            got - denied0,
            denied.len()
        ),
    );
    let bad = eventually(|| {
        c.counter(Gw::A, REFUSED, &[("reason", "bad_request")])
            + c.counter(Gw::B, REFUSED, &[("reason", "bad_request")])
            > bad0
    });
    ck.that(
        bad,
        "the malformed percent-encoding was not counted as bad_request".into(),
    );
    for e in c.servers.log_since(log0) {
        ck.that(
            e.target() == "/public/x",
            format!(
                "the server saw {:?} (only /public/x may reach it)",
                e.request_line()
            ),
        );
    }

    // A mesh peer (valid client certificate) asking for a `tcp` hop to a service whose
    // authorization has paths: closed without a byte of the service.
    let pnh0 = c.counter(Gw::B, REFUSED, &[("reason", "policy_needs_http")]);
    let wire0 = c.servers.wire_len();
    let acc0 = c.servers.accepted(P_LOG);
    let payload =
        format!("XM/1 {SRV_IP}:{P_LOG} tcp\nGET /admin HTTP/1.1\r\nHost: log.rig.mesh\r\n\r\n");
    match c.mesh_peer("log", payload.as_bytes(), Duration::from_secs(5)) {
        Ok((how, got)) => {
            ck.that(
                how.closed(),
                format!("B kept the tcp hop to an HTTP-policy service open ({how:?})"),
            );
            ck.that(
                got.is_empty(),
                format!(
                    "the peer got {} bytes of the service: {:?}",
                    got.len(),
                    String::from_utf8_lossy(&got)
                ),
            );
        }
        Err(e) => ck.fail(format!("mesh peer: {e}")),
    }
    ck.that(
        c.servers.wire_len() == wire0,
        format!(
            "the server read {} bytes from the tcp hop (accepted {} connections)",
            c.servers.wire_len() - wire0,
            c.servers.accepted(P_LOG) - acc0
        ),
    );
    let counted = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        (c.counter(Gw::B, REFUSED, &[("reason", "policy_needs_http")]) > pnh0).then_some(())
    });
    ck.that(
        counted.is_some(),
        "B did not count the tcp hop as reason policy_needs_http".into(),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 2. Upgrade smuggling.

fn case_smuggle(c: &Ctx) {
    let mut ck = Check::default();
    let log0 = c.servers.log_len();
    let inner = "GET /admin HTTP/1.1\r\nHost: log.rig.mesh\r\n\r\n";
    let req = format!(
        "POST /public/upgrade HTTP/1.1\r\nHost: log.rig.mesh\r\nConnection: upgrade\r\n\
         Upgrade: websocket\r\nContent-Length: {}\r\n\r\n{inner}{inner}",
        inner.len()
    );
    match c.connect_a() {
        Ok(mut conn) => {
            let _ = conn.send(req.as_bytes());
            match conn.final_response("POST") {
                Ok(r) => ck.that(
                    r.status == 200 && r.text().contains("seen /public/upgrade"),
                    format!(
                        "POST /public with Upgrade: {} {:?}, want 200 from the server",
                        r.status,
                        r.text()
                    ),
                ),
                Err(e) => ck.fail(format!("POST /public with Upgrade: {e}")),
            }
            // The pipelined GET /admin after it is a request like any other: 403 from B, or
            // the gateway closed the connection. Never raw bytes to the server.
            if let Ok(r) = conn.final_response("GET") {
                ck.that(
                    r.status == 403,
                    format!("pipelined GET /admin after the upgrade POST: {}", r.status),
                );
            }
        }
        Err(e) => ck.fail(format!("connect: {e}")),
    }

    // h2c: the server sees neither Upgrade nor HTTP2-Settings and answers normally.
    let h2c =
        "GET /public/h2c HTTP/1.1\r\nHost: log.rig.mesh\r\nConnection: Upgrade, HTTP2-Settings\r\n\
               Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    match c.request(h2c) {
        Ok(r) => ck.that(
            r.status == 200,
            format!("h2c upgrade request: {}, want 200", r.status),
        ),
        Err(e) => ck.fail(format!("h2c upgrade request: {e}")),
    }
    let entries = c.servers.log_since(log0);
    match entries.iter().find(|e| e.target() == "/public/h2c") {
        Some(e) => {
            for (name, value) in e.headers() {
                let n = name.to_ascii_lowercase();
                ck.that(
                    n != "upgrade" && n != "http2-settings",
                    format!("the server saw `{name}: {value}` on the h2c request"),
                );
                if n == "connection" {
                    let v = value.to_ascii_lowercase();
                    ck.that(
                        !v.contains("upgrade") && !v.contains("http2-settings"),
                        format!("the server saw `Connection: {value}` on the h2c request"),
                    );
                }
            }
        }
        None => ck.fail("the server never saw the h2c request".into()),
    }
    for e in &entries {
        ck.that(
            !e.target().contains("admin"),
            format!(
                "smuggled: the server saw the request line {:?}",
                e.request_line()
            ),
        );
    }

    // A server that answers 101 to a request that asked for no upgrade: 502.
    let bad0 = c.counter(Gw::B, REFUSED, &[("reason", "bad_response")]);
    match c.request(&get("switch.rig.mesh", "/")) {
        Ok(r) => ck.that(
            r.status == 502,
            format!(
                "an unasked 101 from the server: {} {:?}, want 502",
                r.status,
                r.text()
            ),
        ),
        Err(e) => ck.fail(format!("an unasked 101 from the server: {e}, want 502")),
    }
    let counted = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        (c.counter(Gw::B, REFUSED, &[("reason", "bad_response")]) > bad0).then_some(())
    });
    ck.that(
        counted.is_some(),
        "B did not count the unasked 101 as reason bad_response".into(),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 3. Session leaks: the client half-closes after each pattern; the gateway must close.

fn case_leaks(c: &Ctx) {
    let mut ck = Check::default();
    let base = (c.sessions(Gw::A), c.sessions(Gw::B));
    let fds0 = (c.backend == "kernel").then(|| c.fds_beyond_pool());
    let body = "0123456789";
    let rest: Vec<u8> = vec![b'b'; 99_000];
    let patterns: Vec<(&str, String, Option<u16>, &[u8])> = vec![
        (
            "404 for an unknown Host with a body",
            format!("POST / HTTP/1.1\r\nHost: nosuch.example\r\nContent-Length: 10\r\n\r\n{body}"),
            Some(404),
            b"",
        ),
        (
            "403 with a body",
            format!("POST /admin/x HTTP/1.1\r\nHost: log.rig.mesh\r\nContent-Length: 10\r\n\r\n{body}"),
            Some(403),
            b"",
        ),
        (
            "bytes pipelined after Connection: close",
            "GET / HTTP/1.1\r\nHost: web.rig.mesh\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: web.rig.mesh\r\n\r\n"
                .to_owned(),
            Some(200),
            b"",
        ),
        (
            "HTTP/1.0 request followed by more bytes",
            "GET / HTTP/1.0\r\nHost: web.rig.mesh\r\n\r\nxyz more bytes".to_owned(),
            Some(200),
            b"",
        ),
        (
            "body bytes after an early response",
            format!(
                "POST /up HTTP/1.1\r\nHost: early.rig.mesh\r\nContent-Length: 100000\r\n\r\n{}",
                "a".repeat(1000)
            ),
            Some(200),
            &rest,
        ),
    ];
    for (name, first, want, after) in &patterns {
        let mut conn = match c.connect_a() {
            Ok(x) => x,
            Err(e) => {
                ck.fail(format!("{name}: connect: {e}"));
                continue;
            }
        };
        let _ = conn.send(first.as_bytes());
        match conn.final_response("POST") {
            Ok(r) => ck.that(
                Some(r.status) == *want,
                format!("{name}: status {}, want {want:?}", r.status),
            ),
            Err(e) => ck.fail(format!("{name}: no response: {e}")),
        };
        if !after.is_empty() {
            let _ = conn.s.write_all(after);
        }
        let _ = conn.s.shutdown(Shutdown::Write);
        let how = conn.until_closed(Duration::from_secs(3));
        ck.that(
            how.closed(),
            format!("{name}: the gateway did not close within 3 s of the client's FIN ({how:?})"),
        );
        if let Err(e) = c.normal_get() {
            ck.fail(format!("after {name}: a normal client was not served: {e}"));
        }
    }
    let back = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        let now = (c.sessions(Gw::A), c.sessions(Gw::B));
        (now.0.is_some() && now.0 <= base.0 && now.1 <= base.1).then_some(())
    });
    ck.that(
        back.is_some(),
        format!(
            "sessions did not come back within 3 s: A {:?} → {:?}, B {:?} → {:?}",
            base.0,
            c.sessions(Gw::A),
            base.1,
            c.sessions(Gw::B)
        ),
    );
    if let Some(fds0) = fds0 {
        let back = poll(Duration::from_secs(3), Duration::from_millis(100), || {
            (c.fds_beyond_pool() <= fds0).then_some(())
        });
        ck.that(
            back.is_some(),
            format!(
                "A's open fds (less its pooled connections) did not come back within 3 s: {fds0} → {}",
                c.fds_beyond_pool()
            ),
        );
    }
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 4. Hop-by-hop headers, both ways.

fn case_hop(c: &Ctx) {
    let mut ck = Check::default();
    let log0 = c.servers.log_len();
    let req = "GET /hop HTTP/1.1\r\nHost: log.rig.mesh\r\nConnection: X-Foo\r\nX-Foo: 1\r\n\
               Keep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: foo\r\n\
               X-Keep: yes\r\n\r\n";
    let r = match c.request(req) {
        Ok(r) => r,
        Err(e) => panic!("GET /hop: {e}"),
    };
    ck.that(r.status == 200, format!("GET /hop: {}", r.status));
    let hop_req = ["x-foo", "keep-alive", "proxy-connection", "te", "upgrade"];
    match c
        .servers
        .log_since(log0)
        .iter()
        .find(|e| e.target() == "/hop")
    {
        Some(e) => {
            let mut kept = false;
            for (name, value) in e.headers() {
                let n = name.to_ascii_lowercase();
                kept |= n == "x-keep";
                ck.that(
                    !hop_req.contains(&n.as_str()),
                    format!("the server saw `{name}: {value}`"),
                );
                if n == "connection" {
                    for t in value.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                        ck.that(
                            !["x-foo", "te", "upgrade", "proxy-connection"].contains(&t.as_str()),
                            format!("the server saw `Connection: {value}`"),
                        );
                    }
                }
            }
            ck.that(
                kept,
                "an end-to-end header (X-Keep) did not reach the server".into(),
            );
        }
        None => ck.fail("the server never saw GET /hop".into()),
    }
    let hop_resp = ["x-bar", "keep-alive", "proxy-connection", "trailer"];
    for (name, value) in r.headers() {
        let n = name.to_ascii_lowercase();
        ck.that(
            !hop_resp.contains(&n.as_str()),
            format!("the client saw `{name}: {value}`"),
        );
        if n == "connection" {
            ck.that(
                !value.to_ascii_lowercase().contains("x-bar"),
                format!("the client saw `Connection: {value}`"),
            );
        }
    }
    ck.that(
        r.header("x-plain") == Some("yes"),
        "an end-to-end response header (X-Plain) did not reach the client".into(),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 5. One header limit over both hops.

/// A request head of `fields` fields (Host included) and exactly `len` bytes (final CRLF
/// included), padded in `X-Fill-NN` values.
fn head_of(path: &str, fields: usize, len: usize) -> String {
    let mut h = format!("GET {path} HTTP/1.1\r\nHost: log.rig.mesh\r\n");
    let fill = fields - 1;
    let names: Vec<String> = (0..fill).map(|i| format!("X-Fill-{i:02}")).collect();
    let bare: usize = h.len() + names.iter().map(|n| n.len() + 4).sum::<usize>() + 2;
    let pad = len.saturating_sub(bare);
    for (i, n) in names.iter().enumerate() {
        let v = pad / fill + usize::from(i < pad % fill);
        h.push_str(&format!("{n}: {}\r\n", "a".repeat(v)));
    }
    h.push_str("\r\n");
    h
}

fn case_limits(c: &Ctx) {
    let mut ck = Check::default();
    let log0 = c.servers.log_len();
    let big = head_of("/limits/62", 62, 16 * 1024 - 16);
    assert_eq!(big.len(), 16 * 1024 - 16);
    match c.request(&big) {
        Ok(r) => ck.that(
            r.status == 200,
            format!(
                "62 fields, {} bytes of head (A adds x-request-id and traceparent): {} {}, want 200",
                big.len(),
                r.status,
                r.header("x-xdpmesh-error").unwrap_or("")
            ),
        ),
        Err(e) => ck.fail(format!("62 fields: {e}")),
    }
    let a0 = c.counter(Gw::A, REFUSED, &[("reason", "bad_request")]);
    let many = head_of("/limits/65", 65, 0);
    match c.request(&many) {
        Ok(r) => ck.that(
            r.status == 431,
            format!("65 fields: {}, want 431 from A", r.status),
        ),
        Err(e) => ck.fail(format!("65 fields: {e}")),
    }
    let counted = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        (c.counter(Gw::A, REFUSED, &[("reason", "bad_request")]) > a0).then_some(())
    });
    ck.that(
        counted.is_some(),
        "A did not count 65 fields as reason bad_request".into(),
    );
    let seen: Vec<String> = c
        .servers
        .log_since(log0)
        .iter()
        .map(|e| e.target().to_owned())
        .collect();
    ck.that(
        !seen.iter().any(|t| t == "/limits/65"),
        "the server saw the 65-field request".into(),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 6. A flood of interim responses to a client that reads nothing.

fn case_interim(c: &Ctx) {
    let mut ck = Check::default();
    let rss0 = c.rss_kib(Gw::A);
    let flood0 = c.counter(Gw::B, REFUSED, &[("reason", "interim_flood")]);
    let a0 = (
        c.counter(Gw::A, REFUSED, &[("reason", "bad_response")]),
        c.counter(Gw::A, REFUSED, &[("reason", "upstream_reset")]),
    );
    c.servers.shared.flood_written.store(0, Ordering::SeqCst);
    let s = c
        .cli
        .run(|| tcp_connect(None, A_HTTP, Some(4096), Duration::from_secs(5)))
        .expect("connect A");
    let mut conn = Conn::new(s, Duration::from_secs(10));
    conn.send(get("flood.rig.mesh", "/").as_bytes()).unwrap();
    let t0 = Instant::now();
    let mut max = rss0;
    let mut counted = false;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    // RSS sampled every 20 ms while the flood runs (a measurement, not a synchronization),
    // until B counted the flood, at most 15 s.
    while t0.elapsed() < Duration::from_secs(15) {
        max = max.max(c.rss_kib(Gw::A));
        if last_check.elapsed() >= Duration::from_millis(100) {
            last_check = Instant::now();
            if c.counter(Gw::B, REFUSED, &[("reason", "interim_flood")]) > flood0 {
                counted = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    max = max.max(c.rss_kib(Gw::A));
    let how = conn.until_closed(Duration::from_secs(10));
    let written = c.servers.shared.flood_written.load(Ordering::SeqCst);
    let a1 = (
        c.counter(Gw::A, REFUSED, &[("reason", "bad_response")]),
        c.counter(Gw::A, REFUSED, &[("reason", "upstream_reset")]),
    );
    println!(
        "interim flood ({}): server wrote {written} bytes of 100 Continue; client read {} bytes, then {how:?}; \
         A RSS {rss0} → max {max} KiB; A counted bad_response +{}, upstream_reset +{}",
        c.backend,
        conn.buf.len(),
        a1.0 - a0.0,
        a1.1 - a0.1
    );
    ck.that(
        max.saturating_sub(rss0) < 8 * 1024,
        format!("A's RSS grew by {} KiB (limit 8 MiB)", max - rss0),
    );
    ck.that(
        counted,
        "B did not count reason interim_flood within 15 s".into(),
    );
    // The request ends for the client: B's 502 (interim_flood) reaches it through A, or its
    // connection is cut. (A's connection to the client may stay open after a whole 502: the
    // server's misbehaviour ends B's connection to it, not the client's.)
    let answered = String::from_utf8_lossy(&conn.buf).contains(" 502 ");
    ck.that(
        answered || how.closed(),
        format!("the client got no 502 and its connection was not cut ({how:?})"),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 7. Bad servers.

fn case_badservers(c: &Ctx) {
    let mut ck = Check::default();
    // Silent: 504 at the route's 2 s timeout.
    let t0 = Instant::now();
    let to0 = c.counter(Gw::A, TIMEOUTS, &[("timeout", "request")]);
    match c.request(&get("silent.rig.mesh", "/")) {
        Ok(r) => {
            let took = t0.elapsed();
            ck.that(
                r.status == 504,
                format!("silent server: {}, want 504", r.status),
            );
            ck.that(
                took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
                format!("silent server: 504 after {took:?}, want the route's 2 s"),
            );
        }
        Err(e) => ck.fail(format!("silent server: {e}")),
    }
    ck.that(
        eventually(|| c.counter(Gw::A, TIMEOUTS, &[("timeout", "request")]) > to0),
        "A did not count the request timeout".into(),
    );
    // A malformed head before the response: 502, the attempt ends reset_before_response.
    for (host, what) in [
        ("halfhead.rig.mesh", "half a head, then close"),
        ("bighead.rig.mesh", "a 20 KiB response head"),
    ] {
        let rbr0 = c.counter(Gw::B, ATTEMPTS, &[("outcome", "reset_before_response")]);
        match c.request(&get(host, "/")) {
            Ok(r) => ck.that(r.status == 502, format!("{what}: {}, want 502", r.status)),
            Err(e) => ck.fail(format!("{what}: {e}, want 502")),
        }
        let moved = poll(Duration::from_secs(3), Duration::from_millis(100), || {
            (c.counter(Gw::B, ATTEMPTS, &[("outcome", "reset_before_response")]) > rbr0)
                .then_some(())
        });
        ck.that(
            moved.is_some(),
            format!("{what}: B's attempts{{outcome=reset_before_response}} did not move"),
        );
        if let Err(e) = c.normal_get() {
            ck.fail(format!("after {what}: {e}"));
        }
    }
    // A response that breaks mid-body: the client sees a cut.
    for (host, what) in [
        ("shortbody.rig.mesh", "Content-Length 100, 10 bytes, close"),
        ("badchunk.rig.mesh", "a bad chunk size"),
    ] {
        let rmr0 = c.counter(Gw::B, ATTEMPTS, &[("outcome", "reset_mid_response")]);
        match c.connect_a() {
            Ok(mut conn) => {
                c.servers.shared.release.store(false, Ordering::SeqCst);
                let _ = conn.send(get(host, "/").as_bytes());
                // The server goes on (and breaks) once the client has the first bytes.
                let first = if host.starts_with("short") {
                    "0123456789"
                } else {
                    "hello"
                };
                poll(Duration::from_secs(5), Duration::from_millis(1), || {
                    let _ = conn.s.set_read_timeout(Some(Duration::from_millis(50)));
                    let _ = conn.fill();
                    find(&conn.buf, first.as_bytes()).map(|_| ())
                });
                c.servers.shared.release.store(true, Ordering::SeqCst);
                let how = conn.until_closed(Duration::from_secs(5));
                let raw = String::from_utf8_lossy(&conn.buf).into_owned();
                ck.that(
                    how.closed(),
                    format!("{what}: the client's connection stayed open ({how:?})"),
                );
                ck.that(
                    raw.starts_with("HTTP/1.1 200"),
                    format!("{what}: the client got {raw:?}"),
                );
                let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                if host.starts_with("short") {
                    ck.that(
                        body.len() < 100,
                        format!("{what}: the client got {} body bytes", body.len()),
                    );
                } else {
                    ck.that(
                        !raw.contains("BADBAD") && !body.ends_with("0\r\n\r\n"),
                        format!("{what}: the bad chunk reached the client: {raw:?}"),
                    );
                }
            }
            Err(e) => ck.fail(format!("{what}: connect: {e}")),
        }
        let moved = poll(Duration::from_secs(3), Duration::from_millis(100), || {
            (c.counter(Gw::B, ATTEMPTS, &[("outcome", "reset_mid_response")]) > rmr0).then_some(())
        });
        ck.that(
            moved.is_some(),
            format!("{what}: B's attempts{{outcome=reset_mid_response}} did not move"),
        );
        if let Err(e) = c.normal_get() {
            ck.fail(format!("after {what}: {e}"));
        }
    }
    // curl sees the short body as a partial transfer: exit 18 when the gateway ends it with a
    // FIN, 56 when with a RST; both are a cut (curl fails), never a success. The server
    // breaks once curl has written the first 10 bytes of the body to its file.
    c.servers.shared.release.store(false, Ordering::SeqCst);
    let out = c.state.join("short.out");
    let _ = std::fs::remove_file(&out);
    let mut curl = c
        .cli
        .command("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-H",
            "Host: shortbody.rig.mesh",
            "-o",
        ])
        .arg(&out)
        .arg("http://10.10.1.1/")
        .stdin(Stdio::null())
        .spawn()
        .expect("curl");
    poll(Duration::from_secs(5), Duration::from_millis(5), || {
        (std::fs::metadata(&out).map_or(0, |m| m.len()) >= 10).then_some(())
    });
    c.servers.shared.release.store(true, Ordering::SeqCst);
    let code = curl.wait().expect("curl").code();
    let got = std::fs::read(&out).unwrap_or_default();
    println!(
        "badservers ({}): curl on the short body exited {code:?} with {} bytes",
        c.backend,
        got.len()
    );
    ck.that(
        matches!(code, Some(18) | Some(56)) && got.len() == 10,
        format!(
            "curl on the short body exited {code:?} with {} bytes, want 18 (partial file) or 56 (reset) with 10",
            got.len()
        ),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 8. The admin API under slowloris.

fn case_admin(c: &Ctx) {
    let mut ck = Check::default();
    let holders: Vec<TcpStream> = c
        .gwa
        .run(|| {
            (0..64)
                .map(|_| {
                    let mut s = tcp_connect(None, ADMIN, None, Duration::from_secs(3))?;
                    s.write_all(b"G")?;
                    Ok(s)
                })
                .collect::<io::Result<_>>()
        })
        .expect("64 slow connections to A's admin API");
    let mut bad = Vec::new();
    let mut in_a_row = 0;
    'rounds: for round in 0..20 {
        for p in ["/healthz", "/readyz", "/metrics"] {
            match admin_http(&c.gwa, "GET", p, b"", Duration::from_secs(3)) {
                Ok((200, _)) => in_a_row = 0,
                other => {
                    bad.push(format!("round {round} {p}: {:?}", other.map(|(s, _)| s)));
                    in_a_row += 1;
                    if in_a_row >= 3 {
                        bad.push("(stopped after 3 failures in a row)".into());
                        break 'rounds;
                    }
                }
            }
        }
    }
    drop(holders);
    ck.that(
        bad.is_empty(),
        format!("with 64 slow connections held, the admin API failed: {bad:?}"),
    );
    ck.done();
}

const ADMIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901);

// ---------------------------------------------------------------------------------------------
// 9a. Out-of-window bare ACKs on an established connection draw at most a few ACKs.

fn case_tcp_oow(c: &Ctx) {
    let mut ck = Check::default();
    let (sniff, raw) = c
        .cli
        .run(|| Ok::<_, io::Error>((raw::Sniffer::open("cli-gwa")?, raw::Sender::open()?)))
        .expect("raw sockets in xm-cli");
    let mut conn = c.connect_a().expect("connect A");
    conn.send(get("web.rig.mesh", "/").as_bytes()).unwrap();
    let r = conn.final_response("GET").expect("GET /");
    assert_eq!(r.status, 200);
    let SocketAddr::V4(local) = conn.s.local_addr().unwrap() else {
        panic!("not IPv4")
    };
    // What the connection looks like now, from the capture of its first exchange.
    let segs = poll(Duration::from_secs(2), Duration::from_millis(20), || {
        let s = sniff.drain();
        (!s.is_empty()).then_some(s)
    })
    .unwrap_or_default();
    let ours: Vec<&raw::Seg> = segs
        .iter()
        .filter(|s| s.src == local && s.dst == A_HTTP)
        .collect();
    let theirs: Vec<&raw::Seg> = segs
        .iter()
        .filter(|s| s.src == A_HTTP && s.dst == local)
        .collect();
    let (Some(o), Some(t)) = (ours.last(), theirs.last()) else {
        panic!(
            "the capture on cli-gwa missed the connection ({} segments)",
            segs.len()
        )
    };
    let snd_nxt = o
        .seq
        .wrapping_add(o.len)
        .wrapping_add(u32::from(o.flags & raw::FIN != 0));
    let rcv_nxt = t
        .seq
        .wrapping_add(t.len)
        .wrapping_add(u32::from(t.flags & raw::FIN != 0));
    let mut opts = Vec::new();
    if let (Some((tsval, _)), Some((their, _))) = (o.ts, t.ts) {
        opts.extend_from_slice(&[1, 1, 8, 10]);
        opts.extend_from_slice(&tsval.to_be_bytes());
        opts.extend_from_slice(&their.to_be_bytes());
    }
    let suppressed0 = c.counter(Gw::A, TCP_EVENTS, &[("event", "invalid_acks_suppressed")]);
    let _ = sniff.drain();
    for i in 0..100u32 {
        let p = raw::packet(&raw::Tcp {
            src: local,
            dst: A_HTTP,
            seq: snd_nxt.wrapping_add(0x4000_0000).wrapping_add(i * 1460),
            ack: rcv_nxt,
            flags: raw::ACK,
            window: o.window,
            options: &opts,
        });
        raw.send(&p, A_IP).expect("send a raw ACK");
    }
    // A measuring window, not a synchronization: answers to the burst come within a few
    // round trips; a rate limit would spread them over it.
    std::thread::sleep(Duration::from_secs(1));
    let answers = sniff
        .drain()
        .into_iter()
        .filter(|s| {
            s.src == A_HTTP
                && s.dst == local
                && s.flags & raw::ACK != 0
                && s.flags & (raw::SYN | raw::FIN | raw::RST) == 0
                && s.len == 0
        })
        .count();
    let suppressed =
        c.counter(Gw::A, TCP_EVENTS, &[("event", "invalid_acks_suppressed")]) - suppressed0;
    println!(
        "tcp_oow ({}): 100 out-of-window ACKs drew {answers} ACKs (invalid_acks_suppressed +{suppressed})",
        c.backend
    );
    ck.that(
        answers <= 5,
        format!("100 out-of-window ACKs drew {answers} ACKs from A (at most 5)"),
    );
    conn.send(get("web.rig.mesh", "/").as_bytes()).unwrap();
    match conn.final_response("GET") {
        Ok(r) => ck.that(
            r.status == 200,
            format!("the connection after the burst: {}", r.status),
        ),
        Err(e) => ck.fail(format!("the connection after the burst: {e}")),
    }
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 9b. A client that never reads a large response (zero window) is dropped.

fn case_zero_window(c: &Ctx) {
    let mut ck = Check::default();
    let stalls = || {
        c.counter(Gw::A, TIMEOUTS, &[("timeout", "body_stall")])
            + c.counter(Gw::B, TIMEOUTS, &[("timeout", "body_stall")])
    };
    let stall0 = stalls();
    let s = c
        .cli
        .run(|| tcp_connect(None, A_HTTP, Some(4096), Duration::from_secs(5)))
        .expect("connect A");
    let mut conn = Conn::new(s, Duration::from_secs(10));
    conn.send(get("web.rig.mesh", "/big.bin").as_bytes())
        .unwrap();
    let t0 = Instant::now();
    let cut = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        (stalls() > stall0).then(|| t0.elapsed())
    });
    let how = conn.until_closed(Duration::from_secs(10));
    println!(
        "zero_window ({}): body_stall counted after {cut:?}; the client then read {} of {BIG_LEN} bytes and {how:?}",
        c.backend,
        conn.buf.len()
    );
    ck.that(
        cut.is_some(),
        "no body_stall timeout counted within 20 s for a client that never reads".into(),
    );
    ck.that(
        how.closed(),
        format!("the client that never reads was not dropped ({how:?})"),
    );
    ck.that(
        conn.buf.len() < BIG_LEN,
        "the whole file fit into the buffers: the case tests nothing".into(),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 9c. A TCP server's RST reaches the client as a RST.

fn case_tcp_rst(c: &Ctx) {
    let mut ck = Check::default();
    let s = c
        .cli
        .run(|| tcp_connect(None, A_BULK, None, Duration::from_secs(5)))
        .expect("connect A:5201");
    let mut conn = Conn::new(s, Duration::from_secs(10));
    let how = conn.until_closed(Duration::from_secs(10));
    println!(
        "tcp_rst ({}): got {} bytes, then {how:?}",
        c.backend,
        conn.buf.len()
    );
    ck.that(
        how == Closed::Reset,
        format!(
            "the server sent {} bytes and a RST; the client got {} bytes and {how:?}, want a RST",
            TRUNC_BYTES,
            conn.buf.len()
        ),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// Framing ambiguities (RFC 9112 §6.3, §7.1).

fn case_framing(c: &Ctx) {
    let mut ck = Check::default();
    let wire0 = c.servers.wire_len();
    let log0 = c.servers.log_len();
    let bad0 = c.counter(Gw::A, REFUSED, &[("reason", "bad_request")]);
    let h = "Host: log.rig.mesh\r\n";
    // (name, request, want status). Paths carry the name, so the server log shows a leak.
    let refused: Vec<(&str, String, u16)> = vec![
        ("cl-te", format!("POST /frame/cl-te HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("two-cl", format!("POST /frame/two-cl HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"), 400),
        ("chunked-gzip", format!("POST /frame/chunked-gzip HTTP/1.1\r\n{h}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"), 400),
        ("te-http10", format!("POST /frame/te-http10 HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("obs-fold", format!("GET /frame/obs-fold HTTP/1.1\r\n{h}X-A: 1\r\n  folded\r\n\r\n"), 400),
        ("bare-cr", format!("GET /frame/bare-cr HTTP/1.1\r\n{h}X-A: a\rb\r\n\r\n"), 400),
        ("nul", format!("GET /frame/nul HTTP/1.1\r\n{h}X-A: a\0b\r\n\r\n"), 400),
        ("two-host", format!("GET /frame/two-host HTTP/1.1\r\n{h}Host: web.rig.mesh\r\n\r\n"), 400),
    ];
    // Bad chunked bodies: the head may reach the server, the bad chunk line must not.
    let chunks: Vec<(&str, &str)> = vec![
        ("chunk-neg", "-1\r\nhello\r\n0\r\n\r\n"),
        ("chunk-0x", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk-overflow", "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
        ("chunk-ext-ctl", "5;\x01x\r\nhello\r\n0\r\n\r\n"),
        ("chunk-ext-quote", "5;a=\"open\r\nhello\r\n0\r\n\r\n"),
    ];
    let mut expect_bad = 0;
    for (name, req, want) in &refused {
        expect_bad += 1;
        framing_one(c, &mut ck, name, req.as_bytes(), *want);
    }
    for (name, body) in &chunks {
        expect_bad += 1;
        let req =
            format!("POST /frame/{name} HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n{body}");
        framing_one(c, &mut ck, name, req.as_bytes(), 400);
        let line = body.split("\r\n").next().unwrap_or_default();
        let needle = format!("{line}\r\nhello");
        ck.that(
            !c.servers
                .wire_since(wire0)
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            format!("{name}: the server read the bad chunk line {line:?}"),
        );
    }
    let counted = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        let n = c.counter(Gw::A, REFUSED, &[("reason", "bad_request")]) - bad0;
        (n >= expect_bad as f64).then_some(n)
    });
    ck.that(
        counted.is_some(),
        format!(
            "A counted {} bad_request refusals, want {expect_bad}",
            c.counter(Gw::A, REFUSED, &[("reason", "bad_request")]) - bad0
        ),
    );
    // What http.rs accepts: `gzip, chunked` is valid framing (chunked last, once).
    let gz = format!("POST /frame/gzip-chunked HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    match c.request(&gz) {
        Ok(r) => ck.that(
            r.status == 200,
            format!("gzip, chunked: {}, want 200 (valid framing)", r.status),
        ),
        Err(e) => ck.fail(format!("gzip, chunked: {e}")),
    }
    // Bare LF line endings: httparse accepts them; the head is re-emitted with CRLF.
    for (name, req) in [
        (
            "lf",
            "GET /frame/lf HTTP/1.1\nHost: log.rig.mesh\nX-A: 1\n\n",
        ),
        (
            "lf-line",
            "GET /frame/lf-line HTTP/1.1\nHost: log.rig.mesh\r\n\r\n",
        ),
    ] {
        match c.request(req) {
            Ok(r) => ck.that(
                r.status == 200,
                format!("{name}: {}, want 200 (re-emitted with CRLF)", r.status),
            ),
            Err(e) => ck.fail(format!("{name}: {e}")),
        }
    }
    for e in c.servers.log_since(log0) {
        let t = e.target().to_owned();
        let name = t.strip_prefix("/frame/").unwrap_or("");
        ck.that(
            !refused.iter().any(|(n, _, _)| *n == name),
            format!("the server saw the refused head {name}: {:?}", e.head),
        );
        let bare = e.head.as_bytes().windows(2).enumerate().any(|(i, w)| {
            (w[1] == b'\n' && w[0] != b'\r')
                || (w[0] == b'\r' && w[1] != b'\n')
                || (i == 0 && w[0] == b'\n')
        });
        ck.that(
            !bare,
            format!("the server saw a head with a bare CR or LF: {:?}", e.head),
        );
    }
    ck.done();
}

fn framing_one(c: &Ctx, ck: &mut Check, name: &str, req: &[u8], want: u16) {
    let mut conn = match c.connect_a() {
        Ok(x) => x,
        Err(e) => return ck.fail(format!("{name}: connect: {e}")),
    };
    let _ = conn.send(req);
    match conn.final_response("POST") {
        Ok(r) => {
            ck.that(
                r.status == want,
                format!("{name}: {}, want {want}", r.status),
            );
            let how = conn.until_closed(Duration::from_secs(3));
            ck.that(
                how.closed(),
                format!(
                    "{name}: the connection stayed open after {} ({how:?})",
                    r.status
                ),
            );
        }
        Err(e) => ck.fail(format!("{name}: no response: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Slowloris: a head one byte every 3 s, and a body that stalls.

fn case_slowloris(c: &Ctx) {
    let mut ck = Check::default();
    let head0 = c.counter(Gw::A, TIMEOUTS, &[("timeout", "request_head")]);
    let stalls = || {
        c.counter(Gw::A, TIMEOUTS, &[("timeout", "body_stall")])
            + c.counter(Gw::B, TIMEOUTS, &[("timeout", "body_stall")])
    };
    let stall0 = stalls();
    let (head, body) = std::thread::scope(|sc| {
        let head = sc.spawn(|| c.cli.run(slow_head));
        let body = sc.spawn(|| c.cli.run(slow_body));
        (head.join().unwrap(), body.join().unwrap())
    });
    let (text, took) = head;
    ck.that(
        text.starts_with("HTTP/1.1 408"),
        format!("slow head: got {text:?}, want 408"),
    );
    ck.that(
        took < Duration::from_secs(9),
        format!("slow head: cut after {took:?}, want within the 5 s head timeout (+ one 3 s pace)"),
    );
    let (how, took, got) = body;
    println!(
        "slowloris ({}): body stall cut after {took:?} ({how:?}, got {got:?})",
        c.backend
    );
    ck.that(how.closed(), format!("slow body: not cut ({how:?})"));
    ck.that(
        took < Duration::from_secs(8),
        format!("slow body: cut after {took:?}, want about the 3 s body_stall"),
    );
    ck.that(
        eventually(|| c.counter(Gw::A, TIMEOUTS, &[("timeout", "request_head")]) > head0),
        "A did not count the head timeout".into(),
    );
    ck.that(
        eventually(|| stalls() > stall0),
        "no body_stall timeout counted for the stalled body".into(),
    );
    ck.done();
}

fn slow_head() -> (String, Duration) {
    let mut c = tcp_connect(None, A_HTTP, None, Duration::from_secs(5)).expect("connect A");
    // The pace under test: one byte, then up to 3 s for an answer.
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    for &b in b"GET / HTTP/1.1\r\nHost: web.rig.mesh\r\nX-Slow: 1\r\n".iter() {
        if c.write_all(&[b]).is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {} // nothing within 3 s: send the next byte
        }
    }
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.read_to_end(&mut got);
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

fn slow_body() -> (Closed, Duration, String) {
    let s = tcp_connect(None, A_HTTP, None, Duration::from_secs(5)).expect("connect A");
    let mut conn = Conn::new(s, Duration::from_secs(10));
    conn.send(
        b"POST /slow HTTP/1.1\r\nHost: log.rig.mesh\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    let t = Instant::now();
    let how = conn.until_closed(Duration::from_secs(12));
    let got = String::from_utf8_lossy(&conn.buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    (how, t.elapsed(), got)
}

// ---------------------------------------------------------------------------------------------
// Idle and half-open TLS handshakes on B's mesh port.

fn case_handshake(c: &Ctx) {
    let mut ck = Check::default();
    let hs0 = c.counter(Gw::B, TIMEOUTS, &[("timeout", "handshake")]);
    let within = Duration::from_secs(8);
    let results: Vec<(&str, io::Result<(Closed, Duration)>)> = std::thread::scope(|sc| {
        let idle = sc.spawn(|| {
            c.cli.run(|| {
                let s = tcp_connect(None, B_MESH, None, Duration::from_secs(5))?;
                let t = Instant::now();
                let how = Conn::new(s, within).until_closed(within);
                Ok((how, t.elapsed()))
            })
        });
        let half = sc.spawn(|| {
            c.cli.run(|| {
                let s = tcp_connect(None, B_MESH, None, Duration::from_secs(5))?;
                let mut conn = Conn::new(s, within);
                // A TLS record header announcing 512 bytes of ClientHello, and 6 of them.
                conn.send(&[
                    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                ])?;
                let t = Instant::now();
                let how = conn.until_closed(within);
                Ok((how, t.elapsed()))
            })
        });
        let nopre = sc.spawn(|| {
            let mut tls = c.tls_connect("web", within)?;
            let t = Instant::now();
            let (how, _) = tls_until_closed(&mut tls, within);
            Ok((how, t.elapsed()))
        });
        vec![
            ("idle TCP", idle.join().unwrap()),
            ("half a ClientHello", half.join().unwrap()),
            ("handshake without preamble", nopre.join().unwrap()),
        ]
    });
    for (what, r) in results {
        match r {
            Ok((how, took)) => {
                println!("handshake ({}): {what}: {how:?} after {took:?}", c.backend);
                ck.that(how.closed(), format!("{what}: B kept it open ({how:?})"));
                ck.that(
                    took < Duration::from_secs(5),
                    format!("{what}: closed after {took:?}, want the 2 s handshake timeout"),
                );
            }
            Err(e) => ck.fail(format!("{what}: {e}")),
        }
    }
    let counted = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        (c.counter(Gw::B, TIMEOUTS, &[("timeout", "handshake")]) >= hs0 + 3.0).then_some(())
    });
    ck.that(
        counted.is_some(),
        format!(
            "B counted {} handshake timeouts, want 3",
            c.counter(Gw::B, TIMEOUTS, &[("timeout", "handshake")]) - hs0
        ),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// A SYN flood at A's listener while a normal client is served.

fn case_synflood(c: &Ctx) {
    let mut ck = Check::default();
    let raw = c.cli.run(raw::Sender::open).expect("raw socket in xm-cli");
    let stop = AtomicBool::new(false);
    let (sent, errors, (ok, failed)) = std::thread::scope(|sc| {
        let client = sc.spawn(|| {
            c.cli.run(|| {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match one_normal_get() {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    std::thread::sleep(Duration::from_millis(50)); // pacing
                }
                (ok, failed)
            })
        });
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut sent, mut errors) = (0u32, 0u32);
        let t0 = Instant::now();
        // 30,000 SYNs over 3 s from addresses of the client's subnet that no host has.
        for batch in 0..300u32 {
            for _ in 0..100 {
                let r = next();
                let src = SocketAddrV4::new(
                    Ipv4Addr::new(10, 10, 1, 100 + (r % 100) as u8),
                    1024 + ((r >> 8) % 60000) as u16,
                );
                let p = raw::packet(&raw::Tcp {
                    src,
                    dst: A_HTTP,
                    seq: (r >> 32) as u32,
                    ack: 0,
                    flags: raw::SYN,
                    window: 64240,
                    options: &[2, 4, 0x05, 0xb4],
                });
                match raw.send(&p, A_IP) {
                    Ok(()) => sent += 1,
                    Err(_) => errors += 1,
                }
            }
            let due = t0 + Duration::from_millis(10 * u64::from(batch + 1));
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d); // pacing the flood
            }
        }
        stop.store(true, Ordering::SeqCst);
        (sent, errors, client.join().unwrap())
    });
    println!(
        "synflood ({}): {sent} SYNs sent ({errors} send errors); normal client {ok} ok, {} failed",
        c.backend,
        failed.len()
    );
    ck.that(sent >= 25_000, format!("only {sent} SYNs left the client"));
    ck.that(
        ok >= 5,
        format!("the normal client was served {ok} times during the flood"),
    );
    ck.that(
        failed.is_empty(),
        format!("the normal client failed during the flood: {failed:?}"),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 10. Memory: 100 uploads stuck behind a server that reads nothing.

fn case_stuck_posts(c: &Ctx) {
    let mut ck = Check::default();
    c.restart_mesh(); // fresh gateways, as for `memory`
    let (ra0, rb0) = (c.rss_kib(Gw::A), c.rss_kib(Gw::B));
    let stalls = || {
        c.counter(Gw::A, TIMEOUTS, &[("timeout", "body_stall")])
            + c.counter(Gw::B, TIMEOUTS, &[("timeout", "body_stall")])
    };
    let stall0 = stalls();
    // 100 in CI; XM_STUCK_N=2000 for the memory figure at the scale of the idle ones.
    let n: usize = std::env::var("XM_STUCK_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let conns: Vec<TcpStream> = c
        .cli
        .run(|| {
            (0..n)
                .map(|_| {
                    let mut s = tcp_connect(None, A_HTTP, None, Duration::from_secs(5))?;
                    s.write_all(b"POST /up HTTP/1.1\r\nHost: noread.rig.mesh\r\nContent-Length: 10000000\r\n\r\n")?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect::<io::Result<_>>()
        })
        .expect("the uploads");
    let chunk = vec![b'u'; 64 * 1024];
    let t0 = Instant::now();
    let (mut max_a, mut max_b, mut sent) = (ra0, rb0, 0usize);
    // Push body bytes until every connection is blocked (at most 2.5 s), sampling RSS.
    loop {
        let mut progressed = false;
        for mut s in &conns {
            while let Ok(k) = s.write(&chunk) {
                if k == 0 {
                    break;
                }
                sent += k;
                progressed = true;
            }
        }
        max_a = max_a.max(c.rss_kib(Gw::A));
        max_b = max_b.max(c.rss_kib(Gw::B));
        if (!progressed && t0.elapsed() > Duration::from_millis(300))
            || t0.elapsed() > Duration::from_millis(2500)
        {
            break;
        }
    }
    let blocked = Instant::now();
    // Hold until the first cut, sampling RSS (a measurement window; bounded by 10 s).
    while stalls() <= stall0 && blocked.elapsed() < Duration::from_secs(10) {
        max_a = max_a.max(c.rss_kib(Gw::A));
        max_b = max_b.max(c.rss_kib(Gw::B));
        std::thread::sleep(Duration::from_millis(50));
    }
    let per = |max: u64, base: u64| max.saturating_sub(base) as f64 / n as f64;
    println!(
        "memory: {} A stuck POST: {:.1} KiB/conn (N={n}, RSS {ra0} → max {max_a} KiB, {} MiB of body sent)",
        c.backend,
        per(max_a, ra0),
        sent >> 20
    );
    println!(
        "memory: {} B stuck POST: {:.1} KiB/conn (N={n}, RSS {rb0} → max {max_b} KiB)",
        c.backend,
        per(max_b, rb0)
    );
    let mut open = 0;
    let mut last = Duration::ZERO;
    for s in conns {
        s.set_nonblocking(false).unwrap();
        let left = Duration::from_secs(10).saturating_sub(blocked.elapsed());
        let mut conn = Conn::new(s, Duration::from_secs(1));
        let how = conn.until_closed(left.max(Duration::from_millis(10)));
        if how.closed() {
            last = last.max(blocked.elapsed());
        } else {
            open += 1;
        }
    }
    println!(
        "stuck_posts ({}): last cut {last:?} after the bodies blocked; {open} still open",
        c.backend
    );
    ck.that(
        open == 0,
        format!("{open} of {n} stuck uploads were not cut within 10 s (body_stall 3 s)"),
    );
    ck.that(
        eventually(|| stalls() >= stall0 + n as f64),
        format!(
            "body_stall timeouts counted: {} (A+B), want ≥ {n}",
            stalls() - stall0
        ),
    );
    ck.done();
}

// ---------------------------------------------------------------------------------------------
// 10. Memory: idle connections of each kind.

fn case_memory(c: &Ctx) {
    let mut ck = Check::default();
    let n = 2000usize;
    // Fresh gateways: memory freed by earlier cases stays in the allocator and would hide
    // the growth.
    c.restart_mesh();
    // The head timeout long enough to hold one-byte heads while measuring; 4000 connections
    // from one client address (the per-source cap defaults to 2,500).
    c.put(
        Gw::A,
        &a_tables(
            "timeouts = { request_head = \"60s\", body_stall = \"3s\" }\nmax_connections_per_source = 5000",
        ),
    );
    let base = (c.sessions(Gw::A), c.sessions(Gw::B));
    let (ra0, rb0) = (c.rss_kib(Gw::A), c.rss_kib(Gw::B));
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;

    let (idle, errs) = open_many(c, n, |conn| {
        conn.send(b"GET / HTTP/1.1\r\nHost: web.rig.mesh\r\n\r\n")?;
        let r = conn.final_response("GET")?;
        if r.status != 200 {
            return Err(io::Error::other(format!("status {}", r.status)));
        }
        Ok(())
    });
    ck.that(
        errs.is_empty(),
        format!(
            "idle keep-alive connections: {} failed, first: {:?}",
            errs.len(),
            errs.first()
        ),
    );
    // Idle: tcpstack gives buffers back 1 s after they empty, and an idle worker hands
    // freed pages back to the kernel; measure once both gateways' RSS has settled.
    for gw in [Gw::A, Gw::B] {
        // AF_XDP only (the kernel backend has no tcpstack): buffers of idle connections go.
        poll(Duration::from_secs(5), Duration::from_millis(200), || {
            let bufs = c.metrics(gw).sum("xdpmesh_tcp_buffer_bytes", &[]);
            bufs.is_none_or(|b| b < (n * 256) as f64).then_some(())
        });
    }
    let (ra1, rb1) = (c.settled_rss_kib(Gw::A), c.settled_rss_kib(Gw::B));
    let bufs = c.metrics(Gw::A).sum("xdpmesh_tcp_buffer_bytes", &[]);
    let conns = c.metrics(Gw::A).sum("xdpmesh_tcp_connections", &[]);
    println!(
        "memory: {} A idle http conn: {:.1} KiB/conn (N={}, RSS {ra0} → {ra1} KiB; includes its mesh hop to B; tcpstack: {conns:?} connections, {bufs:?} buffer bytes)",
        c.backend,
        per(ra0, ra1),
        idle.len()
    );
    println!(
        "memory: {} B per idle http conn of A (mesh hop + upstream): {:.1} KiB/conn (RSS {rb0} → {rb1} KiB)",
        c.backend,
        per(rb0, rb1)
    );
    let (onebyte, errs) = open_many(c, n, |conn| conn.send(b"G"));
    ck.that(
        errs.is_empty(),
        format!(
            "one-byte connections: {} failed, first: {:?}",
            errs.len(),
            errs.first()
        ),
    );
    // Let A take the bytes in before reading its RSS (bounded; the gauge counts them).
    if let Some(a) = base.0 {
        poll(Duration::from_secs(5), Duration::from_millis(100), || {
            (c.sessions(Gw::A).unwrap_or(0.0) >= a + (idle.len() + onebyte.len()) as f64)
                .then_some(())
        });
    }
    let ra2 = c.rss_kib(Gw::A);
    println!(
        "memory: {} A one-byte conn: {:.1} KiB/conn (N={}, RSS {ra1} → {ra2} KiB)",
        c.backend,
        per(ra1, ra2),
        onebyte.len()
    );
    println!(
        "memory: {} sessions with {} idle + {} one-byte connections: A {:?}, B {:?}",
        c.backend,
        idle.len(),
        onebyte.len(),
        c.sessions(Gw::A),
        c.sessions(Gw::B)
    );
    drop(idle);
    drop(onebyte);
    let back = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let now = (c.sessions(Gw::A), c.sessions(Gw::B));
        (now.0.is_some() && now.0 <= base.0 && now.1 <= base.1).then_some(())
    });
    ck.that(
        back.is_some(),
        format!(
            "sessions after closing the HTTP connections: A {:?} (was {:?}), B {:?} (was {:?})",
            c.sessions(Gw::A),
            base.0,
            c.sessions(Gw::B),
            base.1
        ),
    );
    let (ra3, rb3) = (c.settled_rss_kib(Gw::A), c.settled_rss_kib(Gw::B));
    println!("memory: {} A after closing them: RSS {ra3} KiB (baseline {ra0}, peak {ra2}); B {rb3} KiB (baseline {rb0})", c.backend);

    // Idle mTLS hops at B, as a peer gateway would hold them; fresh gateways again.
    c.restart_mesh();
    let rb4 = c.rss_kib(Gw::B);
    let hops: Mutex<Vec<Conn<Tls>>> = Mutex::new(Vec::new());
    let errs: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (hops, errs) = (&hops, &errs);
            sc.spawn(move || {
                for _ in (t..n).step_by(4) {
                    let r = c.tls_connect("web", Duration::from_secs(10)).and_then(|tls| {
                        let mut conn = Conn::new(tls, Duration::from_secs(10));
                        conn.send(format!("XM/1 {SRV_IP}:{P_WEB} http\nGET / HTTP/1.1\r\nHost: web.rig.mesh\r\n\r\n").as_bytes())?;
                        let r = conn.final_response("GET")?;
                        if r.status != 200 {
                            return Err(io::Error::other(format!("status {}", r.status)));
                        }
                        Ok(conn)
                    });
                    match r {
                        Ok(conn) => hops.lock().unwrap().push(conn),
                        Err(e) => errs.lock().unwrap().push(e.to_string()),
                    }
                }
            });
        }
    });
    let hops = hops.into_inner().unwrap();
    let errs = errs.into_inner().unwrap();
    ck.that(
        errs.is_empty(),
        format!(
            "idle mTLS hops: {} failed, first: {:?}",
            errs.len(),
            errs.first()
        ),
    );
    let rb5 = c.settled_rss_kib(Gw::B);
    println!(
        "memory: {} B idle mTLS hop: {:.1} KiB/conn (N={}, RSS {rb4} → {rb5} KiB; includes its upstream connection)",
        c.backend,
        per(rb4, rb5),
        hops.len()
    );
    drop(hops);
    let back = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let now = c.sessions(Gw::B);
        (now.is_some() && now <= base.1).then_some(())
    });
    ck.that(
        back.is_some(),
        format!(
            "B's sessions after closing the hops: {:?} (was {:?})",
            c.sessions(Gw::B),
            base.1
        ),
    );
    println!(
        "memory: {} B after closing the hops: RSS {} KiB (baseline {rb4}, peak {rb5})",
        c.backend,
        c.settled_rss_kib(Gw::B)
    );
    ck.done();
}

/// Opens `n` connections to A's web listener from xm-cli (4 threads), each prepared by `f`.
fn open_many(
    c: &Ctx,
    n: usize,
    f: impl Fn(&mut Conn) -> io::Result<()> + Sync,
) -> (Vec<Conn>, Vec<String>) {
    let conns = Mutex::new(Vec::with_capacity(n));
    let errs = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (conns, errs, f) = (&conns, &errs, &f);
            sc.spawn(move || {
                c.cli.run(|| {
                    for _ in (t..n).step_by(4) {
                        let r =
                            tcp_connect(None, A_HTTP, None, Duration::from_secs(5)).and_then(|s| {
                                let mut conn = Conn::new(s, Duration::from_secs(10));
                                f(&mut conn)?;
                                Ok(conn)
                            });
                        match r {
                            Ok(conn) => conns.lock().unwrap().push(conn),
                            Err(e) => errs.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            });
        }
    });
    (conns.into_inner().unwrap(), errs.into_inner().unwrap())
}

// ---------------------------------------------------------------------------------------------
// 10. Connection caps per source and per listener.

fn case_caps(c: &Ctx) {
    let mut ck = Check::default();
    let _addrs = ClientAddrs::add(c, &["10.10.1.7", "10.10.1.8", "10.10.1.9"]);
    c.put(
        Gw::A,
        &a_tables(&format!(
            "{A_WEB_TIMEOUTS}\nmax_connections = 100\nmax_connections_per_source = 50"
        )),
    );
    let so0 = c.counter(Gw::A, REFUSED, &[("reason", "source_overflow")]);
    let lo0 = c.counter(Gw::A, REFUSED, &[("reason", "listener_overflow")]);
    let (held7, refused7) = open_from(c, Ipv4Addr::new(10, 10, 1, 7), 60);
    ck.that(
        held7.len() == 50 && refused7 == 10,
        format!(
            "60 connections from one source: {} served, {refused7} refused; want 50 and 10",
            held7.len()
        ),
    );
    if let Err(e) = c.normal_get() {
        ck.fail(format!(
            "another source was not served while one is at its cap: {e}"
        ));
    }
    let so = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        let d = c.counter(Gw::A, REFUSED, &[("reason", "source_overflow")]) - so0;
        (d >= 10.0).then_some(d)
    })
    .unwrap_or_else(|| c.counter(Gw::A, REFUSED, &[("reason", "source_overflow")]) - so0);
    ck.that(
        so == 10.0,
        format!("A counted {so} source_overflow refusals, want 10"),
    );
    let (held8, refused8) = open_from(c, Ipv4Addr::new(10, 10, 1, 8), 50);
    ck.that(
        refused8 == 0,
        format!("50 more from a second source: {refused8} refused, want 0 (100 open)"),
    );
    let (held9, refused9) = open_from(c, Ipv4Addr::new(10, 10, 1, 9), 10);
    ck.that(
        refused9 == 10,
        format!(
            "10 more with the listener at 100: {} served, {refused9} refused; want 10 refused",
            held9.len()
        ),
    );
    let lo = poll(Duration::from_secs(3), Duration::from_millis(100), || {
        let d = c.counter(Gw::A, REFUSED, &[("reason", "listener_overflow")]) - lo0;
        (d >= 10.0).then_some(d)
    })
    .unwrap_or_else(|| c.counter(Gw::A, REFUSED, &[("reason", "listener_overflow")]) - lo0);
    ck.that(
        lo == 10.0,
        format!("A counted {lo} listener_overflow refusals, want 10"),
    );
    drop((held7, held8, held9));
    let served = poll(Duration::from_secs(5), Duration::from_millis(100), || {
        c.cli
            .run(|| {
                let s = tcp_connect(
                    Some(Ipv4Addr::new(10, 10, 1, 7)),
                    A_HTTP,
                    None,
                    Duration::from_secs(2),
                )
                .ok()?;
                let mut conn = Conn::new(s, Duration::from_secs(3));
                conn.send(get("web.rig.mesh", "/").as_bytes()).ok()?;
                conn.final_response("GET").ok()
            })
            .filter(|r| r.status == 200)
    });
    ck.that(
        served.is_some(),
        "after closing them, a new connection from the capped source was not served".into(),
    );
    ck.done();
}

/// Opens `n` connections from `src`, each with one keep-alive GET; (served and held, refused).
fn open_from(c: &Ctx, src: Ipv4Addr, n: usize) -> (Vec<Conn>, usize) {
    c.cli.run(|| {
        let mut conns = Vec::new();
        let mut refused = 0;
        for _ in 0..n {
            match tcp_connect(Some(src), A_HTTP, None, Duration::from_secs(2)) {
                Ok(s) => {
                    let mut conn = Conn::new(s, Duration::from_secs(3));
                    let _ = conn.send(get("web.rig.mesh", "/").as_bytes());
                    conns.push(conn);
                }
                Err(_) => refused += 1,
            }
        }
        // Read every answer afterwards, so a refusal that holds a connection costs 3 s once.
        let mut held = Vec::new();
        for mut conn in conns {
            match conn.final_response("GET") {
                Ok(r) if r.status == 200 => held.push(conn),
                _ => refused += 1,
            }
        }
        (held, refused)
    })
}

/// Extra addresses on the client's interface, removed on drop.
struct ClientAddrs<'a> {
    cli: &'a NetNs,
    addrs: Vec<String>,
}

impl<'a> ClientAddrs<'a> {
    fn add(c: &'a Ctx, ips: &[&str]) -> Self {
        let addrs: Vec<String> = ips.iter().map(|ip| format!("{ip}/24")).collect();
        for a in &addrs {
            let _ = c.cli.exec(["ip", "addr", "add", a, "dev", "cli-gwa"]);
        }
        ClientAddrs { cli: &c.cli, addrs }
    }
}

impl Drop for ClientAddrs<'_> {
    fn drop(&mut self) {
        for a in &self.addrs {
            let _ = self.cli.exec(["ip", "addr", "del", a, "dev", "cli-gwa"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tables.

fn a_tables(web_extra: &str) -> String {
    let mut t = format!(
        r#"# gateway A for dataplane/tests/hostile_rig.rs
[trust]
roots = ["ca/ca.pem"]

[[identity]]
id = "{CLIENT_ID}"
sources = ["10.10.1.0/24"]
cert = "ids/sa/client/cert.pem"
key = "ids/sa/client/key.pem"

[[peer]]
name = "gw-b"
address = "{B_MESH}"
identity = "{GW_B_ID}"

[[listener]]
name = "web"
bind = "{A_HTTP}"
protocol = "http"
{web_extra}

[[listener]]
name = "echo"
bind = "10.10.1.1:5001"
protocol = "tcp"
service = "echo"

[[listener]]
name = "bulk"
bind = "{A_BULK}"
protocol = "tcp"
service = "bulk"

[[service]]
name = "web"
hosts = ["web.rig.mesh", "10.10.1.1"]
endpoints = [{{ address = "{SRV_IP}:{P_WEB}", via = "gw-b" }}]

[[service]]
name = "echo"
endpoints = [{{ address = "{SRV_IP}:5001", via = "gw-b" }}]

[[service]]
name = "bulk"
endpoints = [{{ address = "{SRV_IP}:{TRUNC_PORT}", via = "gw-b" }}]
"#
    );
    for (name, port, _) in SERVICES {
        t.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nhosts = [\"{name}.rig.mesh\"]\n\
             endpoints = [{{ address = \"{SRV_IP}:{port}\", via = \"gw-b\" }}]\n"
        ));
    }
    t.push_str("\n[[route]]\nname = \"silent\"\nservice = \"silent\"\ntimeout = \"2s\"\n");
    t
}

fn b_tables() -> String {
    let mut t = format!(
        r#"# gateway B for dataplane/tests/hostile_rig.rs
[trust]
roots = ["ca/ca.pem"]

[[identity]]
id = "{GW_B_ID}"
cert = "ids/gateway/gw-b/cert.pem"
key = "ids/gateway/gw-b/key.pem"

[[listener]]
name = "mesh"
bind = "{B_MESH}"
protocol = "mesh"
identity = "{GW_B_ID}"
timeouts = {{ handshake = "2s", body_stall = "3s" }}
"#
    );
    let mut services: Vec<(&str, u16)> = vec![("web", P_WEB), ("echo", 5001), ("bulk", TRUNC_PORT)];
    services.extend(SERVICES.iter().map(|(n, p, _)| (*n, *p)));
    for (name, port) in services {
        t.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nendpoints = [{{ address = \"{SRV_IP}:{port}\" }}]\n"
        ));
        if name == "log" {
            // /admin is denied to the client; everything else allowed.
            t.push_str(&format!(
                "\n[[authorization]]\nservice = \"log\"\ndeny = [\"{CLIENT_ID}\"]\npaths = [{{ prefix = \"/admin\" }}]\n\
                 \n[[authorization]]\nservice = \"log\"\nallow = [\"{CLIENT_ID}\"]\npaths = [{{ prefix = \"/\" }}]\n"
            ));
        } else {
            t.push_str(&format!(
                "\n[[authorization]]\nservice = \"{name}\"\nallow = [\"{CLIENT_ID}\"]\n"
            ));
        }
    }
    t
}

// ---------------------------------------------------------------------------------------------
// The context of one backend's run.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gw {
    A,
    B,
}

struct Ctx {
    backend: &'static str,
    state: PathBuf,
    cli: NetNs,
    gwa: NetNs,
    gwb: NetNs,
    servers: Servers,
    mesh: Arc<rustls::ClientConfig>,
    tables_changed: AtomicBool,
}

impl Ctx {
    fn ns(&self, gw: Gw) -> &NetNs {
        match gw {
            Gw::A => &self.gwa,
            Gw::B => &self.gwb,
        }
    }

    fn pid(&self, gw: Gw) -> i32 {
        let f = self
            .state
            .join(if gw == Gw::A { "gwa.pid" } else { "gwb.pid" });
        std::fs::read_to_string(&f)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn alive(&self, gw: Gw) -> bool {
        let pid = self.pid(gw);
        // SAFETY: signal 0 only checks for existence.
        pid > 0 && unsafe { libc::kill(pid, 0) } == 0
    }

    fn log_tail(&self, gw: Gw) -> String {
        let f = self
            .state
            .join(if gw == Gw::A { "gwa.log" } else { "gwb.log" });
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn rss_kib(&self, gw: Gw) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid(gw))).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// VmRSS once it stopped falling: two readings 600 ms apart that agree within 1 %, or
    /// the last one after 6 s.
    fn settled_rss_kib(&self, gw: Gw) -> u64 {
        let mut last: Option<u64> = None;
        let settled = poll(Duration::from_secs(6), Duration::from_millis(600), || {
            let now = self.rss_kib(gw);
            let stable = last.is_some_and(|l| now.abs_diff(l) * 100 <= l);
            last = Some(now);
            stable.then_some(now)
        });
        let last = last.unwrap_or(0);
        settled.unwrap_or(last)
    }

    fn fd_count(&self, gw: Gw) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid(gw)))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// /metrics of a gateway; retried for up to 5 s, then empty (counters read 0, the
    /// sessions gauge `None`), so a wedged admin API fails the case, not the whole suite.
    fn metrics(&self, gw: Gw) -> Metrics {
        let got = poll(
            Duration::from_secs(5),
            Duration::from_millis(200),
            || match admin_http(self.ns(gw), "GET", "/metrics", b"", Duration::from_secs(3)) {
                Ok((200, text)) => Some(text),
                _ => None,
            },
        );
        Metrics(got.unwrap_or_else(|| {
            println!("warning: GET /metrics on gateway {gw:?} failed for 5 s");
            String::new()
        }))
    }

    /// A counter summed over the series that carry every label in `labels` (0 when absent).
    fn counter(&self, gw: Gw, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics(gw).sum(name, labels).unwrap_or(0.0)
    }

    /// The open engine sessions (all workers); `None` when the gauge is not on /metrics. On
    /// B, less the mesh hops A keeps idle in its pool (each holds a session at B, by design).
    fn sessions(&self, gw: Gw) -> Option<f64> {
        let n = self.metrics(gw).sum(SESSIONS, &[])?;
        // (A's gauge may still count hops B has just let go: never below 0.)
        Some(match gw {
            Gw::A => n,
            Gw::B => (n - self.pooled(Gw::A)).max(0.0),
        })
    }

    /// Upstream connections idle in the gateway's pool (all workers).
    fn pooled(&self, gw: Gw) -> f64 {
        self.metrics(gw)
            .sum("xdpmesh_proxy_pooled_connections", &[])
            .unwrap_or(0.0)
    }

    /// A's open file descriptors, less its pooled upstream connections and the shared
    /// HTTP/2 connections under its pool (kernel backend): the multiplexed hops to B and any
    /// h2c connections. A pooled stream of a multiplexed hop holds no descriptor of its own,
    /// so this undercounts by the pooled streams (a leak smaller than those would hide).
    fn fds_beyond_pool(&self) -> f64 {
        let m = self.metrics(Gw::A);
        let shared = m.sum("xdpmesh_hop_connections_open", &[]).unwrap_or(0.0)
            + m.sum("xdpmesh_h2_upstream_connections_open", &[])
                .unwrap_or(0.0);
        self.fd_count(Gw::A) as f64 - self.pooled(Gw::A) - shared
    }

    fn put(&self, gw: Gw, text: &str) {
        self.tables_changed.store(true, Ordering::SeqCst);
        match admin_http(
            self.ns(gw),
            "PUT",
            "/tables",
            text.as_bytes(),
            Duration::from_secs(10),
        ) {
            Ok((200, _)) => {}
            Ok((status, body)) => panic!("PUT /tables on {gw:?}: {status}: {body}"),
            Err(e) => panic!("PUT /tables on {gw:?}: {e}"),
        }
    }

    fn put_base(&self) {
        self.put(Gw::B, &b_tables());
        self.put(Gw::A, &a_tables(A_WEB_TIMEOUTS));
        self.tables_changed.store(false, Ordering::SeqCst);
    }

    /// Starts both gateways again (`rig.sh mesh`) and puts the base tables.
    fn restart_mesh(&self) {
        rig(&["mesh", "--backend", self.backend], &self.state);
        self.put_base();
    }

    fn connect_a(&self) -> io::Result<Conn> {
        let s = self
            .cli
            .run(|| tcp_connect(None, A_HTTP, None, Duration::from_secs(5)))?;
        Ok(Conn::new(s, Duration::from_secs(10)))
    }

    /// Sends `raw` on a fresh connection to A's web listener; the final response.
    fn request(&self, raw: &str) -> io::Result<Resp> {
        let mut conn = self.connect_a()?;
        conn.send(raw.as_bytes())?;
        conn.final_response("GET")
    }

    fn normal_get(&self) -> Result<(), String> {
        self.cli.run(one_normal_get)
    }

    /// mTLS to B's mesh port from xm-cli as the client's identity, SNI naming `service`.
    fn tls_connect(&self, service: &str, timeout: Duration) -> io::Result<Tls> {
        let tcp = self
            .cli
            .run(|| tcp_connect(None, B_MESH, None, Duration::from_secs(5)))?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let name = rustls::pki_types::ServerName::try_from(format!("{service}.svc.mesh"))
            .map_err(io::Error::other)?;
        let conn =
            rustls::ClientConnection::new(self.mesh.clone(), name).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    /// A mesh peer with a valid client certificate: sends `payload` after the handshake, then
    /// reads until B closes or `within` passes. (how it ended, plaintext received).
    fn mesh_peer(
        &self,
        service: &str,
        payload: &[u8],
        within: Duration,
    ) -> io::Result<(Closed, Vec<u8>)> {
        let mut tls = self.tls_connect(service, within)?;
        tls.write_all(payload)?;
        tls.flush()?;
        Ok(tls_until_closed(&mut tls, within))
    }
}

fn tls_until_closed(tls: &mut Tls, within: Duration) -> (Closed, Vec<u8>) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (Closed::Open, got);
        }
        let _ = tls.sock.set_read_timeout(Some(left));
        match tls.read(&mut buf) {
            Ok(0) => return (Closed::Eof, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (Closed::Reset, got),
            // EOF without close_notify, or an alert: B ended the connection.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                return (Closed::Eof, got)
            }
            Err(e) => return (Closed::Error(e.kind()), got),
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn mesh_client_config(state: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    let dir = state.join("ids/sa/client");
    let pem = std::fs::read(dir.join("cert.pem")).expect("client cert");
    let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.expect("PEM certificate").as_ref().to_vec())
        .collect();
    let key = PrivatePkcs8KeyDer::from_pem_slice(
        &std::fs::read(dir.join("key.pem")).expect("client key"),
    )
    .expect("PKCS#8 key");
    let identity = control::snapshot::IdentityRt {
        id: CLIENT_ID.into(),
        sources: Vec::new(),
        cert_path: dir.join("cert.pem"),
        key_path: dir.join("key.pem"),
        cert_chain_der: chain,
        key_der: key.secret_pkcs8_der().to_vec(),
    };
    let trust =
        dataplane::certwatch::trust_from_pem_files(&[state.join("ca/ca.pem")]).expect("mesh CA");
    mesh::tls::client_config(&identity, &trust, GW_B_ID).expect("client config")
}

/// One GET / through the mesh on a fresh connection (call it inside xm-cli).
fn one_normal_get() -> Result<(), String> {
    let s = tcp_connect(None, A_HTTP, None, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let mut conn = Conn::new(s, Duration::from_secs(10));
    conn.send(b"GET / HTTP/1.1\r\nHost: web.rig.mesh\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let r = conn
        .final_response("GET")
        .map_err(|e| format!("response: {e}"))?;
    if r.status != 200 || r.body != b"v1" {
        return Err(format!("{} {:?}", r.status, r.text()));
    }
    Ok(())
}

fn get(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// A normal client in xm-cli: one GET on a fresh connection every 100 ms (at least one).
struct Meanwhile {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u32, String>>>,
}

impl Meanwhile {
    fn start() -> Meanwhile {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            NetNs::existing("xm-cli").unwrap().run(|| {
                let mut ok = 0;
                loop {
                    if let Err(e) = one_normal_get() {
                        return Err(format!("after {ok} good requests: {e}"));
                    }
                    ok += 1;
                    if st.load(Ordering::SeqCst) {
                        return Ok(ok);
                    }
                    std::thread::sleep(Duration::from_millis(100)); // pacing
                }
            })
        });
        Meanwhile {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Result<u32, String> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err("the normal client's thread panicked".into()),
        }
    }
}

impl Drop for Meanwhile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Failures collected over a case; `done` panics with all of them.
#[derive(Default)]
struct Check(Vec<String>);

impl Check {
    fn that(&mut self, ok: bool, msg: String) {
        if !ok {
            self.0.push(msg);
        }
    }

    fn fail(&mut self, msg: String) {
        self.0.push(msg);
    }

    fn done(self) {
        if !self.0.is_empty() {
            panic!("\n  - {}", self.0.join("\n  - "));
        }
    }
}

/// A condition on counters that becomes true within 3 s (the AF_XDP workers publish their
/// counters periodically, so a counter lags the event it counts).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    poll(Duration::from_secs(3), Duration::from_millis(100), || {
        f().then_some(())
    })
    .is_some()
}

fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Prometheus text.
struct Metrics(String);

impl Metrics {
    /// The sum of `name`'s series carrying every label pair of `labels`; `None` when no series
    /// of that name exists at all.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let mut sum = 0.0;
        for line in self.0.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (labelset, value) = match rest.as_bytes().first() {
                Some(b'{') => match rest.split_once('}') {
                    Some((l, v)) => (&l[1..], v),
                    None => continue,
                },
                Some(b' ') => ("", rest),
                _ => continue,
            };
            found = true;
            if labels
                .iter()
                .all(|(k, v)| labelset.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            {
                sum += value.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
        found.then_some(sum)
    }
}

// ---------------------------------------------------------------------------------------------
// Client side: sockets and a small HTTP/1.1 reader.

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A TCP connection in the calling thread's namespace, optionally from `src` and with a
/// receive buffer of `rcvbuf` bytes set before the handshake (a small window).
fn tcp_connect(
    src: Option<Ipv4Addr>,
    dst: SocketAddrV4,
    rcvbuf: Option<i32>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    // SAFETY: plain socket creation.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` was just created and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(n) = rcvbuf {
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, n)?;
    }
    if let Some(ip) = src {
        let sa = sockaddr_in(SocketAddrV4::new(ip, 0));
        // SAFETY: a valid sockaddr_in of the given size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
    }
    let sa = sockaddr_in(dst);
    // SAFETY: as above.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = cvt(unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect {dst}: timed out"),
            ));
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int-sized option into an int.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let s = TcpStream::from(fd);
    s.set_nonblocking(false)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// How a connection ended, seen from the reading side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    Eof,
    Reset,
    /// Still open when the wait ended.
    Open,
    Error(io::ErrorKind),
}

impl Closed {
    fn closed(self) -> bool {
        matches!(self, Closed::Eof | Closed::Reset)
    }
}

trait Sock: Read + Write {
    fn set_timeout(&self, d: Duration) -> io::Result<()>;
}

impl Sock for TcpStream {
    fn set_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(d))
    }
}

impl Sock for Tls {
    fn set_timeout(&self, d: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(d))
    }
}

/// A client connection and the bytes read but not consumed yet.
struct Conn<S: Sock = TcpStream> {
    s: S,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The body arrived whole (false: the connection ended or stalled inside it).
    complete: bool,
}

impl Resp {
    fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.head.split("\r\n").skip(1).filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim(), v.trim()))
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<S: Sock> Conn<S> {
    fn new(s: S, timeout: Duration) -> Conn<S> {
        let _ = s.set_timeout(timeout);
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)?;
        self.s.flush()
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 65536];
        let n = self.s.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// The next response, interim ones included.
    fn response(&mut self, method: &str) -> io::Result<Resp> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed before a response head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end - 4]).into_owned();
        self.buf.drain(..end);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("status line of {head:?}"),
                )
            })?;
        let mut r = Resp {
            status,
            head,
            body: Vec::new(),
            complete: true,
        };
        if (100..200).contains(&status) || status == 204 || status == 304 || method == "HEAD" {
            return Ok(r);
        }
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().trim_end().ends_with("chunked"));
        let len = r
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        if chunked {
            r.complete = self.chunked(&mut r.body);
        } else if let Some(n) = len {
            while self.buf.len() < n {
                match self.fill() {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let take = n.min(self.buf.len());
            r.body = self.buf.drain(..take).collect();
            r.complete = take == n;
        } else {
            loop {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        r.complete = false;
                        break;
                    }
                }
            }
            r.body = std::mem::take(&mut self.buf);
        }
        Ok(r)
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Some(self.buf.drain(..i + 2).collect());
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn chunked(&mut self, body: &mut Vec<u8>) -> bool {
        loop {
            let Some(line) = self.line() else {
                return false;
            };
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return false;
            };
            if size == 0 {
                loop {
                    match self.line() {
                        Some(l) if l == b"\r\n" => return true,
                        Some(_) => {}
                        None => return false,
                    }
                }
            }
            while self.buf.len() < size + 2 {
                match self.fill() {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// The next non-interim response (a 101 counts as final).
    fn final_response(&mut self, method: &str) -> io::Result<Resp> {
        loop {
            let r = self.response(method)?;
            if !(100..200).contains(&r.status) || r.status == 101 {
                return Ok(r);
            }
        }
    }

    /// Reads (keeping the bytes in `buf`) until the peer closes or `within` passes.
    fn until_closed(&mut self, within: Duration) -> Closed {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Closed::Open;
            }
            let _ = self.s.set_timeout(left);
            match self.fill() {
                Ok(0) => return Closed::Eof,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Closed::Reset,
                Err(e) => return Closed::Error(e.kind()),
            }
        }
    }
}

/// One request to a gateway's admin API (127.0.0.1:9901 in its namespace): (status, body).
fn admin_http(
    ns: &NetNs,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, String)> {
    ns.run(|| {
        let s = tcp_connect(None, ADMIN, None, timeout)?;
        s.set_write_timeout(Some(timeout))?;
        let mut conn = Conn::new(s, timeout);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        conn.send(&req)?;
        let r = conn.final_response(method)?;
        if !r.complete {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "admin response cut"));
        }
        Ok((r.status, r.text()))
    })
}

// ---------------------------------------------------------------------------------------------
// Raw TCP segments (SYN flood, out-of-window ACKs) and a capture, from xm-cli.

mod raw {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    fn sum16(data: &[u8], mut acc: u32) -> u32 {
        for ch in data.chunks(2) {
            let w = if ch.len() == 2 {
                u16::from_be_bytes([ch[0], ch[1]])
            } else {
                u16::from_be_bytes([ch[0], 0])
            };
            acc += u32::from(w);
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    pub struct Tcp<'a> {
        pub src: SocketAddrV4,
        pub dst: SocketAddrV4,
        pub seq: u32,
        pub ack: u32,
        pub flags: u8,
        pub window: u16,
        pub options: &'a [u8],
    }

    /// An IPv4 packet carrying the segment, checksums computed.
    pub fn packet(t: &Tcp) -> Vec<u8> {
        let opt_len = t.options.len().div_ceil(4) * 4;
        let tcp_len = 20 + opt_len;
        let total = 20 + tcp_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&(t.seq as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&t.src.ip().octets());
        p[16..20].copy_from_slice(&t.dst.ip().octets());
        let c = fold(sum16(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        {
            let s = &mut p[20..];
            s[0..2].copy_from_slice(&t.src.port().to_be_bytes());
            s[2..4].copy_from_slice(&t.dst.port().to_be_bytes());
            s[4..8].copy_from_slice(&t.seq.to_be_bytes());
            s[8..12].copy_from_slice(&t.ack.to_be_bytes());
            s[12] = ((tcp_len / 4) as u8) << 4;
            s[13] = t.flags;
            s[14..16].copy_from_slice(&t.window.to_be_bytes());
            s[20..20 + t.options.len()].copy_from_slice(t.options);
        }
        let mut acc = sum16(&t.src.ip().octets(), 0);
        acc = sum16(&t.dst.ip().octets(), acc);
        acc += 6 + tcp_len as u32;
        let c = fold(sum16(&p[20..], acc));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    /// A raw IPv4 socket (IP_HDRINCL): sends whole packets.
    pub struct Sender(OwnedFd);

    impl Sender {
        pub fn open() -> io::Result<Sender> {
            // SAFETY: plain socket creation.
            let fd = cvt(unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            })?;
            // SAFETY: just created, owned here.
            Ok(Sender(unsafe { OwnedFd::from_raw_fd(fd) }))
        }

        pub fn send(&self, pkt: &[u8], dst: Ipv4Addr) -> io::Result<()> {
            let sa = super::sockaddr_in(SocketAddrV4::new(dst, 0));
            // SAFETY: a valid buffer and sockaddr_in.
            let r = unsafe {
                libc::sendto(
                    self.0.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    /// A TCP segment as captured.
    #[derive(Debug, Clone)]
    pub struct Seg {
        pub src: SocketAddrV4,
        pub dst: SocketAddrV4,
        pub seq: u32,
        pub flags: u8,
        pub window: u16,
        /// Payload bytes.
        pub len: u32,
        /// (TSval, TSecr)
        pub ts: Option<(u32, u32)>,
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn parse(p: &[u8]) -> Option<Seg> {
        if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
            return None;
        }
        let ihl = usize::from(p[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
        let t = p.get(ihl..total)?;
        if t.len() < 20 {
            return None;
        }
        let doff = usize::from(t[12] >> 4) * 4;
        let opts = t.get(20..doff)?;
        let mut ts = None;
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => break,
                1 => i += 1,
                kind => {
                    let len = usize::from(*opts.get(i + 1)?);
                    if len < 2 {
                        break;
                    }
                    if kind == 8 && len == 10 && i + 10 <= opts.len() {
                        ts = Some((be32(&opts[i + 2..]), be32(&opts[i + 6..])));
                    }
                    i += len;
                }
            }
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Some(Seg {
            src: SocketAddrV4::new(ip(&p[12..16]), u16::from_be_bytes([t[0], t[1]])),
            dst: SocketAddrV4::new(ip(&p[16..20]), u16::from_be_bytes([t[2], t[3]])),
            seq: be32(&t[4..]),
            flags: t[13],
            window: u16::from_be_bytes([t[14], t[15]]),
            len: (t.len() - doff) as u32,
            ts,
        })
    }

    /// An AF_PACKET capture of the IPv4 packets on one interface, both directions.
    pub struct Sniffer(OwnedFd);

    impl Sniffer {
        pub fn open(ifname: &str) -> io::Result<Sniffer> {
            // ETH_P_ALL: a socket bound to ETH_P_IP sees only incoming frames.
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket creation.
            let fd = cvt(unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::c_int::from(proto),
                )
            })?;
            // SAFETY: just created, owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: a valid sockaddr_ll of the given size.
            cvt(unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            })?;
            super::setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
            Ok(Sniffer(fd))
        }

        /// Every TCP segment captured since the last call.
        pub fn drain(&self) -> Vec<Seg> {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                // SAFETY: a valid buffer of that length.
                let n = unsafe {
                    libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n <= 0 {
                    return out;
                }
                if let Some(s) = parse(&buf[..n as usize]) {
                    out.push(s);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers in xm-srv.

const TRUNC_PORT: u16 = 5201;
const TRUNC_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
enum Behave {
    /// Logs and answers every request (keep-alive).
    Log,
    /// Answers `101 Switching Protocols` to any request.
    Switch,
    /// 10 MB of `100 Continue`.
    Flood,
    /// Half a response head, then close.
    HalfHead,
    /// A 20 KiB response head.
    BigHead,
    /// Content-Length 100, 10 bytes, close.
    Short,
    /// A chunked response with a bad chunk size.
    BadChunk,
    /// Answers after the head, before reading the body, then closes its side.
    Early,
    /// Reads everything, never answers.
    Silent,
    /// Never reads, never answers.
    NoRead,
    /// Sends 64 KiB, then a RST.
    Trunc,
}

#[derive(Clone, Debug)]
struct Entry {
    head: String,
}

impl Entry {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    fn target(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or("")
    }

    fn headers(&self) -> Vec<(String, String)> {
        self.head
            .split('\n')
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.trim_end_matches('\r').split_once(':')?;
                Some((k.trim().to_owned(), v.trim().to_owned()))
            })
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    handlers: Mutex<Vec<JoinHandle<()>>>,
    log: Mutex<Vec<Entry>>,
    /// Every byte the logging server read.
    wire: Mutex<Vec<u8>>,
    accepted: Mutex<HashMap<u16, u64>>,
    flood_written: AtomicU64,
    /// The short-body and bad-chunk servers send their first bytes, then wait (at most 5 s)
    /// for the client to set this once it has them, so the break comes after the gateways
    /// forwarded the head: a cut, not a 502.
    release: AtomicBool,
}

struct Servers {
    nginx: Child,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(srv: &NetNs, dir: &Path) -> Servers {
        let www = dir.join("www");
        std::fs::create_dir_all(www.join("public")).unwrap();
        std::fs::write(www.join("index.html"), "v1").unwrap();
        std::fs::write(www.join("public/x"), "public x").unwrap();
        std::fs::write(www.join("big.bin"), vec![0x5a; BIG_LEN]).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\nerror_log stderr;\npid {pid};\nworker_rlimit_nofile 20000;\n\
                 events {{ worker_connections 10000; }}\n\
                 http {{\n  access_log off;\n  default_type application/octet-stream;\n\
                 keepalive_timeout 300s;\n  keepalive_requests 1000000;\n\
                 server {{ listen {SRV_IP}:{P_WEB} backlog=4096; root {www}; }}\n}}\n",
                pid = dir.join("nginx.pid").display(),
                www = www.display(),
            ),
        )
        .unwrap();
        let mut nginx = srv
            .command("nginx")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx");
        srv.wait_entered(&mut nginx).unwrap();
        let shared = Arc::new(Shared::default());
        let mut servers = Servers {
            nginx,
            shared: shared.clone(),
            acceptors: Vec::new(),
        };
        let up = poll(Duration::from_secs(10), Duration::from_millis(10), || {
            srv.run(|| TcpStream::connect((SRV_IP, P_WEB)).ok())
        });
        assert!(up.is_some(), "nginx did not start in xm-srv");
        let mut all: Vec<(u16, Behave)> = SERVICES.iter().map(|(_, p, b)| (*p, *b)).collect();
        all.push((TRUNC_PORT, Behave::Trunc));
        for (port, b) in all {
            let l = srv
                .run(|| TcpListener::bind((SRV_IP, port)))
                .unwrap_or_else(|e| panic!("bind {SRV_IP}:{port} in xm-srv: {e}"));
            l.set_nonblocking(true).unwrap();
            let sh = shared.clone();
            servers
                .acceptors
                .push(std::thread::spawn(move || accept_loop(l, port, b, sh)));
        }
        servers
    }

    fn log_len(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    fn log_since(&self, n: usize) -> Vec<Entry> {
        self.shared.log.lock().unwrap()[n..].to_vec()
    }

    fn wire_len(&self) -> usize {
        self.shared.wire.lock().unwrap().len()
    }

    fn wire_since(&self, n: usize) -> Vec<u8> {
        self.shared.wire.lock().unwrap()[n..].to_vec()
    }

    fn accepted(&self, port: u16) -> u64 {
        self.shared
            .accepted
            .lock()
            .unwrap()
            .get(&port)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master takes its worker down with it.
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.nginx.id() as i32, libc::SIGTERM) };
        let _ = self.nginx.wait();
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
        let handlers: Vec<_> = self.shared.handlers.lock().unwrap().drain(..).collect();
        for t in handlers {
            let _ = t.join();
        }
    }
}

fn accept_loop(l: TcpListener, port: u16, b: Behave, sh: Arc<Shared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, _)) => {
                *sh.accepted.lock().unwrap().entry(port).or_default() += 1;
                let sh2 = sh.clone();
                let h = std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || serve(s, b, &sh2))
                    .expect("server thread");
                let mut hs = sh.handlers.lock().unwrap();
                hs.retain(|h| !h.is_finished());
                hs.push(h);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// A server connection: reads with short timeouts so every handler notices `stop`.
struct SrvIo<'a> {
    s: TcpStream,
    pending: Vec<u8>,
    sh: &'a Shared,
    record: bool,
}

impl SrvIo<'_> {
    fn read_more(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16384];
        loop {
            match self.s.read(&mut tmp) {
                Ok(n) => {
                    if self.record {
                        self.sh.wire.lock().unwrap().extend_from_slice(&tmp[..n]);
                    }
                    self.pending.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => {
                    if self.sh.stop.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next request head (up to and including its empty line).
    fn head(&mut self) -> Option<Vec<u8>> {
        loop {
            let crlf = find(&self.pending, b"\r\n\r\n").map(|i| i + 4);
            let lf = find(&self.pending, b"\n\n").map(|i| i + 2);
            if let Some(end) = [crlf, lf].into_iter().flatten().min() {
                return Some(self.pending.drain(..end).collect());
            }
            if self.pending.len() > 256 << 10 {
                return None;
            }
            match self.read_more() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.pending.len() < n {
            match self.read_more() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(self.pending.drain(..n).collect())
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.pending, b"\n") {
                return Some(self.pending.drain(..=i).collect());
            }
            match self.read_more() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// A chunked body, raw; `None` when the connection ended inside it.
    fn chunked(&mut self) -> Option<Vec<u8>> {
        let mut raw = Vec::new();
        loop {
            let line = self.line()?;
            raw.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return None; // not a size: give up on the connection
            };
            if size == 0 {
                loop {
                    let l = self.line()?;
                    raw.extend_from_slice(&l);
                    if l == b"\r\n" || l == b"\n" {
                        return Some(raw);
                    }
                }
            }
            raw.extend_from_slice(&self.take(size + 2)?);
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        let t0 = Instant::now();
        while off < data.len() {
            match self.s.write(&data[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if is_timeout(&e) => {
                    if self.sh.stop.load(Ordering::SeqCst) || t0.elapsed() > Duration::from_secs(20)
                    {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn drain_until_eof(&mut self) {
        while let Ok(n) = self.read_more() {
            if n == 0 {
                return;
            }
            self.pending.clear();
        }
    }

    /// Until the test sets `release` (at most 5 s).
    fn wait_release(&self) {
        let t0 = Instant::now();
        while !self.sh.release.load(Ordering::SeqCst)
            && !self.sh.stop.load(Ordering::SeqCst)
            && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Until the peer closes (POLLRDHUP) or `stop`, without reading.
    fn hold_unread(&self) {
        while !self.sh.stop.load(Ordering::SeqCst) {
            let mut p = libc::pollfd {
                fd: self.s.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, 100) };
            if n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                return;
            }
        }
    }
}

fn serve(s: TcpStream, b: Behave, sh: &Shared) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
    let mut io = SrvIo {
        s,
        pending: Vec::new(),
        sh,
        record: matches!(b, Behave::Log),
    };
    match b {
        Behave::Log => serve_log(&mut io),
        Behave::Switch => {
            if io.head().is_some() {
                let _ = io.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW-BYTES-AFTER-101");
                io.drain_until_eof();
            }
        }
        Behave::Flood => {
            if io.head().is_some() {
                let one = b"HTTP/1.1 100 Continue\r\n\r\n";
                let block: Vec<u8> = one.iter().copied().cycle().take(one.len() * 2600).collect();
                let mut written = 0usize;
                while written < 10_000_000 {
                    if io.write(&block).is_err() {
                        break;
                    }
                    written += block.len();
                    sh.flood_written
                        .fetch_add(block.len() as u64, Ordering::SeqCst);
                }
                let _ = io.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                io.drain_until_eof();
            }
        }
        Behave::HalfHead => {
            if io.head().is_some() {
                let _ = io.write(b"HTTP/1.1 200 OK\r\nContent-Le");
                let _ = io.s.shutdown(Shutdown::Both);
            }
        }
        Behave::BigHead => {
            if io.head().is_some() {
                let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..20 {
                    h.extend_from_slice(
                        format!("X-Big-{i:02}: {}\r\n", "a".repeat(1000)).as_bytes(),
                    );
                }
                h.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
                let _ = io.write(&h);
                io.drain_until_eof();
            }
        }
        Behave::Short => {
            if io.head().is_some() {
                let _ = io.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
                io.wait_release();
                let _ = io.s.shutdown(Shutdown::Both);
            }
        }
        Behave::BadChunk => {
            if io.head().is_some() {
                let _ = io
                    .write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
                io.wait_release();
                let _ = io.write(b"zz\r\nBADBAD\r\n0\r\n\r\n");
                io.drain_until_eof();
            }
        }
        Behave::Early => {
            if io.head().is_some() {
                let _ = io.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly",
                );
                let _ = io.s.shutdown(Shutdown::Write);
                io.drain_until_eof();
            }
        }
        Behave::Silent => io.drain_until_eof(),
        Behave::NoRead => io.hold_unread(),
        Behave::Trunc => {
            let data: Vec<u8> = (0..TRUNC_BYTES).map(|i| (i % 251) as u8).collect();
            if io.write(&data).is_ok() {
                // Until every byte is acknowledged (bounded), then abort: SO_LINGER 0 + close.
                let t0 = Instant::now();
                loop {
                    let mut q: libc::c_int = 0;
                    // SAFETY: TIOCOUTQ writes one int.
                    let r = unsafe { libc::ioctl(io.s.as_raw_fd(), libc::TIOCOUTQ, &mut q) };
                    if r != 0 || q == 0 || t0.elapsed() > Duration::from_secs(5) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let lg = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid fd and linger struct.
                unsafe {
                    libc::setsockopt(
                        io.s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&lg as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
            }
        }
    }
}

fn serve_log(io: &mut SrvIo) {
    loop {
        let Some(head) = io.head() else { return };
        let text = String::from_utf8_lossy(&head).into_owned();
        let entry = Entry { head: text.clone() };
        let headers = entry.headers();
        let has = |name: &str, token: &str| {
            headers.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case(name)
                    && v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
            })
        };
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().trim_end().ends_with("chunked")
        });
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let target = entry.target().to_owned();
        let http10 = entry.request_line().trim_end().ends_with("HTTP/1.0");
        io.sh.log.lock().unwrap().push(entry);
        let body = if chunked {
            io.chunked()
        } else if let Some(n) = len {
            io.take(n)
        } else {
            Some(Vec::new())
        };
        if body.is_none() {
            return;
        }
        let close = http10 || has("connection", "close");
        let reply = format!("seen {target}\n{text}");
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
            reply.len()
        );
        if target.starts_with("/hop") {
            resp.push_str(
                "Connection: X-Bar\r\nX-Bar: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
                 Trailer: X-T\r\nX-Plain: yes\r\n",
            );
        } else if close {
            resp.push_str("Connection: close\r\n");
        }
        resp.push_str("\r\n");
        resp.push_str(&reply);
        if io.write(resp.as_bytes()).is_err() {
            return;
        }
        if close {
            let _ = io.s.shutdown(Shutdown::Write);
            io.drain_until_eof();
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The rig, and the test.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rig(args: &[&str], state: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/rig.sh"))
        .args(args)
        .env("XM_RIG_STATE", state)
        .env("XDPMESH_BIN", env!("CARGO_BIN_EXE_xdpmesh"))
        .current_dir(repo())
        .output()
        .expect("run rig.sh");
    assert!(
        out.status.success(),
        "rig.sh {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rig.sh down` on drop, panics included: stops every process left in the rig's namespaces
/// (gateways, nginx) and removes the namespaces.
struct RigGuard {
    work: PathBuf,
}

impl RigGuard {
    fn up(work: &Path) -> RigGuard {
        let guard = RigGuard {
            work: work.to_owned(),
        };
        rig(&["up"], work);
        guard
    }
}

impl Drop for RigGuard {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/rig.sh"))
            .arg("down")
            .env("XM_RIG_STATE", &self.work)
            .current_dir(repo())
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("rig.sh down after the test failed: {out:?}");
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".into())
}

/// Runs one case with its checks around it: the normal client meanwhile, the gateways alive,
/// their sessions back where they were, and a normal request after it.
fn run_case(c: &Ctx, case: &Case) -> Result<(), String> {
    let base = (c.sessions(Gw::A), c.sessions(Gw::B));
    let meanwhile = case.meanwhile.then(Meanwhile::start);
    let res = catch_unwind(AssertUnwindSafe(|| (case.run)(c)));
    let mut errs = Vec::new();
    if let Err(p) = res {
        errs.push(panic_text(p));
    }
    if let Some(m) = meanwhile {
        if let Err(e) = m.finish() {
            errs.push(format!("the normal client meanwhile: {e}"));
        }
    }
    for gw in [Gw::A, Gw::B] {
        if !c.alive(gw) {
            errs.push(format!(
                "gateway {gw:?} died; its log ends:\n{}",
                c.log_tail(gw)
            ));
        }
    }
    if !(c.alive(Gw::A) && c.alive(Gw::B)) {
        return Err(errs.join("\n"));
    }
    if c.tables_changed.load(Ordering::SeqCst) {
        c.put_base();
    }
    match base {
        (Some(a), Some(b)) => {
            let back = poll(Duration::from_secs(5), Duration::from_millis(100), || {
                let now = (c.sessions(Gw::A)?, c.sessions(Gw::B)?);
                (now.0 <= a && now.1 <= b).then_some(())
            });
            if back.is_none() {
                errs.push(format!(
                    "sessions did not come back within 5 s: A {a} → {:?}, B {b} → {:?}",
                    c.sessions(Gw::A),
                    c.sessions(Gw::B)
                ));
            }
        }
        _ => errs.push(format!(
            "no {SESSIONS} gauge on /metrics (A {:?}, B {:?})",
            base.0, base.1
        )),
    }
    if let Err(e) = c.normal_get() {
        errs.push(format!("a normal GET after the case: {e}"));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

fn run_backend(backend: &'static str, work: &Path, cases: &[&Case]) -> Vec<String> {
    println!("==== backend {backend}");
    let state = work.join(format!("state-{backend}"));
    let srv = NetNs::existing("xm-srv").unwrap();
    let servers = Servers::start(&srv, &work.join(format!("www-{backend}")));
    rig(&["mesh", "--backend", backend], &state);
    let c = Ctx {
        backend,
        mesh: mesh_client_config(&state),
        state,
        cli: NetNs::existing("xm-cli").unwrap(),
        gwa: NetNs::existing("xm-gwa").unwrap(),
        gwb: NetNs::existing("xm-gwb").unwrap(),
        servers,
        tables_changed: AtomicBool::new(false),
    };
    c.put_base();
    if let Err(e) = c.normal_get() {
        panic!("{backend}: a normal GET through the mesh fails before any case: {e}");
    }
    let mut failures = Vec::new();
    for case in cases {
        let t = Instant::now();
        match run_case(&c, case) {
            Ok(()) => println!(
                "case {}: ok ({backend}, {:.1} s)",
                case.name,
                t.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!(
                    "case {}: FAILED ({backend}, {:.1} s): {e}",
                    case.name,
                    t.elapsed().as_secs_f64()
                );
                failures.push(format!("{backend}/{}: {e}", case.name));
            }
        }
        if !(c.alive(Gw::A) && c.alive(Gw::B)) {
            println!("restarting the mesh: a gateway died");
            c.restart_mesh();
        }
    }
    rig(&["stop"], &c.state);
    drop(c);
    failures
}

#[test]
fn hostile_clients_peers_and_servers_on_the_rig() {
    if skip_unless_root("hostile_clients_peers_and_servers_on_the_rig") {
        return;
    }
    let wanted = std::env::var("XM_HOSTILE_CASES").unwrap_or_default();
    let wanted: Vec<&str> = wanted
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for w in &wanted {
        assert!(
            CASES.iter().any(|c| c.name == *w),
            "XM_HOSTILE_CASES: no case {w:?}; cases: {:?}",
            CASES.iter().map(|c| c.name).collect::<Vec<_>>()
        );
    }
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| wanted.is_empty() || wanted.contains(&c.name))
        .collect();
    let backends: Vec<&'static str> = match std::env::var("XM_HOSTILE_BACKENDS").as_deref() {
        Ok("kernel") => vec!["kernel"],
        Ok("afxdp") => vec!["afxdp"],
        _ => vec!["kernel", "afxdp"],
    };
    let work = std::env::temp_dir().join(format!("xdpmesh-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let _rig = RigGuard::up(&work);
    let t = Instant::now();
    let mut failures = Vec::new();
    for backend in backends {
        failures.extend(run_backend(backend, &work, &cases));
    }
    println!(
        "hostile suite: {} case runs in {:.1} s",
        cases.len() * 2,
        t.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} case run(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
