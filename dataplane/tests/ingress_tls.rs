//! `ingress-tls` listeners (issue #19: HTTP/2 over TLS with ALPN on the listeners that
//! terminate TLS): a gateway on kernel sockets (loopback, no root) serving a certificate
//! from `xdpmesh ca issue --dns`, in front of an HTTP/1.1 upstream this test runs, with real
//! clients — curl, and nghttp2-client's h2load.
//!
//! - curl checks the certificate against the mesh CA and the host name, and gets the
//!   upstream's body over HTTP/2 (ALPN `h2`), over HTTP/1.1 (ALPN `http/1.1`) and without
//!   ALPN at all;
//! - an 8 MiB download over HTTP/2 and a 1 MiB upload over HTTP/1.1, byte-exact;
//! - h2load: 2 connections × 16 concurrent streams, every request answered;
//! - a client that speaks plaintext HTTP to the TLS port is refused and counted
//!   (`tls_handshake`); one that connects and says nothing is closed at the listener's
//!   `handshake` timeout, counted; a TLS client is served meanwhile;
//! - after the handshake, a client that sends no HTTP/2 preface (ALPN `h2`), or no request
//!   head (`http/1.1`), is closed at the listener's `request_head` timeout (openssl
//!   s_client holds the connection);
//! - an HTTP/2 connection takes one place under the listener's caps, not one per stream:
//!   16 concurrent streams pass `max_connections_per_source = 1`;
//! - a certificate reissued in place (`ca issue --force`, a new host name) is served to new
//!   connections without a restart.

mod common;

use common::KernelGateway;
use dataplane::netns::wait_for;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);
const BIG: usize = 8 << 20;
const ID: &str = "spiffe://test.mesh/ingress";

/// The gateway (killed, its directory removed, on drop) and its two addresses.
struct Gateway {
    gw: KernelGateway,
    web: SocketAddr,
    admin: SocketAddr,
}

impl std::ops::Deref for Gateway {
    type Target = KernelGateway;
    fn deref(&self) -> &KernelGateway {
        &self.gw
    }
}

/// Deterministic body bytes.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 % 251) as u8).collect()
}

/// An HTTP/1.1 upstream: `GET /big` → 8 MiB, `POST /echo` → the body back, anything else
/// → `ok` (all with content-length).
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = serve(c);
            });
        }
    });
    addr
}

fn serve(c: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        r.read_exact(&mut body)?;
        let answer = match target.as_str() {
            "/big" => pattern(BIG),
            "/echo" => body,
            _ => b"ok".to_vec(),
        };
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )?;
        w.write_all(&answer)?;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn xdpmesh(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(args)
        .output()
        .expect("run xdpmesh");
    assert!(out.status.success(), "xdpmesh {args:?}: {out:?}");
}

/// `xdpmesh ca issue` of the listener's identity into `dir/id`, from `dir/ca`, naming `dns`.
fn issue(dir: &Path, dns: &str, more: &[&str]) {
    let (ca, out) = (dir.join("ca"), dir.join("id"));
    let (ca, out) = (ca.display().to_string(), out.display().to_string());
    let mut args = vec![
        "ca", "issue", "--ca", &ca, "--id", ID, "--dns", dns, "--out", &out,
    ];
    args.extend_from_slice(more);
    xdpmesh(&args);
}

/// A gateway with an `ingress-tls` listener whose certificate names `app.test`, from a CA
/// made here; `listener` is added to the listener's table.
fn start(listener: &str) -> Gateway {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xdpmesh-ingress-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    xdpmesh(&["ca", "init", "--out", &dir.join("ca").display().to_string()]);
    issue(&dir, "app.test", &[]);
    let up = upstream();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!("[node]\nname = \"ingress\"\ntables = \"tables.toml\"\nadmin = \"{admin}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tables.toml"),
        format!(
            "[trust]\nroots = [\"ca/ca.pem\"]\n\n\
             [[identity]]\nid = \"{ID}\"\ncert = \"id/cert.pem\"\nkey = \"id/key.pem\"\n\n\
             [[listener]]\nname = \"web\"\nbind = \"{web}\"\nprotocol = \"ingress-tls\"\n\
             identity = \"{ID}\"\n{listener}\n\n\
             [[service]]\nname = \"app\"\nhosts = [\"app.test\", \"new.test\", \"127.0.0.1\"]\n\
             endpoints = [{{ address = \"{up}\" }}]\n\n\
             [[route]]\nname = \"to-app\"\nservice = \"app\"\n"
        ),
    )
    .unwrap();
    Gateway {
        gw: KernelGateway::start(dir),
        web,
        admin,
    }
}

