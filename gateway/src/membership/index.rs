//! Each user's conversation index (`u.<user>` in the bucket): the list their listings, unread
//! counts and limits read, updated with compare-and-set against other gateways.

use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use chatfabric_nats::subject;
use chatfabric_nats::{ConvId, UserId};

use super::error::{store_err, BoxError, MembershipError};
use super::limits::TOO_MANY_TO_BE_ADDED;
use super::reads::Membership;

/// How a membership changes a user's conversation index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IndexChange {
    /// The user created or joined the conversation themselves.
    Joined,
    /// Someone else put the user in it.
    AddedByOthers,
    /// The user left or was removed.
    Remove,
}

impl Membership {
    pub(super) fn too_many(&self) -> MembershipError {
        MembershipError::TooManyConversations(self.limits.per_user)
    }

    /// `user`'s conversation index and its revision (`None`: never written).
    pub(super) async fn index(
        &self,
        user: &UserId,
    ) -> Result<(Vec<ConvId>, Option<u64>), MembershipError> {
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
    pub(super) async fn update_index(
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
        let mut last_error: Option<BoxError> = None;
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
                    .map_err(BoxError::from),
                None => self
                    .kv
                    .create(&key, value)
                    .await
                    .map(drop)
                    .map_err(BoxError::from),
            };
            match written {
                Ok(()) => return Ok(()),
                // Another gateway changed the index since we read it: read again.
                Err(e) => last_error = Some(e),
            }
        }
        Err(MembershipError::Contended {
            user: user.clone(),
            last: last_error.unwrap_or_else(|| "no write attempted".into()),
        })
    }
}
