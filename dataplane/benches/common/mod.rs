//! Shared by the dataplane benches: CPU accounting and the AF_XDP worker they measure.
#![allow(dead_code)]

use dataplane::gateway::single_queue_worker;
use dataplane::worker::{Builtin, Worker};
use dataplane::xdp::XskDevice;
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Our worker serving `kind` on `addr` on queue 0 of `ifname` (call in its namespace).
pub fn worker(ifname: &str, ip: Ipv4Addr, port: u16, kind: Builtin) -> Worker<XskDevice> {
    single_queue_worker(
        ifname,
        Ipv4Net::new(ip, 24).expect("prefix"),
        &[(SocketAddrV4::new(ip, port), kind)],
    )
    .expect("AF_XDP worker")
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Per CPU (busy, softirq, total) jiffies, from the `cpuN` lines of /proc/stat.
pub fn cpu_jiffies() -> Vec<[u64; 3]> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal (guest time is already in user).
            let total: u64 = v.iter().take(8).sum();
            [total - at(3) - at(4), at(6), total]
        })
        .collect()
}

/// Each CPU's busy and softirq share (0..1) between two samples.
pub fn cpu_shares(before: &[[u64; 3]], after: &[[u64; 3]]) -> Vec<(f64, f64)> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a[2].saturating_sub(b[2]).max(1) as f64;
            (
                a[0].saturating_sub(b[0]) as f64 / total,
                a[1].saturating_sub(b[1]) as f64 / total,
            )
        })
        .collect()
}
