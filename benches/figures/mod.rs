//! Figures both benches compute the same way: a /metrics histogram and its quantiles,
//! CPU and memory of a process from /proc, and the machine's model and load.
//! Each bench uses a part of it.
#![allow(dead_code)]

/// `(upper bound in s, cumulative count)` of each bucket of histogram `name` in a /metrics text.
pub fn histogram_buckets(metrics: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// Quantile `q` of the observations between two snapshots, interpolated inside its bucket
pub fn histogram_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|((b, a), (_, z))| (*b, a.saturating_sub(*z)))
        .collect();
    let total = counts.last().map_or(0, |c| c.1);
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for (bound, cumulative) in counts {
        if cumulative as f64 >= rank {
            let upper = if bound.is_finite() {
                bound
            } else {
                lower.0 * 2.0
            };
            let in_bucket = (cumulative - lower.1).max(1) as f64;
            return lower.0 + (upper - lower.0) * ((rank - lower.1 as f64) / in_bucket);
        }
        lower = (bound, cumulative);
    }
    f64::NAN
}

/// CPU seconds (user + system) of `pid` from /proc/<pid>/stat; with `children`, plus those
/// of the children it has waited for.
pub fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect();
    // Fields 14-17 of proc(5) (utime, stime, cutime, cstime) are 11-14 after the ')'.
    let take = if children { 4 } else { 2 };
    let ticks: f64 = fields.iter().skip(11).take(take).sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Resident memory of `pid` in KiB (VmRSS), 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
