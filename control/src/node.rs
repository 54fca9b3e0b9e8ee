//! The node file: what this machine is and where its tables are.
//!
//! ```toml
//! [node]
//! name = "gw-a"
//! tables = "tables.toml"           # relative to this file; watched for changes
//! admin = "127.0.0.1:9901"         # default; a non-loopback address needs admin_token_file
//! admin_token_file = "admin.token" # bearer token for write endpoints; optional on loopback
//!
//! [access_log]                     # optional; off without this table
//! path = "/var/log/xdpmesh/access.log"  # or "stdout"; relative to this file; reopened on SIGHUP
//! sample = 1.0                     # share of lines written, 0.0 to 1.0 (default 1.0)
//!
//! [traces]                         # optional; off without this table (OTLP/HTTP JSON)
//! endpoint = "http://127.0.0.1:4318/v1/traces"  # default; a collector on the node
//! sampling = 1.0                   # share of new traces sampled (default 1.0)
//! queue = 2048                     # spans waiting at most; more are dropped, counted
//! batch = 512                      # spans per post at most
//! flush_interval = "5s"            # a span waits at most this long for its batch
//! timeout = "10s"                  # connect, write and read of one post, each
//! retries = 3                      # further tries of a failed post
//!
//! [etcd]                           # optional; the tables come from etcd (issue #20)
//! endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]  # required, tried in turn
//! prefix = "/xdpmesh"              # default; the tables are PREFIX/tables
//! ca = "etcd/ca.pem"               # required with https endpoints
//! cert = "etcd/client.pem"         # client certificate and key, both or neither
//! key = "etcd/client-key.pem"
//! credentials_file = "etcd/user"   # optional; one line `user:password`
//!
//! [[interface]]                    # hw-config's; handed on undecoded (see NodeConfig::interfaces)
//! name = "eth1"
//! ```
//!
//! `control` owns `[node]` only. `[[interface]]` entries belong to hw-config: they
//! are accepted here as opaque spanned trees ([`tree::Node`]) and handed on in
//! [`NodeConfig::interfaces`], to be decoded with [`crate::de::decode`] (which gives
//! their errors positions in the same file). Any other top-level key is an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::de::{self, Sp};
use crate::diag::{Diagnostic, Diagnostics};
use crate::source::Source;
use crate::tree::{self, Value};

