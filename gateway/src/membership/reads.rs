//! [`Membership`]: the cached reads (is a member, descriptions, members, listings), which every
//! request checks first; writes, the index and the watch add to it in the sibling files.

use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use chatfabric_nats::subject::{self, parse_member_key};
use chatfabric_nats::wire::ConversationInfo;
use chatfabric_nats::{ConvId, UserId};
use futures::StreamExt;

use super::error::{store_err, MembershipError};
use super::limits::{ConversationLimits, MAX_LISTING_PAGE};

/// Membership reads (cached) and writes.
pub struct Membership {
    pub(super) kv: kv::Store,
    /// Serialise this process's updates of one user's index (sharded by user), so concurrent
    /// creates by one user do not fight over its compare-and-set; other gateways may still race,
    /// and then the loser reads again.
    pub(super) index_locks: Box<[tokio::sync::Mutex<()>]>,
    /// For inboxes of the ordered consumers that list keys.
    pub(super) client: async_nats::Client,
    pub(super) members: moka::future::Cache<(ConvId, UserId), bool>,
    pub(super) limits: ConversationLimits,
    /// Conversation descriptions, which never change once written.
    pub(super) infos: moka::future::Cache<ConvId, ConversationInfo>,
}

/// Conversation descriptions cached per gateway (at most a few hundred bytes each).
const INFO_CACHE: u64 = 100_000;

impl Membership {
    /// A cache of at most `capacity` answers, each kept at most `ttl`; users are held to `limits`.
    pub fn new(
        kv: kv::Store,
        client: async_nats::Client,
        capacity: u64,
        ttl: Duration,
        limits: ConversationLimits,
    ) -> Self {
        Self {
            limits,
            kv,
            index_locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            client,
            members: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            infos: moka::future::Cache::new(INFO_CACHE),
        }
    }

    /// Whether `user` is a member of `conv`. Concurrent lookups of one key share one KV read.
    pub async fn is_member(&self, conv: &ConvId, user: &UserId) -> Result<bool, MembershipError> {
        let key = (conv.clone(), user.clone());
        self.members
            .try_get_with(key, async {
                let key = subject::member_key(conv, user);
                if self
                    .kv
                    .get(&key)
                    .await
                    .map_err(MemberRead::Direct)?
                    .is_some()
                {
                    return Ok(true);
                }
                // Any replica answers a direct get, and one that has not applied a member key
                // written a moment ago (on another gateway) says "absent": refusing, and caching
                // that, would lock a new member out. The stream leader has every acked write.
                self.on_leader(&key).await
            })
            .await
            .map_err(store_err)
    }

    /// Whether `key` holds a value (not a delete marker), asked of the bucket's stream leader.
    async fn on_leader(&self, key: &str) -> Result<bool, MemberRead> {
        let subject = format!("{}{key}", self.kv.prefix);
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(m) => Ok(!is_delete_marker(Some(&m.headers))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(MemberRead::Leader(e)),
        }
    }

    /// Fails with `Forbidden` unless `user` is a member of `conv`: also when `conv` does not
    /// exist, so that a non-member cannot tell (direct conversation ids are computable).
    pub async fn require_member(
        &self,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        if self.is_member(conv, user).await? {
            Ok(())
        } else {
            Err(MembershipError::Forbidden(
                "not a member of this conversation",
            ))
        }
    }

    /// The conversation's description (cached: it never changes once written).
    pub async fn info(&self, conv: &ConvId) -> Result<ConversationInfo, MembershipError> {
        if let Some(info) = self.infos.get(conv).await {
            return Ok(info);
        }
        let raw = self
            .kv
            .get(subject::conv_key(conv))
            .await
            .map_err(store_err)?
            .ok_or(MembershipError::NotFound)?;
        let info: ConversationInfo = serde_json::from_slice(&raw).map_err(store_err)?;
        self.infos.insert(conv.clone(), info.clone()).await;
        Ok(info)
    }

    /// The members of `conv`, sorted.
    pub async fn members(&self, conv: &ConvId) -> Result<Vec<UserId>, MembershipError> {
        let mut users: Vec<UserId> = self
            .keys_matching(&subject::members_of_filter(conv))
            .await?
            .iter()
            .filter_map(|k| parse_member_key(k).map(|(_, u)| u))
            .collect();
        users.sort();
        Ok(users)
    }

