//! `/v1/server/users/{user}/disconnect` and `/v1/server/presence`.

use chatfabric_nats::wire::now_ms;
use chatfabric_nats::UserId;
use http::Request;
use hyper::body::Incoming;
use serde::Deserialize;

use super::{path_id, read_json};
use crate::http::reply::{json, json_error, service_error, Reply};
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
) -> Reply {
    let user: UserId = match path_id(user, "user") {
        Ok(u) => u,
        Err(refused) => return refused.reply(),
    };
    let body: DisconnectBody = match read_json(req, state).await {
        Ok(b) => b,
        Err(refused) => return refused.reply(),
    };
    let before = match (body.revoke, body.revoke_before) {
        (true, Some(_)) => {
            return json_error(ErrorCode::Invalid, "name revoke or revoke_before, not both")
        }
        (true, None) => Some(now_ms() / 1000),
        (false, before) => before,
    };
    match state.service.disconnect(caller, &user, before).await {
        Ok(d) => json(
            serde_json::json!({"user": user, "at": d.at, "tokens_before": d.tokens_before})
                .to_string(),
        ),
        Err(e) => service_error(&e),
    }
}

/// `GET /v1/server/presence?user=a&user=b`.
pub(super) async fn presence(req: &Request<Incoming>, state: &State, caller: &Caller) -> Reply {
    let mut users = Vec::new();
    for (key, value) in req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        if key == "user" {
            match path_id::<UserId>(value, "user") {
                Ok(u) => users.push(u),
                Err(refused) => return refused.reply(),
            }
        }
    }
    if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
        return json_error(ErrorCode::Invalid, "name 1 to 100 users with user=");
    }
    match state.service.presence_of(caller, &users).await {
        Ok(found) => {
            let list: Vec<_> = users
                .iter()
                .zip(found)
                .map(|(user, p)| {
                    serde_json::json!({"user": user, "online": p.online, "last_seen": p.last_seen})
                })
                .collect();
            json(serde_json::json!({ "presence": list }).to_string())
        }
        Err(e) => service_error(&e),
    }
}
