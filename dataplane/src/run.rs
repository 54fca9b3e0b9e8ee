//! `xdpmesh run` (a module of the binary): load the node file and its tables, start the
//! control plane, the certificate watch and the workers, wait for SIGTERM/SIGINT, drain.

use super::{Backend, LogFormat, RunArgs, FAILED, OK};
use control::schema::Protocol;
use dataplane::accesslog::{AccessLog, AccessLogStats};
use dataplane::certwatch::CertWatch;
use dataplane::gateway::{self, Gateway, GatewayConfig, ProxySetup};
use dataplane::logging::{self, LogControl, Logging};
use dataplane::proxy::identity::MeshIdentity;
use dataplane::proxy::kernel::KernelWorker;
use dataplane::shutdown::Shutdown;
use dataplane::worker::Builtin;
use mesh::engine::{MeshTls, NoMeshTls};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// The data plane's counters and the certificates' expiry on the admin API's /metrics.
#[derive(Default)]
struct Metrics {
    gateway: OnceLock<gateway::Metrics>,
    certs: OnceLock<Arc<CertWatch>>,
    kernel: OnceLock<Arc<Mutex<mesh::engine::ProxyStats>>>,
    kernel_policy: OnceLock<Arc<mesh::policy::PolicyStats>>,
    kernel_inspect: OnceLock<Arc<dataplane::inspect::Inspect>>,
    /// The tables in force (`GET /config_dump`).
    publisher: OnceLock<Arc<control::Publisher>>,
    /// Endpoint health, shared by the workers (`GET /endpoints`).
    health: Arc<mesh::health::HealthBoard>,
    /// Requests, latency and bytes per route, service, endpoint and identity.
    golden: Arc<mesh::golden::Golden>,
    /// `GET/PUT /logging`, `xdpmesh_log_lines_dropped_total`.
    logging: OnceLock<LogControl>,
    access_log: OnceLock<AccessLogStats>,
    traces: OnceLock<Arc<dataplane::traces::TraceStats>>,
    /// `GET /tap`: the workers' requests while someone taps.
    tap: Arc<dataplane::tap_hub::TapHub>,
}

impl Metrics {
    /// `GET /endpoints`: the health board, with every IPv4 endpoint the tables name.
    fn endpoints_json(&self) -> String {
        let Some(p) = self.publisher.get() else {
            return self.health.json();
        };
        let snap = p.load();
        self.health.json_with(snap.services.iter().flat_map(|s| {
            s.endpoints.iter().filter_map(|e| match e.address {
                std::net::SocketAddr::V4(a) => Some((s.name.clone(), a)),
                std::net::SocketAddr::V6(_) => None,
            })
        }))
    }
}

impl control::admin::AdminExtension for Metrics {
    fn stream(
        &self,
        req: &control::admin::Request<'_>,
    ) -> Option<Result<control::admin::Streaming, control::admin::Response>> {
        use control::admin::Response;
        if req.path != "/tap" {
            return None;
        }
        if req.method != "GET" {
            return Some(Err(Response {
                status: 405,
                content_type: "text/plain; charset=utf-8",
                headers: vec![("allow".into(), "GET".into())],
                body: b"method not allowed\n".to_vec(),
            }));
        }
        let sub = dataplane::tap_hub::Query::parse(req.query).and_then(|q| self.tap.subscribe(q));
        Some(match sub {
            Ok(s) => Ok(control::admin::Streaming {
                content_type: "application/x-ndjson",
                body: Box::new(s),
            }),
            Err(e) => Err(Response::text(e.status(), format!("tap: {e}\n"))),
        })
    }

