//! `xdpmesh check --admin ADDR`: a running gateway checked through its admin API, like
//! `linkerd check`. One finding per line with a hint; any error makes the exit code non-zero.
//!
//! What it looks at: the gateway answers and is ready; the tables' generation and the last
//! reload's error; each identity's and trust root's expiry (a warning under 20 % of the
//! lifetime left, an error once expired); every peer gateway, with an mTLS handshake made
//! here with the gateway's own identity that proves the peer's SPIFFE ID; every endpoint's
//! health; each served interface's RX queues against the queues the gateway serves (a frame
//! hashed onto an unserved queue is dropped) and its XDP mode. Run it where the gateway runs
//! (`ip netns exec NS xdpmesh check --admin 127.0.0.1:9901`): the peers, the key files and
//! `/sys/class/net` are read from here.

use crate::certwatch::CertWatch;
use control::snapshot::IdentityRt;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub hint: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Self {
        Finding {
            level: Level::Ok,
            what: what.into(),
            hint: None,
        }
    }
    fn warn(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Finding {
            level: Level::Warn,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }
    fn error(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Finding {
            level: Level::Error,
            what: what.into(),
            hint: Some(hint.into()),
        }
    }

    /// `√ what`, `‼ what (hint)`, `× what (hint)`.
    pub fn line(&self) -> String {
        let mark = match self.level {
            Level::Ok => "ok   ",
            Level::Warn => "warn ",
            Level::Error => "ERROR",
        };
        match &self.hint {
            Some(h) => format!("{mark} {}\n      hint: {h}", self.what),
            None => format!("{mark} {}", self.what),
        }
    }
}

pub struct Options {
    pub admin: String,
    /// The admin API's bearer token, when reads need one (a non-loopback bind).
    pub token: Option<String>,
    /// Per request and per peer handshake.
    pub timeout: Duration,
    /// Where interfaces' queues are listed (`/sys/class/net`; tests give their own).
    pub sys_class_net: PathBuf,
    /// A peer's admin API checked from another gateway's host (`--all`): its peers'
    /// handshakes and its interfaces belong to its own host, so they are not checked here.
    pub remote: bool,
}

impl Options {
    pub fn new(admin: impl Into<String>) -> Self {
        Options {
            admin: admin.into(),
            token: None,
            timeout: Duration::from_secs(3),
            sys_class_net: PathBuf::from("/sys/class/net"),
            remote: false,
        }
    }
}

/// The admin API's answers are bounded: a gateway that sends more is not a gateway.
const MAX_BODY: u64 = 16 << 20;

/// A GET on the admin API: (status, body).
fn get(o: &Options, path: &str) -> Result<(u16, String), String> {
    let addr = o
        .admin
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", o.admin))?
        .next()
        .ok_or_else(|| format!("{}: no address", o.admin))?;
    // Off loopback, the admin API may be another gateway's, reached through this host's NIC.
    let mut s = if addr.ip().is_loopback() {
        TcpStream::connect_timeout(&addr, o.timeout)
    } else {
        control::kernelconn::connect_below_gateway_ports(addr, o.timeout)
    }
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(o.timeout))
        .and_then(|_| s.set_write_timeout(Some(o.timeout)))
        .map_err(|e| e.to_string())?;
    let auth = o
        .token
        .as_ref()
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n{auth}\r\n",
        o.admin
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(MAX_BODY)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no response head".to_string())?;
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {:.40}", head))?;
    Ok((status, body.to_string()))
}

/// Every check, in order. The first finding says whether the gateway answered at all.
pub fn check(o: &Options) -> Vec<Finding> {
    check_dump(o).0
}

/// `check --all`: the gateway at `o.admin`, then every peer its tables give an `admin`
/// address (with the same token and timeout), each under its own heading. A peer without one
/// is proven by the handshake of the first check only, and says so.
pub fn check_all(o: &Options) -> Vec<(String, Vec<Finding>)> {
    let (local, dump) = check_dump(o);
    let mut out = vec![(format!("gateway at {}", o.admin), local)];
    let Some(dump) = dump else { return out };
    let mut without = Vec::new();
    for p in dump["peers"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("?");
        let Some(admin) = p["admin"].as_str() else {
            without.push(name.to_owned());
            continue;
        };
        let peer = Options {
            admin: admin.to_owned(),
            token: o.token.clone(),
            timeout: o.timeout,
            sys_class_net: o.sys_class_net.clone(),
            remote: true,
        };
        let mut found = check(&peer);
        if !found.iter().any(|f| f.level == Level::Error) {
            found.push(Finding::ok(
                "its peers and interfaces are checked where it runs, not from here",
            ));
        }
        out.push((format!("peer {name}, admin API at {admin}"), found));
    }
    if !without.is_empty() {
        out[0].1.push(Finding::warn(
            format!(
                "--all: no admin address in the tables for {}: proven by the mTLS handshake only",
                without.join(", ")
            ),
            "give each [[peer]] `admin = \"IP:PORT\"` (its admin API; off loopback it needs \
             admin_token_file, and --token here)",
        ));
    }
    out
}

