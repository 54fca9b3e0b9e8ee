//! tcpstack against the Linux kernel's TCP: our stack in this process behind a TAP device, the
//! kernel peer in its own network namespace. Needs root; under CI=true it must run.
//!
//! The kernel side sends with full checksums (`ethtool -K tx off`) and verifies ours; each test
//! checks `nstat` afterwards: no checksum errors, no RST from the kernel.

mod common;

use common::kernel_echo_client;
use dataplane::netns::{skip_unless_root, unique_name, NetNs};
use dataplane::tap::TapDevice;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant as WallInstant};
use tcpstack::{ConnId, Error, Event, Ipv4Cidr, MacAddr, Stack, StackConfig};

const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const OUR_MAC: MacAddr = MacAddr([0x02, 0x58, 0x4d, 0, 0, 2]);
const SIZE: usize = 16 << 20;

struct Rig {
    ns: NetNs,
    tap: TapDevice,
}

fn rig() -> Rig {
    let ns = NetNs::create("tcp").expect("netns");
    let name = unique_name("tap");
    let tap = TapDevice::create(&name).expect("tap");
    let out = std::process::Command::new("ip")
        .args(["link", "set", &name, "netns", ns.name()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "move tap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.exec_ok(["ip", "addr", "add", "10.77.0.1/24", "dev", &name])
        .unwrap();
    ns.exec_ok(["ip", "link", "set", &name, "up"]).unwrap();
    // Full checksums from the kernel (DESIGN.md: the veth/TAP peer otherwise leaves them partial).
    ns.exec_ok(["ethtool", "-K", &name, "tx", "off"]).unwrap();
    Rig { ns, tap }
}

fn our_stack(seed: u8) -> Stack {
    let mut cfg = StackConfig::new(OUR_MAC, vec![Ipv4Cidr::new(OUR_IP, 24)], [seed; 16]);
    cfg.tcp.delayed_ack = Some(Duration::from_millis(10));
    Stack::new(cfg)
}

/// Drives `stack` over the TAP until `app` returns true or the deadline passes. `loss` drops
/// that fraction of received frames (seeded), to make loss in the kernel→us direction.
fn drive(
    tap: &mut TapDevice,
    stack: &mut Stack,
    deadline: Duration,
    loss: f64,
    mut app: impl FnMut(&mut Stack, tcpstack::Instant) -> bool,
) {
    let start = WallInstant::now();
    let now = || tcpstack::Instant::from_micros(start.elapsed().as_micros() as u64);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut rx = vec![0u8; 65536];
    let mut tx = vec![0u8; 1514];
    loop {
        assert!(
            start.elapsed() < deadline,
            "deadline passed; stack stats: {:?}",
            stack.stats().nonzero_drops().collect::<Vec<_>>()
        );
        let t = now();
        let wait = match stack.poll_timeout() {
            Some(d) if d <= t => Duration::ZERO,
            Some(d) => (d - t).min(Duration::from_millis(5)),
            None => Duration::from_millis(5),
        };
        tap.wait_readable(wait).unwrap();
        for _ in 0..256 {
            match tap.recv(&mut rx).unwrap() {
                Some(n) => {
                    if loss > 0.0 && rng.gen_bool(loss) {
                        continue;
                    }
                    stack.handle_frame(now(), &rx[..n]);
                }
                None => break,
            }
        }
        if app(stack, now()) {
            return;
        }
        while let Some(n) = stack.poll_transmit(now(), &mut tx) {
            tap.send(&tx[..n]).unwrap();
        }
    }
}

fn counters(ns: &NetNs) -> std::collections::HashMap<String, u64> {
    ns.nstat().expect("nstat")
}

fn assert_kernel_clean(before: &std::collections::HashMap<String, u64>, ns: &NetNs) {
    let after = counters(ns);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        delta("TcpInCsumErrors"),
        0,
        "the kernel saw TCP checksum errors"
    );
    assert_eq!(
        delta("IpExtInCsumErrors"),
        0,
        "the kernel saw IP checksum errors"
    );
    assert_eq!(delta("TcpOutRsts"), 0, "the kernel sent RSTs");
    // The kernel received our data or our ACKs for its data (delayed ACKs cover two segments).
    assert!(
        delta("TcpInSegs") + delta("TcpOutSegs") > 5000,
        "the kernel took part: in {} out {}",
        delta("TcpInSegs"),
        delta("TcpOutSegs")
    );
}

/// Echo server on our stack; a kernel client sends SIZE random bytes and reads them back.
fn echo(loss_percent: f64) {
    let mut rig = rig();
    if loss_percent > 0.0 {
        rig.ns.add_loss(loss_percent).unwrap();
    }
    let before = counters(&rig.ns);
    let mut stack = our_stack(3);
    stack.listen(SocketAddrV4::new(OUR_IP, 7)).unwrap();
    let ns = &rig.ns;
    std::thread::scope(|s| {
        let client =
            s.spawn(move || ns.run(|| kernel_echo_client(SocketAddrV4::new(OUR_IP, 7), SIZE, 1)));
        let mut conns: Vec<(ConnId, Vec<u8>, bool)> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let loss = loss_percent / 100.0;
        drive(
            &mut rig.tap,
            &mut stack,
            Duration::from_secs(180),
            loss,
            |st, now| {
                while let Some(e) = st.poll_event() {
                    match e {
                        Event::Accepted { id, .. } => conns.push((id, Vec::new(), false)),
                        Event::Reset { id, reason } => panic!("{id:?} reset: {reason:?}"),
                        _ => {}
                    }
                }
                for (id, pending, closed) in conns.iter_mut() {
                    loop {
                        if !pending.is_empty() {
                            match st.write(*id, pending) {
                                Ok(n) => {
                                    pending.drain(..n);
                                }
                                Err(Error::WouldBlock) => break,
                                Err(e) => panic!("{e}"),
                            }
                            continue;
                        }
                        match st.read(*id, &mut buf) {
                            Ok(0) => {
                                if !*closed {
                                    st.close(now, *id).unwrap();
                                    *closed = true;
                                }
                                break;
                            }
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                            Err(Error::WouldBlock) | Err(Error::InvalidHandle) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                client.is_finished()
            },
        );
        let (sent, echoed, got) = client.join().unwrap();
        assert_eq!(got, SIZE);
        assert_eq!(sent, echoed, "sha256 of the echo differs");
    });
    let drops: Vec<_> = stack.stats().nonzero_drops().collect();
    assert!(
        !drops.iter().any(|(l, _)| l.contains("checksum")),
        "our stack saw bad checksums: {drops:?}"
    );
    if loss_percent > 0.0 {
        assert!(rig.ns.loss_dropped().unwrap() > 0, "loss was injected");
        assert!(stack.stats().get(tcpstack::Counter::Retransmits) > 0);
    }
    assert_kernel_clean(&before, &rig.ns);
}

/// Our stack downloads SIZE bytes from a kernel server.
fn download(loss_percent: f64) {
    let mut rig = rig();
    if loss_percent > 0.0 {
        rig.ns.add_loss(loss_percent).unwrap();
    }
    let before = counters(&rig.ns);
    let listener = rig
        .ns
        .run(|| TcpListener::bind("10.77.0.1:9000").expect("bind"));
    let mut stack = our_stack(4);
    std::thread::scope(|s| {
        let server = s.spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = SIZE;
            while left > 0 {
                let n = left.min(buf.len());
                rng.fill(&mut buf[..n]);
                h.update(&buf[..n]);
                c.write_all(&buf[..n]).unwrap();
                left -= n;
            }
            c.shutdown(std::net::Shutdown::Write).unwrap();
            // Wait for our close so the kernel never resets a connection with unread data.
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).unwrap();
            h.finalize()
        });
        let id = stack
            .connect(tcpstack::Instant::ZERO, SocketAddrV4::new(KERNEL_IP, 9000))
            .unwrap();
        let mut h = Sha256::new();
        let mut got = 0usize;
        let mut closed = false;
        let mut buf = vec![0u8; 64 * 1024];
        drive(
            &mut rig.tap,
            &mut stack,
            Duration::from_secs(180),
            loss_percent / 100.0,
            |st, now| {
                while let Some(e) = st.poll_event() {
                    if let Event::Reset { reason, .. } = e {
                        panic!("reset: {reason:?}");
                    }
                }
                if !closed {
                    loop {
                        match st.read(id, &mut buf) {
                            Ok(0) => {
                                st.close(now, id).unwrap();
                                closed = true;
                                break;
                            }
                            Ok(n) => {
                                h.update(&buf[..n]);
                                got += n;
                            }
                            Err(_) => break,
                        }
                    }
                }
                server.is_finished() && st.connection_count() == 0
            },
        );
        assert_eq!(got, SIZE);
        assert_eq!(
            server.join().unwrap(),
            h.finalize(),
            "sha256 of the download differs"
        );
    });
    assert_kernel_clean(&before, &rig.ns);
}

#[test]
fn kernel_client_echo_16_mib() {
    if skip_unless_root("kernel_client_echo_16_mib") {
        return;
    }
    echo(0.0);
}

#[test]
fn download_16_mib_from_kernel_server() {
    if skip_unless_root("download_16_mib_from_kernel_server") {
        return;
    }
    download(0.0);
}

#[test]
fn echo_with_3_percent_loss_both_ways() {
    if skip_unless_root("echo_with_3_percent_loss_both_ways") {
        return;
    }
    echo(3.0);
}

#[test]
fn download_with_3_percent_loss_both_ways() {
    if skip_unless_root("download_with_3_percent_loss_both_ways") {
        return;
    }
    download(3.0);
}
