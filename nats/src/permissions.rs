//! nats-server permissions: every role of the fabric and every bot is its own NATS user, allowed
//! exactly the subjects and JetStream API calls it uses.
//!
//! # Trust
//!
//! - A **bot** may post and read only as itself in its granted conversations (`chat.in.<conv>.<bot>`,
//!   `chat.read.<conv>.<bot>`), receive those conversations live, and receive replies under its own
//!   inbox `_INBOX.<bot>.>`. The sender is a subject token, so the server's permission check is the
//!   authentication.
//! - A **role** (gateway, persister, presence, webhooks) may use the streams and buckets it works on, and
//!   create the ones missing (any role may start first), but never change a stream's configuration
//!   (an update that shrinks a limit discards messages), delete or purge a stream, delete a stored
//!   message, roll up a bucket (streams and buckets refuse rollups and purges), or publish where its
//!   work does not take it. Each role's own
//!   request inbox is `_CF.<role>.>`, out of every bot's reach.
//! - The gateway answers bot requests, and nats-server checks a request's subject but not its
//!   reply subject. The gateway therefore answers only replies under the requester's own inbox
//!   ([`is_reply_inbox_of`]) and may publish to no other inbox than bots' (`_INBOX.>`): a bot can
//!   never make the gateway publish where the bot could not itself receive.
//!
//! `nats/config/auth.conf` is built from these functions (a test keeps it so).

use std::fmt::Write as _;

use crate::subject::{
    ingress_subject, read_subject, stream_name, Partitions, CONVS_BUCKET, DEAD_PREFIX, DEAD_STREAM,
    EPH_PREFIX, IN_PREFIX, LIVE_PREFIX, MSG_PREFIX, PRESENCE_BUCKET, READ_PREFIX, RECEIPTS_BUCKET,
    USERS_BUCKET, WATERMARKS_BUCKET, WEBHOOK_DEAD_PREFIX, WEBHOOK_DEAD_STREAM,
};
use crate::{ConvId, UserId};

/// What a user may publish and subscribe to: nats-server `allow` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects the user may publish to.
    pub publish: Vec<String>,
    /// Subjects the user may subscribe to.
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// A `users` entry for nats-server's `authorization` block.
    pub fn user_block(&self, user: &str, password: &str) -> String {
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{\n  user: {user}\n  password: \"{}\"\n  permissions: {{\n    publish: {{ allow: [{}] }}\n    subscribe: {{ allow: [{}] }}\n  }}\n}}",
            password.replace('\\', "\\\\").replace('"', "\\\""),
            list(&self.publish),
            list(&self.subscribe)
        )
    }
}

