//! Conversations: create, add and remove members, members, the caller's listing, and the
//! conversations an event stream follows.

use chatfabric_nats::wire::ConversationInfo;
use chatfabric_nats::{ConvId, UserId};

use super::caller::Caller;
use super::context::Service;
use super::error::ServiceError;
use crate::membership::MAX_LISTING_PAGE;

/// A conversation to create.
#[derive(Debug, Clone)]
pub enum NewConversation {
    /// The direct conversation of the caller and `with` (returned if it exists).
    Direct {
        /// The other user.
        with: UserId,
    },
    /// A group of the caller and `members`.
    Group {
        /// The members besides the caller.
        members: Vec<UserId>,
        /// Its title.
        title: Option<String>,
    },
}

/// A created (or, for a direct one, found) conversation and its members.
#[derive(Debug, Clone)]
pub struct Created {
    /// Its description.
    pub info: ConversationInfo,
    /// Its members, sorted.
    pub members: Vec<UserId>,
}

/// A membership change of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Add the user.
    Add,
    /// Remove the user.
    Remove,
}

impl Service {
    /// Creates a conversation with the caller in it.
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewConversation,
    ) -> Result<Created, ServiceError> {
        let me = caller.acting_as();
        let direct = matches!(new, NewConversation::Direct { .. });
        self.client_may(caller, self.limits.client_membership.refuses_create(direct))?;
        let (info, members) = match new {
            NewConversation::Direct { with } => self.membership.create_direct(me, &with).await?,
            NewConversation::Group { members, title } => {
                self.membership.create_group(me, members, title).await?
            }
        };
        Ok(Created { info, members })
    }

    /// Adds `user` to the group `conv` or removes them; returns its members afterwards.
    pub async fn change_member(
        &self,
        caller: &Caller,
        change: MemberChange,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<Vec<UserId>, ServiceError> {
        self.client_may(caller, self.limits.client_membership.refuses_change())?;
        let by = caller.acting_as();
        match change {
            MemberChange::Add => self.membership.add(by, conv, user).await?,
            MemberChange::Remove => self.membership.remove(by, conv, user).await?,
        }
        Ok(self.membership.members(conv).await?)
    }

    /// Refuses a client's membership change the gateway leaves to the application, and any
    /// request of a client with a service id.
    fn client_may(
        &self,
        caller: &Caller,
        refusal: Option<&'static str>,
    ) -> Result<(), ServiceError> {
        if caller.acting_as().is_service() {
            return Err(ServiceError::ServiceId);
        }
        match refusal {
            Some(why) if caller.is_client() => Err(ServiceError::ServerManaged(why)),
            _ => Ok(()),
        }
    }

    /// The members of `conv`, for a member.
    pub async fn members(
        &self,
        caller: &Caller,
        conv: &ConvId,
    ) -> Result<Vec<UserId>, ServiceError> {
        self.require_member(caller, conv).await?;
        Ok(self.membership.members(conv).await?)
    }

    /// A page of the caller's conversations after `after` (at most `limit`, default and most
    /// [`MAX_LISTING_PAGE`]), and the `after` of the next page if there may be one.
    pub async fn conversations(
        &self,
        caller: &Caller,
        after: Option<&ConvId>,
        limit: Option<usize>,
    ) -> Result<(Vec<ConversationInfo>, Option<ConvId>), ServiceError> {
        let limit = limit.unwrap_or(MAX_LISTING_PAGE);
        Ok(self
            .membership
            .conversations_page(caller.acting_as(), after, limit)
            .await?)
    }

    /// The conversations an event stream follows: those named in `wanted`, each checked, or
    /// with none named, all of the caller's.
    pub async fn followed(
        &self,
        caller: &Caller,
        wanted: Vec<ConvId>,
    ) -> Result<Vec<ConvId>, ServiceError> {
        if wanted.is_empty() {
            let all = self.membership.conversations_of(caller.acting_as()).await?;
            return Ok(all.into_iter().map(|c| c.conv).collect());
        }
        for conv in &wanted {
            self.require_member(caller, conv).await?;
        }
        Ok(wanted)
    }
}
