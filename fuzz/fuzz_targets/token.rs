//! The token path up to signature checking: any bytes offered as a bearer token or `auth` frame
//! token are refused with an error (or, if correctly signed, accepted), never a panic.
#![no_main]

use std::sync::OnceLock;

use chatfabric_gateway::Authenticator;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    let auth = AUTH.get_or_init(|| Authenticator::hs256(b"fuzz-secret"));
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = auth.verify(token);
});
