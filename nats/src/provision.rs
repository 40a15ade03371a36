//! Idempotent provisioning of the message streams and the KV buckets.
//!
//! Every role calls [`provision`] at start-up. It creates what is missing and keeps what exists
//! ([`ensure_stream`]), so any number of processes may run it concurrently. No role changes an
//! existing stream: their NATS users have no `STREAM.UPDATE`, because an update that shrinks a
//! limit discards stored messages as surely as a purge. Settings that differ from an existing
//! stream's are logged, and an operator applies them with admin credentials (`nats stream edit`).

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::subject::{self, Partitions};

/// Settings of the message streams and buckets. Every process of a deployment must agree on them.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Number of message streams conversations are spread over.
    pub partitions: Partitions,
    /// Replicas of each stream and bucket (1 on one machine, 3 on a cluster).
    pub replicas: usize,
    /// How long the streams keep messages: the window in which clients can resume from a cursor.
    pub max_age: Duration,
    /// Upper bound on each stream's size in bytes (-1: unlimited). Oldest messages go first.
    pub max_bytes: i64,
    /// Window in which a retried send with the same client id is stored only once.
    pub duplicate_window: Duration,
    /// Largest stored message, in bytes (the envelope around a body of the largest allowed size).
    pub max_message_size: i32,
    /// File (durable) or memory storage. File unless you are benchmarking without persistence.
    pub storage: stream::StorageType,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            partitions: Partitions::new(1),
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            max_message_size: 64 * 1024,
            storage: stream::StorageType::File,
        }
    }
}

impl StreamSettings {
    /// The JetStream config of partition `part`'s stream.
    pub fn stream_config(&self, part: u16) -> stream::Config {
        stream::Config {
            name: subject::stream_name(part),
            description: Some("chatfabric messages, one subject per conversation".into()),
            subjects: vec![subject::stream_subjects(part)],
            retention: stream::RetentionPolicy::Limits,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_message_size: self.max_message_size,
            storage: self.storage,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            discard: stream::DiscardPolicy::Old,
            // Direct gets let any replica serve single-message reads (read receipts' heads); what
            // the gateway hands clients (gap fills, resumes, history) it asks of the leader.
            allow_direct: true,
            // Messages are immutable history: nobody deletes single messages or purges the stream.
            deny_delete: true,
            deny_purge: true,
            republish: Some(stream::Republish {
                source: format!("{}.{part}.*", subject::MSG_PREFIX),
                destination: format!("{}.{part}.{{{{wildcard(1)}}}}", subject::LIVE_PREFIX),
                headers_only: false,
            }),
            ..Default::default()
        }
    }
}

/// Provisioning failed: NATS is unreachable, JetStream is disabled, or an existing stream has a
/// config that cannot be changed in place (storage type, subjects owned by another stream).
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A message stream could not be created or updated.
    #[error("creating or updating stream {name}: {source} (is JetStream enabled on the server?)")]
    Stream {
        /// The stream's name.
        name: String,
        /// The server's answer.
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// A KV bucket could not be created or updated.
    #[error("creating or updating KV bucket {name}: {reason}")]
    Bucket {
        /// The bucket's name.
        name: String,
        /// The server's answer.
        reason: String,
    },
}

/// Handles to everything [`provision`] made, shared by a process's tasks.
#[derive(Clone)]
pub struct Fabric {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// JetStream on that connection.
    pub js: jetstream::Context,
    /// The settings the streams were provisioned with.
    pub settings: StreamSettings,
    /// One handle per partition stream, indexed by partition.
    pub streams: Vec<stream::Stream>,
    /// Conversations and memberships.
    pub convs: kv::Store,
    /// Gateway heartbeats, connected devices and published presence (see [`presence_bucket`]).
    pub presence: kv::Store,
    /// Read cursors, `r.<conv>.<user>`.
    pub receipts: kv::Store,
}

impl Fabric {
    /// The stream that stores `conv`.
    pub fn stream_for(&self, conv: &crate::ConvId) -> &stream::Stream {
        &self.streams[usize::from(self.settings.partitions.of(conv))]
    }
}

