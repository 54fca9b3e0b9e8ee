//! Test support: real Linux network namespaces, for tests that talk to the kernel's own stack.
//!
//! A [`NetNs`] is a fresh, uniquely named namespace (`ip netns add`) with only `lo` (up) in it.
//! Tests move a TAP or veth end into it, run programs in it ([`NetNs::exec`], [`NetNs::spawn`]),
//! open kernel sockets in it from Rust ([`NetNs::run`]), read its counters ([`NetNs::nstat`])
//! and inject loss ([`NetNs::add_loss`]). Dropping it stops every process still inside and
//! deletes it.
//!
//! Everything here needs root. Tests call [`skip_unless_root`] first:
//! ```no_run
//! # fn t() {
//! if dataplane::netns::skip_unless_root("my_test") {
//!     return;
//! }
//! let ns = dataplane::netns::NetNs::create("my").expect("netns");
//! # }
//! ```
//! Under `CI=true` (or `XDPMESH_REQUIRE_ROOT_TESTS=1`, which `scripts/test.sh` sets in CI) a
//! root-only test must run: [`skip_unless_root`] then panics instead of skipping.
//!
//! The helpers shell out to iproute2 (`ip`, `nstat`) and `nft`, as a person would; they are for
//! tests and tools, never for the data path.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Environment variable that makes root-only tests mandatory (`scripts/test.sh` sets it to `1`
/// when `CI=true`).
pub const REQUIRE_ROOT_ENV: &str = "XDPMESH_REQUIRE_ROOT_TESTS";

/// nftables table that [`NetNs::add_loss`] owns inside the namespace.
const LOSS_TABLE: &str = "xm_loss";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when root-only tests must run rather than skip: `CI` is `true`/`1`, or
/// [`REQUIRE_ROOT_ENV`] is `1`.
pub fn root_tests_required() -> bool {
    let set = |k: &str, vals: &[&str]| std::env::var(k).is_ok_and(|v| vals.contains(&v.as_str()));
    set("CI", &["true", "1"]) || set(REQUIRE_ROOT_ENV, &["1", "true"])
}

/// True when the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Call at the start of a root-only test; when it returns `true`, return from the test.
///
/// Returns `false` when running as root. When not root it prints why `test_name` is skipped and
/// returns `true`, unless [`root_tests_required`]: then it panics, because a required test that
/// skips would pass without testing anything.
pub fn skip_unless_root(test_name: &str) -> bool {
    if is_root() {
        return false;
    }
    if root_tests_required() {
        panic!(
            "{test_name}: needs root (network namespaces) and root tests are required here \
             (CI=true or {REQUIRE_ROOT_ENV}=1); run as root: sudo scripts/test.sh"
        );
    }
    // Written to the stderr handle, not with eprintln!, which the test harness captures and
    // shows only for failures: a skip must be visible.
    let _ = writeln!(
        io::stderr(),
        "SKIPPED {test_name}: needs root (network namespaces); run as root: sudo scripts/test.sh"
    );
    true
}

/// A name unique to this process and call, at most 15 bytes so it also works as an interface
/// name: the first 3 bytes of `prefix`, `-`, the pid in hex, `-`, a per-process counter in hex
/// (4 digits at most; it wraps after 65536 names). Example: `tap-1f3a-0`.
pub fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(3)
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff;
    format!("{prefix}-{:x}-{n:x}", std::process::id())
}

/// Polls `f` every 10 ms until it returns `Some` or `timeout` passes (then `None`). For waiting
/// on a condition with a deadline, never for a fixed sleep.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A network namespace that exists for the lifetime of this value. See the module docs.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Created here: deleted (and its processes killed) on drop.
    owned: bool,
}

