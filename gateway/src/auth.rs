//! Authentication: JWTs whose `sub` is the user id.
//!
//! Development uses an HS256 shared secret (`chatfabric token` mints such tokens); production uses an
//! asymmetric key (RS256/ES256/EdDSA public key in PEM) so gateways cannot mint tokens themselves.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chatfabric_nats::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused. Clients see all of these as close code 4001 / HTTP 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Signature, format, algorithm or expiry check failed.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The `sub` claim is not a valid user id.
    #[error("token subject is not a valid user id: {0}")]
    BadSubject(#[from] chatfabric_nats::IdError),
    /// The configured verification key could not be read.
    #[error("cannot load the token verification key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    /// The `sub` claim is a service id, which no user may have.
    #[error("token subject is a service id (svc_...), which no user may have")]
    ServiceSubject,
    /// The application revoked the user's tokens issued before a time, this one among them.
    #[error("token revoked")]
    Revoked,
    /// The configured algorithm does not verify with a public key.
    #[error("{0:?} is not a public-key algorithm; use RS256, ES256 or EdDSA")]
    NotPublicKey(Algorithm),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// Seconds of clock skew allowed between token issuer and gateway, on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// Who a verified token speaks for, and until when.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Issue time (`iat`), seconds since the Unix epoch, if the token has one.
    pub issued_at: Option<u64>,
}

/// The farthest a connection's expiry timer is set: a token valid for longer is treated as
/// expiring then (a far `exp`, up to 2^64 - 1, must not overflow the clock).
const LONGEST_WAIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Identity {
    /// When the token expires, on tokio's clock (a connection or event stream closes then).
    pub fn deadline(&self) -> tokio::time::Instant {
        let left = self
            .expires_at
            .saturating_sub(chatfabric_nats::wire::now_ms() / 1000);
        tokio::time::Instant::now() + Duration::from_secs(left).min(LONGEST_WAIT)
    }
}

/// Verifies tokens. Cheap to share behind an `Arc`.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    /// Per user, the time (seconds) before which their tokens are refused: the server API's
    /// revocations, as this gateway's watch of the users bucket last saw them.
    revoked: RwLock<HashMap<UserId, u64>>,
}

impl Authenticator {
    /// Verifies HS256 tokens signed with `secret` (development).
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with_key(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Verifies tokens signed by the private half of the PEM public key `pem` (production).
    /// The algorithm is one of RS256, ES256 or EdDSA.
    pub fn public_key(pem: &[u8], alg: Algorithm) -> Result<Self, AuthError> {
        let key = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                DecodingKey::from_rsa_pem(pem)
            }
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            other => return Err(AuthError::NotPublicKey(other)),
        }
        .map_err(AuthError::Key)?;
        Ok(Self::with_key(key, alg))
    }

    fn with_key(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        // Clock skew allowed on `exp` and `nbf`.
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key,
            validation,
            revoked: RwLock::default(),
        }
    }

    /// Checks signature, expiry, (when present) `nbf`, the subject and revocations, and returns
    /// the identity.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        let identity = Identity {
            user: UserId::new(data.claims.sub)?,
            expires_at: data.claims.exp,
            issued_at: data.claims.iat,
        };
        if identity.user.is_service() {
            return Err(AuthError::ServiceSubject);
        }
        if self.is_revoked(&identity) {
            return Err(AuthError::Revoked);
        }
        Ok(identity)
    }

    /// Whether `identity`'s token was revoked: issued before its user's revocation time, or
    /// without `iat` for a user with a revocation.
    pub fn is_revoked(&self, identity: &Identity) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        revoked
            .get(&identity.user)
            .is_some_and(|&before| identity.issued_at.is_none_or(|iat| iat < before))
    }

    /// From now on refuses `user`'s tokens issued before `before` (seconds since the epoch),
    /// or, with `None`, lifts the user's revocation.
    pub fn revoke(&self, user: &UserId, before: Option<u64>) {
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        match before {
            Some(before) => revoked.insert(user.clone(), before),
            None => revoked.remove(user),
        };
    }
}

/// Mints an HS256 token for `user`, issued now and valid for `ttl_secs` (development and tests).
pub fn mint_hs256(secret: &[u8], user: &UserId, ttl_secs: u64) -> Result<String, AuthError> {
    let now = chatfabric_nats::wire::now_ms() / 1000;
    let claims = Claims {
        sub: user.to_string(),
        exp: now + ttl_secs,
        iat: Some(now),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_own_tokens_and_refuses_forged_ones() {
        let alice = UserId::new("alice").unwrap();
        let token = mint_hs256(b"secret", &alice, 60).unwrap();
        assert_eq!(
            Authenticator::hs256(b"secret").verify(&token).unwrap().user,
            alice
        );
        assert!(Authenticator::hs256(b"other").verify(&token).is_err());
        assert!(Authenticator::hs256(b"secret").verify("not.a.jwt").is_err());
    }

    #[test]
    fn refuses_revoked_and_service_tokens() {
        let auth = Authenticator::hs256(b"s");
        let alice = UserId::new("alice").unwrap();
        let now = chatfabric_nats::wire::now_ms() / 1000;
        let token = |iat: Option<u64>| {
            let claims = Claims {
                sub: "alice".into(),
                exp: now + 60,
                iat,
            };
            let key = EncodingKey::from_secret(b"s");
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        auth.revoke(&alice, Some(now));
        assert!(matches!(
            auth.verify(&token(Some(now - 1))),
            Err(AuthError::Revoked)
        ));
        assert!(matches!(auth.verify(&token(None)), Err(AuthError::Revoked)));
        assert!(auth.verify(&token(Some(now))).is_ok());
        auth.revoke(&alice, None);
        assert!(auth.verify(&token(None)).is_ok());
        let service = UserId::service("billing").unwrap();
        let forged = mint_hs256(b"s", &service, 60).unwrap();
        assert!(matches!(
            auth.verify(&forged),
            Err(AuthError::ServiceSubject)
        ));
    }

    #[test]
    fn refuses_expired_tokens() {
        let claims = Claims {
            sub: "alice".into(),
            exp: chatfabric_nats::wire::now_ms() / 1000 - 120,
            iat: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(Authenticator::hs256(b"s").verify(&token).is_err());
    }
}
