//! End-to-end tests: real nats-server processes, real gateways, WebSocket clients.
//! All in one binary (one link step); each test starts its own server on free ports.

mod support;

mod access;
mod admission;
mod bad_input;
mod bots;
mod chaos;
mod closes;
mod cluster;
mod compose;
mod deputy;
mod faults;
mod gaps;
mod history;
mod limits;
mod logs;
mod membership_rules;
mod messaging;
mod presence;
mod protocol;
mod replicas;
mod server_api;
mod slow;
mod sse;
mod topology;
mod webhooks;
