//! AF_XDP on a veth pair against the real kernel (root + network namespaces).
//!
//! Topology per test (fresh namespaces and names each time):
//! ```text
//!   ns A: <if_a>  [XDP steering program + our AF_XDP socket on queue 0]
//!           |      kernel address 10.99.0.1/24 only where a test says so
//!   ns B: <if_b>  10.99.0.2/24, `ethtool -K <if_b> tx off`, kernel sockets
//! ```
//! The gateway-only address 10.99.0.100 exists nowhere in the kernel: only our
//! socket answers for it. Tests that share 10.99.0.1 between the kernel and the
//! gateway pin static neighbour entries, because ARP for a shared address is
//! steered to the gateway (see `src/xdp/README.md`).
//!
//! Under CI=true these must run (they panic when not root); elsewhere they skip
//! with a printed reason when not root.

use std::io::{BufRead, BufReader};
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::device::Device;
use dataplane::netns::{skip_unless_root, unique_name, wait_for, NetNs};
use dataplane::xdp::{self, SteerConfig, Steering, XdpMode, XskConfig, XskDevice};

const KERNEL_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PEER_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);
const WAIT: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------- the rig

struct Rig {
    a: NetNs,
    b: NetNs,
    if_a: String,
    if_b: String,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
}

impl Rig {
    /// Two namespaces joined by a veth; `kernel_addr_on_a` gives A's end 10.99.0.1/24.
    fn new(kernel_addr_on_a: bool) -> Rig {
        let a = NetNs::create("xda").expect("netns A");
        let b = NetNs::create("xdb").expect("netns B");
        let if_a = unique_name("xva");
        let if_b = unique_name("xvb");
        let out = Command::new("ip")
            .args(["link", "add", &if_a, "netns", a.name(), "type", "veth"])
            .args(["peer", "name", &if_b, "netns", b.name()])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip link add veth: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if kernel_addr_on_a {
            a.exec_ok(["ip", "addr", "add", "10.99.0.1/24", "dev", &if_a])
                .unwrap();
        }
        a.exec_ok(["ip", "link", "set", &if_a, "up"]).unwrap();
        b.exec_ok(["ip", "addr", "add", "10.99.0.2/24", "dev", &if_b])
            .unwrap();
        b.exec_ok(["ip", "link", "set", &if_b, "up"]).unwrap();
        // The veth peer fills only partial TCP/UDP checksums otherwise (DESIGN.md).
        b.exec_ok(["ethtool", "-K", &if_b, "tx", "off"]).unwrap();
        let (ia, ib) = (if_a.clone(), if_b.clone());
        let mac_a = a.run(move || xdp::sys::ifmac(&ia)).unwrap();
        let mac_b = b.run(move || xdp::sys::ifmac(&ib)).unwrap();
        let rig = Rig {
            a,
            b,
            if_a,
            if_b,
            mac_a,
            mac_b,
        };
        let up = wait_for(WAIT, || {
            let s = rig.a.exec_ok(["ip", "link", "show", &rig.if_a]).ok()?;
            s.contains("state UP").then_some(())
        });
        assert!(up.is_some(), "{} never came up", rig.if_a);
        rig
    }

    fn steer(&self, cfg: &SteerConfig) -> Arc<Steering> {
        let (ifa, cfg) = (self.if_a.clone(), cfg.clone());
        let s = self
            .a
            .run(move || Steering::attach(&ifa, XdpMode::Native, &cfg, RETRY))
            .unwrap_or_else(|e| panic!("attach steering: {e}"));
        Arc::new(s)
    }

    fn open(&self, steering: Option<Arc<Steering>>) -> XskDevice {
        let cfg = XskConfig::new(&self.if_a, 0);
        self.a
            .run(move || XskDevice::open(&cfg, steering))
            .unwrap_or_else(|e| panic!("open AF_XDP socket: {e}"))
    }

