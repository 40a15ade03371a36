//! The subject scheme. Every subject chatfabric uses is built here and nowhere else.
//!
//! | subject                         | who publishes                 | who reads                        |
//! |---------------------------------|-------------------------------|----------------------------------|
//! | `chat.msg.<part>.<conv>`        | gateways, the ingest service  | stream `CHAT_MSGS_<part>` stores |
//! | `chat.live.<part>.<conv>`       | JetStream `republish`         | gateways, granted bots (fan-out) |
//! | `chat.in.<conv>.<sender>`       | bots and devices (request)    | the ingest service               |
//! | `chat.read.<conv>.<reader>`     | bots and devices (request)    | the ingest service (history)     |
//! | `chat.eph.<conv>.presence`      | the presence service          | gateways (members' connections)  |
//! | `chat.eph.<conv>.typing`        | gateways                      | gateways (members' connections)  |
//! | `chat.eph.<conv>.read`          | gateways                      | gateways (members' connections)  |
//! | `chat.webhooks.dead.<reason>`   | the webhooks role             | stream `CHAT_WEBHOOKS_DEAD`      |
//!
//! KV keys of `CHAT_PRESENCE`: `gw.<gateway>` (a gateway's heartbeat), `dev.<user>.<gateway>` (the
//! user has a connection on that gateway), `user.<user>` (the published presence, written by the
//! presence service). KV keys of `CHAT_RECEIPTS`: `r.<conv>.<user>` (read cursor).
//!
//! - One conversation is one subject, so JetStream's per-subject `Nats-Last-Sequence` (stamped by
//!   `republish`) chains each conversation's messages: a reader that sees a link it does not have
//!   knows exactly which gap to fill.
//! - `<part>` pins a conversation to one of N streams (`hash(conv) mod N`). With one partition every
//!   conversation lives in `CHAT_MSGS_0`; a cluster can run N streams with leaders on different
//!   servers. N is fixed for a deployment: changing it moves conversations to other streams.
//! - Bots publish on `chat.in.<conv>.<sender>`, never on `chat.msg`: the sender is a subject token,
//!   so plain nats-server permissions (`publish: chat.in.<granted conv>.<own id>`) confine a bot to its
//!   own identity and to its granted conversations. They read live messages on
//!   `chat.live.*.<conv>` and history pages through `chat.read.<conv>.<reader>`.
//! - `chat.eph.<conv>.<kind>` carries ephemeral events (presence, typing, read receipts) on core
//!   NATS: at most once, never stored, no order across kinds. The conversation is a token of the
//!   subject, so a gateway's conversation actor takes all of a conversation's events with one
//!   subscription (`chat.eph.<conv>.*`) and only members, who alone can subscribe, receive them.
//!   Only services publish there; bots are not granted it.

use crate::{ConvId, UserId};

/// Prefix of stored message subjects.
pub const MSG_PREFIX: &str = "chat.msg";
/// Prefix of republished (live fan-out) subjects.
pub const LIVE_PREFIX: &str = "chat.live";
/// Prefix of the ingress subjects for NATS-direct publishers.
pub const IN_PREFIX: &str = "chat.in";
/// Prefix of the history request subjects for NATS-direct readers.
pub const READ_PREFIX: &str = "chat.read";
/// Prefix of the message streams' names; the partition number follows.
pub const STREAM_PREFIX: &str = "CHAT_MSGS_";
/// The KV bucket holding conversations and their members.
pub const CONVS_BUCKET: &str = "CHAT_CONVS";
/// Prefix of the ephemeral (core NATS, never stored) event subjects.
pub const EPH_PREFIX: &str = "chat.eph";
/// The KV bucket holding gateway heartbeats, connected devices and published presence.
pub const PRESENCE_BUCKET: &str = "CHAT_PRESENCE";
/// The KV bucket holding read cursors.
pub const RECEIPTS_BUCKET: &str = "CHAT_RECEIPTS";
/// The KV bucket holding users' disconnects and token revocations (`d.<user>`), written by the
/// server API and watched by every gateway.
pub const USERS_BUCKET: &str = "CHAT_USERS";
/// The KV bucket holding each partition's stored watermark under `p<part>` (the persister's).
pub const WATERMARKS_BUCKET: &str = "CHAT_WATERMARKS";
/// The stream that keeps the persister's dead letters, for operators to inspect and replay.
pub const DEAD_STREAM: &str = "CHAT_DEAD";
/// Prefix of dead-letter subjects; the partition follows (`chat.dead.<part>`).
pub const DEAD_PREFIX: &str = "chat.dead";
/// The stream that keeps the webhook events no receiver took, for operators to inspect and replay.
pub const WEBHOOK_DEAD_STREAM: &str = "CHAT_WEBHOOKS_DEAD";
/// Prefix of webhook dead-letter subjects; the reason follows (`chat.webhooks.dead.<reason>`).
pub const WEBHOOK_DEAD_PREFIX: &str = "chat.webhooks.dead";

