//! How long an adaptive worker keeps polling after its last work before it sleeps.
//!
//! Waking a sleeping worker costs tens of µs on a VM (more than two proxy hops of work), so
//! polling pays whenever the next packet comes soon; but a worker that polls through long
//! pauses burns a core for nothing. The window adapts like the kernel's guest halt-polling
//! (cpuidle-haltpoll, `Documentation/virt/guest-halt-polling.rst`): when work arrives after
//! the window ran out but within the ceiling, polling longer would have caught it, so the
//! window grows (to cover that gap); when it arrives after more than the ceiling, the window
//! shrinks by half, down to its floor. Steady traffic with gaps below the ceiling is then
//! served without wake-ups; an idle worker sleeps after at most one window. While it polls,
//! the worker yields the core to other runnable threads (`Worker::run`), so polling mostly
//! takes time the core would otherwise idle (`sched_yield` is a hint to the scheduler, not a
//! guarantee).

use std::time::Duration;

/// Where the window starts and what it shrinks back to (capped by the ceiling): long enough
/// to catch the answer to a request just forwarded, on the rig's paths.
pub const FLOOR: Duration = Duration::from_micros(200);

/// The polling window of one worker. Deterministic: it is told the gaps, it reads no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinWindow {
    floor: Duration,
    ceiling: Duration,
    window: Duration,
}

impl SpinWindow {
    /// A window that may grow up to `ceiling` (the node file's `spin`). `Duration::MAX`
    /// (`poll = "busy"`) never sleeps; a ceiling at or below [`FLOOR`] is a fixed window.
    pub fn new(ceiling: Duration) -> Self {
        let floor = if ceiling == Duration::MAX {
            ceiling
        } else {
            ceiling.min(FLOOR)
        };
        SpinWindow {
            floor,
            ceiling,
            window: floor,
        }
    }

    /// How long to keep polling after the last work.
    pub fn get(&self) -> Duration {
        self.window
    }

    /// Work arrived `gap` after the previous work.
    pub fn work_after(&mut self, gap: Duration) {
        if gap <= self.window {
            // Polling caught it.
        } else if gap <= self.ceiling {
            // A quarter more than the gap, so the next one of about the same size is
            // caught too; at least doubling, so short gaps do not creep up in small steps.
            let cover = gap.saturating_add(gap / 4);
            self.window = cover.max(self.window.saturating_mul(2)).min(self.ceiling);
        } else {
            self.window = (self.window / 2).max(self.floor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn steady_gaps_below_the_ceiling_are_caught_after_one_wakeup() {
        let mut w = SpinWindow::new(2000 * US);
        assert_eq!(w.get(), FLOOR);
        // 1 ms between requests: the first gap wakes the worker, then polling covers them.
        w.work_after(1000 * US);
        assert_eq!(w.get(), 1250 * US);
        for _ in 0..100 {
            w.work_after(1000 * US);
            assert_eq!(w.get(), 1250 * US, "gaps inside the window change nothing");
        }
    }

    #[test]
    fn never_grows_past_the_ceiling() {
        let mut w = SpinWindow::new(2000 * US);
        for gap in [300, 900, 1900, 2000] {
            w.work_after(gap * US);
            assert!(w.get() <= 2000 * US);
        }
        assert_eq!(w.get(), 2000 * US);
    }

    #[test]
    fn long_pauses_shrink_it_back_to_the_floor() {
        let mut w = SpinWindow::new(2000 * US);
        w.work_after(1900 * US);
        assert_eq!(w.get(), 2000 * US);
        let mut seen = vec![w.get()];
        while w.get() > FLOOR {
            w.work_after(Duration::from_secs(1));
            seen.push(w.get());
        }
        assert_eq!(seen, [2000, 1000, 500, 250, 200].map(|u| u * US));
        w.work_after(Duration::from_secs(1));
        assert_eq!(w.get(), FLOOR, "not below the floor");
    }

    #[test]
    fn small_gaps_double_at_least() {
        let mut w = SpinWindow::new(2000 * US);
        w.work_after(210 * US);
        assert_eq!(w.get(), 400 * US);
    }

    #[test]
    fn a_ceiling_at_or_below_the_floor_is_a_fixed_window() {
        for c in [0, 50, 200] {
            let mut w = SpinWindow::new(c * US);
            for gap in [1, 100, 300, 5000, 1_000_000] {
                w.work_after(gap * US);
                assert_eq!(w.get(), c * US);
            }
        }
    }

    #[test]
    fn busy_never_sleeps() {
        let mut w = SpinWindow::new(Duration::MAX);
        for gap in [1, 1_000_000_000] {
            w.work_after(gap * US);
            assert_eq!(w.get(), Duration::MAX);
        }
    }
}
