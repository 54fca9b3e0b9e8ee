//! HTTP/2 servers behind the gateway (issue #19, upstream side): a gateway on kernel sockets
//! (loopback, no root) with services whose endpoints speak HTTP/1.1 (nginx) or h2c with prior
//! knowledge (`nghttpd --no-tls`, Debian `nghttp2-server`; and a python3 `h2` server, Debian
//! `python3-h2`, for trailers, a gRPC trailers-only response and a stream reset), and real
//! clients: curl over HTTP/1.1 and `--http2-prior-knowledge`, nghttp.
//!
//! - all four combinations (HTTP/1.1 | h2c client) × (HTTP/1.1 | h2c server): a 3 MiB file
//!   byte-exact;
//! - an h2 server's trailers reach an h2c client (as HTTP/2 trailers) and an HTTP/1.1 client
//!   (as a chunked trailer section); a trailers-only response comes out with
//!   `content-length: 0` and `grpc-status` as a header; a chunked upload with trailers goes
//!   up as DATA and trailers;
//! - a stream the server resets gives the client a 502, and the next request is served;
//! - `xdpmesh_h2_upstream_*` move;
//! - a gateway that drains (SIGTERM) ends its h2c connections with GOAWAY (RFC 9113 §6.8).
//!
//! Every process a test starts is owned by a guard that kills it on drop (and so on panic).

use dataplane::netns::wait_for;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);
const BIG: usize = 3 << 20;

/// A process the test started: killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory the test made: removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic body bytes.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 % 251) as u8).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tool(name: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name} is missing (Debian {package}; scripts/lib/deps.sh installs it)");
    }
    found
}

fn python_h2() -> bool {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", "import h2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("python3's h2 is missing (Debian python3-h2; scripts/lib/deps.sh installs it)");
    }
    found
}

fn listening(addr: SocketAddr) -> bool {
    wait_for(DEADLINE, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    })
    .is_some()
}

fn spawn(cmd: &mut Command, addr: SocketAddr, what: &str) -> Proc {
    let p = Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}")),
    );
    assert!(listening(addr), "{what} does not listen on {addr}");
    p
}

/// nginx serving `root` over HTTP/1.1, in the foreground, everything of its own under `dir`.
fn nginx(dir: &Path, root: &Path, addr: SocketAddr) -> Proc {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\n\
             events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/cb;\n \
             proxy_temp_path {d}/px;\n fastcgi_temp_path {d}/fc;\n uwsgi_temp_path {d}/uw;\n \
             scgi_temp_path {d}/sc;\n server {{\n  listen {addr};\n  root {};\n }}\n}}\n",
            root.display()
        ),
    )
    .unwrap();
    spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir),
        addr,
        "nginx",
    )
}

struct Setup {
    web: SocketAddr,
    admin: SocketAddr,
    // Dropped in order: the gateway first, then the servers, then the directory.
    procs: Vec<Proc>,
    dir: TempDir,
}

fn start() -> Option<Setup> {
    if !tool("nginx", "nginx-light")
        || !tool("nghttpd", "nghttp2-server")
        || !tool("nghttp", "nghttp2-client")
        || !python_h2()
    {
        eprintln!("skipped: nginx, nghttp2-server, nghttp2-client or python3-h2 is missing");
        return None;
    }
    // One directory per setup: the tests of this file run in parallel in one process.
    static SETUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SETUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xdpmesh-h2up-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_guard = TempDir(dir.clone());
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("big.bin"), pattern(BIG)).unwrap();
    std::fs::write(root.join("small.txt"), b"small\n").unwrap();

    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let (h1, h2s, py) = (at(free_port()), at(free_port()), at(free_port()));
    let mut procs = Vec::new();
    procs.push(nginx(&dir, &root, h1));
    procs.push(spawn(
        Command::new("nghttpd")
            .args(["--no-tls", "-a", "127.0.0.1", "-d"])
            .arg(&root)
            .arg(h2s.port().to_string()),
        h2s,
        "nghttpd",
    ));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2_upstream/server.py");
    procs.push(spawn(
        Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(py.port().to_string())
            .arg(dir.join("py-events.txt")),
        py,
        "the python3 h2 server",
    ));

    let web = at(free_port());
    let admin = at(free_port());
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!("[node]\nname = \"h2up\"\ntables = \"tables.toml\"\nadmin = \"{admin}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tables.toml"),
        format!(
            "[[listener]]\nname = \"web\"\nbind = \"{web}\"\nprotocol = \"http\"\n\n\
             [[service]]\nname = \"h1\"\nhosts = [\"h1.test\"]\nendpoints = [{{ address = \"{h1}\" }}]\n\n\
             [[service]]\nname = \"h2s\"\nhosts = [\"h2.test\"]\nupstream_protocol = \"h2c\"\nendpoints = [{{ address = \"{h2s}\" }}]\n\n\
             [[service]]\nname = \"py\"\nhosts = [\"py.test\"]\nupstream_protocol = \"h2c\"\nendpoints = [{{ address = \"{py}\" }}]\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
        .args(["run", "--backend", "kernel", "--config"])
        .arg(&node)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn xdpmesh run");
    let lines = Arc::new(Mutex::new(Vec::new()));
    {
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
    }
    // The gateway goes first on drop: it is the last one pushed... so put it first.
    procs.insert(0, Proc(child));
    let ready = wait_for(DEADLINE, || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(" ready"))
            .then_some(())
    });
    assert!(ready.is_some(), "not ready: {:?}", lines.lock().unwrap());
    Some(Setup {
        web,
        admin,
        procs,
        dir: dir_guard,
    })
}

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut c = TcpStream::connect_timeout(&admin, DEADLINE).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        c,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} on /metrics"))
}

