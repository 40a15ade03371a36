//! A nats-server and gateways for one test.

use std::net::SocketAddr;
use std::sync::Arc;

use chatfabric_gateway::{fanout::HubConfig, Authenticator, GatewayConfig, Limits};
use chatfabric_nats::permissions::Role;
use chatfabric_nats::server::{NatsServer, ServerOptions};
use chatfabric_nats::{ConnectOptions, Fabric, StreamSettings, UserId};
use chatfabric_storage::{HistoryStore, SqliteConfig, SqliteStore};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The HS256 secret test gateways accept.
pub const SECRET: &[u8] = b"test-secret";

/// The shipped users and permissions (`nats/config/auth.conf`): every test server runs with them,
/// so every role in the tests works under exactly the privileges it ships with.
pub fn shipped_auth_conf() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/config/auth.conf")
}

/// `user:password@` of `role` in the shipped config.
pub fn role_credentials(role: Role) -> String {
    format!("{0}:{0}-dev-password@", role.user())
}

/// A JetStream-enabled nats-server on a free port with a throw-away store and the shipped users
/// and permissions, and the history store (SQLite in a temporary directory) its gateways and
/// persisters share.
pub struct Nats {
    /// The server process (killed on drop).
    pub server: NatsServer,
    /// The history store.
    pub history: Arc<dyn HistoryStore>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts a server and provisions streams and buckets.
    pub async fn start() -> Self {
        super::init_tracing();
        let opts = ServerOptions {
            config_file: Some(shipped_auth_conf()),
            ..ServerOptions::default()
        };
        let server = tokio::task::spawn_blocking(move || NatsServer::start(opts))
            .await
            .expect("spawn_blocking")
            .expect("nats-server starts (is it installed? apt-get install nats-server)");
        let dir = tempfile::tempdir().expect("tempdir");
        let history_path = dir.path().join("history.db");
        let history: Arc<dyn HistoryStore> = Arc::new(
            SqliteStore::open(SqliteConfig::new(&history_path))
                .await
                .expect("open sqlite"),
        );
        let nats = Self {
            server,
            history,
            _dir: dir,
        };
        nats.fabric("provision").await;
        nats
    }

    /// The client URL of `role`, with its credentials.
    pub fn url_for(&self, role: Role) -> String {
        self.url_as(&role_credentials(role))
    }

    /// The client URL with `credentials` (`user:password@`, or empty).
    pub fn url_as(&self, credentials: &str) -> String {
        format!("nats://{credentials}127.0.0.1:{}", self.server.port())
    }

    /// A fresh gateway connection with provisioned handles.
    pub async fn fabric(&self, name: &str) -> Fabric {
        self.fabric_as(Role::Gateway, name, 8192).await.0
    }

    /// A fresh connection of `role` whose subscriptions buffer `capacity` messages, plus its
    /// missed signal. `name` is appended to the role's connection name.
    pub async fn fabric_as(
        &self,
        role: Role,
        name: &str,
        capacity: usize,
    ) -> (Fabric, tokio::sync::watch::Receiver<u64>) {
        let (client, missed) = chatfabric_nats::connect(&ConnectOptions {
            url: self.url_for(role),
            name: format!("chatfabric-{}-{name}", role.user()),
            subscription_capacity: capacity,
            role,
        })
        .await
        .expect("connect to nats");
        let fabric = chatfabric_nats::provision(client, StreamSettings::default())
            .await
            .expect("provision");
        (fabric, missed)
    }

    /// Gateway test defaults: generous rate limits, this fixture's history store.
    pub fn config(&self) -> GatewayConfig {
        test_config(self.history.clone())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // A role that needs a permission it is not granted is a bug in the shipped config.
        let refused = self.server.role_violations();
        if !std::thread::panicking() {
            assert!(
                refused.is_empty(),
                "nats-server refused a role:\n{}",
                refused.join("\n")
            );
        }
    }
}

/// Gateway test defaults (generous rate limits) reading history from `history`.
pub fn test_config(history: Arc<dyn HistoryStore>) -> GatewayConfig {
    GatewayConfig {
        auth: Authenticator::hs256(SECRET),
        limits: Limits {
            rate: 10_000.0,
            burst: 10_000.0,
            history_rate: 10_000.0,
            history_burst: 10_000.0,
            ..Limits::default()
        },
        hub: HubConfig::default(),
        membership_cache: 10_000,
        membership_ttl: std::time::Duration::from_secs(60),
        history,
        history_cache_bytes: 16 << 20,
        presence: chatfabric_gateway::presence::PresenceConfig::default(),
        demo: Default::default(),
        api_keys: Default::default(),
        client_membership: Default::default(),
    }
}

/// A 3-node JetStream cluster on loopback with the shipped permissions.
pub async fn start_cluster() -> Vec<NatsServer> {
    super::init_tracing();
    tokio::task::spawn_blocking(|| NatsServer::start_cluster_with(3, Some(shipped_auth_conf())))
        .await
        .expect("spawn_blocking")
        .expect("cluster starts")
}

