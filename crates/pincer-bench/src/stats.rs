//! Latency summaries and process readings (`/proc/<pid>/status`, `/proc/<pid>/stat`).

use std::time::Duration;

/// Latencies of the successful requests of one run, plus its errors.
#[derive(Default)]
pub struct Outcome {
    /// Microseconds per successful request.
    pub latencies_us: Vec<u64>,
    /// Failed requests (error answer, timeout, closed connection, requests not sent).
    pub errors: u64,
    /// A few distinct error messages, for the report.
    pub samples: Vec<String>,
}

impl Outcome {
    /// Record a failure, keeping its message if it is new (at most 5 kept).
    pub fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.samples.len() < 5 && !self.samples.contains(&msg) {
            self.samples.push(msg);
        }
    }

    /// Fold another worker's outcome into this one.
    pub fn merge(&mut self, other: Outcome) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        for s in other.samples {
            if self.samples.len() < 5 && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }
}

/// Nearest-rank percentile of a sorted slice (`p` in 0..=1); 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One result line: throughput, p50/p99/max, errors.
pub fn report(mode: &str, concurrency: u64, warmup: u64, mut out: Outcome, wall: Duration) -> String {
    out.latencies_us.sort_unstable();
    let ok = out.latencies_us.len();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut line = format!(
        "{mode}: concurrency {concurrency}, {ok} ok + {} errors in {:.3} s => {:.0} req/s | latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | warm-up {warmup}/worker",
        out.errors,
        wall.as_secs_f64(),
        ok as f64 / wall.as_secs_f64().max(1e-9),
        ms(percentile(&out.latencies_us, 0.50)),
        ms(percentile(&out.latencies_us, 0.99)),
        ms(out.latencies_us.last().copied().unwrap_or(0)),
    );
    for s in &out.samples {
        line.push_str(&format!("\n  error: {s}"));
    }
    line
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process (`"self"` or a pid).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// The soft `Max open files` limit of a process, from `/proc/<pid>/limits`.
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Raise this process's `RLIMIT_NOFILE` (Linux: `rlim_t` is `u64`) soft limit towards `want` (capped by the hard limit);
/// returns the soft limit in effect.
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < want {
            let new = libc::rlimit { rlim_cur: want.min(r.rlim_max), rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                r = new;
            }
        }
    }
    r.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_time("self").is_some());
        assert!(nofile_limit(pid).unwrap() > 0);
    }
}
