//! One TCP stream from a kernel sender into a sink, two ways on the same machine in the same run:
//! - kernel: the receiver is a kernel socket behind a plain veth (no XDP);
//! - afxdp: the receiver is our worker (AF_XDP socket, steering program, tcpstack, `sink`).
//!
//! Rounds alternate (kernel, afxdp, kernel, ...) and the report gives each path's Gbit/s and
//! frames/s and the ratio afxdp/kernel. Needs root. `cargo bench -p dataplane --bench sink`;
//! under `cargo test` it runs one small round as a smoke test.

use dataplane::netns::{is_root, root_tests_required, wait_for, VethPair};
use dataplane::worker::{Builtin, Worker};
use dataplane::xdp::{self, SteerConfig, Steering, XdpMode, XskConfig, XskDevice};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tcpstack::{Ipv4Cidr, MacAddr, Stack, StackConfig};

const OURS: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 100);
const KERNEL_A: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);

/// Sends `size` bytes to `to`, half-closes, waits for the receiver's close; returns the time.
fn send(pair: &VethPair, to: SocketAddrV4, size: usize) -> Duration {
    pair.b.run(|| {
        let start = Instant::now();
        let mut c =
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(5)).expect("connect");
        let buf = vec![0x5au8; 256 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            c.write_all(&buf[..n]).expect("send");
            left -= n;
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("wait for the receiver's close");
        start.elapsed()
    })
}

fn kernel_round(size: usize) -> (Duration, u64) {
    let pair = VethPair::create("sk", Some("10.97.0.1/24"), "10.97.0.2/24").expect("veth pair");
    let listener = pair
        .a
        .run(|| TcpListener::bind(SocketAddrV4::new(KERNEL_A, 9)).expect("bind"));
    let got = std::thread::scope(|s| {
        let rx = s.spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = c.read(&mut buf).unwrap();
                if n == 0 {
                    break got;
                }
                got += n as u64;
            }
        });
        let t = send(&pair, SocketAddrV4::new(KERNEL_A, 9), size);
        (t, rx.join().unwrap())
    });
    let frames = pair
        .a
        .nstat()
        .unwrap()
        .get("TcpInSegs")
        .copied()
        .unwrap_or(0);
    assert_eq!(got.1, size as u64);
    (got.0, frames)
}

fn afxdp_round(size: usize) -> (Duration, u64) {
    let pair = VethPair::create("sx", None, "10.97.0.2/24").expect("veth pair");
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            pair.a.run(|| {
                let ifname = pair.if_a.clone();
                let steer = Steering::attach(
                    &ifname,
                    XdpMode::Native,
                    &SteerConfig {
                        local_addrs: vec![OURS],
                        listeners: vec![SocketAddrV4::new(OURS, 9)],
                        ..Default::default()
                    },
                    Duration::from_secs(2),
                )
                .expect("attach");
                let dev = XskDevice::open(&XskConfig::new(&ifname, 0), Some(Arc::new(steer)))
                    .expect("xsk");
                let mut cfg = StackConfig::new(
                    MacAddr(xdp::sys::ifmac(&ifname).unwrap()),
                    vec![Ipv4Cidr::new(OURS, 24)],
                    [7; 16],
                );
                cfg.mtu = xdp::sys::ifmtu(&ifname).unwrap() as usize;
                let mut w = Worker::new(dev, Stack::new(cfg));
                w.listen(SocketAddrV4::new(OURS, 9), Builtin::Sink).unwrap();
                ready.store(true, Ordering::SeqCst);
                w.run(&stop).unwrap();
                w.stats
            })
        });
        assert!(wait_for(Duration::from_secs(10), || ready
            .load(Ordering::SeqCst)
            .then_some(()))
        .is_some());
        let t = send(&pair, SocketAddrV4::new(OURS, 9), size);
        stop.store(true, Ordering::SeqCst);
        let ws = worker.join().unwrap();
        assert_eq!(ws.sink_bytes, size as u64);
        (t, ws.frames_in)
    })
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !is_root() {
        if root_tests_required() {
            panic!("sink bench needs root (network namespaces, AF_XDP)");
        }
        println!("skipped: the sink bench needs root (network namespaces, AF_XDP)");
        return;
    }
    let (size, rounds) = if bench {
        (1usize << 30, 3)
    } else {
        (4 << 20, 1)
    };
    let mut k = Vec::new();
    let mut x = Vec::new();
    for _ in 0..rounds {
        k.push(kernel_round(size));
        x.push(afxdp_round(size));
    }
    let rate = |v: &[(Duration, u64)]| {
        let t: f64 = v.iter().map(|r| r.0.as_secs_f64()).sum();
        let f: u64 = v.iter().map(|r| r.1).sum();
        ((size * v.len()) as f64 * 8.0 / t / 1e9, f as f64 / t)
    };
    let (kg, kf) = rate(&k);
    let (xg, xf) = rate(&x);
    println!(
        "one TCP stream of {} MiB into a sink, {rounds} interleaved rounds each",
        size >> 20
    );
    println!(
        "kernel (plain veth):         {kg:6.2} Gbit/s  {:7.0} k segments/s received",
        kf / 1e3
    );
    println!(
        "afxdp worker (tcpstack sink): {xg:6.2} Gbit/s  {:7.0} k frames/s received",
        xf / 1e3
    );
    println!("ratio afxdp/kernel: {:.2}", xg / kg);
}
