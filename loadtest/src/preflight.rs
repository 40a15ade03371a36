//! Before a run: the open-file limit raised as far as it goes, and the settings checked against
//! this machine and the gateway's defaults, with a note for each problem found.

use crate::plan::{nats_share, ws_senders};
use crate::settings::Settings;

/// Raises this process's open-file limit to its hard limit; returns the soft limit in force.
pub(crate) fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            eprintln!("note: cannot raise the open-file limit: {err}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// Checks the settings against this machine and the gateway's defaults; returns notes.
pub(crate) fn notes(s: &Settings) -> Vec<String> {
    let mut notes = Vec::new();
    let limit = raise_fd_limit();
    let per_process = if s.workers == 0 {
        s.total_conns()
    } else {
        s.total_conns().div_ceil(s.workers)
    };
    if per_process as u64 + 100 > limit {
        notes.push(format!(
            "{per_process} connections per process but the open-file limit is {limit}: \
             use more --workers or a smaller --conns-per-worker"
        ));
    }
    let sources = s.source_addrs.len().max(1);
    if s.total_conns() / sources > 28_000 {
        notes.push(format!(
            "{} connections from {sources} source address(es): each gives about 28,000 ports; \
             add --source-addr 127.0.0.N",
            s.total_conns()
        ));
    }
    let peak = s.steps.iter().map(|st| st.rate).fold(0.0, f64::max);
    // Every sender, WebSocket member or NATS publisher, sends at the same rate; only the
    // WebSocket ones are held to the gateway's per-connection limit.
    let senders = ws_senders(s) + s.nats_publishers;
    if ws_senders(s) > 0 && peak / senders as f64 > 45.0 {
        notes.push(format!(
            "{:.0} messages/s per sender exceeds what the gateway's default per-connection limit \
             (50 frames/s) lets through: add conversations, members or NATS publishers",
            peak / senders as f64
        ));
    }
    if s.nats_publishers > 0 {
        notes.push(format!(
            "{} NATS publishers send {:.1} % of the rate ({:.1} msg/s each at the peak step)",
            s.nats_publishers,
            nats_share(s) * 100.0,
            peak / senders as f64
        ));
    }
    notes
}
