//! Sleeping on several descriptors at once, and an eventfd that wakes a sleeping worker
//! when another worker hands it frames.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An eventfd: readable once notified, until cleared.
#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2) call; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Makes the descriptor readable. Never blocks: a saturated counter (EAGAIN) is
    /// already readable.
    pub fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our descriptor.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Makes the descriptor unreadable again (until the next `notify`).
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN means already clear.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// ppoll(2) until one of `fds` is readable or `timeout` passes; `Ok(false)` on timeout or
/// EINTR. Timeouts are exact to the ns (poll(2)'s milliseconds would turn a worker's
/// tens-of-µs nap into a millisecond, or into a spin).
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> io::Result<bool> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let n = fds.len().min(pfds.len());
    for (p, fd) in pfds.iter_mut().zip(&fds[..n]) {
        p.fd = *fd;
    }
    // Capped at a day: a longer timeout is a caller's "for ever", and it keeps tv_sec small.
    let timeout = timeout.min(Duration::from_secs(86_400));
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `n` valid pollfds, a live timespec, no signal mask.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0 && pfds[..n].iter().any(|p| p.revents & libc::POLLIN != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_makes_readable_and_clear_resets() {
        let w = Wake::new().unwrap();
        assert!(!poll_readable(&[w.fd()], Duration::ZERO).unwrap());
        w.notify();
        w.notify();
        assert!(poll_readable(&[w.fd()], Duration::ZERO).unwrap());
        w.clear();
        assert!(!poll_readable(&[w.fd()], Duration::ZERO).unwrap());
    }

    #[test]
    fn a_sub_millisecond_timeout_is_slept_not_skipped() {
        let w = Wake::new().unwrap();
        let t = std::time::Instant::now();
        assert!(!poll_readable(&[w.fd()], Duration::from_micros(300)).unwrap());
        assert!(t.elapsed() >= Duration::from_micros(300));
        // A readable descriptor ends it at once, whatever the timeout.
        w.notify();
        assert!(poll_readable(&[w.fd()], Duration::from_secs(u64::MAX / 2)).unwrap());
    }
}
