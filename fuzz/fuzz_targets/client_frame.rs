//! A client's WebSocket text frame: decoded into a typed frame or a documented error, never a
//! panic; whatever decodes carries its `ref` back.
#![no_main]

use chatfabric_gateway::protocol::{decode, reference_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Ok(frame) => {
            let _ = reference_of(&frame);
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
});
