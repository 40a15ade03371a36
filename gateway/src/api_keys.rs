//! Server API keys: who may call the server API (`/v1/server/...`), and for what.
//!
//! The gateway holds only each key's SHA-256 digest, never the key: a key is 32 random bytes
//! (`cfk_` and 64 hex digits), so a digest cannot be reversed or guessed, and a leaked key file
//! lets nobody call the API. A presented key is hashed and compared with every digest in
//! constant time, so timing tells nothing about how much of it matched.
//!
//! The key file (`--api-keys FILE`) has one key per line, `#` comments and blank lines
//! ignored:
//!
//! ```text
//! # name     scopes                       sha256 of the key
//! crm        conversations,messages,users 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! `chatfabric api-key --name crm --scopes conversations,messages` prints a new key and its
//! line. Names are ids (`[A-Za-z0-9_-]`, at most 60 bytes): the application acts as the
//! service `svc_<name>` when it manages conversations (their `created_by`, members'
//! `added_by`).

use std::fmt;

use chatfabric_nats::UserId;
use sha2::{Digest, Sha256};

/// What a key may do; each endpoint of the server API needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Create conversations, change and read their members, list a user's conversations.
    Conversations,
    /// Post messages (as a service or on a user's behalf) and read history.
    Messages,
    /// Disconnect users, revoke their tokens, read their presence.
    Users,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Conversations, Scope::Messages, Scope::Users];

    /// The scope's name in the key file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversations => "conversations",
            Self::Messages => "messages",
            Self::Users => "users",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// Why a key file or key line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// A line is not `name scopes digest`.
    #[error("line {line}: expected `name scopes sha256-hex`")]
    Format {
        /// 1-based line number.
        line: usize,
    },
    /// The name is not an id of at most 60 bytes.
    #[error("line {line}: key name {name:?} must be 1 to 60 of A-Z a-z 0-9 _ -")]
    Name {
        /// 1-based line number.
        line: usize,
        /// The name.
        name: String,
    },
    /// A scope is unknown.
    #[error("line {line}: unknown scope {scope:?} (conversations, messages, users)")]
    Scope {
        /// 1-based line number.
        line: usize,
        /// The scope.
        scope: String,
    },
    /// The digest is not 64 hex digits.
    #[error("line {line}: the digest must be 64 hex digits (the key's SHA-256)")]
    Digest {
        /// 1-based line number.
        line: usize,
    },
    /// Two lines share a name.
    #[error("line {line}: key name {name:?} is used twice")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The name.
        name: String,
    },
}

/// One key: its name, scopes and digest.
struct Entry {
    name: String,
    service: UserId,
    scopes: Vec<Scope>,
    digest: [u8; 32],
}

/// A key that matched: the application caller it authenticates.
#[derive(Debug, Clone)]
pub struct KeyHolder<'a> {
    /// The key's name (in logs).
    pub name: &'a str,
    /// The service id the application acts as with this key (`svc_<name>`).
    pub service: &'a UserId,
    scopes: &'a [Scope],
}

impl KeyHolder<'_> {
    /// Whether the key has `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// The keys a gateway accepts. Empty: the server API answers every request `unauthenticated`.
#[derive(Default)]
pub struct ApiKeys {
    entries: Vec<Entry>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("ApiKeys").field("names", &names).finish()
    }
}

impl ApiKeys {
    /// Parses a key file's text.
    pub fn parse(text: &str) -> Result<Self, ApiKeyError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let parts: Vec<&str> = content.split_whitespace().collect();
            let [name, scopes, digest] = parts.as_slice() else {
                return Err(ApiKeyError::Format { line });
            };
            let name_err = || ApiKeyError::Name {
                line,
                name: name.to_string(),
            };
            if name.len() > 60 {
                return Err(name_err());
            }
            let service = UserId::service(name).map_err(|_| name_err())?;
            let scopes = scopes
                .split(',')
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| ApiKeyError::Scope {
                        line,
                        scope: s.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let digest = parse_hex(digest).ok_or(ApiKeyError::Digest { line })?;
            if entries.iter().any(|e| e.name == *name) {
                return Err(ApiKeyError::Duplicate {
                    line,
                    name: name.to_string(),
                });
            }
            entries.push(Entry {
                name: name.to_string(),
                service,
                scopes,
                digest,
            });
        }
        Ok(Self { entries })
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The holder of `key`, if it is one of ours. Every digest is compared, each in constant
    /// time, whichever matches.
    pub fn find(&self, key: &str) -> Option<KeyHolder<'_>> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if constant_time_eq(&entry.digest, &digest) && found.is_none() {
                found = Some(KeyHolder {
                    name: &entry.name,
                    service: &entry.service,
                    scopes: &entry.scopes,
                });
            }
        }
        found
    }
}

/// A new key and its key-file line.
pub fn generate(name: &str, scopes: &[Scope], random: [u8; 32]) -> (String, String) {
    let key = format!("cfk_{}", hex(&random));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let line = format!("{name} {} {}", scopes.join(","), digest_hex(&key));
    (key, line)
}

/// The hex SHA-256 of `key`, as the key file holds it.
pub fn digest_hex(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Whether `a == b`, in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_found_with_its_scopes() {
        let (key, line) = generate("crm", &[Scope::Messages], [7; 32]);
        let keys = ApiKeys::parse(&format!("# comment\n\n{line}  # trailing\n")).unwrap();
        let holder = keys.find(&key).expect("found");
        assert_eq!(holder.name, "crm");
        assert_eq!(holder.service.as_str(), "svc_crm");
        assert!(holder.may(Scope::Messages) && !holder.may(Scope::Users));
        assert!(keys.find("cfk_wrong").is_none());
        assert!(keys.find(&key[..key.len() - 1]).is_none());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let digest = digest_hex("k");
        for (text, want) in [
            ("a b".to_string(), "line 1"),
            (format!("\nbad.name users {digest}"), "line 2"),
            (format!("a nope {digest}"), "unknown scope"),
            ("a users 12".to_string(), "64 hex"),
            (format!("a users {digest}\na users {digest}"), "twice"),
        ] {
            let err = ApiKeys::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
