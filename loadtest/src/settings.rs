//! The resolved [`Settings`] a run uses: flags, then the scenario's preset, then the base
//! defaults, checked against what the fabric accepts.

use std::net::IpAddr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::args::{LoadtestArgs, Scenario};

/// Members a group may have (PROTOCOL.md, "Limits").
const MAX_GROUP_MEMBERS: usize = 1000;

/// One step of the rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Step {
    /// Aggregate messages per second in.
    pub(crate) rate: f64,
    /// How long the step lasts, in seconds.
    pub(crate) secs: f64,
}

/// The settings a run uses: flags, then the scenario's defaults, then the base defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Settings {
    /// The scenario the defaults came from, if any.
    pub(crate) scenario: Option<Scenario>,
    /// Gateway WebSocket URLs, used round-robin.
    pub(crate) gateways: Vec<String>,
    /// Secret used to mint tokens.
    #[serde(skip_serializing)]
    #[serde(default)]
    pub(crate) jwt_secret: String,
    /// Source addresses, used round-robin (empty: the kernel picks).
    pub(crate) source_addrs: Vec<IpAddr>,
    /// Active conversations.
    pub(crate) conversations: usize,
    /// Members per active conversation.
    pub(crate) members: usize,
    /// The rate schedule (one step for a steady run).
    pub(crate) steps: Vec<Step>,
    /// Body size in bytes.
    pub(crate) payload: usize,
    /// Share of active members that receive over SSE.
    pub(crate) sse_share: f64,
    /// NATS-direct publishers.
    #[serde(default)]
    pub(crate) nats_publishers: usize,
    /// Where the publishers connect.
    #[serde(default)]
    pub(crate) nats_url: String,
    /// Drops-and-resumes per second while sending.
    pub(crate) churn: f64,
    /// Idle connections.
    pub(crate) idle: usize,
    /// Members per quiet conversation.
    pub(crate) idle_room_size: usize,
    /// Seconds into sending at which every connection drops and resumes.
    pub(crate) storm_at: Option<f64>,
    /// Connections opened per second in the connect phase.
    pub(crate) connect_rate: f64,
    /// Milliseconds between the pacer's steps.
    pub(crate) pace_ms: u64,
    /// Drain period after sending, seconds.
    pub(crate) drain: f64,
    /// Worker processes (0: in-process).
    pub(crate) workers: usize,
    /// Fabric PIDs to sample.
    pub(crate) fabric_pids: Vec<u32>,
    /// p99 objective in milliseconds.
    pub(crate) p99_target_ms: f64,
    /// Prefix of user ids.
    pub(crate) run_id: String,
}

