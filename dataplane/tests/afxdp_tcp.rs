//! tcpstack over real AF_XDP sockets: a veth pair between two namespaces, our worker on one end
//! (no kernel address there: the gateway answers ARP and ICMP itself), the kernel's TCP on the
//! other end as the peer. Needs root; under CI=true it must run.

mod common;

use common::kernel_echo_client;
use dataplane::gateway::single_queue_worker;
use dataplane::netns::{skip_unless_root, wait_for, VethPair};
use dataplane::worker::{Builtin, DrainReport};
use ipnet::Ipv4Net;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const OURS: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 100);

type Rig = VethPair;

fn rig() -> Rig {
    VethPair::create("ax", None, "10.98.0.2/24").expect("veth pair")
}

/// Starts a worker on A's end serving echo on :7, sink on :9 and http-ok on :80, runs `f`
/// (which may set the stop flag itself), then stops the worker, drains it with a 2 s deadline,
/// and returns `f`'s result with the worker's counters and the drain report.
fn with_gateway<R: Send>(
    rig: &Rig,
    f: impl FnOnce(&AtomicBool) -> R + Send,
) -> (
    R,
    tcpstack::Stats,
    dataplane::worker::WorkerStats,
    DrainReport,
) {
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            rig.a.run(|| {
                let listeners: Vec<(SocketAddrV4, Builtin)> = [
                    (7, Builtin::Echo),
                    (9, Builtin::Sink),
                    (80, Builtin::HttpOk),
                ]
                .iter()
                .map(|&(p, k)| (SocketAddrV4::new(OURS, p), k))
                .collect();
                let mut w =
                    single_queue_worker(&rig.if_a, Ipv4Net::new(OURS, 24).unwrap(), &listeners)
                        .expect("worker on the veth");
                ready.store(true, Ordering::SeqCst);
                w.run(&stop).expect("worker loop");
                let drained = w.drain(Duration::from_secs(2)).expect("drain");
                (*w.stack().stats(), w.stats, drained)
            })
        });
        assert!(
            wait_for(Duration::from_secs(10), || ready
                .load(Ordering::SeqCst)
                .then_some(()))
            .is_some(),
            "worker never became ready"
        );
        let r = f(&stop);
        stop.store(true, Ordering::SeqCst);
        let (st, ws, drained) = worker.join().unwrap();
        (r, st, ws, drained)
    })
}

fn echo_through(rig: &Rig, size: usize) -> (Vec<u8>, Vec<u8>, usize) {
    rig.b
        .run(|| kernel_echo_client(SocketAddrV4::new(OURS, 7), size, 9))
}

#[test]
fn afxdp_echo_64_mib_from_a_kernel_client() {
    if skip_unless_root("afxdp_echo_64_mib_from_a_kernel_client") {
        return;
    }
    let rig = rig();
    let before = rig.b.nstat().unwrap();
    let ((sent, echoed, got), stats, ws, _) = with_gateway(&rig, |_| echo_through(&rig, 64 << 20));
    assert_eq!(got, 64 << 20);
    assert_eq!(sent, echoed, "sha256 of the echo differs");
    assert!(
        ws.frames_in > 40_000,
        "the bytes went through the AF_XDP socket: {ws:?}"
    );
    let after = rig.b.nstat().unwrap();
    let d = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        (d("TcpInCsumErrors"), d("TcpOutRsts")),
        (0, 0),
        "kernel saw bad checksums or sent RSTs"
    );
    assert_eq!(stats.drops(tcpstack::DropReason::TcpChecksum), 0);
}

#[test]
fn afxdp_answers_arp_ping_and_http() {
    if skip_unless_root("afxdp_answers_arp_ping_and_http") {
        return;
    }
    let rig = rig();
    let ((ping, curl), stats, ws, _) = with_gateway(&rig, |_| {
        let ping = rig
            .b
            .exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.98.0.100"])
            .unwrap();
        let curl = rig
            .b
            .exec(["curl", "-s", "--max-time", "10", "http://10.98.0.100/"])
            .unwrap();
        (ping, curl)
    });
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        curl.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "ok");
    assert_eq!(ws.http_requests, 1);
    assert!(stats.get(tcpstack::Counter::ArpRepliesSent) >= 1);
    assert!(stats.get(tcpstack::Counter::IcmpEchoReplies) >= 3);
}

