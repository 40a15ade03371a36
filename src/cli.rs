//! Command-line configuration. Every flag has an environment twin (`CHATFABRIC_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatfabric_gateway::{fanout::HubConfig, Authenticator, GatewayConfig, Limits};
use chatfabric_nats::permissions::Role;
use chatfabric_nats::subject::Partitions;
use chatfabric_nats::{ConnectOptions, Fabric, StreamSettings};
use chatfabric_persister::PersisterArgs;
use chatfabric_storage::{HistoryStore, StoreArgs};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::startup::{retry, Failure};

/// The development HS256 secret `chatfabric dev` and `chatfabric token` use by default.
pub(crate) const DEV_SECRET: &str = "chatfabric-dev-secret";

/// chatfabric: a chat fabric on NATS JetStream.
#[derive(Parser)]
#[command(version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `chatfabric_gateway=debug`.
    #[arg(long, env = "CHATFABRIC_LOG", default_value = "info", global = true)]
    pub(crate) log: String,
    /// Log format: `pretty` for people, `json` for log pipelines (one object per line, with the
    /// fields of the enclosing spans: connection, user, conversation).
    #[arg(long, env = "CHATFABRIC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the whole fabric locally: a child nats-server (store in ./data) and every role.
    Dev(DevArgs),
    /// Run a gateway: WebSocket clients in, JetStream behind.
    Gateway(GatewayCmd),
    /// Run a persister: drains the message streams into the history store.
    Persister(PersisterCmd),
    /// Run a presence service: gateway heartbeats and devices in KV -> online/offline events.
    Presence(PresenceCmd),
    /// Run the webhook role: stored messages for offline members and membership changes ->
    /// signed HTTP events (docs/WEBHOOKS.md).
    Webhooks(WebhooksCmd),
    /// Print a development token (HS256) for a user.
    Token(TokenArgs),
    /// Print a new server API key and its line for the gateways' --api-keys file.
    ApiKey(crate::server_api::ApiKeyArgs),
    /// Run the example echo bot, which talks NATS directly.
    Bot(crate::bot::BotArgs),
    /// Print a nats-server user block granting a bot exactly the given conversations.
    BotUser(BotUserArgs),
    /// Print the nats-server `authorization` block of the fabric's roles (gateway, persister,
    /// presence, webhooks), each with least privilege and a fresh random password.
    NatsUsers(NatsUsersArgs),
    /// Serve one nats-server's `/varz` as Prometheus metrics (`gnatsd_varz_*`, as
    /// prometheus-nats-exporter's -varz mode), for hosts without that exporter.
    NatsExporter(crate::nats_exporter::NatsExporterArgs),
    /// Drive a running fabric with a load scenario.
    Loadtest(chatfabric_loadtest::LoadtestArgs),
}

/// How to reach NATS and how the streams are laid out. Every process of a deployment must agree on
/// the stream settings.
#[derive(Parser, Clone)]
pub(crate) struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long,
        env = "CHATFABRIC_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub(crate) nats_url: String,
    /// Message streams conversations are spread over (fixed for a deployment).
    #[arg(long, env = "CHATFABRIC_PARTITIONS", default_value_t = 1)]
    pub(crate) partitions: u16,
    /// Replicas of streams and buckets: 1 on one server, 3 on a cluster.
    #[arg(long, env = "CHATFABRIC_REPLICAS", default_value_t = 1)]
    pub(crate) replicas: usize,
    /// How long streams keep messages (the resume window), in hours.
    #[arg(long, env = "CHATFABRIC_RETENTION_HOURS", default_value_t = 168)]
    pub(crate) retention_hours: u64,
    /// Upper bound on each stream's size in bytes (-1: unlimited).
    #[arg(long, env = "CHATFABRIC_STREAM_MAX_BYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub(crate) stream_max_bytes: i64,
    /// Window in which a retried send (same client_id) is stored once, in seconds.
    #[arg(long, env = "CHATFABRIC_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    pub(crate) duplicate_window_secs: u64,
    /// Messages buffered per NATS subscription before the client drops them (gaps are then
    /// filled from JetStream).
    #[arg(
        long,
        env = "CHATFABRIC_NATS_SUBSCRIPTION_CAPACITY",
        default_value_t = 8192
    )]
    pub(crate) nats_subscription_capacity: usize,
}

