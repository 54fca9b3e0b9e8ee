//! One TCP stream from a kernel sender into a sink, two ways on the same machine in the same run:
//! - kernel: the receiver is a kernel socket behind a plain veth (no XDP);
//! - afxdp: the receiver is our worker (AF_XDP socket, steering program, tcpstack, `sink`).
//!
//! Two segment sizes: the sender's full MSS (bulk Gbit/s), and the smallest MSS Linux lets a
//! sender set (packets/s). Rounds alternate (kernel, afxdp, kernel, ...) per size, and the report
//! gives each round's and each path's Gbit/s and frames/s, the ratio afxdp/kernel, and where the
//! CPU went. Needs root. `cargo bench -p dataplane --bench sink`; under `cargo test` it runs one
//! small round of each as a smoke test.
//!
//! The sender is a plain socket client, not iperf3: an iperf3 client first opens a control
//! connection and trades JSON parameters with an iperf3 server before any data flows, and our
//! `sink` is not an iperf3 server. A socket client with `TCP_MAXSEG` sends the same kind of stream
//! (`iperf3 -c -M 88 -n SIZE`) and is the same code for both receivers.

use dataplane::netns::{is_root, root_tests_required, wait_for, VethPair};
mod common;

use common::{cpu_jiffies, cpu_shares, thread_cpu};
use dataplane::worker::Builtin;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const OURS: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 100);
const KERNEL_A: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);

/// Small-packet mode: `TCP_MAXSEG` 88 is `TCP_MIN_MSS`, the smallest value Linux accepts (less
/// gives EINVAL), so these are the smallest segments a kernel TCP sender can be made to send.
/// Both receivers negotiate timestamps, so each segment carries 76 payload bytes in a 128-byte IP
/// packet (20 IP + 20 TCP + 12 timestamp option + 76), a 142-byte Ethernet frame.
const SMALL_MSS: i32 = 88;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// The sender's own MSS (1448 payload bytes at MTU 1500 with timestamps).
    Full,
    /// `TCP_MAXSEG` = [`SMALL_MSS`].
    Small,
}

impl Mode {
    fn mss(self) -> Option<i32> {
        match self {
            Mode::Full => None,
            Mode::Small => Some(SMALL_MSS),
        }
    }
}

/// One stream's figures.
#[derive(Clone, Debug)]
struct Round {
    wall: Duration,
    bytes: u64,
    /// Segments the receiver took in (kernel: `TcpInSegs`; ours: frames off the AF_XDP ring).
    frames: u64,
    /// The sender's effective MSS after the handshake (`getsockopt(TCP_MAXSEG)`).
    mss: i32,
    /// CPU time of the receiving thread (ours: the worker loop). The sender's thread time says
    /// little: most of its segments go out from ACK processing in softirq, not in its syscalls.
    rx_cpu: Duration,
    /// Each CPU's (busy, softirq) share during the stream, other users' load included.
    cpus: Vec<(f64, f64)>,
}

/// A blocking TCP connection to `to`, with `TCP_MAXSEG` set before the SYN when `mss` is given
/// (it caps the MSS we announce and the segments we send). std has no hook between socket() and
/// connect(), so this goes through libc.
fn connect(to: SocketAddrV4, mss: Option<i32>) -> io::Result<TcpStream> {
    // SAFETY: plain socket call; the fd is owned by the TcpStream right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    // SO_SNDTIMEO also bounds connect(): a receiver that never answers fails the round instead
    // of hanging it for the kernel's two minutes of SYN retries.
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    if let Some(m) = mss {
        // SAFETY: `m` lives across the call and the length matches its type.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                (&m as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sa` is a valid sockaddr_in for the duration of the call.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn effective_mss(s: &TcpStream) -> i32 {
    let mut m: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `m` and `len` are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut m as *mut i32).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        m
    } else {
        -1
    }
}

/// Sends `size` bytes to `to`, half-closes, waits for the receiver's close; returns the wall
/// time, the effective MSS and the CPUs' shares.
fn send(
    pair: &VethPair,
    to: SocketAddrV4,
    size: usize,
    mode: Mode,
) -> (Duration, i32, Vec<(f64, f64)>) {
    pair.b.run(|| {
        let cpu0 = cpu_jiffies();
        let start = Instant::now();
        let mut c = connect(to, mode.mss()).expect("connect");
        let mss = effective_mss(&c);
        let buf = vec![0x5au8; 256 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            c.write_all(&buf[..n]).expect("send");
            left -= n;
        }
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("wait for the receiver's close");
        let wall = start.elapsed();
        (wall, mss, cpu_shares(&cpu0, &cpu_jiffies()))
    })
}

fn kernel_round(size: usize, mode: Mode) -> Round {
    let pair = VethPair::create("sk", Some("10.97.0.1/24"), "10.97.0.2/24").expect("veth pair");
    let listener = pair
        .a
        .run(|| TcpListener::bind(SocketAddrV4::new(KERNEL_A, 9)).expect("bind"));
    let ((wall, mss, cpus), (got, rx_cpu)) = std::thread::scope(|s| {
        let rx = s.spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            let cpu0 = thread_cpu();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = c.read(&mut buf).expect("receive");
                if n == 0 {
                    break (got, thread_cpu() - cpu0);
                }
                got += n as u64;
            }
        });
        let t = send(&pair, SocketAddrV4::new(KERNEL_A, 9), size, mode);
        (t, rx.join().expect("receiver thread"))
    });
    // A fresh namespace per round: the absolute count is this round's.
    let frames = pair
        .a
        .nstat()
        .expect("nstat")
        .get("TcpInSegs")
        .copied()
        .unwrap_or(0);
    assert_eq!(got, size as u64);
    Round {
        wall,
        bytes: got,
        frames,
        mss,
        rx_cpu,
        cpus,
    }
}

