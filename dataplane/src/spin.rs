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
    /// `poll = "answers"`: poll only while an answer is owed (up to the ceiling).
    answers_only: bool,
    /// `answers`: how long owed answers take to come, after the last work (a moving
    /// average, gain 1/8 as RFC 6298's SRTT); `None` until the first.
    answer_wait: Option<Duration>,
    /// `answers`: how late a nap's timer wakes the worker (a moving average, gain 1/4).
    nap_late: Duration,
}

/// A nap shorter than this is not worth a timer: poll instead.
pub const MIN_NAP: Duration = Duration::from_micros(10);

/// `avg` moved toward `sample` by 1/`gain` of the difference.
fn ewma(avg: Duration, sample: Duration, gain: u32) -> Duration {
    if sample >= avg {
        avg + (sample - avg) / gain
    } else {
        avg - (avg - sample) / gain
    }
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
            answers_only: false,
            answer_wait: None,
            nap_late: Duration::ZERO,
        }
    }

    /// `poll = "answers"`: a worker that polls only while one of its connections is owed an
    /// answer (a request it forwarded), for at most `ceiling` after the last work, and
    /// otherwise sleeps at once. Per proxied request, each gateway then wakes once (for the
    /// request) instead of twice, and polls only while the answer is on its way. Answers
    /// that take a while are first slept through for most of their usual wait ([`Self::nap`],
    /// the block layer's hybrid polling), so the worker polls only through the last stretch.
    pub fn answers(ceiling: Duration) -> Self {
        SpinWindow {
            floor: Duration::ZERO,
            ceiling,
            window: Duration::ZERO,
            answers_only: true,
            answer_wait: None,
            nap_late: Duration::ZERO,
        }
    }

    /// `answers`: work came `gap` after the last work while an answer was owed.
    pub fn owed_work_after(&mut self, gap: Duration) {
        if self.answers_only {
            let gap = gap.min(self.ceiling);
            self.answer_wait = Some(self.answer_wait.map_or(gap, |w| ewma(w, gap, 8)));
        }
    }

    /// `answers`: how long to sleep first when an answer is owed, before polling for it:
    /// three quarters of the usual wait, less how late naps wake, so the worker is polling
    /// again before the answer usually comes. Zero: poll at once (short waits, or none
    /// learnt yet, or not `answers`).
    pub fn nap(&self) -> Duration {
        let Some(wait) = self.answer_wait.filter(|_| self.answers_only) else {
            return Duration::ZERO;
        };
        // Lateness is learnt only from naps: capped, so a run of late wake-ups (a busy
        // core) cannot turn napping off for good.
        let nap = (wait * 3 / 4).saturating_sub(self.nap_late.min(wait / 2));
        if nap < MIN_NAP {
            Duration::ZERO
        } else {
            nap
        }
    }

    /// A nap of `asked` ended by its timer after `took`: learn how late naps wake.
    pub fn napped(&mut self, asked: Duration, took: Duration) {
        self.nap_late = ewma(self.nap_late, took.saturating_sub(asked), 4);
    }

    /// How long after the last work to keep polling, `owed`: whether an answer is due
    /// ([`tcpstack::Stack::awaiting_answers`]). Only `answers` windows look at it.
    pub fn poll_for(&self, owed: bool) -> Duration {
        if self.answers_only && owed {
            self.ceiling
        } else {
            self.window
        }
    }

    /// Work arrived `gap` after the previous work.
    pub fn work_after(&mut self, gap: Duration) {
        if self.answers_only {
            // Fixed: no polling for traffic nobody asked for, however often it comes.
        } else if gap <= self.window {
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
        assert_eq!(w.poll_for(false), FLOOR);
        // 1 ms between requests: the first gap wakes the worker, then polling covers them.
        w.work_after(1000 * US);
        assert_eq!(w.poll_for(false), 1250 * US);
        for _ in 0..100 {
            w.work_after(1000 * US);
            assert_eq!(
                w.poll_for(false),
                1250 * US,
                "gaps inside the window change nothing"
            );
        }
    }

    #[test]
    fn never_grows_past_the_ceiling() {
        let mut w = SpinWindow::new(2000 * US);
        for gap in [300, 900, 1900, 2000] {
            w.work_after(gap * US);
            assert!(w.poll_for(false) <= 2000 * US);
        }
        assert_eq!(w.poll_for(false), 2000 * US);
    }

    #[test]
    fn long_pauses_shrink_it_back_to_the_floor() {
        let mut w = SpinWindow::new(2000 * US);
        w.work_after(1900 * US);
        assert_eq!(w.poll_for(false), 2000 * US);
        let mut seen = vec![w.poll_for(false)];
        while w.poll_for(false) > FLOOR {
            w.work_after(Duration::from_secs(1));
            seen.push(w.poll_for(false));
        }
        assert_eq!(seen, [2000, 1000, 500, 250, 200].map(|u| u * US));
        w.work_after(Duration::from_secs(1));
        assert_eq!(w.poll_for(false), FLOOR, "not below the floor");
    }

    #[test]
    fn small_gaps_double_at_least() {
        let mut w = SpinWindow::new(2000 * US);
        w.work_after(210 * US);
        assert_eq!(w.poll_for(false), 400 * US);
    }

    #[test]
    fn a_ceiling_at_or_below_the_floor_is_a_fixed_window() {
        for c in [0, 50, 200] {
            let mut w = SpinWindow::new(c * US);
            for gap in [1, 100, 300, 5000, 1_000_000] {
                w.work_after(gap * US);
                assert_eq!(w.poll_for(false), c * US);
            }
        }
    }

    #[test]
    fn answers_polls_only_while_one_is_owed() {
        let mut w = SpinWindow::answers(2000 * US);
        assert_eq!(
            w.poll_for(false),
            Duration::ZERO,
            "nothing owed: sleep at once"
        );
        assert_eq!(w.poll_for(true), 2000 * US, "owed: up to the ceiling");
        // Steady traffic does not teach it to poll between requests.
        for gap in [100, 900, 1900, 5000] {
            w.work_after(gap * US);
            assert_eq!(
                (w.poll_for(false), w.poll_for(true)),
                (Duration::ZERO, 2000 * US)
            );
        }
        // Interrupt-driven: a ceiling of zero never polls.
        assert_eq!(
            SpinWindow::answers(Duration::ZERO).poll_for(true),
            Duration::ZERO
        );
        // The adaptive window does not look at what is owed.
        let a = SpinWindow::new(2000 * US);
        assert_eq!(a.poll_for(true), a.poll_for(false));
    }

    #[test]
    fn answers_nap_through_most_of_a_long_wait() {
        let mut w = SpinWindow::answers(2000 * US);
        assert_eq!(w.nap(), Duration::ZERO, "nothing learnt: poll");
        w.owed_work_after(120 * US);
        assert_eq!(w.nap(), 90 * US, "three quarters of the wait");
        // Naps that wake 40 µs late start earlier, so polling resumes in time.
        for _ in 0..20 {
            w.napped(90 * US, 130 * US);
        }
        assert!((49 * US..=51 * US).contains(&w.nap()), "{:?}", w.nap());
        // The wait is a moving average: one slow answer moves it by an eighth.
        w.owed_work_after(920 * US);
        assert!((124 * US..=126 * US).contains(&w.nap()), "{:?}", w.nap());
        // Very late naps shorten the nap, but never stop it: naps go on and learn.
        for _ in 0..20 {
            w.napped(100 * US, 1100 * US);
        }
        assert!((54 * US..=56 * US).contains(&w.nap()), "{:?}", w.nap());
        // Short waits are polled through: no nap below MIN_NAP.
        let mut s = SpinWindow::answers(2000 * US);
        s.owed_work_after(12 * US);
        assert_eq!(s.nap(), Duration::ZERO);
        // A wait longer than the ceiling counts as the ceiling.
        let mut l = SpinWindow::answers(200 * US);
        l.owed_work_after(Duration::from_secs(1));
        assert_eq!(l.nap(), 150 * US);
        // The adaptive window never naps.
        let mut a = SpinWindow::new(2000 * US);
        a.owed_work_after(500 * US);
        assert_eq!(a.nap(), Duration::ZERO);
    }

    #[test]
    fn busy_never_sleeps() {
        let mut w = SpinWindow::new(Duration::MAX);
        for gap in [1, 1_000_000_000] {
            w.work_after(gap * US);
            assert_eq!(w.poll_for(false), Duration::MAX);
        }
    }
}
