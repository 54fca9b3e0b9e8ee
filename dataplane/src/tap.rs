//! A Linux TAP device: raw Ethernet frames between a userspace stack and the kernel.
//!
//! [`TapDevice::create`] opens `/dev/net/tun` and attaches a new TAP interface (`IFF_TAP |
//! IFF_NO_PI`: every read and write is exactly one Ethernet frame, no extra header). The fd is
//! nonblocking; [`TapDevice::wait_readable`] sleeps in `poll(2)`. The interface exists as long as
//! the fd is open and disappears when the [`TapDevice`] is dropped.
//!
//! The kernel side of the link is the TAP interface itself: frames the kernel transmits on it are
//! read here, and frames written here arrive as received on it. Tests put that kernel peer in its
//! own network namespace with `ip link set <tap> netns <ns>`: the fd stays valid and attached
//! after the move, so the userspace stack keeps running in the test process while the kernel
//! peer (addresses, routes, sockets, nstat counters) lives in the namespace. Configure the
//! interface (address, `up`, `ethtool -K <tap> tx off`) after the move, because moving a device
//! to another namespace brings it down and drops its addresses.
//!
//! Needs `CAP_NET_ADMIN` (root).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Longest interface name Linux accepts (`IFNAMSIZ` is 16 with the NUL).
pub const MAX_IFNAME_LEN: usize = libc::IFNAMSIZ - 1;

/// An open TAP interface. See the module documentation.
#[derive(Debug)]
pub struct TapDevice {
    fd: OwnedFd,
    name: String,
}

impl TapDevice {
    /// Creates the TAP interface `name` (1 to 15 bytes, no `/`, `:`, whitespace or NUL) in the
    /// calling thread's network namespace and opens it nonblocking.
    ///
    /// Errors: `InvalidInput` for a bad name, otherwise what `open`/`ioctl(TUNSETIFF)` return
    /// (`EPERM` without `CAP_NET_ADMIN`, `EBUSY` when a non-TAP interface has that name).
    pub fn create(name: &str) -> io::Result<Self> {
        validate_ifname(name)?;

        // SAFETY: the path is a valid NUL-terminated C string; open has no other preconditions.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: ifreq is plain old data; all-zero is a valid value (empty name, zero union).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // IFF_TAP | IFF_NO_PI = 0x1002 fits in a c_short.
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;

        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is, and `fd` is open.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }

        // The kernel writes back the name it used; it is NUL-terminated within IFNAMSIZ.
        // SAFETY: ifr_name is IFNAMSIZ bytes long and the kernel (or our zeroing, since the name
        // is at most 15 bytes) leaves a NUL inside it.
        let got = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) };
        let name = got.to_string_lossy().into_owned();
        Ok(Self { fd, name })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame into `buf`. `Ok(None)` when no frame is waiting (`EAGAIN`).
    ///
    /// `buf` should hold the largest frame the interface can send (MTU + 14); the kernel
    /// truncates or rejects a frame that does not fit.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes and the fd is open.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(err),
            }
        }
    }

    /// Writes one Ethernet frame (destination MAC first, no FCS). The kernel receives it on the
    /// interface as if it came off the wire.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `frame` is valid for reads of `frame.len()` bytes and the fd is open.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if n >= 0 {
                // A TAP write takes the whole frame or fails; anything else is unexpected.
                if n as usize != frame.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("tap {}: short write {n} of {}", self.name, frame.len()),
                    ));
                }
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Waits until a frame can be read or `timeout` passes. `Ok(true)` when readable (or when
    /// the fd reports an error, which the next [`recv`](Self::recv) returns).
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Round up so a sub-millisecond remainder does not turn into a busy loop.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd and nfds is 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if rc == 0 {
                return Ok(false);
            }
            if pfd.revents & libc::POLLNVAL != 0 {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            return Ok(true);
        }
    }
}

impl AsRawFd for TapDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Checks a Linux interface name: 1..=15 bytes, none of NUL, `/`, `:` or whitespace, not `.`/`..`.
pub fn validate_ifname(name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.len() > MAX_IFNAME_LEN
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace());
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}: 1 to {MAX_IFNAME_LEN} bytes, no '/', ':', NUL or whitespace"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("tap0").is_ok());
        assert!(validate_ifname("a23456789012345").is_ok());
        for bad in [
            "",
            "a234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\0b",
            ".",
            "..",
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn create_rejects_bad_name_before_touching_the_kernel() {
        let err = TapDevice::create("name-too-long-for-linux").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