/// The sum of a counter's series whose labels contain `label` (e.g. `reason="x"`).
fn metric(admin: SocketAddr, name: &str, label: &str) -> u64 {
    let mut c = TcpStream::connect_timeout(&admin, DEADLINE).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    common::metric_in(&text, name, label)
}

fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is missing (Debian nghttp2-client; scripts/lib/deps.sh installs it)");
    }
    found
}

/// curl against `https://app.test:PORT{path}`, checking the certificate against the CA.
fn curl(gw: &Gateway, args: &[&str], path: &str) -> std::process::Output {
    let ca = gw.dir.join("ca/ca.pem");
    Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("app.test:{}:127.0.0.1", gw.web.port()),
        ])
        .args(args)
        .arg(format!("https://app.test:{}{path}", gw.web.port()))
        .output()
        .expect("curl")
}

fn version_line(gw: &Gateway, how: &str) -> String {
    let out = curl(gw, &[how, "-w", "\n%{http_code} %{http_version}"], "/");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ingress_tls_serves_http2_by_alpn_and_http1_beside_it() {
    let gw = start("");

    // ALPN picks the protocol; without ALPN the client gets HTTP/1.1.
    assert_eq!(version_line(&gw, "--http2"), "ok\n200 2");
    assert_eq!(version_line(&gw, "--http1.1"), "ok\n200 1.1");
    assert_eq!(version_line(&gw, "--no-alpn"), "ok\n200 1.1");

    // The certificate is checked by name: another name fails verification.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(gw.dir.join("ca/ca.pem"))
        .args([
            "--resolve",
            &format!("other.test:{}:127.0.0.1", gw.web.port()),
            &format!("https://other.test:{}/", gw.web.port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(60), "a wrong name passed: {out:?}");

    // 8 MiB down over HTTP/2, 1 MiB up over HTTP/1.1: byte-exact.
    let out = curl(&gw, &["--http2"], "/big");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout == pattern(BIG),
        "the 8 MiB download differs ({} bytes)",
        out.stdout.len()
    );
    let up = gw.dir.join("upload");
    std::fs::write(&up, pattern(1 << 20)).unwrap();
    let out = curl(
        &gw,
        &["--http1.1", "--data-binary", &format!("@{}", up.display())],
        "/echo",
    );
    assert!(
        out.stdout == pattern(1 << 20),
        "the 1 MiB upload came back as {} bytes",
        out.stdout.len()
    );

    // Multiplexed: 2 connections × 16 streams, every request answered.
    if !tool("h2load") {
        eprintln!("h2load skipped: nghttp2-client is not installed");
        return;
    }
    let streams_before = metric(gw.admin, "xdpmesh_h2_streams_total", "");
    let out = Command::new("h2load")
        .args(["-n", "320", "-c", "2", "-m", "16"])
        .arg(format!("https://127.0.0.1:{}/", gw.web.port()))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("320 succeeded") && text.contains("Application protocol: h2"),
        "{text}"
    );
    let streams = metric(gw.admin, "xdpmesh_h2_streams_total", "") - streams_before;
    assert!(streams >= 320, "the front counted {streams} streams");
}

#[test]
fn plaintext_and_silent_clients_are_refused_and_counted() {
    let gw = start("timeouts = { handshake = \"1s\" }");
    let refused = |gw: &Gateway| {
        metric(
            gw.admin,
            "xdpmesh_proxy_refused_total",
            "reason=\"tls_handshake\"",
        )
    };
    let timed_out = |gw: &Gateway| {
        metric(
            gw.admin,
            "xdpmesh_proxy_timeouts_total",
            "timeout=\"handshake\"",
        )
    };
    let (r0, t0) = (refused(&gw), timed_out(&gw));

    // Plaintext HTTP on the TLS port: no HTTP answer, the connection ends.
    let mut c = TcpStream::connect(gw.web).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "plaintext got an HTTP answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    let counted = wait_for(DEADLINE, || (refused(&gw) > r0).then_some(()));
    assert!(counted.is_some(), "no tls_handshake refusal counted");

    // A client that says nothing: closed at the handshake timeout (1 s), not before.
    let started = Instant::now();
    let mut silent = TcpStream::connect(gw.web).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    // Served meanwhile.
    assert_eq!(version_line(&gw, "--http2"), "ok\n200 2");
    let mut buf = [0u8; 64];
    let r = silent.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        matches!(r, Ok(0)) || r.is_err(),
        "the silent client read {r:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < DEADLINE,
        "closed after {waited:?}"
    );
    let counted = wait_for(DEADLINE, || (timed_out(&gw) > t0).then_some(()));
    assert!(counted.is_some(), "no handshake timeout counted");
}

