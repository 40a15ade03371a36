//! Identifiers that travel inside NATS subjects and KV keys.
//!
//! A user id or conversation id becomes a single subject token (`chat.msg.<conv>`), so it must never
//! contain `.`, `*`, `>` or whitespace: that would let a crafted id widen a subscription or escape a
//! permission. Both types can only be built through validation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest id we accept, in bytes. Keeps subjects and KV keys short.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The id holds a character outside `A-Z a-z 0-9 _ -`.
    #[error("id may only contain A-Z, a-z, 0-9, '_' and '-'")]
    BadChar,
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate(&s)?;
                Ok(Self(s))
            }

            /// The id as a string slice (also a valid subject token).
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The prefix of service ids (`svc_<name>`): service senders of the server API and the
/// application itself as a creator. Tokens, bots and members with such an id are refused, so a
/// service can never be mistaken for a user.
pub const SERVICE_PREFIX: &str = "svc_";

token_id!(
    /// A user's id: the `sub` of their token, or a bot's configured identity.
    UserId
);
token_id!(
    /// A conversation's id. Direct conversations get a deterministic id ([`ConvId::direct`]).
    ConvId
);

impl UserId {
    /// Whether this is a service id ([`SERVICE_PREFIX`]), which no user may have.
    pub fn is_service(&self) -> bool {
        self.0.starts_with(SERVICE_PREFIX)
    }

    /// The service id of the service `name` (an id itself, at most 60 bytes).
    pub fn service(name: &str) -> Result<Self, IdError> {
        validate(name)?;
        Self::new(format!("{SERVICE_PREFIX}{name}"))
    }
}

impl ConvId {
    /// The id of the direct conversation between `a` and `b`: the same whichever side asks, so two
    /// concurrent "create direct" requests land on one conversation.
    pub fn direct(a: &UserId, b: &UserId) -> ConvId {
        use sha2::{Digest, Sha256};
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut h = Sha256::new();
        h.update(lo.as_str());
        h.update([0u8]);
        h.update(hi.as_str());
        let digest = h.finalize();
        let mut id = String::with_capacity(2 + 32);
        id.push_str("d-");
        for b in &digest[..16] {
            id.push_str(&format!("{b:02x}"));
        }
        ConvId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_subject_metacharacters() {
        for bad in ["a.b", "*", ">", "a b", "", "é"] {
            assert!(UserId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(UserId::new("x".repeat(65)), Err(IdError::TooLong));
        assert!(ConvId::new("general_1-x").is_ok());
    }

    #[test]
    fn direct_id_is_symmetric_and_distinct() {
        let a = UserId::new("alice").unwrap();
        let b = UserId::new("bob").unwrap();
        let c = UserId::new("carol").unwrap();
        assert_eq!(ConvId::direct(&a, &b), ConvId::direct(&b, &a));
        assert_ne!(ConvId::direct(&a, &b), ConvId::direct(&a, &c));
        assert!(ConvId::new(ConvId::direct(&a, &b).as_str()).is_ok());
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<ConvId>("\"a.b\"").is_err());
        assert_eq!(
            serde_json::from_str::<ConvId>("\"ok\"").unwrap().as_str(),
            "ok"
        );
    }

    mod properties {
        use super::*;
        use crate::permissions::is_reply_inbox_of;
        use crate::subject::{ingress_subject, member_key, parse_direct, parse_member_key};
        use proptest::prelude::*;

        proptest! {
            /// Whatever a client sends as an id, an accepted one is exactly one subject token
            /// that no wildcard or separator can widen.
            #[test]
            fn an_accepted_id_never_widens_a_subject(s in "\\PC{0,80}|[A-Za-z0-9_.*> -]{0,80}") {
                if let Ok(id) = UserId::new(s.as_str()) {
                    prop_assert!(!id.as_str().is_empty() && id.as_str().len() <= MAX_ID_LEN);
                    prop_assert!(!id.as_str().contains(['.', '*', '>', ' ', '\t', '\r', '\n']));
                    prop_assert!(id.as_str().is_ascii());
                }
                prop_assert_eq!(UserId::new(s.as_str()).is_ok(), ConvId::new(s.as_str()).is_ok());
            }

            /// Subjects and keys built from ids parse back to the same ids, and nothing else.
            #[test]
            fn subjects_round_trip(c in "[A-Za-z0-9_-]{1,64}", u in "[A-Za-z0-9_-]{1,64}") {
                let (conv, user) = (ConvId::new(c).unwrap(), UserId::new(u).unwrap());
                prop_assert_eq!(
                    parse_direct(&ingress_subject(&conv, &user)),
                    Some((conv.clone(), user.clone()))
                );
                prop_assert_eq!(parse_member_key(&member_key(&conv, &user)), Some((conv, user)));
            }

            /// A reply subject is accepted for a bot only under that bot's own inbox.
            #[test]
            fn replies_stay_in_the_requesters_inbox(bot in "[A-Za-z0-9_-]{1,64}", reply in "\\PC{0,80}") {
                let bot = UserId::new(bot).unwrap();
                if is_reply_inbox_of(&reply, &bot) {
                    let own = format!("_INBOX.{bot}.");
                    prop_assert!(reply.starts_with(&own));
                    prop_assert!(!reply.split('.').any(|t| t == "*" || t == ">" || t.is_empty()));
                }
            }
        }
    }
}
