//! Creating conversations and changing their members: the description first, then each
//! membership (index, then key), so a crash in between leaves what readers filter.

use async_nats::jetstream::kv;
use bytes::Bytes;
use chatfabric_nats::subject;
use chatfabric_nats::wire::{now_ms, ConvKind, ConversationInfo, Membership as MemberRecord};
use chatfabric_nats::{ConvId, UserId};

use super::error::{store_err, MembershipError};
use super::index::IndexChange;
use super::limits::{MAX_GROUP_MEMBERS, MAX_TITLE_LEN, TOO_MANY_TO_BE_ADDED};
use super::reads::Membership;

impl Membership {
    /// Creates (or returns the existing) direct conversation between `me` and `other`.
    pub async fn create_direct(
        &self,
        me: &UserId,
        other: &UserId,
    ) -> Result<(ConversationInfo, Vec<UserId>), MembershipError> {
        if me == other {
            return Err(MembershipError::Invalid(
                "a direct conversation needs another user",
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
            return Err(MembershipError::TitleTooLong);
        }
        let mut members = others;
        members.push(me.clone());
        members.sort();
        members.dedup();
        if members.len() > MAX_GROUP_MEMBERS {
            return Err(MembershipError::GroupFull);
        }
        let conv = ConvId::new(format!("g-{}", uuid::Uuid::now_v7().simple()))
            .map_err(MembershipError::BadId)?;
        self.establish(conv, ConvKind::Group, title, me, members)
            .await
    }

    /// Writes a conversation's description (or finds the existing one) and its memberships.
    pub(super) async fn establish(
        &self,
        conv: ConvId,
        kind: ConvKind,
        title: Option<String>,
        creator: &UserId,
        members: Vec<UserId>,
    ) -> Result<(ConversationInfo, Vec<UserId>), MembershipError> {
        if members.iter().any(UserId::is_service) {
            return Err(MembershipError::Invalid("service ids cannot be members"));
        }
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

    /// The description of the group `conv`, for its member `me`: the check before changing its
    /// members. Membership first: a non-member learns nothing, not even whether `conv` exists.
    async fn group_of_member(
        &self,
        me: &UserId,
        conv: &ConvId,
    ) -> Result<ConversationInfo, MembershipError> {
        self.require_member(conv, me).await?;
        let info = self.info(conv).await?;
        if info.kind == ConvKind::Direct {
            return Err(MembershipError::Forbidden(
                "direct conversations have fixed members",
            ));
        }
        Ok(info)
    }

    /// Adds `user` to the group `conv`; `me` must be a member.
    pub async fn add(
        &self,
        me: &UserId,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        self.group_of_member(me, conv).await?;
        self.add_to_group(me, conv, user).await
    }

    /// Adds `user` to `conv`, a group, in the name of `me` (who is a member, or a service).
    pub(super) async fn add_to_group(
        &self,
        me: &UserId,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        if user.is_service() {
            return Err(MembershipError::Invalid("service ids cannot be members"));
        }
        // The limit `create` enforces holds for adds too (adding a member again is a no-op).
        // Concurrent adds to a group at the limit may each see room: it may overshoot by them.
        if !self.is_member(conv, user).await?
            && self.members(conv).await?.len() >= MAX_GROUP_MEMBERS
        {
            return Err(MembershipError::GroupFull);
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
        let info = self.group_of_member(me, conv).await?;
        if me != user && &info.created_by != me {
            return Err(MembershipError::Forbidden(
                "only the creator may remove other members",
            ));
        }
        self.delete_member(conv, user).await
    }

    /// Deletes `user`'s membership of `conv` (a no-op when they are not a member).
    pub(super) async fn delete_member(
        &self,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        self.kv
            .delete(subject::member_key(conv, user))
            .await
            .map_err(store_err)?;
        self.members.invalidate(&(conv.clone(), user.clone())).await;
        // Index last, for the same reason as in `put_member`.
        self.update_index(user, conv, IndexChange::Remove).await
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
}
