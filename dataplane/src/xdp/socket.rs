//! One AF_XDP socket with its own UMEM, bound to one interface queue.
//!
//! Frame ownership (fixed split, so RX can never starve TX or the reverse):
//! - `rx_frames` frames cycle fill ring → kernel → RX ring → `receive` callback
//!   → fill ring. The fill ring has exactly `rx_frames` slots, so handing a
//!   batch back always fits.
//! - `tx_frames` frames cycle free pool → `transmit` callback → TX ring →
//!   kernel → completion ring → free pool. The TX and completion rings have
//!   exactly `tx_frames` slots, so a submitted batch always fits.
//!
//! All descriptor arrays are allocated once in [`XskDevice::open`]; `receive`
//! and `transmit` allocate nothing.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::steer::Steering;
use super::sys;
use super::{retry_busy, XdpError};
use crate::device::{Capabilities, Device, RingDrops};

/// Ethernet II header length: added to the MTU to get the largest frame.
const ETH_HLEN: usize = 14;

/// How the socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// `XDP_COPY`: the kernel copies frames. The only mode veth supports.
    #[default]
    Copy,
    /// `XDP_ZEROCOPY`: the NIC DMAs into the UMEM; fails where unsupported.
    ZeroCopy,
}

/// Sizes and modes of one socket. `XskConfig::new` gives the defaults.
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// The interface name (in the calling thread's network namespace).
    pub ifname: String,
    /// The interface queue to bind.
    pub queue_id: u32,
    /// Bytes per UMEM frame (power of two, 2048 or 4096). 256 bytes of each go
    /// to the kernel's XDP headroom.
    pub frame_size: u32,
    /// Frames lent to the kernel for receiving; also the fill and RX ring size
    /// (power of two).
    pub rx_frames: u32,
    /// Frames for transmitting; also the TX and completion ring size (power of two).
    pub tx_frames: u32,
    /// Largest batch per `receive` / `transmit` call.
    pub batch: usize,
    /// Copy or zero-copy.
    pub bind: BindMode,
    /// Set `XDP_USE_NEED_WAKEUP`: the kernel says when it needs a syscall, so an
    /// idle worker can sleep in poll(2) and a busy one avoids syscalls.
    pub need_wakeup: bool,
    /// How long to keep retrying a bind that fails with EBUSY (the previous
    /// socket on this queue is still being torn down).
    pub busy_retry: Duration,
}

impl XskConfig {
    /// Defaults: 4096-byte frames (3840 usable: room for the ~3500 MTU veth
    /// allows with XDP), 2048 RX + 2048 TX frames (16 MiB), batches of 64, copy
    /// bind with need_wakeup, 2 s of EBUSY retries.
    pub fn new(ifname: &str, queue_id: u32) -> Self {
        Self {
            ifname: ifname.to_string(),
            queue_id,
            frame_size: 4096,
            rx_frames: 2048,
            tx_frames: 2048,
            batch: 64,
            bind: BindMode::Copy,
            need_wakeup: true,
            busy_retry: Duration::from_secs(2),
        }
    }
}

/// Counters of one socket (plain integers: one worker owns the device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames handed to `receive` callbacks.
    pub rx_frames: u64,
    /// `receive` calls that returned frames.
    pub rx_batches: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// `transmit` calls that queued frames.
    pub tx_batches: u64,
    /// TX wakeups (`sendto`): at most one per batch.
    pub tx_wakeups: u64,
    /// Fill ring wakeups (poll with zero timeout).
    pub fill_wakeups: u64,
    /// `transmit` found every TX frame in flight (backpressure).
    pub tx_no_frame: u64,
    /// A transmit callback returned length 0 or above the buffer: not sent.
    pub tx_bad_len: u64,
    /// Completed TX frames reclaimed.
    pub tx_completed: u64,
    /// Bind attempts `open` needed (more than 1: EBUSY retries after a close).
    pub bind_attempts: u64,
}

/// An AF_XDP socket on one interface queue, with its own UMEM.
#[derive(Debug)]
pub struct XskDevice {
    caps: Capabilities,
    // Field order is drop order: unregister happens in Drop before any of these.
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    umem: Umem,
    fd: RawFd,
    /// Free TX frames (capacity `tx_frames`).
    tx_pool: Vec<FrameDesc>,
    /// Scratch for one RX batch (length `batch`).
    rx_batch: Vec<FrameDesc>,
    /// Scratch for one TX batch (length `batch`).
    tx_batch: Vec<FrameDesc>,
    /// RX frames the fill ring refused (never expected; kept so none leak).
    fill_backlog: Vec<FrameDesc>,
    tx_frames: usize,
    stats: XskStats,
    steering: Option<Arc<Steering>>,
}

