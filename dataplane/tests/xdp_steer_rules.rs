//! The steering program's rules, frame by frame, run in the kernel with
//! `BPF_PROG_TEST_RUN` (root; the program is attached to a veth in a fresh
//! namespace because `Steering` always attaches). No socket is registered, so an
//! owned frame shows as its fallback action: owned TCP → drop, owned ARP/ICMP →
//! pass counted as `pass_no_socket`. Malformed and foreign frames must pass and
//! be counted as `pass` (or `pass_fragment`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dataplane::netns::{skip_unless_root, unique_name, NetNs};
use dataplane::xdp::{SteerConfig, SteerStats, Steering, XdpMode};

const DROP: u32 = 1;
const PASS: u32 = 2;

const LOCAL: [u8; 4] = [10, 99, 0, 1];
const OTHER: [u8; 4] = [10, 99, 0, 9];
const PEER: [u8; 4] = [10, 99, 0, 2];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// IPv4 header with `opt_words` 4-byte option words, then `l4`.
fn ipv4(proto: u8, dst: [u8; 4], frag: u16, opt_words: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(0x0800);
    let ihl = 5 + opt_words;
    let total = u16::from(ihl) * 4 + l4.len() as u16;
    f.push(0x40 | ihl);
    f.push(0);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0]);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&dst);
    f.extend(std::iter::repeat_n(1u8, usize::from(opt_words) * 4)); // NOP options
    f.extend_from_slice(l4);
    f
}