    /// The ids of the conversations `user` is a member of: one read of their index, checked
    /// against the (cached) membership keys. Runs on every connect, for the unread counts.
    pub async fn conv_ids_of(&self, user: &UserId) -> Result<Vec<ConvId>, MembershipError> {
        let (index, _) = self.index(user).await?;
        let mut convs = Vec::with_capacity(index.len());
        for conv in index {
            if self.is_member(&conv, user).await? {
                convs.push(conv);
            }
        }
        Ok(convs)
    }

    /// Whether `a` and `b` are members of a common conversation (a user shares one with
    /// themselves). This is what allows `a` to learn `b`'s presence. Two index reads, and
    /// membership checks only of the conversations both indexes name.
    pub async fn share_a_conversation(
        &self,
        a: &UserId,
        b: &UserId,
    ) -> Result<bool, MembershipError> {
        if a == b {
            return Ok(true);
        }
        let ((of_a, _), (of_b, _)) = tokio::try_join!(self.index(a), self.index(b))?;
        let of_b: std::collections::HashSet<ConvId> = of_b.into_iter().collect();
        for conv in of_a.iter().filter(|c| of_b.contains(*c)) {
            // The indexes are supersets (written first): confirm with the membership keys.
            if self.is_member(conv, a).await? && self.is_member(conv, b).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The conversations `user` is a member of.
    pub async fn conversations_of(
        &self,
        user: &UserId,
    ) -> Result<Vec<ConversationInfo>, MembershipError> {
        let convs = self.conv_ids_of(user).await?;
        self.infos_of(&convs).await
    }

    /// The descriptions of `convs`, skipping those not written yet (a membership is written
    /// before its conversation's description).
    async fn infos_of(&self, convs: &[ConvId]) -> Result<Vec<ConversationInfo>, MembershipError> {
        let mut out = Vec::with_capacity(convs.len());
        for conv in convs {
            match self.info(conv).await {
                Ok(info) => out.push(info),
                Err(MembershipError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A page of the conversations `user` is a member of, by id: at most `limit` entries of their
    /// index after `after` are looked at, so a page costs the same however many there are. The
    /// second value, set when entries remain, is the `after` of the next page.
    pub async fn conversations_page(
        &self,
        user: &UserId,
        after: Option<&ConvId>,
        limit: usize,
    ) -> Result<(Vec<ConversationInfo>, Option<ConvId>), MembershipError> {
        if limit == 0 {
            return Err(MembershipError::Invalid("limit must be at least 1"));
        }
        let (mut index, _) = self.index(user).await?;
        index.sort();
        let start = after.map_or(0, |a| index.partition_point(|c| c <= a));
        let end = index.len().min(start + limit.min(MAX_LISTING_PAGE));
        let mut members = Vec::with_capacity(end - start);
        for conv in &index[start..end] {
            // The index is a superset.
            if self.is_member(conv, user).await? {
                members.push(conv.clone());
            }
        }
        let out = self.infos_of(&members).await?;
        let next = (end < index.len()).then(|| index[end - 1].clone());
        Ok((out, next))
    }

    /// Live keys matching a filter with wildcards: the last revision per key, deletions skipped.
    async fn keys_matching(&self, filter: &str) -> Result<Vec<String>, MembershipError> {
        let consumer = self
            .kv
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}{filter}", self.kv.prefix),
                headers_only: true,
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(keys);
        }
        let mut messages = consumer.messages().await.map_err(store_err)?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(store_err)?;
            let pending = msg.info().map_err(store_err)?.pending;
            if !is_delete_marker(msg.headers.as_ref()) {
                if let Some(key) = msg.subject.strip_prefix(self.kv.prefix.as_str()) {
                    keys.push(key.to_string());
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok(keys)
    }
}

/// Whether a KV stream message with `headers` marks its key deleted or purged.
fn is_delete_marker(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| op.as_str() != "PUT")
}

/// Why a member key could not be read.
#[derive(Debug, thiserror::Error)]
enum MemberRead {
    #[error("reading the member key: {0}")]
    Direct(#[source] kv::EntryError),
    #[error("reading the member key from the stream leader: {0}")]
    Leader(#[source] async_nats::jetstream::stream::LastRawMessageError),
}
