//! `/v1/server/conversations...` and `/v1/server/users/{user}/conversations`.

use chatfabric_nats::wire::{ConvKind, ConversationInfo};
use chatfabric_nats::{ConvId, UserId};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{path_id, read_json};
use crate::http::reply::{json, json_error, service_error, Reply};
use crate::membership::managed::{Outcome, Wanted};
use crate::protocol::ErrorCode;
use crate::service::{Caller, Created};
use crate::state::State;

/// `POST /v1/server/conversations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: ConvId,
    kind: ConvKind,
    #[serde(default)]
    title: Option<String>,
    members: Vec<UserId>,
}

/// A conversation with its members, as the server API answers it.
#[derive(Serialize)]
struct ConversationReply<'a> {
    #[serde(flatten)]
    info: &'a ConversationInfo,
    members: &'a [UserId],
    /// Whether this request created it (false: it existed as asked, a retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
}

fn conversation(created: &Created, outcome: Option<Outcome>) -> Reply {
    let body = ConversationReply {
        info: &created.info,
        members: &created.members,
        created: outcome.map(|o| o == Outcome::Created),
    };
    let mut resp = json(serde_json::to_string(&body).unwrap_or_default())?;
    if outcome == Some(Outcome::Created) {
        *resp.status_mut() = StatusCode::CREATED;
    }
    Ok(resp)
}

fn members(conv: &ConvId, members: &[UserId]) -> Reply {
    json(serde_json::json!({"conv": conv, "members": members}).to_string())
}

pub(super) async fn create(req: Request<Incoming>, state: &State, caller: &Caller) -> Reply {
    let body: CreateBody = match read_json(req, state).await {
        Ok(b) => b,
        Err(refused) => return refused.reply(),
    };
    let wanted = Wanted {
        conv: body.id,
        kind: body.kind,
        title: body.title,
        members: body.members,
    };
    match state.service.establish(caller, wanted).await {
        Ok((created, outcome)) => conversation(&created, Some(outcome)),
        Err(e) => service_error(&e),
    }
}

pub(super) async fn read(state: &State, caller: &Caller, conv: &str) -> Reply {
    let conv: ConvId = match path_id(conv, "conversation") {
        Ok(c) => c,
        Err(refused) => return refused.reply(),
    };
    match state.service.conversation(caller, &conv).await {
        Ok(created) => conversation(&created, None),
        Err(e) => service_error(&e),
    }
}

/// `POST /v1/server/conversations/{conv}/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    user: UserId,
}

pub(super) async fn add(
    req: Request<Incoming>,
    state: &State,
    caller: &Caller,
    conv: &str,
) -> Reply {
    let conv: ConvId = match path_id(conv, "conversation") {
        Ok(c) => c,
        Err(refused) => return refused.reply(),
    };
    let body: AddBody = match read_json(req, state).await {
        Ok(b) => b,
        Err(refused) => return refused.reply(),
    };
    match state
        .service
        .add_as_service(caller, &conv, &body.user)
        .await
    {
        Ok(list) => members(&conv, &list),
        Err(e) => service_error(&e),
    }
}

pub(super) async fn remove(state: &State, caller: &Caller, conv: &str, user: &str) -> Reply {
    let (conv, user): (ConvId, UserId) =
        match (path_id(conv, "conversation"), path_id(user, "user")) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(refused), _) | (_, Err(refused)) => return refused.reply(),
        };
    match state.service.remove_as_service(caller, &conv, &user).await {
        Ok(list) => members(&conv, &list),
        Err(e) => service_error(&e),
    }
}

/// `GET /v1/server/users/{user}/conversations?after=&limit=`.
pub(super) async fn listing(
    req: &Request<Incoming>,
    state: &State,
    caller: &Caller,
    user: &str,
) -> Reply {
    let user: UserId = match path_id(user, "user") {
        Ok(u) => u,
        Err(refused) => return refused.reply(),
    };
    let query = req.uri().query().unwrap_or_default();
    let mut after = None;
    let mut limit = None;
    for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match key {
            "after" => match path_id::<ConvId>(value, "conversation") {
                Ok(c) => after = Some(c),
                Err(refused) => return refused.reply(),
            },
            "limit" => match value.parse() {
                Ok(n) => limit = Some(n),
                Err(_) => return json_error(ErrorCode::Invalid, "limit is an integer"),
            },
            _ => {}
        }
    }
    match state
        .service
        .conversations_of(caller, &user, after.as_ref(), limit)
        .await
    {
        Ok((page, next)) => {
            json(serde_json::json!({"user": user, "conversations": page, "next": next}).to_string())
        }
        Err(e) => service_error(&e),
    }
}
