//! Response helpers shared by the HTTP routes: bodies, JSON errors with the status of their
//! code, plain text, the bearer token, and the abort handle of a request's connection.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::query;
use crate::edge;
use crate::protocol::ErrorCode;
use crate::service::ServiceError;

/// What a route answers.
pub(crate) type Reply = Result<Response<Body>, http::Error>;

/// Every response body: a full buffer, or a stream (server-sent events).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A complete body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Drops the HTTP connection it came with once cancelled; in each request's extensions.
#[derive(Clone)]
pub(crate) struct Abort(pub(crate) CancellationToken);

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(req: &Request<Incoming>) -> Option<&str> {
    query::bearer(req.headers().get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// An error as JSON, with the HTTP status matching its code.
pub(crate) fn json_error(code: ErrorCode, message: &str) -> Reply {
    let status = match code {
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden | ErrorCode::ServerManaged => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Reply {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(body))
}

/// A service error as JSON, with its client-facing code (see [`edge`](crate::edge)).
pub(crate) fn service_error(e: &ServiceError) -> Reply {
    json_error(edge::code(e), &e.to_string())
}

/// A JSON body with status 200.
pub(crate) fn json(body: String) -> Reply {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
}
