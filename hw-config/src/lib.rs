//! Node description: the `[[interface]]` tables of a node file, and their checks.
//!
//! ```toml
//! [[interface]]
//! name = "eth1"                  # required: the NIC (or veth) the data plane owns
//! address = "10.10.1.1/24"       # required: IPv4 CIDR, or a list of them
//! next_hop = "10.10.1.254"       # optional: gateway for destinations off every subnet
//! xdp_mode = "native"            # native (default) | generic (drops GSO super-packets)
//! bind = "copy"                  # copy (default) | zero-copy
//! queues = [0, 1]                # required: one worker per queue ...
//! cores = [2, 3]                 # required: ... pinned to these CPUs, same length
//! mtu = 1500                     # optional: default the interface's; at most MAX_MTU
//! rss_key = "6d:5a:..."          # optional: 40 or 52 bytes of hex, as `ethtool -x` prints
//! poll = "adaptive"              # adaptive (default: keep polling a while after the last work, then sleep) | answers (poll only while an upstream answer is owed) | busy
//! spin = "2ms"                   # adaptive only: the longest that while (default 2ms, at most 1s)
//! steer = "owned"                # owned (default: only our addresses/ports) | dedicated
//! ```
//!
//! `control` accepts `[[interface]]` unread and hands the spanned trees on
//! ([`control::node::NodeConfig::interfaces`]); [`check`] decodes them with
//! [`control::de::decode`], so every error has the node file's line and column and
//! prints through the same [`Diagnostic`] as control's own.

use std::net::Ipv4Addr;
use std::time::Duration;

use control::de::Sp;
use control::{Diagnostic, Source};
use ipnet::Ipv4Net;
use serde::Deserialize;

mod address;
pub mod system;
mod validate;

pub use system::{System, SystemChecks};

/// Bytes per UMEM frame the data plane uses (`dataplane/src/xdp/socket.rs`,
/// `SocketConfig::default().frame_size`).
pub const FRAME_SIZE: u32 = 4096;
/// Bytes at the front of each frame the kernel keeps for XDP (`XDP_PACKET_HEADROOM`).
pub const XDP_HEADROOM: u32 = 256;
/// What a frame holds of one packet: 4096 − 256 = 3840 (socket.rs: "3840 usable").
pub const FRAME_USABLE: u32 = FRAME_SIZE - XDP_HEADROOM;
/// Ethernet II header, not counted in the MTU.
pub const ETH_HEADER: u32 = 14;
/// The largest MTU one frame can carry: 3840 − 14 = 3826. No multi-buffer XDP.
pub const MAX_MTU: u32 = FRAME_USABLE - ETH_HEADER;
/// The smallest MTU an IPv4 host must accept (RFC 791, "Fragmentation").
pub const MIN_MTU: u32 = 68;

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (veth supports it too). The default.
    #[default]
    Native,
    /// `XDP_FLAGS_SKB_MODE`: any driver, but drops GSO super-packets.
    Generic,
}

/// How frames move between the NIC and the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bind {
    /// `XDP_COPY`: works everywhere (the only mode veth has). The default.
    #[default]
    Copy,
    /// `XDP_ZEROCOPY`: the NIC DMAs into the UMEM; the bind fails where unsupported.
    ZeroCopy,
}

/// How a worker waits for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Poll {
    /// Poll for a while after the last work (at most `spin`; the worker adapts the window
    /// to the gaps in its traffic), then sleep on the socket fds (need_wakeup). The default.
    #[default]
    Adaptive,
    /// Spin forever: lowest latency, burns the core. For benchmarks.
    Busy,
    /// Poll only while an answer is owed (a connection the worker opened upstream sent
    /// data and has heard nothing back since; at most `spin` after the last work), else
    /// sleep at once: one wake-up per request and gateway instead of two, and no polling
    /// between requests.
    Answers,
}

/// What the XDP program sends to the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Steer {
    /// Only what the gateway owns (its listeners, ephemeral ports, ARP and ICMP for
    /// its addresses); the rest goes to the kernel, so SSH on the same NIC still works.
    #[default]
    Owned,
    /// Everything on the bound queues.
    Dedicated,
}

/// One `[[interface]]` table as written (spans kept for the checks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInterface {
    pub name: Sp<String>,
    pub address: Sp<address::Addresses>,
    #[serde(default)]
    pub next_hop: Option<Sp<String>>,
    #[serde(default)]
    pub xdp_mode: Option<Sp<XdpMode>>,
    #[serde(default)]
    pub bind: Bind,
    pub queues: Sp<Vec<Sp<u32>>>,
    pub cores: Sp<Vec<Sp<u32>>>,
    #[serde(default)]
    pub mtu: Option<Sp<u32>>,
    #[serde(default)]
    pub rss_key: Option<Sp<String>>,
    #[serde(default)]
    pub poll: Poll,
    #[serde(default)]
    pub spin: Option<Sp<String>>,
    #[serde(default)]
    pub steer: Steer,
}

/// A checked interface, ready for the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<Ipv4Net>,
    pub next_hop: Option<Ipv4Addr>,
    pub xdp_mode: XdpMode,
    pub bind: Bind,
    /// `queues[i]` is served by a worker pinned to `cores[i]`.
    pub queues: Vec<u32>,
    pub cores: Vec<u32>,
    /// `None`: use the interface's own MTU.
    pub mtu: Option<u32>,
    pub rss_key: Option<Vec<u8>>,
    pub poll: Poll,
    /// Adaptive polling: the longest a worker keeps polling after its last work before it
    /// sleeps ([`DEFAULT_SPIN`] unless set). `Duration::MAX` with [`Poll::Busy`].
    pub spin: Duration,
    pub steer: Steer,
}

/// Adaptive polling's default ceiling. The window starts at 200 µs, enough for a proxied
/// request's answer to come back through the far gateway and the server, and grows toward
/// this while work keeps arriving within it: traffic whose gaps stay under it (steady
/// traffic of well over 500 packets/s per worker) is then served without sleeps and
/// wake-ups (~50 µs each on the VMs we measured; README "Benchmarks"). A polling worker
/// yields to other runnable threads on its core, but the core (or a VM's vCPU) shows busy
/// while traffic flows. An idle worker sleeps.
pub const DEFAULT_SPIN: Duration = Duration::from_millis(2);
/// The longest `spin` accepted: beyond it, use `poll = "busy"`.
pub const MAX_SPIN: Duration = Duration::from_secs(1);

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// The interfaces that decoded and passed every check.
    pub interfaces: Vec<Interface>,
    /// Errors: the node must not run.
    pub errors: Vec<Diagnostic>,
    /// Warnings that do not fail the check (printed as `note:` lines).
    pub notes: Vec<Diagnostic>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Check the `[[interface]]` entries of a loaded node file.
pub fn check(node: &control::node::NodeConfig, checks: SystemChecks) -> Report {
    check_trees(&node.source, &node.interfaces, checks, &System::here())
}

/// Check `[[interface]]` trees from `src` against `sys` (tests pass their own).
pub fn check_trees(
    src: &Source,
    trees: &[control::tree::Node],
    checks: SystemChecks,
    sys: &System,
) -> Report {
    let mut report = Report::default();
    let mut raws = Vec::new();
    for (i, tree) in trees.iter().enumerate() {
        match control::de::decode::<RawInterface>(src, tree, &format!("interface[{i}]")) {
            Ok(raw) => raws.push((i, raw)),
            Err(errors) => report.errors.extend(errors),
        }
    }
    validate::validate(src, &raws, checks, sys, &mut report);
    report
        .errors
        .sort_by_key(|d| (d.file.clone(), d.line, d.col));
    report
}
