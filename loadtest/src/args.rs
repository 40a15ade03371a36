//! The command line ([`LoadtestArgs`]), the named scenarios ([`Scenario`]) and the resolved
//! [`Settings`] a run actually uses.
//!
//! A scenario only fills defaults: any flag given on the command line (or through its
//! `CHATFABRIC_LOADTEST_*` environment twin) wins over the preset, so `--scenario ramp --members 5`
//! is the ramp with five members per conversation.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Drive a running fabric with many WebSocket clients and report latency, loss and costs.
///
/// Every member of every conversation is its own WebSocket connection. Connections are spread
/// round-robin over the gateways and the local source addresses, and over worker processes when
/// there are more than one process may hold.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Named scenario that fills the defaults of the other flags.
    #[arg(long, env = "CHATFABRIC_LOADTEST_SCENARIO", value_enum)]
    pub scenario: Option<Scenario>,

    /// Gateway WebSocket URL; repeat (or comma-separate) to spread connections round-robin, as a
    /// load balancer would.
    #[arg(
        long = "gateway",
        env = "CHATFABRIC_LOADTEST_GATEWAYS",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub gateways: Vec<String>,

    /// HS256 secret of the gateways' `--jwt-secret`; tokens are minted locally with it.
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_JWT_SECRET",
        default_value = "chatfabric-dev-secret",
        hide_env_values = true
    )]
    pub jwt_secret: String,

    /// Local source address to connect from (e.g. 127.0.0.2); repeat or comma-separate. Each
    /// source address gives about 28,000 ephemeral ports, so 100k connections need four or more.
    #[arg(
        long = "source-addr",
        env = "CHATFABRIC_LOADTEST_SOURCE_ADDRS",
        value_delimiter = ','
    )]
    pub source_addrs: Vec<IpAddr>,

    /// Number of active conversations (groups) [scenario default, else 10].
    #[arg(long, env = "CHATFABRIC_LOADTEST_CONVERSATIONS")]
    pub conversations: Option<usize>,

    /// Members per active conversation, each its own connection [scenario default, else 10].
    #[arg(long, env = "CHATFABRIC_LOADTEST_MEMBERS")]
    pub members: Option<usize>,

    /// Aggregate send rate, messages per second over all senders [scenario default, else 100].
    #[arg(long, env = "CHATFABRIC_LOADTEST_RATE")]
    pub rate: Option<f64>,

    /// A ramp instead of a steady rate: comma-separated rates, each held for --step-secs.
    #[arg(long, env = "CHATFABRIC_LOADTEST_RAMP", value_delimiter = ',')]
    pub ramp: Option<Vec<f64>>,

    /// Seconds each ramp step lasts [scenario default, else 10].
    #[arg(long, env = "CHATFABRIC_LOADTEST_STEP_SECS")]
    pub step_secs: Option<f64>,

    /// Seconds of steady sending (ignored with --ramp) [scenario default, else 10].
    #[arg(long, env = "CHATFABRIC_LOADTEST_DURATION")]
    pub duration: Option<f64>,

    /// Message body size in bytes, including the 20-byte send timestamp [scenario default, else 100].
    #[arg(long, env = "CHATFABRIC_LOADTEST_PAYLOAD")]
    pub payload: Option<usize>,

    /// Share [0, 1) of active members that receive over server-sent events (`GET /v1/events`)
    /// instead of WebSocket; they do not send.
    #[arg(long, env = "CHATFABRIC_LOADTEST_SSE_SHARE", default_value_t = 0.0)]
    pub sse_share: f64,

    /// Number of NATS-direct publishers: bots that post with requests on
    /// `chat.in.<conv>.<bot>` over their own NATS connection, like `chatfabric bot`. They are
    /// members of the groups the run creates and share the aggregate rate with the WebSocket
    /// senders: every sender, WebSocket member or publisher, sends at the same rate.
    #[arg(long, env = "CHATFABRIC_LOADTEST_NATS_PUBLISHERS", default_value_t = 0)]
    pub nats_publishers: usize,

    /// NATS server the publishers connect to (no credentials: `chatfabric dev`'s server, or one
    /// that lets anonymous clients publish on `chat.in.>`).
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Connection churn: connections per second that drop and resume from their cursor while
    /// sending is on [scenario default, else 0].
    #[arg(long, env = "CHATFABRIC_LOADTEST_CHURN")]
    pub churn: Option<f64>,

    /// Extra idle connections, each subscribed to a quiet conversation [scenario default, else 0].
    #[arg(long, env = "CHATFABRIC_LOADTEST_IDLE")]
    pub idle: Option<usize>,

    /// Members per quiet conversation that holds idle connections.
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_IDLE_ROOM_SIZE",
        default_value_t = 100
    )]
    pub idle_room_size: usize,

    /// Reconnect storm: at this many seconds into sending, every connection drops and resumes at
    /// once [scenario default, else none].
    #[arg(long, env = "CHATFABRIC_LOADTEST_STORM_AT")]
    pub storm_at: Option<f64>,

    /// New connections per second during the connect phase, over all workers
    /// [scenario default, else 2000].
    #[arg(long, env = "CHATFABRIC_LOADTEST_CONNECT_RATE")]
    pub connect_rate: Option<f64>,

    /// Seconds to wait after sending stops for the last deliveries, before loss is counted.
    #[arg(long, env = "CHATFABRIC_LOADTEST_DRAIN", default_value_t = 5.0)]
    pub drain: f64,

    /// Worker processes; 0 runs one worker inside this process. Default: 0 when all connections
    /// fit in --conns-per-worker, else as many processes as needed.
    #[arg(long, env = "CHATFABRIC_LOADTEST_WORKERS")]
    pub workers: Option<usize>,

    /// Connections one worker process holds at most (each needs a file descriptor).
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_CONNS_PER_WORKER",
        default_value_t = 15_000
    )]
    pub conns_per_worker: usize,

    /// PID of a fabric process (gateway, persister, nats-server, or `chatfabric dev`); repeat.
    /// Their CPU seconds and RSS, read from /proc, give CPU per delivery and RSS per connection.
    #[arg(
        long = "fabric-pid",
        env = "CHATFABRIC_LOADTEST_FABRIC_PIDS",
        value_delimiter = ','
    )]
    pub fabric_pids: Vec<u32>,

    /// Latency objective for the ramp's verdict and the summary, in milliseconds (p99).
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_P99_TARGET_MS",
        default_value_t = 50.0
    )]
    pub p99_target_ms: f64,

    /// Write the report as JSON to this file.
    #[arg(long, env = "CHATFABRIC_LOADTEST_JSON")]
    pub json: Option<PathBuf>,

    /// Write a self-contained HTML report (inline SVG plots, no network needed) to this file.
    #[arg(long, env = "CHATFABRIC_LOADTEST_HTML")]
    pub html: Option<PathBuf>,

    /// Prefix of the user ids this run creates (default: `lt` and the start time), so runs
    /// against one fabric never share conversations.
    #[arg(long, env = "CHATFABRIC_LOADTEST_RUN_ID")]
    pub run_id: Option<String>,

    /// Internal: run as a worker process, driven over stdin/stdout by a coordinator.
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// Members a group may have (PROTOCOL.md, "Limits").
const MAX_GROUP_MEMBERS: usize = 1000;

