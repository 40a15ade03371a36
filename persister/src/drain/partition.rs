//! One partition's loop: fetch a batch, dead-letter poison, write, ack, advance the watermark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, kv, AckKind};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::consumer::DrainConfig;
use super::poison::{self, Poison};
use crate::metrics::{DeadLetterLabel, PartitionLabel};
use chatfabric_storage::{HistoryStore, StoredRecord, Watermark};

/// The [`WATERMARKS_BUCKET`](chatfabric_nats::subject::WATERMARKS_BUCKET) key of partition `part`.
pub fn watermark_key(part: u16) -> String {
    format!("p{part}")
}

/// How many acks are in flight at once after a batch is stored.
const ACK_CONCURRENCY: usize = 128;

/// Everything one partition's task owns.
pub(super) struct PartitionDrain {
    /// The partition number; names the stream, the dead-letter subject and the watermark key.
    pub(super) part: u16,
    /// The partition's stream, used to recreate the consumer after fetch errors.
    pub(super) stream: jetstream::stream::Stream,
    /// The shared durable pull consumer.
    pub(super) consumer: PullConsumer,
    /// For dead-letter publishes.
    pub(super) js: jetstream::Context,
    /// Where batches go.
    pub(super) store: Arc<dyn HistoryStore>,
    /// Where the stored watermark is published.
    pub(super) watermarks: kv::Store,
    /// Shared settings and metrics.
    pub(super) config: Arc<DrainConfig>,
    /// Cancelled to stop after the in-flight batch.
    pub(super) shutdown: CancellationToken,
    /// Watermark bookkeeping.
    pub(super) mark: MarkState,
}

/// Where the partition's watermark stands.
#[derive(Debug, Default)]
pub(super) struct MarkState {
    /// The highest watermark the store accepted from this process.
    stored: u64,
    /// An ack floor read from the server, not yet stored: rides with the next batch.
    pending: Option<u64>,
    /// The value last put into the KV bucket.
    published: Option<u64>,
    /// When the ack floor was last read.
    checked: Option<Instant>,
}

/// What a batch's messages turned out to be.
#[derive(Default)]
struct Sorted {
    records: Vec<StoredRecord>,
    acks: Vec<jetstream::Message>,
    poison: Vec<(jetstream::Message, u64, Poison)>,
}

impl PartitionDrain {
    fn label(&self) -> PartitionLabel {
        PartitionLabel {
            partition: self.part,
        }
    }

    fn stream_name(&self) -> String {
        chatfabric_nats::subject::stream_name(self.part)
    }

