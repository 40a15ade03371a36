//! Conversations and their members, stored in the `CHAT_CONVS` KV bucket and cached per gateway.
//!
//! Every membership is one key (`m.<conv>.<user>`), so adding and removing members never races on a
//! shared document. Each gateway caches membership answers (moka) and watches the bucket: a change
//! invalidates the cached answer within milliseconds, and a removal also ends the removed user's live
//! subscriptions ([`MembershipEvents`]). Cached answers also expire after a TTL, a backstop should the
//! watch miss an update while it reconnects.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use chatfabric_nats::subject::{self, parse_member_key};
use chatfabric_nats::wire::{now_ms, ConvKind, ConversationInfo, Membership as MemberRecord};
use chatfabric_nats::{ConvId, UserId};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ConversationView, ErrorCode};

/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// Most conversations one user may belong to (their index is one KV value).
pub const MAX_CONVERSATIONS_PER_USER: usize = 5000;
/// Longest group title, in bytes.
pub const MAX_TITLE_LEN: usize = 200;
/// Of a user's conversations, most that others may put them in (groups they add them to, direct
/// conversations they open with them): the rest is the user's own, so others can never lock them out.
pub const MAX_ADDED_BY_OTHERS: usize = 4000;
/// Largest page of a `conversations` listing: its frame stays below the connection's write
/// buffer (256 KiB) even with every title at its longest and fully escaped.
pub const MAX_LISTING_PAGE: usize = 100;

/// How many conversations a user may be in.
#[derive(Debug, Clone, Copy)]
pub struct ConversationLimits {
    /// In all ([`MAX_CONVERSATIONS_PER_USER`]).
    pub per_user: usize,
    /// Put there by others ([`MAX_ADDED_BY_OTHERS`]): once a user is in this many, others can no
    /// longer add them; the user's own creates keep working up to `per_user`.
    pub added_by_others: usize,
}

impl Default for ConversationLimits {
    fn default() -> Self {
        Self {
            per_user: MAX_CONVERSATIONS_PER_USER,
            added_by_others: MAX_ADDED_BY_OTHERS,
        }
    }
}

const TOO_MANY_TO_BE_ADDED: &str =
    "this user is in too many conversations to be added to more by others";

/// Why a membership operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The conversation does not exist.
    #[error("conversation not found")]
    NotFound,
    /// The request is invalid (too many members, a listing limit of 0, ...).
    #[error("{0}")]
    Invalid(String),
    /// A field is longer than allowed (a group's title).
    #[error("{0}")]
    TooLarge(String),
    /// The KV bucket could not be read or written.
    #[error("membership store unavailable: {0}")]
    Store(String),
}

impl MembershipError {
    /// The client-facing error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound => ErrorCode::NotFound,
            Self::Invalid(_) => ErrorCode::Invalid,
            Self::TooLarge(_) => ErrorCode::TooLarge,
            Self::Store(_) => ErrorCode::Unavailable,
        }
    }
}

fn store_err(e: impl std::fmt::Display) -> MembershipError {
    MembershipError::Store(e.to_string())
}

/// How a membership changes a user's conversation index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexChange {
    /// The user created or joined the conversation themselves.
    Joined,
    /// Someone else put the user in it.
    AddedByOthers,
    /// The user left or was removed.
    Remove,
}

/// Receives membership removals seen by the watcher (the fan-out ends those subscriptions).
pub trait MembershipEvents: Send + Sync + 'static {
    /// `user` is no longer a member of `conv`.
    fn removed(&self, conv: &ConvId, user: &UserId);
}

