//! Kernel-side clients shared by the interop tests, and the four-namespace rig's helpers
//! (`scripts/rig.sh`, the gateways' admin API) for the rig tests.
#![allow(dead_code)]

use dataplane::netns::NetNs;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A kernel TCP client (call it inside the peer's namespace): sends `size` seeded random bytes
/// to an echo service at `to` while reading the echo back, then half-closes. Returns the sha256
/// of what it sent, of what came back, and how many bytes came back.
pub fn kernel_echo_client(to: SocketAddrV4, size: usize, seed: u64) -> (Vec<u8>, Vec<u8>, usize) {
    let mut c = TcpStream::connect_timeout(&to.into(), Duration::from_secs(10)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
        h.finalize().to_vec()
    });
    let mut h = Sha256::new();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = c.read(&mut buf).expect("read echo");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    (writer.join().unwrap(), h.finalize().to_vec(), got)
}

// ---------------------------------------------------------------------------------------
// The rig (scripts/rig.sh): the namespaces, the gateways and their admin API.

/// The workspace's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/rig.sh ARGS` with this build's `xdpmesh` and the state directory `state`;
/// panics with its output when it fails.
pub fn rig(args: &[&str], state: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/rig.sh"))
        .args(args)
        .env("XM_RIG_STATE", state)
        .env("XDPMESH_BIN", env!("CARGO_BIN_EXE_xdpmesh"))
        .current_dir(repo())
        .output()
        .expect("run rig.sh");
    assert!(
        out.status.success(),
        "rig.sh {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rig.sh down` on drop, panics included: every process left in the rig's namespaces is
/// stopped and the namespaces removed.
pub struct RigGuard {
    pub work: PathBuf,
}

impl Drop for RigGuard {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/rig.sh"))
            .arg("down")
            .env("XM_RIG_STATE", &self.work)
            .current_dir(repo())
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("rig.sh down after the test failed: {out:?}");
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// `GET path` on the admin API of the gateway in `ns` (127.0.0.1:9901); panics unless 2xx.
pub fn admin_get(ns: &NetNs, path: &str) -> String {
    ns.exec_ok([
        "curl",
        "-sf",
        "--max-time",
        "5",
        &format!("http://127.0.0.1:9901{path}"),
    ])
    .unwrap_or_else(|e| panic!("GET {path} in {}: {e}", ns.name()))
}

/// The sum of every series of `name` on the gateway in `ns` whose labels contain `label`
/// (all workers; `""` for every series).
pub fn metric(ns: &NetNs, name: &str, label: &str) -> u64 {
    metric_in(&admin_get(ns, "/metrics"), name, label)
}

/// [`metric`] over a `/metrics` text already read.
pub fn metric_in(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Loads `text` as the tables of the gateway in `ns` (`PUT /tables`), keeping a copy as
/// `dir/name`; panics unless the gateway answers 200.
pub fn put_tables(ns: &NetNs, text: &str, dir: &Path, name: &str) {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    let out = ns
        .exec([
            "curl",
            "-s",
            "-o",
            "/dev/stderr",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", f.display()),
            "http://127.0.0.1:9901/tables",
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "PUT /tables {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `xdpmesh run --backend kernel` on a node file in a directory of its own (kernel sockets, no
/// root). Killed on drop, and then its directory removed.
pub struct KernelGateway {
    pub child: std::process::Child,
    pub dir: PathBuf,
}

impl KernelGateway {
    /// Starts the gateway of `dir/node.toml`; returns once it prints its `ready` line (panics
    /// with what it printed when that does not come within 20 s).
    pub fn start(dir: PathBuf) -> KernelGateway {
        use std::io::BufRead;
        use std::sync::{Arc, Mutex};
        let child = Command::new(env!("CARGO_BIN_EXE_xdpmesh"))
            .args(["run", "--backend", "kernel", "--config"])
            .arg(dir.join("node.toml"))
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn xdpmesh run");
        let mut gw = KernelGateway { child, dir };
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let out = gw.child.stdout.take().unwrap();
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    l.lock().unwrap().push(line);
                }
            });
        }
        let ready = dataplane::netns::wait_for(Duration::from_secs(20), || {
            let l = lines.lock().unwrap();
            l.iter().any(|l| l.contains(" ready")).then_some(())
        });
        assert!(ready.is_some(), "not ready: {:?}", lines.lock().unwrap());
        gw
    }
}

impl Drop for KernelGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
