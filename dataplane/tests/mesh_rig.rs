//! The mesh end to end on the four-namespace rig (`scripts/rig.sh`), for both backends:
//! client in xm-cli → gateway A (xm-gwa) ══ mTLS ══ gateway B (xm-gwb) → servers in xm-srv.
//!
//! Checks, per backend: curl gets the server's body; a 100 MiB download is byte-exact; TCP
//! echo through the mesh; a 90/10 split over 2000 requests lands within ±3 %; a header route
//! wins over the split; an identity not on the allow list gets 403 and is counted while an
//! allowed one passes; a client certificate from another CA is refused at B; a peer with a
//! good certificate but an unknown SNI or a junk preamble is closed and counted; a server that
//! never answers gives 504 at the route's timeout while another client is served, and a head
//! sent one byte every 3 s is cut with 408 within the head timeout; a capture of
//! the gateway-to-gateway link never shows a marker from the body; a table reload and a
//! certificate rotation during 30 s of load each change behaviour with no failed request and
//! no dropped connection. HTTP/2 (h2c) clients too: the split, the header route, the denial,
//! and h2load through the reload and the rotation. Needs root; under CI=true it must run. The rig's namespace names
//! are fixed, so everything runs in one test, one backend after the other.

use dataplane::netns::{skip_unless_root, wait_for, NetNs};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GW_A: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const MARKER: &str = "XM-MARKER-7f3a9c-plaintext-must-not-cross-the-mesh";
const BIG: usize = 100 << 20;

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

/// Servers in xm-srv: nginx on 8080 ("v1", a 100 MiB file, a page with the marker) and 8081
/// ("v2"), and a TCP echo on 5001. Stopped on drop.
struct Servers {
    nginx: Child,
    stop: Arc<AtomicBool>,
    echo: Option<std::thread::JoinHandle<()>>,
    silent: Option<std::thread::JoinHandle<()>>,
    big_sha: Vec<u8>,
}