fn tcp_syn(dport: u16) -> Vec<u8> {
    let mut t = vec![0xc3, 0x50];
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn tcp_to(dst: [u8; 4], dport: u16) -> Vec<u8> {
    ipv4(6, dst, 0, 0, &tcp_syn(dport))
}

fn arp(op: u16, tpa: [u8; 4]) -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&[2, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

fn diff(after: SteerStats, before: SteerStats) -> SteerStats {
    SteerStats {
        pass: after.pass - before.pass,
        redirect_tcp: after.redirect_tcp - before.redirect_tcp,
        redirect_arp: after.redirect_arp - before.redirect_arp,
        redirect_icmp: after.redirect_icmp - before.redirect_icmp,
        redirect_dedicated: after.redirect_dedicated - before.redirect_dedicated,
        drop_no_socket: after.drop_no_socket - before.drop_no_socket,
        pass_no_socket: after.pass_no_socket - before.pass_no_socket,
        pass_fragment: after.pass_fragment - before.pass_fragment,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Count {
    Pass,
    DropNoSocket,
    PassNoSocket,
    PassFragment,
}

fn expect(steer: &Steering, name: &str, frame: &[u8], action: u32, count: Count) {
    let before = steer.stats().unwrap();
    let got = steer
        .test_run(frame)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let d = diff(steer.stats().unwrap(), before);
    assert_eq!(got, action, "{name}: action");
    let want = match count {
        Count::Pass => SteerStats {
            pass: 1,
            ..SteerStats::default()
        },
        Count::DropNoSocket => SteerStats {
            drop_no_socket: 1,
            ..SteerStats::default()
        },
        Count::PassNoSocket => SteerStats {
            pass_no_socket: 1,
            ..SteerStats::default()
        },
        Count::PassFragment => SteerStats {
            pass_fragment: 1,
            ..SteerStats::default()
        },
    };
    assert_eq!(d, want, "{name}: counters");
}

#[test]
fn xdp_steering_rules_frame_by_frame() {
    if skip_unless_root("xdp_steering_rules_frame_by_frame") {
        return;
    }
    let ns = NetNs::create("xdr").unwrap();
    let (v0, v1) = (unique_name("xr0"), unique_name("xr1"));
    ns.exec_ok([
        "ip", "link", "add", &v0, "type", "veth", "peer", "name", &v1,
    ])
    .unwrap();
    ns.exec_ok(["ip", "link", "set", &v0, "up"]).unwrap();
    let cfg = SteerConfig {
        dedicated: false,
        local_addrs: vec![Ipv4Addr::from(LOCAL)],
        listeners: vec![
            SocketAddrV4::new(Ipv4Addr::from(LOCAL), 8080),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9090),
        ],
        ephemeral: Some(40000..=40099),
    };
    let (v, c) = (v0.clone(), cfg.clone());
    let steer = ns
        .run(move || Steering::attach(&v, XdpMode::Native, &c, Duration::from_secs(2)))
        .unwrap();

    use Count::*;
    // Owned TCP: listener, wildcard listener, both ends of the ephemeral range.
    expect(&steer, "listener", &tcp_to(LOCAL, 8080), DROP, DropNoSocket);
    expect(
        &steer,
        "wildcard listener",
        &tcp_to(LOCAL, 9090),
        DROP,
        DropNoSocket,
    );
    expect(
        &steer,
        "ephemeral low",
        &tcp_to(LOCAL, 40000),
        DROP,
        DropNoSocket,
    );
    expect(
        &steer,
        "ephemeral high",
        &tcp_to(LOCAL, 40099),
        DROP,
        DropNoSocket,
    );
    expect(
        &steer,
        "IP options",
        &ipv4(6, LOCAL, 0, 3, &tcp_syn(8080)),
        DROP,
        DropNoSocket,
    );
    expect(
        &steer,
        "first fragment",
        &ipv4(6, LOCAL, 0x2000, 0, &tcp_syn(8080)),
        DROP,
        DropNoSocket,
    );
    // Not owned TCP.
    expect(&steer, "below range", &tcp_to(LOCAL, 39999), PASS, Pass);
    expect(&steer, "above range", &tcp_to(LOCAL, 40100), PASS, Pass);
    expect(&steer, "other port", &tcp_to(LOCAL, 22), PASS, Pass);
    expect(&steer, "other address", &tcp_to(OTHER, 8080), PASS, Pass);
    expect(
        &steer,
        "UDP to listener port",
        &ipv4(17, LOCAL, 0, 0, &[0, 1, 0x1f, 0x90, 0, 8, 0, 0]),
        PASS,
        Pass,
    );
    expect(
        &steer,
        "later fragment",
        &ipv4(6, LOCAL, 0x0001, 0, &tcp_syn(8080)),
        PASS,
        PassFragment,
    );
    // ARP and ICMP for local addresses.
    expect(
        &steer,
        "ARP request for us",
        &arp(1, LOCAL),
        PASS,
        PassNoSocket,
    );
    expect(
        &steer,
        "ARP reply to us",
        &arp(2, LOCAL),
        PASS,
        PassNoSocket,
    );
    expect(&steer, "ARP for another", &arp(1, OTHER), PASS, Pass);
    expect(
        &steer,
        "ICMP to us",
        &ipv4(1, LOCAL, 0, 0, &[8, 0, 0, 0, 0, 1, 0, 1]),
        PASS,
        PassNoSocket,
    );
    expect(
        &steer,
        "ICMP to another",
        &ipv4(1, OTHER, 0, 0, &[8, 0, 0, 0, 0, 1, 0, 1]),
        PASS,
        Pass,
    );
    // Malformed or foreign: pass, counted.
    expect(&steer, "bare Ethernet", &eth(0x0800), PASS, Pass);
    let mut short_ip = tcp_to(LOCAL, 8080);
    short_ip.truncate(14 + 12);
    expect(&steer, "truncated IPv4 header", &short_ip, PASS, Pass);
    let mut short_tcp = tcp_to(LOCAL, 8080);
    short_tcp.truncate(14 + 20 + 10);
    expect(&steer, "truncated TCP header", &short_tcp, PASS, Pass);
    let mut bad_ihl = tcp_to(LOCAL, 8080);
    bad_ihl[14] = 0x44;
    expect(&steer, "IHL below 5", &bad_ihl, PASS, Pass);
    let mut v6_in_v4 = tcp_to(LOCAL, 8080);
    v6_in_v4[14] = 0x65;
    expect(&steer, "version 6 in an IPv4 frame", &v6_in_v4, PASS, Pass);
    let mut big_ihl = tcp_to(LOCAL, 8080);
    big_ihl[14] = 0x4f; // 60-byte header: the TCP header would start past the end
    expect(&steer, "IHL beyond the frame", &big_ihl, PASS, Pass);
    let mut short_arp = arp(1, LOCAL);
    short_arp.truncate(14 + 20);
    expect(&steer, "truncated ARP", &short_arp, PASS, Pass);
    let mut ipx_arp = arp(1, LOCAL);
    ipx_arp[16] = 0x81; // protocol type not IPv4
    expect(&steer, "ARP for another protocol", &ipx_arp, PASS, Pass);
    let mut vlan = eth(0x8100);
    vlan.extend_from_slice(&[0, 5, 0x08, 0x00]);
    vlan.extend_from_slice(&tcp_to(LOCAL, 8080)[14..]);
    expect(&steer, "VLAN-tagged", &vlan, PASS, Pass);
    let mut v6 = eth(0x86dd);
    v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    v6.extend_from_slice(&[0; 32]);
    v6.extend_from_slice(&tcp_syn(8080));
    expect(&steer, "IPv6", &v6, PASS, Pass);

    // Reconfiguration is live: the listener goes, the range goes, dedicated comes.
    steer
        .configure(&SteerConfig {
            listeners: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9090)],
            ephemeral: None,
            ..cfg.clone()
        })
        .unwrap();
    expect(&steer, "removed listener", &tcp_to(LOCAL, 8080), PASS, Pass);
    expect(
        &steer,
        "kept listener",
        &tcp_to(LOCAL, 9090),
        DROP,
        DropNoSocket,
    );
    expect(&steer, "removed range", &tcp_to(LOCAL, 40000), PASS, Pass);
    steer
        .configure(&SteerConfig {
            dedicated: true,
            ..SteerConfig::default()
        })
        .unwrap();
    expect(&steer, "dedicated: IPv6", &v6, DROP, DropNoSocket);
    expect(
        &steer,
        "dedicated: bare Ethernet",
        &eth(0x0800),
        DROP,
        DropNoSocket,
    );
}
