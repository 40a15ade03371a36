//! What only the application backend may do (the server API): manage any conversation with the
//! ids it chooses, list any user's conversations, disconnect users and revoke their tokens, and
//! read many users' presence. Each takes a [`Caller::Service`]; any other caller is refused.

use async_nats::jetstream::kv;
use bytes::Bytes;
use chatfabric_nats::subject;
use chatfabric_nats::wire::{now_ms, ConversationInfo, UserDisconnect};
use chatfabric_nats::{ConvId, UserId};

use super::caller::Caller;
use super::context::Service;
use super::conversations::Created;
use super::error::{ServiceError, UsersError};
use crate::membership::managed::{Outcome, Wanted};
use crate::membership::{MembershipError, MAX_LISTING_PAGE};
use crate::presence::query::{self, Presence};

/// Most users one presence request may name.
pub const MAX_PRESENCE_USERS: usize = 100;

/// The service id of an application caller, or a refusal.
fn application(caller: &Caller) -> Result<&UserId, ServiceError> {
    match caller {
        Caller::Service(id) => Ok(id),
        _ => Err(MembershipError::Forbidden("only the application may do this").into()),
    }
}

impl Service {
    /// Creates `wanted` (idempotent: the same request again succeeds with
    /// [`Outcome::Existed`]; a different one for an existing id is a conflict).
    pub async fn establish(
        &self,
        caller: &Caller,
        wanted: Wanted,
    ) -> Result<(Created, Outcome), ServiceError> {
        let by = application(caller)?;
        let (info, members, outcome) = self.membership.establish_wanted(by, wanted).await?;
        Ok((Created { info, members }, outcome))
    }

    /// Adds `user` to the group `conv`; returns its members afterwards.
    pub async fn add_as_service(
        &self,
        caller: &Caller,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<Vec<UserId>, ServiceError> {
        let by = application(caller)?;
        self.membership.add_as_service(by, conv, user).await?;
        Ok(self.membership.members(conv).await?)
    }

    /// Removes `user` from the group `conv`; returns its members afterwards.
    pub async fn remove_as_service(
        &self,
        caller: &Caller,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<Vec<UserId>, ServiceError> {
        application(caller)?;
        self.membership.remove_as_service(conv, user).await?;
        Ok(self.membership.members(conv).await?)
    }

    /// `conv`'s description and members.
    pub async fn conversation(
        &self,
        caller: &Caller,
        conv: &ConvId,
    ) -> Result<Created, ServiceError> {
        application(caller)?;
        let info = self.membership.info(conv).await?;
        let members = self.membership.members(conv).await?;
        Ok(Created { info, members })
    }

    /// A page of `user`'s conversations after `after` (at most `limit`, default and most
    /// [`MAX_LISTING_PAGE`]), and the `after` of the next page if there may be one.
    pub async fn conversations_of(
        &self,
        caller: &Caller,
        user: &UserId,
        after: Option<&ConvId>,
        limit: Option<usize>,
    ) -> Result<(Vec<ConversationInfo>, Option<ConvId>), ServiceError> {
        application(caller)?;
        let limit = limit.unwrap_or(MAX_LISTING_PAGE);
        Ok(self
            .membership
            .conversations_page(user, after, limit)
            .await?)
    }

    /// Disconnects `user` everywhere: every gateway closes the connections they have open now.
    /// With `revoke_before` (seconds since the epoch), their tokens issued before it are refused
    /// from now on; without it, an earlier revocation stays as it was.
    pub async fn disconnect(
        &self,
        caller: &Caller,
        user: &UserId,
        revoke_before: Option<u64>,
    ) -> Result<UserDisconnect, ServiceError> {
        application(caller)?;
        let key = subject::disconnect_key(user);
        // Compare-and-set, so a plain disconnect racing a revocation on another gateway never
        // drops the revocation: the later of the two times holds.
        let mut tries = 0;
        let disconnect = loop {
            let entry = self
                .users
                .entry(&key)
                .await
                .map_err(|e| ServiceError::Users(UsersError::Read(e)))?;
            let (earlier, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<UserDisconnect>(&e.value)
                        .ok()
                        .and_then(|d| d.tokens_before),
                    Some(e.revision),
                ),
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let disconnect = UserDisconnect {
                at: now_ms(),
                tokens_before: revoke_before.max(earlier),
            };
            let value = serde_json::to_vec(&disconnect)
                .map_err(|e| ServiceError::Users(UsersError::Encode(e)))?;
            let value = Bytes::from(value);
            let written = match revision {
                Some(revision) => self
                    .users
                    .update(&key, value, revision)
                    .await
                    .map(|_| ())
                    .map_err(UsersError::Update),
                None => self
                    .users
                    .create(&key, value)
                    .await
                    .map(|_| ())
                    .map_err(UsersError::Create),
            };
            match written {
                Ok(()) => break disconnect,
                Err(e) if tries >= 5 => return Err(ServiceError::Users(e)),
                Err(_) => tries += 1,
            }
        };
        tracing::info!(%user, by = %caller.acting_as(), revoke_before, "disconnect requested");
        Ok(disconnect)
    }

    /// The presence of each of `users` (at most [`MAX_PRESENCE_USERS`]).
    pub async fn presence_of(
        &self,
        caller: &Caller,
        users: &[UserId],
    ) -> Result<Vec<Presence>, ServiceError> {
        application(caller)?;
        if users.len() > MAX_PRESENCE_USERS {
            return Err(MembershipError::Invalid("at most 100 users per presence request").into());
        }
        let lookups = users
            .iter()
            .map(|u| query::lookup(&self.fabric.presence, u));
        futures::future::try_join_all(lookups)
            .await
            .map_err(ServiceError::Presence)
    }
}
