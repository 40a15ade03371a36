//! The presence query and typing events.

use chatfabric_nats::wire::TypingState;
use chatfabric_nats::{ConvId, UserId};

use super::caller::Caller;
use super::context::Service;
use super::error::ServiceError;
use crate::presence::query::{self, Presence};
use crate::presence::typing;

impl Service {
    /// `user`'s presence, for a caller who shares a conversation with them (a user shares one
    /// with themselves).
    pub async fn presence(&self, caller: &Caller, user: &UserId) -> Result<Presence, ServiceError> {
        if !self
            .membership
            .share_a_conversation(caller.acting_as(), user)
            .await?
        {
            return Err(ServiceError::NothingShared);
        }
        query::lookup(&self.fabric.presence, user)
            .await
            .map_err(ServiceError::Presence)
    }

    /// Tells the members of `conv` that the caller started or stopped typing.
    pub async fn typing(
        &self,
        caller: &Caller,
        conv: &ConvId,
        state: TypingState,
    ) -> Result<(), ServiceError> {
        self.require_member(caller, conv).await?;
        typing::announce(
            &self.fabric.client,
            conv,
            caller.acting_as(),
            state,
            self.limits.typing_ttl,
        )
        .await
        .map_err(ServiceError::Typing)
    }
}
