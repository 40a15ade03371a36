//! Who a request speaks for.

use chatfabric_nats::wire::Via;
use chatfabric_nats::UserId;

/// The authenticated identity behind a request, as its front end established it: from a verified
/// token (WebSocket, event stream, HTTP), from the NATS subject that nats-server permissions
/// bind to a bot (the NATS ingest), or from a server API key (the application backend).
///
/// Every operation of the [`Service`](super::Service) decides what each kind may do, in one
/// place. A request of a user or a bot acts as that user: membership is checked for them, and a
/// message they send names them as its sender. The application backend acts either as a named
/// service (no membership of its own; it manages any conversation) or on behalf of a user (whose
/// membership is checked); what it posts is marked with its [`Via`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person's client: WebSocket, event stream or REST, with a user token.
    User(UserId),
    /// A bot or device speaking NATS directly, bound to its user id by nats-server.
    Bot(UserId),
    /// The application backend as a service: a service id (`svc_<name>`,
    /// [`UserId::is_service`]) that no user can have. It may manage and read any conversation
    /// and post as this service.
    Service(UserId),
    /// The application backend on behalf of a user: the user's membership is checked, and what
    /// it posts names the user as sender, marked `via: backend`.
    OnBehalf(UserId),
}

impl Caller {
    /// The user (or service id) the request acts as: whose membership is checked, who is named
    /// as the sender.
    pub fn acting_as(&self) -> &UserId {
        match self {
            Self::User(user) | Self::Bot(user) | Self::Service(user) | Self::OnBehalf(user) => user,
        }
    }

    /// The marking of what this caller posts (none for the sender's own sends).
    pub fn via(&self) -> Option<Via> {
        match self {
            Self::User(_) | Self::Bot(_) => None,
            Self::Service(_) => Some(Via::Service),
            Self::OnBehalf(_) => Some(Via::Backend),
        }
    }

    /// Whether the request comes from a client (a user's or a bot's), not the backend.
    pub fn is_client(&self) -> bool {
        matches!(self, Self::User(_) | Self::Bot(_))
    }
}
