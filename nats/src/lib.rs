//! chatfabric's NATS layer, shared by every role.
//!
//! # Layout
//!
//! The data path is WS/SSE frame -> command -> **subject -> JetStream** -> fan-out/persister -> store.
//! This crate owns the bold part, so that every role agrees on it:
//!
//! - [`connect`]: connecting, with a signal for "messages may have been missed".
//! - [`id`]: validated identifiers ([`UserId`], [`ConvId`]) that are safe as subject tokens.
//! - [`subject`]: the subject scheme: where messages are stored, republished, and where bots publish.
//! - [`wire`]: the payloads stored in JetStream and the headers stamped on them.
//! - [`metrics`]: [`register_metrics!`], one line per metric of a role.
//! - [`permissions`]: nats-server permissions confining a bot to its identity and conversations.
//! - [`provision`]: idempotent creation of the message stream and the KV buckets.
//! - [`server`]: starts a `nats-server` child process (single node or a loopback cluster), used by
//!   `chatfabric dev` and by the tests.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod connect;
pub mod id;
pub mod metrics;
pub mod permissions;
pub mod provision;
pub mod server;
pub mod subject;
pub mod wire;

pub use connect::{connect, ConnectOptions};
pub use id::{ConvId, IdError, UserId};
pub use provision::{provision, Fabric, ProvisionError, StreamSettings};