    fn handle(&self, req: &control::admin::Request<'_>) -> Option<control::admin::Response> {
        use control::admin::Response;
        tracing::debug!(method = req.method, path = req.path, "admin request");
        if let Some(r) = self.logging.get().and_then(|l| l.admin(req)) {
            return Some(r);
        }
        match (req.path, req.method) {
            ("/endpoints", "GET") => Some(Response {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body: self.endpoints_json().into_bytes(),
            }),
            ("/connections", "GET") => {
                let mut workers = self
                    .gateway
                    .get()
                    .map(|g| g.connections())
                    .unwrap_or_default();
                if let Some(k) = self.kernel_inspect.get() {
                    workers.push(("kernel".into(), k.ask(Duration::from_millis(500))));
                }
                Some(Response {
                    status: 200,
                    content_type: "application/json",
                    headers: Vec::new(),
                    body: dataplane::inspect::json(&workers).into_bytes(),
                })
            }
            ("/config_dump", "GET") => {
                let snap = self.publisher.get()?.load();
                let certs = self.certs.get().map(|c| {
                    dataplane::config_dump::dataplane_certs::MeshCertsView::of(&c.current())
                });
                let topology = match self.gateway.get() {
                    Some(g) => g.topology(),
                    None => serde_json::json!({ "backend": "kernel" }),
                };
                let body = dataplane::config_dump::json(
                    &snap,
                    certs.as_ref(),
                    &self.endpoints_json(),
                    topology,
                    SystemTime::now(),
                );
                Some(Response {
                    status: 200,
                    content_type: "application/json",
                    headers: Vec::new(),
                    body: body.into_bytes(),
                })
            }
            (path, "GET") if dataplane::dashboard::is_dashboard_path(path) => {
                let a = dataplane::dashboard::asset(path)?;
                Some(Response {
                    status: 200,
                    content_type: a.content_type,
                    headers: dataplane::dashboard::headers(),
                    body: a.body.as_bytes().to_vec(),
                })
            }
            (path, _) if dataplane::dashboard::is_dashboard_path(path) => Some(Response {
                status: 405,
                content_type: "text/plain; charset=utf-8",
                headers: vec![("allow".into(), "GET".into())],
                body: b"method not allowed\n".to_vec(),
            }),
            ("/endpoints" | "/connections" | "/config_dump", _) => Some(Response {
                status: 405,
                content_type: "text/plain; charset=utf-8",
                headers: vec![("allow".into(), "GET".into())],
                body: b"method not allowed\n".to_vec(),
            }),
            _ => None,
        }
    }

    fn metrics(&self, out: &mut String) {
        gateway::render_process(out);
        self.golden.render(out);
        gateway::render_endpoint_health(&self.health, out);
        if let Some(m) = self.gateway.get() {
            m.render(out);
        }
        if let Some(k) = self.kernel.get() {
            let stats = *k.lock().unwrap_or_else(|e| e.into_inner());
            gateway::render_proxy_stats(&[("kernel".to_string(), stats)], out);
        }
        if let Some(p) = self.kernel_policy.get() {
            gateway::render_policy_stats(p, out);
        }
        if let Some(c) = self.certs.get() {
            c.expiry_metrics(SystemTime::now(), out);
        }
        if let Some(l) = self.logging.get() {
            l.render_metrics(out);
        }
        if let Some(a) = self.access_log.get() {
            a.render_metrics(out);
        }
        if let Some(t) = self.traces.get() {
            t.render(out);
        }
        dataplane::proxy::h2_stats().render(out);
        dataplane::proxy::h2_upstream_stats().render(out);
    }
}

/// The tables' listeners, split into built-in kinds and proxy listeners.
struct Listeners {
    builtins: Vec<(SocketAddrV4, Builtin)>,
    proxy: Vec<SocketAddrV4>,
}

fn listeners(snap: &control::Snapshot, only: Option<&[String]>) -> Result<Listeners, Vec<String>> {
    let mut l = Listeners {
        builtins: Vec::new(),
        proxy: Vec::new(),
    };
    let mut problems = Vec::new();
    // `[node] listeners`: nodes sharing one set of tables (etcd) each serve their own.
    if let Some(only) = only {
        for name in only {
            if !snap.listeners.iter().any(|li| li.name == *name) {
                problems.push(format!(
                    "[node] listeners names `{name}`, which the tables do not have"
                ));
            }
        }
    }
    let served = snap
        .listeners
        .iter()
        .filter(|li| only.is_none_or(|o| o.contains(&li.name)));
    for li in served {
        let SocketAddr::V4(addr) = li.bind else {
            problems.push(format!(
                "listener `{}` ({}): IPv6 is not supported by the data plane",
                li.name, li.bind
            ));
            continue;
        };
        match li.protocol {
            Protocol::Echo => l.builtins.push((addr, Builtin::Echo)),
            Protocol::Sink => l.builtins.push((addr, Builtin::Sink)),
            Protocol::HttpOk => l.builtins.push((addr, Builtin::HttpOk)),
            Protocol::Tcp | Protocol::Http | Protocol::Mesh | Protocol::IngressTls => {
                l.proxy.push(addr)
            }
        }
    }
    if problems.is_empty() {
        Ok(l)
    } else {
        Err(problems)
    }
}

