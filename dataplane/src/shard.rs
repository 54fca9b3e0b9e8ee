//! Which worker owns a TCP flow when an interface has several queues.
//!
//! Each queue has its own worker with its own tcpstack; a connection lives in exactly one
//! of them, its owner, and the owner is a function of the 4-tuple:
//! - with the NIC's RSS key known (node file `rss_key`): the worker of the queue the NIC's
//!   Toeplitz hash picks under the default indirection table (`ethtool -X IF equal N`), so the
//!   NIC itself delivers every segment to its owner, and active opens pick source ports whose
//!   replies hash home ([`FlowOwner::port_filter`]);
//! - otherwise (veth, where the receive queue is whatever TX queue the sender used): a hash
//!   of the tuple.
//!
//! A TCP segment that lands on another worker's queue is handed to its owner (counted).
//! ARP replies go to every worker, since each keeps its own neighbour cache; ARP requests,
//! ICMP and everything else are handled where they land.

use std::net::{Ipv4Addr, SocketAddrV4};
use tcpstack::PortFilter;

/// Where a received frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// The receiving worker handles it.
    Local,
    /// Worker `i` owns the flow.
    Worker(usize),
    /// Every worker handles a copy (ARP replies).
    Everyone,
}

/// The NIC's receive hashing, when known.
#[derive(Clone, Debug)]
pub struct Rss {
    /// The Toeplitz key (40 or 52 bytes).
    pub key: Vec<u8>,
    /// Receive queues the NIC spreads over (`ethtool -l`: combined/rx).
    pub nic_queues: u32,
    /// Entries in the indirection table (128 on most NICs; a power of two).
    pub table_size: u32,
}

/// The owner function of one interface, shared by its workers.
#[derive(Clone, Debug)]
pub struct FlowOwner {
    /// `queues[i]` is the queue worker `i` serves.
    queues: Vec<u32>,
    rss: Option<Rss>,
}

impl FlowOwner {
    pub fn new(queues: Vec<u32>, rss: Option<Rss>) -> Self {
        FlowOwner { queues, rss }
    }

    pub fn workers(&self) -> usize {
        self.queues.len()
    }

    /// The worker that owns the connection `local` ↔ `remote`.
    pub fn owner(&self, local: SocketAddrV4, remote: SocketAddrV4) -> usize {
        let n = self.queues.len();
        if n <= 1 {
            return 0;
        }
        match self.rss_worker(local, remote) {
            Some(Some(i)) => i,
            // No RSS key, or a queue nobody serves (a misconfigured NIC): the plain hash.
            _ => (mix(local, remote) % n as u64) as usize,
        }
    }

