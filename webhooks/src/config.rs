//! Flags of `chatfabric webhooks` (each with a `CHATFABRIC_*` environment twin), and the
//! configuration of the role they become.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::DeliveryPolicy;
use crate::metrics::Metrics;
use crate::sign::{NoSecret, Signer};

/// The role's configuration.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Receiver URLs; each gets every event.
    pub urls: Vec<String>,
    /// Signs every event.
    pub signer: Signer,
    /// Coalescing window per conversation.
    pub coalesce: Duration,
    /// Messages listed per `message.offline` event.
    pub last_messages: usize,
    /// Retries, timeouts and queues per URL.
    pub delivery: DeliveryPolicy,
    /// Durable consumer name; the membership consumer is `<durable>-members`.
    pub durable: String,
    /// JetStream's redelivery timeout for unacked messages.
    pub ack_wait: Duration,
    /// Unacked messages per stream.
    pub max_ack_pending: i64,
    /// Messages per fetch.
    pub batch: usize,
    /// Whom `https://` receivers are verified against.
    pub tls: Arc<rustls::ClientConfig>,
    /// Where the role reports; register it once with [`Metrics::register`].
    pub metrics: Metrics,
}

/// Flags of the webhook role.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhooksArgs {
    /// Receiver URL (http:// or https://); repeat or separate with commas for several. Every URL
    /// gets every event.
    #[arg(
        long = "webhook-url",
        env = "CHATFABRIC_WEBHOOK_URL",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
    /// Shared secret the events are signed with (repeat or comma-separate to rotate: each gets
    /// its own `v1=`).
    #[arg(
        long = "webhook-secret",
        env = "CHATFABRIC_WEBHOOK_SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub secrets: Vec<String>,
    /// A file holding the secret (one per line), instead of the flag.
    #[arg(long = "webhook-secret-file", env = "CHATFABRIC_WEBHOOK_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for https:// receivers, besides the system's roots
    /// (a private CA).
    #[arg(long = "webhook-ca-file", env = "CHATFABRIC_WEBHOOK_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Coalescing window: an offline member gets at most one `message.offline` event per
    /// conversation per window (`2s`, `500ms`; `0s` sends one per message).
    #[arg(long, env = "CHATFABRIC_WEBHOOK_COALESCE", default_value = "2s", value_parser = parse_duration)]
    pub coalesce: Duration,
    /// Messages listed in a `message.offline` event (the last ones of its window).
    #[arg(long, env = "CHATFABRIC_WEBHOOK_LAST_MESSAGES", default_value_t = 3)]
    pub last_messages: usize,
    /// Attempts per event and URL before it is dead-lettered.
    #[arg(long, env = "CHATFABRIC_WEBHOOK_MAX_ATTEMPTS", default_value_t = DeliveryPolicy::default().max_attempts)]
    pub max_attempts: u32,
    /// Backoff after the first failed attempt (doubles per attempt, ±20 %).
    #[arg(long, env = "CHATFABRIC_WEBHOOK_RETRY_MIN", default_value = "500ms", value_parser = parse_duration)]
    pub retry_min: Duration,
    /// Longest backoff between attempts.
    #[arg(long, env = "CHATFABRIC_WEBHOOK_RETRY_MAX", default_value = "30s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// One attempt's deadline.
    #[arg(long, env = "CHATFABRIC_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Requests in flight per URL.
    #[arg(long, env = "CHATFABRIC_WEBHOOK_CONCURRENCY", default_value_t = DeliveryPolicy::default().concurrency)]
    pub concurrency: usize,
    /// Events queued per URL (waiting, in flight or in backoff); beyond it they are dead-lettered.
    #[arg(long, env = "CHATFABRIC_WEBHOOK_QUEUE_EVENTS", default_value_t = DeliveryPolicy::default().queue_events)]
    pub queue_events: usize,
    /// Bytes of events queued per URL; beyond it they are dead-lettered.
    #[arg(long, env = "CHATFABRIC_WEBHOOK_QUEUE_BYTES", default_value_t = DeliveryPolicy::default().queue_bytes)]
    pub queue_bytes: usize,
    /// Durable consumer name (one per stream; every webhook process of a deployment shares it).
    #[arg(
        long = "webhook-durable",
        env = "CHATFABRIC_WEBHOOK_DURABLE",
        default_value = "webhooks"
    )]
    pub durable: String,
    /// How long JetStream waits for an ack before redelivering: after a crash, the messages the
    /// role held are redelivered this much later (held ones are kept alive meanwhile).
    #[arg(long = "webhook-ack-wait", env = "CHATFABRIC_WEBHOOK_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Messages delivered to the role and not yet acked, per stream (JetStream stops delivering
    /// beyond it: the role's memory bound).
    #[arg(
        long,
        env = "CHATFABRIC_WEBHOOK_MAX_ACK_PENDING",
        default_value_t = 20_000
    )]
    pub max_ack_pending: i64,
    /// Address to serve /healthz, /readyz and /metrics on.
    #[arg(
        long = "webhooks-listen",
        env = "CHATFABRIC_WEBHOOKS_LISTEN",
        default_value = "127.0.0.1:9092"
    )]
    pub webhooks_listen: SocketAddr,
}

