//! `chatfabric bot`: an example bot that talks NATS directly, the way a device or bot author would.
//!
//! It echoes every message of one conversation that it did not send itself. It reads live
//! messages on `chat.live.*.<conv>` and posts with a request on `chat.in.<conv>.<bot>`; its client
//! id is derived from the message it answers, so a restarted bot that sees a message again is
//! stored once. Its nats-server user may do nothing else (see `nats/config/auth.conf`).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chatfabric_nats::permissions::inbox_prefix;
use chatfabric_nats::subject::ingress_subject;
use chatfabric_nats::wire::{StoredMessage, SEQUENCE_HEADER};
use chatfabric_nats::{ConvId, UserId};
use clap::Args;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// `chatfabric bot`.
#[derive(Args)]
pub(crate) struct BotArgs {
    /// NATS URL with the bot's credentials, e.g. nats://echo-bot:password@127.0.0.1:4222.
    #[arg(long, env = "CHATFABRIC_BOT_NATS_URL")]
    nats_url: String,
    /// The bot's identity (its nats-server user and its sender id).
    #[arg(long, env = "CHATFABRIC_BOT_ID")]
    bot: UserId,
    /// The conversation to echo in.
    #[arg(long, env = "CHATFABRIC_BOT_CONV")]
    conv: ConvId,
}

pub(crate) async fn run(args: BotArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let servers = chatfabric_nats::connect::servers(&args.nats_url).context("--nats-url")?;
    let options = async_nats::ConnectOptions::new()
        .name(format!("chatfabric-bot-{}", args.bot))
        .custom_inbox_prefix(inbox_prefix(&args.bot));
    let client = chatfabric_nats::connect::with_url_credentials(options, &servers)
        .connect(servers)
        .await
        .context("connecting to NATS")?;
    let mut live = client
        .subscribe(format!("chat.live.*.{}", args.conv))
        .await
        .context("subscribing (is the bot granted this conversation?)")?;
    client.flush().await.context("flushing the subscription")?;
    tracing::info!(bot = %args.bot, conv = %args.conv, "echo bot running");
    let post_to = ingress_subject(&args.conv, &args.bot);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = live.next() => m.context("subscription ended")?,
        };
        let Ok(stored) = serde_json::from_slice::<StoredMessage>(&msg.payload) else {
            continue;
        };
        if stored.sender == args.bot {
            continue;
        }
        let seq = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(SEQUENCE_HEADER))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let post = serde_json::json!({
            "client_id": format!("echo-{seq}"),
            "body": format!("echo: {}", stored.body),
        });
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(post_to.clone(), Bytes::from(post.to_string())),
        )
        .await;
        match reply {
            Ok(Ok(r)) => tracing::info!(reply = %String::from_utf8_lossy(&r.payload), "posted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "post failed"),
            Err(_) => tracing::warn!("post timed out"),
        }
    }
}
