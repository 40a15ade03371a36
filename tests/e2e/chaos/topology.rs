//! The chaos topology: a 3-node NATS cluster on loopback with the shipped users, and every role
//! as its own `chatfabric` process with `--replicas 3`: two gateways, two persisters, presence.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatfabric_nats::permissions::{url_with_credentials, Role};
use chatfabric_nats::server::NatsServer;

/// One role process, restartable with the same flags.
pub struct Proc {
    /// `gateway-1`, `persister-2`, `presence`.
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(name: &str, args: Vec<String>, dir: &Path) -> Self {
        let mut p = Self {
            name: name.into(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("role log");
        let child = Command::new(env!("CARGO_BIN_EXE_chatfabric"))
            .args(&self.args)
            .env("CHATFABRIC_LOG", "warn,chatfabric_presence=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn chatfabric");
        self.child = Some(child);
    }

    /// kill -9, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same flags (a gateway gets a new presence id).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
        }
    }

    /// Whether the process ended by itself (it must never).
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // What it said last, without the backtrace that follows an error.
        let said = log.split("Stack backtrace:").next().unwrap_or_default();
        let tail: Vec<&str> = said.lines().rev().take(8).collect();
        Some(format!("{} exited ({status}): {tail:?}", self.name))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

/// Everything running.
pub struct Topology {
    /// The NATS nodes, named `n0`, `n1`, `n2`.
    pub nodes: Vec<NatsServer>,
    /// `gateway-1`, `gateway-2`.
    pub gateways: Vec<Proc>,
    /// Their listen ports.
    pub gateway_ports: Vec<u16>,
    /// `persister-1`, `persister-2`.
    pub persisters: Vec<Proc>,
    /// The presence service.
    pub presence: Proc,
    /// The persisters' and the presence service's metrics ports (`/readyz`), in that order.
    role_ports: Vec<u16>,
    /// The SQLite history every persister writes and every gateway reads.
    pub db: PathBuf,
    /// Role logs.
    pub dir: tempfile::TempDir,
}

impl Topology {
    /// Starts the cluster, then every role, and waits until every role is ready.
    pub async fn start() -> Self {
        let nodes = crate::support::fabric::start_cluster().await;
        // CHATFABRIC_CHAOS_KEEP keeps the run's logs and load reports for a look afterwards.
        let dir = tempfile::Builder::new()
            .prefix("chaos")
            .disable_cleanup(std::env::var_os("CHATFABRIC_CHAOS_KEEP").is_some())
            .tempdir()
            .expect("tempdir");
        let db = dir.path().join("history.db");
        let all: Vec<String> = nodes.iter().map(|n| n.url()).collect();
        let url = |role: Role, first: usize| {
            let mut urls = all.clone();
            urls.rotate_left(first);
            url_with_credentials(
                &urls.join(","),
                role.user(),
                &format!("{}-dev-password", role.user()),
            )
        };
        let common = |role: Role, first: usize| -> Vec<String> {
            vec![
                "--nats-url".into(),
                url(role, first),
                "--replicas".into(),
                "3".into(),
            ]
        };
        let free = crate::presence::free_port;
        let db_s = db.display().to_string();
        let gateway_ports = vec![free(), free()];
        let gateways = (0..2)
            .map(|i| {
                let mut args = vec!["gateway".to_string()];
                args.extend(common(Role::Gateway, i));
                args.extend([
                    "--listen".into(),
                    format!("127.0.0.1:{}", gateway_ports[i]),
                    "--jwt-secret".into(),
                    "test-secret".into(),
                    "--sqlite-path".into(),
                    db_s.clone(),
                ]);
                Proc::start(&format!("gateway-{}", i + 1), args, dir.path())
            })
            .collect();
        let role_ports = vec![free(), free(), free()];
        let persisters = (0..2)
            .map(|i| {
                let mut args = vec!["persister".to_string()];
                args.extend(common(Role::Persister, i + 1));
                args.extend([
                    "--sqlite-path".into(),
                    db_s.clone(),
                    "--metrics-listen".into(),
                    format!("127.0.0.1:{}", role_ports[i]),
                ]);
                Proc::start(&format!("persister-{}", i + 1), args, dir.path())
            })
            .collect();
        let mut args = vec!["presence".to_string()];
        args.extend(common(Role::Presence, 2));
        args.extend([
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", role_ports[2]),
        ]);
        let presence = Proc::start("presence", args, dir.path());
        let mut t = Self {
            nodes,
            gateways,
            gateway_ports,
            persisters,
            presence,
            role_ports,
            db,
            dir,
        };
        // Every role, not only the gateways: faults begin with the whole fabric serving (a
        // presence service still provisioning would count as presence error in the first fault).
        for i in 0..2 {
            t.await_gateway_ready(i, Duration::from_secs(120)).await;
        }
        for port in t.role_ports.clone() {
            t.await_ready(port, Duration::from_secs(120)).await;
        }
        t
    }

    /// The WebSocket URLs of the gateways.
    pub fn ws_urls(&self) -> Vec<String> {
        self.gateway_ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}/ws"))
            .collect()
    }

    /// Waits until gateway `i` answers `/readyz` with 200.
    pub async fn await_gateway_ready(&mut self, i: usize, limit: Duration) {
        self.await_ready(self.gateway_ports[i], limit).await;
    }

    /// Waits until the role serving `/readyz` on `port` answers 200.
    async fn await_ready(&mut self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        while crate::faults::http_status(port, "/readyz").await != 200 {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "the role on port {port} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Panics when a role process ended by itself.
    pub fn assert_running(&mut self) {
        let exited: Vec<String> = self
            .gateways
            .iter_mut()
            .chain(self.persisters.iter_mut())
            .chain(std::iter::once(&mut self.presence))
            .filter_map(Proc::exited)
            .collect();
        assert!(exited.is_empty(), "roles exited: {exited:?}");
    }

    /// An operator's JetStream context on any node.
    pub async fn admin(&self) -> async_nats::jetstream::Context {
        let servers: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("url"))
            .collect();
        let client = async_nats::ConnectOptions::with_user_and_password(
            "admin".into(),
            "admin-dev-password".into(),
        )
        .connect(servers)
        .await
        .expect("admin connects");
        async_nats::jetstream::new(client)
    }

    /// The index of the node leading `stream` now.
    pub async fn leader_of(&self, stream: &str) -> usize {
        crate::faults::stream_leader(&self.admin().await, stream).await
    }

    /// Role permissions the nodes refused (must be none).
    pub fn role_violations(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| n.role_violations())
            .collect()
    }
}
