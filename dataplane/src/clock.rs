//! The one clock of the I/O shell. Below it (tcpstack, mesh) time is only what this hands
//! in: a monotonic `tcpstack::Instant` counted from when the loop started. Both backends'
//! loops (AF_XDP workers and the kernel worker) read it here.

use std::time::{Duration, Instant as WallInstant, SystemTime};

/// A loop's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: WallInstant,
    /// The wall-clock time at `start`: telemetry (access logs) dates events with it.
    wall: SystemTime,
}

impl Clock {
    pub fn start() -> Self {
        Clock {
            start: WallInstant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The (monotonic, wall) pair trace timestamps are converted with.
    pub fn anchor(&self) -> mesh::otlp::Anchor {
        mesh::otlp::Anchor::new(tcpstack::Instant::from_micros(0), self.wall)
    }

    /// The wall-clock time of an instant of this clock (an event's, for its log line).
    pub fn wall(&self, at: tcpstack::Instant) -> SystemTime {
        self.wall + Duration::from_micros(at.as_micros())
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