    /// `ip link show` of our end, as a person would check it.
    fn link_a(&self) -> String {
        self.a
            .exec_ok(["ip", "link", "show", "dev", &self.if_a])
            .unwrap()
    }

    fn static_neigh_in_b(&self, ip: Ipv4Addr) {
        let mac = fmt_mac(&self.mac_a);
        self.b
            .exec_ok([
                "ip",
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac,
                "dev",
                &self.if_b,
                "nud",
                "permanent",
            ])
            .unwrap();
    }

    fn static_neigh_in_a(&self, ip: Ipv4Addr) {
        let mac = fmt_mac(&self.mac_b);
        self.a
            .exec_ok([
                "ip",
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac,
                "dev",
                &self.if_a,
                "nud",
                "permanent",
            ])
            .unwrap();
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------- frames

fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    ArpRequest {
        sha: [u8; 6],
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
    },
    IcmpEcho {
        frame: Vec<u8>,
    },
    TcpSyn {
        dst: SocketAddrV4,
    },
    Udp {
        dst: SocketAddrV4,
    },
    Other,
}

fn classify(f: &[u8]) -> Seen {
    if f.len() < 14 {
        return Seen::Other;
    }
    let ethertype = u16::from_be_bytes([f[12], f[13]]);
    let p = &f[14..];
    match ethertype {
        0x0806 if p.len() >= 28 && p[6..8] == [0, 1] => Seen::ArpRequest {
            sha: p[8..14].try_into().unwrap(),
            spa: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
            tpa: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
        },
        0x0800 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let l4 = &p[ihl.min(p.len())..];
            match p[9] {
                1 if l4.first() == Some(&8) => Seen::IcmpEcho { frame: f.to_vec() },
                6 if l4.len() >= 14 && l4[13] & 0x02 != 0 => Seen::TcpSyn {
                    dst: SocketAddrV4::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
                },
                17 if l4.len() >= 8 => Seen::Udp {
                    dst: SocketAddrV4::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
                },
                _ => Seen::Other,
            }
        }
        _ => Seen::Other,
    }
}

fn arp_reply(
    our_mac: [u8; 6],
    our_ip: Ipv4Addr,
    to_mac: [u8; 6],
    to_ip: Ipv4Addr,
    buf: &mut [u8],
) -> usize {
    let f = &mut buf[..42];
    f[0..6].copy_from_slice(&to_mac);
    f[6..12].copy_from_slice(&our_mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&our_mac);
    f[28..32].copy_from_slice(&our_ip.octets());
    f[32..38].copy_from_slice(&to_mac);
    f[38..42].copy_from_slice(&to_ip.octets());
    42
}

/// Turns an ICMP echo request frame into the reply, in `buf`.
fn icmp_echo_reply(req: &[u8], buf: &mut [u8]) -> usize {
    let n = req.len();
    let f = &mut buf[..n];
    f.copy_from_slice(req);
    f[0..6].copy_from_slice(&req[6..12]);
    f[6..12].copy_from_slice(&req[0..6]);
    let ihl = usize::from(req[14] & 0xf) * 4;
    // Swapping source and destination keeps the IPv4 header checksum valid.
    f[26..30].copy_from_slice(&req[30..34]);
    f[30..34].copy_from_slice(&req[26..30]);
    let icmp = 14 + ihl;
    f[icmp] = 0; // echo reply
    f[icmp + 2..icmp + 4].copy_from_slice(&[0, 0]);
    let c = csum(&f[icmp..]);
    f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
    n
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0: optional in IPv4, RFC 768).
#[allow(clippy::too_many_arguments)]
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    buf: &mut [u8],
) -> usize {
    let total = 14 + 20 + 8 + payload.len();
    let f = &mut buf[..total];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + payload.len()) as u16;
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = csum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    f[42..].copy_from_slice(payload);
    total
}