/// A named scenario: a preset of defaults for [`LoadtestArgs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 100 conversations x 10 members, 2,000 messages/s in (20k deliveries/s), 30 s.
    #[value(name = "steady-100x10")]
    Steady100x10,
    /// 10 conversations x 100 members, 200 messages/s in (20k deliveries/s), 30 s.
    #[value(name = "rooms-10x100")]
    Rooms10x100,
    /// 100 x 10, steps of 1k..40k messages/s, 10 s each: the highest step with p99 under the
    /// target and zero loss is the capacity.
    #[value(name = "ramp")]
    Ramp,
    /// 100,000 idle subscribed connections (plus 10 x 10 at 10 messages/s to prove the fabric is
    /// alive) over eight source addresses; run several gateways and pass each with --gateway.
    #[value(name = "idle-100k")]
    Idle100k,
    /// 100 x 10 at 1,000 messages/s for 20 s; at 10 s every connection drops and resumes at once.
    /// Passes with zero loss and zero duplicates.
    #[value(name = "reconnect-storm")]
    ReconnectStorm,
}

/// One step of the rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Aggregate messages per second in.
    pub rate: f64,
    /// How long the step lasts, in seconds.
    pub secs: f64,
}

/// The settings a run uses: flags, then the scenario's defaults, then the base defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The scenario the defaults came from, if any.
    pub scenario: Option<Scenario>,
    /// Gateway WebSocket URLs, used round-robin.
    pub gateways: Vec<String>,
    /// Secret used to mint tokens.
    #[serde(skip_serializing)]
    #[serde(default)]
    pub jwt_secret: String,
    /// Source addresses, used round-robin (empty: the kernel picks).
    pub source_addrs: Vec<IpAddr>,
    /// Active conversations.
    pub conversations: usize,
    /// Members per active conversation.
    pub members: usize,
    /// The rate schedule (one step for a steady run).
    pub steps: Vec<Step>,
    /// Body size in bytes.
    pub payload: usize,
    /// Share of active members that receive over SSE.
    pub sse_share: f64,
    /// NATS-direct publishers.
    #[serde(default)]
    pub nats_publishers: usize,
    /// Where the publishers connect.
    #[serde(default)]
    pub nats_url: String,
    /// Drops-and-resumes per second while sending.
    pub churn: f64,
    /// Idle connections.
    pub idle: usize,
    /// Members per quiet conversation.
    pub idle_room_size: usize,
    /// Seconds into sending at which every connection drops and resumes.
    pub storm_at: Option<f64>,
    /// Connections opened per second in the connect phase.
    pub connect_rate: f64,
    /// Drain period after sending, seconds.
    pub drain: f64,
    /// Worker processes (0: in-process).
    pub workers: usize,
    /// Fabric PIDs to sample.
    pub fabric_pids: Vec<u32>,
    /// p99 objective in milliseconds.
    pub p99_target_ms: f64,
    /// Prefix of user ids.
    pub run_id: String,
}