pub(crate) fn run(a: &RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let fail = |err: &mut dyn Write, msg: &dyn std::fmt::Display| {
        let _ = writeln!(err, "{msg}");
        FAILED
    };
    // Registered first: a signal during start-up is then handled, not fatal.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => return fail(err, &format!("cannot handle signals: {e}")),
    };
    let format = match a.log_format {
        LogFormat::Human => logging::Format::Human,
        LogFormat::Json => logging::Format::Json,
    };
    // Kept to the end of `run`: dropping it flushes the queued lines.
    let logs = match Logging::init(format, a.log_level.as_deref()) {
        Ok(l) => l,
        Err(e) => return fail(err, &e),
    };
    let node = match control::node::load(&a.config) {
        Ok(n) => n,
        Err(d) => return fail(err, &d),
    };
    // Started before the workers, whose sinks it hands out; dropped after them (its drop
    // writes what they queued).
    let access_log = match node.access_log.as_ref().map(AccessLog::start).transpose() {
        Ok(l) => l,
        Err(e) => return fail(err, &e),
    };
    // Spans: the exporter thread starts before the workers and drains after them.
    let trace_cfg = node.traces.as_ref().map(trace_config);
    let traces = match trace_cfg
        .as_ref()
        .map(|c| {
            dataplane::traces::TraceExporter::start(
                c,
                mesh::otlp::Resource {
                    gateway: node.name.clone(),
                },
            )
        })
        .transpose()
    {
        Ok(t) => t,
        Err(e) => return fail(err, &format!("{}: [traces]: {e}", a.config.display())),
    };
    let hw = hw_config::check(
        &node,
        if a.backend == Backend::Afxdp {
            hw_config::SystemChecks::Required
        } else {
            hw_config::SystemChecks::Off
        },
    );
    for note in &hw.notes {
        tracing::warn!("{note}");
    }
    if !hw.errors.is_empty() {
        return fail(err, &control::Diagnostics(hw.errors));
    }
    if a.backend == Backend::Afxdp && hw.interfaces.is_empty() {
        return fail(
            err,
            &format!(
                "{}: no [[interface]]: the gateway would have nothing to serve (or use --backend kernel)",
                a.config.display()
            ),
        );
    }
    let ext = Arc::new(Metrics::default());
    let _ = ext.logging.set(logs.control.clone());
    if let Some(l) = &access_log {
        let _ = ext.access_log.set(l.stats());
    }
    if let Some(t) = &traces {
        let _ = ext.traces.set(t.stats().clone());
    }
    let plane = match control::ControlPlane::start(&node, Some(ext.clone())) {
        Ok(p) => p,
        Err(e) => return fail(err, &e),
    };
    let _ = ext.publisher.set(plane.publisher.clone());
    let snap = plane.publisher.load();
    let listeners = match listeners(&snap, node.listeners.as_deref()) {
        Ok(l) => l,
        Err(problems) => {
            for p in problems {
                let _ = writeln!(err, "{}: {p}", node.tables.display());
            }
            return FAILED;
        }
    };
    // Certificates: watched and reloaded for new connections while running. Tables without
    // [trust] have no mesh traffic (validation requires it for mesh listeners and peers).
    let mut watcher = None;
    let stop_watch = Arc::new(AtomicBool::new(false));
    let tls: Arc<dyn MeshTls> = if snap.trust_roots.is_empty() {
        Arc::new(NoMeshTls)
    } else {
        let certs = match CertWatch::new(snap.trust_roots.clone(), &snap.identities) {
            Ok(c) => Arc::new(c),
            Err(e) => return fail(err, &format!("{}: mesh trust: {e}", node.tables.display())),
        };
        let _ = ext.certs.set(certs.clone());
        for w in certs.warnings(SystemTime::now()) {
            tracing::warn!("{w}");
        }
        watcher = Some(spawn_cert_watch(
            certs.clone(),
            plane.publisher.clone(),
            stop_watch.clone(),
        ));
        Arc::new(MeshIdentity::new(certs))
    };

    let cx = Ctx {
        a,
        node: &node,
        plane: &plane,
        tls,
        ext: &ext,
        access_log: match (
            access_log.as_ref().and_then(AccessLog::sink),
            traces.as_ref().map(dataplane::traces::TraceExporter::sink),
        ) {
            (Some(log), Some(t)) => Some(log.with_traces(t)),
            (Some(log), None) => Some(log),
            (None, Some(t)) => Some(dataplane::accesslog::Sink::traces_only(t)),
            (None, None) => None,
        },
        trace_sampling: trace_cfg.as_ref().map_or(1.0, |c| c.sampling),
        signals: &mut signals,
        out,
        err,
    };
    let code = match a.backend {
        Backend::Afxdp => run_afxdp(cx, hw.interfaces, listeners),
        Backend::Kernel => run_kernel(cx, listeners),
    };
    stop_watch.store(true, Ordering::SeqCst);
    if let Some(w) = watcher {
        w.thread().unpark();
        let _ = w.join();
    }
    drop(plane);
    drop(access_log);
    if let Some(t) = traces {
        t.shutdown();
    }
    let _ = writeln!(out, "xdpmesh: stopped");
    drop(logs);
    code
}

