//! The floor of delivery on this machine: `chatfabric loadtest floor`.
//!
//! A fan-out that had nothing to do but deliver would still make one `write(2)` of the frame per
//! delivery. This measures that alone: a writer process connects `--sockets` loopback TCP
//! sockets and writes `--frame-bytes` frames to them round-robin at `--rate` writes per second,
//! one `write(2)` per frame; this process reads them all. The writer's CPU seconds over its
//! writes are the floor of the fabric's CPU per delivery, measured the same way (`/proc`), at
//! the same rate and frame size, and best taken in the same run as the fabric: on loopback a
//! write also runs the reader's TCP input path in the writer's context, as the gateway's writes
//! do, so the figure moves with the kernel and the machine as the fabric's does.
//!
//! Pin the two the way the fabric and the load generator are pinned: `--writer-cpu` starts the
//! writer under `taskset -c`, and the caller pins this process (the reader) to the other CPU.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;

use crate::args::FloorArgs;

/// How long the reader waits for the last bytes after the writer is done.
const DRAIN: Duration = Duration::from_secs(10);
/// Sleep of the writer's pacing loop between rounds of due writes.
const PACE: Duration = Duration::from_micros(500);

/// What the writer did, sent to the reader as one JSON line on its stdout.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Writes {
    /// Frames written.
    writes: u64,
    /// Frames the socket did not take whole in one `write(2)` (finished with more).
    partial: u64,
    /// Seconds of writing.
    secs: f64,
    /// The writer process's CPU seconds over those seconds.
    cpu_secs: f64,
}

/// The floor's figures (the `--json` document).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FloorReport {
    sockets: usize,
    frame_bytes: usize,
    /// Writes per second asked for.
    rate: f64,
    /// Seconds of writing.
    secs: f64,
    /// Writes per second made.
    writes_per_s: f64,
    writes: u64,
    partial_writes: u64,
    /// Bytes the reader got (must be `writes * frame_bytes`).
    bytes_read: u64,
    writer_cpu_secs: f64,
    /// The floor: the writer's CPU per write.
    writer_us_per_write: f64,
    reader_cpu_secs: f64,
    reader_us_per_write: f64,
    /// The CPU the writer was pinned to, if any.
    writer_cpu: Option<usize>,
}