/// Default admin address: loopback only.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    node: Sp<NodeSection>,
    #[serde(default)]
    access_log: Option<Sp<AccessLogSection>>,
    #[serde(default)]
    traces: Option<Sp<TracesSection>>,
    #[serde(default)]
    etcd: Option<Sp<EtcdSection>>,
    /// Checked by hw-config, not here.
    #[serde(default)]
    #[allow(dead_code)]
    interface: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    name: Sp<String>,
    tables: Sp<String>,
    #[serde(default)]
    admin: Option<Sp<String>>,
    #[serde(default)]
    admin_token_file: Option<Sp<String>>,
    #[serde(default)]
    listeners: Option<Vec<Sp<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdSection {
    endpoints: Vec<Sp<String>>,
    #[serde(default)]
    prefix: Option<Sp<String>>,
    #[serde(default)]
    ca: Option<Sp<String>>,
    #[serde(default)]
    cert: Option<Sp<String>>,
    #[serde(default)]
    key: Option<Sp<String>>,
    #[serde(default)]
    credentials_file: Option<Sp<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessLogSection {
    path: Sp<String>,
    #[serde(default)]
    sample: Option<Sp<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TracesSection {
    #[serde(default)]
    endpoint: Option<Sp<String>>,
    #[serde(default)]
    sampling: Option<Sp<f64>>,
    #[serde(default)]
    queue: Option<Sp<u32>>,
    #[serde(default)]
    batch: Option<Sp<u32>>,
    #[serde(default)]
    flush_interval: Option<Sp<String>>,
    #[serde(default)]
    timeout: Option<Sp<String>>,
    #[serde(default)]
    retries: Option<Sp<u32>>,
}

/// `[traces]`: request spans exported with OTLP/HTTP. A key left out takes the exporter's
/// default (`dataplane::traces::TraceConfig`, the OpenTelemetry SDKs' defaults: endpoint
/// `http://127.0.0.1:4318/v1/traces`, sampling 1.0, queue 2,048, batch 512, flush 5 s,
/// timeout 10 s, 3 retries).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TracesConfig {
    pub endpoint: Option<String>,
    pub sampling: Option<f64>,
    pub queue: Option<u32>,
    pub batch: Option<u32>,
    pub flush_interval: Option<std::time::Duration>,
    pub timeout: Option<std::time::Duration>,
    pub retries: Option<u32>,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLogTarget {
    Stdout,
    /// Resolved against the node file's directory.
    File(PathBuf),
}

/// `[access_log]`: one JSON line per HTTP request and per connection.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub target: AccessLogTarget,
    /// The share of lines written, 0.0 to 1.0 (default [`DEFAULT_ACCESS_LOG_SAMPLE`]).
    pub sample: f64,
}

/// `[access_log] sample` when absent: every line.
pub const DEFAULT_ACCESS_LOG_SAMPLE: f64 = 1.0;

/// A checked node file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub source: Source,
    pub path: PathBuf,
    pub name: String,
    /// Resolved against the node file's directory.
    pub tables: PathBuf,
    pub admin: SocketAddr,
    /// The bearer token write endpoints require; required when `admin` is not loopback.
    pub admin_token: Option<String>,
    /// The `[[interface]]` entries, undecoded, for hw-config.
    pub interfaces: Vec<tree::Node>,
    /// `[access_log]`; `None`: off (the default).
    pub access_log: Option<AccessLogConfig>,
    /// `[traces]`; `None`: off (the default).
    pub traces: Option<TracesConfig>,
    /// `[etcd]`: the tables come from etcd, and `tables` is the local cache of the
    /// last ones applied. `None`: from the `tables` file (the default).
    pub etcd: Option<crate::etcd::EtcdConfig>,
    /// `[node] listeners`: serve only the tables' listeners of these names (nodes
    /// sharing one set of tables); `None`: all of them.
    pub listeners: Option<Vec<String>>,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Read and check a node file (not the tables it names: see [`crate::check::check_node`]).
pub fn load(path: &Path) -> Result<NodeConfig, Diagnostics> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::whole_file(
            &name,
            format!("cannot read node file: {e}"),
        )])
    })?;
    parse(
        Source::new(name, text),
        path.parent().unwrap_or(Path::new(".")),
    )
}

