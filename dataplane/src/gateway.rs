//! The gateway runtime: from checked interfaces and listeners to running workers.
//!
//! Per interface: one steering program (attached once, shared by the interface's sockets).
//! Then one thread per core, pinned to it, whose worker serves one queue of every interface
//! (a port each: the queue's AF_XDP socket and its own tcpstack), so a proxied connection and
//! its upstream stay on one core. The workers serving one interface share a [`FlowOwner`] and
//! hand each other the segments of flows they do not own. [`Gateway::shutdown`] drains every
//! worker with a deadline, then the sockets close and the programs detach (their BPF links
//! close with the descriptors).

use crate::shard::{FlowOwner, Rss};
use crate::shutdown::Shutdown;
use crate::worker::{Builtin, DrainReport, Shard, Worker, WorkerStats};
use crate::xdp::{self, BindMode, SteerConfig, Steering, XdpError, XdpMode, XskConfig, XskDevice};
use hw_config::{Interface, Poll, Steer};
use ipnet::Ipv4Net;
use mesh::engine::{Engine, MeshTls};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tcpstack::{Ipv4Cidr, MacAddr, Stack, StackConfig};

/// Called from a worker thread whose poll loop failed (the binary raises SIGTERM with it,
/// so the whole gateway drains and exits instead of running short a worker).
pub type OnWorkerFailure = Arc<dyn Fn(&WorkerInfo, &io::Error) + Send + Sync>;

/// What to run.
#[derive(Clone)]
pub struct GatewayConfig {
    pub interfaces: Vec<Interface>,
    /// Built-in listeners; `0.0.0.0` listens on every interface.
    pub listeners: Vec<(SocketAddrV4, Builtin)>,
    /// How long to retry a socket bind that fails with EBUSY (a restart right after a stop).
    pub busy_retry: Duration,
    /// Local ports for the connections the gateway opens (shared by all workers; each
    /// keeps the ports whose replies come back to it).
    pub ephemeral_ports: (u16, u16),
    pub on_worker_failure: Option<OnWorkerFailure>,
    /// The proxy: tables, TLS, and the addresses of its listeners (tcp, http, mesh).
    pub proxy: Option<ProxySetup>,
}

/// What the workers' proxy engines need.
#[derive(Clone)]
pub struct ProxySetup {
    pub publisher: Arc<control::Publisher>,
    pub tls: Arc<dyn MeshTls>,
    pub listeners: Vec<SocketAddrV4>,
    /// The listeners' connection caps, counted across every worker.
    pub admission: Arc<mesh::admission::Admission>,
    /// The per-route counters of request policies, shared by every worker.
    pub policy_stats: Arc<mesh::policy::PolicyStats>,
    /// The golden metrics: each worker's engine registers its shard here.
    pub golden: Arc<mesh::golden::Golden>,
    /// Workers sharing each rate limit (set by `Gateway::start`: one per core).
    pub workers: u32,
    /// Endpoint health shared by the workers; worker 0 runs the active health checks.
    pub health: Arc<mesh::health::HealthBoard>,
    /// This worker's place among them (set by `Gateway::start`).
    pub worker_index: usize,
    /// Where the workers send access log lines; `None`: no access log (no events built).
    pub access_log: Option<crate::accesslog::Sink>,
    /// The share of new traces sampled (`[traces] sampling`; 1.0 without it).
    pub trace_sampling: f64,
    /// `GET /tap`: the workers offer requests here while someone taps.
    pub tap: Option<Arc<crate::tap_hub::TapHub>>,
}

impl GatewayConfig {
    pub fn new(interfaces: Vec<Interface>, listeners: Vec<(SocketAddrV4, Builtin)>) -> Self {
        GatewayConfig {
            interfaces,
            listeners,
            busy_retry: Duration::from_secs(5),
            ephemeral_ports: (32768, 60999),
            on_worker_failure: None,
            proxy: None,
        }
    }

    /// Warnings an operator should see before the gateway starts.
    pub fn warnings(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .filter(|i| i.xdp_mode == hw_config::XdpMode::Generic)
            .map(|i| {
                format!(
                    "interface {}: generic XDP mode drops GSO super-packets; turn off GRO/GSO on it (ethtool -K {} gro off gso off) or use native mode",
                    i.name, i.name
                )
            })
            .collect()
    }
}

/// Starting the gateway failed; nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error("worker for {worker}: cannot pin it to core {core} (is the core online and allowed by the cpuset?)")]
    Pin { worker: String, core: u32 },
    #[error("interface {interface}: listen on {addr}: {source}")]
    Listen {
        interface: String,
        addr: SocketAddrV4,
        source: tcpstack::Error,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One running worker, as seen from outside.
#[derive(Clone, Debug)]
pub struct WorkerInfo {
    pub core: u32,
    /// (interface, queue) of each of its ports.
    pub ports: Vec<(String, u32)>,
    /// Updated by the worker when it sleeps and every few thousand iterations.
    pub stats: Arc<Mutex<WorkerStats>>,
    /// Where the admin API asks for the worker's connections.
    pub inspect: Arc<crate::inspect::Inspect>,
}

impl WorkerInfo {
    /// `eth1 queue 0, eth2 queue 0`.
    pub fn describe(&self) -> String {
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(i, q)| format!("{i} queue {q}"))
            .collect();
        ports.join(", ")
    }
}