impl NatsArgs {
    pub(crate) fn settings(&self) -> StreamSettings {
        StreamSettings {
            partitions: Partitions::new(self.partitions),
            replicas: self.replicas,
            max_age: Duration::from_secs(self.retention_hours * 3600),
            max_bytes: self.stream_max_bytes,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            ..StreamSettings::default()
        }
    }

    /// Connects as `role` and provisions streams and buckets, retrying each with backoff while
    /// the server starts or elects leaders, until done or `shutdown` (then `None`).
    pub(crate) async fn connect(
        &self,
        role: Role,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(Fabric, tokio::sync::watch::Receiver<u64>)>> {
        let opts = ConnectOptions {
            url: self.nats_url.clone(),
            name: format!("chatfabric-{}", role.user()),
            subscription_capacity: self.nats_subscription_capacity,
            role,
        };
        let connected = retry("connecting to NATS", shutdown, || async {
            chatfabric_nats::connect(&opts).await.map_err(|e| {
                use async_nats::ConnectErrorKind::{AuthorizationViolation, ServerParse};
                match e.kind() {
                    ServerParse | AuthorizationViolation => Failure::Fatal(e),
                    _ => Failure::Transient(e),
                }
            })
        })
        .await
        .with_context(|| format!("connecting to {}", opts.url))?;
        let Some((client, missed)) = connected else {
            return Ok(None);
        };
        let settings = self.settings();
        let fabric = retry("provisioning streams and buckets", shutdown, || {
            let attempt = chatfabric_nats::provision(client.clone(), settings.clone());
            async { attempt.await.map_err(Failure::Transient) }
        })
        .await?;
        Ok(fabric.map(|f| (f, missed)))
    }
}

/// `chatfabric gateway`.
#[derive(Args)]
pub(crate) struct GatewayCmd {
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) gateway: GatewayArgs,
}

/// `chatfabric persister`.
#[derive(Args)]
pub(crate) struct PersisterCmd {
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) persister: PersisterArgs,
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(
        long,
        env = "CHATFABRIC_PERSISTER_METRICS",
        default_value = "127.0.0.1:9090"
    )]
    pub(crate) metrics_listen: SocketAddr,
}

/// `chatfabric presence`.
#[derive(Args)]
pub(crate) struct PresenceCmd {
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) presence: chatfabric_presence::PresenceArgs,
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(
        long,
        env = "CHATFABRIC_PRESENCE_METRICS",
        default_value = "127.0.0.1:9091"
    )]
    pub(crate) metrics_listen: SocketAddr,
}

/// `chatfabric webhooks`.
#[derive(Args)]
pub(crate) struct WebhooksCmd {
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    #[command(flatten)]
    pub(crate) webhooks: chatfabric_webhooks::WebhooksArgs,
}

