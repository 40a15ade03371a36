//! The self-contained HTML report: inline SVG plots drawn here, inline CSS, no script and no
//! network, so it opens anywhere (an air-gapped lab, a CI artifact, an email attachment).

use std::fmt::Write as _;

use crate::render::summary::summary;
use crate::report::{Point, Report};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 35.0;

/// A timeline value to plot.
type Metric = fn(&Point) -> f64;

/// A line of a plot: name, color, value.
type Line = (&'static str, &'static str, Metric);

/// The plots, in page order: title, y axis label, log scale, and their lines.
const PLOTS: &[(&str, &str, bool, &[Line])] = &[
    (
        "End-to-end latency percentiles (per second)",
        "ms (log)",
        true,
        &[
            ("p50", "#1b9e77", |p| p.e2e.p50_ms),
            ("p90", "#7570b3", |p| p.e2e.p90_ms),
            ("p99", "#d95f02", |p| p.e2e.p99_ms),
            ("max", "#e7298a", |p| p.e2e.max_ms),
            ("ack p99", "#666666", |p| p.ack.p99_ms),
        ],
    ),
    (
        "Throughput",
        "per second",
        false,
        &[
            ("delivered/s", "#1b9e77", |p| p.delivered_per_s),
            ("sent/s", "#d95f02", |p| p.sent_per_s),
            ("acked/s", "#7570b3", |p| p.acked_per_s),
        ],
    ),
    (
        "Connections",
        "connections",
        false,
        &[
            ("open", "#1b9e77", |p| p.open as f64),
            ("connects/s", "#d95f02", |p| p.connects_per_s),
            ("connect failures", "#e7298a", |p| p.connect_failures as f64),
        ],
    ),
    (
        "CPU (cores busy)",
        "cores",
        false,
        &[
            ("fabric", "#d95f02", |p| p.fabric_cores),
            ("load generator", "#7570b3", |p| p.loadtest_cores),
        ],
    ),
];

/// One line of a plot.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// Renders `report` as an HTML document.
pub(crate) fn render(report: &Report) -> String {
    let plots: String = PLOTS
        .iter()
        .map(|&(title, y_label, log, lines)| {
            let series: Vec<Series<'_>> = lines
                .iter()
                .map(|&(name, color, value)| Series {
                    name,
                    color,
                    points: report.timeline.iter().map(|p| (p.t, value(p))).collect(),
                })
                .collect();
            chart(title, y_label, &series, log, &report.marks)
        })
        .collect();
    let mut targets = String::new();
    for t in crate::targets::check(report) {
        let (class, word) = match t.met {
            Some(true) => ("met", "met"),
            Some(false) => ("missed", "missed"),
            None => ("na", "not measured"),
        };
        let _ = write!(
            targets,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td></tr>",
            esc(&t.target),
            esc(&t.measured)
        );
    }
    let title = format!(
        "chatfabric loadtest {} - {}",
        esc(&report.settings.run_id),
        report
            .settings
            .scenario
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "custom".into())
    );
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 960px; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
.met {{ color: #1b7e37; font-weight: bold; }} .missed {{ color: #c0392b; font-weight: bold; }} .na {{ color: #888; }}
svg {{ display: block; margin: 1em 0; }}
</style></head><body>
<h1>{title}</h1>
<h2>Targets</h2>
<table><tr><th>target</th><th>measured</th><th>verdict</th></tr>{targets}</table>
<h2>Plots</h2>
{plots}
<h2>Summary</h2>
<pre>{summary}</pre>
</body></html>
"#,
        summary = esc(&summary(report)),
    )
}

/// Escapes text for HTML and SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart as an inline `<svg>`; `log` plots y on a log10 scale (zeros are left out).
fn chart(
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    log: bool,
    marks: &[(f64, String)],
) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.fold(1.0f64, f64::max);
    let ys = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|y| y.is_finite())
    };
    let (y_lo, y_hi) = if log {
        let positive: Vec<f64> = ys().filter(|&y| y > 0.0).collect();
        let lo = positive.iter().copied().fold(f64::MAX, f64::min);
        let hi = positive.iter().copied().fold(0.0, f64::max);
        if positive.is_empty() {
            (0.0, 1.0)
        } else {
            (
                lo.log10().floor(),
                hi.log10().ceil().max(lo.log10().floor() + 1.0),
            )
        }
    } else {
        (0.0, nice_max(ys().fold(0.0, f64::max)))
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_max * plot_w;
    let py = |y: f64| {
        let v = if log { y.log10() } else { y };
        TOP + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    // Grid and y ticks.
    let ticks: Vec<f64> = if log {
        (y_lo as i32..=y_hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=4).map(|i| y_hi * i as f64 / 4.0).collect()
    };
    for y in ticks {
        let yy = py(y);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 4.0,
            yy + 3.0,
            fmt_num(y)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="12" y="{:.1}" font-size="10" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        esc(y_label)
    );
    // x ticks at a round number of seconds, ten or fewer.
    let x_step = nice_max(x_max / 10.0);
    for i in 0..=(x_max / x_step) as usize {
        let x = x_step * i as f64;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{:.0}s</text>"#,
            px(x),
            HEIGHT - BOTTOM + 14.0,
            x
        );
    }
    for (t, label) in marks {
        let x = px(*t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" font-size="9" fill="#666">{}</text>"##,
            TOP + plot_h,
            x + 2.0,
            TOP + 9.0,
            esc(label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite() && (!log || p.1 > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        let lx = LEFT + 10.0 + i as f64 * 130.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="3" fill="{c}"/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
            HEIGHT - 10.0,
            lx + 14.0,
            HEIGHT - 6.0,
            esc(s.name),
            c = s.color
        );
    }
    svg.push_str(
        r##"<rect x="70" y="30" width="810" height="195" fill="none" stroke="#444"/></svg>"##,
    );
    svg
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// Tick labels: 1.2k, 3M, 0.5.
fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_self_contained_and_has_its_plots() {
        let html = render(&crate::report::tests::sample_report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(
            html.matches("<svg").count(),
            4,
            "latency, throughput, connections, cpu"
        );
        for title in [
            "End-to-end latency percentiles",
            "Throughput",
            "Connections",
        ] {
            assert!(html.contains(title), "{title}");
        }
        // Each plotted series has its points: 30 seconds of timeline.
        let p99 = html.split("<polyline").nth(3).unwrap();
        assert_eq!(
            p99.split("points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .split(' ')
                .count(),
            30
        );
        // Nothing to fetch: no script, no external reference.
        assert!(!html.contains("<script"));
        assert!(!html.contains("src=") && !html.contains("href="));
        assert!(html.contains("storm"), "phase marks are drawn");
        assert!(
            html.contains("class=\"missed\""),
            "200k deliveries/s was missed in the sample"
        );
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(130.0), 200.0);
        assert_eq!(nice_max(4.2e5), 5e5);
        assert_eq!(fmt_num(250_000.0), "250.0k");
        assert_eq!(
            (fmt_num(1.5), fmt_num(2.0), fmt_num(0.01)),
            ("1.50".into(), "2".into(), "0.01".into())
        );
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