fn socket_err(cfg: &XskConfig, reason: impl Into<String>, source: Option<io::Error>) -> XdpError {
    let hint = match source.as_ref().and_then(io::Error::raw_os_error) {
        Some(libc::EBUSY) => " (hint: another AF_XDP socket is bound to this queue)",
        Some(libc::EOPNOTSUPP) if cfg.bind == BindMode::ZeroCopy => {
            " (hint: the driver has no zero-copy support; veth never has: use copy mode)"
        }
        Some(libc::EINVAL) => " (hint: does the interface have this queue? `ethtool -l`)",
        Some(libc::EPERM) => {
            " (hint: needs root, or CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON, CAP_IPC_LOCK)"
        }
        _ => "",
    };
    XdpError::Socket {
        ifname: cfg.ifname.clone(),
        queue_id: cfg.queue_id,
        reason: reason.into(),
        hint,
        source,
    }
}

fn pow2(name: &str, v: u32) -> Result<QueueSize, XdpError> {
    QueueSize::new(v).map_err(|e| XdpError::Config(format!("{name}: {e}")))
}

type Queues = (TxQueue, RxQueue, FillQueue, CompQueue);
/// A bound socket: its UMEM, the UMEM's frame descriptors and the four queues.
type Bound = (Umem, Vec<FrameDesc>, Queues);

/// The xsk-rs configurations for `cfg` (validated in `XskDevice::open`).
fn xsk_configs(cfg: &XskConfig) -> Result<(UmemConfig, SocketConfig), XdpError> {
    if !cfg.frame_size.is_power_of_two() || !(2048..=4096).contains(&cfg.frame_size) {
        return Err(XdpError::Config(format!(
            "frame_size {} must be 2048 or 4096 (a power of two, at most a page)",
            cfg.frame_size
        )));
    }
    let frame = FrameSize::new(cfg.frame_size).map_err(|e| XdpError::Config(e.to_string()))?;
    let umem_cfg = UmemConfig::builder()
        .frame_size(frame)
        .fill_queue_size(pow2("rx_frames", cfg.rx_frames)?)
        .comp_queue_size(pow2("tx_frames", cfg.tx_frames)?)
        .frame_headroom(0)
        .build()
        .map_err(|e| XdpError::Config(e.to_string()))?;
    let mut bind = match cfg.bind {
        BindMode::Copy => BindFlags::XDP_COPY,
        BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
    };
    if cfg.need_wakeup {
        bind |= BindFlags::XDP_USE_NEED_WAKEUP;
    }
    let sock_cfg = SocketConfig::builder()
        .rx_queue_size(pow2("rx_frames", cfg.rx_frames)?)
        .tx_queue_size(pow2("tx_frames", cfg.tx_frames)?)
        // We attach our own program (Steering) and fill the XSKMAP ourselves.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(bind)
        .build();
    Ok((umem_cfg, sock_cfg))
}

/// One bind attempt: a fresh UMEM each time, since a failed bind leaves the
/// first socket's rings set up and libxdp cannot set them up again on it.
/// `Err` (only EBUSY) is for `retry_busy`; `Ok(Err)` is final.
fn bind_once(
    cfg: &XskConfig,
    umem_cfg: UmemConfig,
    sock_cfg: SocketConfig,
    iface: &Interface,
) -> io::Result<Result<Bound, XdpError>> {
    let total = NonZeroU32::new(cfg.rx_frames + cfg.tx_frames)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no frames"))?;
    let (umem, descs) = match Umem::new(umem_cfg, total, false) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Err(XdpError::Umem {
                reason: format!("{e}{}", source_suffix(&e)),
            }))
        }
    };
    // SAFETY: this UMEM is new and not shared, so no other socket is bound with
    // it to this (interface, queue) pair.
    match unsafe { Socket::new(sock_cfg, &umem, iface, cfg.queue_id) } {
        Ok((tx, rx, Some((fq, cq)))) => Ok(Ok((umem, descs, (tx, rx, fq, cq)))),
        Ok((_, _, None)) => Ok(Err(socket_err(
            cfg,
            "libxdp returned no fill/completion ring for an unshared UMEM",
            None,
        ))),
        Err(e) => {
            let os = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .and_then(io::Error::raw_os_error);
            match os {
                // Hand EBUSY to retry_busy; everything else is final.
                Some(libc::EBUSY) => Err(io::Error::from_raw_os_error(libc::EBUSY)),
                Some(code) => Ok(Err(socket_err(
                    cfg,
                    e.to_string(),
                    Some(io::Error::from_raw_os_error(code)),
                ))),
                None => Ok(Err(socket_err(cfg, e.to_string(), None))),
            }
        }
    }
}

