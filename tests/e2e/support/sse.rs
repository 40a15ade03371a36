//! A minimal server-sent events reader over HTTP/1.0 (so the body is close-delimited).

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One event.
#[derive(Debug)]
pub struct Event {
    /// The `id:` field.
    pub id: String,
    /// The `event:` field.
    pub kind: String,
    /// The `data:` field, parsed.
    pub data: Value,
}

/// An open event stream.
pub struct SseClient {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
    /// The response status.
    pub status: u16,
}

impl SseClient {
    /// Opens `/v1/events` (with `query`) as `user`, resuming after `last_event_id` if given.
    pub async fn connect(
        addr: SocketAddr,
        user: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        Self::connect_with_token(addr, &super::fabric::token(user), query, last_event_id).await
    }

    /// Opens `/v1/events` (with `query`) with `token`, resuming after `last_event_id` if given.
    pub async fn connect_with_token(
        addr: SocketAddr,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!(
            "GET /v1/events{query} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut lines = BufReader::new(s).lines();
        let status_line = lines.next_line().await.expect("read").expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        while let Some(l) = lines.next_line().await.expect("read") {
            if l.is_empty() {
                break;
            }
        }
        Self { lines, status }
    }

    /// The rest of the response: the JSON body of a refusal.
    pub async fn body(mut self) -> String {
        let mut body = String::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            body.push_str(&line);
        }
        body
    }

    /// The next event (comments and `retry:` skipped); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        let (mut id, mut kind, mut data) = (String::new(), String::new(), None);
        loop {
            let line = tokio::time::timeout(super::client::WAIT, self.lines.next_line())
                .await
                .expect("an event in time")
                .expect("read")?;
            if line.is_empty() {
                if let Some(data) = data.take() {
                    return Some(Event { id, kind, data });
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).expect("data is JSON"));
            }
        }
    }

    /// The next `msg` event.
    pub async fn msg(&mut self) -> Event {
        loop {
            let e = self.next().await.expect("stream open");
            if e.kind == "msg" {
                return e;
            }
        }
    }
}
