//! The TAP backend and the netns test helpers against the real kernel (root; run in CI).
//!
//! Each test makes its own namespace, moves a TAP interface into it (the kernel peer) and keeps
//! the TAP fd here, where the test plays a tiny hand-written stack: it reads the kernel's ARP and
//! IPv4 frames byte by byte and writes answers, then checks what the kernel made of them (ping's
//! exit code, the neighbour table, interface and nstat counters).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::netns::{self, skip_unless_root, wait_for, NetNs};
use dataplane::tap::TapDevice;

const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x77, 0x00, 0x02];
const BROADCAST: [u8; 6] = [0xff; 6];
const DEADLINE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- frames, by hand

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp(oper: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    a.extend_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&oper.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// IPv4 packet (20-byte header, DF, TTL 64) with a correct header checksum.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn icmp_echo(kind: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = checksum(&[&m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn tcp_pseudo(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// A bare TCP SYN (20-byte header) with a correct checksum.
fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // offset 5, SYN, window
    let c = checksum(&[&tcp_pseudo(src, dst, t.len()), &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

struct ArpView {
    eth_dst: [u8; 6],
    oper: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tpa: Ipv4Addr,
}

fn mac_at(f: &[u8], at: usize) -> [u8; 6] {
    let mut m = [0; 6];
    m.copy_from_slice(&f[at..at + 6]);
    m
}

fn ip_at(f: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3])
}

/// The 42-byte Ethernet + ARP frame, parsed by offset (RFC 826).
fn parse_arp(f: &[u8]) -> Option<ArpView> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] {
        return None;
    }
    if f[14..16] != [0, 1] || f[16..18] != [0x08, 0x00] || f[18] != 6 || f[19] != 4 {
        return None;
    }
    Some(ArpView {
        eth_dst: mac_at(f, 0),
        oper: u16::from_be_bytes([f[20], f[21]]),
        sha: mac_at(f, 22),
        spa: ip_at(f, 28),
        tpa: ip_at(f, 38),
    })
}

struct Ipv4View<'a> {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    header: &'a [u8],
    payload: &'a [u8],
}

fn parse_ipv4(f: &[u8]) -> Option<Ipv4View<'_>> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    if ihl < 20 || total < ihl || f.len() < 14 + total {
        return None;
    }
    Some(Ipv4View {
        eth_dst: mac_at(f, 0),
        eth_src: mac_at(f, 6),
        proto: f[23],
        src: ip_at(f, 26),
        dst: ip_at(f, 30),
        header: &f[14..14 + ihl],
        payload: &f[14 + ihl..14 + total],
    })
}

// ---------------------------------------------------------------- rig

struct Peer {
    ns: NetNs,
    tap: TapDevice,
    kernel_mac: [u8; 6],
    kernel_ip: Ipv4Addr,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

/// A fresh namespace whose kernel owns `kernel_ip`/24 on a TAP interface; we keep the fd.
fn kernel_peer(kernel_ip: Ipv4Addr) -> Peer {
    let ns = NetNs::create("tk").expect("create netns");
    let tap = TapDevice::create(&netns::unique_name("tap")).expect("create tap");
    let name = tap.name().to_string();
    let out = Command::new("ip")
        .args(["link", "set", "dev", &name, "netns", ns.name()])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "move tap: {out:?}");
    // IPv6 off keeps router solicitations and MLD reports off the fd.
    ns.exec_ok([
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{name}.disable_ipv6=1"),
    ])
    .unwrap();
    ns.exec_ok([
        "ip",
        "addr",
        "add",
        &format!("{kernel_ip}/24"),
        "dev",
        &name,
    ])
    .unwrap();
    ns.exec_ok(["ip", "link", "set", &name, "up"]).unwrap();
    ns.exec_ok(["ethtool", "-K", &name, "tx", "off"]).unwrap();
    let features = ns.exec_ok(["ethtool", "-k", &name]).unwrap();
    assert!(
        features.lines().any(|l| l.trim() == "tx-checksumming: off"),
        "tx checksum offload still on:\n{features}"
    );
    let link = ns
        .exec_ok(["ip", "-o", "link", "show", "dev", &name])
        .unwrap();
    let kernel_mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no MAC in {link}"));
    Peer {
        ns,
        tap,
        kernel_mac,
        kernel_ip,
    }
}

