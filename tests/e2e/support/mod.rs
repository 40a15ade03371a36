//! Fixtures: real nats-server processes on free ports, real gateways bound to port 0, and a
//! WebSocket client that speaks the protocol.

pub mod client;
pub mod dashboard;
pub mod fabric;
pub mod heavy;
pub mod hooks;
pub mod hostile;
pub mod receiver;
pub mod server_api;
pub mod sse;
pub mod stack;

pub use client::Client;
pub use fabric::{Nats, TestGateway};

/// Installs a test tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A `chatfabric` child process, killed when dropped (also when a test fails half-way).
pub struct Spawned(std::process::Child);

impl Spawned {
    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill(); // already exited is fine
        let _ = self.0.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the `chatfabric` binary with `args` (a role in its own process, for kill -9 tests),
/// logging only warnings and with its output discarded.
pub fn spawn_chatfabric<I, S>(args: I) -> Spawned
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Spawned(
        std::process::Command::new(env!("CARGO_BIN_EXE_chatfabric"))
            .args(args)
            .env("CHATFABRIC_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the chatfabric binary"),
    )
}
