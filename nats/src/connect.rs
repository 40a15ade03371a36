//! Connecting to NATS the way every role does.

use std::time::Duration;

use tokio::sync::watch;

use crate::permissions::Role;

/// Connection options a role may tune.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Comma-separated server URLs (any node of a cluster; the client learns the others).
    pub url: String,
    /// Connection name shown by the server's monitoring.
    pub name: String,
    /// Messages buffered per subscription before the client drops them (slow consumer).
    pub subscription_capacity: usize,
    /// The role connecting: its requests' replies come back under the role's own inbox prefix,
    /// which its NATS user may subscribe to and no bot may (see [`crate::permissions`]).
    pub role: Role,
}

/// Parses a comma-separated list of server URLs.
pub fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, async_nats::ConnectError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|e| {
                async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
            })
        })
        .collect()
}

/// Uses the `user:password@` of the first URL that has one (the client library ignores them).
pub fn with_url_credentials(
    options: async_nats::ConnectOptions,
    servers: &[async_nats::ServerAddr],
) -> async_nats::ConnectOptions {
    match servers
        .iter()
        .find_map(|s| Some((s.username()?, s.password()?)))
    {
        Some((user, pass)) => options.user_and_password(user.to_string(), pass.to_string()),
        None => options,
    }
}

/// How often the client pings its server. The client library gives up on a server after two
/// unanswered pings, so a dead or paused (SIGSTOP) server is left for another node of the cluster
/// within about three intervals instead of when TCP finally times out.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// How long one connection attempt may take. A paused server accepts TCP but never answers; this
/// bounds what trying it costs before the next node is tried.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// A connected client and a counter that moves whenever the client (re)connected or dropped
/// messages of a subscription. Readers of core NATS subscriptions watch it: after either event,
/// messages may have been missed and must be fetched from JetStream.
pub async fn connect(
    opts: &ConnectOptions,
) -> Result<(async_nats::Client, watch::Receiver<u64>), async_nats::ConnectError> {
    let (tx, rx) = watch::channel(0u64);
    let servers = servers(&opts.url)?;
    let client = with_url_credentials(async_nats::ConnectOptions::new(), &servers)
        .name(&opts.name)
        .custom_inbox_prefix(opts.role.inbox_prefix())
        .subscription_capacity(opts.subscription_capacity)
        .connection_timeout(CONNECTION_TIMEOUT)
        .ping_interval(PING_INTERVAL)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected | async_nats::Event::SlowConsumer(_) => {
                        tx.send_modify(|n| *n += 1);
                    }
                    other => tracing::info!(event = %other, "nats"),
                }
            }
        })
        .connect(servers)
        .await?;
    Ok((client, rx))
}