impl Peer {
    /// The next frame for which `pick` returns `Some`, skipping others, within [`DEADLINE`].
    fn recv_until<T>(&mut self, what: &str, mut pick: impl FnMut(&[u8]) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} on the TAP within {DEADLINE:?}");
            if !self.tap.wait_readable(left).expect("poll tap") {
                continue;
            }
            while let Some(n) = self.tap.recv(&mut buf).expect("read tap") {
                if let Some(v) = pick(&buf[..n]) {
                    return v;
                }
            }
        }
    }

    fn stat(&self, counter: &str) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/{counter}", self.tap.name());
        self.ns
            .exec_ok(["cat", &path])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn nstat(&self, key: &str) -> u64 {
        let all = self.ns.nstat().expect("nstat");
        *all.get(key).unwrap_or_else(|| panic!("nstat has no {key}"))
    }

    /// Waits until nstat `key` reaches at least `want`; returns the value seen.
    fn await_nstat(&self, key: &str, want: u64) -> u64 {
        wait_for(DEADLINE, || Some(self.nstat(key)).filter(|v| *v >= want))
            .unwrap_or_else(|| panic!("{key} stayed below {want}: {}", self.nstat(key)))
    }

    /// Sends an IPv4 packet from OUR_MAC to the kernel's MAC.
    fn send_ip(&mut self, packet: &[u8]) {
        let frame = ethernet(self.kernel_mac, OUR_MAC, 0x0800, packet);
        self.tap.send(&frame).expect("write tap");
    }

    /// Answers the kernel's ARP request for `ours` (waits for it first).
    fn answer_arp(&mut self, ours: Ipv4Addr) {
        let (kmac, kip) = (self.kernel_mac, self.kernel_ip);
        let req = self.recv_until("ARP request", |f| {
            parse_arp(f).filter(|a| a.oper == 1 && a.tpa == ours)
        });
        assert_eq!(req.eth_dst, BROADCAST);
        assert_eq!(req.sha, kmac, "ARP sender MAC is the TAP's");
        assert_eq!(req.spa, kip);
        let reply = arp(2, OUR_MAC, ours, kmac, kip);
        let frame = ethernet(kmac, OUR_MAC, 0x0806, &reply);
        assert_eq!(frame.len(), 42);
        self.tap.send(&frame).expect("write ARP reply");
    }
}

// ---------------------------------------------------------------- tests

/// The kernel ARPs for a silent neighbour through our fd; our reply lands in its neighbour table;
/// the ping it had queued then reaches us and our echo reply completes it.
#[test]
fn kernel_arp_request_and_ping_through_tap() {
    if skip_unless_root("kernel_arp_request_and_ping_through_tap") {
        return;
    }
    let ours = Ipv4Addr::new(10, 77, 1, 2);
    let mut peer = kernel_peer(Ipv4Addr::new(10, 77, 1, 1));
    let (rx0, tx0) = (peer.stat("rx_packets"), peer.stat("tx_packets"));
    let echos0 = peer.nstat("IcmpOutEchos");
    let reps0 = peer.nstat("IcmpInEchoReps");

    let mut ping = peer
        .ns
        .spawn(["ping", "-c1", "-W5", &ours.to_string()])
        .expect("spawn ping");

    // The 42-byte request, parsed by hand.
    let (kmac, kip) = (peer.kernel_mac, peer.kernel_ip);
    let req = peer.recv_until("ARP request", |f| {
        parse_arp(f)
            .filter(|a| a.oper == 1 && a.tpa == ours)
            .map(|a| (f.len(), a))
    });
    assert_eq!(req.0, 42, "ARP request frame length");
    assert_eq!(req.1.eth_dst, BROADCAST);
    assert_eq!(req.1.sha, kmac);
    assert_eq!(req.1.spa, kip);

    let reply = ethernet(kmac, OUR_MAC, 0x0806, &arp(2, OUR_MAC, ours, kmac, kip));
    peer.tap.send(&reply).expect("write ARP reply");

    // The kernel now knows our MAC.
    let neigh = wait_for(DEADLINE, || {
        let out = peer
            .ns
            .exec_ok([
                "ip",
                "neigh",
                "show",
                &ours.to_string(),
                "dev",
                peer.tap.name(),
            ])
            .ok()?;
        let known = out.contains("lladdr 02:00:00:77:00:02")
            && ["REACHABLE", "STALE", "DELAY"]
                .iter()
                .any(|s| out.contains(s));
        known.then_some(out)
    });
    assert!(
        neigh.is_some(),
        "neighbour entry for {ours} never showed our MAC"
    );

    // The queued echo request comes to our MAC, with checksums the kernel computed in full.
    let request = peer.recv_until("ICMP echo request", |f| {
        let ip = parse_ipv4(f)?;
        (ip.proto == 1 && ip.dst == ours && ip.payload.first() == Some(&8)).then(|| {
            assert_eq!(ip.eth_dst, OUR_MAC);
            assert_eq!(ip.eth_src, kmac);
            assert_eq!(ip.src, kip);
            assert_eq!(checksum(&[ip.header]), 0, "IPv4 header checksum");
            assert_eq!(checksum(&[ip.payload]), 0, "ICMP checksum");
            ip.payload.to_vec()
        })
    });
    let (id, seq) = (
        u16::from_be_bytes([request[4], request[5]]),
        u16::from_be_bytes([request[6], request[7]]),
    );
    let answer = icmp_echo(0, id, seq, &request[8..]);
    peer.send_ip(&ipv4(ours, kip, 1, &answer));

    let status =
        wait_for(DEADLINE, || ping.try_wait().expect("wait ping")).expect("ping did not finish");
    assert!(status.success(), "ping exit: {status}");

    assert!(
        peer.stat("rx_packets") >= rx0 + 2,
        "ARP reply + echo reply received"
    );
    assert!(
        peer.stat("tx_packets") >= tx0 + 2,
        "ARP request + echo request sent"
    );
    assert_eq!(peer.nstat("IcmpOutEchos"), echos0 + 1);
    assert_eq!(peer.nstat("IcmpInEchoReps"), reps0 + 1);
    assert_eq!(peer.nstat("IcmpInCsumErrors"), 0);
    assert_eq!(peer.nstat("IpExtInCsumErrors"), 0);
}

