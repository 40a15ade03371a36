//! The load generator on its own: `cargo run -p chatfabric-loadtest --example loadtest -- loadtest
//! --scenario steady-100x10`. Same flags as `chatfabric loadtest`; useful on a load-generating
//! machine that does not need the fabric's binary. The `loadtest` word is kept so that worker
//! processes (re-executions of this binary with `loadtest --worker`) parse the same way.

use clap::Parser;

#[derive(Parser)]
#[command(name = "chatfabric-loadtest")]
enum Cli {
    /// Drive a running fabric and report.
    Loadtest(chatfabric_loadtest::LoadtestArgs),
}

fn main() -> anyhow::Result<()> {
    let Cli::Loadtest(args) = Cli::parse();
    tokio::runtime::Runtime::new()?.block_on(chatfabric_loadtest::run(args))
}