/// The processes of the fabric, each with its own NATS user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateways: client sessions, sends, fan-out, membership, the bot ingest.
    Gateway,
    /// Persisters: drain the message streams into the history store.
    Persister,
    /// Presence services: heartbeats and devices in, online/offline events out.
    Presence,
    /// Webhooks: stored messages and membership changes in, signed HTTP events out.
    Webhooks,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [
        Role::Gateway,
        Role::Persister,
        Role::Presence,
        Role::Webhooks,
    ];

    /// The role's NATS user name.
    pub fn user(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Persister => "persister",
            Role::Presence => "presence",
            Role::Webhooks => "webhooks",
        }
    }

    /// The inbox prefix of the role's own requests; no bot may subscribe under it.
    pub fn inbox_prefix(self) -> String {
        format!("_CF.{}", self.user())
    }

    /// Exactly what the role uses, for a deployment of `partitions` message streams.
    pub fn permissions(self, partitions: Partitions) -> Permissions {
        let parts: Vec<u16> = (0..partitions.count()).collect();
        let msg_streams: Vec<String> = parts.iter().map(|&p| stream_name(p)).collect();
        let kv = |bucket: &str| format!("KV_{bucket}");
        // Every role provisions the message streams and the shared buckets at start-up.
        let mut provisioned = msg_streams.clone();
        provisioned.extend([kv(CONVS_BUCKET), kv(PRESENCE_BUCKET), kv(RECEIPTS_BUCKET)]);
        let mut publish = Vec::new();
        let mut subscribe = vec![format!("{}.>", self.inbox_prefix())];
        match self {
            Role::Gateway => {
                publish.extend(parts.iter().map(|p| format!("{MSG_PREFIX}.{p}.*")));
                publish.push(format!("{EPH_PREFIX}.*.typing"));
                publish.push(format!("{EPH_PREFIX}.*.read"));
                // Answers to bots, only ever under the asking bot's own inbox.
                publish.push("_INBOX.>".into());
                publish.push(format!("$KV.{CONVS_BUCKET}.>"));
                publish.push(format!("$KV.{PRESENCE_BUCKET}.gw.*"));
                publish.push(format!("$KV.{PRESENCE_BUCKET}.dev.*.*"));
                publish.push(format!("$KV.{RECEIPTS_BUCKET}.>"));
                // The server API's disconnects, watched by every gateway (it provisions the bucket).
                provisioned.push(kv(USERS_BUCKET));
                publish.push(format!("$KV.{USERS_BUCKET}.d.*"));
                for s in &msg_streams {
                    publish.extend(reads(s));
                    // Unread counts: a short-lived filtered consumer, created, read and deleted.
                    publish.extend(consumes(s));
                }
                for b in [
                    CONVS_BUCKET,
                    PRESENCE_BUCKET,
                    RECEIPTS_BUCKET,
                    USERS_BUCKET,
                    WATERMARKS_BUCKET,
                ] {
                    publish.extend(reads(&kv(b)));
                    publish.extend(consumes(&kv(b)));
                }
                publish.extend(info(&kv(WATERMARKS_BUCKET)));
                subscribe.extend(parts.iter().map(|p| format!("{LIVE_PREFIX}.{p}.*")));
                subscribe.push(format!("{EPH_PREFIX}.*.*"));
                subscribe.push(format!("{IN_PREFIX}.*.*"));
                subscribe.push(format!("{READ_PREFIX}.*.*"));
            }
            Role::Persister => {
                provisioned.extend([DEAD_STREAM.to_string(), kv(WATERMARKS_BUCKET)]);
                publish.push(format!("{DEAD_PREFIX}.*"));
                publish.push(format!("$KV.{WATERMARKS_BUCKET}.>"));
                publish.extend(reads(&kv(WATERMARKS_BUCKET)));
                for s in &msg_streams {
                    publish.extend(consumes(s));
                    publish.push(format!("$JS.API.CONSUMER.DURABLE.CREATE.{s}.*"));
                    publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{s}.*"));
                    publish.push(format!("$JS.ACK.{s}.>"));
                }
            }
            Role::Presence => {
                publish.push(format!("{EPH_PREFIX}.*.presence"));
                publish.push(format!("$KV.{PRESENCE_BUCKET}.>"));
                for b in [CONVS_BUCKET, PRESENCE_BUCKET] {
                    publish.extend(reads(&kv(b)));
                    publish.extend(consumes(&kv(b)));
                }
            }
            Role::Webhooks => {
                provisioned.push(WEBHOOK_DEAD_STREAM.to_string());
                publish.push(format!("{WEBHOOK_DEAD_PREFIX}.*"));
                // Durable consumers on every message stream and on the membership keys; only
                // reads of the buckets (mirrors of members and presence), never a write.
                for s in msg_streams.iter().cloned().chain([kv(CONVS_BUCKET)]) {
                    publish.extend(durable(&s));
                }
                for b in [CONVS_BUCKET, PRESENCE_BUCKET] {
                    publish.extend(consumes(&kv(b)));
                }
            }
        }
        // Create what is missing, never update: an update that shrinks a limit discards messages.
        for s in &provisioned {
            publish.extend(info(s));
            publish.push(format!("$JS.API.STREAM.CREATE.{s}"));
        }
        dedup(&mut publish);
        Permissions { publish, subscribe }
    }
}

fn info(stream: &str) -> [String; 1] {
    [format!("$JS.API.STREAM.INFO.{stream}")]
}

/// Single-message reads: direct gets (any replica) and the leader's message get.
fn reads(stream: &str) -> [String; 3] {
    [
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]
}