/// A connection to a cluster (first trying node `first`) with streams and buckets provisioned
/// with 3 replicas, plus the config a test gateway needs; retries while JetStream elects leaders.
pub async fn cluster_fabric(urls: &[String], first: usize) -> ClusterGatewayParts {
    super::init_tracing();
    let mut ordered = urls.to_vec();
    ordered.rotate_left(first);
    let url = chatfabric_nats::permissions::url_with_credentials(
        &ordered.join(","),
        Role::Gateway.user(),
        &format!("{}-dev-password", Role::Gateway.user()),
    );
    let (client, missed) = chatfabric_nats::connect(&ConnectOptions {
        url,
        name: "chatfabric-gateway-cluster".into(),
        subscription_capacity: 8192,
        role: Role::Gateway,
    })
    .await
    .expect("connect to the cluster");
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let fabric = loop {
        match chatfabric_nats::provision(client.clone(), settings.clone()).await {
            Ok(f) => break f,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "cluster not ready yet");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => panic!("provisioning on the cluster: {e}"),
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let history: Arc<dyn HistoryStore> = Arc::new(
        SqliteStore::open(SqliteConfig::new(dir.path().join("h.db")))
            .await
            .expect("sqlite"),
    );
    ClusterGatewayParts {
        fabric,
        missed,
        history,
        _dir: dir,
    }
}

/// What [`TestGateway::start_on`] needs: a provisioned connection and a history store.
pub struct ClusterGatewayParts {
    fabric: Fabric,
    missed: tokio::sync::watch::Receiver<u64>,
    history: Arc<dyn HistoryStore>,
    _dir: tempfile::TempDir,
}

impl ClusterGatewayParts {
    /// The client port of the node this connection is on.
    pub fn port(&self) -> u16 {
        self.fabric.client.server_info().port
    }

    /// Which of `nodes` this connection is on.
    pub fn node(&self, nodes: &[NatsServer]) -> usize {
        nodes
            .iter()
            .position(|n| n.port() == self.port())
            .expect("connected to one of the nodes")
    }

    /// Gateway test defaults reading history from this cluster's store.
    pub fn config(&self) -> GatewayConfig {
        test_config(self.history.clone())
    }
}

/// A gateway running in this process on 127.0.0.1 with a free port, stopped on drop.
pub struct TestGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// Two gateways on the same server, each on its own NATS connection.
    pub async fn pair(nats: &Nats) -> (Self, Self) {
        (Self::start(nats).await, Self::start(nats).await)
    }

    /// Starts a gateway with [`test_config`] on its own NATS connection.
    pub async fn start(nats: &Nats) -> Self {
        Self::start_with(nats, nats.config(), 8192).await
    }

    /// A gateway that closes slow clients early (outbound queue of 8) and waits long for them to
    /// read on, so the close reaches them however loaded the machine is.
    pub async fn start_for_slow_readers(nats: &Nats) -> Self {
        let mut config = nats.config();
        config.limits.queue = 8;
        config.limits.close_grace = std::time::Duration::from_secs(60);
        Self::start_with(nats, config, 8192).await
    }

    /// Waits (at most 10 s) until the first sample of metric `name` reaches `at_least`.
    pub async fn await_metric(&self, name: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.metric(name).await < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never reached {at_least}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A TCP connection to the gateway whose receive buffer is tiny, for clients that stop
    /// reading: the kernel then holds little of what the gateway sends.
    pub async fn tiny_buffer_socket(&self) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("recv buffer");
        socket.connect(self.addr).await.expect("connect")
    }

    /// Starts a gateway on an existing (cluster) connection.
    pub async fn start_on(parts: &ClusterGatewayParts) -> Self {
        Self::start_on_with(parts, parts.config()).await
    }

    /// Starts a gateway with `config` on an existing (cluster) connection.
    pub async fn start_on_with(parts: &ClusterGatewayParts, config: GatewayConfig) -> Self {
        Self::spawn(parts.fabric.clone(), parts.missed.clone(), config).await
    }

    /// Starts a gateway with `config` and a NATS subscription capacity of `capacity` messages.
    /// Every start returns once the gateway serves: it answers `/healthz`, and its NATS-direct
    /// ingest, subscribed before that, takes requests.
    pub async fn start_with(nats: &Nats, config: GatewayConfig, capacity: usize) -> Self {
        let (fabric, missed) = nats.fabric_as(Role::Gateway, "test", capacity).await;
        Self::spawn(fabric, missed, config).await
    }

    async fn spawn(
        fabric: Fabric,
        missed: tokio::sync::watch::Receiver<u64>,
        config: GatewayConfig,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let registry = prometheus_client::registry::Registry::default();
                chatfabric_gateway::run(listener, fabric, config, missed, registry, shutdown)
                    .await
                    .expect("gateway runs");
            }
        });
        serving(addr).await;
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops the gateway (connections get close 1001) and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Fetches `/metrics` and returns the value of the first sample line starting with `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.addr, "/metrics").await;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A minimal HTTP/1.0 GET, returning the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A valid token for `user`.
pub fn token(user: &str) -> String {
    let user = UserId::new(user).expect("valid user id");
    chatfabric_gateway::auth::mint_hs256(SECRET, &user, 3600).expect("mint")
}

/// A GET with `user`'s bearer token, returning the body.
pub async fn http_get_auth(addr: SocketAddr, path: &str, user: &str) -> String {
    http_get_auth_status(addr, path, user).await.1
}

/// A GET with `user`'s bearer token, returning the status code and the body.
pub async fn http_get_auth_status(addr: SocketAddr, path: &str, user: &str) -> (u16, String) {
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token(user)
    );
    http_exchange(addr, &req).await
}

/// A POST of the JSON `body` as `user`: the status and the JSON answer.
pub async fn http_post(addr: SocketAddr, path: &str, user: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token(user),
        body.len()
    );
    let (status, answer) = http_exchange(addr, &req).await;
    let answer = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    (status, answer)
}

/// Sends one HTTP/1.0 request and reads the answer to its end: the status and the body.
async fn http_exchange(addr: SocketAddr, req: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// Waits until the gateway on `addr` answers `/healthz` (its accept loop runs).
async fn serving(addr: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answered = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), answered).await;
    assert_eq!(
        answer,
        Ok(Some(true)),
        "the gateway on {addr} did not serve /healthz"
    );
}