/// A dead-letter stream: what a role could not process, kept 30 days for operators to inspect,
/// with a duplicate window so a retried dead-lettering lands once.
pub fn dead_letter_stream(
    name: &str,
    description: &str,
    subjects: &str,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: name.into(),
        description: Some(description.into()),
        subjects: vec![subjects.into()],
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * 24 * 3600),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The stream behind a KV bucket, as the KV clients expect it (same layout as `nats kv add`).
pub fn bucket_config(bucket: &str, description: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        // Room for a user's conversation index (`u.<user>`, a few thousand conversation ids).
        max_message_size: 512 * 1024,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        // No rollups (a `Nats-Rollup: all` publish to any key would empty the bucket) and no purges:
        // keys are deleted one by one with delete markers, which is all the fabric uses.
        allow_rollup: false,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The presence bucket. Its keys are written on change only (connects, disconnects, transitions)
/// plus one heartbeat per gateway; nothing relies on `max_age`, whose expiry emits no watch event
/// on nats-server 2.9. Memory storage would lose published presence on a server restart, which the
/// heartbeats repair only for online users; file storage keeps last-seen times.
pub fn presence_bucket(replicas: usize) -> stream::Config {
    bucket_config(
        subject::PRESENCE_BUCKET,
        "chatfabric presence: gw.<gateway> heartbeats, dev.<user>.<gateway> devices, user.<user>",
        replicas,
    )
}

/// The read receipts bucket: `r.<conv>.<user>` holds the user's read cursor, moved forward only.
pub fn receipts_bucket(replicas: usize) -> stream::Config {
    bucket_config(
        subject::RECEIPTS_BUCKET,
        "chatfabric read cursors (r.<conv>.<user>)",
        replicas,
    )
}

/// The users bucket: `d.<user>` holds the user's last disconnect and token revocation. Only
/// gateways use it, so only they provision it (other roles are not granted it).
pub fn users_bucket(replicas: usize) -> stream::Config {
    bucket_config(
        subject::USERS_BUCKET,
        "chatfabric disconnects and token revocations (d.<user>)",
        replicas,
    )
}

/// Creates a stream that does not exist yet and otherwise keeps the one there, logging the
/// settings in which it differs from `config` (see the module docs for why roles never update).
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    let name = config.name.clone();
    let stream = js.get_or_create_stream(config.clone()).await?;
    let differ = differences(&config, &stream.cached_info().config);
    if !differ.is_empty() {
        tracing::warn!(
            stream = %name,
            settings = ?differ,
            "the stream exists with other settings than this role's; keeping them (an operator \
             applies new ones with admin credentials: nats stream edit)"
        );
    }
    Ok(stream)
}

/// The settings a deployment chooses in which `have` differs from `want`. The server answers
/// "unlimited" as -1 and one replica as 1 where a config may leave them 0.
fn differences(want: &stream::Config, have: &stream::Config) -> Vec<&'static str> {
    let limit = |v: i64| if v <= 0 { -1 } else { v };
    let checks = [
        (
            "replicas",
            want.num_replicas.max(1) != have.num_replicas.max(1),
        ),
        ("max_age", want.max_age != have.max_age),
        ("max_bytes", limit(want.max_bytes) != limit(have.max_bytes)),
        (
            "max_message_size",
            limit(want.max_message_size.into()) != limit(have.max_message_size.into()),
        ),
        (
            "duplicate_window",
            want.duplicate_window != have.duplicate_window,
        ),
        ("storage", want.storage != have.storage),
        ("allow_rollup", want.allow_rollup != have.allow_rollup),
        ("deny_purge", want.deny_purge != have.deny_purge),
    ];
    checks
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect()
}

/// Creates a KV bucket from its stream config (or keeps the existing one) and opens it.
///
/// This goes through the stream API rather than `create_key_value`, whose account-info query does
/// not parse on nats-server 2.9.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<kv::Store, ProvisionError> {
    let bucket = config.name.trim_start_matches("KV_").to_string();
    ensure_stream(js, config)
        .await
        .map_err(|e| ProvisionError::Bucket {
            name: bucket.clone(),
            reason: e.to_string(),
        })?;
    js.get_key_value(&bucket)
        .await
        .map_err(|e| ProvisionError::Bucket {
            name: bucket,
            reason: e.to_string(),
        })
}

/// Creates the message streams and KV buckets that are missing, and returns handles to them.
pub async fn provision(
    client: async_nats::Client,
    settings: StreamSettings,
) -> Result<Fabric, ProvisionError> {
    let js = jetstream::new(client.clone());
    let mut streams = Vec::with_capacity(usize::from(settings.partitions.count()));
    for part in 0..settings.partitions.count() {
        let config = settings.stream_config(part);
        let name = config.name.clone();
        let stream = ensure_stream(&js, config)
            .await
            .map_err(|source| ProvisionError::Stream { name, source })?;
        streams.push(stream);
    }
    let convs = ensure_bucket(
        &js,
        bucket_config(
            subject::CONVS_BUCKET,
            "chatfabric conversations (c.<conv>) and members (m.<conv>.<user>)",
            settings.replicas,
        ),
    )
    .await?;
    let presence = ensure_bucket(&js, presence_bucket(settings.replicas)).await?;
    let receipts = ensure_bucket(&js, receipts_bucket(settings.replicas)).await?;
    Ok(Fabric {
        client,
        js,
        settings,
        streams,
        convs,
        presence,
        receipts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_as_the_server_reports_it_differs_only_in_what_was_changed() {
        let want = bucket_config("B", "b", 1);
        // The server fills in what a config leaves unset: unlimited as -1.
        let mut have = want.clone();
        have.max_bytes = -1;
        have.max_message_size = want.max_message_size;
        assert!(differences(&want, &have).is_empty());
        have.max_age = Duration::from_secs(60);
        have.num_replicas = 3;
        have.allow_rollup = true;
        assert_eq!(
            differences(&want, &have),
            ["replicas", "max_age", "allow_rollup"]
        );
    }
}