fn check_dump(o: &Options) -> (Vec<Finding>, Option<Value>) {
    let mut out = Vec::new();
    match get(o, "/healthz") {
        Ok((200, _)) => out.push(Finding::ok(format!("the gateway answers on {}", o.admin))),
        Ok((s, b)) => {
            out.push(Finding::error(
                format!("/healthz answered {s}: {}", b.trim()),
                "the admin API is up but the gateway is not",
            ));
            return (out, None);
        }
        Err(e) => {
            out.push(Finding::error(
                format!("no answer from the admin API at {}: {e}", o.admin),
                "is `xdpmesh run` running, and is this its node file's admin address (and namespace)?",
            ));
            return (out, None);
        }
    }
    match get(o, "/readyz") {
        Ok((200, _)) => out.push(Finding::ok("ready")),
        Ok((s, b)) => out.push(Finding::error(
            format!("not ready ({s}): {}", b.trim()),
            "the tables have not loaded: see the gateway's log and GET /config/errors",
        )),
        Err(e) => out.push(Finding::error(format!("/readyz: {e}"), "retry")),
    }
    match get(o, "/config/errors") {
        Ok((200, b)) if b.trim().is_empty() => {}
        Ok((200, b)) => out.push(Finding::error(
            format!(
                "the last change of the tables was refused:\n      {}",
                b.trim().replace('\n', "\n      ")
            ),
            "fix the tables; the gateway keeps serving its last good ones",
        )),
        _ => {}
    }
    let dump = match get(o, "/config_dump") {
        Ok((200, b)) => match serde_json::from_str::<Value>(&b) {
            Ok(v) => v,
            Err(e) => {
                out.push(Finding::error(
                    format!("/config_dump: not JSON: {e}"),
                    "a bug: report it",
                ));
                return (out, None);
            }
        },
        Ok((s, _)) => {
            out.push(Finding::error(
                format!("/config_dump answered {s}"),
                "a gateway older than this check, or a token is needed (--token)",
            ));
            return (out, None);
        }
        Err(e) => {
            out.push(Finding::error(format!("/config_dump: {e}"), "retry"));
            return (out, None);
        }
    };
    out.push(Finding::ok(format!(
        "tables generation {}",
        dump["generation"].as_u64().unwrap_or(0)
    )));
    out.extend(expiry(&dump));
    if !o.remote {
        out.extend(peers(o, &dump));
    }
    out.extend(endpoints(&dump));
    if !o.remote {
        out.extend(interfaces(o, &dump));
    }
    (out, Some(dump))
}

fn expiry(dump: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let items = dump["identities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                format!("identity {}", i["id"].as_str().unwrap_or("?")),
                &i["validity"],
            )
        })
        .chain(
            dump["trust_roots"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        format!("trust root \"{}\"", r["subject"].as_str().unwrap_or("?")),
                        &r["validity"],
                    )
                }),
        );
    for (what, v) in items {
        let (Some(left), Some(share)) = (v["expires_in_s"].as_i64(), v["lifetime_left"].as_f64())
        else {
            out.push(Finding::error(
                format!("{what}: not loaded"),
                "its certificate files could not be used: see the gateway's log",
            ));
            continue;
        };
        let when = humantime::format_duration(Duration::from_secs(left.unsigned_abs()));
        if left <= 0 {
            out.push(Finding::error(
                format!("{what}: expired {when} ago"),
                "issue a new certificate (`xdpmesh ca issue`); the gateway reloads it by itself",
            ));
        } else if share < crate::config_dump::WARN_LIFETIME_LEFT {
            out.push(Finding::warn(
                format!(
                    "{what}: expires in {when} ({:.0} % of its lifetime left)",
                    share * 100.0
                ),
                "renew it before it expires (`xdpmesh ca issue --force`)",
            ));
        } else {
            out.push(Finding::ok(format!("{what}: valid for {when}")));
        }
    }
    out
}

