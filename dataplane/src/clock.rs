//! The one clock of the I/O shell. Below it (tcpstack, mesh) time is only what this hands
//! in: a monotonic `tcpstack::Instant` counted from when the loop started. Both backends'
//! loops (AF_XDP workers and the kernel worker) read it here.

use std::time::Instant as WallInstant;

/// A loop's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: WallInstant,
}

impl Clock {
    pub fn start() -> Self {
        Clock {
            start: WallInstant::now(),
        }
    }

    /// Now, as the sans-IO layers see it (microseconds since the start).
    pub fn now(&self) -> tcpstack::Instant {
        tcpstack::Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::start()
    }
}