#[test]
fn afxdp_1000_concurrent_connections_exchange_data_and_close() {
    if skip_unless_root("afxdp_1000_concurrent_connections_exchange_data_and_close") {
        return;
    }
    let rig = rig();
    let (ok, stats, ws, drained) = with_gateway(&rig, |_| {
        rig.b.run(|| {
            let mut conns: Vec<TcpStream> = (0..1000)
                .map(|_| {
                    TcpStream::connect_timeout(
                        &SocketAddrV4::new(OURS, 7).into(),
                        Duration::from_secs(10),
                    )
                    .expect("connect")
                })
                .collect();
            for (i, c) in conns.iter_mut().enumerate() {
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                c.write_all(format!("hello {i:04}").as_bytes()).unwrap();
            }
            let mut ok = 0;
            for (i, c) in conns.iter_mut().enumerate() {
                let mut buf = [0u8; 10];
                c.read_exact(&mut buf).unwrap();
                if buf[..] == *format!("hello {i:04}").as_bytes() {
                    ok += 1;
                }
                c.shutdown(std::net::Shutdown::Write).unwrap();
            }
            for c in conns.iter_mut() {
                let mut rest = Vec::new();
                c.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty());
            }
            ok
        })
    });
    assert_eq!(ok, 1000);
    assert_eq!(
        drained,
        DrainReport {
            finished: 0,
            reset: 0
        },
        "every connection closed before the stop"
    );
    assert_eq!(ws.accepted, 1000);
    assert_eq!(ws.resets, 0);
    // Late retransmissions from a loaded kernel may be counted and dropped; broken frames may not.
    let broken: Vec<_> = stats
        .nonzero_drops()
        .filter(|(l, _)| {
            l.contains("checksum") || l.contains("malformed") || l.contains("truncated")
        })
        .collect();
    assert!(broken.is_empty(), "{broken:?}");
}

#[test]
fn afxdp_echo_with_3_percent_loss_both_ways() {
    if skip_unless_root("afxdp_echo_with_3_percent_loss_both_ways") {
        return;
    }
    let rig = rig();
    // The kernel drops 3 % of what it receives from us, and 3 % of what it sends to us (on its
    // egress: on our side XDP runs before nftables could drop anything).
    rig.b.add_loss(3.0).unwrap();
    rig.b
        .exec_ok([
            "nft",
            "add",
            "chain",
            "inet",
            "xm_loss",
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ])
        .unwrap();
    rig.b
        .exec_ok([
            "nft",
            "add",
            "rule",
            "inet",
            "xm_loss",
            "out",
            "ip",
            "daddr",
            "10.98.0.100",
            "numgen",
            "random",
            "mod",
            "100",
            "<",
            "3",
            "counter",
            "drop",
        ])
        .unwrap();
    let ((sent, echoed, got), stats, _, _) = with_gateway(&rig, |_| echo_through(&rig, 16 << 20));
    assert_eq!(got, 16 << 20);
    assert_eq!(sent, echoed, "sha256 of the echo differs");
    assert!(rig.b.loss_dropped().unwrap() > 0, "loss was injected");
    assert!(
        stats.get(tcpstack::Counter::Retransmits) > 0,
        "our stack repaired loss"
    );
}

#[test]
fn afxdp_drain_finishes_open_connections_refuses_new_ones_and_resets_the_idle() {
    if skip_unless_root(
        "afxdp_drain_finishes_open_connections_refuses_new_ones_and_resets_the_idle",
    ) {
        return;
    }
    let rig = rig();
    let ((finished_clean, refused, idle_reset), _, _, drained) = with_gateway(&rig, |stop| {
        rig.b.run(|| {
            let connect = || TcpStream::connect_timeout(&SocketAddrV4::new(OURS, 7).into(), Duration::from_secs(5));
            let mut busy = connect().expect("connect");
            let mut idle = connect().expect("connect");
            for (c, m) in [(&mut busy, b"a"), (&mut idle, b"b")] {
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                c.write_all(m).unwrap();
                let mut r = [0u8; 1];
                c.read_exact(&mut r).unwrap();
                assert_eq!(&r, m);
            }
            stop.store(true, Ordering::SeqCst);
            // New connections are refused once the drain has removed the listeners.
            let refused = wait_for(Duration::from_secs(5), || match connect() {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            })
            .is_some();
            // The busy connection finishes its exchange and closes cleanly during the drain.
            busy.write_all(b"c").unwrap();
            busy.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let finished_clean = busy.read_to_end(&mut rest).is_ok() && rest == b"c";
            // The idle one is reset at the deadline.
            let mut r = [0u8; 1];
            let idle_reset = matches!(idle.read(&mut r), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
            (finished_clean, refused, idle_reset)
        })
    });
    assert!(refused, "new connections are refused while draining");
    assert!(
        finished_clean,
        "an active connection finishes cleanly during the drain"
    );
    assert!(
        idle_reset,
        "a connection still open at the deadline is reset"
    );
    assert!(drained.reset >= 1, "{drained:?}");
    assert!(drained.finished >= 1, "{drained:?}");
}

#[test]
fn afxdp_http_ok_answers_bad_framing_with_400_and_counts_it() {
    if skip_unless_root("afxdp_http_ok_answers_bad_framing_with_400_and_counts_it") {
        return;
    }
    let rig = rig();
    let (reply, _, ws, _) = with_gateway(&rig, |_| {
        rig.b.run(|| {
            let mut c = TcpStream::connect_timeout(
                &SocketAddrV4::new(OURS, 80).into(),
                Duration::from_secs(10),
            )
            .expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // Conflicting Content-Length headers (RFC 9112 §6.3): a framing error.
            c.write_all(
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            )
            .unwrap();
            let mut reply = Vec::new();
            c.read_to_end(&mut reply)
                .expect("the gateway closes after the 400");
            reply
        })
    });
    assert!(
        reply.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!((ws.http_bad_requests, ws.http_requests), (1, 0));
}
