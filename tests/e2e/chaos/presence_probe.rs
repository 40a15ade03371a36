//! Presence as users see it during the chaos: a few watched users stay connected the way a real
//! client does (on failure or silence, to the other gateway), and an observer in a group with
//! them asks for their presence twice a second. Whenever a watched user has been connected for a
//! while and the answer says offline, that is presence error time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The users watched.
pub const WATCHED: [&str; 4] = ["pw0", "pw1", "pw2", "pw3"];
/// A connection this young may not be visible yet (device key write, presence event).
const SETTLE: Duration = Duration::from_secs(1);
/// A gateway silent this long (no frame, no pong) is left for the other one.
const SILENCE: Duration = Duration::from_secs(4);

/// One stretch in which a connected user was reported offline.
#[derive(Debug, Clone, Copy)]
pub struct Wrong {
    /// When it began.
    pub at: Instant,
    /// How long it lasted.
    pub lasted: Duration,
}

#[derive(Default)]
struct UserState {
    connected_since: Option<Instant>,
    wrong_since: Option<Instant>,
}

/// The running probe.
pub struct PresenceProbe {
    users: Arc<Mutex<Vec<UserState>>>,
    wrongs: Arc<Mutex<Vec<Wrong>>>,
    /// Stops the watched users' connections (the observer keeps asking).
    watchers: CancellationToken,
    stop: CancellationToken,
    /// What the observer heard last, per watched user.
    answers: Arc<Mutex<Vec<Option<bool>>>>,
}

async fn connect(url: &str, user: &str) -> Option<Ws> {
    let mut req = url.into_client_request().ok()?;
    let token = crate::support::fabric::token(user);
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().ok()?);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .ok()?
    .ok()?;
    let ready = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await
        .ok()??
        .ok()?;
    ready.to_text().ok()?.contains("\"ready\"").then_some(ws)
}

impl PresenceProbe {
    /// Creates the group and starts the watched users and the observer.
    pub async fn start(urls: Vec<String>) -> Self {
        let mut observer = crate::support::Client::connect(&urls[0], "pobs").await;
        // A fresh cluster may still be electing the buckets' leaders: `unavailable` is retried,
        // as PROTOCOL.md asks of clients.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            observer
                .send(json!({"op":"create","kind":"group","members":WATCHED}))
                .await;
            let r = observer.reply().await;
            if r["op"] == "conversation" {
                break;
            }
            assert!(
                r["code"] == "unavailable" && Instant::now() < deadline,
                "creating the watched group: {r}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(observer);
        let probe = Self {
            users: Arc::new(Mutex::new(
                WATCHED.iter().map(|_| UserState::default()).collect(),
            )),
            wrongs: Arc::default(),
            watchers: CancellationToken::new(),
            stop: CancellationToken::new(),
            answers: Arc::new(Mutex::new(vec![None; WATCHED.len()])),
        };
        for (i, user) in WATCHED.iter().enumerate() {
            tokio::spawn(watch_user(
                i,
                user,
                urls.clone(),
                probe.users.clone(),
                probe.watchers.clone(),
            ));
        }
        tokio::spawn(observe(
            urls,
            probe.users.clone(),
            probe.wrongs.clone(),
            probe.answers.clone(),
            probe.stop.clone(),
        ));
        probe
    }

    /// Stretches of error that began at or after `from`.
    pub fn wrong_since(&self, from: Instant) -> Vec<Wrong> {
        let mut all: Vec<Wrong> = self.wrongs.lock().unwrap().clone();
        let now = Instant::now();
        for u in self.users.lock().unwrap().iter() {
            if let Some(at) = u.wrong_since {
                all.push(Wrong {
                    at,
                    lasted: now - at,
                });
            }
        }
        all.into_iter().filter(|w| w.at >= from).collect()
    }

    /// Closes every watched user's connection (they should go offline).
    pub fn disconnect_watched(&self) {
        self.watchers.cancel();
    }

    /// What the observer heard last for every watched user.
    pub fn answers(&self) -> Vec<Option<bool>> {
        self.answers.lock().unwrap().clone()
    }
}

impl Drop for PresenceProbe {
    fn drop(&mut self) {
        self.watchers.cancel();
        self.stop.cancel();
    }
}

async fn watch_user(
    i: usize,
    user: &'static str,
    urls: Vec<String>,
    users: Arc<Mutex<Vec<UserState>>>,
    stop: CancellationToken,
) {
    let mut target = i % urls.len();
    while !stop.is_cancelled() {
        let Some(mut ws) = connect(&urls[target], user).await else {
            target = (target + 1) % urls.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        users.lock().unwrap()[i].connected_since = Some(Instant::now());
        let mut heard = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    break;
                }
                frame = ws.next() => match frame {
                    Some(Ok(_)) => heard = Instant::now(),
                    _ => break,
                },
                _ = tick.tick() => {
                    if heard.elapsed() > SILENCE || ws.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
        users.lock().unwrap()[i].connected_since = None;
        target = (target + 1) % urls.len();
    }
}

/// Asks for every watched user's presence; `None` when the gateway did not answer in time.
async fn ask(ws: &mut Ws) -> Option<Vec<bool>> {
    let mut out = Vec::new();
    for user in WATCHED {
        let q = json!({"op":"presence","user":user,"ref":user}).to_string();
        ws.send(Message::text(q)).await.ok()?;
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let frame = ws.next().await?.ok()?;
                let Ok(v) = serde_json::from_str::<Value>(frame.to_text().ok()?) else {
                    continue;
                };
                if v["ref"] == user && v["op"] == "presence" {
                    return Some(v["online"] == true);
                }
            }
        })
        .await
        .ok()??;
        out.push(answer);
    }
    Some(out)
}

async fn observe(
    urls: Vec<String>,
    users: Arc<Mutex<Vec<UserState>>>,
    wrongs: Arc<Mutex<Vec<Wrong>>>,
    answers: Arc<Mutex<Vec<Option<bool>>>>,
    stop: CancellationToken,
) {
    let mut target = 0;
    while !stop.is_cancelled() {
        let Some(mut ws) = connect(&urls[target], "pobs").await else {
            target = (target + 1) % urls.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            let asked = tokio::select! {
                _ = stop.cancelled() => return,
                a = ask(&mut ws) => a,
            };
            let Some(online) = asked else { break };
            let now = Instant::now();
            for (i, u) in users.lock().unwrap().iter_mut().enumerate() {
                answers.lock().unwrap()[i] = Some(online[i]);
                let connected = u
                    .connected_since
                    .is_some_and(|since| now.duration_since(since) >= SETTLE);
                if connected && !online[i] {
                    u.wrong_since.get_or_insert(now);
                } else if let Some(at) = u.wrong_since.take() {
                    wrongs.lock().unwrap().push(Wrong {
                        at,
                        lasted: now - at,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        target = (target + 1) % urls.len();
    }
}
