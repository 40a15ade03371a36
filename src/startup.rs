//! Getting a role through start-up while NATS is in trouble: every step that needs the server
//! (connecting, provisioning streams and buckets, creating consumers) is retried with backoff until
//! it succeeds or the process is told to stop, and a gateway answers `/readyz` with 503 meanwhile.
//!
//! A fresh 3-node cluster electing its stream leaders, or a restart during an election, answers
//! JetStream requests with timeouts for seconds; a role that exited then would stay down.

use std::fmt::Display;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What one failed attempt means for the next one.
pub(crate) enum Failure<E> {
    /// The server may answer later (timeouts, no leader yet, connection refused).
    Transient(E),
    /// Retrying cannot help (a malformed URL, a refused password): give up.
    Fatal(E),
}

/// Runs `attempt` until it succeeds (`Ok(Some(_))`), fails fatally (`Err`), or `shutdown` is
/// cancelled (`Ok(None)`), pausing with exponential backoff between attempts. `what` names the
/// step in the warnings logged for each failure.
pub(crate) async fn retry<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure<E>>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => {
                if attempts > 0 {
                    tracing::info!(attempts = attempts + 1, "{what}: succeeded");
                }
                return Ok(Some(value));
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                attempts += 1;
                tracing::warn!(error = %e, attempts, retry_in = ?backoff, "{what}: failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Answers HTTP on a gateway's listener until the future is dropped (when the gateway is ready to
/// take the listener over): `/healthz` 200 (the process is alive), everything else 503, so a load
/// balancer sends clients elsewhere meanwhile.
pub(crate) async fn answer_not_ready(listener: &TcpListener) {
    // The requests being answered, aborted with the future (dropping the set): nothing answers
    // "not ready" once the gateway took the listener over or shutdown stopped the start-up.
    let mut answers = JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while answers.try_join_next().is_some() {}
        answers.spawn(async move {
            let mut head = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let head = String::from_utf8_lossy(&head[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path == "/healthz" {
                ("200 OK", "ok\n")
            } else {
                (
                    "503 Service Unavailable",
                    "starting: connecting to NATS and provisioning streams\n",
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