/// curl through the gateway to `host` (resolved to it): HTTP/1.1, or h2c with `h2`.
fn curl(s: &Setup, h2: bool, host: &str, path: &str, extra: &[&str]) -> std::process::Output {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "20", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", s.web.port()));
    if h2 {
        c.arg("--http2-prior-knowledge");
    } else {
        c.arg("--http1.1");
    }
    c.args(extra)
        .arg(format!("http://{host}:{}{path}", s.web.port()))
        .output()
        .expect("curl")
}

/// One raw HTTP/1.1 exchange on a new connection (`connection: close`): the whole response.
fn raw(s: &Setup, request: &str) -> String {
    let mut c = TcpStream::connect_timeout(&s.web, DEADLINE).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn http1_and_h2c_clients_against_http1_and_h2c_servers() {
    let Some(s) = start() else {
        return;
    };
    let conns_before = metric(s.admin, "xdpmesh_h2_upstream_connections_total");
    let streams_before = metric(s.admin, "xdpmesh_h2_upstream_streams_total");
    let big = pattern(BIG);
    // The four combinations, a 3 MiB file byte-exact each.
    for host in ["h1.test", "h2.test"] {
        for h2 in [false, true] {
            let out = curl(
                &s,
                h2,
                host,
                "/big.bin",
                &["-w", "%{http_code} %{http_version}"],
            );
            let want = if h2 { "200 2" } else { "200 1.1" };
            let (body, tail) = out
                .stdout
                .split_at(out.stdout.len().saturating_sub(want.len()));
            assert_eq!(
                String::from_utf8_lossy(tail),
                want,
                "{host}, h2 client: {h2}: {:?}",
                out.status
            );
            assert!(
                body == &big[..],
                "{host}, h2 client: {h2}: {} bytes, not the file",
                body.len()
            );
        }
    }
    // The h2c server's side was h2: streams on shared connections.
    let streams = metric(s.admin, "xdpmesh_h2_upstream_streams_total");
    assert!(streams >= streams_before + 2, "{streams}");
    let conns = metric(s.admin, "xdpmesh_h2_upstream_connections_total");
    assert!(conns > conns_before, "{conns}");

    // An h2 server's trailers: to an h2c client as HTTP/2 trailers...
    let out = Command::new("nghttp")
        .args(["-v", "-H", ":authority: py.test"])
        .arg(format!("http://127.0.0.1:{}/trailers", s.web.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello world"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("recv (stream_id=") && l.ends_with(") x-checksum: 42")),
        "no trailer:\n{text}"
    );
    // ... and to an HTTP/1.1 client as a chunked trailer section.
    let text = raw(
        &s,
        "GET /trailers HTTP/1.1\r\nhost: py.test\r\nte: trailers\r\nconnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(
        text.ends_with("b\r\nhello world\r\n0\r\nx-checksum: 42\r\n\r\n"),
        "{text:?}"
    );

    // gRPC's trailers-only response: an empty body, grpc-status a header.
    let text = raw(
        &s,
        "POST /grpc HTTP/1.1\r\nhost: py.test\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    );
    let lower = text.to_ascii_lowercase();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(lower.contains("\r\ngrpc-status: 14\r\n"), "{text}");
    assert!(lower.contains("\r\ncontent-length: 0\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");

    // A chunked upload with a trailer goes up as DATA and trailers, with the authority; a
    // gRPC request says `te: trailers` (the engine drops `TE` as hop-by-hop, the back adds it
    // back for gRPC).
    let text = raw(
        &s,
        "POST /echo HTTP/1.1\r\nhost: py.test\r\ncontent-type: application/grpc+proto\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
    );
    let lower = text.to_ascii_lowercase();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(lower.contains("\r\nx-got-sum: 11\r\n"), "{text}");
    assert!(lower.contains("\r\nx-got-te: trailers\r\n"), "{text}");
    assert!(lower.contains("\r\nx-got-authority: py.test\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello world"), "{text:?}");

    // A stream the server resets: 502 for the client, and the next request is served, over
    // HTTP/1.1 and h2c.
    let resets_before = metric(s.admin, "xdpmesh_h2_upstream_streams_reset_total");
    for h2 in [false, true] {
        let out = curl(
            &s,
            h2,
            "py.test",
            "/reset",
            &["-w", "%{http_code}", "-o", "/dev/null"],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "502",
            "h2 client: {h2}"
        );
        let out = curl(&s, h2, "py.test", "/", &["-w", " %{http_code}"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ok 200",
            "h2 client: {h2}"
        );
    }
    let resets = metric(s.admin, "xdpmesh_h2_upstream_streams_reset_total");
    assert!(resets >= resets_before + 2, "{resets}");
    assert!(metric(s.admin, "xdpmesh_h2_upstream_connections_open") >= 1);
}

#[test]
fn a_draining_gateway_ends_its_h2c_connections_with_goaway() {
    let Some(mut s) = start() else {
        return;
    };
    let out = curl(&s, false, "py.test", "/", &["-w", " %{http_code}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok 200");
    assert!(metric(s.admin, "xdpmesh_h2_upstream_connections_open") >= 1);
    let events = s.dir.0.join("py-events.txt");
    assert!(!events.exists(), "a GOAWAY before the drain");
    let gw = &mut s.procs[0].0;
    let status = Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_for(DEADLINE, || gw.try_wait().ok().flatten());
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    // The server saw GOAWAY(NO_ERROR), last stream 0 (a client serves no streams), before
    // the connection closed; its own read of the close comes after.
    let seen = wait_for(DEADLINE, || {
        std::fs::read_to_string(&events)
            .ok()
            .filter(|t| !t.is_empty())
    });
    assert_eq!(seen.as_deref(), Some("goaway 0 0\n"));
}