/// Frames we write are checked by the kernel: good ones are answered, bad checksums are counted
/// under the nstat names the interop tests assert on, and a SYN to a closed port gets an RST.
#[test]
fn kernel_answers_and_counts_checksum_errors() {
    if skip_unless_root("kernel_answers_and_counts_checksum_errors") {
        return;
    }
    let ours = Ipv4Addr::new(10, 77, 2, 2);
    let mut peer = kernel_peer(Ipv4Addr::new(10, 77, 2, 1));
    let kip = peer.kernel_ip;

    // A good echo request: the kernel ARPs for us before it can answer.
    let in_echos = peer.nstat("IcmpInEchos");
    peer.send_ip(&ipv4(ours, kip, 1, &icmp_echo(8, 0x77, 1, b"xdpmesh")));
    peer.answer_arp(ours);
    let reply = peer.recv_until("ICMP echo reply", |f| {
        let ip = parse_ipv4(f)?;
        (ip.proto == 1 && ip.dst == ours && ip.payload.first() == Some(&0))
            .then(|| ip.payload.to_vec())
    });
    assert_eq!(&reply[8..], b"xdpmesh");
    assert_eq!(checksum(&[&reply]), 0);
    assert_eq!(peer.nstat("IcmpInEchos"), in_echos + 1);

    // Bad IPv4 header checksum.
    let ip_csum0 = peer.nstat("IpExtInCsumErrors");
    let mut bad = ipv4(ours, kip, 1, &icmp_echo(8, 0x77, 2, b"x"));
    bad[10] ^= 0x55;
    peer.send_ip(&bad);
    peer.await_nstat("IpExtInCsumErrors", ip_csum0 + 1);

    // Bad ICMP checksum under a good IP header.
    let icmp_csum0 = peer.nstat("IcmpInCsumErrors");
    let mut msg = icmp_echo(8, 0x77, 3, b"x");
    msg[2] ^= 0x55;
    peer.send_ip(&ipv4(ours, kip, 1, &msg));
    peer.await_nstat("IcmpInCsumErrors", icmp_csum0 + 1);

    // Bad TCP checksum: counted, and no RST for it.
    let tcp_csum0 = peer.nstat("TcpInCsumErrors");
    let rsts0 = peer.nstat("TcpOutRsts");
    let mut syn = tcp_syn(ours, kip, 40000, 9, 1000);
    syn[16] ^= 0x55;
    peer.send_ip(&ipv4(ours, kip, 6, &syn));
    peer.await_nstat("TcpInCsumErrors", tcp_csum0 + 1);
    assert_eq!(peer.nstat("TcpOutRsts"), rsts0);

    // A good SYN to a closed port: RST+ACK back (RFC 9293 3.10.7.1), counted as TcpOutRsts.
    peer.send_ip(&ipv4(ours, kip, 6, &tcp_syn(ours, kip, 40001, 9, 5000)));
    let rst = peer.recv_until("TCP RST", |f| {
        let ip = parse_ipv4(f)?;
        (ip.proto == 6 && ip.dst == ours && ip.payload.len() >= 20).then(|| {
            let pseudo = tcp_pseudo(ip.src, ip.dst, ip.payload.len());
            assert_eq!(
                checksum(&[&pseudo, ip.payload]),
                0,
                "TCP checksum of the RST"
            );
            ip.payload.to_vec()
        })
    });
    assert_eq!(u16::from_be_bytes([rst[0], rst[1]]), 9);
    assert_eq!(u16::from_be_bytes([rst[2], rst[3]]), 40001);
    assert_eq!(rst[13] & 0x14, 0x14, "RST and ACK set");
    assert_eq!(u32::from_be_bytes([rst[8], rst[9], rst[10], rst[11]]), 5001);
    assert_eq!(peer.nstat("TcpOutRsts"), rsts0 + 1);
    assert_eq!(peer.nstat("TcpInCsumErrors"), tcp_csum0 + 1);
}