struct Running {
    info: WorkerInfo,
    thread: JoinHandle<io::Result<DrainReport>>,
}

/// A running gateway.
pub struct Gateway {
    shutdown: Arc<Shutdown>,
    workers: Vec<Running>,
    steering: Vec<Arc<Steering>>,
    policy: Option<Arc<mesh::policy::PolicyStats>>,
}

fn on_iface(iface: &Interface, a: &SocketAddrV4) -> bool {
    a.ip().is_unspecified() || iface.addresses.iter().any(|n| n.addr() == *a.ip())
}

fn random_secret() -> io::Result<[u8; 16]> {
    let mut s = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `s`.
    let n = unsafe { libc::getrandom(s.as_mut_ptr().cast(), s.len(), 0) };
    if n != 16 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn nic_rx_queues(ifname: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// One interface queue, before its worker's thread opens it.
struct QueuePlan {
    interface: String,
    queue: u32,
    core: u32,
    xsk: XskConfig,
    stack_cfg: StackConfig,
    steer: Arc<Steering>,
    /// `None` on a single-queue interface: nothing to hand over.
    shard: Option<Shard>,
    spin: Duration,
    poll: Poll,
}

/// Attaches the interface's steering program and plans each of its queues.
fn plan_interface(
    iface: &Interface,
    cfg: &GatewayConfig,
    secret: [u8; 16],
) -> Result<(Arc<Steering>, Vec<QueuePlan>), GatewayError> {
    let mut owned: Vec<SocketAddrV4> = cfg
        .listeners
        .iter()
        .map(|(a, _)| *a)
        .filter(|a| on_iface(iface, a))
        .collect();
    if let Some(p) = &cfg.proxy {
        owned.extend(p.listeners.iter().filter(|a| on_iface(iface, a)));
    }
    let steer = Arc::new(Steering::attach(
        &iface.name,
        match iface.xdp_mode {
            hw_config::XdpMode::Native => XdpMode::Native,
            hw_config::XdpMode::Generic => XdpMode::Generic,
        },
        &SteerConfig {
            dedicated: iface.steer == Steer::Dedicated,
            local_addrs: iface.addresses.iter().map(|n| n.addr()).collect(),
            listeners: owned,
            ephemeral: Some(cfg.ephemeral_ports.0..=cfg.ephemeral_ports.1),
        },
        cfg.busy_retry,
    )?);
    let rss = iface.rss_key.as_ref().map(|key| Rss {
        key: key.clone(),
        nic_queues: nic_rx_queues(&iface.name),
        table_size: 128,
    });
    let owner = Arc::new(FlowOwner::new(iface.queues.clone(), rss));
    let mut shards: Vec<Option<Shard>> = if iface.queues.len() > 1 {
        Shard::all(owner.clone())?.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let mac = MacAddr(xdp::sys::ifmac(&iface.name)?);
    let mtu = match iface.mtu {
        Some(m) => m,
        None => xdp::sys::ifmtu(&iface.name)?,
    } as usize;
    let mut queues = Vec::new();
    for (i, (&queue, &core)) in iface.queues.iter().zip(&iface.cores).enumerate() {
        let mut stack_cfg = StackConfig::new(
            mac,
            iface
                .addresses
                .iter()
                .map(|n| Ipv4Cidr::new(n.addr(), n.prefix_len()))
                .collect(),
            secret,
        );
        stack_cfg.gateway = iface.next_hop;
        stack_cfg.mtu = mtu;
        stack_cfg.ephemeral_ports = cfg.ephemeral_ports;
        stack_cfg.port_filter = owner.port_filter(i);
        let mut xsk = XskConfig::new(&iface.name, queue);
        xsk.bind = match iface.bind {
            hw_config::Bind::Copy => BindMode::Copy,
            hw_config::Bind::ZeroCopy => BindMode::ZeroCopy,
        };
        xsk.busy_retry = cfg.busy_retry;
        queues.push(QueuePlan {
            interface: iface.name.clone(),
            queue,
            core,
            xsk,
            stack_cfg,
            steer: steer.clone(),
            shard: shards.get_mut(i).and_then(Option::take),
            spin: iface.spin,
            poll: iface.poll,
        });
    }
    Ok((steer, queues))
}

/// Opens a worker's planned queues in the calling thread: an AF_XDP socket and a stack per
/// port, then the built-in and proxy listeners on the ports that have their addresses.
fn open_worker(
    plans: Vec<QueuePlan>,
    builtins: &[(SocketAddrV4, Builtin)],
    proxy: Option<&ProxySetup>,
) -> Result<Worker<XskDevice>, GatewayError> {
    let mut worker: Option<Worker<XskDevice>> = None;
    let mut spin = Duration::ZERO;
    let mut names = Vec::new();
    // A worker serving several interfaces polls for answers only if each of them says so.
    let answers_only = plans.iter().all(|p| p.poll == Poll::Answers);
    for plan in plans {
        let dev = XskDevice::open(&plan.xsk, Some(plan.steer))?;
        let stack = Stack::new(plan.stack_cfg);
        spin = spin.max(plan.spin);
        names.push(plan.interface);
        match worker.as_mut() {
            None => {
                let mut w = Worker::new(dev, stack);
                if let Some(shard) = plan.shard {
                    w = w.with_shard(shard);
                }
                worker = Some(w);
            }
            Some(w) => {
                w.add_port(dev, stack, plan.shard);
            }
        }
    }
    let mut worker = worker.ok_or_else(|| io::Error::other("a worker without queues"))?;
    worker.spin = spin;
    worker.answers_only = answers_only;
    let err = |addr, source| GatewayError::Listen {
        interface: names.join(","),
        addr,
        source,
    };
    for &(addr, kind) in builtins {
        match worker.listen(addr, kind) {
            Ok(()) | Err(tcpstack::Error::AddrNotLocal) => {}
            Err(e) => return Err(err(addr, e)),
        }
    }
    if let Some(p) = proxy {
        for &addr in &p.listeners {
            match worker.listen_proxy(addr) {
                Ok(()) | Err(tcpstack::Error::AddrNotLocal) => {}
                Err(e) => return Err(err(addr, e)),
            }
        }
        let mut engine = Engine::new(
            p.publisher.clone(),
            p.tls.clone(),
            crate::proxy::random_seed(),
        )
        .with_admission(p.admission.clone())
        .with_policy_stats(p.policy_stats.clone())
        .with_golden(&p.golden)
        .with_trace_sampling(p.trace_sampling)
        .with_health(p.health.clone(), p.worker_index, p.worker_index == 0);
        engine.set_worker_share(p.workers);
        worker = worker.with_engine(engine);
        if let Some(sink) = &p.access_log {
            worker = worker.with_access_log(sink.clone());
        }
        if let Some(hub) = &p.tap {
            worker = worker.with_tap(hub.clone());
        }
    }
    Ok(worker)
}

/// One worker on queue 0 of `ifname`, with its own steering program, driven by the caller
/// (tests and benchmarks run its loop themselves). Call in the interface's namespace; the
/// program detaches when the worker is dropped.
pub fn single_queue_worker(
    ifname: &str,
    address: Ipv4Net,
    listeners: &[(SocketAddrV4, Builtin)],
) -> Result<Worker<XskDevice>, GatewayError> {
    let iface = Interface {
        name: ifname.to_string(),
        addresses: vec![address],
        next_hop: None,
        xdp_mode: hw_config::XdpMode::Native,
        bind: hw_config::Bind::Copy,
        queues: vec![0],
        cores: vec![0],
        mtu: None,
        rss_key: None,
        poll: Poll::Adaptive,
        spin: hw_config::DEFAULT_SPIN,
        steer: Steer::Owned,
    };
    let cfg = GatewayConfig::new(vec![iface.clone()], listeners.to_vec());
    let (_, plans) = plan_interface(&iface, &cfg, random_secret()?)?;
    open_worker(plans, &cfg.listeners, None)
}

impl Gateway {
    /// Attaches steering and starts one worker per core; returns once all are serving, or
    /// stops the ones started and returns the first error.
    pub fn start(cfg: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let secret = random_secret()?;
        let shutdown = Arc::new(Shutdown::default());
        let mut gw = Gateway {
            shutdown: shutdown.clone(),
            workers: Vec::new(),
            steering: Vec::new(),
            policy: cfg.proxy.as_ref().map(|p| p.policy_stats.clone()),
        };
        // Cores in order of first use; each gets the queues pinned to it.
        let mut by_core: Vec<(u32, Vec<QueuePlan>)> = Vec::new();
        for iface in &cfg.interfaces {
            let (steer, plans) = plan_interface(iface, cfg, secret)?;
            gw.steering.push(steer);
            for q in plans {
                match by_core.iter_mut().find(|(c, _)| *c == q.core) {
                    Some((_, v)) => v.push(q),
                    None => by_core.push((q.core, vec![q])),
                }
            }
        }
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), GatewayError>>();
        let mut expected = 0;
        let mut proxy = cfg.proxy.clone();
        if let Some(p) = proxy.as_mut() {
            p.workers = by_core.len().max(1) as u32;
        }
        for (index, (core, plans)) in by_core.into_iter().enumerate() {
            if let Some(p) = proxy.as_mut() {
                p.worker_index = index;
            }
            let info = WorkerInfo {
                core,
                ports: plans
                    .iter()
                    .map(|p| (p.interface.clone(), p.queue))
                    .collect(),
                stats: Arc::new(Mutex::new(WorkerStats::default())),
                inspect: Default::default(),
            };
            let job = Job {
                info: info.clone(),
                plans,
                builtins: cfg.listeners.clone(),
                proxy: proxy.clone(),
                on_failure: cfg.on_worker_failure.clone(),
            };
            let (shutdown, ready) = (shutdown.clone(), ready_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("xm-core{core}"))
                .spawn(move || job.run(&shutdown, ready))?;
            expected += 1;
            gw.workers.push(Running { info, thread });
        }
        drop(ready_tx);
        for _ in 0..expected {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    gw.shutdown(Duration::ZERO);
                    return Err(e);
                }
                Err(_) => {
                    gw.shutdown(Duration::ZERO);
                    return Err(io::Error::other("a worker thread died while starting").into());
                }
            }
        }
        Ok(gw)
    }

    pub fn workers(&self) -> impl Iterator<Item = &WorkerInfo> {
        self.workers.iter().map(|w| &w.info)
    }

    /// Every worker's latest counters.
    pub fn stats(&self) -> Vec<(WorkerInfo, WorkerStats)> {
        self.workers()
            .map(|i| {
                (
                    i.clone(),
                    *i.stats.lock().unwrap_or_else(|e| e.into_inner()),
                )
            })
            .collect()
    }

    /// A handle for the admin API's `/metrics` that outlives borrows of the gateway.
    pub fn metrics_source(&self) -> Metrics {
        Metrics {
            workers: self.workers().cloned().collect(),
            steering: self.steering.clone(),
            policy: self.policy.clone(),
        }
    }

    /// Returns once no worker accepts new connections; they then drain for up to `deadline`.
    pub fn stop_accepting(&self, deadline: Duration) {
        self.shutdown.begin(deadline, self.workers.len());
    }

    /// Stops accepting, lets connections finish until `deadline`, resets the rest; then the
    /// sockets close and the steering programs detach. Returns each worker's drain report.
    pub fn shutdown(mut self, deadline: Duration) -> Vec<(WorkerInfo, io::Result<DrainReport>)> {
        self.stop_accepting(deadline);
        let reports = std::mem::take(&mut self.workers)
            .into_iter()
            .map(|w| {
                let r = w
                    .thread
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("worker panicked")));
                (w.info, r)
            })
            .collect();
        self.steering.clear();
        reports
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.flag().store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.thread.join();
        }
    }
}