    /// With an RSS key: `Some(worker serving the queue the NIC picks)`, `Some(None)` when no
    /// worker serves that queue. `None` without a key.
    fn rss_worker(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Option<Option<usize>> {
        let rss = self.rss.as_ref()?;
        // The NIC hashes the incoming packet: source = remote, destination = local.
        let h = rss_hash(&rss.key, remote, local);
        let slot = h % rss.table_size.max(1);
        // The default indirection table (ethtool_rxfh_indir_default) is slot % queues.
        let queue = slot % rss.nic_queues.max(1);
        Some(self.queues.iter().position(|&q| q == queue))
    }

    /// A filter for worker `me`'s ephemeral ports: keep the ports whose replies it owns.
    /// With an RSS key, only ports whose replies the NIC delivers to `me`'s own queue (a
    /// reply to an unserved queue would be lost, not handed over).
    pub fn port_filter(self: &std::sync::Arc<Self>, me: usize) -> Option<PortFilter> {
        if self.queues.len() <= 1 {
            return None;
        }
        let this = self.clone();
        Some(PortFilter::new(move |local, remote| {
            match this.rss_worker(local, remote) {
                Some(w) => w == Some(me),
                None => this.owner(local, remote) == me,
            }
        }))
    }

    /// Where worker `me` sends a frame it received.
    pub fn dispatch(&self, me: usize, frame: &[u8]) -> Dispatch {
        if self.queues.len() <= 1 {
            return Dispatch::Local;
        }
        match classify(frame) {
            Class::ArpReply => Dispatch::Everyone,
            Class::Tcp { local, remote } => match self.owner(local, remote) {
                o if o == me => Dispatch::Local,
                o => Dispatch::Worker(o),
            },
            Class::Other => Dispatch::Local,
        }
    }
}

enum Class {
    ArpReply,
    Tcp {
        local: SocketAddrV4,
        remote: SocketAddrV4,
    },
    Other,
}

/// Reads just enough of a frame to route it; anything short or odd is `Other` and left to
/// the stack, which counts its drop.
fn classify(f: &[u8]) -> Class {
    let be16 = |i: usize| f.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match be16(12) {
        Some(0x0806) => match be16(14 + 6) {
            Some(2) => Class::ArpReply,
            _ => Class::Other,
        },
        Some(0x0800) => {
            let Some(&vihl) = f.get(14) else {
                return Class::Other;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            // Fragments carry no (or not only) ports: the stack drops them anyway.
            let frag = be16(14 + 6).unwrap_or(0x3fff) & 0x3fff;
            if vihl >> 4 != 4 || ihl < 20 || f.get(14 + 9) != Some(&6) || frag != 0 {
                return Class::Other;
            }
            let ip = |i: usize| {
                f.get(i..i + 4)
                    .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            };
            let t = 14 + ihl;
            match (ip(14 + 12), ip(14 + 16), be16(t), be16(t + 2)) {
                (Some(src), Some(dst), Some(sport), Some(dport)) => Class::Tcp {
                    local: SocketAddrV4::new(dst, dport),
                    remote: SocketAddrV4::new(src, sport),
                },
                _ => Class::Other,
            }
        }
        _ => Class::Other,
    }
}

/// A cheap, well-spread hash of a 4-tuple (not keyed: only the spread matters).
fn mix(local: SocketAddrV4, remote: SocketAddrV4) -> u64 {
    let a = u64::from(u32::from(*local.ip())) << 32 | u64::from(u32::from(*remote.ip()));
    let b = u64::from(local.port()) << 16 | u64::from(remote.port());
    let x = (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

/// The NIC's RSS hash of an IPv4/TCP packet from `src` to `dst`: Toeplitz over
/// source address, destination address, source port, destination port.
pub fn rss_hash(key: &[u8], src: SocketAddrV4, dst: SocketAddrV4) -> u32 {
    let mut input = [0u8; 12];
    input[0..4].copy_from_slice(&src.ip().octets());
    input[4..8].copy_from_slice(&dst.ip().octets());
    input[8..10].copy_from_slice(&src.port().to_be_bytes());
    input[10..12].copy_from_slice(&dst.port().to_be_bytes());
    toeplitz(key, &input)
}

/// The Toeplitz hash (Microsoft RSS spec): for each input bit set, XOR in the 32 key bits
/// starting at that bit's position. Key bits past the end count as 0.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let k = |i: usize| key.get(i).copied().unwrap_or(0);
    let mut window = u32::from_be_bytes([k(0), k(1), k(2), k(3)]);
    let mut hash = 0u32;
    for (j, byte) in input.iter().enumerate() {
        let next = k(j + 4);
        for bit in (0..8).rev() {
            if byte >> bit & 1 == 1 {
                hash ^= window;
            }
            window = window << 1 | u32::from(next >> bit & 1);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The key from Microsoft's "Verifying the RSS Hash Calculation".
    const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn toeplitz_matches_the_published_vectors() {
        // (destination, source, IPv4+TCP hash) from the spec's table.
        let v = [
            ("161.142.100.80:1766", "66.9.149.187:2794", 0x51cc_c178u32),
            ("65.69.140.83:4739", "199.92.111.2:14230", 0xc626_b0ea),
        ];
        for (dst, src, want) in v {
            assert_eq!(rss_hash(&MS_KEY, sa(src), sa(dst)), want, "{src} -> {dst}");
        }
    }

    fn tcp_frame(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&src.ip().octets());
        f[14 + 16..14 + 20].copy_from_slice(&dst.ip().octets());
        f[34..36].copy_from_slice(&src.port().to_be_bytes());
        f[36..38].copy_from_slice(&dst.port().to_be_bytes());
        f
    }

    #[test]
    fn each_flow_has_exactly_one_owner_and_flows_spread() {
        let owner = FlowOwner::new(vec![0, 1], None);
        let local = sa("10.0.0.1:80");
        let mut per = [0usize; 2];
        for p in 0..1000u16 {
            let remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 30000 + p);
            let o = owner.owner(local, remote);
            per[o] += 1;
            let f = tcp_frame(remote, local);
            assert_eq!(owner.dispatch(o, &f), Dispatch::Local);
            assert_eq!(owner.dispatch(1 - o, &f), Dispatch::Worker(o));
        }
        assert!(per[0] > 400 && per[1] > 400, "spread {per:?}");
    }

    #[test]
    fn with_rss_the_owner_is_the_queue_the_nic_picks() {
        let rss = |queues| Rss {
            key: MS_KEY.to_vec(),
            nic_queues: queues,
            table_size: 128,
        };
        // Workers serve queues 3 and 1 (in that order) of four.
        let owner = FlowOwner::new(vec![3, 1], Some(rss(4)));
        let (src, dst) = (sa("66.9.149.187:2794"), sa("161.142.100.80:1766"));
        let queue = (0x51cc_c178u32 % 128) % 4;
        let got = owner.owner(dst, src);
        match queue {
            3 => assert_eq!(got, 0),
            1 => assert_eq!(got, 1),
            _ => assert!(got < 2),
        }
        // Ports chosen through the filter hash home, and never to a queue nobody serves.
        let owner = Arc::new(owner);
        let remote = sa("10.9.9.9:443");
        for me in [0usize, 1] {
            let filter = owner.port_filter(me).unwrap();
            let mine = [3u32, 1][me];
            let mut kept = 0;
            for p in 40000..40400u16 {
                let local = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), p);
                if filter.allows(local, remote) {
                    kept += 1;
                    let h = rss_hash(&MS_KEY, remote, local);
                    assert_eq!(
                        (h % 128) % 4,
                        mine,
                        "port {p} would come back on another queue"
                    );
                }
            }
            assert!(
                kept > 50,
                "about a quarter of the ports should pass, got {kept}"
            );
        }
    }

    #[test]
    fn arp_replies_go_everywhere_and_short_frames_stay_local() {
        let owner = FlowOwner::new(vec![0, 1], None);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        arp[20..22].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(owner.dispatch(0, &arp), Dispatch::Everyone);
        arp[21] = 1; // request
        assert_eq!(owner.dispatch(0, &arp), Dispatch::Local);
        let full = tcp_frame(sa("10.0.0.2:1234"), sa("10.0.0.1:80"));
        // Every prefix of a TCP frame is classified without a panic.
        for n in 0..full.len() {
            let d = owner.dispatch(0, &full[..n]);
            if n < 38 {
                assert_eq!(d, Dispatch::Local, "prefix {n}");
            }
        }
        // A fragment is not routed by ports.
        let mut frag = full.clone();
        frag[14 + 6] = 0x20; // MF
        assert_eq!(owner.dispatch(0, &frag), Dispatch::Local);
        assert_eq!(owner.dispatch(1, &frag), Dispatch::Local);
    }
}
