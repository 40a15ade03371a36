//! Conversations and their members, stored in the `CHAT_CONVS` KV bucket and cached per gateway.
//!
//! Every membership is one key (`m.<conv>.<user>`), so adding and removing members never races on a
//! shared document. Each gateway caches membership answers (moka) and watches the bucket: a change
//! invalidates the cached answer within milliseconds, and a removal also ends the removed user's live
//! subscriptions ([`MembershipEvents`]). Cached answers also expire after a TTL, a backstop should the
//! watch miss an update while it reconnects.
//!
//! # Layout
//!
//! - `reads`: [`Membership`] and its cached reads.
//! - `conversations`: creating conversations, adding and removing members.
//! - `managed`: changes in the application's name (server API): given ids, idempotent creates.
//! - `index`: each user's conversation index.
//! - `watch`: the bucket watch ([`MembershipEvents`]).
//! - [`limits`], [`error`].

mod conversations;
pub mod error;
mod index;
pub mod limits;
pub mod managed;
pub mod reads;
mod watch;

pub use error::{BoxError, MembershipError};
pub use limits::{
    ClientMembership, ConversationLimits, MAX_ADDED_BY_OTHERS, MAX_CONVERSATIONS_PER_USER,
    MAX_GROUP_MEMBERS, MAX_LISTING_PAGE, MAX_TITLE_LEN,
};
pub use reads::Membership;
pub use watch::MembershipEvents;
