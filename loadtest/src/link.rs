//! The two transports of the coordinator <-> worker protocol (`control`).
//!
//! In a worker process (`chatfabric loadtest --worker`, re-executed from the coordinator's own
//! binary) each message travels as one JSON line: commands on the worker's stdin, events on its
//! stdout (so nothing else may write to a worker's stdout; logs go to stderr). With `--workers 0`
//! one worker runs inside the coordinator over channels, with the same messages. Workers exist
//! because one process may hold at most 20,000 file descriptors on our machines.

use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::control::{Command, Event};

/// The coordinator's handle on one worker.
pub(crate) struct WorkerLink {
    commands: UnboundedSender<Command>,
    /// Kept so the process is killed if the coordinator goes away early.
    _child: Option<tokio::process::Child>,
}

impl WorkerLink {
    /// Sends a command; a worker that is gone reports itself through its events.
    pub(crate) fn send(&self, command: Command) {
        if self.commands.send(command).is_err() {
            tracing::debug!("worker is gone; its events said why");
        }
    }
}

/// Starts `n` worker processes (or, for `n == 0`, one worker in this process); their events
/// arrive on `events`.
pub(crate) fn spawn_workers(
    n: usize,
    events: &UnboundedSender<Event>,
) -> anyhow::Result<Vec<WorkerLink>> {
    if n == 0 {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(crate::worker::run(rx, events.clone()));
        return Ok(vec![WorkerLink {
            commands: tx,
            _child: None,
        }]);
    }
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    (0..n)
        .map(|index| spawn_process(&exe, index, events.clone()))
        .collect()
}

fn spawn_process(
    exe: &std::path::Path,
    index: usize,
    events: UnboundedSender<Event>,
) -> anyhow::Result<WorkerLink> {
    let mut child = tokio::process::Command::new(exe)
        .args(["loadtest", "--worker"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start worker process {}", exe.display()))?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        while let Some(command) = rx.recv().await {
            let mut line = serde_json::to_string(&command).unwrap_or_default();
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break; // the reader reports the worker's end
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut finished = false;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    finished |= matches!(event, Event::Final(_) | Event::Failed { .. });
                    if events.send(event).is_err() {
                        break;
                    }
                }
                Err(err) => eprintln!("worker {index}: unreadable line ({err}): {line:.200}"),
            }
        }
        if !finished {
            let message = "worker process exited before its final report".to_string();
            crate::control::report_failure(&events, index, message);
        }
    });
    Ok(WorkerLink {
        commands: tx,
        _child: Some(child),
    })
}

/// The worker-process side: commands from stdin, events to stdout, until the final report.
pub(crate) async fn serve_worker() -> anyhow::Result<()> {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    if cmd_tx.send(command).is_err() {
                        return;
                    }
                }
                Err(err) => eprintln!("worker: unreadable command ({err})"),
            }
        }
        // The coordinator is gone: wind down rather than hold connections open forever.
        if cmd_tx.send(Command::Finish).is_err() {
            tracing::debug!("worker already finished");
        }
    });
    tokio::spawn(crate::worker::run(cmd_rx, ev_tx));
    write_events(ev_rx).await
}

async fn write_events(mut events: UnboundedReceiver<Event>) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    while let Some(event) = events.recv().await {
        let last = matches!(event, Event::Final(_) | Event::Failed { .. });
        let mut line = serde_json::to_string(&event)?;
        line.push('\n');
        stdout.write_all(line.as_bytes()).await?;
        stdout.flush().await?;
        if last {
            break;
        }
    }
    Ok(())
}