/// Receives until `pick` returns `Some` or `timeout` passes, sleeping in poll(2)
/// between empty batches.
fn recv_until<T>(
    dev: &mut XskDevice,
    timeout: Duration,
    mut pick: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut found = None;
    while Instant::now() < deadline {
        dev.receive(64, |f| {
            if found.is_none() {
                found = pick(f);
            }
        })
        .expect("receive");
        if found.is_some() {
            return found;
        }
        dev.wait(Duration::from_millis(20)).expect("poll");
    }
    None
}

// ---------------------------------------------------------------- kernel sockets (libc)

fn sockaddr(sa: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: sa.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(sa.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn owned(fd: RawFd, what: &str) -> OwnedFd {
    assert!(fd >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Starts a TCP connect that does not block (call inside the peer namespace).
fn connect_nonblocking(to: SocketAddrV4) -> OwnedFd {
    // SAFETY: plain socket calls with valid arguments.
    let fd = owned(
        unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        "socket",
    );
    let sa = sockaddr(to);
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of_val(&sa) as u32,
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(
        rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
        "connect {to}: {err}"
    );
    fd
}

/// The socket's pending error (SO_ERROR), 0 when none.
fn so_error(fd: &OwnedFd) -> i32 {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and out pointers.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    v
}

fn is_connected(fd: &OwnedFd) -> bool {
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of_val(&sa) as libc::socklen_t;
    // SAFETY: valid fd and out pointers.
    unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        ) == 0
    }
}

/// A raw ICMP socket (call inside the peer namespace) with a receive timeout.
fn icmp_socket() -> OwnedFd {
    // SAFETY: plain socket calls with valid arguments.
    let fd = owned(
        unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        },
        "raw socket",
    );
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of_val(&tv) as u32,
        )
    };
    fd
}

fn send_echo(fd: &OwnedFd, to: Ipv4Addr, id: u16, payload: &[u8]) {
    let mut m = vec![8u8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(payload);
    let c = csum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let sa = sockaddr(SocketAddrV4::new(to, 0));
    // SAFETY: valid buffer and address.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            m.as_ptr().cast(),
            m.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of_val(&sa) as u32,
        )
    };
    assert_eq!(
        rc as usize,
        m.len(),
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for an ICMP echo reply with `id` from `from`; returns its payload.
fn recv_echo_reply(fd: &OwnedFd, from: Ipv4Addr, id: u16, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = usize::from(p[0] & 0xf) * 4;
        if p.len() < ihl + 8 || p[12..16] != from.octets() {
            continue;
        }
        let icmp = &p[ihl..];
        if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && csum(icmp) == 0 {
            return Some(icmp[8..].to_vec());
        }
    }
    None
}

// ---------------------------------------------------------------- tests

