//! Memory and CPU check of a gateway under the hostile patterns of issue 9 (a benchmark program,
//! not a test): `cargo run --release --example hostile`.
//!
//! Starts a nats-server, a persister (in this process) and a gateway with default limits in a
//! child process (this program again, with `serve`), so the gateway's RSS and CPU are its own.
//! Then runs each pattern and prints the gateway's RSS before and after it:
//!
//! 1. `history`: 150 different `?before=..&limit=1000` GETs by one member, then 450 by 45
//!    members (10 each, within each one's rate limit).
//! 2. `replay`: 8 sockets that never read, each sending 64 pipelined `subscribe after=1` on a
//!    conversation of 3,000 x 4 KiB messages.
//! 3. `resubscribe`: a member re-subscribing with `after=1` 20 times a second while another member
//!    measures the latency of live messages.
//! 4. `queries`: a user in 5,000 conversations sending `presence` queries and `conversations`
//!    listings at 50 per second; CPU of the gateway and of nats-server.
//!
//! Needs `nats-server` (on the PATH, in /usr/sbin or /usr/local/bin, or `NATS_SERVER_BIN`).
//! `HOSTILE_MEMBERS` (45) and `HOSTILE_SILENT` (8) scale patterns 1 and 2 down, for a run against
//! a gateway without limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatfabric_gateway::{auth, fanout::HubConfig, Authenticator, GatewayConfig, Limits};
use chatfabric_nats::{ConnectOptions, ConvId, StreamSettings, UserId};
use chatfabric_persister::DrainConfig;
use chatfabric_storage::{HistoryStore, SqliteConfig, SqliteStore};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Error = Box<dyn std::error::Error + Send + Sync>;
const SECRET: &[u8] = b"hostile-secret";
const MIB: f64 = 1024.0 * 1024.0;

