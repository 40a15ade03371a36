//! Who a request speaks for.

use chatfabric_nats::UserId;

/// The authenticated identity behind a request, as its front end established it: from a verified
/// token (WebSocket, event stream, HTTP) or from the NATS subject that nats-server permissions
/// bind to a bot (the NATS ingest).
///
/// Every operation of the [`Service`](super::Service) decides what each kind may do, in one
/// place. A request of a user or a bot acts as that user: membership is checked for them, and a
/// message they send names them as its sender. The server API for application backends will add
/// a kind that acts for the application (creating conversations with members, posting as a
/// service or on behalf of a user); [`Caller::acting_as`] is where that kind will name the user
/// it acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person's client: WebSocket, event stream or REST, with a user token.
    User(UserId),
    /// A bot or device speaking NATS directly, bound to its user id by nats-server.
    Bot(UserId),
}

impl Caller {
    /// The user the request acts as: whose membership is checked, who is named as the sender.
    pub fn acting_as(&self) -> &UserId {
        match self {
            Self::User(user) | Self::Bot(user) => user,
        }
    }
}