/// The exporter's settings: the node file's `[traces]`, the rest defaults.
fn trace_config(t: &control::node::TracesConfig) -> dataplane::traces::TraceConfig {
    let d = dataplane::traces::TraceConfig::default();
    dataplane::traces::TraceConfig {
        endpoint: t.endpoint.clone().unwrap_or(d.endpoint),
        sampling: t.sampling.unwrap_or(d.sampling),
        queue: t.queue.map_or(d.queue, |q| q as usize),
        batch: t.batch.map_or(d.batch, |b| b as usize),
        flush_interval: t.flush_interval.unwrap_or(d.flush_interval),
        timeout: t.timeout.unwrap_or(d.timeout),
        retries: t.retries.unwrap_or(d.retries),
        backoff: d.backoff,
    }
}

/// Once a second: reload changed certificate and trust files; take up the identities of
/// new tables.
fn spawn_cert_watch(
    certs: Arc<CertWatch>,
    publisher: Arc<control::Publisher>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut generation = publisher.load().generation;
        let mut warned = SystemTime::UNIX_EPOCH;
        while !stop.load(Ordering::SeqCst) {
            let snap = publisher.load();
            if snap.generation != generation {
                generation = snap.generation;
                certs.set_identities(&snap.identities);
            }
            let report = certs.poll();
            for id in &report.reloaded {
                tracing::info!(identity = %id, "certificates reloaded");
            }
            for e in &report.errors {
                tracing::warn!("certificate reload refused (old ones stay): {e}");
            }
            let now = SystemTime::now();
            if now.duration_since(warned).unwrap_or_default() > Duration::from_secs(3600) {
                for w in certs.warnings(now) {
                    tracing::warn!("{w}");
                }
                warned = now;
            }
            // A plain sleep is the period of a poll here, not a synchronization.
            std::thread::park_timeout(Duration::from_secs(1));
        }
    })
}

fn say_ready(out: &mut dyn Write, node: &control::node::NodeConfig, what: &str, admin: SocketAddr) {
    let _ = writeln!(
        out,
        "xdpmesh: node {} ready: {what}; admin http://{admin}",
        node.name
    );
    let _ = out.flush();
}

/// Waits for SIGTERM or SIGINT; returns its name.
fn wait_signal(signals: &mut signal_hook::iterator::Signals) -> &'static str {
    match signals.forever().next() {
        Some(SIGINT) => "SIGINT",
        _ => "SIGTERM",
    }
}

/// Said once no worker accepts any more: a client that reads it and connects is refused.
fn say_draining(out: &mut dyn Write, sig: &str, drain: Duration) {
    let _ = writeln!(
        out,
        "xdpmesh: {sig}: new connections refused; draining for up to {}",
        humantime::format_duration(drain)
    );
    let _ = out.flush();
}

/// What either backend needs from `run`, besides its listeners.
struct Ctx<'r> {
    a: &'r RunArgs,
    node: &'r control::node::NodeConfig,
    plane: &'r control::ControlPlane,
    tls: Arc<dyn MeshTls>,
    ext: &'r Metrics,
    /// The workers' end of the access log, when there is one.
    /// The engine's events' consumers (access log, trace exporter), when any.
    access_log: Option<dataplane::accesslog::Sink>,
    /// `[traces] sampling`: the share of new traces sampled.
    trace_sampling: f64,
    signals: &'r mut signal_hook::iterator::Signals,
    out: &'r mut dyn Write,
    err: &'r mut dyn Write,
}

