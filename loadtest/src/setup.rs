//! Before the run: who the users are, and the conversations they are members of.
//!
//! Groups are created over WebSocket like any client would, by "admin" users of the run (one per
//! [`CREATES_PER_ADMIN`] groups, so that no connection exceeds the gateway's per-connection burst).
//! An admin is a member of the groups it creates but never subscribes, so it receives nothing.

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::frames::{mint_token, Reply, Request};
use crate::plan::users_of;
use crate::settings::Settings;

/// Groups one admin connection creates, all in flight at once: under the gateway's default
/// burst of 100 frames.
const CREATES_PER_ADMIN: usize = 50;
/// Admin connections working at once.
const PARALLEL_ADMINS: usize = 16;

/// Resolves the host and port of a `ws://` URL.
pub(crate) async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("{url}: only ws:// gateways are supported");
    }
    let host = uri.host().ok_or_else(|| anyhow!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let mut addrs = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .with_context(|| format!("resolving {url}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("{url}: host has no address"))
}

/// Creates every conversation of the run; returns their ids, active ones first.
pub(crate) async fn create_conversations(s: &Settings) -> anyhow::Result<Vec<String>> {
    let total = s.conversations + s.idle_conversations();
    let batches: Vec<std::ops::Range<usize>> = (0..total)
        .step_by(CREATES_PER_ADMIN)
        .map(|start| start..(start + CREATES_PER_ADMIN).min(total))
        .collect();
    let results: Vec<anyhow::Result<Vec<String>>> = futures::stream::iter(
        batches
            .into_iter()
            .enumerate()
            .map(|(admin, convs)| async move { create_batch(s, admin, convs).await }),
    )
    .buffered(PARALLEL_ADMINS)
    .collect()
    .await;
    let mut ids = Vec::with_capacity(total);
    for r in results {
        ids.extend(r?);
    }
    Ok(ids)
}

/// One admin creates the groups `convs`.
async fn create_batch(
    s: &Settings,
    admin: usize,
    convs: std::ops::Range<usize>,
) -> anyhow::Result<Vec<String>> {
    let user = format!("{}-admin{admin}", s.run_id);
    let url = &s.gateways[admin % s.gateways.len()];
    let mut request = url.as_str().into_client_request()?;
    let token = mint_token(&s.jwt_secret, &user, 3600)?;
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("connecting to {url} to create conversations"))?;
    for conv in convs.clone() {
        let members = users_of(s, conv);
        let title = format!("{} load test {conv}", s.run_id);
        let reference = conv.to_string();
        let frame = Request::Create {
            kind: "group",
            members: &members,
            title: &title,
            reference: &reference,
        };
        ws.send(Message::text(frame.encode())).await?;
    }
    let mut ids = vec![String::new(); convs.len()];
    let mut left = convs.len();
    while left > 0 {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
            .await
            .context("the gateway did not answer a create within 30 s")?;
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(f))) => bail!("gateway closed the admin connection: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
            None => bail!("gateway ended the admin connection"),
        };
        let reply = Reply::parse(&text)?;
        match reply.op.as_ref() {
            "conversation" => {
                let conv: usize = reply.reference.as_deref().unwrap_or("").parse()?;
                let created = reply
                    .conversation
                    .ok_or_else(|| anyhow!("no conversation"))?;
                let slot = conv.checked_sub(convs.start).and_then(|i| ids.get_mut(i));
                *slot.ok_or_else(|| anyhow!("reply for conversation {conv} not asked"))? =
                    created.conv;
                left -= 1;
            }
            "error" => bail!("creating a conversation: {}", reply.error_text()),
            _ => {}
        }
    }
    if ws.close(None).await.is_err() {
        tracing::debug!("admin connection already closed");
    }
    Ok(ids)
}
