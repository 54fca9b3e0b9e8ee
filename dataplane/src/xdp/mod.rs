//! AF_XDP packet I/O: one [`XskDevice`] (socket + UMEM) per interface queue and
//! worker, and one [`Steering`] program per interface that decides which frames
//! reach those sockets and which go to the kernel.
//!
//! ```text
//! let steer = Arc::new(Steering::attach("eth1", XdpMode::Native, &owned, retry)?);
//! let mut dev = XskDevice::open(&XskConfig::new("eth1", 0), Some(steer.clone()))?;
//! dev.receive(64, |frame| ..);  dev.transmit(64, |buf| ..);  dev.wait(timeout);
//! ```
//! Both must be created in the interface's network namespace (names and
//! indices are resolved in the calling thread's namespace); afterwards they can
//! be used from any thread.
//!
//! What we learnt making this work on veth (details in `README.md` here):
//! native mode, copy bind (`XDP_COPY | XDP_USE_NEED_WAKEUP`), libxdp's default
//! program inhibited (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`), our program attached
//! through a BPF link so it goes away with the process, EBUSY on a re-bind right
//! after close (the old buffer pool is released from a kernel work item).

mod socket;
mod steer;
pub mod sys;

pub use socket::{BindMode, XskConfig, XskDevice, XskStats};
pub use steer::{SteerConfig, SteerStats, Steering, MAX_LISTENERS, MAX_LOCAL_ADDRS, MAX_QUEUES};

use std::io;
use std::thread;
use std::time::{Duration, Instant};

/// How the XDP program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`). The default; works on veth.
    #[default]
    Native,
    /// In the generic skb path (`XDP_FLAGS_SKB_MODE`), for drivers without XDP.
    /// Slower, and on veth it drops GSO super-packets: only when asked.
    Generic,
}

impl XdpMode {
    pub(crate) fn xdp_flags(self) -> u32 {
        match self {
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// Setting up AF_XDP failed.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The name cannot be an interface name.
    #[error("`{0}` is not a valid interface name")]
    BadInterfaceName(String),
    /// No such interface in this network namespace.
    #[error("interface `{name}`: {source}")]
    NoSuchInterface {
        /// The interface name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A configuration value is out of range.
    #[error("{0}")]
    Config(String),
    /// The UMEM could not be created.
    #[error("UMEM: {reason}")]
    Umem {
        /// What failed.
        reason: String,
    },
    /// The AF_XDP socket could not be created or bound.
    #[error("AF_XDP socket on {ifname} queue {queue_id}: {reason}{hint}")]
    Socket {
        /// The interface name.
        ifname: String,
        /// The queue.
        queue_id: u32,
        /// What failed.
        reason: String,
        /// A hint for the usual causes.
        hint: &'static str,
        /// What the kernel said, when it said something.
        #[source]
        source: Option<io::Error>,
    },
    /// A libbpf call failed.
    #[error("BPF: {what}: {source}")]
    Bpf {
        /// The step that failed.
        what: &'static str,
        /// What the kernel or libbpf said.
        #[source]
        source: io::Error,
    },
    /// The program could not be attached.
    #[error("attach XDP program to {ifname} ({mode} mode): {source} (hint: another XDP program may be attached: `ip link show {ifname}`)")]
    Attach {
        /// The interface name.
        ifname: String,
        /// The requested mode.
        mode: XdpMode,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// Runs `f` until it stops failing with EBUSY or `window` has passed, backing off
/// from 1 ms doubling to 64 ms between tries.
pub(crate) fn retry_busy<T>(
    window: Duration,
    mut f: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let deadline = Instant::now() + window;
    let mut pause = Duration::from_millis(1);
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(64));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn retry_busy_retries_only_ebusy_and_gives_up_after_the_window() {
        let calls = Cell::new(0);
        let r: io::Result<u32> = retry_busy(Duration::from_millis(200), || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(io::Error::from_raw_os_error(libc::EBUSY))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let r: io::Result<u32> = retry_busy(Duration::from_millis(200), || {
            calls.set(calls.get() + 1);
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert_eq!(calls.get(), 1, "non-EBUSY errors are not retried");

        let start = Instant::now();
        let r: io::Result<u32> = retry_busy(Duration::from_millis(30), || {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        });
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBUSY));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the window bounds the retries"
        );
    }
}
