//! Following a KV bucket for as long as the gateway runs: the watch loop the bucket watchers
//! (membership, users) share.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// With changes from now on.
    Now,
    /// With every key's last value first, then changes.
    LastValues,
}

/// Follows the keys `filter` of `kv` until `shutdown`. Calls `opened` each time a watch opens
/// (what changed while none was open is unknown to the caller) and `entry` for every entry. A
/// watch that fails or ends is opened again; opening is retried every second.
pub(crate) async fn follow<F, Fut>(
    kv: &kv::Store,
    filter: &str,
    start: Start,
    what: &str,
    shutdown: &CancellationToken,
    mut opened: impl FnMut(),
    mut entry: F,
) where
    F: FnMut(kv::Entry) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let watch = match start {
            Start::Now => kv.watch(filter).await,
            Start::LastValues => kv.watch_with_history(filter).await,
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "{what} watch failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        opened();
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = watch.next() => e,
            };
            match next {
                Some(Ok(e)) => entry(e).await,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "{what} watch error; restarting");
                    break;
                }
                None => break,
            }
        }
    }
}
