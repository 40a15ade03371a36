//! The byte stream tungstenite runs over: reads come from the TCP socket (after whatever hyper
//! read past the upgrade request), writes go through the connection's [`Outbox`], the one place
//! that writes to the socket, so tungstenite's pongs and close frames queue behind the frames
//! already on their way instead of interleaving with them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::outbox::{Outbound, Outbox};

/// A WebSocket's transport: the socket's read side and the outbox as its write side.
pub(crate) struct SocketIo {
    socket: Arc<TcpStream>,
    /// Bytes hyper had read beyond the upgrade request: the client's first frames.
    read_ahead: Bytes,
    outbox: Arc<Outbox>,
}

impl SocketIo {
    /// The transport of `socket`, whose first bytes are `read_ahead`, writing through `outbox`.
    pub(crate) fn new(socket: Arc<TcpStream>, read_ahead: Bytes, outbox: Arc<Outbox>) -> Self {
        Self {
            socket,
            read_ahead,
            outbox,
        }
    }
}

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_ahead.has_remaining() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead[..n]);
            this.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.socket.poll_read_ready(cx))?;
            match this.socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let raw = Outbound::Raw(Bytes::copy_from_slice(buf));
        Poll::Ready(self.outbox.push_unbounded(raw).map(|()| buf.len()))
    }

    /// The outbox writes on by itself; the connection task waits for it where it must.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
