//! The SSE `Last-Event-ID` cursor: any header value parses (unparsable parts are ignored), and a
//! parsed cursor formats and parses back to itself.
#![no_main]

use chatfabric_gateway::http::sse::{format_cursor, parse_cursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cursor = parse_cursor(text);
    assert_eq!(parse_cursor(&format_cursor(&cursor)), cursor);
});