/// Prometheus text for the data plane's counters.
#[derive(Clone)]
pub struct Metrics {
    workers: Vec<WorkerInfo>,
    steering: Vec<Arc<Steering>>,
    policy: Option<Arc<mesh::policy::PolicyStats>>,
}

impl Metrics {
    /// The workers, the (interface, queue) pairs each serves, and each interface's XDP mode
    /// (`GET /config_dump`; `xdpmesh check --admin` compares them with the machine).
    pub fn topology(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "afxdp",
            "workers": self.workers.iter().map(|w| serde_json::json!({
                "worker": w.core,
                "ports": w.ports.iter().map(|(i, q)| serde_json::json!({
                    "interface": i, "queue": q,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "interfaces": self.steering.iter().map(|s| serde_json::json!({
                "name": s.ifname(),
                "xdp_mode": s.mode().to_string(),
                "queues_served": self.workers.iter()
                    .flat_map(|w| w.ports.iter())
                    .filter(|(i, _)| i == s.ifname())
                    .map(|(_, q)| *q)
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Every worker's connections (`GET /connections`), each asked in turn.
    pub fn connections(&self) -> Vec<(String, Option<Vec<mesh::engine::ConnView>>)> {
        self.workers
            .iter()
            .map(|w| {
                (
                    w.core.to_string(),
                    w.inspect.ask(std::time::Duration::from_millis(500)),
                )
            })
            .collect()
    }

    pub fn render(&self, out: &mut String) {
        type Field = (&'static str, &'static str, fn(&WorkerStats) -> u64);
        const FIELDS: [Field; 12] = [
            (
                "frames_in",
                "Frames received (including hand-offs from other workers).",
                |s| s.frames_in,
            ),
            ("frames_out", "Frames sent.", |s| s.frames_out),
            ("accepted", "Connections accepted.", |s| s.accepted),
            (
                "resets",
                "Connections reset by the peer or by a timeout.",
                |s| s.resets,
            ),
            (
                "handoff_out",
                "Frames of flows another worker owns, handed to it.",
                |s| s.handoff_out,
            ),
            (
                "handoff_in",
                "Frames handed to this worker by others.",
                |s| s.handoff_in,
            ),
            (
                "handoff_dropped",
                "Frames not handed over: the owner's queue was full.",
                |s| s.handoff_dropped,
            ),
            ("http_requests", "Requests answered by http-ok.", |s| {
                s.http_requests
            }),
            (
                "http_bad_requests",
                "Requests answered 400 by http-ok.",
                |s| s.http_bad_requests,
            ),
            ("sink_bytes", "Bytes read and dropped by sink.", |s| {
                s.sink_bytes
            }),
            (
                "sleeps",
                "Times the worker slept on its descriptors.",
                |s| s.sleeps,
            ),
            (
                "naps",
                "poll = \"answers\": times the worker slept through part of an owed answer's usual wait.",
                |s| s.naps,
            ),
        ];
        let stats: Vec<(&WorkerInfo, WorkerStats)> = self
            .workers
            .iter()
            .map(|i| (i, *i.stats.lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        for (name, help, get) in FIELDS {
            counter_family(out, &format!("xdpmesh_worker_{name}_total"), help);
            for (i, s) in &stats {
                let _ = writeln!(
                    out,
                    "xdpmesh_worker_{name}_total{{worker=\"{}\"}} {}",
                    i.core,
                    get(s)
                );
            }
        }
        let proxy: Vec<(String, mesh::engine::ProxyStats)> = stats
            .iter()
            .map(|(i, s)| (i.core.to_string(), s.proxy))
            .collect();
        render_proxy_stats(&proxy, out);
        if let Some(p) = &self.policy {
            render_policy_stats(p, out);
        }
        render_tcp_stats(&stats, out);
        counter_family(
            out,
            "xdpmesh_steer_frames_total",
            "Frames seen by the steering XDP program, by verdict.",
        );
        for st in &self.steering {
            let Ok(s) = st.stats() else { continue };
            for (verdict, v) in [
                ("pass", s.pass),
                ("redirect_tcp", s.redirect_tcp),
                ("redirect_arp", s.redirect_arp),
                ("redirect_icmp", s.redirect_icmp),
                ("redirect_dedicated", s.redirect_dedicated),
                ("drop_no_socket", s.drop_no_socket),
                ("pass_no_socket", s.pass_no_socket),
                ("pass_fragment", s.pass_fragment),
            ] {
                let _ = writeln!(
                    out,
                    "xdpmesh_steer_frames_total{{interface=\"{}\",verdict=\"{verdict}\"}} {v}",
                    st.ifname()
                );
            }
        }
    }
}

/// The HELP and TYPE lines of one counter family.
fn counter_family(out: &mut String, name: &str, help: &str) {
    family(out, name, help, "counter");
}

/// The HELP and TYPE lines of one family of `kind` (counter, gauge).
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A counter family with one series per worker and label value: `name{core="..",key=".."}`.
/// Every label is written, zeros included, so a rate has a series to start from.
fn per_worker_labeled(
    out: &mut String,
    stats: &[(&WorkerInfo, WorkerStats)],
    (name, help, key): (&str, &str, &str),
    series: impl Fn(&WorkerStats) -> Vec<(&'static str, u64)>,
) {
    counter_family(out, name, help);
    for (i, s) in stats {
        for (label, v) in series(s) {
            let _ = writeln!(out, "{name}{{worker=\"{}\",{key}=\"{label}\"}} {v}", i.core);
        }
    }
}

/// Prometheus text for the stacks' drop reasons and events and the rings' kernel counters.
fn render_tcp_stats(stats: &[(&WorkerInfo, WorkerStats)], out: &mut String) {
    use tcpstack::{Counter, DropReason};
    type Gauge = (&'static str, &'static str, fn(&WorkerStats) -> u64);
    const GAUGES: [Gauge; 2] = [
        (
            "xdpmesh_tcp_connections",
            "Connections the worker's stacks hold now (TIME-WAIT excluded).",
            |s| s.tcp_connections,
        ),
        (
            "xdpmesh_tcp_buffer_bytes",
            "Bytes the worker's connections hold in send and receive buffers now (allocated as data needs them, given back when idle).",
            |s| s.tcp_buffer_bytes,
        ),
    ];
    for (name, help, get) in GAUGES {
        family(out, name, help, "gauge");
        for (i, s) in stats {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", i.core, get(s));
        }
    }
    per_worker_labeled(
        out,
        stats,
        (
            "xdpmesh_tcp_drops_total",
            "Frames and segments the stack dropped, by reason.",
            "reason",
        ),
        |s| {
            DropReason::ALL
                .iter()
                .map(|r| (r.label(), s.tcp.drops(*r)))
                .collect()
        },
    );
    per_worker_labeled(
        out,
        stats,
        (
            "xdpmesh_tcp_events_total",
            "Stack events: segments, retransmissions, resets, ...",
            "event",
        ),
        |s| {
            Counter::ALL
                .iter()
                .map(|c| (c.label(), s.tcp.get(*c)))
                .collect()
        },
    );
    per_worker_labeled(
        out,
        stats,
        (
            "xdpmesh_ring_drops_total",
            "The kernel's AF_XDP ring counters of this worker: frames dropped (rx_dropped, rx_ring_full), times the fill ring was found empty (fill_ring_empty_events; the only sign of loss with zero-copy), invalid descriptors.",
            "reason",
        ),
        |s| s.rings.labeled().to_vec(),
    );
}

/// Prometheus text for the per-route counters of request policies (only routes where a
/// policy acted have series).
/// `xdpmesh_build_info` and the process families every Prometheus client library exports
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`,
/// `process_start_time_seconds`), read from `/proc/self` at scrape time.
pub fn render_process(out: &mut String) {
    let _ = write!(
        out,
        "# HELP xdpmesh_build_info The running build: version and git commit.\n\
         # TYPE xdpmesh_build_info gauge\n\
         xdpmesh_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION"),
        option_env!("XDPMESH_COMMIT").unwrap_or("unknown")
    );
    // SAFETY: sysconf has no preconditions.
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, so utime
    // (14), stime (15) and starttime (22) are at 11, 12 and 19 here.
    let rest: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok());
    if tck > 0 {
        if let (Some(u), Some(s)) = (field(11), field(12)) {
            let _ = write!(
                out,
                "# HELP process_cpu_seconds_total User and system CPU time of the gateway.\n\
                 # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n",
                (u + s) / tck as f64
            );
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(start), Some(boot)) = (field(19), boot) {
            let _ = write!(
                out,
                "# HELP process_start_time_seconds When the gateway started (Unix time).\n\
                 # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}\n",
                boot + start / tck as f64
            );
        }
    }
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()));
    if let (Some(pages), true) = (rss, page > 0) {
        let _ = write!(
            out,
            "# HELP process_resident_memory_bytes Resident memory of the gateway.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            pages * page as u64
        );
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        let _ = write!(
            out,
            "# HELP process_open_fds Open file descriptors of the gateway.\n\
             # TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            d.count()
        );
    }
}

pub fn render_policy_stats(stats: &mesh::policy::PolicyStats, out: &mut String) {
    use mesh::policy::Decision;
    let all = stats.snapshot();
    /// A decision's label (key and value), when it belongs to the family.
    type Pick = fn(&Decision) -> Option<(&'static str, &'static str)>;
    let families: [(&str, &str, Pick); 9] = [
        (
            "xdpmesh_route_attempts_total",
            "Upstream attempts of the requests of a route with a request policy (the first of each request, and every retry).",
            |d| match d {
                Decision::Attempt => Some(("", "")),
                _ => None,
            },
        ),
        (
            "xdpmesh_route_retries_total",
            "Requests tried again by a route's retries, by reason (connect_failure, reset, timeout, status).",
            |d| match d {
                Decision::Retry(r) => Some(("reason", r)),
                _ => None,
            },
        ),
        (
            "xdpmesh_route_retries_skipped_total",
            "Retries a route's retries wanted but did not make, by why (method, buffer, budget).",
            |d| match d {
                Decision::RetrySkipped(r) => Some(("reason", r)),
                _ => None,
            },
        ),
        (
            "xdpmesh_route_faults_total",
            "Faults injected by a route's fault, by kind (abort, delay).",
            |d| match d {
                Decision::Fault(f) => Some(("fault", f)),
                _ => None,
            },
        ),
        (
            "xdpmesh_route_rate_limited_total",
            "Requests a route's rate limit answered 429.",
            |d| match d {
                Decision::RateLimited => Some(("", "")),
                _ => None,
            },
        ),
        (
            "xdpmesh_route_mirrored_total",
            "Copies of requests a route's mirror sent to its mirror service.",
            |d| match d {
                Decision::Mirrored => Some(("", "")),
                _ => None,
            },
        ),
        (
            "xdpmesh_route_mirrors_skipped_total",
            "Copies a route's mirror wanted but did not send, by why (body: over 64 KiB, upgrade, overflow: 1,024 in flight on the worker, no_endpoint).",
            |d| match d {
                Decision::MirrorSkipped(r) => Some(("reason", r)),
                _ => None,
            },
        ),
        (
            "xdpmesh_service_overflow_total",
            "Requests a service's circuit breaker answered 503 at once, by the cap that tripped (max_connections, max_pending, max_requests).",
            |d| match d {
                Decision::Overflow(l) => Some(("limit", l)),
                _ => None,
            },
        ),
        (
            "xdpmesh_route_mirror_failures_total",
            "Copies that got no whole response from the mirror service (connect failure, reset, bad response, the route's request timeout).",
            |d| match d {
                Decision::MirrorFailed => Some(("", "")),
                _ => None,
            },
        ),
    ];
    for (name, help, pick) in families {
        counter_family(out, name, help);
        for (route, d, n) in &all {
            let Some((key, value)) = pick(d) else {
                continue;
            };
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            // Overflows are counted under the service's name.
            let whose = if matches!(d, Decision::Overflow(_)) {
                "service"
            } else {
                "route"
            };
            if key.is_empty() {
                let _ = writeln!(out, "{name}{{{whose}=\"{route}\"}} {n}");
            } else {
                let _ = writeln!(out, "{name}{{{whose}=\"{route}\",{key}=\"{value}\"}} {n}");
            }
        }
    }
}

/// Prometheus text for endpoint health: per endpoint, whether it is healthy (the health
/// checks' verdict, or a peer gateway's), ejected by outlier detection (on any worker) and its
/// requests in flight; per service, ejections by reason and returns.
pub fn render_endpoint_health(board: &mesh::health::HealthBoard, out: &mut String) {
    let rows = board.merged();
    let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    type Gauge = fn(&mesh::health::EndpointReport, Option<&mesh::health::CheckReport>) -> u64;
    let gauges: [(&str, &str, Gauge); 3] = [
        (
            "xdpmesh_endpoint_healthy",
            "1 unless the health checks (or a peer gateway) find the endpoint unhealthy.",
            |m, c| u64::from(!(m.unhealthy || c.is_some_and(|c| c.health == "unhealthy"))),
        ),
        (
            "xdpmesh_endpoint_ejected",
            "1 while outlier detection has the endpoint ejected on any worker.",
            |m, _| u64::from(m.ejected_for.is_some()),
        ),
        (
            "xdpmesh_endpoint_outstanding",
            "Requests in flight to the endpoint, all workers.",
            |m, _| u64::from(m.outstanding),
        ),
    ];
    for (name, help, get) in gauges {
        family(out, name, help, "gauge");
        for (m, c) in &rows {
            let Some(ep) = m.endpoint else { continue };
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\",endpoint=\"{ep}\"}} {}",
                esc(&m.service),
                get(m, c.as_ref())
            );
        }
    }
    let mut per_service: std::collections::BTreeMap<&str, (u64, u64, u64)> = Default::default();
    for (m, _) in &rows {
        let e = per_service.entry(&m.service).or_default();
        e.0 += m.ejections_consecutive;
        e.1 += m.ejections_success_rate;
        e.2 += m.returns;
    }
    counter_family(
        out,
        "xdpmesh_service_ejections_total",
        "Endpoints ejected by outlier detection, by rule (consecutive failures, success rate), all workers.",
    );
    for (svc, (c, r, _)) in &per_service {
        let svc = esc(svc);
        let _ = writeln!(
            out,
            "xdpmesh_service_ejections_total{{service=\"{svc}\",reason=\"consecutive\"}} {c}"
        );
        let _ = writeln!(
            out,
            "xdpmesh_service_ejections_total{{service=\"{svc}\",reason=\"success_rate\"}} {r}"
        );
    }
    counter_family(
        out,
        "xdpmesh_service_returns_total",
        "Ejected endpoints back in service (time up, or healthy again), all workers.",
    );
    for (svc, (_, _, n)) in &per_service {
        let _ = writeln!(
            out,
            "xdpmesh_service_returns_total{{service=\"{}\"}} {n}",
            esc(svc)
        );
    }
}

/// Prometheus text for proxy engines' counters, one label value (`worker`) per engine.
pub fn render_proxy_stats(engines: &[(String, mesh::engine::ProxyStats)], out: &mut String) {
    use mesh::engine::{Expiry, Outcome, PoolClose, ProxyStats, Refusal};
    type Field = (&'static str, &'static str, fn(&ProxyStats) -> u64);
    const FIELDS: [Field; 9] = [
        (
            "accepted",
            "Connections accepted by proxy listeners.",
            |s| s.accepted,
        ),
        ("requests", "HTTP requests routed.", |s| s.requests),
        ("upstream_connects", "Upstream connections opened.", |s| {
            s.upstream_connects
        }),
        (
            "upstream_reused",
            "HTTP requests sent on an upstream connection that carried one before (the session's own, or one from the worker's pool).",
            |s| s.upstream_reused,
        ),
        (
            "tls_resumed",
            "Mesh TLS handshakes that resumed a session.",
            |s| s.tls_resumed,
        ),
        ("completed", "Sessions that ended cleanly.", |s| s.completed),
        (
            "bytes_down_to_up",
            "Bytes from clients towards upstreams.",
            |s| s.bytes_down_to_up,
        ),
        (
            "bytes_up_to_down",
            "Bytes from upstreams towards clients.",
            |s| s.bytes_up_to_down,
        ),
        (
            "retries",
            "Upstream attempts made again: after a connect failure (before any request byte left), or a request after a reused connection failed before any response byte.",
            |s| s.retries,
        ),
    ];
    for (name, help, get) in FIELDS {
        counter_family(out, &format!("xdpmesh_proxy_{name}_total"), help);
        for (w, s) in engines {
            let _ = writeln!(
                out,
                "xdpmesh_proxy_{name}_total{{worker=\"{w}\"}} {}",
                get(s)
            );
        }
    }
    counter_family(
        out,
        "xdpmesh_proxy_refused_total",
        "Connections or requests refused or cut, by reason.",
    );
    for (w, s) in engines {
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "xdpmesh_proxy_refused_total{{worker=\"{w}\",reason=\"{}\"}} {}",
                r.label(),
                s.refused(r)
            );
        }
    }
    counter_family(
        out,
        "xdpmesh_proxy_attempts_total",
        "Upstream attempts by how they ended (one outcome each).",
    );
    for (w, s) in engines {
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "xdpmesh_proxy_attempts_total{{worker=\"{w}\",outcome=\"{}\"}} {}",
                o.label(),
                s.attempts(o)
            );
        }
    }
    counter_family(
        out,
        "xdpmesh_proxy_timeouts_total",
        "Timeouts that expired, by which (the listener's or route's timeouts).",
    );
    for (w, s) in engines {
        for e in Expiry::ALL {
            let _ = writeln!(
                out,
                "xdpmesh_proxy_timeouts_total{{worker=\"{w}\",timeout=\"{}\"}} {}",
                e.label(),
                s.timeouts(e)
            );
        }
    }
    counter_family(
        out,
        "xdpmesh_proxy_pool_closes_total",
        "Reusable upstream connections closed instead of reused, by why (idle_timeout, retired: max_lifetime or max_requests, peer_closed: the server closed it while idle, full: max_idle_per_endpoint or the worker's cap, evicted: closed to make room under the service's max_connections).",
    );
    for (w, s) in engines {
        for c in PoolClose::ALL {
            let _ = writeln!(
                out,
                "xdpmesh_proxy_pool_closes_total{{worker=\"{w}\",reason=\"{}\"}} {}",
                c.label(),
                s.pool_closes[c as usize]
            );
        }
    }
    for (name, help, get) in [
        (
            "xdpmesh_proxy_sessions",
            "Sessions open now: a client connection each, with its upstream.",
            (|s| s.sessions) as fn(&ProxyStats) -> u64,
        ),
        (
            "xdpmesh_proxy_pooled_connections",
            "Upstream connections idle in the worker's pool now.",
            |s| s.pooled,
        ),
    ] {
        family(out, name, help, "gauge");
        for (w, s) in engines {
            let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", get(s));
        }
    }
}

/// Everything one worker thread needs.
struct Job {
    info: WorkerInfo,
    plans: Vec<QueuePlan>,
    builtins: Vec<(SocketAddrV4, Builtin)>,
    proxy: Option<ProxySetup>,
    on_failure: Option<OnWorkerFailure>,
}

impl Job {
    fn run(
        self,
        shutdown: &Shutdown,
        ready: mpsc::Sender<Result<(), GatewayError>>,
    ) -> io::Result<DrainReport> {
        let mut arrival = shutdown.arrival();
        let info = self.info.clone();
        let on_failure = self.on_failure.clone();
        let mut worker = match self.start() {
            Ok(w) => {
                let _ = ready.send(Ok(()));
                w
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ok(DrainReport::default());
            }
        };
        if let Err(e) = worker.run(shutdown.flag()) {
            if let Some(f) = on_failure {
                f(&info, &e);
            }
            return Err(e);
        }
        worker.stop_accepting();
        arrival.refusing();
        worker.drain_among(shutdown.deadline(), Some(&mut arrival))
    }

    fn start(self) -> Result<Worker<XskDevice>, GatewayError> {
        let info = self.info;
        // Pin before touching the UMEM so its pages are first touched on this core's node.
        if !core_affinity::set_for_current(core_affinity::CoreId {
            id: info.core as usize,
        }) {
            return Err(GatewayError::Pin {
                worker: info.describe(),
                core: info.core,
            });
        }
        let mut worker = open_worker(self.plans, &self.builtins, self.proxy.as_ref())?;
        worker.stats_out = Some(info.stats.clone());
        worker.inspect = Some(info.inspect.clone());
        Ok(worker)
    }
}

/// An address no interface has: its listeners would never see a packet.
pub fn orphan_listeners(cfg: &GatewayConfig) -> Vec<SocketAddrV4> {
    cfg.listeners
        .iter()
        .map(|(a, _)| *a)
        .filter(|a| {
            !a.ip().is_unspecified()
                && !cfg
                    .interfaces
                    .iter()
                    .any(|i| i.addresses.iter().any(|n| n.addr() == *a.ip()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// The process families read real values from /proc: this test process has used CPU,
    /// holds memory and has descriptors open.
    #[test]
    fn process_families_read_proc() {
        let mut out = String::new();
        super::render_process(&mut out);
        let value = |name: &str| -> f64 {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{out}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        assert!(out.contains("xdpmesh_build_info{version=\""));
    }
}
