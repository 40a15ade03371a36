//! What the gateway parses of an HTTP request itself: the history and event-stream query strings
//! and the bearer header. Parsed or refused, never a panic; unknown parameters are ignored.
#![no_main]

use chatfabric_gateway::http::query::{bearer, events_query, history_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = history_query(text);
    if let Ok(q) = events_query(text) {
        assert!(q.convs.iter().all(|c| !c.as_str().contains(['.', '*', '>'])));
    }
    let _ = bearer(text);
});
