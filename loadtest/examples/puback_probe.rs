//! JetStream publish -> PubAck latency of async-nats alone, on a current-thread runtime like the
//! fabric's: a stream with the fabric's dedupe window and republish, one message every
//! 1/RATE s (default 2,000/s) for 10 s, each with its own `Nats-Msg-Id`. The baseline for the
//! gateway's `chatfabric_gateway_publish_latency_seconds` (BENCHMARKS.md, "Where send -> ack
//! goes"):
//!
//! ```sh
//! taskset -c 1 nats-server -js -sd "$(mktemp -d)" -p 24777 &
//! RATE=2000 taskset -c 1 target/release/examples/puback_probe nats://127.0.0.1:24777
//! ```
use std::time::{Duration, Instant};
fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or("nats://127.0.0.1:4222".into());
    let rate: u64 = std::env::var("RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2000)
        .max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = async_nats::connect(&url).await?;
        let js = async_nats::jetstream::new(client.clone());
        let _ = js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "P".into(),
                subjects: vec!["p.msg.*".into()],
                duplicate_window: Duration::from_secs(120),
                republish: Some(async_nats::jetstream::stream::Republish {
                    source: "p.msg.*".into(),
                    destination: "p.live.{{wildcard(1)}}".into(),
                    headers_only: false,
                }),
                ..Default::default()
            })
            .await?;
        let mut sub = client.subscribe("p.live.*").await?;
        tokio::spawn(async move {
            use futures::StreamExt;
            while sub.next().await.is_some() {}
        });
        // Each publish's milliseconds to its PubAck, or `None` when it got none.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<f64>>();
        let n = rate * 10;
        let t0 = Instant::now();
        let body = bytes::Bytes::from(vec![b'x'; 300]);
        for i in 0..n {
            let (js, tx, body) = (js.clone(), tx.clone(), body.clone());
            tokio::spawn(async move {
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("m{i}").as_str(),
                );
                let s = Instant::now();
                let acked = match js
                    .publish_with_headers(format!("p.msg.c{}", i % 100), h, body)
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                let _ = tx.send(acked.then(|| s.elapsed().as_secs_f64() * 1000.0));
            });
            tokio::time::sleep_until(
                (t0 + Duration::from_micros((i + 1) * 1_000_000 / rate)).into(),
            )
            .await;
        }
        drop(tx);
        let (mut v, mut failed) = (Vec::new(), 0);
        while let Some(x) = rx.recv().await {
            match x {
                Some(ms) => v.push(ms),
                None => failed += 1,
            }
        }
        anyhow::ensure!(
            !v.is_empty(),
            "no publish was acknowledged ({failed} failed)"
        );
        v.sort_by(f64::total_cmp);
        println!(
            "rate {rate}: acked {} failed {failed} p50 {:.2} p99 {:.2} mean {:.2} ms",
            v.len(),
            v[v.len() / 2],
            v[v.len() * 99 / 100],
            v.iter().sum::<f64>() / v.len() as f64
        );
        anyhow::Ok(())
    })
}
