//! Event signatures: `Chatfabric-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.
//!
//! The MAC covers `"<t>." + body` (the exact bytes POSTed), so a receiver that checks it knows the
//! body came from a holder of the secret, and by checking `t` against its clock (e.g. five minutes
//! either way) refuses replays of old deliveries. Several secrets give several `v1=` entries, so a
//! secret can be rotated without a window where receivers refuse events: add the new one, switch
//! the receiver, remove the old one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Chatfabric-Signature";

type HmacSha256 = Hmac<Sha256>;

/// Signs event bodies with one or more shared secrets.
#[derive(Clone)]
pub struct Signer {
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secret(s))", self.secrets.len())
    }
}

/// No secret was given: unsigned webhooks would let anyone who finds the URL forge events.
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret is required (--webhook-secret, CHATFABRIC_WEBHOOK_SECRET or --webhook-secret-file)")]
pub struct NoSecret;

impl Signer {
    /// A signer with every non-empty secret of `secrets`; at least one is required.
    pub fn new(secrets: impl IntoIterator<Item = Vec<u8>>) -> Result<Self, NoSecret> {
        let secrets: Vec<Vec<u8>> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        if secrets.is_empty() {
            return Err(NoSecret);
        }
        Ok(Self { secrets })
    }

    /// The header value for `body` sent at `unix` seconds.
    pub fn header(&self, unix: u64, body: &[u8]) -> String {
        let mut out = format!("t={unix}");
        for secret in &self.secrets {
            out.push_str(",v1=");
            out.push_str(&hex(&mac(secret, unix, body)));
        }
        out
    }
}

fn mac(secret: &[u8], unix: u64, body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(unix.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Why a signature was refused by [`verify`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// The header is not `t=<digits>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed signature header")]
    Malformed,
    /// `t` is further from `now` than the tolerance: a replay, or a skewed clock.
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` matches the body under the secret.
    #[error("no signature matches")]
    Mismatch,
}

/// Checks a `Chatfabric-Signature` header as a receiver would (the reference for the examples
/// in docs/WEBHOOKS.md): some `v1` must equal HMAC-SHA256(secret, `"<t>." + body`), compared in
/// constant time, and `t` must be within `tolerance_secs` of `now`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| VerifyError::Malformed)?),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if sigs.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if t.abs_diff(now) > tolerance_secs {
        return Err(VerifyError::Stale);
    }
    for sig in sigs {
        let Some(bytes) = unhex(sig) else { continue };
        let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        // `verify_slice` compares in constant time.
        if m.verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_dot_body() {
        // Reference value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        let signer = Signer::new([b"secret".to_vec()]).unwrap();
        let header = signer.header(1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        assert_eq!(
            verify(b"secret", &header, br#"{"a":1}"#, 1_700_000_100, 300),
            Ok(())
        );
    }

    #[test]
    fn refuses_other_bodies_secrets_times_and_garbage() {
        let signer = Signer::new([b"old".to_vec(), b"new".to_vec()]).unwrap();
        let header = signer.header(100, b"body");
        assert_eq!(verify(b"new", &header, b"body", 100, 300), Ok(()));
        assert_eq!(verify(b"old", &header, b"body", 100, 300), Ok(()));
        assert_eq!(
            verify(b"other", &header, b"body", 100, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"new", &header, b"body!", 100, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"new", &header, b"body", 1000, 300),
            Err(VerifyError::Stale)
        );
        for bad in ["", "t=x,v1=00", "v1=00", "t=100"] {
            assert_eq!(
                verify(b"new", bad, b"body", 100, 300),
                Err(VerifyError::Malformed),
                "{bad}"
            );
        }
        assert!(Signer::new([Vec::new()]).is_err());
    }
}