/// (a) The kernel's ARP request for the gateway's address reaches our socket and
/// our ARP reply lands in B's neighbour table; then an ICMP echo from B reaches
/// the socket and our echo reply reaches B's raw socket.
#[test]
fn xdp_arp_and_icmp_for_our_address_round_trip_with_the_kernel() {
    if skip_unless_root("xdp_arp_and_icmp_for_our_address_round_trip_with_the_kernel") {
        return;
    }
    let rig = Rig::new(false); // A has no kernel address: only the gateway answers
    let steer = rig.steer(&SteerConfig {
        local_addrs: vec![GATEWAY],
        ..SteerConfig::default()
    });
    let mut dev = rig.open(Some(steer.clone()));
    let caps = dev.capabilities();
    assert_eq!(caps.mac, rig.mac_a);
    assert_eq!(caps.max_frame, 1514, "1500 MTU + Ethernet header");

    // Any packet from B to 10.99.0.100 makes B's kernel ask for its MAC.
    let udp_b = rig.b.run(|| UdpSocket::bind("10.99.0.2:0").unwrap());
    udp_b.send_to(b"hello", (GATEWAY, 9)).unwrap();
    let (sha, spa) = recv_until(&mut dev, WAIT, |f| match classify(f) {
        Seen::ArpRequest { sha, spa, tpa } if tpa == GATEWAY => Some((sha, spa)),
        _ => None,
    })
    .expect("B's ARP request for 10.99.0.100 never reached the socket");
    assert_eq!((sha, spa), (rig.mac_b, PEER_B));

    let wakeups_before = dev.stats().tx_wakeups;
    let mut sent = false;
    let n = dev
        .transmit(8, |buf| {
            if sent {
                return None;
            }
            sent = true;
            Some(arp_reply(rig.mac_a, GATEWAY, sha, spa, buf))
        })
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        dev.stats().tx_wakeups,
        wakeups_before + 1,
        "one sendto per batch in copy mode"
    );

    let neigh = wait_for(WAIT, || {
        let s = rig
            .b
            .exec_ok(["ip", "neigh", "show", "10.99.0.100", "dev", &rig.if_b])
            .ok()?;
        let ok = s.contains(&fmt_mac(&rig.mac_a))
            && ["REACHABLE", "STALE", "DELAY", "PROBE"]
                .iter()
                .any(|st| s.contains(st));
        ok.then_some(s)
    });
    assert!(
        neigh.is_some(),
        "our ARP reply never made it into B's neighbour table"
    );

    // ICMP echo: B's raw socket → our socket → our reply → B's raw socket.
    let icmp_b = rig.b.run(icmp_socket);
    send_echo(&icmp_b, GATEWAY, 0x4d58, b"xdpmesh-echo");
    let req = recv_until(&mut dev, WAIT, |f| match classify(f) {
        Seen::IcmpEcho { frame } => Some(frame),
        _ => None,
    })
    .expect("B's ICMP echo request never reached the socket");
    let n = dev
        .transmit(1, |buf| Some(icmp_echo_reply(&req, buf)))
        .unwrap();
    assert_eq!(n, 1);
    let payload = recv_echo_reply(&icmp_b, GATEWAY, 0x4d58, WAIT)
        .expect("our echo reply never reached B's raw socket");
    assert_eq!(payload, b"xdpmesh-echo");

    let st = steer.stats().unwrap();
    assert!(st.redirect_arp >= 1, "{st:?}");
    assert!(st.redirect_icmp >= 1, "{st:?}");
    let ds = dev.stats();
    assert!(ds.rx_frames >= 2 && ds.tx_frames == 2, "{ds:?}");
}

/// A worker that falls behind loses frames in the kernel, before our stack sees them:
/// those losses must show in the socket's ring counters (and so on /metrics), once each.
#[test]
fn xdp_frames_lost_when_the_worker_falls_behind_are_counted() {
    if skip_unless_root("xdp_frames_lost_when_the_worker_falls_behind_are_counted") {
        return;
    }
    let rig = Rig::new(false);
    let steer = rig.steer(&SteerConfig {
        local_addrs: vec![GATEWAY],
        ..SteerConfig::default()
    });
    let mut dev = rig.open(Some(steer));
    assert_eq!(
        dev.ring_drops(),
        Default::default(),
        "a fresh socket lost nothing"
    );
    rig.static_neigh_in_b(GATEWAY);
    // Nobody receives: in copy mode the fill ring's 2048 buffers run out first.
    let sent = 3000;
    let icmp_b = rig.b.run(icmp_socket);
    for i in 0..sent {
        send_echo(&icmp_b, GATEWAY, i as u16, b"flood");
    }
    let first = wait_for(WAIT, || {
        let d = dev.ring_drops();
        (d.rx_lost() > 0).then_some(d)
    })
    .unwrap_or_else(|| panic!("no drop counted: {:?}", dev.ring_drops()));
    println!("ring counters after {sent} frames: {first:?}");
    assert!(
        first.rx_dropped > 0 && first.fill_ring_empty > 0,
        "{first:?}"
    );
    // Frames still on their way in are either received or lost, never both.
    while dev.receive(64, |_| {}).unwrap() > 0 {}
    let d = dev.ring_drops();
    let (got, lost) = (dev.stats().rx_frames, d.rx_lost());
    assert!(got > 0, "nothing was received");
    assert!(
        got + lost <= sent,
        "{got} received + {lost} lost > {sent} sent: {d:?}"
    );
    assert_eq!((d.rx_invalid_descs, d.tx_invalid_descs), (0, 0), "{d:?}");
}

