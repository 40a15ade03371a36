//! End-to-end tests: real nats-server processes, real gateways, WebSocket clients.
//! All in one binary (one link step); each test starts its own server on free ports.

mod support;

mod access;
mod bad_input;
mod bots;
mod chaos;
mod cluster;
mod deputy;
mod faults;
mod gaps;
mod history;
mod messaging;
mod presence;
mod replicas;
mod slow;
mod sse;