impl Servers {
    fn start(srv: &NetNs, dir: &Path) -> Servers {
        for v in ["v1", "v2"] {
            let root = dir.join(v);
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("index.html"), v).unwrap();
        }
        // Seeded random bytes: every byte position matters for the sha.
        let mut big = vec![0u8; BIG];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for chunk in big.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(dir.join("v1/big.bin"), &big).unwrap();
        let big_sha = Sha256::digest(&big).to_vec();
        drop(big);
        for v in ["v1", "v2"] {
            std::fs::write(dir.join(v).join("marker.txt"), MARKER.repeat(100)).unwrap();
        }
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\nerror_log stderr;\npid {pid};\nevents {{}}\n\
                 http {{\n  access_log off;\n  default_type application/octet-stream;\n\
                 server {{ listen 10.10.3.2:8080; root {v1}; }}\n\
                 server {{ listen 10.10.3.2:8081; root {v2}; }}\n}}\n",
                pid = dir.join("nginx.pid").display(),
                v1 = dir.join("v1").display(),
                v2 = dir.join("v2").display()
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
        let up = wait_for(Duration::from_secs(10), || {
            srv.run(|| TcpStream::connect("10.10.3.2:8081").ok())
        });
        assert!(up.is_some(), "nginx did not start in xm-srv");
        let stop = Arc::new(AtomicBool::new(false));
        // A server that accepts and never answers (the 504 check), on 8090.
        let silent = srv.run(|| TcpListener::bind("10.10.3.2:8090").expect("silent bind"));
        silent.set_nonblocking(true).unwrap();
        let st = stop.clone();
        let silent = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match silent.accept() {
                    Ok((c, _)) => held.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let listener = srv.run(|| TcpListener::bind("10.10.3.2:5001").expect("echo bind"));
        listener.set_nonblocking(true).unwrap();
        let st = stop.clone();
        let echo = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let mut w = c.try_clone().unwrap();
                            let _ = std::io::copy(&mut c, &mut w);
                            let _ = w.shutdown(std::net::Shutdown::Write);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Servers {
            nginx,
            stop,
            echo: Some(echo),
            silent: Some(silent),
            big_sha,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master takes its worker down with it (a killed master
        // leaves the worker holding the ports).
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.nginx.id() as i32, libc::SIGTERM) };
        let _ = self.nginx.wait();
        self.stop.store(true, Ordering::SeqCst);
        for t in [self.echo.take(), self.silent.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }
}

/// One HTTP/1.1 keep-alive connection (a test client, no pipelining).
struct Http {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Http {
    fn connect() -> std::io::Result<Http> {
        let s = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(GW_A, 80)),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Http {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Sends a GET, returns (status, body).
    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, Vec<u8>)> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: web.rig.mesh\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.w.write_all(req.as_bytes())?;
        let mut status = 0;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if status == 0 {
                status = l
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if l.is_empty() {
                break;
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok((status, body))
    }
}

/// The status of `GET http://10.10.1.1/` sent from source address `from`.
fn status_from(cli: &NetNs, from: &str) -> String {
    cli.exec_ok([
        "curl",
        "-s",
        "--max-time",
        "10",
        "--interface",
        from,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://10.10.1.1/",
    ])
    .expect("curl")
}

/// The gateway's `/metrics` text.
fn metrics_text(ns: &NetNs) -> String {
    ns.exec_ok([
        "curl",
        "-sf",
        "--max-time",
        "5",
        "http://127.0.0.1:9901/metrics",
    ])
    .expect("metrics")
}

fn metric(ns: &NetNs, name_prefix: &str, label: &str) -> u64 {
    metrics_text(ns)
        .lines()
        .filter(|l| l.starts_with(name_prefix) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Opens mTLS to gateway B's mesh listener from the client namespace with the client's mesh
/// identity and server name `sni`, sends `payload`, and waits up to 10 s for B to close the
/// connection. True when B closed it (openssl exits on its own, `-quiet` ignores stdin's end).
fn hostile_peer(cli: &NetNs, state: &Path, sni: &str, payload: &[u8]) -> bool {
    let id = state.join("ids/sa/client");
    let mut child = cli
        .command("timeout")
        .arg("10")
        .arg("openssl")
        .args(["s_client", "-quiet", "-verify_return_error"])
        .args(["-connect", "10.10.2.2:15443", "-servername", sni])
        .arg("-cert")
        .arg(id.join("cert.pem"))
        .arg("-key")
        .arg(id.join("key.pem"))
        .arg("-CAfile")
        .arg(state.join("ca/ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(payload)
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl s_client");
    // `timeout` exits 124 when it had to stop openssl: B kept the connection open.
    let closed = out.status.code() != Some(124);
    if !closed {
        eprintln!("openssl: {}", String::from_utf8_lossy(&out.stderr));
    }
    closed
}

fn put_tables(ns: &NetNs, text: &str, dir: &Path, name: &str) {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    let out = ns
        .exec([
            "curl",
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", f.display()),
            "http://127.0.0.1:9901/tables",
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "PUT /tables {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gateway A's routing tables: scripts/rig/split-gwa-tables.toml (shared with scripts/demo.sh)
/// with the split's weights set, plus a client identity whose certificate comes from another CA.
fn gwa_tables(v2_weight: u32) -> String {
    let mut text = include_str!("../../scripts/rig/split-gwa-tables.toml").replace(
        "identity = \"spiffe://rig.mesh/gateway/gw-b\"\n",
        "identity = \"spiffe://rig.mesh/gateway/gw-b\"\nhop_protocol = \"h2\"\n",
    );
    assert!(text.contains("hop_protocol = \"h2\""), "gw-b's peer entry");
    for (version, weight) in [("v1", 100 - v2_weight), ("v2", v2_weight)] {
        let marker = format!(" }}, # split {version}");
        let line = text
            .lines()
            .find(|l| l.ends_with(&marker))
            .unwrap_or_else(|| panic!("split-gwa-tables.toml: no line ending in {marker:?}"))
            .to_owned();
        let (head, _) = line
            .rsplit_once("weight = ")
            .expect("a weight on the split line");
        text = text.replace(&line, &format!("{head}weight = {weight}{marker}"));
    }
    text.push_str(
        r#"
[[identity]]
id = "spiffe://rig.mesh/sa/forged"
sources = ["10.10.1.4/32"]
cert = "forged/cert.pem"
key = "forged/key.pem"

[[service]]
name = "silent"
hosts = ["silent.rig.mesh"]
endpoints = [{ address = "10.10.3.2:8090", via = "gw-b" }]

[[route]]
name = "silent"
service = "silent"
timeout = "2s"
"#,
    );
    text
}

/// Gateway B's routing tables: scripts/rig/split-gwb-tables.toml plus the silent server.
fn gwb_tables() -> String {
    let mut text = include_str!("../../scripts/rig/split-gwb-tables.toml").to_owned();
    text.push_str(
        r#"
[[service]]
name = "silent"
endpoints = [{ address = "10.10.3.2:8090" }]

[[authorization]]
service = "silent"
allow = ["spiffe://rig.mesh/sa/client"]
"#,
    );
    text
}

/// A request to a server that accepts and never answers gets a 504 from gateway A at the
/// route's timeout (2 s), while another client is served meanwhile.
fn silent_server_gives_504(cli: &NetNs, gwa: &NetNs) {
    let before = metric(gwa, "xdpmesh_proxy_timeouts_total", "timeout=\"request\"");
    let started = Instant::now();
    let slow = {
        let cli = NetNs::existing(cli.name()).unwrap();
        std::thread::spawn(move || {
            cli.exec_ok([
                "curl",
                "-s",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Host: silent.rig.mesh",
                "http://10.10.1.1/",
            ])
            .expect("curl to the silent service")
        })
    };
    // Another client is served while the first waits.
    let ok = cli
        .exec_ok(["curl", "-sf", "--max-time", "10", "http://10.10.1.1/"])
        .expect("curl while another request hangs");
    assert!(ok == "v1" || ok == "v2", "{ok}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served before the silent request timed out"
    );
    let code = slow.join().unwrap();
    let took = started.elapsed();
    assert_eq!(code, "504", "a silent server gives 504");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "504 at the route's 2 s timeout, took {took:?}"
    );
    assert!(metric(gwa, "xdpmesh_proxy_timeouts_total", "timeout=\"request\"") > before);
}

/// A client that sends its head one byte every 3 s is answered 408 and cut within the
/// listener's request_head timeout (10 s, the default).
fn slow_head_is_cut(cli: &NetNs) {
    cli.run(|| {
        let mut c = TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(GW_A, 80)),
            Duration::from_secs(5),
        )
        .expect("connect gw-a");
        // The pace under test: one byte, then up to 3 s for an answer.
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        for &b in b"GET / HTTP/1.1\r\nHost: web.rig.mesh\r\n".iter() {
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
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "408 for a slow head: {text:?}"
        );
        assert!(
            took < Duration::from_secs(14),
            "cut within the 10 s head timeout (+ one 3 s pace), took {took:?}"
        );
    });
}

fn xdpmesh(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(args)
        .output()
        .expect("xdpmesh");
    assert!(
        out.status.success(),
        "xdpmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts v1/v2 answers over `n` requests on one keep-alive connection.
/// [`status_from`] for an HTTP/2 (h2c) client.
fn status_from_h2(cli: &NetNs, from: &str) -> String {
    cli.exec_ok([
        "curl",
        "-s",
        "--http2-prior-knowledge",
        "--max-time",
        "10",
        "--interface",
        from,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://10.10.1.1/",
    ])
    .expect("curl --http2-prior-knowledge")
}

/// [`split`] for an HTTP/2 client: `n` requests for `/` as concurrent streams of one h2c
/// connection (nghttp takes many URIs; curl 7.88 fails reusing a prior-knowledge
/// connection for a URL glob, error 16, against any server). nghttp prints the bodies
/// back to back: each is `v1` or `v2`.
fn split_h2(cli: &NetNs, n: usize, header: Option<&str>) -> (usize, usize) {
    let urls: Vec<String> = (0..n).map(|i| format!("http://10.10.1.1/?{i}")).collect();
    let mut args: Vec<&str> = vec!["nghttp", "-t", "60"];
    if let Some(h) = header {
        args.extend(["-H", h]);
    }
    args.extend(urls.iter().map(String::as_str));
    let out = cli.exec_ok(args).expect("nghttp");
    assert_eq!(out.len(), 2 * n, "{n} bodies of 2 bytes: {out:?}");
    let (mut v1, mut v2) = (0, 0);
    for body in out.as_bytes().chunks(2) {
        match body {
            b"v1" => v1 += 1,
            b"v2" => v2 += 1,
            other => panic!(
                "unexpected answer over HTTP/2: {:?}",
                String::from_utf8_lossy(other)
            ),
        }
    }
    (v1, v2)
}

/// h2load in xm-cli for `secs` seconds (2 connections, 8 streams each); `finish` asserts
/// that every request succeeded.
struct H2Load(Option<Child>);

impl H2Load {
    fn start(cli: &NetNs, secs: u32) -> H2Load {
        let child = cli
            .command("h2load")
            .args([
                "-c",
                "2",
                "-m",
                "8",
                "-D",
                &secs.to_string(),
                "http://10.10.1.1/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("h2load");
        H2Load(Some(child))
    }

    fn finish(mut self) {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        println!("h2load during the reload and rotation:\n{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("requests:"))
            .unwrap_or_else(|| panic!("h2load printed no summary: {text}"));
        let num = |key: &str| -> u64 {
            line.split(',')
                .find_map(|f| {
                    f.trim()
                        .strip_suffix(key)?
                        .trim()
                        .rsplit(' ')
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
        };
        assert!(num("succeeded") > 1000, "h2load ran: {line}");
        assert_eq!(
            (num("failed"), num("errored"), num("timeout")),
            (0, 0, 0),
            "every HTTP/2 request succeeded: {line}"
        );
        assert!(
            text.contains("status codes:") && text.contains(" 0 5xx"),
            "no 5xx over HTTP/2: {text}"
        );
    }
}

impl Drop for H2Load {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn split(n: usize, headers: &[(&str, &str)]) -> (usize, usize) {
    let mut c = Http::connect().expect("connect gw-a");
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..n {
        let (status, body) = c.get("/", headers).expect("request");
        assert_eq!(status, 200);
        match body.as_slice() {
            b"v1" => v1 += 1,
            b"v2" => v2 += 1,
            other => panic!("unexpected body {:?}", String::from_utf8_lossy(other)),
        }
    }
    (v1, v2)
}

/// Load: `clients` keep-alive connections asking for `/` until `stop`; every failure counts.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    v2: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(cli: &NetNs, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let v2 = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, v2) = (stop.clone(), ok.clone(), v2.clone());
                let mut c = cli.run(Http::connect).expect("load connect");
                std::thread::spawn(move || -> Result<(), String> {
                    while !stop.load(Ordering::SeqCst) {
                        // One connection for the whole run: a drop is a failure.
                        let (status, body) = c.get("/", &[]).map_err(|e| e.to_string())?;
                        if status != 200 {
                            return Err(format!("status {status}"));
                        }
                        ok.fetch_add(1, Ordering::SeqCst);
                        if body == b"v2" {
                            v2.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Load {
            stop,
            ok,
            v2,
            threads,
        }
    }

    /// (requests, v2 answers) during `d`.
    fn measure(&self, d: Duration) -> (u64, u64) {
        let (o, v) = (
            self.ok.load(Ordering::SeqCst),
            self.v2.load(Ordering::SeqCst),
        );
        std::thread::sleep(d); // a measuring window, not a synchronization
        (
            self.ok.load(Ordering::SeqCst) - o,
            self.v2.load(Ordering::SeqCst) - v,
        )
    }

    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join()
                .unwrap()
                .expect("a request failed or a connection dropped");
        }
    }
}

fn run_backend(backend: &str, work: &Path) {
    println!("==== backend {backend}");
    let state = work.join(format!("state-{backend}"));
    let (cli, gwa, gwb, srv) = (
        NetNs::existing("xm-cli").unwrap(),
        NetNs::existing("xm-gwa").unwrap(),
        NetNs::existing("xm-gwb").unwrap(),
        NetNs::existing("xm-srv").unwrap(),
    );
    let servers = Servers::start(&srv, &work.join(format!("www-{backend}")));
    // The multiplexed hop (issue #19), as `gwa_tables` below has it too.
    rig(&["mesh", "--backend", backend, "--hop", "h2"], &state);

    // curl gets the server's body through both gateways.
    let body = cli
        .exec_ok(["curl", "-sf", "--max-time", "10", "http://10.10.1.1/"])
        .expect("curl through the mesh");
    assert_eq!(body, "v1");
    // Before other traffic opens hops for other services and identities.
    hop_pooling(&cli, &gwa, &gwb, backend);

    // A 100 MiB download is byte-exact.
    let t = Instant::now();
    let file = work.join(format!("big-{backend}.bin"));
    cli.exec_ok([
        "curl",
        "-sf",
        "--max-time",
        "300",
        "-o",
        &file.display().to_string(),
        "http://10.10.1.1/big.bin",
    ])
    .expect("100 MiB download");
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), BIG);
    assert!(
        Sha256::digest(&got).to_vec() == servers.big_sha,
        "download differs"
    );
    println!("100 MiB download in {:?}", t.elapsed());
    let _ = std::fs::remove_file(&file);

    // HTTPS from outside the mesh on gw-a's `ingress-tls` listener (issue #19): HTTP/2 or
    // HTTP/1.1 by ALPN, gw-a's certificate checked against the mesh CA by host name, and
    // the 100 MiB download over HTTP/2 byte-exact.
    let ca = state.join("ca/ca.pem").display().to_string();
    let https = |args: &[&str]| {
        let mut a = vec![
            "curl",
            "-sf",
            "--max-time",
            "300",
            "--cacert",
            &ca,
            "--resolve",
            "web.rig.mesh:443:10.10.1.1",
        ];
        a.extend_from_slice(args);
        cli.exec_ok(a)
            .expect("curl https to gw-a's ingress-tls listener")
    };
    for (how, want) in [("--http2", "v1\n200 2"), ("--http1.1", "v1\n200 1.1")] {
        let got = https(&[
            how,
            "-w",
            "\n%{http_code} %{http_version}",
            "https://web.rig.mesh/",
        ]);
        assert_eq!(got, want, "ingress-tls with {how}");
    }
    let t = Instant::now();
    let path = file.display().to_string();
    https(&["--http2", "-o", &path, "https://web.rig.mesh/big.bin"]);
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), BIG);
    assert!(
        Sha256::digest(&got).to_vec() == servers.big_sha,
        "the HTTPS download differs"
    );
    println!("100 MiB download over ingress-tls h2 in {:?}", t.elapsed());
    let _ = std::fs::remove_file(&file);

    // TCP echo through the mesh.
    cli.run(|| {
        let mut c =
            TcpStream::connect_timeout(&"10.10.1.1:5001".parse().unwrap(), Duration::from_secs(5))
                .expect("connect echo");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        let mut w = c.try_clone().unwrap();
        let d2 = data.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&d2).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        assert!(
            back == data,
            "echo differs ({} of {} bytes)",
            back.len(),
            data.len()
        );
    });

    // Routing tables with a split, a header route and more identities.
    xdpmesh(&[
        "ca",
        "issue",
        "--ca",
        &state.join("ca").display().to_string(),
        "--id",
        "spiffe://rig.mesh/sa/intruder",
        "--out",
        &state.join("ids/sa/intruder").display().to_string(),
    ]);
    let other_ca = work.join(format!("other-ca-{backend}"));
    xdpmesh(&["ca", "init", "--out", &other_ca.display().to_string()]);
    xdpmesh(&[
        "ca",
        "issue",
        "--ca",
        &other_ca.display().to_string(),
        "--id",
        "spiffe://rig.mesh/sa/forged",
        "--out",
        &state.join("forged").display().to_string(),
    ]);
    for ip in ["10.10.1.3/24", "10.10.1.4/24"] {
        let _ = cli.exec(["ip", "addr", "add", ip, "dev", "cli-gwa"]);
    }
    put_tables(&gwb, &gwb_tables(), &state, "gwb-tables.toml");
    put_tables(&gwa, &gwa_tables(10), &state, "gwa-tables.toml");

    // 90/10 over 2000 requests: within ±3 %.
    let (v1, v2) = cli.run(|| split(2000, &[]));
    println!("split 90/10: v1 {v1}, v2 {v2}");
    assert!(
        (1740..=1860).contains(&v1),
        "v1 {v1} of 2000 is not 90 ± 3 %"
    );
    // The header route wins over the split.
    let (b1, b2) = cli.run(|| split(100, &[("city", "berlin")]));
    assert_eq!((b1, b2), (0, 100), "city: berlin goes to v2 only");
    // The same over HTTP/2 (h2c): 2000 requests as streams of one connection, then the
    // header route.
    let (h1, h2) = split_h2(&cli, 2000, None);
    println!("split 90/10 over HTTP/2: v1 {h1}, v2 {h2}");
    assert!(
        (1740..=1860).contains(&h1) && h1 + h2 == 2000,
        "HTTP/2: v1 {h1} of 2000 is not 90 ± 3 % (v2 {h2})"
    );
    assert_eq!(
        split_h2(&cli, 100, Some("city: berlin")),
        (0, 100),
        "HTTP/2: city: berlin goes to v2 only"
    );

    // An identity not on B's allow list: 403, counted at B; the allowed one still passes.
    let denied_before = metric(&gwb, "xdpmesh_proxy_refused_total", "reason=\"denied\"");
    assert_eq!(status_from(&cli, "10.10.1.3"), "403");
    // B's workers publish their counters for /metrics a moment after the answer left.
    let denied_after = wait_for(Duration::from_secs(5), || {
        let n = metric(&gwb, "xdpmesh_proxy_refused_total", "reason=\"denied\"");
        (n > denied_before).then_some(n)
    });
    assert_eq!(
        denied_after,
        Some(denied_before + 1),
        "the denial is counted at B, once"
    );
    let denied_after = denied_before + 1;
    assert_eq!(status_from(&cli, "10.10.1.2"), "200");
    // And over HTTP/2.
    assert_eq!(status_from_h2(&cli, "10.10.1.3"), "403");
    let denied_h2 = wait_for(Duration::from_secs(5), || {
        let n = metric(&gwb, "xdpmesh_proxy_refused_total", "reason=\"denied\"");
        (n > denied_after).then_some(n)
    });
    assert_eq!(
        denied_h2,
        Some(denied_after + 1),
        "the HTTP/2 client's denial is counted at B"
    );
    assert_eq!(status_from_h2(&cli, "10.10.1.2"), "200");

    // Timeouts: a silent server gives 504, a slow head is cut with 408.
    silent_server_gives_504(&cli, &gwa);
    slow_head_is_cut(&cli);

    // A client certificate from another CA: B refuses the handshake; A answers 502.
    let tls_before = metric(
        &gwb,
        "xdpmesh_proxy_refused_total",
        "reason=\"tls_handshake\"",
    );
    assert_eq!(status_from(&cli, "10.10.1.4"), "502");
    assert!(
        metric(
            &gwb,
            "xdpmesh_proxy_refused_total",
            "reason=\"tls_handshake\""
        ) > tls_before,
        "B counted the refused handshake"
    );

    // A mesh peer with a good certificate that then misbehaves: an SNI naming no service,
    // and junk where gateway A sends its preamble. B closes each connection and counts
    // it with its reason.
    for (sni, reason) in [
        ("nosuch.svc.mesh", "unknown_service"),
        ("web.svc.mesh", "bad_preamble"),
    ] {
        let label = format!("reason=\"{reason}\"");
        let before = metric(&gwb, "xdpmesh_proxy_refused_total", &label);
        let closed = hostile_peer(&cli, &state, sni, b"not a preamble\n");
        assert!(closed, "B closed the connection with the bad {reason}");
        assert!(
            wait_for(Duration::from_secs(10), || {
                (metric(&gwb, "xdpmesh_proxy_refused_total", &label) > before).then_some(())
            })
            .is_some(),
            "B counted the refusal as {reason}"
        );
    }

    // A peer on the multiplexed hop that lies in its streams' endpoint field: B refuses
    // each bad stream as it refuses a bad preamble (counted), and serves the good streams
    // of the same connection.
    let refused = |reason: &str| {
        metric(
            &gwb,
            "xdpmesh_proxy_refused_total",
            &format!("reason=\"{reason}\""),
        )
    };
    let (bad0, far0) = (refused("bad_preamble"), refused("endpoint_not_local"));
    let id = state.join("ids/sa/client");
    let streams = r#"[["10.10.3.2:8080"], [], ["10.10.3.2:8080", "10.10.3.2:8081"],
        ["10.10.3.2:9999"], ["bogus"], ["10.10.3.2:8081"]]"#;
    let out = cli
        .exec_ok([
            "/usr/bin/python3",
            &repo()
                .join("dataplane/tests/hop/h2peer.py")
                .display()
                .to_string(),
            "10.10.2.2:15443",
            "web.svc.mesh",
            &id.join("cert.pem").display().to_string(),
            &id.join("key.pem").display().to_string(),
            &state.join("ca/ca.pem").display().to_string(),
            streams,
        ])
        .expect("h2peer.py");
    println!("lying peer on the multiplexed hop: {out}");
    assert_eq!(
        out.trim(),
        r#"["200", "reset", "reset", "reset", "reset", "200"]"#,
        "good streams served, lying ones reset"
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            (refused("bad_preamble") >= bad0 + 3 && refused("endpoint_not_local") > far0)
                .then_some(())
        })
        .is_some(),
        "B counted 3 bad preambles and 1 endpoint not local"
    );

    // A capture of the gateway-to-gateway link never shows the marker. With AF_XDP the
    // frames bypass the kernel's taps on both gateways, so B is restarted on kernel sockets
    // for this check (A still encrypts on its AF_XDP path).
    let restarted_b = backend == "afxdp";
    let mut b_kernel = None;
    if restarted_b {
        rig_stop_one(&state, "gwb");
        let mut child = gwb
            .command(env!("CARGO_BIN_EXE_xdpmesh"))
            .args(["run", "--backend", "kernel", "--config"])
            .arg(state.join("gwb-node.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        gwb.wait_entered(&mut child).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("ready"), "gw-b on kernel sockets: {line}");
        b_kernel = Some(child);
    }
    let pcap = work.join(format!("link-{backend}.pcap"));
    let mut dump = gwb
        .command("tcpdump")
        .args(["-i", "gwb-gwa", "--immediate-mode", "-U", "-w"])
        .arg(&pcap)
        .arg("tcp port 15443")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    gwb.wait_entered(&mut dump).unwrap();
    // tcpdump says "listening on" once its capture is open.
    let mut dump_err = BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    dump_err.read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump: {line}");
    for _ in 0..5 {
        let body = cli
            .exec_ok([
                "curl",
                "-sf",
                "--max-time",
                "10",
                "http://10.10.1.1/marker.txt",
            ])
            .expect("marker page");
        assert!(body.contains(MARKER));
    }
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(dump.id() as i32, libc::SIGINT) };
    let mut stats = String::new();
    dump_err.read_to_string(&mut stats).unwrap();
    dump.wait().unwrap();
    println!("tcpdump: {}", stats.replace('\n', "; "));
    let captured = std::fs::read(&pcap).unwrap();
    assert!(
        captured.len() > 10_000,
        "the capture saw the hop ({} bytes)",
        captured.len()
    );
    assert!(
        !captured
            .windows(MARKER.len())
            .any(|w| w == MARKER.as_bytes()),
        "the marker crossed the gateway link in plaintext"
    );
    let mut restarted = None;
    if let Some(mut b) = b_kernel {
        // SAFETY: as above.
        unsafe { libc::kill(b.id() as i32, libc::SIGTERM) };
        assert!(b.wait().unwrap().success());
        restarted = Some(start_one(&state, "gwb", backend));
    }

    // Repeat connections to B resumed their TLS sessions (hops of their own, or the shared
    // connections of the multiplexed hop).
    assert!(
        metric(&gwa, "xdpmesh_proxy_tls_resumed_total", "")
            + metric(&gwa, "xdpmesh_hop_tls_resumed_total", "")
            > 0,
        "gw-a resumed TLS sessions to gw-b"
    );

    // Over 30 s of load: a table reload at 8 s and a certificate rotation at 18 s, with no
    // failed request and no dropped connection; each changes behaviour. HTTP/2 clients
    // (h2load: 2 connections × 8 streams) run alongside the HTTP/1.1 ones.
    let h2 = H2Load::start(&cli, 30);
    let load = Load::start(&cli, 8);
    let (n0, v2_0) = load.measure(Duration::from_secs(8));
    put_tables(&gwa, &gwa_tables(50), &state, "gwa-tables.toml");
    let (n1, v2_1) = load.measure(Duration::from_secs(10));
    println!("load: before reload {n0} requests ({v2_0} v2), after {n1} ({v2_1} v2)");
    assert!(n0 > 100 && n1 > 100, "the load ran");
    let share = |v: u64, n: u64| v as f64 / n as f64;
    assert!(share(v2_0, n0) < 0.2, "10 % v2 before the reload");
    assert!(share(v2_1, n1) > 0.35, "about 50 % v2 after the reload");
    let expiry_before = metric(&gwa, "xdpmesh_identity_expiry_seconds", "sa/client");
    xdpmesh(&[
        "ca",
        "issue",
        "--ca",
        &state.join("ca").display().to_string(),
        "--id",
        "spiffe://rig.mesh/sa/client",
        "--validity",
        "48h",
        "--force",
        "--out",
        &state.join("ids/sa/client").display().to_string(),
    ]);
    let rotated = wait_for(Duration::from_secs(10), || {
        let e = metric(&gwa, "xdpmesh_identity_expiry_seconds", "sa/client");
        (e > expiry_before + 20 * 3600).then_some(e)
    });
    assert!(
        rotated.is_some(),
        "gw-a took up the new certificate (48 h instead of 24 h)"
    );
    let (n2, _) = load.measure(Duration::from_secs(12));
    assert!(n2 > 100, "load went on after the rotation");
    load.finish();
    h2.finish();

    rig(&["stop"], &state);
    if let Some(mut b) = restarted {
        // rig.sh stop signalled it through the pid file; reap it here.
        assert!(
            b.wait().unwrap().success(),
            "gw-b drained and exited cleanly"
        );
    }
    for ip in ["10.10.1.3/24", "10.10.1.4/24"] {
        let _ = cli.exec(["ip", "addr", "del", ip, "dev", "cli-gwa"]);
    }
    drop(servers);
}

/// The multiplexed hop (issue #19): 32 concurrent HTTP/1.1 clients (wrk) through the pair
/// cross it as streams, every request, and the load opens at most 2 hop connections per
/// worker of gw-a and peer (one per service of the 90/10 split: a hop binds a service and a
/// client identity), where a hop per request in flight would take up to 32. Counted on both
/// gateways, and with the kernel backend by the sockets themselves (`ss` in gw-a's
/// namespace, while the load runs).
fn hop_pooling(cli: &NetNs, gwa: &NetNs, gwb: &NetNs, backend: &str) {
    let workers = metrics_text(gwa)
        .lines()
        .filter(|l| l.starts_with("xdpmesh_proxy_accepted_total{worker="))
        .count()
        .max(1) as u64;
    let opened = metric(gwa, "xdpmesh_hop_connections_total", "");
    let streams = metric(gwa, "xdpmesh_hop_streams_total", "");
    let accepted = metric(gwb, "xdpmesh_hop_connections_accepted_total", "");
    let wrk = cli
        .command("wrk")
        .args(["-t1", "-c32", "-d4s", "http://10.10.1.1/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk");
    // While it runs (streams moving): the hop connections open, by gw-a's gauge and its
    // sockets.
    let moving = wait_for(Duration::from_secs(3), || {
        (metric(gwa, "xdpmesh_hop_streams_total", "") > streams + 500).then_some(())
    });
    assert!(moving.is_some(), "wrk's requests became hop streams");
    let open_now = metric(gwa, "xdpmesh_hop_connections_open", "");
    let sockets = (backend == "kernel").then(|| {
        let ss = gwa
            .exec_ok([
                "ss",
                "-Htn",
                "state",
                "established",
                "dst",
                "10.10.2.2:15443",
            ])
            .expect("ss");
        ss.lines().filter(|l| !l.trim().is_empty()).count() as u64
    });
    let out = wrk.wait_with_output().expect("wrk");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("hop pooling ({backend}, {workers} workers): {report}");
    assert!(out.status.success(), "wrk: {report}");
    let requests: u64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no total: {report}"));
    assert!(requests > 1000, "the load ran: {report}");
    assert!(
        !report.contains("Non-2xx") && !report.contains("Socket errors"),
        "every request answered 2xx: {report}"
    );
    let streams = metric(gwa, "xdpmesh_hop_streams_total", "") - streams;
    let opened = metric(gwa, "xdpmesh_hop_connections_total", "") - opened;
    let accepted = metric(gwb, "xdpmesh_hop_connections_accepted_total", "") - accepted;
    println!(
        "hop pooling: {requests} requests, {streams} hop streams, {opened} hop connections opened \
         ({accepted} accepted by gw-b), {open_now} open during the load, sockets {sockets:?}"
    );
    assert!(
        streams >= requests,
        "every request crossed as a stream ({streams} streams, {requests} requests)"
    );
    let most = 2 * workers;
    assert!(
        opened <= most,
        "{opened} hop connections opened (at most {most})"
    );
    assert!(
        accepted <= most,
        "gw-b accepted {accepted} hop connections (at most {most})"
    );
    // Open during the load: the ones it used, and those `min_idle` keeps warm for gw-b's
    // other services (one per service and client identity); far from one per client.
    assert!(
        (1..=8).contains(&open_now),
        "{open_now} hop connections open during the load (1 to 8)"
    );
    if let Some(n) = sockets {
        assert_eq!(
            n, open_now,
            "every TCP connection from gw-a to gw-b's mesh port is a multiplexed hop"
        );
    }
}

fn rig_stop_one(state: &Path, name: &str) {
    let pid: i32 = std::fs::read_to_string(state.join(format!("{name}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let gone = wait_for(Duration::from_secs(15), || {
        // SAFETY: signal 0 only checks for existence.
        (unsafe { libc::kill(pid, 0) } != 0).then_some(())
    });
    assert!(gone.is_some(), "{name} did not stop");
}

fn start_one(state: &Path, name: &str, backend: &str) -> Child {
    let ns = NetNs::existing(if name == "gwa" { "xm-gwa" } else { "xm-gwb" }).unwrap();
    let log = std::fs::File::create(state.join(format!("{name}.log"))).unwrap();
    let child = ns
        .command(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["run", "--backend", backend, "--config"])
        .arg(state.join(format!("{name}-node.toml")))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(state.join(format!("{name}.pid")), child.id().to_string()).unwrap();
    let ready = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(state.join(format!("{name}.log")))
            .ok()
            .filter(|l| l.contains(" ready"))
    });
    assert!(ready.is_some(), "{name} restarted");
    child
}

/// The rig this test brought up, and everything running in it: `rig.sh down` on drop, panics
/// included, stops every process left in the rig's namespaces (gateways, nginx, tcpdump; TERM,
/// then KILL) and removes the namespaces. A failed assertion must not leave a gateway spinning
/// on a core or holding port 9901 for the next test.
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

#[test]
fn the_mesh_on_the_rig_with_both_backends() {
    if skip_unless_root("the_mesh_on_the_rig_with_both_backends") {
        return;
    }
    let work = std::env::temp_dir().join(format!("xdpmesh-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let _rig = RigGuard::up(&work);
    for backend in ["kernel", "afxdp"] {
        run_backend(backend, &work);
    }
}
