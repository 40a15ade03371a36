//! `typing` events: published on the conversation's `chat.eph.<conv>.typing` subject, which the
//! fan-out forwards to the conversation's local subscribers on every gateway. Not stored.

use std::time::Duration;

use chatfabric_nats::subject::{ephemeral_subject, Ephemeral};
use chatfabric_nats::wire::{EphemeralEvent, TypingState};
use chatfabric_nats::{ConvId, UserId};

/// Announces that `user` started or stopped typing in `conv`, valid for `ttl` without another.
/// The caller checked membership.
pub async fn announce(
    client: &async_nats::Client,
    conv: &ConvId,
    user: &UserId,
    state: TypingState,
    ttl: Duration,
) -> Result<(), async_nats::PublishError> {
    let event = EphemeralEvent::Typing {
        conv: conv.clone(),
        user: user.clone(),
        state,
        expires_in: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
    };
    // Strings, integers and enums only: serialization cannot fail.
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    client
        .publish(ephemeral_subject(conv, Ephemeral::Typing), payload.into())
        .await
}
