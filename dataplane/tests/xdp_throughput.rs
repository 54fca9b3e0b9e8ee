//! Raw AF_XDP receive rate on veth: a generator in namespace B (pinned to one
//! core) blasts small UDP frames at our socket (dedicated mode, pinned to the
//! other core), and we count frames per second. The generator is either a
//! second AF_XDP socket on B's end (`XDP_TPUT_GEN=xsk`, the default: the kernel
//! UDP path is slower than our receiver) or a kernel UDP socket with sendmmsg
//! (`XDP_TPUT_GEN=udp`).
//!
//! A measurement, not a test: it is ignored by default and asserts only that
//! frames arrived. Run it (root, release build) with
//! ```text
//! cargo test --release -p dataplane --test xdp_throughput -- --ignored --nocapture
//! ```
//! Environment: `XDP_TPUT_SECS` (default 5), `XDP_TPUT_PAYLOAD` (UDP payload
//! bytes, default 18: 60-byte frames, the 64-byte minimum on a wire with FCS).

use std::mem;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::device::Device;
use dataplane::netns::{skip_unless_root, unique_name, NetNs};
use dataplane::xdp::{self, SteerConfig, Steering, XdpMode, XskConfig, XskDevice};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) pins this thread.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn ip(ns: &NetNs, args: &[&str]) {
    ns.exec_ok(std::iter::once("ip").chain(args.iter().copied()))
        .unwrap();
}

/// Sends `payload`-byte datagrams in batches of 64 with sendmmsg until `stop`.
fn blast(sock: &UdpSocket, payload: usize, stop: &AtomicBool, sent: &AtomicU64) {
    const BATCH: usize = 64;
    let buf = vec![0x5au8; payload];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: buf.as_ptr() as *mut _,
            iov_len: payload,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; each points at one iovec of `iov`.
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` and the buffers they point to outlive the call.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Ethernet + IPv4 + UDP 10.99.0.2:40000 -> 10.99.0.100:9 (UDP checksum 0).
fn udp_frame(f: &mut [u8], src_mac: [u8; 6], dst_mac: [u8; 6], payload: usize) {
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 8 + payload) as u16;
    let hdr = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 99, 0, 2, 10, 99, 0, 100,
    ];
    f[14..34].copy_from_slice(&hdr);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    let mut sum: u32 = f[14..34]
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture in release mode"]
fn xdp_receive_rate_from_kernel_udp_generator() {
    if skip_unless_root("xdp_receive_rate_from_kernel_udp_generator") {
        return;
    }
    let secs = env_or("XDP_TPUT_SECS", 5);
    let payload = env_or("XDP_TPUT_PAYLOAD", 18) as usize;

    let a = NetNs::create("xta").unwrap();
    let b = NetNs::create("xtb").unwrap();
    let (if_a, if_b) = (unique_name("xta"), unique_name("xtb"));
    let out = Command::new("ip")
        .args(["link", "add", &if_a, "netns", a.name(), "type", "veth"])
        .args(["peer", "name", &if_b, "netns", b.name()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ip(&a, &["link", "set", &if_a, "up"]);
    ip(&b, &["addr", "add", "10.99.0.2/24", "dev", &if_b]);
    ip(&b, &["link", "set", &if_b, "up"]);
    let ia = if_a.clone();
    let mac_a = a.run(move || xdp::sys::ifmac(&ia)).unwrap();
    let mac: Vec<String> = mac_a.iter().map(|b| format!("{b:02x}")).collect();
    ip(
        &b,
        &[
            "neigh",
            "replace",
            "10.99.0.100",
            "lladdr",
            &mac.join(":"),
            "dev",
            &if_b,
            "nud",
            "permanent",
        ],
    );

    let ia = if_a.clone();
    let steer = a
        .run(move || {
            Steering::attach(
                &ia,
                XdpMode::Native,
                &SteerConfig {
                    dedicated: true,
                    ..SteerConfig::default()
                },
                Duration::from_secs(2),
            )
        })
        .unwrap();
    let steer = Arc::new(steer);
    let cfg = XskConfig::new(&if_a, 0);
    let s2 = steer.clone();
    let mut dev: XskDevice = a.run(move || XskDevice::open(&cfg, Some(s2))).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let use_xsk = std::env::var("XDP_TPUT_GEN").map_or(true, |v| v != "udp");
    let gen = if use_xsk {
        let ib = if_b.clone();
        let mut gen_dev: XskDevice = b
            .run(move || XskDevice::open(&XskConfig::new(&ib, 0), None))
            .unwrap();
        let mut frame = vec![0u8; 14 + 20 + 8 + payload];
        udp_frame(&mut frame, gen_dev.capabilities().mac, mac_a, payload);
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            pin_to(0);
            while !stop.load(Ordering::Relaxed) {
                let n = gen_dev
                    .transmit(64, |buf| {
                        buf[..frame.len()].copy_from_slice(&frame);
                        Some(frame.len())
                    })
                    .unwrap();
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    } else {
        let sock = b.run(|| {
            let s = UdpSocket::bind("10.99.0.2:0").unwrap();
            s.connect((Ipv4Addr::new(10, 99, 0, 100), 9)).unwrap();
            s
        });
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            pin_to(0);
            blast(&sock, payload, &stop, &sent);
        })
    };

    pin_to(1);
    let (mut frames, mut bytes) = (0u64, 0u64);
    // Warm up, then measure a fixed window.
    let warm = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm {
        dev.receive(64, |_| {}).unwrap();
    }
    let sent0 = sent.load(Ordering::Relaxed);
    let k0 = dev.kernel_stats().unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut calls = 0u64;
    while Instant::now() < end {
        calls += 1;
        dev.receive(64, |f| {
            frames += 1;
            bytes += f.len() as u64;
        })
        .unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let sent1 = sent.load(Ordering::Relaxed);
    let k1 = dev.kernel_stats().unwrap();
    stop.store(true, Ordering::Relaxed);
    gen.join().unwrap();

    let frame_len = bytes.checked_div(frames).unwrap_or(0);
    println!(
        "AF_XDP receive on veth (copy mode, native XDP, dedicated steering, batch 64, busy poll), \
         generator {}:\n  \
         {:.3} Mpps received ({} B frames, {:.2} Gbit/s of frames), generator sent {:.3} Mpps\n  \
         kernel drops in the window: rx_dropped {} rx_ring_full {} fill_ring_empty {}; \
         frames/receive call {:.1}",
        if use_xsk {
            "AF_XDP"
        } else {
            "kernel UDP sendmmsg"
        },
        frames as f64 / elapsed / 1e6,
        frame_len,
        bytes as f64 * 8.0 / elapsed / 1e9,
        (sent1 - sent0) as f64 / elapsed / 1e6,
        k1.rx_dropped() - k0.rx_dropped(),
        k1.rx_ring_full() - k0.rx_ring_full(),
        k1.rx_fill_ring_empty_descs() - k0.rx_fill_ring_empty_descs(),
        frames as f64 / calls.max(1) as f64,
    );
    println!("  steering counters: {:?}", steer.stats().unwrap());
    println!("  socket counters: {:?}", dev.stats());
    assert!(frames > 0, "no frame received");
}
