//! A timerfd registered with mio's poll, for wake-ups finer than epoll's millisecond timeout.
//!
//! `epoll_wait` takes its timeout in whole milliseconds (mio rounds up), which would make every
//! request at 2000 req/s up to 1 ms late and that lateness would show up as latency. A timerfd
//! is an hrtimer with no timer slack, so the loop wakes within microseconds of the next send.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

pub(crate) struct Timer {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl Timer {
    pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Self { fd, armed: None })
    }

    /// Make sure the timer fires no later than `at`.
    pub(crate) fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if let Some(t) = self.armed {
            if t > now && t <= at {
                return Ok(());
            }
        }
        // A zero it_value disarms the timer: fire after 1 ns instead.
        let delta = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: delta.as_secs() as _,
                tv_nsec: delta.subsec_nanos() as _,
            },
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec)?;
        self.armed = Some(at);
        Ok(())
    }

    /// The timer's fd was readable: consume the expiry count.
    pub(crate) fn fired(&mut self) {
        let mut buf = [0u8; 8];
        // WouldBlock means another wake-up already consumed it: nothing to do.
        let _ = rustix::io::read(&self.fd, &mut buf);
        self.armed = None;
    }
}