/// Check node-file text; `base_dir` resolves relative paths in it.
pub fn parse(src: Source, base_dir: &Path) -> Result<NodeConfig, Diagnostics> {
    let root = tree::parse(&src).map_err(|d| Diagnostics(vec![d]))?;
    let file: NodeFile = de::decode(&src, &root, "").map_err(Diagnostics)?;
    let mut errors = Vec::new();
    let n = &file.node;

    let admin = match &n.admin {
        None => DEFAULT_ADMIN.parse().ok(),
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(
                    Diagnostic::at(
                        &src,
                        &a.span,
                        "node.admin",
                        format!("{:?} is not an IP:PORT address", **a),
                    )
                    .hint(format!("e.g. \"{DEFAULT_ADMIN}\"")),
                );
                None
            }
        },
    };
    let admin_token = match &n.admin_token_file {
        None => None,
        Some(f) => {
            let p = resolve(base_dir, f);
            match std::fs::read_to_string(&p) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                Ok(_) => {
                    errors.push(
                        Diagnostic::at(
                            &src,
                            &f.span,
                            "node.admin_token_file",
                            format!("token file {:?} is empty", p),
                        )
                        .hint(
                            "put a long random token in it, e.g. head -c 32 /dev/urandom | base64",
                        ),
                    );
                    None
                }
                Err(e) => {
                    errors.push(
                        Diagnostic::at(
                            &src,
                            &f.span,
                            "node.admin_token_file",
                            format!("cannot read token file {:?}: {e}", p),
                        )
                        .hint("check the path and permissions"),
                    );
                    None
                }
            }
        }
    };
    if let Some(a) = admin {
        if !a.ip().is_loopback() && n.admin_token_file.is_none() {
            let span = n.admin.as_ref().map_or(n.span.clone(), |a| a.span.clone());
            errors.push(
                Diagnostic::at(
                    &src,
                    &span,
                    "node.admin",
                    format!("admin API on non-loopback {a} needs a bearer token"),
                )
                .hint("add admin_token_file = \"PATH\", or bind 127.0.0.1"),
            );
        }
    }
    if n.name.is_empty() {
        errors.push(Diagnostic::at(
            &src,
            &n.name.span,
            "node.name",
            "name is empty",
        ));
    }
    if n.tables.is_empty() {
        errors.push(
            Diagnostic::at(&src, &n.tables.span, "node.tables", "tables path is empty")
                .hint("e.g. tables = \"tables.toml\""),
        );
    }
    let access_log = file.access_log.as_ref().and_then(|a| {
        let sample = a.sample.as_ref().map_or(DEFAULT_ACCESS_LOG_SAMPLE, |s| **s);
        let mut ok = true;
        if let Some(s) = a.sample.as_ref().filter(|s| !(0.0..=1.0).contains(&***s)) {
            ok = false;
            errors.push(
                Diagnostic::at(
                    &src,
                    &s.span,
                    "access_log.sample",
                    format!("{} is not a ratio from 0.0 to 1.0", **s),
                )
                .hint("e.g. sample = 0.1 writes one line in ten"),
            );
        }
        let target = match a.path.trim() {
            "" => {
                ok = false;
                errors.push(
                    Diagnostic::at(&src, &a.path.span, "access_log.path", "path is empty")
                        .hint("a file, e.g. \"/var/log/xdpmesh/access.log\", or \"stdout\""),
                );
                AccessLogTarget::Stdout
            }
            "stdout" => AccessLogTarget::Stdout,
            p => AccessLogTarget::File(resolve(base_dir, p)),
        };
        ok.then_some(AccessLogConfig { target, sample })
    });
    let traces = file.traces.as_ref().and_then(|t| {
        let mut ok = true;
        if let Some(s) = t.sampling.as_ref().filter(|s| !(0.0..=1.0).contains(&***s)) {
            ok = false;
            errors.push(
                Diagnostic::at(
                    &src,
                    &s.span,
                    "traces.sampling",
                    format!("{} is not a ratio from 0.0 to 1.0", **s),
                )
                .hint("e.g. sampling = 0.01 samples one new trace in a hundred"),
            );
        }
        for (key, v) in [("traces.queue", &t.queue), ("traces.batch", &t.batch)] {
            if let Some(v) = v.as_ref().filter(|v| ***v == 0) {
                ok = false;
                errors.push(Diagnostic::at(&src, &v.span, key, "must be at least 1"));
            }
        }
        if let (Some(q), Some(b)) = (&t.queue, &t.batch) {
            if **b > **q {
                ok = false;
                errors.push(Diagnostic::at(
                    &src,
                    &b.span,
                    "traces.batch",
                    format!("a batch of {} is larger than the queue ({})", **b, **q),
                ));
            }
        }
        let mut duration = |key: &'static str, v: &Option<Sp<String>>| {
            let v = v.as_ref()?;
            match humantime::parse_duration(v.trim()) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    ok = false;
                    errors.push(
                        Diagnostic::at(&src, &v.span, key, format!("{:?} is not a duration above zero", v.value))
                            .hint("e.g. \"5s\" or \"500ms\""),
                    );
                    None
                }
            }
        };
        let flush_interval = duration("traces.flush_interval", &t.flush_interval);
        let timeout = duration("traces.timeout", &t.timeout);
        if let Some(e) = t.endpoint.as_ref().filter(|e| !e.trim().starts_with("http://")) {
            ok = false;
            errors.push(
                Diagnostic::at(&src, &e.span, "traces.endpoint", "not an http:// URL")
                    .hint("OTLP/HTTP without TLS to a collector on the node, e.g. \"http://127.0.0.1:4318/v1/traces\""),
            );
        }
        ok.then(|| TracesConfig {
            endpoint: t.endpoint.as_ref().map(|e| e.trim().to_string()),
            sampling: t.sampling.as_ref().map(|s| **s),
            queue: t.queue.as_ref().map(|v| **v),
            batch: t.batch.as_ref().map(|v| **v),
            flush_interval,
            timeout,
            retries: t.retries.as_ref().map(|v| **v),
        })
    });
    let etcd = file.etcd.as_ref().and_then(|e| {
        let mut ok = true;
        if e.endpoints.is_empty() {
            ok = false;
            errors.push(
                Diagnostic::at(&src, &e.span, "etcd.endpoints", "no endpoints")
                    .hint("e.g. endpoints = [\"https://10.0.0.1:2379\"]"),
            );
        }
        for ep in &e.endpoints {
            let rest = ep
                .strip_prefix("http://")
                .or_else(|| ep.strip_prefix("https://"));
            let good = rest.is_some_and(|r| {
                r.trim_end_matches('/')
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            });
            if !good {
                ok = false;
                errors.push(
                    Diagnostic::at(
                        &src,
                        &ep.span,
                        "etcd.endpoints",
                        format!(
                            "{:?} is not http://HOST:PORT or https://HOST:PORT",
                            ep.value
                        ),
                    )
                    .hint("etcd's client URL, e.g. \"https://10.0.0.1:2379\""),
                );
            }
        }
        if let Some(p) = &e.prefix {
            if p.trim().trim_matches('/').is_empty() {
                ok = false;
                errors.push(
                    Diagnostic::at(&src, &p.span, "etcd.prefix", "prefix is empty")
                        .hint(format!("default {:?}", crate::etcd::DEFAULT_PREFIX)),
                );
            }
        }
        let https = e.endpoints.iter().any(|ep| ep.starts_with("https://"));
        if https && e.ca.is_none() {
            ok = false;
            errors.push(
                Diagnostic::at(
                    &src,
                    &e.span,
                    "etcd.ca",
                    "https endpoints need the CA of etcd's server certificate",
                )
                .hint("ca = \"etcd/ca.pem\""),
            );
        }
        if e.cert.is_some() != e.key.is_some() {
            ok = false;
            let span = e
                .cert
                .as_ref()
                .or(e.key.as_ref())
                .map_or(e.span.clone(), |s| s.span.clone());
            errors.push(
                Diagnostic::at(
                    &src,
                    &span,
                    "etcd.cert",
                    "give both cert and key, or neither",
                )
                .hint("the client certificate etcd's --client-cert-auth checks, and its key"),
            );
        }
        let mut file = |key: &'static str, v: &Option<Sp<String>>| {
            let v = v.as_ref()?;
            let p = resolve(base_dir, v);
            if let Err(err) = std::fs::metadata(&p) {
                ok = false;
                errors.push(Diagnostic::at(
                    &src,
                    &v.span,
                    key,
                    format!("cannot read {:?}: {err}", p),
                ));
            }
            Some(p)
        };
        let ca = file("etcd.ca", &e.ca);
        let cert = file("etcd.cert", &e.cert);
        let key = file("etcd.key", &e.key);
        let credentials_file = file("etcd.credentials_file", &e.credentials_file);
        ok.then(|| crate::etcd::EtcdConfig {
            endpoints: e.endpoints.iter().map(|s| s.trim().to_string()).collect(),
            prefix: crate::etcd::normalize_prefix(
                e.prefix
                    .as_ref()
                    .map_or(crate::etcd::DEFAULT_PREFIX, |p| p.as_str()),
            ),
            ca,
            cert,
            key,
            credentials_file,
        })
    });
    if let Some(ls) = &n.listeners {
        for l in ls.iter().filter(|l| l.trim().is_empty()) {
            errors.push(Diagnostic::at(
                &src,
                &l.span,
                "node.listeners",
                "empty listener name",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    let interfaces = match root.get("interface").map(|e| &e.node.value) {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    Ok(NodeConfig {
        path: PathBuf::from(&src.name),
        name: n.name.value.clone(),
        tables: resolve(base_dir, &n.tables),
        admin: admin.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
        admin_token,
        interfaces,
        access_log,
        traces,
        etcd,
        listeners: n
            .listeners
            .as_ref()
            .map(|ls| ls.iter().map(|l| l.value.clone()).collect()),
        source: src,
    })
}
