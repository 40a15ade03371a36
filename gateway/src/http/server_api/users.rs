//! `/v1/server/users/{user}/disconnect` and `/v1/server/presence`.

use chatfabric_nats::wire::now_ms;
use chatfabric_nats::UserId;
use http::Request;
use hyper::body::Incoming;
use serde::Deserialize;

use super::request::{path_id, read_json, Refused};
use crate::http::reply::{json, Reply};
use crate::protocol::ErrorCode;
use crate::service::{Caller, MAX_PRESENCE_USERS};
use crate::state::State;

/// `POST /v1/server/users/{user}/disconnect`; an empty body is a plain disconnect.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    /// Revoke the user's tokens issued before now.
    #[serde(default)]
    revoke: bool,
    /// Revoke the user's tokens issued before this time (seconds since the epoch).
    #[serde(default)]
    revoke_before: Option<u64>,
}

pub(super) async fn disconnect(
    req: Request<Incoming>,
    state: &State,
    caller: &Caller,
    user: &str,
) -> Result<Reply, Refused> {
    let user: UserId = path_id(user, "user")?;
    let body: DisconnectBody = read_json(req, state).await?;
    let before = match (body.revoke, body.revoke_before) {
        (true, Some(_)) => {
            return Err(Refused::new(
                ErrorCode::Invalid,
                "name revoke or revoke_before, not both",
            ))
        }
        (true, None) => Some(now_ms() / 1000),
        (false, before) => before,
    };
    let d = state.service.disconnect(caller, &user, before).await?;
    let done = serde_json::json!({"user": user, "at": d.at, "tokens_before": d.tokens_before});
    Ok(json(done.to_string()))
}

/// `GET /v1/server/presence?user=a&user=b`.
pub(super) async fn presence(
    req: &Request<Incoming>,
    state: &State,
    caller: &Caller,
) -> Result<Reply, Refused> {
    let mut users = Vec::new();
    for (key, value) in req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        if key == "user" {
            users.push(path_id::<UserId>(value, "user")?);
        }
    }
    if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
        return Err(Refused::new(
            ErrorCode::Invalid,
            "name 1 to 100 users with user=",
        ));
    }
    let found = state.service.presence_of(caller, &users).await?;
    let list: Vec<_> = users
        .iter()
        .zip(found)
        .map(|(user, p)| serde_json::json!({"user": user, "online": p.online, "last_seen": p.last_seen}))
        .collect();
    Ok(json(serde_json::json!({ "presence": list }).to_string()))
}
