//! Process CPU, memory and file descriptors, read from `/proc/self` on each scrape, under the
//! conventional `process_*` names (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`). Every role registers it, so a dashboard charts all of them alike. On
//! systems without `/proc` the series are absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Linux reports CPU times in `/proc` in USER_HZ ticks, fixed at 100 per second for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// Registers the process collector in `registry`.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

#[derive(Debug)]
struct ProcessCollector;

/// What one read of `/proc/self` found.
#[derive(Debug, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    rss_bytes: i64,
}

/// Parses `/proc/self/stat` (CPU times, fields 14 and 15) and `/proc/self/status` (`VmRSS`).
fn parse(stat: &str, status: &str) -> Option<Sample> {
    // The command name (field 2) may hold spaces and parentheses: count from after the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        rss_bytes: rss_kib * 1024,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let read = |p| std::fs::read_to_string(p).ok();
        let Some(sample) = read("/proc/self/stat")
            .zip(read("/proc/self/status"))
            .and_then(|(stat, status)| parse(&stat, &status))
        else {
            return Ok(());
        };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(sample.rss_bytes);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory",
            None,
            rss.metric_type(),
        )?)?;
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(fds.count() as i64);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                fds.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_times_and_rss_even_with_odd_command_names() {
        let stat = "4242 (chat fabric) (x)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 50 0 0 20 0 \
                    9 0 12345 123456789 3000 18446744073709551615";
        let status = "Name:\tchatfabric\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(
            parse(stat, status),
            Some(Sample {
                cpu_seconds: 3.0,
                rss_bytes: 2048 * 1024
            })
        );
    }

    #[test]
    fn this_process_is_exported() {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
