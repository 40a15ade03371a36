//! End-to-end drain rate: a backlog in JetStream -> the drain -> the SQLite store.
//!
//! `cargo run --release -p chatfabric-persister --example drain_rate -- [MESSAGES] [CONVS]`
//!
//! Starts a nats-server, publishes `MESSAGES` messages over `CONVS` conversations to partition 0,
//! then runs [`chatfabric_persister::run`] and times until the stored watermark covers the last
//! one (everything stored *and* acked). Prints messages per second of wall time and of this
//! process's CPU time (the nats-server's CPU is not included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatfabric_nats::server::NatsServer;
use chatfabric_nats::wire::MSG_ID_HEADER;
use chatfabric_nats::StreamSettings;
use chatfabric_persister::DrainConfig;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

mod common;

#[tokio::main]
async fn main() {
    let mut args = common::numbers();
    let total = args.next().unwrap_or(100_000);
    let convs = args.next().unwrap_or(1000).max(1);
    let server = NatsServer::start(Default::default()).expect("nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let fabric = chatfabric_nats::provision(client, StreamSettings::default())
        .await
        .expect("provision");
    let published = Instant::now();
    let last = futures::stream::iter(0..total)
        .map(|i| {
            let msg = common::message(i, convs);
            let fabric = fabric.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(MSG_ID_HEADER, msg.dedupe_id().as_str());
                let subject = fabric.settings.partitions.msg_subject(&msg.conv);
                let payload = serde_json::to_vec(&msg).expect("json");
                let ack = fabric
                    .js
                    .publish_with_headers(subject, headers, payload.into());
                ack.await.expect("publish").await.expect("puback").sequence
            }
        })
        .buffer_unordered(512)
        .fold(0, |a, b| async move { a.max(b) })
        .await;
    eprintln!("published {total} in {:.1?}", published.elapsed());

    let (_dir, store) = common::temp_store("drain.db").await;
    let shutdown = CancellationToken::new();
    let (cpu0, wall0) = (common::cpu_seconds(), Instant::now());
    let drain = tokio::spawn(chatfabric_persister::run(
        fabric.clone(),
        Arc::clone(&store),
        DrainConfig::default(),
        shutdown.clone(),
    ));
    while store.watermark(0).await.expect("watermark") < last {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (wall, cpu) = (wall0.elapsed().as_secs_f64(), common::cpu_seconds() - cpu0);
    shutdown.cancel();
    drain.await.expect("join").expect("drain");
    println!(
        "drained {total} msgs ({convs} convs): {:.0} msg/s wall ({wall:.2} s), {:.0} msg/s per \
         persister CPU-second ({cpu:.2} s); loadavg {}",
        total as f64 / wall,
        total as f64 / cpu.max(1e-9),
        common::load_average()
    );
}
