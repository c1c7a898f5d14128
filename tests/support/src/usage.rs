//! CPU time and memory of a process or of the calling thread, read from `/proc`, for tests that
//! report what an attack cost the gateway and the attacker.

use std::{io, time::Duration};

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_SECOND: u64 = 100;

/// What a process has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User plus system CPU time of all its threads, ended ones included (in 10 ms ticks).
    pub cpu: Duration,
    /// CPU time of the threads running now, to the nanosecond.
    pub threads_cpu: Duration,
    /// Resident memory now, and its peak, in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// The usage of process `pid`.
pub fn process(pid: u32) -> io::Result<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields from its closing parenthesis.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in /proc/pid/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short /proc/pid/stat"))
    };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    // The threads' own counters are exact to the nanosecond, but forget threads that ended.
    let mut threads_cpu = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) {
            threads_cpu += parse_schedstat(&schedstat).unwrap_or_default();
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcessUsage {
        cpu: Duration::from_millis(cpu_ticks * 1000 / TICKS_PER_SECOND),
        threads_cpu,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    })
}

/// CPU time the calling thread has used, to the nanosecond (`/proc/thread-self/schedstat`).
pub fn thread_cpu() -> io::Result<Duration> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    parse_schedstat(&schedstat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unreadable /proc/thread-self/schedstat",
        )
    })
}

/// The first field of a `schedstat` file: nanoseconds spent on a CPU.
fn parse_schedstat(schedstat: &str) -> Option<Duration> {
    schedstat
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        let usage = process(std::process::id()).expect("readable /proc");
        assert!(
            usage.rss_kib > 0 && usage.peak_rss_kib >= usage.rss_kib,
            "{usage:?}"
        );
        assert!(thread_cpu().expect("readable schedstat") > Duration::ZERO);
        assert!(usage.threads_cpu > Duration::ZERO, "{usage:?}");
    }
}