/// (b) With steering, our ports reach the socket while a kernel listener on the
/// same (shared) address, a closed port, and UDP still reach the kernel.
#[test]
fn xdp_steering_sends_owned_tcp_to_the_socket_and_the_rest_to_the_kernel() {
    if skip_unless_root("xdp_steering_sends_owned_tcp_to_the_socket_and_the_rest_to_the_kernel") {
        return;
    }
    let rig = Rig::new(true);
    // The gateway shares 10.99.0.1 with the kernel: ARP for it goes to the
    // gateway, which does not answer here, so both sides get static entries.
    rig.static_neigh_in_b(KERNEL_A);
    rig.static_neigh_in_a(PEER_B);
    let steer = rig.steer(&SteerConfig {
        local_addrs: vec![KERNEL_A],
        listeners: vec![SocketAddrV4::new(KERNEL_A, 8080)],
        ephemeral: Some(40000..=40099),
        ..SteerConfig::default()
    });
    let mut dev = rig.open(Some(steer.clone()));

    let (listener, udp_a) = rig.a.run(|| {
        (
            TcpListener::bind("10.99.0.1:7000").unwrap(),
            UdpSocket::bind("10.99.0.1:5000").unwrap(),
        )
    });
    udp_a.set_read_timeout(Some(WAIT)).unwrap();

    // Owned: a listener port and a port of the ephemeral range.
    let (c8080, c40050, c7001) = rig.b.run(|| {
        (
            connect_nonblocking(SocketAddrV4::new(KERNEL_A, 8080)),
            connect_nonblocking(SocketAddrV4::new(KERNEL_A, 40050)),
            connect_nonblocking(SocketAddrV4::new(KERNEL_A, 7001)),
        )
    });
    let mut seen = Vec::new();
    let both = recv_until(&mut dev, WAIT, |f| {
        let s = classify(f);
        if s != Seen::Other {
            seen.push(s);
        }
        let has = |p: u16| {
            seen.contains(&Seen::TcpSyn {
                dst: SocketAddrV4::new(KERNEL_A, p),
            })
        };
        (has(8080) && has(40050)).then_some(())
    });
    assert!(both.is_some(), "owned SYNs missing; socket saw {seen:?}");

    // Not owned: port 7000 (kernel listener) on the same address.
    let stream = rig
        .b
        .run(|| TcpStream::connect_timeout(&"10.99.0.1:7000".parse().unwrap(), WAIT))
        .expect("kernel listener on a non-owned port must be reachable");
    let (_accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(PEER_B));
    drop(stream);

    // Not owned: a closed port gets the kernel's RST.
    let refused = wait_for(WAIT, || {
        (so_error(&c7001) == libc::ECONNREFUSED).then_some(())
    });
    assert!(
        refused.is_some(),
        "the kernel should refuse port 7001 (not owned)"
    );

    // Not owned: UDP to the shared address.
    let udp_b = rig.b.run(|| UdpSocket::bind("10.99.0.2:0").unwrap());
    udp_b.send_to(b"to-kernel", (KERNEL_A, 5000)).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = udp_a
        .recv_from(&mut buf)
        .expect("UDP to a non-owned port reaches the kernel");
    assert_eq!(&buf[..n], b"to-kernel");

    // Drain what arrived meanwhile: nothing the kernel handled may have come to us.
    recv_until(&mut dev, Duration::from_millis(200), |f| {
        seen.push(classify(f));
        None::<()>
    });
    for s in &seen {
        match s {
            Seen::TcpSyn { dst } => assert!(
                [8080, 40050].contains(&dst.port()),
                "non-owned SYN reached the socket: {s:?}"
            ),
            Seen::Udp { .. } => panic!("UDP reached the socket: {s:?}"),
            _ => {}
        }
    }
    assert!(!is_connected(&c8080) && !is_connected(&c40050));
    let st = steer.stats().unwrap();
    assert!(st.redirect_tcp >= 2 && st.pass >= 3, "{st:?}");
}

