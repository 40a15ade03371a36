//! The parts of HTTP requests the gateway parses itself: query strings and the bearer token.
//!
//! Unknown query parameters are ignored (as unknown fields of client frames are), so that a
//! newer client, or a library adding a cache buster, still works against an older gateway. Values
//! are taken as they come: every value the gateway reads (integers, ids, tokens) is URL-safe.

use chatfabric_nats::ConvId;

use crate::protocol::DEFAULT_HISTORY_LIMIT;

/// Why a query string was refused; the client gets `invalid` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `before`, `after` or `limit` is not a non-negative integer.
    #[error("before, after and limit are integers")]
    NotAnInteger,
    /// A `conv` is not a valid conversation id.
    #[error("invalid conversation id")]
    BadConversation,
}

/// `?before=&after=&limit=` of a history page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with `seq < before`.
    pub before: Option<u64>,
    /// Only messages with `seq > after`.
    pub after: Option<u64>,
    /// The page size asked for (validated by the history service).
    pub limit: usize,
}

/// Parses a history page's query string.
pub fn history_query(query: &str) -> Result<HistoryQuery, QueryError> {
    let mut q = HistoryQuery {
        before: None,
        after: None,
        limit: DEFAULT_HISTORY_LIMIT,
    };
    for (key, value) in pairs(query) {
        let slot = match key {
            "before" => &mut q.before,
            "after" => &mut q.after,
            "limit" => {
                let n: u64 = value.parse().map_err(|_| QueryError::NotAnInteger)?;
                q.limit = usize::try_from(n).unwrap_or(usize::MAX);
                continue;
            }
            _ => continue,
        };
        *slot = Some(value.parse().map_err(|_| QueryError::NotAnInteger)?);
    }
    Ok(q)
}

/// `?token=&conv=&conv=` of an event stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventsQuery {
    /// A token in the query, for clients that cannot send headers (EventSource).
    pub token: Option<String>,
    /// The conversations asked for (none: the user's conversations).
    pub convs: Vec<ConvId>,
}

/// Parses an event stream's query string.
pub fn events_query(query: &str) -> Result<EventsQuery, QueryError> {
    let mut q = EventsQuery::default();
    for (key, value) in pairs(query) {
        match key {
            "token" if q.token.is_none() => q.token = Some(value.to_owned()),
            "conv" => q
                .convs
                .push(ConvId::new(value).map_err(|_| QueryError::BadConversation)?),
            _ => {}
        }
    }
    Ok(q)
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    header.strip_prefix("Bearer ").filter(|t| !t.is_empty())
}

fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_queries() {
        assert_eq!(
            history_query("before=10&limit=5&_=1795437600"),
            Ok(HistoryQuery {
                before: Some(10),
                after: None,
                limit: 5
            })
        );
        assert_eq!(history_query("after=x"), Err(QueryError::NotAnInteger));
        assert_eq!(history_query("limit=-1"), Err(QueryError::NotAnInteger));
        assert_eq!(
            history_query("").map(|q| q.limit),
            Ok(DEFAULT_HISTORY_LIMIT)
        );
    }

    #[test]
    fn event_queries() {
        let q = events_query("conv=a&conv=b&token=t&token=u&v=2").unwrap();
        assert_eq!(q.token.as_deref(), Some("t"));
        assert_eq!(q.convs.len(), 2);
        assert_eq!(events_query("conv=a.b"), Err(QueryError::BadConversation));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Basic abc"), None);
    }
}
