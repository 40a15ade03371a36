//! `chatfabric`: one binary, a subcommand per role.
//!
//! `main` only parses configuration, connects, provisions and calls each role's `run`; the roles
//! live in their crates (`gateway/`, `persister/`, `presence/`, `webhooks/`, `loadtest/`; the
//! history store both the persister and the gateway use is `storage/`). `dev` runs everything in
//! one process next to a child nats-server.

mod bot;
mod cli;
mod dev;
mod metrics;
mod nats_exporter;
mod process;
mod roles;
mod server_api;
mod signal;
mod startup;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, LogFormat};
use signal::shutdown_on_signal;

/// The tokio runtime: one worker per CPU the process may use (`available_parallelism` follows
/// the affinity mask and the cgroup quota). On one CPU (`taskset -c 1`, a one-core container)
/// it is a current-thread runtime, so the tasks run on the thread that also polls the
/// `main` future and the I/O driver, with no hand-offs between a worker and the main thread.
/// The load generator keeps the multi-thread runtime: it is the measuring side.
/// `CHATFABRIC_MULTI_THREAD=1` keeps it for the roles too (BENCHMARKS.md compares the two).
fn runtime(fabric: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    if fabric && one_cpu && std::env::var_os("CHATFABRIC_MULTI_THREAD").is_none() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .context("--log is not a valid tracing filter")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Pretty => logs.init(),
        // The event's fields at the top level; `span` and `spans` carry the enclosing spans'.
        LogFormat::Json => logs.json().flatten_event(true).with_span_list(true).init(),
    }
    let runtime = runtime(!matches!(cli.command, Command::Loadtest(_)))
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Gateway(args) => {
                let shutdown = shutdown_on_signal();
                roles::run_gateway(&args.nats, &args.gateway, None, shutdown).await
            }
            Command::Persister(args) => {
                let shutdown = shutdown_on_signal();
                roles::run_persister(
                    &args.nats,
                    &args.persister,
                    None,
                    Some(args.metrics_listen),
                    shutdown,
                )
                .await
            }
            Command::Presence(args) => {
                let shutdown = shutdown_on_signal();
                roles::run_presence(
                    &args.nats,
                    &args.presence,
                    Some(args.metrics_listen),
                    shutdown,
                )
                .await
            }
            Command::Webhooks(args) => {
                roles::run_webhooks(&args.nats, &args.webhooks, shutdown_on_signal()).await
            }
            Command::Bot(args) => bot::run(args, shutdown_on_signal()).await,
            Command::BotUser(args) => {
                let convs = args
                    .conv
                    .iter()
                    .map(|c| chatfabric_nats::ConvId::new(c.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .context("conversation id")?;
                let bot = chatfabric_nats::UserId::new(args.bot).context("bot id")?;
                println!(
                    "{}",
                    chatfabric_nats::permissions::bot_user(&bot, &args.password, &convs)
                );
                Ok(())
            }
            Command::NatsUsers(args) => {
                let mut passwords = Vec::new();
                for role in chatfabric_nats::permissions::Role::ALL {
                    let password = if args.dev_passwords {
                        format!("{}-dev-password", role.user())
                    } else {
                        dev::random_password()?
                    };
                    passwords.push((role, password));
                }
                let password = |role| {
                    passwords
                        .iter()
                        .find(|(r, _)| *r == role)
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default()
                };
                let partitions = chatfabric_nats::subject::Partitions::new(args.partitions);
                print!(
                    "{}",
                    chatfabric_nats::permissions::authorization(partitions, password, &[])
                );
                for role in chatfabric_nats::permissions::Role::ALL {
                    println!(
                        "# chatfabric {} --nats-url nats://{}:{}@<host>:4222",
                        role.user(),
                        role.user(),
                        password(role)
                    );
                }
                Ok(())
            }
            Command::Token(args) => {
                let user = chatfabric_nats::UserId::new(args.user).context("user id")?;
                let token = chatfabric_gateway::auth::mint_hs256(
                    args.jwt_secret.as_bytes(),
                    &user,
                    args.ttl_secs,
                )?;
                println!("{token}");
                Ok(())
            }
            Command::ApiKey(args) => server_api::print_new_key(&args),
            Command::NatsExporter(args) => nats_exporter::run(args, shutdown_on_signal()).await,
            Command::Loadtest(args) => chatfabric_loadtest::run(args).await,
        }
    })
}
