//! Every malformed or unwanted input is dropped with a named reason. Each scenario below
//! triggers one reason; the last test checks that no reason is left without a scenario.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::time::Duration;
use tcpstack::wire::tcp::Flags;
use tcpstack::wire::{checksum, ethernet, ipv4};
use tcpstack::{DropReason, Error, Event, Instant, Ipv4Cidr, Stack, Stats};

fn b_stack() -> Stack {
    Stack::new(stack_config(B_MAC, B_IP, 2))
}

fn eth(dst: tcpstack::MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + payload.len()];
    ethernet::emit(&mut f, dst, A_MAC, ethertype);
    f[14..].copy_from_slice(payload);
    f
}

fn ip(proto: u8, dst: Ipv4Addr, payload: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut p = vec![0u8; 20 + payload.len()];
    p[20..].copy_from_slice(payload);
    ipv4::emit(&mut p, A_IP, dst, proto, payload.len(), 7);
    edit(&mut p);
    eth(B_MAC, ethernet::ETHERTYPE_IPV4, &p)
}

fn reseal_ip(p: &mut [u8]) {
    p[10] = 0;
    p[11] = 0;
    let c = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

fn one_frame(frame: Vec<u8>) -> Stats {
    let mut s = b_stack();
    s.listen(addr(B_IP, 80)).unwrap();
    s.handle_frame(Instant::ZERO, &frame);
    *s.stats()
}

fn arp(op: u16, target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
    p[8..14].copy_from_slice(&A_MAC.0);
    p[14..18].copy_from_slice(&A_IP.octets());
    p[24..28].copy_from_slice(&target.octets());
    eth(tcpstack::MacAddr::BROADCAST, ethernet::ETHERTYPE_ARP, &p)
}

fn icmp(kind: u8, len: usize, good_sum: bool) -> Vec<u8> {
    let mut m = vec![0u8; len];
    if len >= 8 {
        m[0] = kind;
        let c = checksum::checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        if !good_sum {
            m[2] ^= 0xff;
        }
    }
    ip(ipv4::PROTO_ICMP, B_IP, &m, |_| {})
}

/// An established pair, for drops that need a connection.
fn established() -> (Sim, tcpstack::ConnId, tcpstack::ConnId) {
    let mut sim = Sim::new(99, LinkConfig::default());
    let (a, b) = establish(&mut sim, 80);
    (sim, a, b)
}

fn scenarios() -> Vec<(DropReason, Stats)> {
    use DropReason::*;
    let tcp_to_b = |flags: Flags, payload: &[u8]| {
        forge_tcp(addr(A_IP, 1234), addr(B_IP, 80), 1, 1, flags, payload)
    };
    let mut out = vec![
        (EthTruncated, one_frame(vec![0; 10])),
        (
            EthNotForUs,
            one_frame(eth(tcpstack::MacAddr([2, 9, 9, 9, 9, 9]), 0x0800, &[0; 40])),
        ),
        (EthUnknownType, one_frame(eth(B_MAC, 0x86dd, &[0; 40]))),
        (
            ArpMalformed,
            one_frame(eth(
                tcpstack::MacAddr::BROADCAST,
                ethernet::ETHERTYPE_ARP,
                &[0, 1, 8, 0],
            )),
        ),
        (ArpNotForUs, one_frame(arp(1, Ipv4Addr::new(10, 0, 0, 99)))),
        (Ipv4Truncated, one_frame(eth(B_MAC, 0x0800, &[0x45; 10]))),
        (
            Ipv4Malformed,
            one_frame(ip(6, B_IP, &[0; 20], |p| {
                p[2..4].copy_from_slice(&10u16.to_be_bytes());
                reseal_ip(p);
            })),
        ),
        (
            Ipv4Checksum,
            one_frame(ip(6, B_IP, &[0; 20], |p| p[10] ^= 1)),
        ),
        (
            Ipv4Fragment,
            one_frame(ip(6, B_IP, &[0; 20], |p| {
                p[6] = 0x20;
                reseal_ip(p);
            })),
        ),
        (
            Ipv4NotForUs,
            one_frame(ip(6, Ipv4Addr::new(10, 0, 0, 77), &[0; 20], |_| {})),
        ),
        (
            Ipv4Unsupported,
            one_frame(ip(6, B_IP, &[0; 20], |p| p[0] = 0x65)),
        ),
        (
            Ipv4UnknownProtocol,
            one_frame(ip(17, B_IP, &[0; 8], |_| {})),
        ),
        (IcmpMalformed, one_frame(icmp(8, 4, true))),
        (IcmpChecksum, one_frame(icmp(8, 16, false))),
        (IcmpIgnored, one_frame(icmp(3, 16, true))),
        (TcpTruncated, one_frame(ip(6, B_IP, &[0; 10], |_| {}))),
        (
            TcpChecksum,
            one_frame({
                let mut f = tcp_to_b(Flags::SYN, b"");
                let n = f.len();
                f[n - 1] ^= 0x40;
                f
            }),
        ),
        (
            TcpBadPort,
            one_frame(forge_tcp(
                addr(A_IP, 0),
                addr(B_IP, 80),
                1,
                0,
                Flags::SYN,
                b"",
            )),
        ),
        (
            TcpNoConnection,
            one_frame(forge_tcp(
                addr(A_IP, 1),
                addr(B_IP, 81),
                1,
                1,
                Flags::ACK,
                b"",
            )),
        ),
    ];
    // A data offset below 5 words.
    let mut f = tcp_to_b(Flags::SYN, b"");
    f[34 + 12] = 3 << 4;
    let sum_at = 34 + 16;
    f[sum_at..sum_at + 2].copy_from_slice(&[0, 0]);
    let acc = checksum::pseudo_header(A_IP, B_IP, 6, f.len() - 34);
    let c = checksum::finish(checksum::accumulate(acc, &f[34..]));
    f[sum_at..sum_at + 2].copy_from_slice(&c.to_be_bytes());
    out.push((TcpMalformed, one_frame(f)));

    // Connection-level drops: forged segments into an established connection at B.
    let conn_drop = |make: &dyn Fn(std::net::SocketAddrV4, u32, u32) -> Vec<Vec<u8>>| {
        let (mut sim, a, b) = established();
        let la = sim.a.local_addr(a).unwrap();
        // What B expects next from A, and what A expects next from B.
        sim.a.set_nagle(a, false).unwrap();
        sim.record = Some(Vec::new());
        sim.a.write(a, b"x").unwrap();
        sim.advance(Duration::from_millis(100));
        let mut tmp = [0u8; 8];
        let _ = sim.b.read(b, &mut tmp);
        let rec = sim.record.take().unwrap();
        let ack_from_b = rec
            .iter()
            .rev()
            .find(|(to_b, f)| !to_b && f.len() > 34)
            .unwrap();
        let s = tcpstack::wire::tcp::Segment::parse(&ack_from_b.1[34..], B_IP, A_IP).unwrap();
        for f in make(la, s.header.ack, s.header.seq) {
            sim.b.handle_frame(sim.now, &f);
        }
        sim.advance(Duration::from_millis(10));
        *sim.b.stats()
    };
    out.push((
        TcpUnacceptable,
        conn_drop(&|la, rcv, snd| {
            vec![forge_tcp(
                la,
                addr(B_IP, 80),
                rcv.wrapping_add(1 << 30),
                snd,
                Flags::ACK,
                b"far",
            )]
        }),
    ));
    out.push((
        TcpBadAck,
        conn_drop(&|la, rcv, snd| {
            vec![forge_tcp(
                la,
                addr(B_IP, 80),
                rcv,
                snd.wrapping_add(100_000),
                Flags::ACK,
                b"",
            )]
        }),
    ));
    out.push((
        TcpRstOutOfWindow,
        conn_drop(&|la, rcv, _| {
            vec![forge_tcp(
                la,
                addr(B_IP, 80),
                rcv.wrapping_add(1 << 30),
                0,
                Flags::RST,
                b"",
            )]
        }),
    ));
    out.push((
        TcpReassemblyFull,
        conn_drop(&|la, rcv, snd| {
            (0..20u32)
                .map(|i| {
                    forge_tcp(
                        la,
                        addr(B_IP, 80),
                        rcv.wrapping_add(10 + i * 10),
                        snd,
                        Flags::ACK,
                        b"ab",
                    )
                })
                .collect()
        }),
    ));
    out.push((
        TcpBeyondWindow,
        conn_drop(&|la, rcv, snd| {
            // Starts inside the 256 KiB window, runs past its right edge.
            let big = vec![1u8; 1400];
            vec![forge_tcp(
                la,
                addr(B_IP, 80),
                rcv.wrapping_add(256 * 1024 - 700),
                snd,
                Flags::ACK,
                &big,
            )]
        }),
    ));

    // Data after the application closed its side.
    {
        let (mut sim, a, b) = established();
        sim.b.close(sim.now, b).unwrap();
        sim.advance(Duration::from_millis(10));
        sim.a.write(a, b"late").unwrap();
        sim.advance(Duration::from_millis(100));
        out.push((TcpAfterClose, *sim.b.stats()));
    }

    // A bad cookie while cookies are being sent (backlog 0: every SYN gets one).
    {
        let mut cb = stack_config(B_MAC, B_IP, 2);
        cb.syn_backlog = 0;
        let mut s = Stack::new(cb);
        s.listen(addr(B_IP, 80)).unwrap();
        s.handle_frame(Instant::ZERO, &tcp_to_b(Flags::SYN, b""));
        s.handle_frame(Instant::ZERO, &tcp_to_b(Flags::ACK, b""));
        out.push((TcpSynCookieInvalid, *s.stats()));
    }

    // Connection cap.
    {
        let mut cb = stack_config(B_MAC, B_IP, 2);
        cb.max_connections = 1;
        let mut s = Stack::new(cb);
        s.listen(addr(B_IP, 80)).unwrap();
        for port in [1000, 1001] {
            s.handle_frame(
                Instant::ZERO,
                &forge_tcp(addr(A_IP, port), addr(B_IP, 80), 1, 0, Flags::SYN, b""),
            );
        }
        out.push((TcpTooManyConnections, *s.stats()));
    }

    // Neighbour cache: unresolved, queue full, cache full; no route; small buffers; control queue.
    {
        let mut cfg = stack_config(A_MAC, A_IP, 1);
        cfg.neighbor.max_entries = 1;
        cfg.neighbor.max_queue = 1;
        let mut s = Stack::new(cfg);
        let mut buf = vec![0u8; 1514];
        let mut now = Instant::ZERO;
        s.connect(now, addr(B_IP, 80)).unwrap();
        s.connect(now, addr(B_IP, 80)).unwrap();
        s.connect(now, addr(Ipv4Addr::new(10, 0, 0, 3), 80))
            .unwrap();
        assert!(s
            .connect(now, addr(Ipv4Addr::new(192, 168, 9, 9), 80))
            .is_ok());
        for _ in 0..10 {
            while s.poll_transmit(now, &mut buf).is_some() {}
            now += Duration::from_secs(1);
        }
        let st = *s.stats();
        out.push((NeighQueueFull, st));
        out.push((NeighUnresolved, st));
        out.push((NeighCacheFull, st));
        out.push((NoRoute, st));
        let mut small = [0u8; 100];
        assert_eq!(s.poll_transmit(now, &mut small), None);
        out.push((TxBufferTooSmall, *s.stats()));
    }
    {
        let mut cfg = stack_config(B_MAC, B_IP, 2);
        cfg.max_control_queue = 1;
        let mut s = Stack::new(cfg);
        s.handle_frame(Instant::ZERO, &arp(1, B_IP));
        s.handle_frame(Instant::ZERO, &arp(1, B_IP));
        out.push((ControlQueueFull, *s.stats()));
    }
    out
}

#[test]
fn each_scenario_counts_its_reason() {
    for (reason, stats) in scenarios() {
        assert!(
            stats.drops(reason) > 0,
            "{} not counted; counted instead: {:?}",
            reason.label(),
            stats.nonzero_drops().collect::<Vec<_>>()
        );
    }
}

#[test]
fn every_drop_reason_has_a_scenario() {
    let covered: Vec<DropReason> = scenarios().into_iter().map(|(r, _)| r).collect();
    let missing: Vec<&str> = DropReason::ALL
        .iter()
        .filter(|r| !covered.contains(r))
        .map(|r| r.label())
        .collect();
    assert!(
        missing.is_empty(),
        "drop reasons without a test: {missing:?}"
    );
}

#[test]
fn arp_and_ping_are_answered() {
    let mut s = b_stack();
    let mut buf = vec![0u8; 1514];
    s.handle_frame(Instant::ZERO, &arp(1, B_IP));
    let n = s.poll_transmit(Instant::ZERO, &mut buf).expect("ARP reply");
    let reply = tcpstack::wire::arp::ArpRepr::parse(&buf[14..n]).unwrap();
    assert_eq!(
        (reply.op, reply.sender_mac, reply.target_ip),
        (tcpstack::wire::arp::Operation::Reply, B_MAC, A_IP)
    );
    // Echo request with data; the reply carries the same id, sequence and data.
    let mut m = vec![0u8; 8 + 5];
    m[0] = 8;
    m[4..8].copy_from_slice(&[0, 7, 0, 1]);
    m[8..].copy_from_slice(b"hello");
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    s.handle_frame(Instant::ZERO, &ip(ipv4::PROTO_ICMP, B_IP, &m, |_| {}));
    let n = s
        .poll_transmit(Instant::ZERO, &mut buf)
        .expect("echo reply");
    let p = ipv4::Ipv4Packet::parse(&buf[14..n]).unwrap();
    let e = tcpstack::wire::icmp::IcmpPacket::parse(p.payload).unwrap();
    assert_eq!(
        (p.dst, e.kind, e.rest, e.data),
        (A_IP, 0, [0, 7, 0, 1], &b"hello"[..])
    );
}

#[test]
fn handles_never_alias_after_release() {
    let mut sim = Sim::new(5, LinkConfig::default());
    let (a, _b) = establish(&mut sim, 80);
    sim.a.abort(a).unwrap();
    sim.advance(Duration::from_millis(10));
    let a2 = sim.a.connect(sim.now, addr(B_IP, 80)).unwrap();
    assert_ne!(a, a2);
    assert_eq!(sim.a.write(a, b"x"), Err(Error::InvalidHandle));
    let _ = Event::Connected(a2);
    let _ = Ipv4Cidr::new(A_IP, 24);
}
