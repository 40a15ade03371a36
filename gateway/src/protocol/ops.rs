//! The names of every `op`: the one table of them. Frames are tagged with these names on the wire
//! (serde's `snake_case` of the variant names; a test checks that the two agree), and metrics,
//! decoding and the event stream's cursor use them from here.

macro_rules! ops {
    ($(#[$meta:meta])* $ty:ident { $($(#[$doc:meta])* $op:ident = $name:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $ty {
            $($(#[$doc])* $op,)*
        }

        impl $ty {
            /// Every op, in the order of the table.
            pub const ALL: &'static [$ty] = &[$($ty::$op,)*];

            /// The op's name on the wire (also its metric label).
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$op => $name,)*
                }
            }

            /// The op named `name`, if there is one.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|op| op.name() == name)
            }
        }
    };
}

ops! {
    /// The op of a client frame (`ClientFrame::op`).
    ClientOp {
        /// `auth`
        Auth = "auth",
        /// `subscribe`
        Subscribe = "subscribe",
        /// `unsubscribe`
        Unsubscribe = "unsubscribe",
        /// `send`
        Send = "send",
        /// `create`
        Create = "create",
        /// `add_member`
        AddMember = "add_member",
        /// `remove_member`
        RemoveMember = "remove_member",
        /// `conversations`
        Conversations = "conversations",
        /// `members`
        Members = "members",
        /// `history`
        History = "history",
        /// `typing`
        Typing = "typing",
        /// `read`
        Read = "read",
        /// `presence`
        Presence = "presence",
        /// `ping`
        Ping = "ping",
    }
}

ops! {
    /// The op of a frame to a client: the replies of `ServerFrame::op`,
    /// and the frames encoded once for many readers (`msg`, `history`, events).
    ServerOp {
        /// `ready`
        Ready = "ready",
        /// `subscribed`
        Subscribed = "subscribed",
        /// `unsubscribed`
        Unsubscribed = "unsubscribed",
        /// `ack`
        Ack = "ack",
        /// `conversation`
        Conversation = "conversation",
        /// `conversations`
        Conversations = "conversations",
        /// `members`
        Members = "members",
        /// `presence` (a reply, and an event)
        Presence = "presence",
        /// `read` (a reply, and an event)
        Read = "read",
        /// `unread`
        Unread = "unread",
        /// `pong`
        Pong = "pong",
        /// `error`
        Error = "error",
        /// `msg`: a delivered message
        Msg = "msg",
        /// `history`: a page
        History = "history",
        /// `typing`: an event
        Typing = "typing",
    }
}
