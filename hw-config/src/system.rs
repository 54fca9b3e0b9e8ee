//! What this machine has: interfaces, their RX queues, CPUs.
//!
//! A node file is often checked away from the node (a laptop, CI), so by default
//! only interfaces that exist here are checked against the machine
//! ([`SystemChecks::IfPresent`]); `xdpmesh check --system` asks for
//! [`SystemChecks::Required`], where a missing interface is an error too.

use std::path::{Path, PathBuf};

/// Which checks against the running machine to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SystemChecks {
    /// None: the file alone (examples, files for other machines).
    Off,
    /// For interfaces that exist here: queue ids against their RX queues, cores
    /// against the CPUs. A missing interface is not an error. The default.
    #[default]
    IfPresent,
    /// As `IfPresent`, and every interface must exist here.
    Required,
}

/// Where to look. [`System::here`] reads the real sysfs.
#[derive(Debug, Clone)]
pub struct System {
    /// `/sys/class/net`: one entry per interface, each with `queues/rx-N`.
    pub net_dir: PathBuf,
    /// CPUs a worker can be pinned to (ids `0..cpus`).
    pub cpus: u32,
}

impl System {
    pub fn here() -> Self {
        Self {
            net_dir: PathBuf::from("/sys/class/net"),
            cpus: cpu_count(Path::new("/sys/devices/system/cpu/possible")),
        }
    }

    /// Interface names, sorted.
    pub fn interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.net_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn has_interface(&self, name: &str) -> bool {
        // Interface names never contain '/', but the file is untrusted input.
        !name.is_empty() && !name.contains('/') && self.net_dir.join(name).exists()
    }

    /// Number of `queues/rx-N` entries (the RX queues the driver has enabled now).
    pub fn rx_queues(&self, name: &str) -> Option<u32> {
        let rd = std::fs::read_dir(self.net_dir.join(name).join("queues")).ok()?;
        let n = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count();
        u32::try_from(n).ok()
    }
}

/// `0-3` or `0,2-5` → highest id + 1; falls back to what std sees.
fn cpu_count(possible: &Path) -> u32 {
    let parsed = std::fs::read_to_string(possible).ok().and_then(|s| {
        s.trim()
            .split(',')
            .filter_map(|r| r.rsplit('-').next()?.parse::<u32>().ok())
            .max()
            .map(|m| m + 1)
    });
    parsed.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ranges() {
        let d = std::env::temp_dir().join(format!("hwcfg-cpu-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("mkdir");
        let f = d.join("possible");
        std::fs::write(&f, "0-3\n").expect("write");
        assert_eq!(cpu_count(&f), 4);
        std::fs::write(&f, "0,2-5\n").expect("write");
        assert_eq!(cpu_count(&f), 6);
        std::fs::write(&f, "0\n").expect("write");
        assert_eq!(cpu_count(&f), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn loopback_has_one_rx_queue_here() {
        let s = System::here();
        assert!(s.has_interface("lo"));
        assert_eq!(s.rx_queues("lo"), Some(1));
        assert!(!s.has_interface("../lo"));
        assert!(s.interfaces().iter().any(|n| n == "lo"));
    }
}
