//! Following a stream with a durable pull consumer: the message partitions (coalesced into
//! `message.offline` events) and the membership keys (`member.added` / `member.removed`).
//!
//! Each stream has one durable consumer named after `--durable` (explicit acks, unlimited
//! deliveries, at most `max_ack_pending` unacked). A new consumer starts at the stream's end: a
//! fresh deployment does not notify the past. A message is acked when it has no offline recipient
//! (at once), or when every event built from it was delivered or dead-lettered ([`crate::pending`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use chatfabric_nats::subject::{parse_member_key, CONVS_BUCKET};
use chatfabric_nats::wire::{now_ms, Membership, StoredMessage};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::coalesce::{Coalescer, Due};
use crate::endpoint::Event;
use crate::event::{self, EventKind, MemberChange, MessageView, OfflineMessages};
use crate::metrics::StreamLabel;
use crate::pending::{self, Held};
use crate::shared::Shared;

/// Longest a fetch waits for messages (also bounds how late a window closes and shutdown).
const MAX_WAIT: Duration = Duration::from_millis(100);
/// How often the consumer's lag is read.
const INFO_INTERVAL: Duration = Duration::from_secs(1);
/// First pause after a failed fetch; doubles up to 5 s.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// What a followed stream turns into events.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// A message partition.
    Messages,
    /// The conversations bucket (membership keys).
    Members,
}

/// The pull consumer configuration of `durable`.
pub(crate) fn consumer_config(
    shared: &Shared,
    durable: String,
) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(durable),
        description: Some("chatfabric webhooks".into()),
        deliver_policy: jetstream::consumer::DeliverPolicy::New,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: shared.config.ack_wait,
        // Never give up on a message: a receiver outage ends in dead letters, not in losses.
        max_deliver: -1,
        max_ack_pending: shared.config.max_ack_pending,
        ..Default::default()
    }
}

/// One followed stream.
pub(crate) struct Follower {
    /// What its messages mean.
    pub(crate) source: Source,
    /// The stream's name, part of every held message's key.
    pub(crate) name: Arc<str>,
    /// The stream, to re-create the consumer after errors.
    pub(crate) stream: jetstream::stream::Stream,
    /// The durable consumer's name.
    pub(crate) durable: String,
    /// The consumer.
    pub(crate) consumer: PullConsumer,
    /// What every follower shares.
    pub(crate) shared: Arc<Shared>,
    /// Cancelled to stop.
    pub(crate) shutdown: CancellationToken,
}

