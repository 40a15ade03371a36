//! chatfabric's presence service: turns presence state in JetStream KV into online/offline events.
//!
//! Not built yet: it arrives with its own issue. The crate exists so the workspace has the layout
//! every later change builds on; it exports nothing.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
