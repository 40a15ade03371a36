//! Shared set-up: a store in a temporary directory, a real nats-server with provisioned streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use chatfabric_nats::permissions::Role;
use chatfabric_nats::server::{NatsServer, ServerOptions};
use chatfabric_nats::wire::StoredMessage;
use chatfabric_nats::{provision, ConvId, Fabric, StreamSettings, UserId};
use chatfabric_persister::drain::watermark_key;
use chatfabric_persister::metrics::PartitionLabel;
use chatfabric_persister::{DrainConfig, Metrics};
use chatfabric_storage::{HistoryStore, PageQuery, SqliteConfig, SqliteStore, StoredRecord};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// A SQLite store in its own temporary directory, removed on drop.
pub(crate) struct SqliteFixture {
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) dir: tempfile::TempDir,
}

impl SqliteFixture {
    pub(crate) async fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open_sqlite(&dir).await;
        Self { store, dir }
    }

    /// A second store on the same file, as a second persister process would open.
    pub(crate) async fn reopen(&self) -> Arc<dyn HistoryStore> {
        open_sqlite(&self.dir).await
    }
}

async fn open_sqlite(dir: &tempfile::TempDir) -> Arc<dyn HistoryStore> {
    let config = SqliteConfig::new(dir.path().join("history.db"));
    Arc::new(SqliteStore::open(config).await.unwrap())
}

/// A connection as `user` of the shipped config (password `<user>-dev-password`) with provisioned
/// handles, under `role`'s inbox when it is one.
async fn connect_as(server: &NatsServer, user: &str, role: Option<Role>) -> Fabric {
    let mut options = async_nats::ConnectOptions::with_user_and_password(
        user.into(),
        format!("{user}-dev-password"),
    )
    .name(format!("chatfabric-{user}-test"));
    if let Some(role) = role {
        options = options.custom_inbox_prefix(role.inbox_prefix());
    }
    let client = options.connect(server.url()).await.unwrap();
    provision(client, StreamSettings::default()).await.unwrap()
}

impl Drop for NatsFixture {
    fn drop(&mut self) {
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

/// A real nats-server with the shipped users and permissions and the message streams
/// provisioned. Drains run as the persister role; messages are published as a gateway would.
pub(crate) struct NatsFixture {
    /// The persister's connection.
    pub(crate) fabric: Fabric,
    /// A gateway's connection, for publishing.
    gateway: Fabric,
    /// The operators' user, for looking at what the persister did (dead letters, watermarks).
    pub(crate) admin: Fabric,
    // Kills the server (and removes its store) on drop; declared last so clients close first.
    pub(crate) server: NatsServer,
}

impl NatsFixture {
    pub(crate) async fn start() -> Self {
        let conf =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats/config/auth.conf");
        let opts = ServerOptions {
            config_file: Some(conf),
            ..ServerOptions::default()
        };
        let server = NatsServer::start(opts).expect("nats-server starts");
        let gateway = connect_as(&server, Role::Gateway.user(), Some(Role::Gateway)).await;
        let fabric = Self::connect(&server).await;
        let admin = connect_as(&server, "admin", None).await;
        Self {
            fabric,
            gateway,
            admin,
            server,
        }
    }

    /// Another connection to the same server, as a second persister process would have.
    pub(crate) async fn connect(server: &NatsServer) -> Fabric {
        connect_as(server, Role::Persister.user(), Some(Role::Persister)).await
    }

    /// Publishes a well-formed message; returns its stream sequence.
    pub(crate) async fn publish(&self, conv: &str, n: u64) -> u64 {
        let msg = message(conv, n);
        let subject = self.fabric.settings.partitions.msg_subject(&msg.conv);
        self.publish_raw(&subject, serde_json::to_vec(&msg).unwrap())
            .await
    }

    /// Publishes any payload under `subject`; returns its stream sequence.
    pub(crate) async fn publish_raw(&self, subject: &str, payload: Vec<u8>) -> u64 {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{subject}:{}", nonce()).as_str());
        self.gateway
            .js
            .publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// Waits until partition `part`'s published watermark reaches `seq`, or panics after 30 s.
    pub(crate) async fn await_watermark(&self, part: u16, seq: u64) {
        let kv = chatfabric_persister::prepare(&self.admin).await.unwrap();
        let mut watch = kv.watch_with_history(watermark_key(part)).await.unwrap();
        let reached = async {
            while let Some(entry) = watch.next().await {
                let entry = entry.unwrap();
                let value: u64 = std::str::from_utf8(&entry.value).unwrap().parse().unwrap();
                if value >= seq {
                    return;
                }
            }
            panic!("watermark watch ended");
        };
        tokio::time::timeout(Duration::from_secs(30), reached)
            .await
            .unwrap_or_else(|_| panic!("watermark of partition {part} did not reach {seq}"));
    }
}

/// A running drain and the token that stops it.
pub(crate) struct RunningDrain {
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Metrics,
    task: tokio::task::JoinHandle<Result<(), chatfabric_persister::PersistError>>,
}

impl RunningDrain {
    pub(crate) fn spawn(fabric: Fabric, store: Arc<dyn HistoryStore>, config: DrainConfig) -> Self {
        let shutdown = CancellationToken::new();
        let metrics = config.metrics.clone();
        let task = tokio::spawn(chatfabric_persister::run(
            fabric,
            store,
            config,
            shutdown.clone(),
        ));
        Self {
            shutdown,
            metrics,
            task,
        }
    }

    /// Cancels and waits for a graceful stop (bounded, so a hang fails the test).
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("drain stops within 10 s")
            .expect("drain task does not panic")
            .expect("drain returns Ok");
    }

    /// Messages this drain wrote to its store.
    pub(crate) fn stored(&self) -> u64 {
        self.metrics
            .stored
            .get_or_create(&PartitionLabel { partition: 0 })
            .get()
    }
}

/// Every record of `conv`, walked page by page from the oldest; asserts ascending order.
pub(crate) async fn all_of(store: &dyn HistoryStore, conv: &str) -> Vec<StoredRecord> {
    let conv = ConvId::new(conv).unwrap();
    let mut out: Vec<StoredRecord> = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .page(&conv, PageQuery::after(after, 100))
            .await
            .unwrap();
        let Some(first) = page.first() else { break };
        after = first.seq;
        out.extend(page.into_iter().rev());
    }
    assert!(
        out.windows(2).all(|w| w[0].seq < w[1].seq),
        "ascending, no repeats"
    );
    out
}

pub(crate) fn message(conv: &str, n: u64) -> StoredMessage {
    StoredMessage {
        via: None,
        id: format!("{conv}-{n}"),
        conv: ConvId::new(conv).unwrap(),
        sender: UserId::new("alice").unwrap(),
        client_id: format!("c{n}"),
        ts: 1_700_000_000_000 + n,
        body: format!("body {n} {}", "x".repeat(150)),
    }
}

fn nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
