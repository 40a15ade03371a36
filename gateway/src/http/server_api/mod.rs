//! The server API: the application backend's HTTP/JSON interface, `/v1/server/...`, on every
//! gateway (docs/SERVER_API.md).
//!
//! Each request carries an API key (`Authorization: Bearer cfk_...`) that must hold the scope of
//! its endpoint; the key makes the request a [`Caller::Service`] (`svc_<key name>`), or, for a
//! message posted on a user's behalf, a [`Caller::OnBehalf`] of that user. Errors are the
//! client API's JSON (`{"code":..,"message":..}`) with the status of their code.
//!
//! # Layout
//!
//! - this file: routing, the key check.
//! - `request`: request bodies, path ids, and the refusal when either is bad.
//! - `conversations`: create, read, members, a user's listing.
//! - `messages`: post as a service or on a user's behalf, history.
//! - `users`: disconnect (and revoke), presence.

use http::{Method, Request};
use hyper::body::Incoming;

use super::reply::{bearer, json_error, Reply};
use crate::api_keys::Scope;
use crate::metrics::Kind;
use crate::protocol::ErrorCode;
use crate::service::Caller;
use crate::state::State;
use request::Refused;

mod conversations;
mod messages;
mod request;
mod users;

/// The prefix of every server API path.
pub(crate) const PREFIX: &str = "/v1/server/";

/// Routes a request under [`PREFIX`].
pub(crate) async fn route(req: Request<Incoming>, state: &State) -> Reply {
    let path = req.uri().path().trim_start_matches(PREFIX).to_string();
    let parts: Vec<&str> = path.split('/').collect();
    let method = req.method().clone();
    let scope = match (&method, parts.as_slice()) {
        (_, ["conversations", ..]) if parts.get(2) == Some(&"messages") => Scope::Messages,
        (_, ["conversations", ..]) | (&Method::GET, ["users", _, "conversations"]) => {
            Scope::Conversations
        }
        (_, ["users", ..]) | (_, ["presence"]) => Scope::Users,
        _ => return json_error(ErrorCode::NotFound, "no such endpoint"),
    };
    let caller = match authorize(&req, state, scope) {
        Ok(caller) => caller,
        Err(refused) => return refused.reply(),
    };
    let count = |endpoint: &'static str| {
        state
            .metrics
            .server_api_requests
            .get_or_create(&Kind { kind: endpoint })
            .inc();
    };
    match (&method, parts.as_slice()) {
        (&Method::POST, ["conversations"]) => {
            count("create_conversation");
            conversations::create(req, state, &caller)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::GET, ["conversations", conv]) => {
            count("read_conversation");
            conversations::read(state, &caller, conv)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::POST, ["conversations", conv, "members"]) => {
            count("add_member");
            conversations::add(req, state, &caller, conv)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::DELETE, ["conversations", conv, "members", user]) => {
            count("remove_member");
            conversations::remove(state, &caller, conv, user)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::GET, ["users", user, "conversations"]) => {
            count("list_conversations");
            conversations::listing(&req, state, &caller, user)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::POST, ["conversations", conv, "messages"]) => {
            count("post_message");
            messages::post(req, state, conv)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::GET, ["conversations", conv, "messages"]) => {
            count("read_history");
            messages::history(&req, state, &caller, conv)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::POST, ["users", user, "disconnect"]) => {
            count("disconnect");
            users::disconnect(req, state, &caller, user)
                .await
                .unwrap_or_else(Refused::reply)
        }
        (&Method::GET, ["presence"]) => {
            count("presence");
            users::presence(&req, state, &caller)
                .await
                .unwrap_or_else(Refused::reply)
        }
        _ => json_error(ErrorCode::NotFound, "no such endpoint"),
    }
}

/// The application caller of a request with a known key that holds `scope`, within the key's
/// rate.
fn authorize(req: &Request<Incoming>, state: &State, scope: Scope) -> Result<Caller, Refused> {
    let Some(holder) = bearer(req).and_then(|key| state.api_keys.find(key)) else {
        return Err(Refused::new(
            ErrorCode::Unauthenticated,
            "missing or unknown API key (Authorization: Bearer cfk_...)",
        ));
    };
    if !holder.may(scope) {
        return Err(Refused::new(
            ErrorCode::Forbidden,
            format!("this API key lacks the {} scope", scope.as_str()),
        ));
    }
    let limits = &state.limits;
    if !state.api_limits.allow(
        holder.service,
        limits.server_api_rate,
        limits.server_api_burst,
    ) {
        return Err(Refused::new(
            ErrorCode::RateLimited,
            "too many server API requests with this key; slow down",
        ));
    }
    tracing::debug!(key = holder.name, path = %req.uri().path(), "server API request");
    Ok(Caller::Service(holder.service.clone()))
}