/// `openssl s_client` with ALPN `alpn`, saying nothing after the handshake: how long until
/// the gateway closes the connection, and what it sent.
fn silent_after_handshake(gw: &Gateway, alpn: &str) -> (Duration, String) {
    let started = Instant::now();
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-alpn", alpn])
        .args(["-servername", "app.test", "-CAfile"])
        .arg(gw.dir.join("ca/ca.pem"))
        .args(["-connect", &gw.web.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    // stdin stays open (and silent) until the child is reaped.
    let _stdin = child.stdin.take();
    let exited = wait_for(DEADLINE, || child.try_wait().ok().flatten());
    let waited = started.elapsed();
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ALPN {alpn}: the silent client was not closed within {DEADLINE:?}");
    }
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    (waited, out)
}

#[test]
fn silence_after_the_handshake_ends_at_the_request_head_timeout() {
    let gw = start("timeouts = { request_head = \"1s\" }");
    let prefaces = || metric(gw.admin, "xdpmesh_h2_preface_timeouts_total", "");
    let heads = || {
        metric(
            gw.admin,
            "xdpmesh_proxy_timeouts_total",
            "timeout=\"request_head\"",
        )
    };
    let (p0, h0) = (prefaces(), heads());

    // ALPN h2, no preface: the front ends it (a reset, nothing to say in HTTP/2 yet).
    let (waited, _) = silent_after_handshake(&gw, "h2");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "h2 without a preface closed after {waited:?}"
    );
    assert_eq!(prefaces(), p0 + 1, "the preface timeout was not counted");

    // ALPN http/1.1, no request: 408, then the close.
    let (waited, out) = silent_after_handshake(&gw, "http/1.1");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "http/1.1 without a request closed after {waited:?}"
    );
    assert!(out.starts_with("HTTP/1.1 408"), "got {out:?}");
    assert_eq!(heads(), h0 + 1, "the request-head timeout was not counted");
}

#[test]
fn an_http2_connection_takes_one_place_under_the_caps() {
    if !tool("h2load") {
        eprintln!("skipped: nghttp2-client is not installed");
        return;
    }
    let gw = start("max_connections_per_source = 1");
    assert_eq!(version_line(&gw, "--http2"), "ok\n200 2");
    let out = Command::new("h2load")
        .args(["-n", "160", "-c", "1", "-m", "16"])
        .arg(format!("https://127.0.0.1:{}/", gw.web.port()))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("160 succeeded"), "{text}");
    assert_eq!(
        metric(
            gw.admin,
            "xdpmesh_proxy_refused_total",
            "reason=\"source_overflow\""
        ),
        0
    );
}

#[test]
fn a_reissued_certificate_is_served_without_a_restart() {
    let gw = start("");
    let at = |name: &str| {
        Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(gw.dir.join("ca/ca.pem"))
            .args([
                "--resolve",
                &format!("{name}:{}:127.0.0.1", gw.web.port()),
                &format!("https://{name}:{}/", gw.web.port()),
            ])
            .output()
            .expect("curl")
    };
    // The first certificate does not name new.test: curl refuses it (60).
    assert_eq!(at("new.test").status.code(), Some(60));
    issue(&gw.dir, "new.test", &["--force"]);
    // The certificate watch polls the files; new connections get the new one.
    let served = wait_for(DEADLINE, || {
        let out = at("new.test");
        (out.status.success() && out.stdout == b"ok").then_some(())
    });
    assert!(
        served.is_some(),
        "new.test was not served: {:?}",
        at("new.test")
    );
    assert_eq!(
        at("app.test").status.code(),
        Some(60),
        "the old name still served"
    );
}
