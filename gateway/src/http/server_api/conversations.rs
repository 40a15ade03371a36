//! `/v1/server/conversations...` and `/v1/server/users/{user}/conversations`.

use chatfabric_nats::wire::{ConvKind, ConversationInfo};
use chatfabric_nats::{ConvId, UserId};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::request::{path_id, read_json, Refused};
use crate::http::reply::{json, Reply};
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

pub(super) async fn create(
    req: Request<Incoming>,
    state: &State,
    caller: &Caller,
) -> Result<Reply, Refused> {
    let body: CreateBody = read_json(req, state).await?;
    let wanted = Wanted {
        conv: body.id,
        kind: body.kind,
        title: body.title,
        members: body.members,
    };
    let (created, outcome) = state.service.establish(caller, wanted).await?;
    Ok(conversation(&created, Some(outcome)))
}

pub(super) async fn read(state: &State, caller: &Caller, conv: &str) -> Result<Reply, Refused> {
    let conv: ConvId = path_id(conv, "conversation")?;
    let created = state.service.conversation(caller, &conv).await?;
    Ok(conversation(&created, None))
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
) -> Result<Reply, Refused> {
    let conv: ConvId = path_id(conv, "conversation")?;
    let body: AddBody = read_json(req, state).await?;
    let list = state
        .service
        .add_as_service(caller, &conv, &body.user)
        .await?;
    Ok(members(&conv, &list))
}

pub(super) async fn remove(
    state: &State,
    caller: &Caller,
    conv: &str,
    user: &str,
) -> Result<Reply, Refused> {
    let (conv, user): (ConvId, UserId) =
        match (path_id(conv, "conversation"), path_id(user, "user")) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(refused), _) | (_, Err(refused)) => return Err(refused),
        };
    let list = state
        .service
        .remove_as_service(caller, &conv, &user)
        .await?;
    Ok(members(&conv, &list))
}

/// `GET /v1/server/users/{user}/conversations?after=&limit=`.
pub(super) async fn listing(
    req: &Request<Incoming>,
    state: &State,
    caller: &Caller,
    user: &str,
) -> Result<Reply, Refused> {
    let user: UserId = path_id(user, "user")?;
    let query = req.uri().query().unwrap_or_default();
    let mut after = None;
    let mut limit = None;
    for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        match key {
            "after" => after = Some(path_id::<ConvId>(value, "conversation")?),
            "limit" => match value.parse() {
                Ok(n) => limit = Some(n),
                Err(_) => return Err(Refused::new(ErrorCode::Invalid, "limit is an integer")),
            },
            _ => {}
        }
    }
    let (page, next) = state
        .service
        .conversations_of(caller, &user, after.as_ref(), limit)
        .await?;
    let listing = serde_json::json!({"user": user, "conversations": page, "next": next});
    Ok(json(listing.to_string()))
}
