//! Who is in which conversation: the presence service's copy of the `m.<conv>.<user>` keys of
//! `CHAT_CONVS`, kept current by a watch, so a transition fans out without a KV read.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::kv::{Entry, Operation};
use chatfabric_nats::subject::parse_member_key;
use chatfabric_nats::{ConvId, UserId};

/// The conversations of every user.
#[derive(Debug, Default)]
pub struct Memberships {
    convs: HashMap<UserId, BTreeSet<ConvId>>,
}

impl Memberships {
    /// Applies one watched entry of the conversations bucket (other keys are ignored).
    pub fn apply(&mut self, entry: &Entry) {
        let Some((conv, user)) = parse_member_key(&entry.key) else {
            return;
        };
        if entry.operation == Operation::Put {
            self.convs.entry(user).or_default().insert(conv);
        } else if let Some(set) = self.convs.get_mut(&user) {
            set.remove(&conv);
            if set.is_empty() {
                self.convs.remove(&user);
            }
        }
    }

    /// The conversations `user` is a member of.
    pub fn of(&self, user: &UserId) -> impl Iterator<Item = &ConvId> {
        self.convs.get(user).into_iter().flatten()
    }
}
