//! Who is in each conversation and who is online: mirrors of the `m.<conv>.<user>` keys of
//! `CHAT_CONVS` and of the `user.<user>` keys of `CHAT_PRESENCE` (the presence service's published
//! presence), kept current by ordered consumers, so deciding a message's recipients reads no KV.
//!
//! "Online" is what the presence service published: a user whose last connection closed stays
//! online for its offline grace (3 s by default) and a user who never connected is offline.
//! The mirrors trail the buckets by the watch delay (milliseconds): a member added a moment before
//! a message may miss that message's event.
//!
//! Memory: one entry per membership and per online user.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chatfabric_nats::subject::{self, parse_member_key, PresenceKey};
use chatfabric_nats::wire::PresenceEntry;
use chatfabric_nats::{ConvId, UserId};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The header JetStream KV marks deletes and purges with.
const KV_OPERATION: &str = "KV-Operation";

/// Whether a KV stream message is a delete or purge marker.
pub(crate) fn is_delete(msg: &async_nats::Message) -> bool {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(KV_OPERATION))
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<ConvId, HashSet<UserId>>,
    online: HashSet<UserId>,
}

/// The shared mirrors.
#[derive(Debug, Clone)]
pub struct Directory {
    state: Arc<RwLock<State>>,
    /// Mirrors that have read their bucket's contents (0, 1 or 2).
    loaded: watch::Sender<u8>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            loaded: watch::Sender::new(0),
        }
    }
}

/// Which mirror.
#[derive(Debug, Clone, Copy)]
enum Mirror {
    Members,
    Presence,
}

impl Directory {
    /// The members of `conv` to notify of a message `sender` sent: every member but the sender
    /// who is offline now, sorted.
    pub fn offline_recipients(&self, conv: &ConvId, sender: &UserId) -> Vec<UserId> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<UserId> = state
            .members
            .get(conv)
            .into_iter()
            .flatten()
            .filter(|u| *u != sender && !state.online.contains(*u))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Waits until both mirrors hold their bucket's contents (or `shutdown`).
    pub async fn loaded(&self, shutdown: &CancellationToken) {
        let mut rx = self.loaded.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = rx.wait_for(|n| *n >= 2) => {}
        }
    }

    /// Keeps both mirrors current until `shutdown`.
    pub async fn run(self, js: jetstream::Context, shutdown: CancellationToken) {
        let members = self
            .clone()
            .follow(js.clone(), Mirror::Members, shutdown.clone());
        let presence = self.follow(js, Mirror::Presence, shutdown);
        tokio::join!(members, presence);
    }

    async fn follow(self, js: jetstream::Context, mirror: Mirror, shutdown: CancellationToken) {
        let mut loaded = false;
        while !shutdown.is_cancelled() {
            if let Err(e) = self.session(&js, mirror, &mut loaded, &shutdown).await {
                tracing::warn!(?mirror, error = %e, "mirror failed; re-reading the bucket");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// One ordered consumer over the mirrored keys, latest value per key first. Re-reading after
    /// a failure re-applies every key (deletes are kept as markers), so no reset is needed.
    async fn session(
        &self,
        js: &jetstream::Context,
        mirror: Mirror,
        loaded: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), async_nats::Error> {
        let (bucket, filter) = match mirror {
            Mirror::Members => (subject::CONVS_BUCKET, "m.*.*"),
            Mirror::Presence => (subject::PRESENCE_BUCKET, "user.*"),
        };
        let stream = js.get_stream(format!("KV_{bucket}")).await?;
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: js.client().new_inbox(),
                filter_subject: format!("$KV.{bucket}.{filter}"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                description: Some("chatfabric webhooks: mirror".into()),
                ..Default::default()
            })
            .await?;
        let initial = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await?;
        if initial == 0 {
            self.mark_loaded(loaded);
        }
        let prefix = format!("$KV.{bucket}.");
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = messages.next() => msg.ok_or("mirror consumer ended")??,
            };
            let Some(key) = msg.subject.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            let deleted = is_delete(&msg);
            self.apply(mirror, key, deleted, &msg.payload);
            if msg.info().is_ok_and(|i| i.pending == 0) {
                self.mark_loaded(loaded);
            }
        }
    }

    fn mark_loaded(&self, loaded: &mut bool) {
        if !*loaded {
            *loaded = true;
            self.loaded.send_modify(|n| *n += 1);
        }
    }

    fn apply(&self, mirror: Mirror, key: &str, deleted: bool, value: &[u8]) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        match mirror {
            Mirror::Members => {
                let Some((conv, user)) = parse_member_key(key) else {
                    return;
                };
                if deleted {
                    if let Some(set) = state.members.get_mut(&conv) {
                        set.remove(&user);
                        if set.is_empty() {
                            state.members.remove(&conv);
                        }
                    }
                } else {
                    state.members.entry(conv).or_default().insert(user);
                }
            }
            Mirror::Presence => {
                let Some(PresenceKey::User(user)) = subject::parse_presence_key(key) else {
                    return;
                };
                let online = !deleted
                    && serde_json::from_slice::<PresenceEntry>(value).is_ok_and(|e| e.online);
                if online {
                    state.online.insert(user);
                } else {
                    state.online.remove(&user);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_offline_members_but_the_sender() {
        let d = Directory::default();
        for u in ["alice", "bob", "carol", "dave"] {
            d.apply(Mirror::Members, &format!("m.room.{u}"), false, b"{}");
        }
        d.apply(Mirror::Members, "m.room.dave", true, b"");
        d.apply(
            Mirror::Presence,
            "user.carol",
            false,
            br#"{"online":true,"last_seen":1}"#,
        );
        d.apply(
            Mirror::Presence,
            "user.bob",
            false,
            br#"{"online":false,"last_seen":1}"#,
        );
        let conv = ConvId::new("room").unwrap();
        let alice = UserId::new("alice").unwrap();
        let names = |v: Vec<UserId>| v.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(names(d.offline_recipients(&conv, &alice)), vec!["bob"]);
        d.apply(Mirror::Presence, "user.carol", true, b"");
        assert_eq!(
            names(d.offline_recipients(&conv, &alice)),
            vec!["bob", "carol"]
        );
        assert!(d
            .offline_recipients(&ConvId::new("other").unwrap(), &alice)
            .is_empty());
    }
}
