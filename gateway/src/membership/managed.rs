//! Membership changes in the application's name (the server API): conversations with an id the
//! application chooses, created idempotently, and members added or removed by a service, which
//! is never a member itself.

use chatfabric_nats::wire::{ConvKind, ConversationInfo};
use chatfabric_nats::{ConvId, UserId};

use super::error::MembershipError;
use super::limits::{MAX_GROUP_MEMBERS, MAX_TITLE_LEN};
use super::reads::Membership;

/// A conversation the application asks for.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// Its id.
    pub conv: ConvId,
    /// Direct or group.
    pub kind: ConvKind,
    /// Its title (groups).
    pub title: Option<String>,
    /// Its members (sorted and deduplicated here).
    pub members: Vec<UserId>,
}

/// Whether [`Membership::establish_wanted`] created the conversation or found it as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist and now does.
    Created,
    /// It existed with the same kind, title and members: a retry.
    Existed,
}

impl Membership {
    /// Creates the conversation `wanted` in the name of the service `by`. Idempotent: asking
    /// again for what exists succeeds ([`Outcome::Existed`]); a different kind, title or member
    /// list for an existing id is [`MembershipError::Conflict`].
    ///
    /// A direct conversation has exactly two members and the id [`ConvId::direct`] gives them,
    /// the one clients' `create` finds, so there is only ever one per pair. Every member counts
    /// as put there by others (the service), so the per-user limits of others' adds apply.
    pub async fn establish_wanted(
        &self,
        by: &UserId,
        mut wanted: Wanted,
    ) -> Result<(ConversationInfo, Vec<UserId>, Outcome), MembershipError> {
        wanted.members.sort();
        wanted.members.dedup();
        if wanted
            .title
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TITLE_LEN)
        {
            return Err(MembershipError::TitleTooLong);
        }
        match wanted.kind {
            ConvKind::Direct => {
                let [a, b] = wanted.members.as_slice() else {
                    return Err(MembershipError::Invalid(
                        "a direct conversation has exactly two members",
                    ));
                };
                if wanted.conv != ConvId::direct(a, b) {
                    return Err(MembershipError::Invalid(
                        "a direct conversation's id is the one ConvId::direct gives its members",
                    ));
                }
                if wanted.title.is_some() {
                    return Err(MembershipError::Invalid(
                        "direct conversations have no title",
                    ));
                }
            }
            ConvKind::Group if wanted.members.len() > MAX_GROUP_MEMBERS => {
                return Err(MembershipError::GroupFull)
            }
            ConvKind::Group => {}
        }
        match self.info(&wanted.conv).await {
            Ok(info) => return self.compare(info, wanted).await,
            Err(MembershipError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let (info, members) = self
            .establish(
                wanted.conv.clone(),
                wanted.kind,
                wanted.title.clone(),
                by,
                wanted.members.clone(),
            )
            .await?;
        // A concurrent create of the same id may have won the description: it must match.
        if info.kind != wanted.kind || info.title != wanted.title {
            return Err(MembershipError::Conflict);
        }
        Ok((info, members, Outcome::Created))
    }

    async fn compare(
        &self,
        info: ConversationInfo,
        wanted: Wanted,
    ) -> Result<(ConversationInfo, Vec<UserId>, Outcome), MembershipError> {
        let members = self.members(&info.conv).await?;
        if info.kind != wanted.kind || info.title != wanted.title || members != wanted.members {
            return Err(MembershipError::Conflict);
        }
        Ok((info, members, Outcome::Existed))
    }

    /// Adds `user` to the group `conv` in the name of the service `by` (a no-op if they are in
    /// it already).
    pub async fn add_as_service(
        &self,
        by: &UserId,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        self.group(conv).await?;
        self.add_to_group(by, conv, user).await
    }

    /// Removes `user` from the group `conv` (a no-op if they are not in it).
    pub async fn remove_as_service(
        &self,
        conv: &ConvId,
        user: &UserId,
    ) -> Result<(), MembershipError> {
        self.group(conv).await?;
        self.delete_member(conv, user).await
    }

    async fn group(&self, conv: &ConvId) -> Result<ConversationInfo, MembershipError> {
        let info = self.info(conv).await?;
        if info.kind == ConvKind::Direct {
            return Err(MembershipError::Forbidden(
                "direct conversations have fixed members",
            ));
        }
        Ok(info)
    }
}
