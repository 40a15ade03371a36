//! An SSE member: receives its conversation as server-sent events from `GET /v1/events?conv=..`,
//! resuming with `Last-Event-ID: <conv>:<seq>` after a drop. SSE members only receive; the
//! WebSocket members of the same conversation send.
//!
//! The HTTP/1.1 exchange is written by hand over the member's own socket (so it binds the same
//! source addresses as WebSocket members, with a 4 KiB read buffer): one request, then a chunked
//! `text/event-stream` body whose `data:` lines are the same JSON frames WebSocket clients get.

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::frames::Reply;
use crate::ledger::ReceiverLedger;
use crate::plan::Member;
use crate::session::{dial, on_text, End};
use crate::shared::{Order, Shared};

/// An open event stream.
pub(crate) struct EventStream {
    io: TcpStream,
    body: Decoder,
}

/// Opens the stream (resuming after `after`) and waits for `subscribed`; returns its cursor.
pub(crate) async fn open(
    shared: &Shared,
    member: &Member,
    token: &str,
    after: Option<u64>,
) -> anyhow::Result<(EventStream, u64)> {
    let target = &shared.targets[member.target];
    let mut io = dial(shared, member).await?;
    let uri: http::Uri = target.url.parse()?;
    let host = uri.authority().map(|a| a.as_str()).unwrap_or("localhost");
    let resume = after
        .map(|a| format!("Last-Event-ID: {}:{a}\r\n", member.conv))
        .unwrap_or_default();
    let request = format!(
        "GET /v1/events?conv={} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\n{resume}\r\n",
        member.conv
    );
    io.write_all(request.as_bytes()).await?;
    let mut body = Decoder::default();
    let mut buf = [0u8; 4096];
    let head = loop {
        if let Some(head) = body.take_head()? {
            break head;
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            bail!("event stream closed before its response head");
        }
        body.push(&buf[..n]);
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "event stream refused: {}",
            head.lines().next().unwrap_or("")
        );
    }
    let mut stream = EventStream { io, body };
    loop {
        match stream.next().await? {
            Some((event, data)) if event == "subscribed" => {
                let reply = Reply::parse(&data).context("unreadable subscribed event")?;
                return Ok((stream, reply.cursor.unwrap_or(0)));
            }
            Some((event, data)) if event == "error" => bail!("event stream error: {data}"),
            Some(_) => {}
            None => bail!("event stream ended before subscribed"),
        }
    }
}

impl EventStream {
    /// The next event with data, as `(event, data)`; `None` when the stream ended.
    async fn next(&mut self) -> anyhow::Result<Option<(String, String)>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(event) = self.body.next_event() {
                return Ok(Some(event));
            }
            if self.body.ended {
                return Ok(None);
            }
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.body.push(&buf[..n]);
        }
    }
}

/// Serves one event-stream session until it ends.
pub(crate) async fn session_loop(
    member: &Member,
    shared: &Shared,
    stream: &mut EventStream,
    ledger: &mut ReceiverLedger,
    orders: &mut mpsc::Receiver<Order>,
    finish: &CancellationToken,
) -> End {
    // SSE members never send, so nothing waits for an ack.
    let mut no_sends = std::collections::HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = finish.cancelled() => return End::Finish,
            event = stream.next() => match event {
                Ok(Some((kind, data))) => match kind.as_str() {
                    "msg" => {
                        on_text(member, shared, &data, ledger, &mut no_sends);
                    }
                    "error" if data.contains("slow_consumer") => return End::Closed(4008),
                    "error" => return End::Closed(1001),
                    _ => {}
                },
                Ok(None) | Err(_) => return End::Broken,
            },
            order = orders.recv() => match order {
                Some(Order::Drop) => return End::Dropped,
                Some(Order::Send) => {}
                None => finish.cancelled().await,
            },
        }
    }
}

/// An HTTP/1.1 response decoder: head, then a chunked (or plain) body cut into SSE events.
#[derive(Debug, Default)]
struct Decoder {
    /// Bytes received and not decoded yet.
    raw: Vec<u8>,
    /// Decoded body bytes not yet cut into events.
    body: Vec<u8>,
    head_done: bool,
    chunked: bool,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    /// The CRLF after a chunk's data is still to come.
    chunk_crlf: bool,
    /// The last chunk was seen.
    ended: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Decoder {
    fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// The response head, once all of it arrived.
    fn take_head(&mut self) -> anyhow::Result<Option<String>> {
        let Some(end) = find(&self.raw, b"\r\n\r\n") else {
            if self.raw.len() > 16 * 1024 {
                bail!("response head larger than 16 KiB");
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        self.head_done = true;
        self.chunked = head
            .lines()
            .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
        Ok(Some(head))
    }

    /// Moves what can be decoded from `raw` to `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(self.raw.len());
                self.body.extend(self.raw.drain(..n));
                self.chunk_left -= n;
                if self.chunk_left > 0 {
                    return;
                }
                self.chunk_crlf = true;
            }
            if self.chunk_crlf {
                if self.raw.len() < 2 {
                    return;
                }
                self.raw.drain(..2);
                self.chunk_crlf = false;
            }
            let Some(eol) = find(&self.raw, b"\r\n") else {
                return;
            };
            let line = String::from_utf8_lossy(&self.raw[..eol]).into_owned();
            self.raw.drain(..eol + 2);
            let size = line.split(';').next().unwrap_or("").trim();
            match usize::from_str_radix(size, 16) {
                Ok(0) | Err(_) => {
                    self.ended = true;
                    return;
                }
                Ok(n) => self.chunk_left = n,
            }
        }
    }

    /// The next complete event that carries data.
    fn next_event(&mut self) -> Option<(String, String)> {
        self.decode();
        loop {
            let end = find(&self.body, b"\n\n")?;
            let block: Vec<u8> = self.body.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut event = "message".to_string();
            let mut data: Option<String> = None;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(v);
                        }
                        None => data = Some(v.to_string()),
                    }
                }
            }
            if let Some(data) = data {
                return Some((event, data));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_event_stream_is_cut_into_events_across_reads() {
        let mut d = Decoder::default();
        let body = "retry: 2000\n\nid: c:5\nevent: subscribed\ndata: {\"op\":\"subscribed\",\"conv\":\"c\",\"cursor\":5}\n\n: heartbeat\n\nid: c:7\nevent: msg\ndata: {\"op\":\"msg\",\"seq\":7}\n\n";
        // Two chunks, the second split in the middle of its size line and of an event.
        let (a, b) = body.split_at(30);
        let wire = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        let bytes = wire.as_bytes();
        let mut events = Vec::new();
        let mut head = None;
        for piece in bytes.chunks(7) {
            d.push(piece);
            if head.is_none() {
                head = d.take_head().unwrap();
                if head.is_none() {
                    continue;
                }
            }
            while let Some(e) = d.next_event() {
                events.push(e);
            }
        }
        assert!(head.unwrap().starts_with("HTTP/1.1 200"));
        assert_eq!(
            events.len(),
            2,
            "retry and heartbeat carry no data: {events:?}"
        );
        assert_eq!(events[0].0, "subscribed");
        assert_eq!(Reply::parse(&events[0].1).unwrap().cursor, Some(5));
        assert_eq!(
            (
                events[1].0.as_str(),
                Reply::parse(&events[1].1).unwrap().seq
            ),
            ("msg", Some(7))
        );
        assert!(d.ended);
    }
}
