//! A protocol-speaking WebSocket client for tests.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an expected frame before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// Ops of ephemeral events (and the `unread` frame after `ready`), kept apart from replies.
const EVENT_OPS: &[&str] = &["unread", "typing", "presence", "read"];

/// A connected client. `msg` frames and ephemeral events are kept apart from replies, so a test
/// can wait for an ack while messages and events keep arriving.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    msgs: VecDeque<Value>,
    replies: VecDeque<Value>,
    events: VecDeque<Value>,
    /// The user this client authenticated as.
    pub user: String,
}

impl Client {
    /// Connects with a token in the `Authorization` header and waits for `ready`.
    pub async fn connect(url: &str, user: &str) -> Self {
        Self::connect_with_token(url, user, &super::fabric::token(user)).await
    }

    /// Connects as `user` with `token` in the `Authorization` header and waits for `ready`.
    pub async fn connect_with_token(url: &str, user: &str, token: &str) -> Self {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("ws connect");
        let mut c = Self::from_socket(ws, user);
        let ready = c.reply().await;
        assert_eq!(ready["op"], "ready", "{ready}");
        c
    }

    /// Wraps an already connected socket (for tests that authenticate by hand).
    pub fn from_socket(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, user: &str) -> Self {
        Self {
            ws,
            msgs: VecDeque::new(),
            replies: VecDeque::new(),
            events: VecDeque::new(),
            user: user.into(),
        }
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send frame");
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send raw");
    }