/// (c) A port we own with no socket on the queue is dropped, not passed: the
/// kernel, which has the address but no listener, would answer RST.
#[test]
fn xdp_owned_port_without_socket_is_dropped_not_reset() {
    if skip_unless_root("xdp_owned_port_without_socket_is_dropped_not_reset") {
        return;
    }
    let rig = Rig::new(true);
    rig.static_neigh_in_b(KERNEL_A);
    rig.static_neigh_in_a(PEER_B);
    let steer = rig.steer(&SteerConfig {
        local_addrs: vec![KERNEL_A],
        listeners: vec![SocketAddrV4::new(KERNEL_A, 8080)],
        ..SteerConfig::default()
    });
    // No XskDevice: the XSKMAP slot for queue 0 stays empty.

    // Control: a closed port that we do not own is refused by the kernel.
    let c7001 = rig
        .b
        .run(|| connect_nonblocking(SocketAddrV4::new(KERNEL_A, 7001)));
    let refused = wait_for(WAIT, || {
        (so_error(&c7001) == libc::ECONNREFUSED).then_some(())
    });
    assert!(
        refused.is_some(),
        "control: the kernel must RST a closed port"
    );
    let out_rsts = || {
        rig.a
            .nstat()
            .unwrap()
            .get("TcpOutRsts")
            .copied()
            .unwrap_or(0)
    };
    let rsts_before = out_rsts();
    assert!(rsts_before >= 1, "control: A's kernel counted its RST");

    let c8080 = rig
        .b
        .run(|| connect_nonblocking(SocketAddrV4::new(KERNEL_A, 8080)));
    // The first SYN and B's retransmission (about 1 s later) both hit XDP_DROP;
    // an RST would have answered the first one long before the retransmission.
    let dropped = wait_for(WAIT, || {
        let st = steer.stats().ok()?;
        (st.drop_no_socket >= 2).then_some(st)
    });
    let st = dropped.expect("owned SYNs should be counted as dropped for lack of a socket");
    assert_eq!(st.redirect_tcp, 0, "{st:?}");
    assert_eq!(so_error(&c8080), 0, "no RST may reach B for an owned port");
    assert!(!is_connected(&c8080));
    assert_eq!(
        out_rsts(),
        rsts_before,
        "A's kernel sent an RST for an owned port"
    );
}

