//! Reading a server API request: its JSON body and the ids in its path, and the refusal (code and
//! message) when either is bad or the service refuses the request.

use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use crate::edge;
use crate::http::reply::{json_error, Reply};
use crate::protocol::ErrorCode;
use crate::service::ServiceError;
use crate::state::State;

/// Largest request body of the server API, bytes (a create with a full group of long ids fits).
const MAX_REQUEST: usize = 128 * 1024;

/// A request refused before it reached the service: its code and message.
pub(super) struct Refused(ErrorCode, String);

impl Refused {
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(code, message.into())
    }

    pub(super) fn reply(self) -> Reply {
        json_error(self.0, &self.1)
    }
}

impl From<ServiceError> for Refused {
    fn from(e: ServiceError) -> Self {
        Self(edge::code(&e), e.to_string())
    }
}

/// Reads and parses a JSON request body (within [`MAX_REQUEST`] and the request timeout),
/// whatever its `Content-Type` says (curl's `-d` says form data).
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    state: &State,
) -> Result<T, Refused> {
    let body = Limited::new(req.into_body(), MAX_REQUEST).collect();
    let raw = match tokio::time::timeout(state.limits.request_timeout, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Err(Refused::new(ErrorCode::TooLarge, "request body too large")),
        Err(_) => {
            return Err(Refused::new(
                ErrorCode::Invalid,
                "request body not received in time",
            ))
        }
    };
    // An empty body reads as `{}`: endpoints whose fields are all optional need none.
    let raw: &[u8] = if raw.is_empty() { b"{}" } else { &raw };
    serde_json::from_slice(raw).map_err(|e| Refused::new(ErrorCode::Invalid, e.to_string()))
}

/// Parses an id from the path, or answers `invalid`.
pub(super) fn path_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, Refused> {
    raw.parse()
        .map_err(|_| Refused::new(ErrorCode::Invalid, format!("invalid {what} id")))
}