/// Runs the floor (or, with `--writer`, its writer process).
pub(crate) async fn run(args: FloorArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.writer {
        let writes = tokio::task::spawn_blocking(move || write_frames(addr, &args))
            .await
            .context("the writer thread")??;
        println!("{}", serde_json::to_string(&writes)?);
        return Ok(());
    }
    if args.sockets == 0 || args.frame_bytes == 0 || !(args.rate > 0.0 && args.secs > 0.0) {
        bail!("--sockets, --frame-bytes, --rate and --secs must be positive");
    }
    let limit = crate::preflight::raise_fd_limit();
    if args.sockets as u64 + 100 > limit {
        bail!(
            "{} sockets need as many descriptors here and in the writer; the open-file limit is \
             {limit}",
            args.sockets
        );
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut writer = writer_command(&args, addr)?
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the writer process (is taskset installed, for --writer-cpu?)")?;
    let stdout = writer.stdout.take().context("writer stdout")?;
    let read = Arc::new(AtomicU64::new(0));
    for _ in 0..args.sockets {
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
            .await
            .context("the writer did not connect all its sockets within 30 s")??;
        let read = read.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = socket.read(&mut buf).await {
                read.fetch_add(n as u64, Relaxed);
            }
        });
    }
    let reader_before = own_cpu_secs();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .context("reading the writer's report")?;
    let writes: Writes = serde_json::from_str(&line)
        .with_context(|| format!("the writer's report {line:?} (see its stderr above)"))?;
    let expected = writes.writes * args.frame_bytes as u64;
    let deadline = Instant::now() + DRAIN;
    while read.load(Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reader_cpu_secs = own_cpu_secs() - reader_before;
    let status = writer.wait().await.context("waiting for the writer")?;
    let bytes_read = read.load(Relaxed);
    if !status.success() || bytes_read != expected {
        bail!("the writer ended with {status}; {bytes_read} of {expected} bytes arrived");
    }
    let per_write = |secs: f64| secs * 1e6 / writes.writes.max(1) as f64;
    let report = FloorReport {
        sockets: args.sockets,
        frame_bytes: args.frame_bytes,
        rate: args.rate,
        secs: writes.secs,
        writes_per_s: writes.writes as f64 / writes.secs.max(1e-9),
        writes: writes.writes,
        partial_writes: writes.partial,
        bytes_read,
        writer_cpu_secs: writes.cpu_secs,
        writer_us_per_write: per_write(writes.cpu_secs),
        reader_cpu_secs,
        reader_us_per_write: per_write(reader_cpu_secs),
        writer_cpu: args.writer_cpu,
    };
    println!("{}", summary(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("JSON report: {}", path.display());
    }
    Ok(())
}

/// The writer process: this executable again, under `taskset` with `--writer-cpu`.
fn writer_command(args: &FloorArgs, addr: SocketAddr) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("cannot find this executable to start the writer")?;
    let mut command = match args.writer_cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(exe);
            c
        }
        None => tokio::process::Command::new(exe),
    };
    command
        .args(["loadtest", "floor", "--writer", &addr.to_string()])
        .args(["--sockets", &args.sockets.to_string()])
        .args(["--frame-bytes", &args.frame_bytes.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--secs", &args.secs.to_string()]);
    Ok(command)
}

/// Connects the sockets, then writes `--rate` frames per second round-robin for `--secs`.
fn write_frames(addr: SocketAddr, args: &FloorArgs) -> anyhow::Result<Writes> {
    let mut sockets = (0..args.sockets)
        .map(|_| {
            let socket = TcpStream::connect(addr)?;
            // As the gateway's sockets: every frame goes out at once.
            socket.set_nodelay(true)?;
            Ok(socket)
        })
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("connecting to the reader at {addr}"))?;
    let frame = vec![b'x'; args.frame_bytes];
    let cpu_before = own_cpu_secs();
    let start = Instant::now();
    let (mut writes, mut partial) = (0u64, 0u64);
    loop {
        // Up to exactly `rate * secs` writes, whatever the last sleep overshot.
        let elapsed = start.elapsed().as_secs_f64().min(args.secs);
        let due = (args.rate * elapsed) as u64;
        while writes < due {
            let socket = &mut sockets[writes as usize % args.sockets];
            let n = socket.write(&frame)?;
            if n < frame.len() {
                partial += 1;
                socket.write_all(&frame[n..])?;
            }
            writes += 1;
        }
        if elapsed >= args.secs {
            break;
        }
        std::thread::sleep(PACE);
    }
    Ok(Writes {
        writes,
        partial,
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: own_cpu_secs() - cpu_before,
    })
}

fn own_cpu_secs() -> f64 {
    crate::procstat::sample("self").map_or(0.0, |p| p.cpu_secs)
}

/// The human summary.
fn summary(r: &FloorReport) -> String {
    format!(
        "\n== chatfabric loadtest floor ==\n\
         {} loopback sockets, {}-byte frames, {:.0} writes/s ({} asked) for {} writes, {} partial\n\
         writer     {:.2} us CPU per write ({:.3} cores{})\n\
         reader     {:.2} us CPU per write",
        r.sockets,
        r.frame_bytes,
        r.writes_per_s,
        r.rate,
        r.writes,
        r.partial_writes,
        r.writer_us_per_write,
        r.writer_cpu_secs / r.secs.max(1e-9),
        r.writer_cpu
            .map(|c| format!(", pinned to CPU {c}"))
            .unwrap_or_default(),
        r.reader_us_per_write,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn the_writer_keeps_its_rate_and_every_frame_arrives_whole() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let args = FloorArgs {
            sockets: 4,
            frame_bytes: 300,
            rate: 2_000.0,
            secs: 0.5,
            writer_cpu: None,
            json: None,
            writer: Some(addr),
        };
        let reader = std::thread::spawn(move || {
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    let (mut socket, _) = listener.accept().unwrap();
                    std::thread::spawn(move || {
                        let mut got = Vec::new();
                        socket.read_to_end(&mut got).unwrap();
                        got.len()
                    })
                })
                .collect();
            readers
                .into_iter()
                .map(|r| r.join().unwrap())
                .sum::<usize>()
        });
        let writes = write_frames(addr, &args).unwrap();
        assert_eq!(writes.writes, 1_000, "0.5 s at 2,000/s");
        assert_eq!(
            writes.partial, 0,
            "300-byte frames always fit the socket's buffer"
        );
        assert!(writes.secs >= 0.5);
        assert_eq!(reader.join().unwrap(), 1_000 * 300, "every byte arrived");
    }
}
