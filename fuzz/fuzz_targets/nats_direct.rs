//! NATS-direct request payloads (bots' posts and history requests) and the subjects they arrive
//! on: decoded or refused, never a panic; an accepted subject names exactly one conversation and
//! one requester.
#![no_main]

use chatfabric_gateway::ingest::{decode_post, decode_read};
use chatfabric_nats::subject::parse_direct;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_post(data);
    let _ = decode_read(data);
    if let Ok(subject) = std::str::from_utf8(data) {
        if let Some((conv, user)) = parse_direct(subject) {
            assert!(!conv.as_str().contains('.') && !user.as_str().contains('.'));
        }
    }
});