/// Membership reads (cached) and writes.
pub struct Membership {
    kv: kv::Store,
    /// Serialise this process's updates of one user's index (sharded by user), so concurrent
    /// creates by one user do not fight over its compare-and-set; other gateways may still race,
    /// and then the loser reads again.
    index_locks: Box<[tokio::sync::Mutex<()>]>,
    /// For inboxes of the ordered consumers that list keys.
    client: async_nats::Client,
    members: moka::future::Cache<(ConvId, UserId), bool>,
    limits: ConversationLimits,
    /// Conversation descriptions, which never change once written.
    infos: moka::future::Cache<ConvId, ConversationInfo>,
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
                let v = self.kv.get(subject::member_key(conv, user)).await?;
                Ok::<_, async_nats::jetstream::kv::EntryError>(v.is_some())
            })
            .await
            .map_err(store_err)
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

    /// Creates (or returns the existing) direct conversation between `me` and `other`.
    pub async fn create_direct(
        &self,
        me: &UserId,
        other: &UserId,
    ) -> Result<(ConversationInfo, Vec<UserId>), MembershipError> {
        if me == other {
            return Err(MembershipError::Invalid(
                "a direct conversation needs another user".into(),
            ));
        }
        let mut members = vec![me.clone(), other.clone()];
        members.sort();
        let conv = ConvId::direct(me, other);
        self.establish(conv, ConvKind::Direct, None, me, members)
            .await
    }

    /// Creates a group of `me` and `others`.
    pub async fn create_group(
        &self,
        me: &UserId,
        others: Vec<UserId>,
        title: Option<String>,
    ) -> Result<(ConversationInfo, Vec<UserId>), MembershipError> {
        if title.as_ref().is_some_and(|t| t.len() > MAX_TITLE_LEN) {
            return Err(MembershipError::TooLarge(format!(
                "title exceeds {MAX_TITLE_LEN} bytes"
            )));
        }
        let mut members = others;
        members.push(me.clone());
        members.sort();
        members.dedup();
        if members.len() > MAX_GROUP_MEMBERS {
            return Err(MembershipError::Invalid(format!(
                "a group has at most {MAX_GROUP_MEMBERS} members"
            )));
        }
        let conv = ConvId::new(format!("g-{}", uuid::Uuid::now_v7().simple()))
            .map_err(|e| MembershipError::Invalid(e.to_string()))?;
        self.establish(conv, ConvKind::Group, title, me, members)
            .await
    }

    /// Writes a conversation's description (or finds the existing one) and its memberships.
    async fn establish(
        &self,
        conv: ConvId,
        kind: ConvKind,
        title: Option<String>,
        creator: &UserId,
        members: Vec<UserId>,
    ) -> Result<(ConversationInfo, Vec<UserId>), MembershipError> {
        let info = ConversationInfo {
            conv: conv.clone(),
            kind,
            created_by: creator.clone(),
            created_at: now_ms(),
            title,
        };
        // Refused before anything is written, rather than half-way. (Racing adds are caught by
        // the index update itself.)
        for user in &members {
            let (index, _) = self.index(user).await?;
            if index.contains(&conv) {
                continue;
            }
            if user == creator && index.len() >= self.limits.per_user {
                return Err(self.too_many());
            }
            if user != creator && index.len() >= self.limits.added_by_others {
                return Err(MembershipError::Forbidden(TOO_MANY_TO_BE_ADDED));
            }
        }
        let info = self.create_info(info).await?;
        for user in &members {
            self.put_member(&conv, user, creator).await?;
        }
        Ok((info, members))
    }

    /// Adds `user` to the group `conv`; `me` must be a member.
    pub async fn add(
        &self,
        me: &UserId,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        // Membership first: a non-member learns nothing, not even whether `conv` exists.
        self.require_member(conv, me).await?;
        let info = self.info(conv).await?;
        if info.kind == ConvKind::Direct {
            return Err(MembershipError::Forbidden(
                "direct conversations have fixed members",
            ));
        }
        // The limit `create` enforces holds for adds too (adding a member again is a no-op).
        // Concurrent adds to a group at the limit may each see room: it may overshoot by them.
        if !self.is_member(conv, user).await?
            && self.members(conv).await?.len() >= MAX_GROUP_MEMBERS
        {
            return Err(MembershipError::Invalid(format!(
                "a group has at most {MAX_GROUP_MEMBERS} members"
            )));
        }
        self.put_member(conv, user, me).await
    }

    /// Removes `user` from the group `conv`: members may leave; the creator may remove anyone.
    pub async fn remove(
        &self,
        me: &UserId,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        self.require_member(conv, me).await?;
        let info = self.info(conv).await?;
        if info.kind == ConvKind::Direct {
            return Err(MembershipError::Forbidden(
                "direct conversations have fixed members",
            ));
        }
        if me != user && &info.created_by != me {
            return Err(MembershipError::Forbidden(
                "only the creator may remove other members",
            ));
        }
        self.kv
            .delete(subject::member_key(conv, user))
            .await
            .map_err(store_err)?;
        self.members.invalidate(&(conv.clone(), user.clone())).await;
        // Index last, for the same reason as in `put_member`.
        self.update_index(user, conv, IndexChange::Remove).await
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

    fn too_many(&self) -> MembershipError {
        MembershipError::Invalid(format!(
            "a user belongs to at most {} conversations",
            self.limits.per_user
        ))
    }

    /// `user`'s conversation index and its revision (`None`: never written).
    async fn index(&self, user: &UserId) -> Result<(Vec<ConvId>, Option<u64>), MembershipError> {
        let entry = self
            .kv
            .entry(subject::user_convs_key(user))
            .await
            .map_err(store_err)?;
        Ok(match entry {
            Some(e) if e.operation == Operation::Put => (
                serde_json::from_slice(&e.value).map_err(store_err)?,
                Some(e.revision),
            ),
            Some(e) => (Vec::new(), Some(e.revision)),
            None => (Vec::new(), None),
        })
    }

    /// Adds `conv` to (or removes it from) `user`'s index, with compare-and-set against
    /// concurrent changes from other gateways.
    async fn update_index(
        &self,
        user: &UserId,
        conv: &ConvId,
        change: IndexChange,
    ) -> Result<(), MembershipError> {
        let add = change != IndexChange::Remove;
        let key = subject::user_convs_key(user);
        let shard = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            user.hash(&mut h);
            (h.finish() as usize) % self.index_locks.len()
        };
        let _serial = self.index_locks[shard].lock().await;
        let mut last_error = String::new();
        for attempt in 0..16u32 {
            if attempt > 0 {
                // Another gateway won the race: back off a little, with jitter, and read again.
                let jitter = u64::from(uuid::Uuid::now_v7().as_bytes()[15]) % 10;
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5 + jitter)).await;
            }
            let (mut index, revision) = self.index(user).await?;
            let present = index.contains(conv);
            if present == add {
                return Ok(());
            }
            if change == IndexChange::AddedByOthers && index.len() >= self.limits.added_by_others {
                return Err(MembershipError::Forbidden(TOO_MANY_TO_BE_ADDED));
            }
            if add {
                if index.len() >= self.limits.per_user {
                    return Err(self.too_many());
                }
                index.push(conv.clone());
            } else {
                index.retain(|c| c != conv);
            }
            let value = Bytes::from(serde_json::to_vec(&index).map_err(store_err)?);
            let written = match revision {
                Some(rev) => self
                    .kv
                    .update(&key, value, rev)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => self
                    .kv
                    .create(&key, value)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(()) => return Ok(()),
                // Another gateway changed the index since we read it: read again.
                Err(e) => last_error = e,
            }
        }
        Err(MembershipError::Store(format!(
            "conversation index of {user} kept changing: {last_error}"
        )))
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
    ) -> Result<Vec<ConversationView>, MembershipError> {
        let convs = self.conv_ids_of(user).await?;
        let mut out = Vec::with_capacity(convs.len());
        for conv in convs {
            match self.info(&conv).await {
                Ok(info) => out.push(ConversationView {
                    conv: info.conv,
                    kind: info.kind,
                    title: info.title,
                }),
                Err(MembershipError::NotFound) => {} // membership written before its description
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
    ) -> Result<(Vec<ConversationView>, Option<ConvId>), MembershipError> {
        if limit == 0 {
            return Err(MembershipError::Invalid("limit must be at least 1".into()));
        }
        let (mut index, _) = self.index(user).await?;
        index.sort();
        let start = after.map_or(0, |a| index.partition_point(|c| c <= a));
        let end = index.len().min(start + limit.min(MAX_LISTING_PAGE));
        let mut out = Vec::with_capacity(end - start);
        for conv in &index[start..end] {
            if !self.is_member(conv, user).await? {
                continue; // the index is a superset
            }
            match self.info(conv).await {
                Ok(info) => out.push(ConversationView {
                    conv: info.conv,
                    kind: info.kind,
                    title: info.title,
                }),
                Err(MembershipError::NotFound) => {} // membership written before its description
                Err(e) => return Err(e),
            }
        }
        let next = (end < index.len()).then(|| index[end - 1].clone());
        Ok((out, next))
    }

    async fn create_info(
        &self,
        info: ConversationInfo,
    ) -> Result<ConversationInfo, MembershipError> {
        let key = subject::conv_key(&info.conv);
        let value = Bytes::from(serde_json::to_vec(&info).map_err(store_err)?);
        match self.kv.create(&key, value).await {
            Ok(_) => Ok(info),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self.info(&info.conv).await,
            Err(e) => Err(store_err(e)),
        }
    }

    async fn put_member(
        &self,
        conv: &ConvId,
        user: &UserId,
        added_by: &UserId,
    ) -> Result<(), MembershipError> {
        let record = MemberRecord {
            added_by: added_by.clone(),
            added_at: now_ms(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).map_err(store_err)?);
        // Index first: a crash in between leaves the index a superset, which readers filter.
        let change = if user == added_by {
            IndexChange::Joined
        } else {
            IndexChange::AddedByOthers
        };
        self.update_index(user, conv, change).await?;
        self.kv
            .put(subject::member_key(conv, user), value)
            .await
            .map_err(store_err)?;
        self.members
            .insert((conv.clone(), user.clone()), true)
            .await;
        Ok(())
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
            let deleted = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            if !deleted {
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

    /// Watches the bucket until `shutdown`: invalidates cached answers and reports removals.
    pub async fn watch(
        self: Arc<Self>,
        events: Arc<dyn MembershipEvents>,
        shutdown: CancellationToken,
    ) {
        loop {
            let mut watch = match self.kv.watch("m.>").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "membership watch failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Whatever changed while we were not watching is unknown: start from a clean cache.
            self.members.invalidate_all();
            loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = watch.next() => e,
                };
                match entry {
                    Some(Ok(entry)) => {
                        let Some((conv, user)) = parse_member_key(&entry.key) else {
                            continue;
                        };
                        let member = entry.operation == Operation::Put;
                        self.members
                            .insert((conv.clone(), user.clone()), member)
                            .await;
                        if !member {
                            events.removed(&conv, &user);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "membership watch error; restarting");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}
