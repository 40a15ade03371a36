//! `chatfabric dev`: the whole fabric on one machine, in one process, next to a child nats-server.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use chatfabric_nats::permissions::{self, Role};
use chatfabric_nats::server::{NatsServer, ServerOptions};
use chatfabric_nats::subject::Partitions;
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
    // Every role is its own NATS user with least privilege, as in production; the passwords are
    // new at each start and known only to this process.
    let passwords = Role::ALL
        .iter()
        .map(|&role| Ok((role, random_password()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let password = |role: Role| {
        passwords
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };
    let extra = match &args.nats_users {
        Some(file) => vec![std::fs::read_to_string(file)
            .with_context(|| format!("reading --nats-users {}", file.display()))?],
        None => Vec::new(),
    };
    let config = args.data.join("nats-auth.conf");
    write_private(
        &config,
        &permissions::authorization(Partitions::new(1), password, &extra),
    )?;
    let opts = ServerOptions {
        port: args.nats_port,
        store_dir: Some(store),
        config_file: Some(config),
        name: "chatfabric-dev".into(),
    };
    let mut server = tokio::task::spawn_blocking(move || NatsServer::start(opts))
        .await
        .context("starting nats-server")??;
    // Defaults for everything else come from the same flags the role subcommands take.
    let nats_as = |role: Role| {
        let url = permissions::url_with_credentials(&server.url(), role.user(), &password(role));
        NatsArgs::parse_from(["dev", "--nats-url", &url])
    };
    let mut gateway = GatewayArgs::parse_from(["dev"]);
    gateway.listen = args.listen;
    gateway.jwt_secret = Some(args.jwt_secret.clone());
    if !args.no_demo {
        gateway.demo_page = true;
        gateway.dev_tokens = Some(args.jwt_secret.clone());
    }
    // A server API key with every scope, new at each start, printed below.
    let (dev_key, dev_key_line) = crate::server_api::new_key(
        "dev",
        &["conversations".into(), "messages".into(), "users".into()],
    )?;
    gateway.server_api.dev_key_lines = Some(dev_key_line);
    let history = args.data.join("history.db");
    let mut persister = PersisterDefaults::parse_from(["dev"]).args;
    persister.store.sqlite_path = history.clone();

    let shutdown = crate::signal::shutdown_on_signal();
    let listen = args.listen;
    println!("chatfabric dev is running (Ctrl-C to stop)");
    println!(
        "  NATS        {}  (store {}; users in {}, add bots with --nats-users)",
        server.url(),
        server.store_dir().display(),
        args.data.join("nats-auth.conf").display()
    );
    if !args.no_demo {
        println!("  demo page   http://{listen}/  (open it in two windows, one name each)");
    }
    println!("  WebSocket   ws://{listen}/ws");
    println!("  metrics     http://{listen}/metrics");
    println!("  history     {} (SQLite)", history.display());
    println!("  a token     cargo run -- token alice");
    println!("  server API  http://{listen}/v1/server/  key {dev_key}  (docs/SERVER_API.md)");
    // One store for both roles: they share the file, and one opener means one migration.
    let store = chatfabric_storage::open_store(&persister.store)
        .await
        .context("opening the history store")?;
    let persist = {
        let (nats, shutdown, store) = (nats_as(Role::Persister), shutdown.clone(), store.clone());
        tokio::spawn(async move {
            let result =
                crate::roles::run_persister(&nats, &persister, Some(store), None, shutdown.clone())
                    .await;
            // A dead persister in dev is fatal: stop everything rather than run without history.
            shutdown.cancel();
            result
        })
    };
    let presence = {
        let (nats, shutdown) = (nats_as(Role::Presence), shutdown.clone());
        let args = PresenceDefaults::parse_from(["dev"]).args;
        tokio::spawn(async move {
            let result = crate::roles::run_presence(&nats, &args, None, shutdown.clone()).await;
            shutdown.cancel();
            result
        })
    };
    // The webhook role runs when it has somewhere to send events.
    let webhooks = (!args.webhooks.urls.is_empty()).then(|| {
        println!(
            "  webhooks    {} (health and metrics on http://{})",
            args.webhooks.urls.join(", "),
            args.webhooks.webhooks_listen
        );
        let (nats, shutdown, hooks) = (
            nats_as(Role::Webhooks),
            shutdown.clone(),
            args.webhooks.clone(),
        );
        tokio::spawn(async move {
            let result = crate::roles::run_webhooks(&nats, &hooks, shutdown.clone()).await;
            shutdown.cancel();
            result
        })
    });
    let result = crate::roles::run_gateway(
        &nats_as(Role::Gateway),
        &gateway,
        Some(store),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let persisted = persist.await.context("persister task")?;
    let presenced = presence.await.context("presence task")?;
    let hooked = match webhooks {
        Some(task) => task.await.context("webhooks task")?,
        None => Ok(()),
    };
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .ok();
    result.and(persisted).and(presenced).and(hooked)
}

/// 128 random bits, hex.
pub(crate) fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the NATS passwords")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path`, readable by its owner only (it holds the roles' passwords).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