fn source_suffix(e: &dyn std::error::Error) -> String {
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

impl XskDevice {
    /// Creates the UMEM and socket, binds it to `cfg.ifname` queue `cfg.queue_id`
    /// (retrying EBUSY for `cfg.busy_retry`), lends the RX frames to the kernel
    /// and, with `steering`, registers the socket for its queue.
    ///
    /// Call it in the interface's network namespace.
    pub fn open(cfg: &XskConfig, steering: Option<Arc<Steering>>) -> Result<Self, XdpError> {
        let iface = Interface::new(sys::ifname_cstring(&cfg.ifname)?);
        let (umem_cfg, sock_cfg) = xsk_configs(cfg)?;
        if cfg.batch == 0 || cfg.batch > cfg.rx_frames.min(cfg.tx_frames) as usize {
            return Err(XdpError::Config(format!(
                "batch {} must be in 1..={}",
                cfg.batch,
                cfg.rx_frames.min(cfg.tx_frames)
            )));
        }
        let mtu = sys::ifmtu(&cfg.ifname)? as usize;
        let mac = sys::ifmac(&cfg.ifname)?;

        let mut attempts = 0u64;
        let (umem, mut descs, (tx, rx, mut fq, cq)) = match retry_busy(cfg.busy_retry, || {
            attempts += 1;
            bind_once(cfg, umem_cfg, sock_cfg, &iface)
        }) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(e),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(socket_err(
                    cfg,
                    format!("still busy after {:?} of retries", cfg.busy_retry),
                    Some(e),
                ))
            }
            Err(e) => return Err(socket_err(cfg, "bind", Some(e))),
        };

        let rx_frames = cfg.rx_frames as usize;
        let tx_frames = cfg.tx_frames as usize;
        // descs[..rx_frames] go to the fill ring, the rest form the TX pool.
        let tx_pool = descs.split_off(rx_frames);
        // SAFETY: these frames belong to this UMEM and nobody else uses them.
        let lent = unsafe { fq.produce(&descs) };
        if lent != rx_frames {
            return Err(socket_err(
                cfg,
                format!("fill ring took {lent} of {rx_frames} frames"),
                None,
            ));
        }

        // The data area of a frame is what is left after the XDP headroom.
        let buf = (cfg.frame_size - libbpf_sys::XDP_PACKET_HEADROOM) as usize;
        let caps = Capabilities {
            max_frame: buf.min(mtu + ETH_HLEN),
            mtu,
            queue_id: cfg.queue_id,
            mac,
            batch: cfg.batch,
        };
        let fd = rx.fd().as_raw_fd();
        let mut dev = Self {
            caps,
            rx,
            tx,
            fq,
            cq,
            umem,
            fd,
            tx_pool,
            rx_batch: vec![FrameDesc::default(); cfg.batch],
            tx_batch: vec![FrameDesc::default(); cfg.batch],
            fill_backlog: Vec::with_capacity(rx_frames),
            tx_frames,
            stats: XskStats {
                bind_attempts: attempts,
                ..XskStats::default()
            },
            steering: None,
        };
        dev.kick_fill();
        if let Some(s) = steering {
            s.register(cfg.queue_id, fd)?;
            dev.steering = Some(s);
        }
        Ok(dev)
    }

    /// The socket descriptor, for poll(2)/epoll over several devices.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// This socket's counters.
    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// The kernel's counters for this socket (drops for a full RX ring, an
    /// empty fill ring, invalid descriptors).
    pub fn kernel_stats(&self) -> io::Result<xsk_rs::socket::XdpStatistics> {
        self.rx.fd().xdp_statistics()
    }

    /// TX frames not in flight.
    pub fn tx_free(&self) -> usize {
        self.tx_pool.len()
    }

    /// Moves completed TX frames back to the pool; returns how many.
    pub fn reclaim_completions(&mut self) -> usize {
        let have = self.tx_pool.len();
        if have == self.tx_frames {
            return 0;
        }
        // Within capacity (tx_frames): no allocation.
        self.tx_pool.resize(self.tx_frames, FrameDesc::default());
        // SAFETY: completed addresses are frames of this UMEM.
        let got = unsafe { self.cq.consume(&mut self.tx_pool[have..]) };
        self.tx_pool.truncate(have + got);
        self.stats.tx_completed += got as u64;
        got
    }

    fn kick_fill(&mut self) {
        if self.fq.needs_wakeup() {
            self.stats.fill_wakeups += 1;
            // A failed wakeup only delays reception until the next one.
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
    }

    fn return_to_fill(&mut self, n: usize) {
        if !self.fill_backlog.is_empty() {
            // SAFETY: frames of this UMEM, owned by us since RX handed them over.
            let put = unsafe { self.fq.produce(&self.fill_backlog) };
            if put == self.fill_backlog.len() {
                self.fill_backlog.clear();
            }
        }
        // SAFETY: as above; the callback borrowing them has returned.
        let put = unsafe { self.fq.produce(&self.rx_batch[..n]) };
        if put != n {
            // Cannot happen while the fill ring has rx_frames slots; keep the
            // frames rather than leak them.
            self.fill_backlog.extend_from_slice(&self.rx_batch[..n]);
        }
        self.kick_fill();
    }
}

