//! The coordinator: [`run`] walks a load test from setup to report.
//!
//! Phases: create the conversations; start the workers and let them connect (paced by
//! `--connect-rate`); sample the fabric's RSS with every connection idle and subscribed; walk the
//! rate schedule (with churn and the storm if asked); stop sending and drain; collect every
//! worker's final accounting; report. Every second it merges the workers' ticks into one point of
//! the timeline and samples CPU and RSS of the fabric's processes and of its own.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use crate::args::{LoadtestArgs, Tool};
use crate::collector::Collector;
use crate::control::Command;
use crate::link::{self, WorkerLink};
use crate::plan::WorkerPlan;
use crate::procstat::Fabric;
use crate::progress::Progress;
use crate::report::{CpuReport, RssReport};
use crate::settings::Settings;

/// Runs a load test (or, with `--worker`, serves as one of its worker processes; or, with
/// `floor`, measures the floor of delivery).
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use clap::Parser;
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     args: chatfabric_loadtest::LoadtestArgs,
/// }
/// let cli = Cli::parse_from(["loadtest", "--scenario", "steady-100x10", "--html", "r.html"]);
/// chatfabric_loadtest::run(cli.args).await
/// # }
/// ```
pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    if args.worker {
        return link::serve_worker().await;
    }
    if let Some(Tool::Floor(floor)) = args.tool {
        return crate::floor::run(floor).await;
    }
    let settings = Settings::resolve(&args)?;
    let mut notes = crate::preflight::notes(&settings);
    for note in &notes {
        eprintln!("note: {note}");
    }
    let progress = Progress::new();
    progress.say(format!(
        "creating {} conversations ({} active x {} members, {} quiet for {} idle connections)",
        settings.conversations + settings.idle_conversations(),
        settings.conversations,
        settings.members,
        settings.idle_conversations(),
        settings.idle,
    ));
    let convs = crate::setup::create_conversations(&settings)
        .await
        .context("creating the conversations (is the fabric running, and the secret right?)")?;
    let fabric = Fabric::new(&settings.fabric_pids);
    let rss_before = fabric.sample();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let links = link::spawn_workers(settings.workers, &ev_tx)?;
    drop(ev_tx);
    for (index, link) in links.iter().enumerate() {
        link.send(Command::Plan(Box::new(WorkerPlan {
            index,
            workers: links.len(),
            settings: settings.clone(),
            jwt_secret: args.jwt_secret.clone(),
            convs: convs.clone(),
            in_process: settings.workers == 0,
        })));
    }
    let mut c = Collector::new(links.len(), &settings, fabric);

    // Connect phase.
    let total = settings.total_conns() as u64;
    let connect_limit = Duration::from_secs_f64(total as f64 / settings.connect_rate * 2.0 + 30.0);
    let connect_start = Instant::now();
    c.mark("connect");
    c.pump(&mut events, &progress, connect_limit, |c| {
        c.reported() && c.settled() >= total
    })
    .await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    if c.settled() < total {
        notes.push(format!(
            "connect phase timed out after {connect_secs:.0} s with {} of {total} connections settled",
            c.settled()
        ));
    }
    // Let the gateways finish allocating for the new connections before reading their RSS.
    c.pump(&mut events, &progress, Duration::from_secs(2), |_| false)
        .await?;
    let rss = RssReport::new(&c.fabric, &rss_before, &c.fabric.sample(), c.subscribed());

    // Send phase.
    let window_start = c.cpu_snapshot();
    let delivered_before = c.totals.delivered;
    if settings.churn > 0.0 {
        broadcast(
            &links,
            &Command::Churn {
                per_sec: settings.churn,
            },
        );
    }
    let send_start = Instant::now();
    for (i, step) in settings.steps.iter().enumerate() {
        c.step = Some(i);
        c.mark(&format!("{:.0}/s", step.rate));
        broadcast(
            &links,
            &Command::Rate {
                rate: step.rate,
                step: i as u32,
            },
        );
        let step_end = send_start.elapsed().as_secs_f64() + step.secs;
        if let Some(at) = settings
            .storm_at
            .filter(|&at| at >= send_start.elapsed().as_secs_f64() && at < step_end)
        {
            let before = Duration::from_secs_f64(at - send_start.elapsed().as_secs_f64());
            c.pump(&mut events, &progress, before, |_| false).await?;
            c.mark("storm");
            broadcast(&links, &Command::Storm);
        }
        let left = (step_end - send_start.elapsed().as_secs_f64()).max(0.0);
        c.pump(
            &mut events,
            &progress,
            Duration::from_secs_f64(left),
            |_| false,
        )
        .await?;
    }
    broadcast(
        &links,
        &Command::Rate {
            rate: 0.0,
            step: settings.steps.len() as u32,
        },
    );
    broadcast(&links, &Command::Churn { per_sec: 0.0 });
    c.mark("drain");
    c.draining = true;
    c.pump(
        &mut events,
        &progress,
        Duration::from_secs_f64(settings.drain),
        |_| false,
    )
    .await?;
    let window_end = c.cpu_snapshot();
    let window_delivered = c.totals.delivered - delivered_before;

    // Finish.
    broadcast(&links, &Command::Finish);
    progress.say("closing connections and collecting the accounting".to_string());
    c.pump(&mut events, &progress, Duration::from_secs(60), |c| {
        c.finals.len() == c.workers
    })
    .await?;
    progress.finish();
    if c.finals.len() < c.workers {
        bail!(
            "only {} of {} workers sent their final report",
            c.finals.len(),
            c.workers
        );
    }
    let cpu = CpuReport::new(&window_start, &window_end, window_delivered);
    let report = c.into_report(settings, connect_secs, rss, cpu, notes);
    println!("{}", crate::render::summary::summary(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON report: {}", path.display());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, crate::render::html::render(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("HTML report: {}", path.display());
    }
    Ok(())
}

fn broadcast(links: &[WorkerLink], command: &Command) {
    for link in links {
        link.send(command.clone());
    }
}