mod seed;
use seed::{connect, seed_conversation, seed_wide_user, store_messages};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve(&args[2], args[3].parse()?, &args[4]).await;
    }
    let dir = tempfile::tempdir()?;
    let nats_port = free_port();
    let mut nats = std::process::Command::new(chatfabric_nats::server::binary())
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-sd",
        ])
        .arg(dir.path().join("js"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let url = format!("nats://127.0.0.1:{nats_port}");
    let fabric = connect(&url).await?;
    let db = dir.path().join("history.db");
    let store: Arc<dyn HistoryStore> = Arc::new(SqliteStore::open(SqliteConfig::new(&db)).await?);
    let stop = CancellationToken::new();
    tokio::spawn(chatfabric_persister::run(
        fabric.clone(),
        store.clone(),
        DrainConfig::default(),
        stop.clone(),
    ));

    println!("seeding: 3,000 x 4 KiB messages; a user in 5,000 conversations");
    let big = ConvId::new("big")?;
    let members: Vec<String> = (0..knob("HOSTILE_MEMBERS", 45))
        .map(|i| format!("m{i}"))
        .chain(["bob".into()])
        .collect();
    seed_conversation(&fabric, &big, &members).await?;
    let head = store_messages(&fabric, &big, 3000).await?;
    seed_wide_user(&fabric, 5000).await?;
    while store.watermark(0).await? < head {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let mut gateway = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", &url, &addr.to_string()])
        .arg(&db)
        .spawn()?;
    let gw = gateway.id();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("gateway pid {gw}, nats-server pid {}", nats.id());
    println!("{:<40} {:>10} {:>10}", "pattern", "RSS before", "RSS after");
    let result = patterns(addr, gw, nats.id(), head).await;
    let _ = gateway.kill();
    let _ = nats.kill();
    stop.cancel();
    result
}

async fn patterns(addr: SocketAddr, gw: u32, nats: u32, head: u64) -> Result<(), Error> {
    // 1. History pages.
    let before = rss(gw);
    let (mut ok, mut limited) = (0, 0);
    for i in 0..150 {
        let page = get(
            addr,
            &format!(
                "/v1/conversations/big/messages?before={}&limit=1000",
                head - i * 10
            ),
            "m0",
        )
        .await?;
        if page.contains("rate_limited") {
            limited += 1
        } else {
            ok += 1
        }
    }
    report("history: 150 pages, one member", before, gw);
    accounting(addr).await?;
    println!("    {ok} answered, {limited} rate_limited");
    let before = rss(gw);
    let readers = knob("HOSTILE_MEMBERS", 45);
    for i in 0..readers * 10 {
        let user = format!("m{}", i % readers);
        let path = format!(
            "/v1/conversations/big/messages?before={}&limit=1000",
            head - 1 - i as u64 * 5
        );
        get(addr, &path, &user).await?;
    }
    report(
        &format!("history: {} pages, {readers} members", readers * 10),
        before,
        gw,
    );
    accounting(addr).await?;

    // 2. Replays to sockets that never read.
    let before = rss(gw);
    let mut silent = Vec::new();
    let sockets = knob("HOSTILE_SILENT", 8);
    for _ in 0..sockets {
        let mut ws = socket(addr, "bob", true).await?;
        for _ in 0..64 {
            ws.feed(Message::Text(
                r#"{"op":"subscribe","conv":"big","after":1}"#.into(),
            ))
            .await?;
        }
        ws.flush().await?;
        silent.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    report(
        &format!("replay: {sockets} silent sockets x 64 resumes"),
        before,
        gw,
    );
    accounting(addr).await?;
    drop(silent);

    // 3. Re-subscribes while another member waits for live messages.
    let before = rss(gw);
    let mut watcher = socket(addr, "m1", false).await?;
    watcher
        .send(Message::Text(r#"{"op":"subscribe","conv":"big"}"#.into()))
        .await?;
    let mut poster = socket(addr, "m2", false).await?;
    let (mut hammer, mut replies) = socket(addr, "m3", false).await?.split();
    // The hammering member reads what it asked for, so its replays run to the end.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = replies.next().await {} });
    let hammering = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..200 {
            tick.tick().await;
            let resume = r#"{"op":"subscribe","conv":"big","after":1}"#;
            if hammer.send(Message::Text(resume.into())).await.is_err() {
                return;
            }
        }
    });
    let mut worst = Duration::ZERO;
    for n in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = Instant::now();
        let body = format!("live-{n}");
        let frame = format!(r#"{{"op":"send","conv":"big","client_id":"{body}","body":"{body}"}}"#);
        poster.send(Message::Text(frame.into())).await?;
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(frame)) = watcher.next().await {
                if frame.to_text().is_ok_and(|t| t.contains(&body)) {
                    return;
                }
            }
        })
        .await;
        worst = worst.max(sent.elapsed());
        if arrived.is_err() {
            println!("    a live message did not arrive within 30 s");
            break;
        }
    }
    hammering.abort();
    drain.abort();
    report("resubscribe: 20/s for 10 s", before, gw);
    accounting(addr).await?;
    println!("    worst live latency for another member: {worst:?}");

    // 4. Presence queries and listings by a user in 5,000 conversations.
    let before = rss(gw);
    let mut wide = socket(addr, "wide", false).await?;
    // The unread counts after `ready` (a cost of connecting, not of the queries) come first.
    while let Some(Ok(frame)) = wide.next().await {
        if frame.to_text().is_ok_and(|t| t.contains("\"unread\"")) {
            break;
        }
    }
    let (gw_cpu, nats_cpu) = (cpu(gw), cpu(nats));
    let start = Instant::now();
    let (mut answered, mut limited) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for i in 0.. {
        if start.elapsed() >= Duration::from_secs(10) {
            break;
        }
        tick.tick().await;
        let frame = if i % 2 == 0 {
            r#"{"op":"presence","user":"peer"}"#
        } else {
            r#"{"op":"conversations"}"#
        };
        wide.send(Message::Text(frame.into())).await?;
        match wide.next().await {
            Some(Ok(f)) if f.to_text().is_ok_and(|t| t.contains("rate_limited")) => limited += 1,
            Some(Ok(_)) => answered += 1,
            _ => break,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report("queries: presence + listings, 50/s", before, gw);
    accounting(addr).await?;
    println!(
        "    {answered} answered, {limited} rate_limited; CPU: gateway {:.0} %, nats-server {:.0} %",
        (cpu(gw) - gw_cpu) / secs * 100.0,
        (cpu(nats) - nats_cpu) / secs * 100.0
    );

    // 5. A ping flood from a socket that never reads its pongs.
    let before = rss(gw);
    let mut pinger = socket(addr, "m0", true).await?;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        let ping = Message::Ping(vec![0u8; 125].into());
        match tokio::time::timeout(Duration::from_secs(1), pinger.send(ping)).await {
            Ok(Ok(())) => sent += 1,
            // Closed (4029) or no longer read by the gateway: either way the flood ends here.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    report("ping flood, 5 s, pongs never read", before, gw);
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = pinger.next().await {
            if let Message::Close(close) = frame {
                return close.map(|c| u16::from(c.code));
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    println!("    {sent} pings sent; closed with {close:?}");
    Ok(())
}

/// The gateway with default limits (the child process).
async fn serve(url: &str, addr: SocketAddr, db: &str) -> Result<(), Error> {
    let (client, missed) = chatfabric_nats::connect(&ConnectOptions {
        url: url.into(),
        name: "hostile-gateway".into(),
        subscription_capacity: 65_536,
        role: chatfabric_nats::permissions::Role::Gateway,
    })
    .await?;
    let fabric = chatfabric_nats::provision(client, StreamSettings::default()).await?;
    let history: Arc<dyn HistoryStore> =
        Arc::new(SqliteStore::open_for_reads(SqliteConfig::new(db)).await?);
    let config = GatewayConfig {
        auth: Authenticator::hs256(SECRET),
        limits: Limits::default(),
        hub: HubConfig::default(),
        membership_cache: 1_000_000,
        membership_ttl: Duration::from_secs(300),
        history,
        history_cache_bytes: chatfabric_gateway::history::DEFAULT_HISTORY_CACHE_BYTES,
        presence: Default::default(),
        demo: Default::default(),
        api_keys: Default::default(),
        client_membership: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let registry = prometheus_client::registry::Registry::default();
    chatfabric_gateway::run(
        listener,
        fabric,
        config,
        missed,
        registry,
        CancellationToken::new(),
    )
    .await?;
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// An authenticated WebSocket of `user`, past `ready`; `tiny`: a 4 KiB receive buffer.
async fn socket(addr: SocketAddr, user: &str, tiny: bool) -> Result<Socket, Error> {
    let tcp = tokio::net::TcpSocket::new_v4()?;
    if tiny {
        tcp.set_recv_buffer_size(4096)?;
    }
    let stream = tcp.connect(addr).await?;
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", token(user)?).parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await?;
    let _ready = ws.next().await;
    Ok(ws)
}

fn token(user: &str) -> Result<String, Error> {
    Ok(auth::mint_hs256(SECRET, &UserId::new(user)?, 3600)?)
}

/// An HTTP/1.0 GET with `user`'s token; the body.
async fn get(addr: SocketAddr, path: &str, user: &str) -> Result<String, Error> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        token(user)?
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn report(pattern: &str, before: f64, gw: u32) {
    println!(
        "{pattern:<40} {:>7.1} MiB {:>7.1} MiB",
        before / MIB,
        rss(gw) / MIB
    );
}

/// The gateway's own accounting: cached history and queued bytes, from `/metrics`.
async fn accounting(addr: SocketAddr) -> Result<(), Error> {
    let metrics = get(addr, "/metrics", "m0").await?;
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    println!(
        "    history cache {:.1} MiB, queued {:.2} MiB",
        value("chatfabric_gateway_history_cache_bytes") / MIB,
        value("chatfabric_gateway_queued_bytes") / MIB
    );
    Ok(())
}

/// Resident set size of `pid`, bytes.
fn rss(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0)
}

/// CPU seconds (user + system) `pid` used so far.
fn cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// A count from the environment (to scale a run down), else `default`.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
