//! The command line ([`LoadtestArgs`]) and the named scenarios ([`Scenario`]) that fill its
//! defaults; `settings` resolves both into what a run uses.
//!
//! A scenario only fills defaults: any flag given on the command line (or through its
//! `CHATFABRIC_LOADTEST_*` environment twin) wins over the preset, so `--scenario ramp --members 5`
//! is the ramp with five members per conversation.

use std::net::IpAddr;
use std::path::PathBuf;

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

    /// Milliseconds between the pacer's steps. What fell due in a step goes out at once: at 2,000
    /// msg/s, 1 sends two a step, as independent users would; 10 (the step until 2026-12-01)
    /// sends bursts of twenty.
    #[arg(long, env = "CHATFABRIC_LOADTEST_PACE_MS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub pace_ms: u64,

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

    /// A measurement to make instead of a load test.
    #[command(subcommand)]
    pub tool: Option<Tool>,
}

/// Measurements `chatfabric loadtest` makes besides load tests.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// The floor of delivery on this machine: one `write(2)` per frame to loopback sockets, at a
    /// delivery rate, and its CPU per write.
    Floor(FloorArgs),
}

/// `chatfabric loadtest floor`: what one `write(2)` per delivery costs, to set the fabric's CPU
/// per delivery against (see BENCHMARKS.md).
#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// Loopback TCP sockets written to round-robin (the connections of the run compared with).
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_FLOOR_SOCKETS",
        default_value_t = 1000
    )]
    pub sockets: usize,

    /// Bytes of each frame: a delivered WebSocket frame of the run compared with.
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_FLOOR_FRAME_BYTES",
        default_value_t = 300
    )]
    pub frame_bytes: usize,

    /// Writes per second over all sockets (the deliveries per second of the run compared with).
    #[arg(
        long,
        env = "CHATFABRIC_LOADTEST_FLOOR_RATE",
        default_value_t = 10_000.0
    )]
    pub rate: f64,

    /// Seconds of writing.
    #[arg(long, env = "CHATFABRIC_LOADTEST_FLOOR_SECS", default_value_t = 10.0)]
    pub secs: f64,

    /// Pin the writer process to this CPU (with `taskset -c`), as the fabric is pinned.
    #[arg(long, env = "CHATFABRIC_LOADTEST_FLOOR_WRITER_CPU")]
    pub writer_cpu: Option<usize>,

    /// Write the figures as JSON to this file.
    #[arg(long, env = "CHATFABRIC_LOADTEST_FLOOR_JSON")]
    pub json: Option<PathBuf>,

    /// Internal: be the writer, connecting to the reader at this address.
    #[arg(long, hide = true)]
    pub writer: Option<std::net::SocketAddr>,
}

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

/// The preset values of a scenario; `None` leaves the base default.
#[derive(Debug, Default)]
pub(crate) struct Preset {
    pub(crate) conversations: Option<usize>,
    pub(crate) members: Option<usize>,
    pub(crate) rate: Option<f64>,
    pub(crate) ramp: Option<Vec<f64>>,
    pub(crate) step_secs: Option<f64>,
    pub(crate) duration: Option<f64>,
    pub(crate) payload: Option<usize>,
    pub(crate) churn: Option<f64>,
    pub(crate) idle: Option<usize>,
    pub(crate) storm_at: Option<f64>,
    pub(crate) connect_rate: Option<f64>,
    pub(crate) source_addrs: Vec<IpAddr>,
}

impl Scenario {
    /// The defaults this scenario fills.
    pub(crate) fn preset(self) -> Preset {
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
