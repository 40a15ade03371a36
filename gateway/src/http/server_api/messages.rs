//! `/v1/server/conversations/{conv}/messages`: post as a service or on a user's behalf, history.

use chatfabric_nats::{ConvId, UserId};
use http::Request;
use hyper::body::Incoming;
use serde::Deserialize;

use super::request::{path_id, read_json, Refused};
use crate::edge;
use crate::http::query;
use crate::http::reply::{json, Reply};
use crate::protocol::{self, ErrorCode};
use crate::service::{Caller, HistoryRequest, SendRequest};
use crate::state::State;

/// `POST /v1/server/conversations/{conv}/messages`: exactly one of `service` and `user`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    /// Post as this service (sender `svc_<service>`, `via: service`).
    #[serde(default)]
    service: Option<String>,
    /// Post on behalf of this member (sender the user, `via: backend`).
    #[serde(default)]
    user: Option<UserId>,
    body: String,
    /// The retry key (or an `Idempotency-Key` header).
    #[serde(default)]
    idempotency_key: Option<String>,
}

pub(super) async fn post(
    req: Request<Incoming>,
    state: &State,
    conv: &str,
) -> Result<Reply, Refused> {
    let conv: ConvId = path_id(conv, "conversation")?;
    let header_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: PostBody = read_json(req, state).await?;
    let caller = match (body.service, body.user) {
        (Some(name), None) => match UserId::service(&name) {
            Ok(id) => Caller::Service(id),
            Err(_) => {
                return Err(Refused::new(
                    ErrorCode::Invalid,
                    "service is 1 to 60 of A-Z a-z 0-9 _ - (the sender becomes svc_<service>)",
                ))
            }
        },
        (None, Some(user)) => Caller::OnBehalf(user),
        _ => {
            return Err(Refused::new(
                ErrorCode::Invalid,
                "name exactly one of service and user",
            ))
        }
    };
    let Some(client_id) = body.idempotency_key.or(header_key) else {
        return Err(Refused::new(
            ErrorCode::Invalid,
            "idempotency_key (or an Idempotency-Key header) is required",
        ));
    };
    let request = SendRequest {
        conv,
        client_id,
        body: body.body,
    };
    let sent = state.service.send(&caller, request).await?;
    Ok(json(protocol::encode(&edge::ack(sent))))
}

/// `GET /v1/server/conversations/{conv}/messages?before=&after=&limit=`.
pub(super) async fn history(
    req: &Request<Incoming>,
    state: &State,
    caller: &Caller,
    conv: &str,
) -> Result<Reply, Refused> {
    let conv: ConvId = path_id(conv, "conversation")?;
    let query = match query::history_query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return Err(Refused::new(ErrorCode::Invalid, e.to_string())),
    };
    let request = HistoryRequest {
        conv,
        before: query.before,
        after: query.after,
        limit: query.limit,
    };
    let page = state.service.history(caller, &request).await?;
    Ok(json(protocol::encode_history(&request.conv, &page, None)))
}