/// An mTLS handshake with each peer, as the gateway's first identity, that proves the
/// peer's SPIFFE ID.
fn peers(o: &Options, dump: &Value) -> Vec<Finding> {
    let peers = dump["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        return Vec::new();
    }
    let Some(id) = dump["identities"].as_array().and_then(|a| a.first()) else {
        return vec![Finding::error(
            "peers are configured but the gateway has no identity",
            "add an [[identity]] to the tables",
        )];
    };
    let template = IdentityRt {
        id: id["id"].as_str().unwrap_or_default().to_string(),
        sources: Vec::new(),
        cert_path: PathBuf::from(id["cert"].as_str().unwrap_or_default()),
        key_path: PathBuf::from(id["key"].as_str().unwrap_or_default()),
        cert_chain_der: Vec::new(),
        key_der: Vec::new(),
    };
    let trust: Vec<PathBuf> = dump["trust_files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(PathBuf::from))
        .collect();
    let watch = match CertWatch::new(trust, std::slice::from_ref(&template)) {
        Ok(w) => w,
        Err(e) => {
            return vec![Finding::warn(
                format!("peers not checked: the trust roots could not be read here: {e}"),
                "run the check on the gateway's host as a user who can read its certificates",
            )]
        }
    };
    let certs = watch.current();
    let Some(identity) = certs.identity(&template.id).cloned() else {
        return vec![Finding::warn(
            format!(
                "peers not checked: {} could not be loaded here",
                template.id
            ),
            "run the check as a user who can read the identity's key",
        )];
    };
    let services = dump["services"].as_array().cloned().unwrap_or_default();
    peers
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("?");
            let expected = p["identity"].as_str().unwrap_or("");
            let addr = p["address"].as_str().unwrap_or("");
            // The SNI names a service; any service reached through this peer will do.
            let sni = services
                .iter()
                .find(|s| {
                    s["endpoints"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["via"] == name))
                })
                .and_then(|s| s["name"].as_str())
                .unwrap_or(name);
            match handshake(&identity, &certs.trust, expected, addr, sni, o.timeout) {
                Ok(()) => Finding::ok(format!("peer {name} at {addr} proves {expected}")),
                Err(e) => Finding::error(
                    format!("peer {name} at {addr}: {e}"),
                    "is the peer gateway running, reachable from here, and is its certificate \
                     for this SPIFFE ID from a root this gateway trusts?",
                ),
            }
        })
        .collect()
}