impl Settings {
    /// Resolves flags over the scenario's preset over the base defaults, and checks the result.
    pub(crate) fn resolve(args: &LoadtestArgs) -> anyhow::Result<Settings> {
        let p = args.scenario.map(Scenario::preset).unwrap_or_default();
        let conversations = args.conversations.or(p.conversations).unwrap_or(10);
        let members = args.members.or(p.members).unwrap_or(10);
        let payload = args.payload.or(p.payload).unwrap_or(100);
        let step_secs = args.step_secs.or(p.step_secs).unwrap_or(10.0);
        // An explicit --rate or --duration means a steady run even if the scenario is a ramp.
        let steady = args.rate.is_some() || args.duration.is_some();
        let ramp = args.ramp.clone().or(if steady { None } else { p.ramp });
        let steps = match ramp {
            Some(rates) => rates
                .into_iter()
                .map(|rate| Step {
                    rate,
                    secs: step_secs,
                })
                .collect(),
            None => vec![Step {
                rate: args.rate.or(p.rate).unwrap_or(100.0),
                secs: args.duration.or(p.duration).unwrap_or(10.0),
            }],
        };
        let idle = args.idle.or(p.idle).unwrap_or(0);
        let source_addrs = if args.source_addrs.is_empty() {
            p.source_addrs
        } else {
            args.source_addrs.clone()
        };
        let total = conversations * members + idle;
        let workers = match args.workers {
            Some(w) => w,
            None if total <= args.conns_per_worker => 0,
            None => total.div_ceil(args.conns_per_worker.max(1)),
        };
        let run_id = match &args.run_id {
            Some(id) => id.clone(),
            None => format!(
                "lt{}",
                crate::frames::unix_nanos() / 1_000_000_000 % 100_000_000
            ),
        };
        let settings = Settings {
            scenario: args.scenario,
            gateways: args.gateways.clone(),
            jwt_secret: args.jwt_secret.clone(),
            source_addrs,
            conversations,
            members,
            steps,
            payload,
            sse_share: args.sse_share,
            nats_publishers: args.nats_publishers,
            nats_url: args.nats_url.clone(),
            churn: args.churn.or(p.churn).unwrap_or(0.0),
            idle,
            idle_room_size: args.idle_room_size,
            storm_at: args.storm_at.or(p.storm_at),
            connect_rate: args.connect_rate.or(p.connect_rate).unwrap_or(2_000.0),
            pace_ms: args.pace_ms,
            drain: args.drain,
            workers,
            fabric_pids: args.fabric_pids.clone(),
            p99_target_ms: args.p99_target_ms,
            run_id,
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.nats_publishers > 0 && self.conversations == 0 {
            bail!("--nats-publishers needs active conversations to post into");
        }
        let publishers_per_group = self.nats_publishers.div_ceil(self.conversations.max(1));
        // The group's creator (an admin user of the run) is a member too.
        if self.members + publishers_per_group + 1 > MAX_GROUP_MEMBERS
            || self.idle_room_size + 1 > MAX_GROUP_MEMBERS
        {
            bail!(
                "a group holds at most {MAX_GROUP_MEMBERS} members, its creator included: lower \
                 --members, --idle-room-size or --nats-publishers (at most one publisher per \
                 conversation when there are more conversations than publishers)"
            );
        }
        if !(0.0..1.0).contains(&self.sse_share) {
            bail!("--sse-share must be at least 0 and below 1 (WebSocket members do the sending)");
        }
        if self.gateways.is_empty() {
            bail!("give at least one --gateway URL");
        }
        if self.members < 2 && self.conversations > 0 {
            bail!("--members must be at least 2 (a group needs its members)");
        }
        if self.idle > 0 && self.idle_room_size < 2 {
            bail!("--idle-room-size must be at least 2");
        }
        if self.steps.iter().any(|s| !(s.rate >= 0.0 && s.secs >= 0.0)) {
            bail!("rates and durations must be non-negative numbers");
        }
        if self.connect_rate.is_nan() || self.connect_rate <= 0.0 {
            bail!("--connect-rate must be positive");
        }
        if !self
            .run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || self.run_id.is_empty()
            || self.run_id.len() > 24
        {
            bail!("--run-id must be 1 to 24 characters of [A-Za-z0-9_-]");
        }
        for url in &self.gateways {
            url.parse::<http::Uri>()
                .with_context(|| format!("--gateway {url:?} is not a URL"))?;
        }
        Ok(())
    }

    /// Connections of active conversations.
    pub(crate) fn member_conns(&self) -> usize {
        self.conversations * self.members
    }

    /// All connections: members and idle.
    pub(crate) fn total_conns(&self) -> usize {
        self.member_conns() + self.idle
    }

    /// Quiet conversations that hold the idle connections.
    pub(crate) fn idle_conversations(&self) -> usize {
        self.idle.div_ceil(self.idle_room_size.max(1))
    }

    /// Seconds of sending, over all steps.
    pub(crate) fn send_secs(&self) -> f64 {
        self.steps.iter().map(|s| s.secs).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    pub(crate) fn resolve(argv: &[&str]) -> anyhow::Result<Settings> {
        let cli = Cli::try_parse_from(std::iter::once("loadtest").chain(argv.iter().copied()))?;
        Settings::resolve(&cli.args)
    }

    #[test]
    fn scenario_fills_defaults_and_flags_win() {
        let s = resolve(&["--scenario", "rooms-10x100", "--run-id", "t"]).unwrap();
        assert_eq!((s.conversations, s.members), (10, 100));
        assert_eq!(
            s.steps,
            vec![Step {
                rate: 200.0,
                secs: 30.0
            }]
        );
        let s = resolve(&[
            "--scenario",
            "rooms-10x100",
            "--members",
            "5",
            "--run-id",
            "t",
        ])
        .unwrap();
        assert_eq!((s.conversations, s.members), (10, 5));
    }

    #[test]
    fn ramp_scenario_is_a_schedule_unless_a_steady_rate_is_given() {
        let s = resolve(&["--scenario", "ramp", "--step-secs", "2", "--run-id", "t"]).unwrap();
        assert_eq!(s.steps.len(), 7);
        assert!(s.steps.iter().all(|st| st.secs == 2.0));
        assert_eq!(s.steps[0].rate, 1000.0);
        let s = resolve(&["--scenario", "ramp", "--rate", "50", "--run-id", "t"]).unwrap();
        assert_eq!(
            s.steps,
            vec![Step {
                rate: 50.0,
                secs: 10.0
            }]
        );
    }

    #[test]
    fn idle_100k_needs_several_workers_and_source_addresses() {
        let s = resolve(&["--scenario", "idle-100k", "--run-id", "t"]).unwrap();
        assert_eq!(s.total_conns(), 100_100);
        assert_eq!(s.workers, 7, "15k connections per worker");
        assert_eq!(s.source_addrs.len(), 8);
        assert_eq!(s.idle_conversations(), 1_000);
        let small = resolve(&["--conversations", "3", "--run-id", "t"]).unwrap();
        assert_eq!(small.workers, 0, "small runs stay in-process");
    }

    #[test]
    fn storm_scenario_and_refused_settings() {
        let s = resolve(&["--scenario", "reconnect-storm", "--run-id", "t"]).unwrap();
        assert_eq!(s.storm_at, Some(10.0));
        assert_eq!(s.send_secs(), 20.0);
        assert!(
            resolve(&["--members", "1000", "--run-id", "t"]).is_err(),
            "1000 members and the creator exceed a group"
        );
        assert!(
            resolve(&["--run-id", "a.b"]).is_err(),
            "run ids become user ids"
        );
    }
}