fn afxdp_round(size: usize, mode: Mode) -> Round {
    let pair = VethPair::create("sx", None, "10.97.0.2/24").expect("veth pair");
    let stop = AtomicBool::new(false);
    let ready = AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            pair.a.run(|| {
                let mut w = common::worker(&pair.if_a, OURS, 9, Builtin::Sink);
                ready.store(true, Ordering::SeqCst);
                let cpu0 = thread_cpu();
                w.run(&stop).expect("worker loop");
                (w.stats, thread_cpu() - cpu0)
            })
        });
        assert!(wait_for(Duration::from_secs(10), || ready
            .load(Ordering::SeqCst)
            .then_some(()))
        .is_some());
        let (wall, mss, cpus) = send(&pair, SocketAddrV4::new(OURS, 9), size, mode);
        stop.store(true, Ordering::SeqCst);
        let (ws, rx_cpu) = worker.join().expect("worker thread");
        assert_eq!(ws.sink_bytes, size as u64);
        Round {
            wall,
            bytes: ws.sink_bytes,
            frames: ws.frames_in,
            mss,
            rx_cpu,
            cpus,
        }
    })
}

struct Summary {
    gbps: f64,
    fps: f64,
}

fn summarize(v: &[Round]) -> Summary {
    let t: f64 = v.iter().map(|r| r.wall.as_secs_f64()).sum();
    let b: u64 = v.iter().map(|r| r.bytes).sum();
    let f: u64 = v.iter().map(|r| r.frames).sum();
    Summary {
        gbps: b as f64 * 8.0 / t / 1e9,
        fps: f as f64 / t,
    }
}

fn line(name: &str, i: usize, r: &Round) {
    let s = r.wall.as_secs_f64();
    let cpus: Vec<String> = r
        .cpus
        .iter()
        .map(|(b, si)| format!("{:3.0}% (si {:2.0}%)", b * 100.0, si * 100.0))
        .collect();
    println!(
        "  {name:6} round {i}: {:6.2} Gbit/s {:7.0} k frames/s  {:4.0} B/frame  mss {:4}  \
         receiver thread {:3.0}% of a core  cpus busy [{}]",
        r.bytes as f64 * 8.0 / s / 1e9,
        r.frames as f64 / s / 1e3,
        r.bytes as f64 / r.frames.max(1) as f64,
        r.mss,
        r.rx_cpu.as_secs_f64() / s * 100.0,
        cpus.join(", "),
    );
}

fn run_mode(mode: Mode, size: usize, rounds: usize) -> (Summary, Summary) {
    let mut k = Vec::new();
    let mut x = Vec::new();
    println!(
        "{mode:?} segments ({}): {} MiB per stream, {rounds} interleaved rounds each",
        match mode.mss() {
            Some(m) => format!("TCP_MAXSEG {m}"),
            None => "sender's MSS".into(),
        },
        size >> 20
    );
    for i in 0..rounds {
        let r = kernel_round(size, mode);
        line("kernel", i, &r);
        k.push(r);
        let r = afxdp_round(size, mode);
        line("afxdp", i, &r);
        x.push(r);
    }
    if let Some(m) = mode.mss() {
        // The cap must have taken: otherwise this mode measures nothing new.
        for r in k.iter().chain(&x) {
            assert!(r.mss > 0 && r.mss <= m, "effective MSS {} > {m}", r.mss);
        }
    }
    let (ks, xs) = (summarize(&k), summarize(&x));
    println!(
        "  kernel (plain veth):          {:6.2} Gbit/s  {:7.0} k segments/s received",
        ks.gbps,
        ks.fps / 1e3
    );
    println!(
        "  afxdp worker (tcpstack sink): {:6.2} Gbit/s  {:7.0} k frames/s received",
        xs.gbps,
        xs.fps / 1e3
    );
    println!(
        "  ratio afxdp/kernel: {:.2} (Gbit/s), {:.2} (frames/s)",
        xs.gbps / ks.gbps,
        xs.fps / ks.fps
    );
    (ks, xs)
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
    // Full-size streams are 1 GiB; small-segment streams 128 MiB (about 1.8 M segments), so a
    // round of either lasts a second or two.
    let (full, small, rounds) = if bench {
        (1usize << 30, 128usize << 20, 3)
    } else {
        (4 << 20, 1 << 20, 1)
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "one TCP stream into a sink; load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    run_mode(Mode::Full, full, rounds);
    let (_, xs) = run_mode(Mode::Small, small, rounds);
    if bench {
        println!(
            "goal: >= 1.5 M frames/s into sink on one worker: {:.2} M/s ({})",
            xs.fps / 1e6,
            if xs.fps >= 1.5e6 { "met" } else { "not met" }
        );
    }
}