fn run_afxdp(cx: Ctx<'_>, interfaces: Vec<hw_config::Interface>, listeners: Listeners) -> u8 {
    let Ctx {
        a,
        node,
        plane,
        tls,
        ext,
        access_log,
        trace_sampling,
        signals,
        out,
        err,
    } = cx;
    let n_listeners = listeners.builtins.len() + listeners.proxy.len();
    let mut cfg = GatewayConfig::new(interfaces, listeners.builtins);
    if !listeners.proxy.is_empty() {
        cfg.proxy = Some(ProxySetup {
            publisher: plane.publisher.clone(),
            tls,
            listeners: listeners.proxy,
            admission: mesh::admission::Admission::new(),
            policy_stats: Default::default(),
            golden: ext.golden.clone(),
            workers: 1,
            health: ext.health.clone(),
            worker_index: 0,
            access_log,
            trace_sampling,
            tap: Some(ext.tap.clone()),
        });
    }
    cfg.on_worker_failure = Some(Arc::new(|w, e| {
        tracing::error!(
            "worker for {}: failed: {e}; stopping the gateway",
            w.describe()
        );
        let _ = signal_hook::low_level::raise(SIGTERM);
    }));
    let orphans = gateway::orphan_listeners(&cfg);
    if !orphans.is_empty() {
        for o in orphans {
            let _ = writeln!(
                err,
                "{}: a listener binds {o}, an address no [[interface]] of {} has",
                node.tables.display(),
                a.config.display()
            );
        }
        return FAILED;
    }
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let gw = match Gateway::start(&cfg) {
        Ok(g) => g,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return FAILED;
        }
    };
    let _ = ext.gateway.set(gw.metrics_source());
    let workers: Vec<String> = gw
        .workers()
        .map(|w| format!("core {} ({})", w.core, w.describe()))
        .collect();
    say_ready(
        out,
        node,
        &format!(
            "{n_listeners} listeners on AF_XDP; workers: {}",
            workers.join(", ")
        ),
        plane.admin.local_addr(),
    );
    let sig = wait_signal(signals);
    ext.tap.close();
    gw.stop_accepting(a.drain_timeout);
    say_draining(out, sig, a.drain_timeout);
    let mut code = OK;
    for (w, r) in gw.shutdown(a.drain_timeout) {
        match r {
            Ok(d) => {
                let _ = writeln!(
                    out,
                    "xdpmesh: worker on core {}: {} connections finished, {} reset",
                    w.core, d.finished, d.reset
                );
            }
            Err(e) => {
                let _ = writeln!(err, "worker on core {}: failed: {e}", w.core);
                code = FAILED;
            }
        }
    }
    code
}

fn run_kernel(cx: Ctx<'_>, listeners: Listeners) -> u8 {
    let Ctx {
        a,
        node,
        plane,
        tls,
        ext,
        access_log,
        trace_sampling,
        signals,
        out,
        err,
    } = cx;
    if !listeners.builtins.is_empty() {
        let _ = writeln!(
            err,
            "{}: built-in listeners (echo, sink, http-ok) need --backend afxdp",
            node.tables.display()
        );
        return FAILED;
    }
    let mut worker =
        match KernelWorker::with_listeners(plane.publisher.clone(), tls, Some(&listeners.proxy)) {
            Ok(w) => w,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return FAILED;
            }
        };
    // One thread: it runs the health checks too.
    worker.engine.set_health(ext.health.clone(), 0, true);
    worker.engine.count_golden(&ext.golden);
    worker.engine.set_trace_sampling(trace_sampling);
    if let Some(sink) = access_log {
        worker.set_access_log(sink);
    }
    worker.set_tap(ext.tap.clone());
    let stats = Arc::new(Mutex::new(worker.engine.stats));
    let _ = ext.kernel.set(stats.clone());
    let _ = ext.kernel_policy.set(worker.engine.policy_stats().clone());
    let _ = ext.kernel_inspect.set(worker.inspect.clone());
    let shutdown = Arc::new(Shutdown::default());
    let thread = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new().name("xm-kernel".into()).spawn(
            move || -> std::io::Result<usize> {
                let mut arrival = shutdown.arrival();
                if let Err(e) = worker.run_publishing(shutdown.flag(), &stats) {
                    tracing::error!("kernel worker failed: {e}; stopping the gateway");
                    let _ = signal_hook::low_level::raise(SIGTERM);
                    return Err(e);
                }
                worker.stop_accepting();
                arrival.refusing();
                worker.drain(shutdown.deadline())
            },
        )
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return FAILED;
        }
    };
    say_ready(
        out,
        node,
        &format!("{} listeners on kernel sockets", listeners.proxy.len()),
        plane.admin.local_addr(),
    );
    let sig = wait_signal(signals);
    ext.tap.close();
    shutdown.begin(a.drain_timeout, 1);
    say_draining(out, sig, a.drain_timeout);
    match thread.join() {
        Ok(Ok(left)) => {
            let _ = writeln!(
                out,
                "xdpmesh: kernel worker: {left} connections reset at the deadline"
            );
            OK
        }
        Ok(Err(e)) => {
            let _ = writeln!(err, "kernel worker failed: {e}");
            FAILED
        }
        Err(_) => {
            let _ = writeln!(err, "kernel worker panicked");
            FAILED
        }
    }
}
