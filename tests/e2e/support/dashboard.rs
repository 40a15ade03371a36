//! The Grafana dashboard (`deploy/grafana/dashboards/chatfabric.json`) evaluated against a live
//! Prometheus: every expression of every panel must return data, so the dashboard cannot rot.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::stack::Stack;

/// One evaluated expression: panel title, expression, series returned, largest value.
pub struct Row {
    /// The panel's title.
    pub title: String,
    /// The expression as evaluated (Grafana's interval variables replaced).
    pub expr: String,
    /// How many series it returned.
    pub series: usize,
    /// The largest value, formatted.
    pub largest: String,
}

/// Every expression of the dashboard with its panel's title, Grafana's interval variables given
/// fixed values.
pub fn queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/dashboards/chatfabric.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard"))
        .expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            out.push((panel["title"].as_str().expect("title").to_string(), expr));
        }
    }
    out
}

/// Polls (at most `deadline` in all) until every dashboard query returns at least one series
/// with a number (not NaN: the quantiles need observations); none is skipped.
pub async fn has_data(stack: &Stack, deadline: Duration) -> Vec<Row> {
    let until = Instant::now() + deadline;
    let mut rows = Vec::new();
    for (title, expr) in queries() {
        loop {
            let result = stack.query(&expr).await;
            let largest = result
                .iter()
                .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                .filter(|x| !x.is_nan())
                .reduce(f64::max);
            if let Some(v) = largest {
                rows.push(Row {
                    title,
                    expr,
                    series: result.len(),
                    largest: format!("{v:.6}"),
                });
                break;
            }
            assert!(
                Instant::now() < until,
                "dashboard panel {title:?}: `{expr}` returns no data: {result:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    rows
}

/// Prints the rows as a table (shown with `--nocapture`).
pub fn print(rows: &[Row]) {
    println!("dashboard queries against the live Prometheus:");
    for r in rows {
        println!(
            "  {:38} | {:2} series | {:>16} | {}",
            r.title, r.series, r.largest, r.expr
        );
    }
}