/// The kinds of ephemeral events, the last token of `chat.eph.<conv>.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ephemeral {
    /// A member went online or offline (published by the presence service).
    Presence,
    /// A member started or stopped typing (published by gateways).
    Typing,
    /// A member moved their read cursor (published by gateways).
    Read,
}

impl Ephemeral {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Presence => "presence",
            Self::Typing => "typing",
            Self::Read => "read",
        }
    }

    /// Parses a subject token.
    pub fn parse(token: &str) -> Option<Self> {
        match token {
            "presence" => Some(Self::Presence),
            "typing" => Some(Self::Typing),
            "read" => Some(Self::Read),
            _ => None,
        }
    }
}

/// Where ephemeral events of `kind` in `conv` are published.
pub fn ephemeral_subject(conv: &ConvId, kind: Ephemeral) -> String {
    format!("{EPH_PREFIX}.{conv}.{}", kind.as_str())
}

/// Matches every ephemeral event of `conv`.
pub fn ephemeral_filter(conv: &ConvId) -> String {
    format!("{EPH_PREFIX}.{conv}.*")
}

/// The kind of an ephemeral subject (`chat.eph.<conv>.<kind>`).
pub fn ephemeral_kind(subject: &str) -> Option<Ephemeral> {
    Ephemeral::parse(subject.rsplit('.').next()?)
}

/// Users-bucket key of `user`'s disconnect ([`crate::wire::UserDisconnect`]).
pub fn disconnect_key(user: &UserId) -> String {
    format!("d.{user}")
}

/// The user of a users-bucket key `d.<user>`.
pub fn parse_disconnect_key(key: &str) -> Option<UserId> {
    UserId::new(key.strip_prefix("d.")?).ok()
}

/// Presence KV key of a gateway's heartbeat. Gateway ids are id-safe tokens chosen per process.
pub fn gateway_key(gateway: &str) -> String {
    format!("gw.{gateway}")
}

/// Presence KV key saying `user` has at least one connection on `gateway`.
pub fn device_key(user: &UserId, gateway: &str) -> String {
    format!("dev.{user}.{gateway}")
}

/// Presence KV key of `user`'s published presence.
pub fn user_presence_key(user: &UserId) -> String {
    format!("user.{user}")
}

/// A parsed presence KV key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceKey {
    /// `gw.<gateway>`
    Gateway(String),
    /// `dev.<user>.<gateway>`
    Device(UserId, String),
    /// `user.<user>`
    User(UserId),
}

/// Parses a key of the presence bucket.
pub fn parse_presence_key(key: &str) -> Option<PresenceKey> {
    let mut it = key.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("gw"), Some(g), None, None) => Some(PresenceKey::Gateway(g.to_string())),
        (Some("dev"), Some(u), Some(g), None) => {
            Some(PresenceKey::Device(UserId::new(u).ok()?, g.to_string()))
        }
        (Some("user"), Some(u), None, None) => Some(PresenceKey::User(UserId::new(u).ok()?)),
        _ => None,
    }
}

/// Receipts KV key of `user`'s read cursor in `conv`.
pub fn receipt_key(conv: &ConvId, user: &UserId) -> String {
    format!("r.{conv}.{user}")
}

/// Maps conversations to partitions. Every process of a deployment must use the same count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u16);

impl Partitions {
    /// `n` partitions; at least one.
    pub fn new(n: u16) -> Self {
        Self(n.max(1))
    }

    /// How many partitions there are.
    pub fn count(self) -> u16 {
        self.0
    }

    /// The partition that owns `conv`: FNV-1a of the id, stable across versions and languages.
    pub fn of(self, conv: &ConvId) -> u16 {
        let mut h: u32 = 0x811c_9dc5;
        for b in conv.as_str().bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        (h % u32::from(self.0)) as u16
    }

    /// The stream that stores `conv`.
    pub fn stream_for(self, conv: &ConvId) -> String {
        stream_name(self.of(conv))
    }

    /// The subject `conv`'s messages are stored under.
    pub fn msg_subject(self, conv: &ConvId) -> String {
        format!("{MSG_PREFIX}.{}.{conv}", self.of(conv))
    }

    /// The subject `conv`'s stored messages are republished on.
    pub fn live_subject(self, conv: &ConvId) -> String {
        format!("{LIVE_PREFIX}.{}.{conv}", self.of(conv))
    }
}

/// The name of partition `part`'s stream.
pub fn stream_name(part: u16) -> String {
    format!("{STREAM_PREFIX}{part}")
}

/// The subjects partition `part`'s stream stores.
pub fn stream_subjects(part: u16) -> String {
    format!("{MSG_PREFIX}.{part}.*")
}

