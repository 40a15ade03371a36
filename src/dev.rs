//! `chatfabric dev`: the whole fabric on one machine, in one process, next to a child nats-server.

use anyhow::Context;
use chatfabric_nats::server::{NatsServer, ServerOptions};
use clap::Parser;

use crate::cli::{DevArgs, GatewayArgs, NatsArgs};

/// Lets the presence service's flags be parsed on their own, to reuse their defaults.
#[derive(clap::Parser)]
struct PresenceDefaults {
    #[command(flatten)]
    args: chatfabric_presence::PresenceArgs,
}

/// Lets the persister's flags be parsed on their own, to reuse their defaults.
#[derive(clap::Parser)]
struct PersisterDefaults {
    #[command(flatten)]
    args: chatfabric_persister::PersisterArgs,
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let store = args.data.join("nats");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    let opts = ServerOptions {
        port: args.nats_port,
        store_dir: Some(store),
        name: "chatfabric-dev".into(),
        ..Default::default()
    };
    let mut server = tokio::task::spawn_blocking(move || NatsServer::start(opts))
        .await
        .context("starting nats-server")??;
    // Defaults for everything else come from the same flags the role subcommands take.
    let nats = NatsArgs::parse_from(["dev", "--nats-url", &server.url()]);
    let mut gateway = GatewayArgs::parse_from(["dev"]);
    gateway.listen = args.listen;
    gateway.jwt_secret = Some(args.jwt_secret.clone());
    if !args.no_demo {
        gateway.demo_page = true;
        gateway.dev_tokens = Some(args.jwt_secret.clone());
    }
    let history = args.data.join("history.db");
    let mut persister = PersisterDefaults::parse_from(["dev"]).args;
    persister.store.sqlite_path = history.clone();

    let shutdown = crate::shutdown_on_signal();
    let listen = args.listen;
    println!("chatfabric dev is running (Ctrl-C to stop)");
    println!(
        "  NATS        {}  (store {})",
        server.url(),
        server.store_dir().display()
    );
    if !args.no_demo {
        println!("  demo page   http://{listen}/  (open it in two windows, one name each)");
    }
    println!("  WebSocket   ws://{listen}/ws");
    println!("  metrics     http://{listen}/metrics");
    println!("  history     {} (SQLite)", history.display());
    println!("  a token     cargo run -- token alice");
    // One store for both roles: they share the file, and one opener means one migration.
    let store = chatfabric_persister::open_store(&persister.store)
        .await
        .context("opening the history store")?;
    let persist = {
        let (nats, shutdown, store) = (nats.clone(), shutdown.clone(), store.clone());
        tokio::spawn(async move {
            let result =
                crate::cli::run_persister(&nats, &persister, Some(store), None, shutdown.clone())
                    .await;
            // A dead persister in dev is fatal: stop everything rather than run without history.
            shutdown.cancel();
            result
        })
    };
    let presence = {
        let (nats, shutdown) = (nats.clone(), shutdown.clone());
        let args = PresenceDefaults::parse_from(["dev"]).args;
        tokio::spawn(async move {
            let result = crate::cli::run_presence(&nats, &args, None, shutdown.clone()).await;
            shutdown.cancel();
            result
        })
    };
    let result = crate::cli::run_gateway(&nats, &gateway, Some(store), shutdown.clone()).await;
    shutdown.cancel();
    let persisted = persist.await.context("persister task")?;
    let presenced = presence.await.context("presence task")?;
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .ok();
    result.and(persisted).and(presenced)
}
