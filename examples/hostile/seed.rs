//! Seeding the hostile patterns' data straight into NATS: conversations, a user in thousands of
//! them, stored messages.

use std::time::{Duration, Instant};

use chatfabric_nats::wire::{ConvKind, ConversationInfo, Membership};
use chatfabric_nats::{subject, ConnectOptions, ConvId, Fabric, StreamSettings, UserId};

use super::Error;

pub(super) async fn connect(url: &str) -> Result<Fabric, Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let connected = chatfabric_nats::connect(&ConnectOptions {
            url: url.into(),
            name: "hostile".into(),
            subscription_capacity: 8192,
            role: chatfabric_nats::permissions::Role::Gateway,
        })
        .await;
        match connected {
            Ok((client, _)) => {
                return Ok(chatfabric_nats::provision(client, StreamSettings::default()).await?)
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes a group `conv` with `members` straight into the bucket (as `create` would).
pub(super) async fn seed_conversation(
    fabric: &Fabric,
    conv: &ConvId,
    members: &[String],
) -> Result<(), Error> {
    let info = ConversationInfo {
        conv: conv.clone(),
        kind: ConvKind::Group,
        created_by: UserId::new(&members[0])?,
        created_at: 0,
        title: None,
    };
    fabric
        .convs
        .put(subject::conv_key(conv), serde_json::to_vec(&info)?.into())
        .await?;
    for m in members {
        let user = UserId::new(m)?;
        let record = Membership {
            added_by: user.clone(),
            added_at: 0,
        };
        fabric
            .convs
            .put(
                subject::member_key(conv, &user),
                serde_json::to_vec(&record)?.into(),
            )
            .await?;
        fabric
            .convs
            .put(
                subject::user_convs_key(&user),
                serde_json::to_vec(&[conv])?.into(),
            )
            .await?;
    }
    Ok(())
}

/// `wide` in `n` groups; `peer` shares only the last one.
pub(super) async fn seed_wide_user(fabric: &Fabric, n: usize) -> Result<(), Error> {
    let wide = UserId::new("wide")?;
    let convs: Vec<ConvId> = (0..n)
        .map(|i| ConvId::new(format!("w-{i}")))
        .collect::<Result<_, _>>()?;
    for chunk in convs.chunks(500) {
        let puts = chunk.iter().flat_map(|conv| {
            let info = ConversationInfo {
                conv: conv.clone(),
                kind: ConvKind::Group,
                created_by: wide.clone(),
                created_at: 0,
                title: Some(format!("room {conv}")),
            };
            let record = Membership {
                added_by: wide.clone(),
                added_at: 0,
            };
            [
                (subject::conv_key(conv), serde_json::to_vec(&info)),
                (
                    subject::member_key(conv, &wide),
                    serde_json::to_vec(&record),
                ),
            ]
        });
        let writes = puts.map(|(key, value)| async move {
            fabric
                .convs
                .put(key, value?.into())
                .await
                .map_err(Error::from)
        });
        futures::future::try_join_all(writes).await?;
    }
    let last = &convs[n - 1];
    seed_conversation(fabric, last, &["wide".into(), "peer".into()]).await?;
    fabric
        .convs
        .put(
            subject::user_convs_key(&wide),
            serde_json::to_vec(&convs)?.into(),
        )
        .await?;
    Ok(())
}

/// Stores `n` messages of 4 KiB in `conv`; returns the newest seq.
pub(super) async fn store_messages(fabric: &Fabric, conv: &ConvId, n: usize) -> Result<u64, Error> {
    let metrics = chatfabric_gateway::metrics::Metrics::new(&mut Default::default());
    let alice = UserId::new("m0")?;
    let mut head = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let acks = futures::future::join_all(chunk.iter().map(|i| {
            chatfabric_gateway::send::publish(
                fabric,
                &metrics,
                chatfabric_gateway::send::Draft {
                    conv: conv.clone(),
                    sender: alice.clone(),
                    via: None,
                    client_id: format!("s{i}"),
                    body: "x".repeat(4096),
                },
                Duration::from_secs(10),
            )
        }))
        .await;
        for a in acks {
            head = head.max(a?.seq);
        }
    }
    Ok(head)
}