/// `run` puts sockets in the namespace; `add_loss` drops about the asked share and counts it;
/// `clear_loss` removes it.
#[test]
fn netns_run_and_loss() {
    if skip_unless_root("netns_run_and_loss") {
        return;
    }
    let ns = NetNs::create("tl").expect("netns");
    ns.exec_ok(["ip", "addr", "add", "10.77.3.1/32", "dev", "lo"])
        .unwrap();
    let addr: SocketAddr = "10.77.3.1:0".parse().unwrap();
    // The address exists only inside.
    assert!(
        UdpSocket::bind(addr).is_err(),
        "10.77.3.1 bound outside the namespace"
    );

    // Sends `n` datagrams to a socket in the namespace, from inside it, and accounts for each
    // one: read by us, refused for a full receive buffer, or dropped by the loss rule.
    // Returns (dropped, read).
    let blast = |n: u64| -> (u64, u64) {
        let rcvbuf0 = ns.nstat().unwrap()["UdpRcvbufErrors"];
        let (rx, mut read) = ns.run(|| {
            let rx = UdpSocket::bind(addr).expect("bind inside");
            rx.set_nonblocking(true).unwrap();
            let tx = UdpSocket::bind(addr).expect("bind inside");
            let to = rx.local_addr().unwrap();
            let mut read = 0;
            for i in 0..n {
                tx.send_to(&i.to_be_bytes(), to).expect("send");
                read += drain(&rx);
            }
            (rx, read)
        });
        wait_for(DEADLINE, || {
            read += drain(&rx);
            let dropped = ns.loss_dropped().unwrap_or(0);
            let refused = ns.nstat().ok()?["UdpRcvbufErrors"] - rcvbuf0;
            (dropped + read + refused == n).then_some((dropped, read))
        })
        .unwrap_or_else(|| panic!("{n} datagrams not all accounted for: read {read}"))
    };

    ns.add_loss(100.0).unwrap();
    assert_eq!(blast(10), (10, 0));

    // Replacing the rule resets its counter; about half gets through.
    ns.add_loss(50.0).unwrap();
    let (dropped, read) = blast(1000);
    // Binomial(1000, 0.5): sd 16, so +-100 is over 6 sd.
    assert!(
        (400..=600).contains(&dropped),
        "dropped {dropped}, read {read}"
    );
    assert!(read > 0);

    ns.clear_loss().unwrap();
    assert!(ns.loss_dropped().is_err(), "loss table still there");
    assert_eq!(blast(100).0, 0);
}

fn drain(rx: &UdpSocket) -> u64 {
    let mut buf = [0u8; 64];
    let mut n = 0;
    while rx.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Dropping a `NetNs` stops what runs inside and deletes the namespace.
#[test]
fn netns_drop_cleans_up() {
    if skip_unless_root("netns_drop_cleans_up") {
        return;
    }
    let ns = NetNs::create("td").expect("netns");
    let name = ns.name().to_string();
    let mut child = ns.spawn(["sleep", "600"]).expect("spawn");
    assert_eq!(ns.pids().unwrap(), vec![child.id() as i32]);
    drop(ns);
    let status = wait_for(DEADLINE, || child.try_wait().expect("wait"))
        .expect("process inside the namespace still runs");
    assert!(!status.success());
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.split_whitespace().any(|w| w == name),
        "{name} still listed:\n{list}"
    );
}
