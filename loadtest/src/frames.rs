//! The JSON frames as the load generator writes and reads them (see `gateway/src/protocol.rs`).
//!
//! Replies are parsed into one flat, borrowing struct rather than the gateway's `ServerFrame`
//! enum: at hundreds of thousands of deliveries per second the generator must stay cheaper than
//! the fabric it measures, and a borrowed parse allocates nothing for a `msg` frame.
//!
//! A message body starts with its send time (`<unix nanos>|`), padded to the payload size, so a
//! receiver on the same machine computes end-to-end latency from the body alone.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A request frame.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request<'a> {
    /// Start (or resume after `after`) a subscription.
    Subscribe {
        conv: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// Post a message.
    Send {
        conv: &'a str,
        client_id: &'a str,
        body: &'a str,
    },
    /// Create a group with `members` besides the caller.
    Create {
        kind: &'static str,
        members: &'a [String],
        title: &'a str,
        #[serde(rename = "ref")]
        reference: &'a str,
    },
}

impl Request<'_> {
    /// The frame as JSON text.
    pub(crate) fn encode(&self) -> String {
        // Only strings and integers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `conversation` object of a `conversation` reply.
#[derive(Debug, Deserialize)]
pub(crate) struct ConversationRef {
    pub(crate) conv: String,
}

/// Any server frame, flattened: only the fields of its `op` are present.
#[derive(Debug, Deserialize)]
pub(crate) struct Reply<'a> {
    #[serde(borrow)]
    pub(crate) op: Cow<'a, str>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(default)]
    pub(crate) prev: Option<u64>,
    #[serde(default)]
    pub(crate) cursor: Option<u64>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub(crate) client_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) duplicate: Option<bool>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub(crate) body: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub(crate) code: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub(crate) message: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "ref", deserialize_with = "borrowed")]
    pub(crate) reference: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) conversation: Option<ConversationRef>,
}

/// An optional string that borrows from the frame when it has no escapes (serde's `borrow` only
/// reaches a `Cow` that is not wrapped in an `Option`).
fn borrowed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'de>>::deserialize(d)?.map(|t| t.0))
}

impl<'a> Reply<'a> {
    /// Parses a text frame.
    pub(crate) fn parse(text: &'a str) -> Result<Reply<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// `code: message` of an `error` frame, for reports.
    pub(crate) fn error_text(&self) -> String {
        format!(
            "{}: {}",
            self.code.as_deref().unwrap_or("?"),
            self.message.as_deref().unwrap_or("")
        )
    }
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A body of `size` bytes (at least the stamp) that starts with `sent_nanos`.
pub(crate) fn stamped_body(sent_nanos: u64, size: usize) -> String {
    let mut body = format!("{sent_nanos}|");
    if body.len() < size {
        body.extend(std::iter::repeat_n('x', size - body.len()));
    }
    body
}

/// The send time stamped in a body by [`stamped_body`], if it has one.
pub(crate) fn sent_nanos(body: &str) -> Option<u64> {
    body.split_once('|')?.0.parse().ok()
}

/// Claims of the tokens the gateway accepts.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// A HS256 token for `user`, valid for `ttl_secs`.
pub(crate) fn mint_token(secret: &str, user: &str, ttl_secs: u64) -> anyhow::Result<String> {
    let claims = Claims {
        sub: user,
        exp: unix_nanos() / 1_000_000_000 + ttl_secs,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_carries_its_send_time_and_has_the_payload_size() {
        let b = stamped_body(1_700_000_000_123_456_789, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(sent_nanos(&b), Some(1_700_000_000_123_456_789));
        // A payload smaller than the stamp still carries it.
        assert_eq!(sent_nanos(&stamped_body(42, 1)), Some(42));
        assert_eq!(sent_nanos("hello"), None);
    }

    #[test]
    fn msg_frame_parses_without_copying_the_body() {
        let text = r#"{"op":"msg","conv":"c","seq":7,"prev":5,"id":"i","sender":"u","client_id":"k","ts":1,"body":"12|xx"}"#;
        let r = Reply::parse(text).unwrap();
        assert_eq!((r.op.as_ref(), r.seq, r.prev), ("msg", Some(7), Some(5)));
        assert!(matches!(r.body, Some(Cow::Borrowed("12|xx"))));
        let created = r#"{"op":"conversation","conversation":{"conv":"g1","kind":"group"},"members":["a"],"ref":"3"}"#;
        let r = Reply::parse(created).unwrap();
        assert_eq!(r.conversation.unwrap().conv, "g1");
        assert_eq!(r.reference.as_deref(), Some("3"));
    }

    #[test]
    fn requests_are_tagged_by_op() {
        let s = Request::Subscribe {
            conv: "c",
            after: None,
        }
        .encode();
        assert_eq!(s, r#"{"op":"subscribe","conv":"c"}"#);
        let s = Request::Subscribe {
            conv: "c",
            after: Some(3),
        }
        .encode();
        assert_eq!(s, r#"{"op":"subscribe","conv":"c","after":3}"#);
    }

    #[test]
    fn frames_agree_with_the_gateways_protocol() {
        use chatfabric_gateway::protocol::{self, ClientFrame, ServerFrame};
        let members = vec!["bob".to_string()];
        let frames = [
            Request::Subscribe {
                conv: "c1",
                after: Some(9),
            }
            .encode(),
            Request::Send {
                conv: "c1",
                client_id: "7-1",
                body: &stamped_body(5, 40),
            }
            .encode(),
            Request::Create {
                kind: "group",
                members: &members,
                title: "t",
                reference: "3",
            }
            .encode(),
        ];
        for text in &frames {
            assert!(
                protocol::decode(text).is_ok(),
                "the gateway cannot read {text}"
            );
        }
        assert!(matches!(
            protocol::decode(&frames[0]),
            Ok(ClientFrame::Subscribe { after: Some(9), .. })
        ));
        let m = chatfabric_nats::wire::StoredMessage {
            via: None,
            id: "i".into(),
            conv: chatfabric_nats::ConvId::new("c1").unwrap(),
            sender: chatfabric_nats::UserId::new("bob").unwrap(),
            client_id: "7-1".into(),
            ts: 1,
            body: stamped_body(5, 40),
        };
        let text = protocol::encode_msg(&m, 12, 10);
        let r = Reply::parse(&text).unwrap();
        assert_eq!((r.seq, r.prev), (Some(12), Some(10)));
        assert_eq!(r.body.as_deref().and_then(sent_nanos), Some(5));
        let ack = protocol::encode(&ServerFrame::Ack {
            conv: m.conv.clone(),
            client_id: "7-1".into(),
            seq: 12,
            duplicate: true,
        });
        let r = Reply::parse(&ack).unwrap();
        assert_eq!(
            (r.op.as_ref(), r.client_id.as_deref(), r.duplicate),
            ("ack", Some("7-1"), Some(true))
        );
        // Escaped text still parses (it is copied instead of borrowed).
        let err = protocol::encode(&ServerFrame::Error {
            code: protocol::ErrorCode::Invalid,
            message: "bad \"conv\"\n".into(),
            reference: Some("7-2".into()),
        });
        let r = Reply::parse(&err).unwrap();
        assert_eq!(r.error_text(), "invalid: bad \"conv\"\n");
    }
}
