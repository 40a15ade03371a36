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

use crate::args::Settings;
use crate::frames::{mint_token, Reply, Request};
use crate::publisher::{publisher_id, publishers_of};

/// Groups one admin connection creates, all in flight at once: under the gateway's default
/// burst of 100 frames.
const CREATES_PER_ADMIN: usize = 50;
/// Admin connections working at once.
const PARALLEL_ADMINS: usize = 16;

/// The conversation index and user id of connection `i` (see the worker's numbering).
pub(crate) fn member_at(s: &Settings, i: usize) -> (usize, String) {
    let active = s.member_conns();
    if i < active {
        let (conv, m) = (i / s.members, i % s.members);
        (conv, format!("{}-c{conv}-m{m}", s.run_id))
    } else {
        let k = i - active;
        let (room, m) = (k / s.idle_room_size, k % s.idle_room_size);
        (s.conversations + room, format!("{}-i{room}-m{m}", s.run_id))
    }
}

/// The users of conversation `conv` (active ones first, then the quiet ones); an active
/// conversation's members are followed by its NATS publishers.
fn users_of(s: &Settings, conv: usize) -> Vec<String> {
    if conv < s.conversations {
        let members = (conv * s.members..(conv + 1) * s.members).map(|i| member_at(s, i).1);
        let publishers = publishers_of(conv, s.nats_publishers, s.conversations)
            .map(|k| publisher_id(&s.run_id, k));
        members.chain(publishers).collect()
    } else {
        let room = conv - s.conversations;
        let start = s.member_conns() + room * s.idle_room_size;
        let range = start..(start + s.idle_room_size).min(s.total_conns());
        range.map(|i| member_at(s, i).1).collect()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Step;

    #[test]
    fn users_are_numbered_by_conversation_then_idle_room() {
        let s = Settings {
            scenario: None,
            gateways: vec![],
            jwt_secret: String::new(),
            source_addrs: vec![],
            conversations: 2,
            members: 3,
            steps: vec![Step {
                rate: 0.0,
                secs: 0.0,
            }],
            payload: 1,
            sse_share: 0.0,
            nats_publishers: 0,
            nats_url: String::new(),
            churn: 0.0,
            idle: 5,
            idle_room_size: 4,
            storm_at: None,
            connect_rate: 1.0,
            drain: 0.0,
            workers: 0,
            fabric_pids: vec![],
            p99_target_ms: 50.0,
            run_id: "r".into(),
        };
        assert_eq!(users_of(&s, 1), ["r-c1-m0", "r-c1-m1", "r-c1-m2"]);
        assert_eq!(
            users_of(&s, 2),
            ["r-i0-m0", "r-i0-m1", "r-i0-m2", "r-i0-m3"]
        );
        assert_eq!(
            users_of(&s, 3),
            ["r-i1-m0"],
            "the last quiet room holds the rest"
        );
        assert_eq!(member_at(&s, 10), (3, "r-i1-m0".to_string()));
        // NATS publishers join the active conversations only.
        let s = Settings {
            nats_publishers: 3,
            ..s
        };
        assert_eq!(
            users_of(&s, 0),
            ["r-c0-m0", "r-c0-m1", "r-c0-m2", "r-bot0", "r-bot2"]
        );
        assert_eq!(users_of(&s, 1), ["r-c1-m0", "r-c1-m1", "r-c1-m2", "r-bot1"]);
        assert_eq!(users_of(&s, 2).len(), 4);
    }
}