impl NetNs {
    /// Creates a namespace named by [`unique_name`]`(prefix)` with `lo` up.
    pub fn create(prefix: &str) -> io::Result<Self> {
        // A name left behind by an earlier crashed process with the same pid is skipped.
        for _ in 0..16 {
            let name = unique_name(prefix);
            let out = Command::new("ip").args(["netns", "add", &name]).output()?;
            if out.status.success() {
                let ns = Self { name, owned: true };
                ns.exec_ok(["ip", "link", "set", "lo", "up"])?;
                return Ok(ns);
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("exists") {
                return Err(io::Error::other(format!(
                    "ip netns add {name}: {}",
                    stderr.trim()
                )));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free namespace name for prefix {prefix:?}"),
        ))
    }

    /// A handle to a namespace made by someone else (the rig's `xm-*`): never deleted here.
    pub fn existing(name: &str) -> io::Result<Self> {
        let ns = Self {
            name: name.to_string(),
            owned: false,
        };
        if !ns.path().exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network namespace {name} (scripts/rig.sh up makes the rig's)"),
            ));
        }
        Ok(ns)
    }

    /// The namespace's name (as `ip netns list` shows it; at most 15 bytes).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip netns exec <name> <program>`, ready for more arguments and stdio settings.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    fn command_from<I, S>(&self, args: I) -> io::Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut it = args.into_iter();
        let program = it
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = self.command(program);
        cmd.args(it);
        Ok(cmd)
    }

    /// Runs `args` (program first) inside the namespace and collects its output.
    pub fn exec<I, S>(&self, args: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command_from(args)?.stdin(Stdio::null()).output()
    }

    /// Like [`exec`](Self::exec), but a non-zero exit is an error that carries the command and
    /// its stderr; returns stdout.
    pub fn exec_ok<I, S>(&self, args: I) -> io::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.exec(&args)?;
        if !out.status.success() {
            let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            return Err(io::Error::other(format!(
                "in netns {}: `{}` failed ({}): {}",
                self.name,
                shown.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `args` (program first) inside the namespace: stdin and stdout null, stderr
    /// inherited. Use [`command`](Self::command) for other stdio. Returns once the process is
    /// inside the namespace (see [`wait_entered`](Self::wait_entered)). The process is killed
    /// when this `NetNs` is dropped, if it still runs; waiting for it stays the caller's job.
    pub fn spawn<I, S>(&self, args: I) -> io::Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = self
            .command_from(args)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        if let Err(e) = self.wait_entered(&mut child) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(child)
    }

    /// Waits (up to 5 s) until `child`, started from [`command`](Self::command), has joined the
    /// namespace or exited. `ip netns exec` joins it only after the fork, so right after
    /// `spawn()` the process may still be outside, where [`pids`](Self::pids) and the kill on
    /// drop would miss it.
    pub fn wait_entered(&self, child: &mut Child) -> io::Result<()> {
        let want = format!("net:[{}]", std::fs::metadata(self.path())?.ino());
        let link = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(()); // exited: nothing left to miss; the caller sees its status
            }
            if std::fs::read_link(&link).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "pid {} did not enter netns {} in 5 s",
                        child.id(),
                        self.name
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs `f` on a new thread that has joined this namespace with `setns(CLONE_NEWNET)`, so
    /// every socket `f` opens (`std::net`, mio, ...) is a kernel socket of this namespace.
    /// A panic in `f` is propagated.
    ///
    /// # Panics
    /// When the namespace cannot be joined (not root, or it was deleted); see
    /// [`try_run`](Self::try_run) for the error instead.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        match self.try_run(f) {
            Ok(r) => r,
            Err(e) => panic!("cannot enter netns {}: {e}", self.name),
        }
    }

    /// [`run`](Self::run), returning an error when the namespace cannot be joined.
    pub fn try_run<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(self.path())?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                // setns changes only the calling thread, which ends when `f` returns.
                // SAFETY: `file` is an open nsfs fd for the lifetime of this call.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(file);
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The namespace's SNMP and netstat counters from `nstat -asz` (absolute values, zeros
    /// included, history untouched), e.g. `TcpInCsumErrors`, `TcpOutRsts`, `IpExtInCsumErrors`.
    pub fn nstat(&self) -> io::Result<HashMap<String, u64>> {
        let out = self.exec_ok(["nstat", "-asz"])?;
        Ok(parse_nstat(&out))
    }

    /// Drops `percent` (0 to 100, to 0.01) of the packets this namespace's kernel receives for
    /// itself, at random: an nftables `input` hook rule with `numgen random` (DESIGN.md; there is
    /// no netem here). Forwarded and outgoing packets are not touched. Replaces an earlier
    /// [`add_loss`](Self::add_loss) setting.
    pub fn add_loss(&self, percent: f64) -> io::Result<()> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("loss {percent} % is not between 0 and 100"),
            ));
        }
        let basis_points = (percent * 100.0).round() as u32;
        // nft refuses a constant outside numgen's range, so 100 % is an unconditional drop.
        let matcher = if basis_points >= 10_000 {
            String::new()
        } else {
            format!("numgen random mod 10000 < {basis_points} ")
        };
        // One nft transaction: create-then-delete makes it idempotent, then the table anew.
        let script = format!(
            "add table inet {LOSS_TABLE}\n\
             delete table inet {LOSS_TABLE}\n\
             table inet {LOSS_TABLE} {{\n\
               chain input {{\n\
                 type filter hook input priority 0; policy accept;\n\
                 {matcher}counter drop\n\
               }}\n\
             }}\n"
        );
        self.nft_script(&script)
    }

    /// Removes the loss rule of [`add_loss`](Self::add_loss) (no error when there is none).
    pub fn clear_loss(&self) -> io::Result<()> {
        self.nft_script(&format!(
            "add table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n"
        ))
    }

    /// Packets dropped so far by the [`add_loss`](Self::add_loss) rule, so a test can show that
    /// loss really happened.
    pub fn loss_dropped(&self) -> io::Result<u64> {
        let out = self.exec_ok(["nft", "list", "table", "inet", LOSS_TABLE])?;
        parse_nft_counter(&out).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no counter in `nft list table inet {LOSS_TABLE}`: {out}"),
            )
        })
    }

    fn nft_script(&self, script: &str) -> io::Result<()> {
        let mut child = self
            .command("nft")
            .args(["-f", "/dev/stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "in netns {}: nft -f failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip netns pids {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

/// Two namespaces joined by a veth pair: `a` is the gateway side, `b` the kernel peer with an
/// address and checksum offload off (DESIGN.md: otherwise it sends partial checksums).
#[derive(Debug)]
pub struct VethPair {
    pub a: NetNs,
    pub b: NetNs,
    pub if_a: String,
    pub if_b: String,
}

impl VethPair {
    /// `a_cidr`: a kernel address on A's end, if any (the gateway usually owns its address
    /// alone); `b_cidr`: the peer's address. Returns once A's end is up.
    pub fn create(prefix: &str, a_cidr: Option<&str>, b_cidr: &str) -> io::Result<Self> {
        Self::create_with_queues(prefix, a_cidr, b_cidr, 1)
    }

    /// Like [`create`](Self::create), with `queues` RX and TX queues on both ends. A veth
    /// delivers a frame on the receive queue numbered like the TX queue the sender picked,
    /// so the kernel peer's flows spread over the gateway's queues.
    pub fn create_with_queues(
        prefix: &str,
        a_cidr: Option<&str>,
        b_cidr: &str,
        queues: u32,
    ) -> io::Result<Self> {
        let a = NetNs::create(&format!("{prefix}a"))?;
        let b = NetNs::create(&format!("{prefix}b"))?;
        let if_a = unique_name(&format!("{prefix}a"));
        let if_b = unique_name(&format!("{prefix}b"));
        let q = queues.max(1).to_string();
        let qargs = ["numtxqueues", q.as_str(), "numrxqueues", q.as_str()];
        let out = Command::new("ip")
            .args(["link", "add", &if_a])
            .args(qargs)
            .args(["netns", a.name(), "type", "veth"])
            .args(["peer", "name", &if_b])
            .args(qargs)
            .args(["netns", b.name()])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip link add veth: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if let Some(c) = a_cidr {
            a.exec_ok(["ip", "addr", "add", c, "dev", &if_a])?;
        }
        a.exec_ok(["ip", "link", "set", &if_a, "up"])?;
        b.exec_ok(["ip", "addr", "add", b_cidr, "dev", &if_b])?;
        b.exec_ok(["ip", "link", "set", &if_b, "up"])?;
        b.exec_ok(["ethtool", "-K", &if_b, "tx", "off"])?;
        let pair = VethPair { a, b, if_a, if_b };
        let up = wait_for(Duration::from_secs(10), || {
            let s = pair.a.exec_ok(["ip", "link", "show", &pair.if_a]).ok()?;
            s.contains("state UP").then_some(())
        });
        up.ok_or_else(|| io::Error::other(format!("{} never came up", pair.if_a)))?;
        Ok(pair)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Everything inside was started by the test that owns this namespace.
        let live = || self.pids().ok().filter(|p| !p.is_empty());
        if let Some(pids) = live() {
            for pid in pids {
                // SAFETY: kill has no memory preconditions; a pid that just exited gives ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // Killed processes leave the namespace once the kernel has reaped their tasks.
            let _ = wait_for(Duration::from_secs(2), || live().is_none().then_some(()));
        }
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "netns {}: ip netns del failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("netns {}: ip netns del: {e}", self.name),
        }
    }
}

/// Parses `nstat -a` output: `Name value rate` per line, `#` lines skipped, bad lines ignored.
pub fn parse_nstat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let value = it.next()?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// The packet count of the first `counter packets N bytes M` in `nft list` output.
fn parse_nft_counter(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "counter" && words.next() == Some("packets") {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_an_interface_name_and_differ() {
        let a = unique_name("tapdevice");
        let b = unique_name("tapdevice");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= 15, "{n}");
            assert!(n.starts_with("tap-"), "{n}");
        }
        crate::tap::validate_ifname(&a).unwrap();
    }

    #[test]
    fn parses_nstat_output() {
        let text = "#kernel\nIpInReceives                    12                 0.0\n\
                    TcpInCsumErrors                 0                  0.0\n\
                    IpExtInCsumErrors               3                  0.0\ngarbage\n";
        let m = parse_nstat(text);
        assert_eq!(m.get("IpInReceives"), Some(&12));
        assert_eq!(m.get("TcpInCsumErrors"), Some(&0));
        assert_eq!(m.get("IpExtInCsumErrors"), Some(&3));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn parses_nft_counter() {
        let text = "table inet xm_loss {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tnumgen random mod 10000 < 300 counter packets 17 bytes 1234 drop\n\t}\n}\n";
        assert_eq!(parse_nft_counter(text), Some(17));
        assert_eq!(parse_nft_counter("table inet x {}"), None);
    }

    #[test]
    fn wait_for_returns_value_or_times_out() {
        let mut n = 0;
        assert_eq!(
            wait_for(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        assert_eq!(wait_for(Duration::from_millis(30), || None::<()>), None);
    }

    #[test]
    fn add_loss_rejects_out_of_range() {
        let ns = NetNs {
            name: "never-created".into(),
            owned: false,
        };
        let err = ns.add_loss(101.0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = ns.add_loss(f64::NAN).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