/// (d) After the socket and program close, `ip link` shows no XDP program; the
/// same holds when the owning process is killed (SIGKILL: no destructor runs).
#[test]
fn xdp_program_detaches_on_close_and_on_process_death() {
    if skip_unless_root("xdp_program_detaches_on_close_and_on_process_death") {
        return;
    }
    let rig = Rig::new(false);
    let steer = rig.steer(&SteerConfig {
        local_addrs: vec![GATEWAY],
        ..SteerConfig::default()
    });
    let id = steer.prog_id();
    let dev = rig.open(Some(steer.clone()));
    let shown = rig.link_a();
    assert!(
        shown.contains(&format!("prog/xdp id {id}")),
        "attached: {shown}"
    );
    drop(dev);
    drop(steer);
    let gone = wait_for(WAIT, || (!rig.link_a().contains("xdp")).then_some(()));
    assert!(
        gone.is_some(),
        "still attached after close: {}",
        rig.link_a()
    );

    // A child process (this test binary, running the helper below) attaches and
    // binds, then dies by SIGKILL.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "xdp_child_holds_program_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "XDPMESH_XDP_CHILD",
            format!("{} {}", rig.a.name(), rig.if_a),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test <name> ... " on the same line first.
        .find_map(|l| {
            l.split("XDP-CHILD-READY ")
                .nth(1)
                .map(|id| id.trim().to_string())
        });
    let Some(child_id) = ready else {
        let _ = child.kill();
        panic!("child never attached: {:?}", child.wait());
    };
    let shown = rig.link_a();
    assert!(
        shown.contains(&format!("prog/xdp id {child_id}")),
        "child attached: {shown}"
    );
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    let gone = wait_for(WAIT, || (!rig.link_a().contains("xdp")).then_some(()));
    assert!(
        gone.is_some(),
        "still attached after the owner died: {}",
        rig.link_a()
    );

    // And the queue is free again for a new owner.
    let steer = rig.steer(&SteerConfig::default());
    let _dev = rig.open(Some(steer));
}

/// Helper process for the test above: attaches, binds, reports, waits to be killed.
#[test]
#[ignore = "helper: run by xdp_program_detaches_on_close_and_on_process_death"]
fn xdp_child_holds_program_until_killed() {
    let Ok(spec) = std::env::var("XDPMESH_XDP_CHILD") else {
        eprintln!("helper only: needs XDPMESH_XDP_CHILD=<netns> <ifname>");
        return;
    };
    let (ns, ifname) = spec.split_once(' ').expect("netns and ifname");
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: enter the namespace on this thread; it never leaves.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    let steer = Arc::new(
        Steering::attach(ifname, XdpMode::Native, &SteerConfig::default(), RETRY).unwrap(),
    );
    let _dev = XskDevice::open(&XskConfig::new(ifname, 0), Some(steer.clone())).unwrap();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    println!("XDP-CHILD-READY {}", steer.prog_id());
    // Held until SIGKILL; leave on our own if the parent test is gone or stuck.
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up && unsafe { libc::getppid() } == parent {
        std::thread::park_timeout(Duration::from_millis(200));
    }
    std::process::exit(1);
}

/// (e) Closing and at once re-binding the same queue works (EBUSY retried), and
/// the new socket receives.
#[test]
fn xdp_rebind_right_after_close_works() {
    if skip_unless_root("xdp_rebind_right_after_close_works") {
        return;
    }
    let rig = Rig::new(false);
    let cfg = SteerConfig {
        local_addrs: vec![GATEWAY],
        ..SteerConfig::default()
    };
    let mut attempts = Vec::new();
    // Same program, socket closed and re-bound at once.
    let steer = rig.steer(&cfg);
    let mut dev = rig.open(Some(steer.clone()));
    for _ in 0..20 {
        drop(dev);
        dev = rig.open(Some(steer.clone()));
        attempts.push(dev.stats().bind_attempts);
    }
    drop(steer);
    // Program and socket closed (detached), then both set up again at once.
    for _ in 0..5 {
        drop(dev); // also drops the last Steering handle
        dev = rig.open(Some(rig.steer(&cfg)));
        attempts.push(dev.stats().bind_attempts);
    }
    eprintln!("bind attempts per re-bind: {attempts:?}");

    let udp_b = rig.b.run(|| UdpSocket::bind("10.99.0.2:0").unwrap());
    udp_b.send_to(b"x", (GATEWAY, 9)).unwrap();
    let got = recv_until(&mut dev, WAIT, |f| {
        matches!(classify(f), Seen::ArpRequest { tpa, .. } if tpa == GATEWAY).then_some(())
    });
    assert!(got.is_some(), "the re-bound socket receives nothing");
}

