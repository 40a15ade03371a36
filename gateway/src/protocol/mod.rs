//! The client-facing wire protocol: JSON text frames, error codes and close codes.
//!
//! PROTOCOL.md documents every type here with examples; the two must change together.
//! Frames are tagged by `op`. Every request may carry a `ref` (at most 64 bytes) which the reply
//! echoes, so a client can match replies to requests.

//!
//! # Layout
//!
//! - `ops`: every `op` name, of client and server frames: the one table of them.
//! - `client`: [`ClientFrame`] and [`decode`].
//! - `server`: [`ServerFrame`] and the encoders of `msg`, `history` and event frames.
//! - `codes`: [`ErrorCode`] and the [`close`] codes.
//!
//! This is the bottom of the gateway: it imports no other module of the crate.

mod client;
mod codes;
pub mod ops;
mod server;

pub use client::{decode, raw_reference, reference_of, ClientFrame, DecodeError};
pub use codes::{close, ErrorCode};
pub use ops::{ClientOp, ServerOp};
pub use server::{
    encode, encode_event, encode_history, encode_msg, ConversationView, Delivered, ServerFrame,
    DEFAULT_HISTORY_LIMIT,
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chatfabric_nats::wire::TypingState;
    use chatfabric_nats::{ConvId, UserId};

    use super::*;

    #[test]
    fn errors_of_frames_that_do_not_decode_keep_their_ref() {
        let create = r#"{"op":"create","kind":"direct","with":"not valid!","ref":"c1"}"#;
        assert!(decode(create).is_err());
        assert_eq!(raw_reference(create).as_deref(), Some("c1"));
        let send = r#"{"op":"send","conv":"a.b","client_id":"k-1","body":"x","ref":"no"}"#;
        assert_eq!(raw_reference(send).as_deref(), Some("k-1"));
        let long = format!(r#"{{"op":"members","conv":1,"ref":"{}"}}"#, "r".repeat(65));
        assert_eq!(raw_reference(&long), None);
        assert_eq!(raw_reference(r#"{"op":"members","ref":7}"#), None);
        assert_eq!(raw_reference("{nope"), None);
    }

    #[test]
    fn decode_tells_errors_apart() {
        assert!(matches!(decode("{nope"), Err(DecodeError::BadFrame)));
        assert!(matches!(decode("[1,2]"), Err(DecodeError::BadFrame)));
        assert!(matches!(decode(r#"{"op":"fly"}"#), Err(DecodeError::UnknownOp(o)) if o == "fly"));
        assert!(matches!(
            decode(r#"{"op":"send","conv":"c"}"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(r#"{"op":"subscribe","conv":"a.b"}"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(r#"{"op":"send","conv":"c","client_id":"k","body":"hi"}"#),
            Ok(ClientFrame::Send { .. })
        ));
    }

    #[test]
    fn ephemeral_frames_decode_and_encode() {
        assert!(matches!(
            decode(r#"{"op":"typing","conv":"c","state":"start"}"#),
            Ok(ClientFrame::Typing {
                state: TypingState::Start,
                ..
            })
        ));
        assert!(matches!(
            decode(r#"{"op":"typing","conv":"c","state":"maybe"}"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode(r#"{"op":"read","conv":"c","seq":4}"#),
            Ok(ClientFrame::Read { seq: 4, .. })
        ));
        let mut counts = BTreeMap::new();
        counts.insert(ConvId::new("c").unwrap(), 3);
        assert_eq!(
            encode(&ServerFrame::Unread { counts }),
            r#"{"op":"unread","counts":{"c":3}}"#
        );
        let e = chatfabric_nats::wire::EphemeralEvent::Typing {
            conv: ConvId::new("c").unwrap(),
            user: UserId::new("bob").unwrap(),
            state: TypingState::Stop,
            expires_in: 6000,
        };
        assert_eq!(
            encode_event(&e),
            r#"{"op":"typing","conv":"c","user":"bob","state":"stop","expires_in":6000}"#
        );
    }

    #[test]
    fn msg_frame_round_trips() {
        let m = chatfabric_nats::wire::StoredMessage {
            via: None,
            id: "i".into(),
            conv: ConvId::new("c").unwrap(),
            sender: UserId::new("alice").unwrap(),
            client_id: "k1".into(),
            ts: 7,
            body: "hi \"there\"\n".into(),
        };
        let d: Delivered = serde_json::from_str(&encode_msg(&m, 42, 41)).unwrap();
        assert_eq!((d.seq, d.prev, d.body.as_str()), (42, 41, m.body.as_str()));
    }

    /// serde names a variant it does not know in its error ("unknown variant"); a name of the
    /// table that serde does not know is a table out of step with the frames.
    #[test]
    fn the_table_names_what_serde_decodes() {
        for op in ClientOp::ALL {
            let frame = format!(r#"{{"op":"{}"}}"#, op.name());
            if let Err(e) = serde_json::from_str::<ClientFrame>(&frame) {
                assert!(!e.to_string().contains("unknown variant"), "{op:?}: {e}");
            }
        }
        let replies = ServerOp::ALL.iter().filter(|op| {
            let frame = format!(r#"{{"op":"{}"}}"#, op.name());
            !matches!(serde_json::from_str::<ServerFrame>(&frame), Err(e) if e.to_string().contains("unknown variant"))
        });
        // Every reply of `ServerFrame` is in the table; `msg`, `history` and `typing` are not
        // `ServerFrame`s.
        assert_eq!(replies.count(), ServerOp::ALL.len() - 3);
    }
}