/// Where NATS-direct publishers send a message into `conv` as `sender`.
pub fn ingress_subject(conv: &ConvId, sender: &UserId) -> String {
    format!("{IN_PREFIX}.{conv}.{sender}")
}

/// Where NATS-direct readers request history pages of `conv` as `reader`.
pub fn read_subject(conv: &ConvId, reader: &UserId) -> String {
    format!("{READ_PREFIX}.{conv}.{reader}")
}

/// Splits `chat.in.<conv>.<user>` or `chat.read.<conv>.<user>` into its conversation and user.
pub fn parse_direct(subject: &str) -> Option<(ConvId, UserId)> {
    let rest = subject
        .strip_prefix("chat.in.")
        .or_else(|| subject.strip_prefix("chat.read."))?;
    let (conv, user) = rest.split_once('.')?;
    Some((ConvId::new(conv).ok()?, UserId::new(user).ok()?))
}

/// The conversation token of a stored or live subject (`chat.msg.<part>.<conv>`).
pub fn conv_of_subject(subject: &str) -> Option<ConvId> {
    ConvId::new(subject.rsplit('.').next()?).ok()
}

/// KV key of a conversation's description.
pub fn conv_key(conv: &ConvId) -> String {
    format!("c.{conv}")
}

/// KV key of one membership.
pub fn member_key(conv: &ConvId, user: &UserId) -> String {
    format!("m.{conv}.{user}")
}

/// KV key filter matching every member of `conv`.
pub fn members_of_filter(conv: &ConvId) -> String {
    format!("m.{conv}.*")
}

/// KV key of `user`'s conversation index: the JSON list of the conversations they belong to.
///
/// The `m.<conv>.<user>` keys are the truth; the index is a superset kept in step with them
/// (added to before a membership is written, removed from after it is deleted), so listing a
/// user's conversations is one read instead of a scan over every membership key.
pub fn user_convs_key(user: &UserId) -> String {
    format!("u.{user}")
}

/// Splits a membership key `m.<conv>.<user>`.
pub fn parse_member_key(key: &str) -> Option<(ConvId, UserId)> {
    let mut it = key.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("m"), Some(c), Some(u), None) => Some((ConvId::new(c).ok()?, UserId::new(u).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &str) -> ConvId {
        ConvId::new(s).unwrap()
    }

    #[test]
    fn subjects_round_trip() {
        let p = Partitions::new(1);
        let c = conv("room-1");
        assert_eq!(p.msg_subject(&c), "chat.msg.0.room-1");
        assert_eq!(p.live_subject(&c), "chat.live.0.room-1");
        assert_eq!(p.stream_for(&c), "CHAT_MSGS_0");
        assert_eq!(conv_of_subject(&p.live_subject(&c)), Some(c));
    }

    #[test]
    fn partitions_spread_and_are_stable() {
        let p = Partitions::new(8);
        let mut seen = [0u32; 8];
        for i in 0..800 {
            let part = p.of(&conv(&format!("c{i}")));
            seen[part as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        // Changing this value changes where existing conversations live: it must never change.
        assert_eq!(p.of(&conv("general")), 3);
    }

    #[test]
    fn direct_subjects_parse() {
        let (c, u) = (conv("room"), UserId::new("bot-1").unwrap());
        assert_eq!(
            parse_direct(&ingress_subject(&c, &u)),
            Some((c.clone(), u.clone()))
        );
        assert_eq!(parse_direct(&read_subject(&c, &u)), Some((c, u)));
        assert_eq!(parse_direct("chat.in.room.a.b"), None);
        assert_eq!(parse_direct("chat.msg.0.room"), None);
    }

    #[test]
    fn presence_keys_parse() {
        let u = UserId::new("alice").unwrap();
        assert_eq!(
            parse_presence_key(&device_key(&u, "g1")),
            Some(PresenceKey::Device(u.clone(), "g1".into()))
        );
        assert_eq!(
            parse_presence_key(&gateway_key("g1")),
            Some(PresenceKey::Gateway("g1".into()))
        );
        assert_eq!(
            parse_presence_key(&user_presence_key(&u)),
            Some(PresenceKey::User(u))
        );
        assert_eq!(parse_presence_key("dev.a"), None);
        let c = conv("room");
        assert_eq!(
            ephemeral_subject(&c, Ephemeral::Typing),
            "chat.eph.room.typing"
        );
        assert_eq!(
            ephemeral_kind("chat.eph.room.presence"),
            Some(Ephemeral::Presence)
        );
    }

    #[test]
    fn member_keys_parse() {
        let k = member_key(&conv("c1"), &UserId::new("alice").unwrap());
        let (c, u) = parse_member_key(&k).unwrap();
        assert_eq!((c.as_str(), u.as_str()), ("c1", "alice"));
        assert!(parse_member_key("c.c1").is_none());
        assert!(parse_member_key("m.c1.a.b").is_none());
    }
}