impl Follower {
    /// Fetches, builds events and dispatches them until shutdown; retries every failure.
    pub(crate) async fn run(mut self) {
        let config = &self.shared.config;
        let mut windows: Coalescer<Arc<Held>> =
            Coalescer::new(config.coalesce, config.last_messages);
        let mut backoff = RETRY_MIN;
        let mut info_at = Instant::now();
        while !self.shutdown.is_cancelled() {
            for due in windows.due(Instant::now()) {
                self.shared.dispatch(offline_event(due)).await;
            }
            let wait = windows
                .next_close()
                .map_or(MAX_WAIT, |t| t.saturating_duration_since(Instant::now()))
                .clamp(Duration::from_millis(5), MAX_WAIT);
            match self.fetch(wait).await {
                Ok(batch) => {
                    backoff = RETRY_MIN;
                    for msg in batch {
                        match self.source {
                            Source::Messages => self.message(msg, &mut windows).await,
                            Source::Members => self.member(msg).await,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.name, error = %e, "webhook fetch failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    let config = consumer_config(&self.shared, self.durable.clone());
                    match self.stream.create_consumer(config).await {
                        Ok(c) => self.consumer = c,
                        Err(e) => {
                            tracing::warn!(stream = %self.name, error = %e, "re-creating the consumer failed")
                        }
                    }
                }
            }
            if info_at.elapsed() >= INFO_INTERVAL {
                info_at = Instant::now();
                self.report_lag().await;
            }
        }
        // Open windows are dropped unacked: JetStream redelivers them after ack_wait.
        tracing::info!(stream = %self.name, open = windows.open_windows(), "webhook follower stopped");
    }

    async fn fetch(&self, wait: Duration) -> Result<Vec<jetstream::Message>, async_nats::Error> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(self.shared.config.batch)
            .expires(wait)
            .messages()
            .await?;
        let mut out = Vec::new();
        while let Some(next) = batch.next().await {
            match next {
                Ok(msg) => out.push(msg),
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// A stored message: held in its conversation's window for its offline recipients, or
    /// acked at once when it has none.
    async fn message(&self, msg: jetstream::Message, windows: &mut Coalescer<Arc<Held>>) {
        let Some((seq, reply)) = delivery(&msg) else {
            return;
        };
        let stored: StoredMessage = match serde_json::from_slice(&msg.payload) {
            Ok(m) => m,
            Err(e) => {
                // Not ours to keep: the persister dead-letters poison.
                tracing::debug!(stream = %self.name, seq, error = %e, "skipping an unreadable message");
                self.shared.metrics.skipped.inc();
                return pending::ack_now(&self.shared.client, reply).await;
            }
        };
        let recipients = self
            .shared
            .directory
            .offline_recipients(&stored.conv, &stored.sender);
        if recipients.is_empty() {
            return pending::ack_now(&self.shared.client, reply).await;
        }
        let Some(held) =
            self.shared
                .inflight
                .hold(&self.shared.client, (self.name.clone(), seq), reply)
        else {
            return;
        };
        let view = MessageView {
            seq,
            id: stored.id,
            sender: stored.sender,
            ts: stored.ts,
            body: stored.body,
        };
        windows.add(
            Instant::now(),
            Arc::new(view),
            &stored.conv,
            recipients,
            held,
        );
    }

    /// A change of the conversations bucket: an event for membership keys, an ack for others.
    async fn member(&self, msg: jetstream::Message) {
        let Some((revision, reply)) = delivery(&msg) else {
            return;
        };
        let prefix = format!("$KV.{CONVS_BUCKET}.");
        let key = msg.subject.as_str().strip_prefix(&prefix).unwrap_or("");
        let Some((conv, user)) = parse_member_key(key) else {
            return pending::ack_now(&self.shared.client, reply).await;
        };
        let removed = crate::directory::is_delete(&msg);
        let record: Option<Membership> = if removed {
            None
        } else {
            serde_json::from_slice(&msg.payload).ok()
        };
        let kind = if removed {
            EventKind::MemberRemoved
        } else {
            EventKind::MemberAdded
        };
        let Some(held) =
            self.shared
                .inflight
                .hold(&self.shared.client, (self.name.clone(), revision), reply)
        else {
            return;
        };
        let id = event::member_id(kind, &conv, &user, revision);
        let body = event::encode(&MemberChange {
            head: event::Head {
                id: &id,
                kind: kind.as_str(),
                created_at: now_ms(),
                conv: &conv,
                user: &user,
            },
            added_by: record.as_ref().map(|r| &r.added_by),
            added_at: record.as_ref().map(|r| r.added_at),
            revision,
        });
        self.shared
            .dispatch(Event::new(id, kind, body, vec![held]))
            .await;
    }

    async fn report_lag(&self) {
        let mut consumer = self.consumer.clone();
        match consumer.info().await {
            Ok(info) => {
                let label = StreamLabel {
                    stream: self.name.to_string(),
                };
                let m = &self.shared.metrics;
                m.lag
                    .get_or_create(&label)
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                m.ack_pending
                    .get_or_create(&label)
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(stream = %self.name, error = %e, "consumer info failed"),
        }
    }
}

/// The stream sequence and ack subject of a JetStream delivery.
fn delivery(msg: &jetstream::Message) -> Option<(u64, async_nats::Subject)> {
    let seq = msg.info().ok()?.stream_sequence;
    Some((seq, msg.reply.clone()?))
}

/// The `message.offline` event of a closed window's batch.
fn offline_event(due: Due<Arc<Held>>) -> Event {
    let Due { conv, user, batch } = due;
    let id = event::offline_id(&conv, &user, batch.first_seq, batch.last_seq);
    let body = event::encode(&OfflineMessages {
        head: event::Head {
            id: &id,
            kind: EventKind::MessageOffline.as_str(),
            created_at: now_ms(),
            conv: &conv,
            user: &user,
        },
        count: batch.count,
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        messages: batch.last.iter().map(|m| m.as_ref()).collect(),
    });
    Event::new(id, EventKind::MessageOffline, body, batch.held)
}