fn handshake(
    identity: &IdentityRt,
    trust: &mesh::tls::MeshTrust,
    expected: &str,
    addr: &str,
    sni: &str,
    timeout: Duration,
) -> Result<(), String> {
    let cfg = mesh::tls::client_config(identity, trust, expected).map_err(|e| e.to_string())?;
    let server = mesh::tls::sni_for_service(sni).map_err(|e| e.to_string())?;
    let mut tls =
        rustls::ClientConnection::new(Arc::clone(&cfg), server).map_err(|e| e.to_string())?;
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let mut sock = control::kernelconn::connect_below_gateway_ports(addr, timeout)
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .and_then(|_| sock.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    while tls.is_handshaking() {
        tls.complete_io(&mut sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    // Done with it: close_notify, and nothing else (no preamble, so no request).
    tls.send_close_notify();
    let _ = tls.complete_io(&mut sock);
    Ok(())
}

fn endpoints(dump: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut healthy = 0;
    for e in dump["endpoints"].as_array().into_iter().flatten() {
        let what = format!(
            "endpoint {} of {}",
            e["endpoint"].as_str().unwrap_or("?"),
            e["service"].as_str().unwrap_or("?")
        );
        if e["health"] == "unhealthy" {
            out.push(Finding::error(
                format!(
                    "{what}: unhealthy (last probe failure: {})",
                    e["last_probe_failure"].as_str().unwrap_or("none recorded")
                ),
                "the gateway sends it nothing until its health checks pass again",
            ));
        } else if e["ejected"] == true {
            out.push(Finding::warn(
                format!(
                    "{what}: ejected by outlier detection for {} ms more",
                    e["ejected_for_ms"].as_f64().unwrap_or(0.0).round()
                ),
                "it failed often lately; it returns by itself when the ejection ends",
            ));
        } else {
            healthy += 1;
        }
    }
    if healthy > 0 {
        out.push(Finding::ok(format!(
            "{healthy} endpoints healthy or unchecked"
        )));
    }
    out
}

/// RX queues of each interface the gateway serves, against the queues it serves.
fn interfaces(o: &Options, dump: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    for i in dump["dataplane"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = i["name"].as_str().unwrap_or("?");
        let served: Vec<u64> = i["queues_served"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let mode = i["xdp_mode"].as_str().unwrap_or("?");
        if mode == "generic" {
            out.push(Finding::warn(
                format!("{name}: XDP in generic mode"),
                "the driver has no native XDP: every frame takes the slow skb path",
            ));
        } else {
            out.push(Finding::ok(format!("{name}: XDP {mode}")));
        }
        match rx_queues(&o.sys_class_net, name) {
            None => out.push(Finding::warn(
                format!("{name}: not visible here"),
                "run the check in the gateway's network namespace (ip netns exec ...)",
            )),
            Some(n) => {
                let unserved: Vec<u64> = (0..n as u64).filter(|q| !served.contains(q)).collect();
                if unserved.is_empty() {
                    out.push(Finding::ok(format!("{name}: all {n} RX queues served")));
                } else {
                    out.push(Finding::error(
                        format!(
                            "{name}: {n} RX queues, queues {unserved:?} not served: frames \
                             hashed onto them are dropped (xdpmesh_steer_frames_total \
                             verdict drop_no_socket)"
                        ),
                        format!(
                            "serve every queue in the node file, or `ethtool -L {name} combined {}`",
                            served.len().max(1)
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// The interface's RX queue count, from `DIR/IF/queues/rx-N`.
fn rx_queues(dir: &Path, ifname: &str) -> Option<usize> {
    if ifname.contains('/') || ifname.starts_with('.') {
        return None;
    }
    let d = std::fs::read_dir(dir.join(ifname).join("queues")).ok()?;
    Some(
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A scripted admin API: answers each path with a fixed (status, body), until it has
    /// served `/config_dump` or 10 s passed.
    fn admin(routes: Vec<(&'static str, u16, String)>) -> (String, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let mut s = match l.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 2048];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).to_string();
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                let (status, body) = routes
                    .iter()
                    .find(|r| r.0 == path)
                    .map_or((404, String::new()), |r| (r.1, r.2.clone()));
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if path == "/config_dump" {
                    return;
                }
            }
        });
        (addr, t)
    }

    #[test]
    fn a_gateway_that_is_not_there_is_one_error_with_a_hint() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = check(&Options::new(format!("127.0.0.1:{port}")));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, Level::Error);
        assert!(f[0].hint.is_some());
    }

    #[test]
    fn expiry_unhealthy_endpoints_and_unserved_queues_are_found() {
        let sys = tempfile::tempdir().unwrap();
        for q in ["rx-0", "rx-1", "tx-0"] {
            std::fs::create_dir_all(sys.path().join("eth1/queues").join(q)).unwrap();
        }
        let dump = serde_json::json!({
            "generation": 7,
            "identities": [{"id": "spiffe://t/a", "cert": "/nonexistent", "key": "/nonexistent",
                "validity": {"expires_in_s": 3600, "lifetime_left": 0.05}}],
            "trust_roots": [{"subject": "CN=root",
                "validity": {"expires_in_s": -10, "lifetime_left": 0.0}}],
            "peers": [],
            "services": [],
            "endpoints": [
                {"service": "web", "endpoint": "10.0.0.1:80", "health": "unhealthy",
                 "last_probe_failure": "connect refused", "ejected": false},
                {"service": "web", "endpoint": "10.0.0.2:80", "health": "healthy",
                 "ejected": true, "ejected_for_ms": 1500.0},
                {"service": "web", "endpoint": "10.0.0.3:80", "health": "healthy",
                 "ejected": false}
            ],
            "dataplane": {"interfaces": [{"name": "eth1", "xdp_mode": "native",
                "queues_served": [0]}]},
        });
        let (addr, t) = admin(vec![
            ("/healthz", 200, "ok\n".into()),
            ("/readyz", 200, "ready\n".into()),
            ("/config/errors", 200, String::new()),
            ("/config_dump", 200, dump.to_string()),
        ]);
        let mut o = Options::new(addr);
        o.sys_class_net = sys.path().to_path_buf();
        let f = check(&o);
        t.join().unwrap();
        let find = |level: Level, needle: &str| {
            f.iter()
                .any(|x| x.level == level && x.what.contains(needle))
        };
        let all: Vec<String> = f.iter().map(Finding::line).collect();
        assert!(find(Level::Ok, "tables generation 7"), "{all:#?}");
        assert!(
            find(Level::Warn, "identity spiffe://t/a: expires in 1h (5 %"),
            "{all:#?}"
        );
        assert!(
            find(Level::Error, "trust root \"CN=root\": expired"),
            "{all:#?}"
        );
        assert!(
            find(Level::Error, "endpoint 10.0.0.1:80 of web: unhealthy"),
            "{all:#?}"
        );
        assert!(
            find(Level::Warn, "endpoint 10.0.0.2:80 of web: ejected"),
            "{all:#?}"
        );
        assert!(
            find(Level::Error, "eth1: 2 RX queues, queues [1] not served"),
            "{all:#?}"
        );
        assert!(find(Level::Ok, "eth1: XDP native"), "{all:#?}");
    }

    #[test]
    fn all_checks_each_peer_with_an_admin_address_under_its_own_heading() {
        let sys = tempfile::tempdir().unwrap();
        for q in ["rx-0", "rx-1"] {
            std::fs::create_dir_all(sys.path().join("eth1/queues").join(q)).unwrap();
        }
        // B: an unhealthy endpoint (found), and a peer and an interface that would be errors
        // if checked from here (they are not: they belong to B's host).
        let b_dump = serde_json::json!({
            "generation": 3,
            "peers": [{"name": "gw-a", "address": "127.0.0.1:1", "identity": "spiffe://t/a"}],
            "endpoints": [{"service": "web", "endpoint": "10.0.0.9:80", "health": "unhealthy",
                "ejected": false}],
            "dataplane": {"interfaces": [{"name": "eth1", "queues_served": [0]}]},
        });
        let ok = |dump: String| {
            vec![
                ("/healthz", 200, "ok\n".to_string()),
                ("/readyz", 200, "ready\n".to_string()),
                ("/config/errors", 200, String::new()),
                ("/config_dump", 200, dump),
            ]
        };
        let (b, tb) = admin(ok(b_dump.to_string()));
        let a_dump = serde_json::json!({
            "generation": 5,
            "peers": [
                {"name": "gw-b", "address": "127.0.0.1:1", "identity": "spiffe://t/b",
                 "admin": b},
                {"name": "gw-c", "address": "127.0.0.1:2", "identity": "spiffe://t/c",
                 "admin": null}
            ],
        });
        let (a, ta) = admin(ok(a_dump.to_string()));
        let mut o = Options::new(a.clone());
        o.sys_class_net = sys.path().to_path_buf();
        let all = check_all(&o);
        ta.join().unwrap();
        tb.join().unwrap();
        let text: Vec<(String, Vec<String>)> = all
            .iter()
            .map(|(h, f)| (h.clone(), f.iter().map(Finding::line).collect()))
            .collect();
        assert_eq!(all.len(), 2, "{text:#?}");
        assert_eq!(all[0].0, format!("gateway at {a}"));
        assert_eq!(all[1].0, format!("peer gw-b, admin API at {b}"));
        let has = |i: usize, level: Level, needle: &str| {
            all[i]
                .1
                .iter()
                .any(|f| f.level == level && f.what.contains(needle))
        };
        assert!(has(0, Level::Ok, "tables generation 5"), "{text:#?}");
        assert!(
            has(0, Level::Warn, "gw-c: proven by the mTLS handshake only"),
            "{text:#?}"
        );
        assert!(has(1, Level::Ok, "tables generation 3"), "{text:#?}");
        assert!(
            has(1, Level::Error, "10.0.0.9:80 of web: unhealthy"),
            "{text:#?}"
        );
        assert!(
            !all[1]
                .1
                .iter()
                .any(|f| f.what.contains("gw-a") || f.what.contains("eth1")),
            "B's peers and interfaces are not checked from A's host: {text:#?}"
        );
    }

    #[test]
    fn a_refused_reload_is_an_error_with_its_text() {
        let (addr, t) = admin(vec![
            ("/healthz", 200, "ok\n".into()),
            ("/readyz", 200, "ready\n".into()),
            (
                "/config/errors",
                200,
                "t.toml:3:1: route[0].service: unknown service\n".into(),
            ),
            (
                "/config_dump",
                200,
                serde_json::json!({"generation": 2}).to_string(),
            ),
        ]);
        let f = check(&Options::new(addr));
        t.join().unwrap();
        assert!(f
            .iter()
            .any(|x| x.level == Level::Error && x.what.contains("unknown service")));
    }
}
