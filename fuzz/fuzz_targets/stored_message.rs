//! A stored message as the persister and the gateway read it back from JetStream: anything a
//! stream holds is either a valid message of the subject's conversation or a poison with a reason
//! (dead-lettered), never a crash.
#![no_main]

use chatfabric_nats::wire::StoredMessage;
use chatfabric_persister::drain::poison::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the subject, so both matching and mismatching conversations are tried.
    let (subject, payload) = match data.split_first() {
        Some((b, rest)) if b % 3 == 0 => ("chat.msg.0.c", rest),
        Some((b, rest)) if b % 3 == 1 => ("chat.msg.0.room-1", rest),
        Some((_, rest)) => ("chat.msg.0.a.b", rest),
        None => return,
    };
    match parse(subject, payload, 64 * 1024) {
        Ok(msg) => assert_eq!(subject.rsplit('.').next(), Some(msg.conv.as_str())),
        Err(poison) => {
            let _ = poison.reason.as_str();
        }
    }
    let _ = serde_json::from_slice::<StoredMessage>(payload);
});
