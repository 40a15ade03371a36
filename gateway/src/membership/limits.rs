//! How large conversations and users' memberships may grow.

/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// Most conversations one user may belong to (their index is one KV value).
pub const MAX_CONVERSATIONS_PER_USER: usize = 5000;
/// Longest group title, in bytes.
pub const MAX_TITLE_LEN: usize = 200;
/// Of a user's conversations, most that others may put them in (groups they add them to, direct
/// conversations they open with them): the rest is the user's own, so others can never lock them out.
pub const MAX_ADDED_BY_OTHERS: usize = 4000;
/// Largest page of a `conversations` listing: its frame stays below the connection's write
/// buffer (256 KiB) even with every title at its longest and fully escaped.
pub const MAX_LISTING_PAGE: usize = 100;

/// How many conversations a user may be in.
#[derive(Debug, Clone, Copy)]
pub struct ConversationLimits {
    /// In all ([`MAX_CONVERSATIONS_PER_USER`]).
    pub per_user: usize,
    /// Put there by others ([`MAX_ADDED_BY_OTHERS`]): once a user is in this many, others can no
    /// longer add them; the user's own creates keep working up to `per_user`.
    pub added_by_others: usize,
}

impl Default for ConversationLimits {
    fn default() -> Self {
        Self {
            per_user: MAX_CONVERSATIONS_PER_USER,
            added_by_others: MAX_ADDED_BY_OTHERS,
        }
    }
}

pub(super) const TOO_MANY_TO_BE_ADDED: &str =
    "this user is in too many conversations to be added to more by others";

/// What clients (users' connections and bots) may do to membership themselves
/// (`--client-membership`). The server API may always do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientMembership {
    /// Clients create direct conversations and groups, add and remove members (the default).
    #[default]
    All,
    /// Clients manage groups only; direct conversations come from the application.
    Groups,
    /// Clients change no membership at all (not even leave); the application is the only
    /// authority.
    Off,
}

impl ClientMembership {
    /// Why a client may not create a conversation of this kind (direct: `true`), if it may not.
    pub fn refuses_create(self, direct: bool) -> Option<&'static str> {
        match self {
            Self::All => None,
            Self::Groups if !direct => None,
            Self::Groups => Some("direct conversations are created by the application"),
            Self::Off => Some("membership is managed by the application"),
        }
    }

    /// Why a client may not add or remove group members, if it may not.
    pub fn refuses_change(self) -> Option<&'static str> {
        match self {
            Self::All | Self::Groups => None,
            Self::Off => Some("membership is managed by the application"),
        }
    }
}

impl std::str::FromStr for ClientMembership {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "groups" => Ok(Self::Groups),
            "off" => Ok(Self::Off),
            _ => Err(format!("{s:?} is not one of all, groups, off")),
        }
    }
}