/// Flags that do not make a working configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No secret.
    #[error(transparent)]
    NoSecret(#[from] NoSecret),
    /// The secret file could not be read.
    #[error("reading --webhook-secret-file {path}: {source}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No URL.
    #[error("no --webhook-url given")]
    NoUrl,
    /// A URL is unusable.
    #[error(transparent)]
    Url(#[from] crate::endpoint::UrlError),
    /// The roots for https:// receivers could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl WebhooksArgs {
    /// The role's configuration (metrics fresh; register them).
    pub fn config(&self) -> Result<WebhookConfig, ConfigError> {
        if self.urls.iter().all(|u| u.trim().is_empty()) {
            return Err(ConfigError::NoUrl);
        }
        for url in &self.urls {
            if !url.trim().is_empty() {
                crate::endpoint::check_url(url.trim())?;
            }
        }
        let mut secrets: Vec<Vec<u8>> =
            self.secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        if let Some(path) = &self.secret_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                path: path.clone(),
                source,
            })?;
            secrets.extend(text.lines().map(|l| l.trim().as_bytes().to_vec()));
        }
        Ok(WebhookConfig {
            urls: self
                .urls
                .iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            signer: Signer::new(secrets)?,
            coalesce: self.coalesce,
            last_messages: self.last_messages.max(1),
            delivery: DeliveryPolicy {
                max_attempts: self.max_attempts.max(1),
                retry_min: self.retry_min,
                retry_max: self.retry_max.max(self.retry_min),
                timeout: self.timeout,
                concurrency: self.concurrency.max(1),
                queue_events: self.queue_events.max(1),
                queue_bytes: self.queue_bytes.max(1),
            },
            durable: self.durable.clone(),
            ack_wait: self.ack_wait.max(Duration::from_secs(1)),
            max_ack_pending: self.max_ack_pending.max(1),
            batch: 256,
            tls: crate::tls::client_config(self.ca_file.as_deref())?,
            metrics: Metrics::default(),
        })
    }
}

/// Parses `250ms`, `2s`, `1m` (a bare number is milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 2s or 500ms"))?;
    match unit {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: the unit must be ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WebhooksArgs,
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn needs_a_url_and_a_secret() {
        let cli = Cli::try_parse_from(["x", "--webhook-url", "http://a/,http://b/"]).unwrap();
        assert!(matches!(cli.args.config(), Err(ConfigError::NoSecret(_))));
        let cli = Cli::try_parse_from(["x", "--webhook-secret", "s"]).unwrap();
        assert!(matches!(cli.args.config(), Err(ConfigError::NoUrl)));
        let cli = Cli::try_parse_from(["x", "--webhook-url", "ftp://a/", "--webhook-secret", "s"])
            .unwrap();
        assert!(matches!(cli.args.config(), Err(ConfigError::Url(_))));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let cli = Cli::try_parse_from([
            "x",
            "--webhook-url",
            "http://a/,https://b/",
            "--webhook-secret-file",
            file.to_str().unwrap(),
            "--coalesce",
            "500ms",
        ])
        .unwrap();
        let config = cli.args.config().unwrap();
        assert_eq!(config.urls, vec!["http://a/", "https://b/"]);
        assert_eq!(config.coalesce, Duration::from_millis(500));
        // A CA file without a certificate (the secret file) is refused.
        let cli = Cli::try_parse_from([
            "x",
            "--webhook-url",
            "https://a/",
            "--webhook-secret",
            "s",
            "--webhook-ca-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        assert!(matches!(cli.args.config(), Err(ConfigError::Tls(_))));
    }
}