    /// Runs until shutdown; never returns early on store or NATS errors, it retries them.
    pub(super) async fn run(mut self) {
        self.config.metrics.init_partition(self.part);
        match self.store.watermark(self.part).await {
            Ok(seq) => {
                self.mark.stored = seq;
                self.publish_watermark().await;
            }
            Err(e) => tracing::warn!(part = self.part, error = %e, "reading stored watermark"),
        }
        let mut backoff = Backoff::new(self.config.retry_min, self.config.retry_max);
        while !self.shutdown.is_cancelled() {
            let batch = match self.fetch().await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(part = self.part, error = %e, "fetch failed; retrying");
                    self.pause(backoff.next()).await;
                    self.recreate_consumer().await;
                    continue;
                }
            };
            let full = batch.len() >= self.config.max_batch;
            if !batch.is_empty() {
                self.config.metrics.batch_size.observe(batch.len() as f64);
            }
            match self.handle(batch, backoff.peek()).await {
                Ok(()) => backoff.reset(),
                Err(()) => self.pause(backoff.next()).await,
            }
            self.advance_watermark(!full, false).await;
        }
        self.advance_watermark(true, true).await;
        tracing::info!(part = self.part, "partition drain stopped");
    }

    /// One pull: up to `max_batch` messages, waiting at most `max_wait`.
    async fn fetch(&self) -> Result<Vec<jetstream::Message>, async_nats::Error> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(self.config.max_batch)
            .expires(self.config.max_wait)
            .messages()
            .await?;
        let mut out = Vec::with_capacity(self.config.max_batch);
        while let Some(next) = batch.next().await {
            match next {
                Ok(msg) => out.push(msg),
                // Keep what arrived; the rest of the request is redelivered or re-pulled.
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(part = self.part, error = %e, "batch ended early");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Stores (or dead-letters) one batch and acks it. `Err` when the store failed (already nak'd).
    async fn handle(&mut self, batch: Vec<jetstream::Message>, retry: Duration) -> Result<(), ()> {
        let sorted = self.sort(batch);
        for (msg, seq, poison) in &sorted.poison {
            self.dead_letter(msg, *seq, poison, retry).await;
        }
        if sorted.records.is_empty() {
            return Ok(());
        }
        let metrics = &self.config.metrics;
        let watermark = self.mark.pending.take().map(|seq| Watermark {
            partition: self.part,
            seq,
        });
        let started = Instant::now();
        let written = self.store.write_batch(&sorted.records, watermark).await;
        metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                if let Some(w) = watermark {
                    self.mark.stored = self.mark.stored.max(w.seq);
                }
                metrics
                    .stored
                    .get_or_create(&self.label())
                    .inc_by(sorted.records.len() as u64);
                self.ack_all(sorted.acks).await;
                Ok(())
            }
            Err(e) => {
                self.mark.pending = watermark.map(|w| w.seq);
                metrics.write_errors.get_or_create(&self.label()).inc();
                tracing::warn!(
                    part = self.part,
                    messages = sorted.records.len(),
                    retry_in_ms = retry.as_millis() as u64,
                    error = %e,
                    "history store write failed; batch nak'd for redelivery"
                );
                let nak = AckKind::Nak(Some(retry));
                futures::stream::iter(sorted.acks)
                    .for_each_concurrent(ACK_CONCURRENCY, |m| async move {
                        // A lost nak only delays redelivery until ack_wait.
                        if let Err(e) = m.ack_with(nak).await {
                            tracing::debug!(error = %e, "nak failed");
                        }
                    })
                    .await;
                Err(())
            }
        }
    }

    /// Splits a batch into storable records and poison.
    fn sort(&self, batch: Vec<jetstream::Message>) -> Sorted {
        let mut sorted = Sorted::default();
        for msg in batch {
            let Ok(info) = msg.info() else {
                // Not a JetStream delivery (no ack subject): nothing to ack or store.
                tracing::warn!(part = self.part, subject = %msg.subject, "message without JetStream info");
                continue;
            };
            let (seq, delivered) = (info.stream_sequence, info.delivered);
            if delivered > 1 {
                self.config
                    .metrics
                    .redeliveries
                    .get_or_create(&self.label())
                    .inc();
            }
            match poison::parse(
                msg.subject.as_str(),
                &msg.payload,
                self.config.max_message_bytes,
            ) {
                Ok(parsed) => {
                    sorted.records.push(StoredRecord { seq, msg: parsed });
                    sorted.acks.push(msg);
                }
                Err(p) => sorted.poison.push((msg, seq, p)),
            }
        }
        sorted
    }

    async fn dead_letter(&self, msg: &jetstream::Message, seq: u64, p: &Poison, retry: Duration) {
        let stream = self.stream_name();
        match poison::dead_letter(&self.js, self.part, msg, &stream, seq, p).await {
            Ok(()) => {
                tracing::warn!(part = self.part, seq, reason = p.reason.as_str(), detail = %p.detail, "dead-lettered");
                self.config
                    .metrics
                    .dead_letters
                    .get_or_create(&DeadLetterLabel {
                        partition: self.part,
                        reason: p.reason.as_str(),
                    })
                    .inc();
                if let Err(e) = msg.double_ack_with(AckKind::Term).await {
                    // Redelivered later; the dead-letter publish is deduplicated by message id.
                    tracing::debug!(part = self.part, seq, error = %e, "term failed");
                }
            }
            Err(e) => {
                tracing::warn!(part = self.part, seq, error = %e, "dead-letter publish failed; will retry");
                if let Err(e) = msg.ack_with(AckKind::Nak(Some(retry))).await {
                    tracing::debug!(error = %e, "nak failed");
                }
            }
        }
    }

    /// Acks every stored message: one publish each, then one flush for the whole batch.
    ///
    /// Not `double_ack`: waiting for a confirmation per message made the server answer 256
    /// requests per batch and cost the drain about a third of its rate. What the confirmation
    /// bought is not needed here: a lost ack is a redelivery after `ack_wait`, whose rewrite the
    /// store ignores, and the ack floor read next may lag these acks by a moment, which only makes
    /// the watermark (a lower bound by contract) catch up one interval later.
    async fn ack_all(&self, acks: Vec<jetstream::Message>) {
        let failures = &self.config.metrics.ack_failures;
        let label = self.label();
        futures::stream::iter(acks)
            .for_each_concurrent(ACK_CONCURRENCY, |m| {
                let label = label.clone();
                async move {
                    if let Err(e) = m.ack().await {
                        // Harmless: the message is redelivered and its rewrite ignored.
                        failures.get_or_create(&label).inc();
                        tracing::debug!(error = %e, "ack not sent");
                    }
                }
            })
            .await;
        if let Err(e) = self.js.client().flush().await {
            failures.get_or_create(&label).inc();
            tracing::debug!(part = self.part, error = %e, "flushing acks failed");
        }
    }

    /// Reads the ack floor (at most every `watermark_interval` unless `force`), and stores and
    /// publishes it when no batch is about to carry it (`flush`).
    async fn advance_watermark(&mut self, flush: bool, force: bool) {
        let due = self
            .mark
            .checked
            .is_none_or(|t| t.elapsed() >= self.config.watermark_interval);
        if !(due || force) {
            return;
        }
        self.mark.checked = Some(Instant::now());
        let label = self.label();
        match self.consumer.info().await {
            Ok(info) => {
                let metrics = &self.config.metrics;
                metrics
                    .lag
                    .get_or_create(&label)
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                let unstored = info.num_pending.saturating_add(info.num_ack_pending as u64);
                metrics
                    .unstored
                    .get_or_create(&label)
                    .set(i64::try_from(unstored).unwrap_or(i64::MAX));
                let floor = info.ack_floor.stream_sequence;
                if floor > self.mark.stored {
                    self.mark.pending = Some(self.mark.pending.unwrap_or(0).max(floor));
                }
            }
            Err(e) => tracing::debug!(part = self.part, error = %e, "consumer info failed"),
        }
        if flush {
            if let Some(seq) = self.mark.pending.take() {
                let w = Watermark {
                    partition: self.part,
                    seq,
                };
                match self.store.write_batch(&[], Some(w)).await {
                    Ok(()) => self.mark.stored = self.mark.stored.max(seq),
                    Err(e) => {
                        self.mark.pending = Some(seq);
                        tracing::warn!(part = self.part, error = %e, "storing watermark failed");
                    }
                }
            }
        }
        self.publish_watermark().await;
    }

    /// Puts the stored watermark into the KV bucket if it changed.
    async fn publish_watermark(&mut self) {
        let stored = self.mark.stored;
        if self.mark.published == Some(stored) {
            return;
        }
        self.config
            .metrics
            .watermark
            .get_or_create(&self.label())
            .set(i64::try_from(stored).unwrap_or(i64::MAX));
        match self
            .watermarks
            .put(watermark_key(self.part), stored.to_string().into())
            .await
        {
            Ok(_) => self.mark.published = Some(stored),
            Err(e) => tracing::debug!(part = self.part, error = %e, "publishing watermark failed"),
        }
    }

    /// Recreates (or re-binds to) the durable consumer, e.g. after an operator deleted it.
    async fn recreate_consumer(&mut self) {
        match self
            .stream
            .create_consumer(self.config.consumer_config())
            .await
        {
            Ok(consumer) => self.consumer = consumer,
            Err(e) => tracing::warn!(part = self.part, error = %e, "recreating consumer failed"),
        }
    }

    /// Waits `delay` unless shutdown comes first. A backoff, not a synchronisation.
    async fn pause(&self, delay: Duration) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential backoff between retries.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The delay the next failure will wait.
    fn peek(&self) -> Duration {
        self.current
    }

    /// The delay to wait now; doubles the next one.
    fn next(&mut self) -> Duration {
        let now = self.current;
        self.current = (self.current * 2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let seen: Vec<_> = (0..4).map(|_| b.next().as_millis()).collect();
        assert_eq!(seen, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.peek().as_millis(), 100);
    }
}