/// Consumers of the role's own (watches, filtered counts): create, inspect, delete, flow control.
fn consumes(stream: &str) -> [String; 5] {
    [
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// A durable pull consumer of the role's own: create (both APIs), pull, inspect, ack.
fn durable(stream: &str) -> [String; 5] {
    [
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
        format!("$JS.ACK.{stream}.>"),
    ]
}

fn dedup(subjects: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    subjects.retain(|s| seen.insert(s.clone()));
}

/// The inbox prefix a bot must use for request/reply (`_INBOX.<bot>`): it may subscribe to its own
/// replies and nobody else's, and the gateway answers nowhere else.
pub fn inbox_prefix(bot: &UserId) -> String {
    format!("_INBOX.{bot}")
}

/// Whether `reply` lies under `bot`'s own inbox: the only place the fabric answers `bot` at.
/// Wildcards and empty tokens are refused, so the answer goes to exactly one subject.
pub fn is_reply_inbox_of(reply: &str, bot: &UserId) -> bool {
    let Some(rest) = reply
        .strip_prefix(inbox_prefix(bot).as_str())
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.split('.').all(|t| {
            !t.is_empty()
                && t != "*"
                && t != ">"
                && !t
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        })
}

/// Exactly what a bot granted `convs` may do.
pub fn bot_permissions(bot: &UserId, convs: &[ConvId]) -> Permissions {
    let mut p = Permissions::default();
    for conv in convs {
        p.publish.push(ingress_subject(conv, bot));
        p.publish.push(read_subject(conv, bot));
        p.subscribe.push(format!("{LIVE_PREFIX}.*.{conv}"));
    }
    p.subscribe.push(format!("{}.>", inbox_prefix(bot)));
    p
}

/// A `users` entry for nats-server's `authorization` block granting `bot` exactly `convs`.
pub fn bot_user(bot: &UserId, password: &str, convs: &[ConvId]) -> String {
    bot_permissions(bot, convs).user_block(bot.as_str(), password)
}

/// The `users` entries of the fabric's roles, with the given password for each.
pub fn role_users(partitions: Partitions, password: impl Fn(Role) -> String) -> String {
    let mut out = String::new();
    for role in Role::ALL {
        let _ = writeln!(
            out,
            "{}",
            role.permissions(partitions)
                .user_block(role.user(), &password(role))
        );
    }
    out
}

/// A whole nats-server `authorization` block: the roles' users (with `password(role)`) and
/// `extra` user entries (bots from [`bot_user`], an operator's user).
pub fn authorization(
    partitions: Partitions,
    password: impl Fn(Role) -> String,
    extra: &[String],
) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    out.push_str(&role_users(partitions, password));
    for user in extra {
        out.push_str(user);
        out.push('\n');
    }
    out.push_str("  ]\n}\n");
    out
}

/// `url` (`nats://host:port`, comma separated for several) with `user:password@` in each.
pub fn url_with_credentials(url: &str, user: &str, password: &str) -> String {
    url.split(',')
        .map(str::trim)
        .map(|u| match u.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{user}:{password}@{rest}"),
            None => format!("{user}:{password}@{u}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn grants_exactly_the_conversations() {
        let block = bot_user(&bot("echo-bot"), "pw", &[ConvId::new("lobby").unwrap()]);
        assert!(
            block.contains(
                r#"publish: { allow: ["chat.in.lobby.echo-bot", "chat.read.lobby.echo-bot"] }"#
            ),
            "{block}"
        );
        assert!(
            block.contains(r#"subscribe: { allow: ["chat.live.*.lobby", "_INBOX.echo-bot.>"] }"#),
            "{block}"
        );
    }

    #[test]
    fn the_shipped_config_is_what_the_generator_makes() {
        let shipped = include_str!("../config/auth.conf");
        let bot_block = bot_user(
            &bot("echo-bot"),
            "echo-bot-dev-password",
            &[ConvId::new("lobby").unwrap()],
        );
        let roles = role_users(Partitions::new(1), |r| format!("{}-dev-password", r.user()));
        for line in bot_block
            .lines()
            .chain(roles.lines())
            .map(str::trim)
            .filter(|l| l.len() > 1)
        {
            assert!(shipped.contains(line), "auth.conf lacks {line:?}");
        }
    }

    #[test]
    fn the_compose_config_is_what_the_generator_makes() {
        let shipped = include_str!("../../deploy/nats/auth.conf");
        let roles = role_users(Partitions::new(4), |r| format!("{}-dev-password", r.user()));
        for line in roles.lines().map(str::trim).filter(|l| l.len() > 1) {
            assert!(
                shipped.contains(line),
                "deploy/nats/auth.conf lacks {line:?}"
            );
        }
    }

    #[test]
    fn replies_only_under_the_requesters_own_inbox() {
        let b = bot("b1");
        assert!(is_reply_inbox_of("_INBOX.b1.abc", &b));
        assert!(is_reply_inbox_of("_INBOX.b1.abc.1", &b));
        for reply in [
            "$KV.CHAT_CONVS.m.lobby.b1",
            "$JS.API.STREAM.PURGE.KV_CHAT_CONVS",
            "chat.msg.0.lobby",
            "_INBOX.b1",
            "_INBOX.b1.",
            "_INBOX.b1..x",
            "_INBOX.b1.*",
            "_INBOX.b1.>",
            "_INBOX.b12.x",
            "_INBOX.b2.x",
            "_INBOX_b1.x",
            "_CF.gateway.x",
            "_INBOX.b1.a b",
        ] {
            assert!(!is_reply_inbox_of(reply, &b), "{reply}");
        }
    }

    #[test]
    fn no_role_may_delete_purge_or_publish_anywhere() {
        for role in Role::ALL {
            let p = role.permissions(Partitions::new(4));
            for s in p.publish.iter().chain(&p.subscribe) {
                assert!(s != ">" && !s.starts_with("$JS.API.>"), "{role:?}: {s}");
                for verb in [
                    "PURGE",
                    "DELETE.",
                    "MSG.DELETE",
                    "SNAPSHOT",
                    "RESTORE",
                    "UPDATE",
                ] {
                    let forbidden = format!("$JS.API.STREAM.{verb}");
                    assert!(!s.starts_with(&forbidden), "{role:?}: {s}");
                }
                assert!(!s.starts_with("_INBOX.>") || role == Role::Gateway, "{s}");
            }
            assert!(p.subscribe.contains(&format!("{}.>", role.inbox_prefix())));
        }
        let presence = Role::Presence.permissions(Partitions::new(1));
        assert!(!presence.publish.iter().any(|s| s.starts_with("chat.msg")));
        let webhooks = Role::Webhooks.permissions(Partitions::new(1));
        assert!(!webhooks.publish.iter().any(|s| s.starts_with("chat.msg")
            || s.starts_with("$KV.")
            || s.starts_with("chat.eph")));
        let gateway = Role::Gateway.permissions(Partitions::new(1));
        assert!(!gateway.publish.iter().any(|s| s.contains(".presence")));
        assert!(!gateway
            .publish
            .iter()
            .any(|s| s.starts_with("$KV.CHAT_PRESENCE.user")));
    }
}