/// Gateway settings.
#[derive(Parser, Clone)]
pub(crate) struct GatewayArgs {
    /// Address to serve WebSocket (/ws), /healthz, /readyz and /metrics on.
    #[arg(long, env = "CHATFABRIC_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// HS256 secret for tokens (development). Use --jwt-public-key in production.
    #[arg(long, env = "CHATFABRIC_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,
    /// PEM public key verifying tokens (production); see --jwt-algorithm.
    #[arg(long, env = "CHATFABRIC_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub(crate) jwt_public_key: Option<PathBuf>,
    /// Algorithm of --jwt-public-key: RS256, ES256 or EdDSA.
    #[arg(long, env = "CHATFABRIC_JWT_ALGORITHM", default_value = "RS256")]
    pub(crate) jwt_algorithm: String,
    /// Largest inbound WebSocket frame, bytes (close 1009 past it).
    #[arg(long, env = "CHATFABRIC_MAX_FRAME", default_value_t = Limits::default().max_frame)]
    pub(crate) max_frame: usize,
    /// Largest message body, bytes (error too_large past it).
    #[arg(long, env = "CHATFABRIC_MAX_BODY", default_value_t = Limits::default().max_body)]
    pub(crate) max_body: usize,
    /// Outbound frames queued per connection before closing it as slow (4008).
    #[arg(long, env = "CHATFABRIC_QUEUE", default_value_t = Limits::default().queue)]
    pub(crate) queue: usize,
    /// Outbound bytes queued per connection before closing it as slow (4008); replays use half.
    #[arg(long, env = "CHATFABRIC_QUEUE_BYTES", default_value_t = Limits::default().queue_bytes)]
    pub(crate) queue_bytes: usize,
    /// Sustained inbound frames/s per connection.
    #[arg(long, env = "CHATFABRIC_RATE", default_value_t = Limits::default().rate)]
    pub(crate) rate: f64,
    /// Inbound burst per connection; more refusals than this within 10 s (in a row or not) close
    /// it with 4029.
    #[arg(long, env = "CHATFABRIC_BURST", default_value_t = Limits::default().burst)]
    pub(crate) burst: f64,
    /// Connections accepted before answering 503.
    #[arg(long, env = "CHATFABRIC_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub(crate) max_connections: usize,
    /// tungstenite read buffer per connection, bytes (allocated eagerly: memory per connection).
    #[arg(long, env = "CHATFABRIC_READ_BUFFER", default_value_t = Limits::default().read_buffer)]
    pub(crate) read_buffer: usize,
    /// Recent messages kept per active conversation for cheap resumes.
    #[arg(long, env = "CHATFABRIC_RING", default_value_t = HubConfig::default().ring)]
    pub(crate) ring: usize,
    /// Bytes of history pages cached per gateway.
    #[arg(long, env = "CHATFABRIC_HISTORY_CACHE_BYTES", default_value_t = chatfabric_gateway::history::DEFAULT_HISTORY_CACHE_BYTES)]
    pub(crate) history_cache_bytes: u64,
    /// How often this gateway refreshes its presence heartbeat, ms (keep it well below the
    /// presence service's --gateway-timeout-ms).
    #[arg(long, env = "CHATFABRIC_PRESENCE_HEARTBEAT_MS", default_value_t = 2000)]
    pub(crate) presence_heartbeat_ms: u64,
    /// Serve the demo chat page at `/` (it asks for a token; `chatfabric dev` also mints them).
    #[arg(long, env = "CHATFABRIC_DEMO_PAGE")]
    pub(crate) demo_page: bool,
    /// The secret `POST /dev/token` signs with: set by `chatfabric dev` only, never by a flag,
    /// so a gateway with real authentication has no such endpoint.
    #[arg(skip)]
    pub(crate) dev_tokens: Option<String>,
    /// The history store the persister writes (the gateway reads pages from it).
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    #[command(flatten)]
    pub(crate) server_api: crate::server_api::ServerApiArgs,
}

