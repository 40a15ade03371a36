//! Running each role from its parsed flags: connect, provision, open what it needs, run until
//! shutdown (`chatfabric <role>` and `chatfabric dev` call these).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chatfabric_nats::permissions::Role;
use chatfabric_persister::{PersistError, PersisterArgs};
use chatfabric_storage::{open_store, open_store_for_reads, HistoryStore, StoreArgs, StoreError};
use tokio_util::sync::CancellationToken;

use crate::cli::{GatewayArgs, NatsArgs};
use crate::startup::{retry, Failure};
/// Runs one gateway until `shutdown`, reading history from `history` (else the store its flags
/// name).
pub(crate) async fn run_gateway(
    nats: &NatsArgs,
    args: &GatewayArgs,
    history: Option<Arc<dyn HistoryStore>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let history = match history {
        Some(h) => h,
        // Not ready (503) while the store is not.
        None => tokio::select! {
            opened = open_history(&args.store, &shutdown) => match opened? {
                Some(h) => h,
                None => return Ok(()),
            },
            () = crate::startup::answer_not_ready(&listener) => unreachable!("answers until dropped"),
        },
    };
    let config = args.config(history)?;
    // Not ready (503) until connected and provisioned.
    let connected = tokio::select! {
        connected = nats.connect(Role::Gateway, &shutdown) => connected?,
        () = crate::startup::answer_not_ready(&listener) => unreachable!("answers until dropped"),
    };
    let Some((fabric, missed)) = connected else {
        return Ok(());
    };
    let mut registry = prometheus_client::registry::Registry::default();
    crate::process::register(&mut registry);
    chatfabric_gateway::run(listener, fabric, config, missed, registry, shutdown).await?;
    Ok(())
}

/// Opens the history store for a gateway: reads only, no writer thread, no checkpoints, no
/// migrations. A store without a schema opens at once (it reads as empty until the persister
/// creates the schema); an older schema is waited for (retried) until the persister of this
/// version migrated it, and a file another program holds locked until it is free; anything
/// else fails. `None` when `shutdown` fired first.
async fn open_history(
    store: &StoreArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn HistoryStore>>> {
    let opened = retry("opening the history store", shutdown, || async {
        open_store_for_reads(store).await.map_err(|e| match e {
            StoreError::SchemaOutdated { .. } => Failure::Transient(e),
            e if e.is_locked() => Failure::Transient(e),
            _ => Failure::Fatal(e),
        })
    })
    .await;
    opened.context("opening the history store")
}

/// Runs one persister until `shutdown`, writing to `store` (else the store its flags name) and
/// serving its metrics on `metrics_listen` from the start: `/readyz` answers 503 until every
/// partition drains (the store opened, NATS connected, streams and consumers provisioned).
pub(crate) async fn run_persister(
    nats: &NatsArgs,
    args: &PersisterArgs,
    store: Option<Arc<dyn HistoryStore>>,
    metrics_listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.drain_config();
    if let Some(addr) = metrics_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        crate::process::register(&mut registry);
        config.metrics.register(&mut registry);
        let draining = config.metrics.draining.clone();
        let partitions =
            i64::from(chatfabric_nats::subject::Partitions::new(nats.partitions).count());
        let ready = move || draining.get() >= partitions;
        crate::metrics::serve(addr, registry, ready, shutdown.clone()).await?;
    }
    let store = match store {
        Some(s) => s,
        // A ScyllaDB cluster that does not answer yet is waited for, as NATS is, and so is a
        // SQLite file another program holds locked; a SQLite file that cannot be opened or a
        // schema from a newer version is not.
        None => {
            let opened = retry("opening the history store", &shutdown, || async {
                open_store(&args.store).await.map_err(|e| match e {
                    StoreError::ScyllaConnect { .. } => Failure::Transient(e),
                    e if e.is_locked() => Failure::Transient(e),
                    _ => Failure::Fatal(e),
                })
            })
            .await
            .context("opening the history store")?;
            match opened {
                Some(store) => store,
                None => return Ok(()),
            }
        }
    };
    let Some((fabric, _missed)) = nats.connect(Role::Persister, &shutdown).await? else {
        return Ok(());
    };
    // Start-up (dead-letter stream, watermark bucket, consumers) is retried like provisioning;
    // once draining, the persister retries by itself and returns only on shutdown or a panic.
    let drained = retry(
        "preparing the persister's streams and consumers",
        &shutdown,
        || {
            let attempt = chatfabric_persister::run(
                fabric.clone(),
                store.clone(),
                config.clone(),
                shutdown.clone(),
            );
            async {
                attempt.await.map_err(|e| match e {
                    PersistError::Panicked(_) => Failure::Fatal(e),
                    _ => Failure::Transient(e),
                })
            }
        },
    )
    .await;
    drained?;
    Ok(())
}

/// Runs one presence service until `shutdown`, serving its metrics on `metrics_listen` from the
/// start: `/readyz` answers 503 until NATS is connected and the buckets are provisioned.
pub(crate) async fn run_presence(
    nats: &NatsArgs,
    args: &chatfabric_presence::PresenceArgs,
    metrics_listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.config();
    let connected = Arc::new(AtomicBool::new(false));
    if let Some(addr) = metrics_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        crate::process::register(&mut registry);
        config.metrics.register(&mut registry);
        let connected = connected.clone();
        let ready = move || connected.load(Ordering::Relaxed);
        crate::metrics::serve(addr, registry, ready, shutdown.clone()).await?;
    }
    let Some((fabric, _missed)) = nats.connect(Role::Presence, &shutdown).await? else {
        return Ok(());
    };
    connected.store(true, Ordering::Relaxed);
    chatfabric_presence::run(fabric, config, shutdown).await;
    Ok(())
}

/// Runs the webhook role until `shutdown`, serving /healthz, /readyz and /metrics on its
/// `--webhooks-listen` address (ready once its mirrors are loaded and its consumers exist).
pub(crate) async fn run_webhooks(
    nats: &NatsArgs,
    args: &chatfabric_webhooks::WebhooksArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener = tokio::net::TcpListener::bind(args.webhooks_listen)
        .await
        .with_context(|| format!("binding the webhooks address {}", args.webhooks_listen))?;
    let mut registry = prometheus_client::registry::Registry::default();
    crate::process::register(&mut registry);
    config.metrics.register(&mut registry);
    let (ready, ready_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(chatfabric_webhooks::health::serve(
        listener,
        registry,
        ready_rx,
        shutdown.clone(),
    ));
    let Some((fabric, _missed)) = nats.connect(Role::Webhooks, &shutdown).await? else {
        return Ok(());
    };
    let ran = retry(
        "preparing the webhook role's streams and consumers",
        &shutdown,
        || {
            let attempt =
                chatfabric_webhooks::run(fabric.clone(), config.clone(), &ready, shutdown.clone());
            async {
                attempt.await.map_err(|e| match e {
                    chatfabric_webhooks::WebhookError::Url(_) => Failure::Fatal(e),
                    _ => Failure::Transient(e),
                })
            }
        },
    )
    .await;
    ran?;
    Ok(())
}
