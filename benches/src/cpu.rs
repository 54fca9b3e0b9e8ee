//! CPU time of other processes (the proxies under test), read from `/proc/PID/stat`.
//!
//! The harness samples it when a run's measured window opens and when it closes, so the CPU
//! a proxy spent is charged to exactly the requests scheduled in that window (issue #21:
//! CPU per 1,000 requests at a fixed rate). Whole processes: every thread's time, user and
//! system, in clock ticks (usually 10 ms; a window of seconds makes that error small).

use std::io;
use std::time::Duration;

/// User + system time of every thread of `pid` so far.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// User + system time from a `stat` file of /proc: a process's (`/proc/PID/stat`) or one
/// thread's (`/proc/thread-self/stat`).
pub fn stat_cpu(path: &str) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: no utime and stime fields"),
        )
    })?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000 / hz),
    ))
}

/// The sum of `processes`' CPU time so far; a process that is gone is an error (its time
/// would silently drop out of the figure).
pub fn sum_cpu(pids: &[u32]) -> io::Result<Duration> {
    pids.iter().try_fold(Duration::ZERO, |acc, &pid| {
        process_cpu(pid)
            .map(|d| acc + d)
            .map_err(|e| io::Error::new(e.kind(), format!("CPU time of process {pid}: {e}")))
    })
}

/// utime + stime (fields 14 and 15, proc(5)). The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses, so fields are counted after the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th and stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_after_the_last_parenthesis() {
        // A command name with spaces and a ")" in it, as a process may choose.
        let stat = "4242 (my ) proc) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 17 0 0 20 0 3 0 100 12345678 900 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(267));
    }

    #[test]
    fn a_short_or_garbled_line_is_none() {
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_ticks("no parenthesis at all"), None);
        let bad = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 ten 17 0";
        assert_eq!(parse_stat_ticks(bad), None);
    }

    #[test]
    fn own_process_is_readable_and_grows_with_work() {
        let me = std::process::id();
        let before = process_cpu(me).unwrap();
        // Spin until the clock ticks over: the figure must move with work done.
        let mut x = 0u64;
        while process_cpu(me).unwrap() == before {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(process_cpu(me).unwrap() > before);
        assert!(sum_cpu(&[me, me]).unwrap() >= before * 2);
    }

    #[test]
    fn a_missing_process_is_an_error_that_names_it() {
        // Above the kernel's pid_max (at most 2^22).
        let e = sum_cpu(&[std::process::id(), 9_999_999]).unwrap_err();
        assert!(e.to_string().contains("9999999"), "{e}");
    }
}
