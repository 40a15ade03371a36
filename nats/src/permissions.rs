//! nats-server permissions that confine a bot or device to its identity and its conversations.
//!
//! The subject scheme puts the sender into the subject (`chat.in.<conv>.<sender>`), so a
//! permission list of exact subjects is the whole authorisation: the server refuses anything
//! else before it reaches chatfabric. `nats/config/auth.conf` is an example built this way.

use crate::subject::{ingress_subject, read_subject, LIVE_PREFIX};
use crate::{ConvId, UserId};

/// The inbox prefix a bot must use for request/reply (`_INBOX_<bot>`), so that it may subscribe
/// to its own replies and nobody else's.
pub fn inbox_prefix(bot: &UserId) -> String {
    format!("_INBOX_{bot}")
}

/// A `users` entry for nats-server's `authorization` block granting `bot` exactly `convs`.
pub fn bot_user(bot: &UserId, password: &str, convs: &[ConvId]) -> String {
    let quote = |s: String| format!("\"{s}\"");
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    for conv in convs {
        publish.push(quote(ingress_subject(conv, bot)));
        publish.push(quote(read_subject(conv, bot)));
        subscribe.push(quote(format!("{LIVE_PREFIX}.*.{conv}")));
    }
    subscribe.push(quote(format!("{}.>", inbox_prefix(bot))));
    format!(
        "{{\n  user: {bot}\n  password: \"{}\"\n  permissions: {{\n    publish: {{ allow: [{}] }}\n    subscribe: {{ allow: [{}] }}\n  }}\n}}",
        password.replace('"', "\\\""),
        publish.join(", "),
        subscribe.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_exactly_the_conversations() {
        let bot = UserId::new("echo-bot").unwrap();
        let block = bot_user(&bot, "pw", &[ConvId::new("lobby").unwrap()]);
        assert!(
            block.contains(
                r#"publish: { allow: ["chat.in.lobby.echo-bot", "chat.read.lobby.echo-bot"] }"#
            ),
            "{block}"
        );
        assert!(
            block.contains(r#"subscribe: { allow: ["chat.live.*.lobby", "_INBOX_echo-bot.>"] }"#),
            "{block}"
        );
    }

    #[test]
    fn the_shipped_example_is_what_the_generator_makes() {
        let shipped = include_str!("../config/auth.conf");
        let bot = UserId::new("echo-bot").unwrap();
        let block = bot_user(
            &bot,
            "echo-bot-dev-password",
            &[ConvId::new("lobby").unwrap()],
        );
        for line in block.lines().map(str::trim).filter(|l| l.len() > 1) {
            assert!(shipped.contains(line), "auth.conf lacks {line:?}");
        }
    }
}