/// A batch of 32 frames goes out with one wakeup and every frame reaches a
/// kernel UDP socket in B.
#[test]
fn xdp_tx_batch_reaches_the_kernel_with_one_wakeup() {
    if skip_unless_root("xdp_tx_batch_reaches_the_kernel_with_one_wakeup") {
        return;
    }
    let rig = Rig::new(false);
    let steer = rig.steer(&SteerConfig {
        local_addrs: vec![GATEWAY],
        ..SteerConfig::default()
    });
    let mut dev = rig.open(Some(steer));
    let sink = rig.b.run(|| UdpSocket::bind("10.99.0.2:6000").unwrap());
    sink.set_read_timeout(Some(WAIT)).unwrap();

    let before = dev.stats();
    let mut i = 0u32;
    let n = dev
        .transmit(32, |buf| {
            i += 1;
            let payload = i.to_be_bytes();
            Some(udp_frame(
                rig.mac_a,
                rig.mac_b,
                SocketAddrV4::new(GATEWAY, 40000),
                SocketAddrV4::new(PEER_B, 6000),
                &payload,
                buf,
            ))
        })
        .unwrap();
    assert_eq!(n, 32);
    let after = dev.stats();
    assert_eq!(after.tx_batches - before.tx_batches, 1);
    assert_eq!(
        after.tx_wakeups - before.tx_wakeups,
        1,
        "one sendto for the whole batch"
    );

    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < 32 {
        let (len, from) = sink.recv_from(&mut buf).expect("UDP frame from our socket");
        assert_eq!(
            from,
            std::net::SocketAddr::V4(SocketAddrV4::new(GATEWAY, 40000))
        );
        got.push(u32::from_be_bytes(buf[..len].try_into().unwrap()));
    }
    got.sort_unstable();
    assert_eq!(got, (1..=32).collect::<Vec<_>>());

    // A callback bug (length 0 or past the buffer) drops that frame, counted,
    // and costs no wakeup.
    let mut calls = 0;
    let n = dev
        .transmit(4, |buf| {
            calls += 1;
            Some(if calls == 1 { 0 } else { buf.len() + 1 })
        })
        .unwrap();
    assert_eq!((n, calls), (0, 4));
    assert_eq!(dev.stats().tx_bad_len, 4);
    assert_eq!(dev.stats().tx_wakeups, after.tx_wakeups);

    // The frames come back through the completion ring.
    let all_back = wait_for(WAIT, || {
        dev.reclaim_completions();
        (dev.tx_free() == 2048).then_some(())
    });
    assert!(
        all_back.is_some(),
        "TX frames not recycled: {} free",
        dev.tx_free()
    );
}

/// Dedicated mode steers everything, UDP and IPv6 included.
#[test]
fn xdp_dedicated_mode_steers_everything() {
    if skip_unless_root("xdp_dedicated_mode_steers_everything") {
        return;
    }
    let rig = Rig::new(true);
    rig.static_neigh_in_b(KERNEL_A);
    let steer = rig.steer(&SteerConfig {
        dedicated: true,
        ..SteerConfig::default()
    });
    let mut dev = rig.open(Some(steer.clone()));
    let udp_a = rig.a.run(|| UdpSocket::bind("10.99.0.1:5000").unwrap());
    udp_a.set_nonblocking(true).unwrap();
    let udp_b = rig.b.run(|| UdpSocket::bind("10.99.0.2:0").unwrap());
    udp_b.send_to(b"dedicated", (KERNEL_A, 5000)).unwrap();
    let got = recv_until(&mut dev, WAIT, |f| {
        (classify(f)
            == Seen::Udp {
                dst: SocketAddrV4::new(KERNEL_A, 5000),
            })
        .then_some(())
    });
    assert!(got.is_some(), "UDP not steered in dedicated mode");
    let mut buf = [0u8; 16];
    assert!(
        udp_a.recv_from(&mut buf).is_err(),
        "the kernel must not see it too"
    );
    assert!(steer.stats().unwrap().redirect_dedicated >= 1);
}
