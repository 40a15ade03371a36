//! CPU seconds and resident memory of processes, read from Linux's `/proc`: one process, the
//! fabric's processes (`--fabric-pid`) together, and the whole machine.
//!
//! `/proc/<pid>/stat` counts CPU time in `USER_HZ` ticks, which the kernel fixes at 100 per second
//! for every architecture we run on; reading it that way keeps this crate free of `unsafe` FFI to
//! `sysconf`.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Ticks per second of `/proc/<pid>/stat` CPU times (the kernel's `USER_HZ`).
const USER_HZ: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProcSample {
    /// User plus system CPU seconds since the process started.
    pub(crate) cpu_secs: f64,
    /// Resident set size, bytes.
    pub(crate) rss_bytes: u64,
}

/// Reads `pid` (`"self"` for this process); `None` if it is gone or unreadable.
pub(crate) fn sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_secs: cpu_secs_of_stat(&stat)?,
        rss_bytes: rss_of_status(&status)?,
    })
}

/// The process's short name and command line, to label it in reports.
pub(crate) fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .take(3)
        .map(|w| {
            String::from_utf8_lossy(w)
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    if words.is_empty() {
        format!("pid {pid} (gone)")
    } else {
        format!("{} [{pid}]", words.join(" "))
    }
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds.
fn cpu_secs_of_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may contain spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// VmRSS of a `/proc/<pid>/status`, in bytes.
fn rss_of_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Busy and total CPU seconds of the whole machine, from `/proc/stat`.
pub(crate) fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some(((total - idle) as f64 / USER_HZ, total as f64 / USER_HZ))
}

/// CPUs of the machine (the `cpuN` lines of `/proc/stat`), whatever this process's affinity:
/// the machine's busy share is over all of them.
pub(crate) fn machine_cores() -> Option<usize> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cores = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    (cores > 0).then_some(cores)
}

/// The fabric's processes, as given by `--fabric-pid`.
pub(crate) struct Fabric {
    /// Their process ids.
    pub(crate) pids: Vec<u32>,
    /// Their labels in reports (see [`describe`]), in the same order.
    pub(crate) labels: Vec<String>,
}

impl Fabric {
    /// The processes `pids`, labelled from their command lines.
    pub(crate) fn new(pids: &[u32]) -> Fabric {
        Fabric {
            pids: pids.to_vec(),
            labels: pids.iter().map(|&p| describe(p)).collect(),
        }
    }

    /// One reading per pid (zero for a process that is gone).
    pub(crate) fn sample(&self) -> Vec<ProcSample> {
        self.pids
            .iter()
            .map(|p| sample(&p.to_string()).unwrap_or_default())
            .collect()
    }
}

/// CPU seconds at one moment: the fabric's, the load generator's, and the machine's.
#[derive(Debug, Clone)]
pub(crate) struct CpuSnapshot {
    /// When it was taken.
    pub(crate) at: Instant,
    /// One reading per fabric process.
    pub(crate) fabric: Vec<ProcSample>,
    /// CPU seconds of the load generator: this process and its worker processes.
    pub(crate) loadtest_secs: f64,
    /// The machine's busy and total CPU seconds ([`machine_cpu`]).
    pub(crate) machine: Option<(f64, f64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_spaced_command_name() {
        let stat = "1234 (tokio rt (w)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(cpu_secs_of_stat(stat), Some(3.0));
        assert_eq!(
            rss_of_status("Name:\tx\nVmRSS:\t   2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
    }

    #[test]
    fn reads_this_process() {
        let me = sample("self").expect("/proc/self is readable on Linux");
        assert!(me.rss_bytes > 0);
        let (busy, total) = machine_cpu().unwrap();
        assert!(total >= busy && total > 0.0);
        let cores = machine_cores().unwrap();
        assert!(cores >= std::thread::available_parallelism().unwrap().get());
    }
}