impl GatewayArgs {
    /// The gateway's config, reading history from `history`.
    pub(crate) fn config(&self, history: Arc<dyn HistoryStore>) -> anyhow::Result<GatewayConfig> {
        let auth = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(secret), None) => Authenticator::hs256(secret.as_bytes()),
            (None, Some(path)) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let alg = self.jwt_algorithm.parse().map_err(|_| {
                    anyhow::anyhow!("unknown --jwt-algorithm {}", self.jwt_algorithm)
                })?;
                Authenticator::public_key(&pem, alg)?
            }
            _ => anyhow::bail!("set --jwt-secret (development) or --jwt-public-key (production)"),
        };
        Ok(GatewayConfig {
            auth,
            limits: Limits {
                max_frame: self.max_frame,
                max_body: self.max_body,
                queue: self.queue,
                queue_bytes: self.queue_bytes,
                rate: self.rate,
                burst: self.burst,
                max_connections: self.max_connections,
                read_buffer: self.read_buffer,
                server_api_rate: self.server_api.server_api_rate,
                server_api_burst: self.server_api.server_api_burst,
                ..Limits::default()
            },
            hub: HubConfig {
                ring: self.ring,
                ..HubConfig::default()
            },
            membership_cache: 1_000_000,
            membership_ttl: Duration::from_secs(300),
            history,
            history_cache_bytes: self.history_cache_bytes,
            presence: chatfabric_gateway::presence::PresenceConfig {
                heartbeat: Duration::from_millis(self.presence_heartbeat_ms),
                ..Default::default()
            },
            demo: chatfabric_gateway::http::demo::DemoConfig {
                page: self.demo_page,
                dev_tokens: self.dev_tokens.as_ref().map(|s| s.as_bytes().to_vec()),
            },
            api_keys: self.server_api.keys()?,
            client_membership: self.server_api.client_membership,
        })
    }
}

/// `chatfabric token`.
#[derive(Args)]
pub(crate) struct TokenArgs {
    /// The user id (the token's `sub`).
    pub(crate) user: String,
    /// HS256 secret; must match the gateway's --jwt-secret.
    #[arg(long, env = "CHATFABRIC_JWT_SECRET", default_value = DEV_SECRET, hide_env_values = true)]
    pub(crate) jwt_secret: String,
    /// Validity in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub(crate) ttl_secs: u64,
}

/// `chatfabric bot-user`.
#[derive(Args)]
pub(crate) struct NatsUsersArgs {
    /// Message streams of the deployment (the same as every role's --partitions).
    #[arg(long, env = "CHATFABRIC_PARTITIONS", default_value_t = 1)]
    pub(crate) partitions: u16,
    /// Use the published development passwords (`<role>-dev-password`) instead of random ones,
    /// as `nats/config/auth.conf` does. Never on a server others can reach.
    #[arg(long)]
    pub(crate) dev_passwords: bool,
}

/// `chatfabric bot-user`.
#[derive(Args)]
pub(crate) struct BotUserArgs {
    /// The bot's id (its nats-server user and sender id).
    #[arg(long)]
    pub(crate) bot: String,
    /// Its nats-server password.
    #[arg(long)]
    pub(crate) password: String,
    /// A conversation it may read and post to (repeat for more).
    #[arg(long, required = true)]
    pub(crate) conv: Vec<String>,
}

/// `chatfabric dev`.
#[derive(Args)]
pub(crate) struct DevArgs {
    /// Directory for the NATS store and the embedded history.
    #[arg(long, env = "CHATFABRIC_DATA", default_value = "./data")]
    pub(crate) data: PathBuf,
    /// Client port of the child nats-server.
    #[arg(long, env = "CHATFABRIC_NATS_PORT", default_value_t = 4222)]
    pub(crate) nats_port: u16,
    /// Gateway address.
    #[arg(long, env = "CHATFABRIC_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// HS256 secret for development tokens.
    #[arg(long, env = "CHATFABRIC_JWT_SECRET", default_value = DEV_SECRET, hide_env_values = true)]
    pub(crate) jwt_secret: String,
    /// A file of extra nats-server user entries (e.g. `chatfabric bot-user` output, one after the
    /// other) admitted next to the fabric's own role users.
    #[arg(long, env = "CHATFABRIC_NATS_USERS")]
    pub(crate) nats_users: Option<PathBuf>,
    /// Do not serve the demo chat page at `/` nor its token endpoint `POST /dev/token`.
    #[arg(long, env = "CHATFABRIC_NO_DEMO")]
    pub(crate) no_demo: bool,
    /// The webhook role, run when a --webhook-url is given.
    #[command(flatten)]
    pub(crate) webhooks: chatfabric_webhooks::WebhooksArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Flattened flag groups must not reuse a name (clap checks this only when a command runs).
    #[test]
    fn every_subcommand_s_flags_are_consistent() {
        super::Cli::command().debug_assert();
    }
}