impl Device for XskDevice {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn ring_drops(&self) -> RingDrops {
        // A socket the kernel cannot report on shows zeros rather than stale figures.
        self.kernel_stats().map_or_else(
            |_| RingDrops::default(),
            |k| RingDrops {
                rx_dropped: k.rx_dropped(),
                rx_ring_full: k.rx_ring_full(),
                fill_ring_empty: k.rx_fill_ring_empty_descs(),
                rx_invalid_descs: k.rx_invalid_descs(),
                tx_invalid_descs: k.tx_invalid_descs(),
            },
        )
    }

    fn receive<F: FnMut(&[u8])>(&mut self, max: usize, mut on_frame: F) -> io::Result<usize> {
        let n = max.min(self.rx_batch.len());
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: rx_batch is scratch owned by us; descriptors come from this UMEM.
        let got = unsafe { self.rx.consume(&mut self.rx_batch[..n]) };
        if got == 0 {
            return Ok(0);
        }
        for desc in &self.rx_batch[..got] {
            // SAFETY: the kernel handed this frame over through the RX ring and it
            // goes back to the fill ring only after the callback has returned.
            let data = unsafe { self.umem.data(desc) };
            on_frame(data.contents());
        }
        self.return_to_fill(got);
        self.stats.rx_frames += got as u64;
        self.stats.rx_batches += 1;
        Ok(got)
    }

    fn transmit<F: FnMut(&mut [u8]) -> Option<usize>>(
        &mut self,
        max: usize,
        mut fill: F,
    ) -> io::Result<usize> {
        self.reclaim_completions();
        let want = max.min(self.tx_batch.len());
        let max_frame = self.caps.max_frame;
        let mut k = 0;
        // At most `want` callbacks, even when some return a bad length.
        for _ in 0..want {
            let Some(mut desc) = self.tx_pool.pop() else {
                self.stats.tx_no_frame += 1;
                break;
            };
            let written = {
                // SAFETY: `desc` came from the free pool: neither the kernel nor
                // another reference touches this frame.
                let mut data = unsafe { self.umem.data_mut(&mut desc) };
                data.cursor().set_pos(max_frame);
                let r = fill(data.contents_mut());
                if let Some(len) = r {
                    data.cursor().set_pos(len);
                }
                r
            };
            match written {
                None => {
                    self.tx_pool.push(desc);
                    break;
                }
                Some(len) if len == 0 || len > max_frame => {
                    self.stats.tx_bad_len += 1;
                    self.tx_pool.push(desc);
                }
                Some(_) => {
                    self.tx_batch[k] = desc;
                    k += 1;
                }
            }
        }
        if k == 0 {
            return Ok(0);
        }
        // SAFETY: these frames are ours (from the pool) and written.
        let queued = unsafe { self.tx.produce(&self.tx_batch[..k]) };
        if queued != k {
            // Cannot happen while the TX ring has tx_frames slots.
            self.tx_pool.extend_from_slice(&self.tx_batch[..k]);
            return Err(io::Error::other("TX ring refused a batch"));
        }
        self.stats.tx_frames += k as u64;
        self.stats.tx_batches += 1;
        // Copy mode always asks for a wakeup: one sendto per batch.
        if self.tx.needs_wakeup() {
            self.stats.tx_wakeups += 1;
            self.tx.wakeup()?;
        }
        Ok(k)
    }

    fn ready_fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for XskDevice {
    fn drop(&mut self) {
        if let Some(s) = &self.steering {
            // Best effort: closing the socket removes it from the XSKMAP anyway.
            let _ = s.unregister(self.caps.queue_id);
        }
    }
}