    async fn read_one(&mut self) -> Option<Value> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Err(_) => panic!("{}: no frame within {WAIT:?}", self.user),
            Ok(Some(Ok(Message::Text(t)))) => {
                Some(serde_json::from_str(&t).expect("server frames are JSON"))
            }
            Ok(Some(Ok(Message::Close(c)))) => panic!("{}: closed unexpectedly: {c:?}", self.user),
            Ok(Some(Ok(_))) => None,
            Ok(other) => panic!("{}: connection ended: {other:?}", self.user),
        }
    }

    async fn fill(&mut self) {
        if let Some(v) = self.read_one().await {
            if v["op"] == "msg" {
                self.msgs.push_back(v);
            } else if EVENT_OPS.iter().any(|op| v["op"] == *op) {
                self.events.push_back(v);
            } else {
                self.replies.push_back(v);
            }
        }
    }

    /// The next non-`msg` frame.
    pub async fn reply(&mut self) -> Value {
        loop {
            if let Some(v) = self.replies.pop_front() {
                return v;
            }
            self.fill().await;
        }
    }

    /// The next ephemeral event (`presence`, `typing`, `read`, `unread`; query replies too).
    pub async fn event(&mut self) -> Value {
        loop {
            if let Some(v) = self.events.pop_front() {
                return v;
            }
            self.fill().await;
        }
    }

    /// The next event matching `pred`, skipping (and discarding) others.
    pub async fn event_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.event().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next event matching `pred` within `d`, skipping others; `None` if none came.
    pub async fn event_within(
        &mut self,
        d: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            while let Some(v) = self.events.pop_front() {
                if pred(&v) {
                    return Some(v);
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    if v["op"] == "msg" {
                        self.msgs.push_back(v);
                    } else if EVENT_OPS.iter().any(|op| v["op"] == *op) {
                        self.events.push_back(v);
                    } else {
                        self.replies.push_back(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("{}: connection ended: {other:?}", self.user),
            }
        }
    }

    /// A reply already received, if any.
    pub fn try_reply(&mut self) -> Option<Value> {
        self.replies.pop_front()
    }

    /// Closes the connection from the client side (a normal close).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The next `msg` frame.
    pub async fn msg(&mut self) -> Value {
        loop {
            if let Some(v) = self.msgs.pop_front() {
                return v;
            }
            self.fill().await;
        }
    }

    /// The next `n` messages' bodies and sequences, checking the `prev` chain as it goes.
    pub async fn msgs(&mut self, n: usize) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = Vec::with_capacity(n);
        for _ in 0..n {
            let m = self.msg().await;
            let seq = m["seq"].as_u64().expect("seq");
            if let Some((last, _)) = out.last() {
                assert_eq!(m["prev"].as_u64(), Some(*last), "gap or reorder: {m}");
                assert!(seq > *last, "sequence went backwards: {m}");
            }
            out.push((seq, m["body"].as_str().expect("body").to_string()));
        }
        out
    }

    /// Asserts no `msg` frame arrives within `d`.
    pub async fn no_msg_within(&mut self, d: Duration) {
        if let Some(m) = self.msgs.pop_front() {
            panic!("{}: unexpected message {m}", self.user);
        }
        match tokio::time::timeout(d, self.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                assert_ne!(v["op"], "msg", "{}: unexpected message {v}", self.user);
                if EVENT_OPS.iter().any(|op| v["op"] == *op) {
                    self.events.push_back(v);
                } else {
                    self.replies.push_back(v);
                }
            }
            Ok(other) => panic!("{}: unexpected {other:?}", self.user),
        }
    }

    /// Creates a group with `members` (besides this user) and returns its id.
    pub async fn create_group(&mut self, members: &[&str]) -> String {
        self.send(json!({"op":"create","kind":"group","members":members}))
            .await;
        let r = self.reply().await;
        assert_eq!(r["op"], "conversation", "{r}");
        r["conversation"]["conv"]
            .as_str()
            .expect("conv")
            .to_string()
    }

    /// Subscribes (optionally after a cursor) and returns the cursor it starts after.
    pub async fn subscribe(&mut self, conv: &str, after: Option<u64>) -> u64 {
        let mut f = json!({"op":"subscribe","conv":conv});
        if let Some(a) = after {
            f["after"] = json!(a);
        }
        self.send(f).await;
        let r = self.reply().await;
        assert_eq!(r["op"], "subscribed", "{r}");
        r["cursor"].as_u64().expect("cursor")
    }

    /// Sends a message and waits for its ack; returns (seq, duplicate).
    pub async fn post(&mut self, conv: &str, client_id: &str, body: &str) -> (u64, bool) {
        self.send(json!({"op":"send","conv":conv,"client_id":client_id,"body":body}))
            .await;
        let r = self.reply().await;
        assert_eq!(r["op"], "ack", "{r}");
        assert_eq!(r["client_id"], client_id, "{r}");
        (
            r["seq"].as_u64().expect("seq"),
            r["duplicate"].as_bool().expect("duplicate"),
        )
    }

    /// Every frame until the server closes the connection, and the close code.
    pub async fn frames_until_close(&mut self) -> (Vec<Value>, u16) {
        let mut frames: Vec<Value> = self.replies.drain(..).chain(self.msgs.drain(..)).collect();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("{}: not closed within {WAIT:?}", self.user),
                Ok(Some(Ok(Message::Text(t)))) => {
                    frames.push(serde_json::from_str(&t).expect("json"))
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    return (frames, c.map(|c| c.code.into()).unwrap_or(1005))
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("{}: ended without a close frame: {other:?}", self.user),
            }
        }
    }

    /// Posts `m{i}` with client id `k{i}` for each `i` in `range`, one after the other; returns
    /// the acknowledged seqs.
    pub async fn post_numbered(&mut self, conv: &str, range: std::ops::Range<usize>) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(range.len());
        for i in range {
            seqs.push(self.post(conv, &format!("k{i}"), &format!("m{i}")).await.0);
        }
        seqs
    }

    /// Reads until the server closes the connection and returns the close code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("{}: not closed within {WAIT:?}", self.user),
                Ok(Some(Ok(Message::Close(Some(c))))) => return c.code.into(),
                Ok(Some(Ok(Message::Close(None)))) => return 1005,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("{}: error before close frame: {e}", self.user),
                Ok(None) => panic!("{}: connection ended without a close frame", self.user),
            }
        }
    }
}
