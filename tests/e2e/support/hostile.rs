//! Clients that misbehave on purpose: they keep sending while the gateway closes them, hold
//! tokens with odd claims, or stop reading; and a wait for a gauge to fall.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::client::WAIT;
use super::fabric::SECRET;
use super::TestGateway;

/// A WebSocket as the tests' raw clients hold it.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A token with exactly these claims, signed with the test secret.
pub fn token_with(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("encode")
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A token for `user` that expires in `secs` seconds.
pub fn token_expiring_in(user: &str, secs: u64) -> String {
    token_with(json!({"sub": user, "exp": now_secs() + secs}))
}

/// Upgrades with `token` in the header (the gateway answers `ready` first).
pub async fn connect_with_token(url: &str, token: &str) -> Result<Ws, Box<dyn std::error::Error>> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// Upgrades with `token` in the header over a socket with a tiny receive buffer (see
/// [`TestGateway::tiny_buffer_socket`]): whatever the gateway writes in a burst then waits in its
/// own send queue, which a reset would discard.
pub async fn connect_tiny_with_token(g: &TestGateway, token: &str) -> Ws {
    let stream = g.tiny_buffer_socket().await;
    let mut req = g.ws_url().into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .expect("upgrade")
        .0
}

/// Sends `first`, then keeps sending `frame`: for `quiet` without reading (50 frames every 10 ms),
/// then in batches of 500, reading about as many frames between batches, until the gateway
/// closes. A busy or flooding client, whose receive window is often full. Returns the close code received, or 1006 when the connection ended without a close frame
/// (as when the gateway resets it with the client's frames unread, discarding what it had not
/// sent yet).
pub async fn close_code_while_sending(
    mut ws: Ws,
    first: Vec<Message>,
    frame: Message,
    quiet: Duration,
) -> u16 {
    let deadline = tokio::time::Instant::now() + WAIT + quiet;
    let mut sending = true;
    for m in first {
        sending = sending && ws.send(m).await.is_ok();
    }
    let quiet_until = tokio::time::Instant::now() + quiet;
    while sending && tokio::time::Instant::now() < quiet_until {
        for _ in 0..50 {
            sending = sending && ws.send(frame.clone()).await.is_ok();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        for _ in 0..500 {
            if !sending {
                break;
            }
            sending = ws.send(frame.clone()).await.is_ok();
        }
        for _ in 0..500 {
            match tokio::time::timeout(Duration::from_millis(10), ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Close(c)))) => return c.map_or(1005, |c| c.code.into()),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return 1006,
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not close the connection within {WAIT:?}"
        );
    }
}

/// Waits (at most 15 s) until the first sample of metric `name` is at most `at_most`.
pub async fn await_metric_at_most(g: &TestGateway, name: &str, at_most: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = g.metric(name).await;
        if v <= at_most {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {v}, above {at_most}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the kernel holds an ESTABLISHED TCP connection from `local` to `remote` (IPv4, read
/// from `/proc/net/tcp`): the gateway's side of a client's connection, seen as the issue saw it.
pub fn established(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
    fn hex(a: std::net::SocketAddr) -> String {
        let std::net::IpAddr::V4(ip) = a.ip() else {
            panic!("IPv4 only")
        };
        format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port())
    }
    let (local, remote) = (hex(local), hex(remote));
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.len() > 3 && f[1] == local && f[2] == remote && f[3] == "01")
}