/// The preset values of a scenario; `None` leaves the base default.
#[derive(Debug, Default)]
struct Preset {
    conversations: Option<usize>,
    members: Option<usize>,
    rate: Option<f64>,
    ramp: Option<Vec<f64>>,
    step_secs: Option<f64>,
    duration: Option<f64>,
    payload: Option<usize>,
    churn: Option<f64>,
    idle: Option<usize>,
    storm_at: Option<f64>,
    connect_rate: Option<f64>,
    source_addrs: Vec<IpAddr>,
}

impl Scenario {
    fn preset(self) -> Preset {
        match self {
            Scenario::Steady100x10 => Preset {
                conversations: Some(100),
                members: Some(10),
                rate: Some(2_000.0),
                duration: Some(30.0),
                ..Preset::default()
            },
            Scenario::Rooms10x100 => Preset {
                conversations: Some(10),
                members: Some(100),
                rate: Some(200.0),
                duration: Some(30.0),
                ..Preset::default()
            },
            Scenario::Ramp => Preset {
                conversations: Some(100),
                members: Some(10),
                ramp: Some(vec![1e3, 2e3, 5e3, 10e3, 20e3, 30e3, 40e3]),
                step_secs: Some(10.0),
                ..Preset::default()
            },
            Scenario::Idle100k => Preset {
                conversations: Some(10),
                members: Some(10),
                rate: Some(10.0),
                duration: Some(30.0),
                idle: Some(100_000),
                connect_rate: Some(5_000.0),
                source_addrs: (1..=8).map(|i| IpAddr::from([127, 0, 0, i])).collect(),
                ..Preset::default()
            },
            Scenario::ReconnectStorm => Preset {
                conversations: Some(100),
                members: Some(10),
                rate: Some(1_000.0),
                duration: Some(20.0),
                storm_at: Some(10.0),
                ..Preset::default()
            },
        }
    }
}

impl Settings {
    /// Resolves flags over the scenario's preset over the base defaults, and checks the result.
    pub fn resolve(args: &LoadtestArgs) -> anyhow::Result<Settings> {
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
    pub fn member_conns(&self) -> usize {
        self.conversations * self.members
    }

    /// All connections: members and idle.
    pub fn total_conns(&self) -> usize {
        self.member_conns() + self.idle
    }

    /// Quiet conversations that hold the idle connections.
    pub fn idle_conversations(&self) -> usize {
        self.idle.div_ceil(self.idle_room_size.max(1))
    }

    /// WebSocket members that send (active members that are not SSE receivers).
    pub fn ws_senders(&self) -> usize {
        crate::sse::senders(self.member_conns(), self.sse_share).count()
    }

    /// The share of the aggregate rate the NATS publishers send: every sender, WebSocket member
    /// or publisher, sends at the same rate.
    pub fn nats_share(&self) -> f64 {
        let all = self.ws_senders() + self.nats_publishers;
        if all == 0 {
            return 0.0;
        }
        self.nats_publishers as f64 / all as f64
    }

    /// Seconds of sending, over all steps.
    pub fn send_secs(&self) -> f64 {
        self.steps.iter().map(|s| s.secs).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn nats_publishers_share_the_rate_per_sender_and_fit_in_the_groups() {
        let s = resolve(&["--nats-publishers", "5", "--run-id", "t"]).unwrap();
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.ws_senders(), 100);
        assert!((s.nats_share() - 5.0 / 105.0).abs() < 1e-12);
        // SSE receivers do not send, so the publishers' share grows.
        let s = resolve(&[
            "--nats-publishers",
            "20",
            "--sse-share",
            "0.2",
            "--run-id",
            "t",
        ])
        .unwrap();
        assert!((s.nats_share() - 0.2).abs() < 1e-12, "20 of 80 + 20");
        assert_eq!(resolve(&["--run-id", "t"]).unwrap().nats_share(), 0.0);
        // 998 members + 2 publishers per group + the creator: over the limit.
        assert!(resolve(&[
            "--members",
            "998",
            "--conversations",
            "2",
            "--nats-publishers",
            "4",
            "--run-id",
            "t"
        ])
        .is_err());
        assert!(resolve(&[
            "--conversations",
            "0",
            "--idle",
            "10",
            "--nats-publishers",
            "1",
            "--run-id",
            "t"
        ])
        .is_err());
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    fn resolve(argv: &[&str]) -> anyhow::Result<Settings> {
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
