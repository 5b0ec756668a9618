//! The pass-through HTTP/1.1 codec: plain HTTP/1.1 requests to HTTP/1.1
//! backends, served inside the client connection's task.
//!
//! A request head is parsed with `httparse` over the read buffer
//! ([`parse`]), routed by the same [`super::plan::plan`] the hyper path
//! uses, and written to a raw backend connection from the pool's
//! per-worker idle lists as the original fields minus the hop-by-hop ones
//! plus vipd's forwarding fields ([`write`]); the response head comes back
//! the same way and its body is streamed by its validated framing
//! ([`framing`]). No `HeaderMap`, no task per backend connection, no
//! cross-thread wake per request.
//!
//! hyper keeps everything unusual, behind one seam in [`super::conn`]: the
//! first head (or a later one) that this codec does not serve, or that
//! routing answers locally (redirect, 4xx, 503), hands the rest of the
//! connection to hyper with the bytes read so far replayed first
//! ([`Rewind`]). hyper then answers exactly as it always has, so a refused
//! request gets the same status and body text from either codec, and the
//! codec is only ever stricter than hyper. HTTP/2 (ALPN or preface),
//! upgrades, `Expect`, chunked uploads, HTTP/1.0 and HTTP/2 backends all
//! go that way. `Content-Length` bodies are served here, streamed to the
//! backend as it takes them.
//!
//! - [`parse`]: heads into offsets, framing checks, what goes to hyper.
//! - [`framing`]: a chunked body checked as it passes.
//! - [`write`]: the heads for the other side, local answers.
//! - [`exchange`]: the connection loop, its deadlines, the backend
//!   exchange.

pub mod exchange;
pub mod framing;
pub mod parse;
pub mod write;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use exchange::{Limits, Served, serve};

/// A client stream the codec serves: it can wait for a request's first
/// bytes without holding a read buffer (an idle keep-alive connection
/// then holds none).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Wait for bytes and append them to `buf`, which is empty and holds
    /// no allocation while the wait lasts. Ok(0): the client closed.
    fn idle_read<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

/// Read capacity taken for a request head.
pub const HEAD_CHUNK: usize = 4096;

impl ClientIo for TcpStream {
    /// The read is `poll_read`, not `try_read_buf`: tokio clears the
    /// socket's readiness after a read that did not fill the buffer (with
    /// edge-triggered epoll the socket is then empty), so the next wait
    /// goes to epoll instead of first trying a `recvfrom` that can only
    /// return EAGAIN. `try_read_buf` clears it only on EAGAIN, which cost
    /// one wasted system call per keep-alive request.
    async fn idle_read(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            self.readable().await?;
            buf.reserve(HEAD_CHUNK);
            let read = {
                let mut reading = std::pin::pin!(self.read_buf(buf));
                std::future::poll_fn(|cx| match reading.as_mut().poll(cx) {
                    // The readiness was stale (and is now cleared): wait
                    // again without holding the buffer.
                    Poll::Pending => Poll::Ready(Err(io::ErrorKind::WouldBlock.into())),
                    done => done,
                })
                .await
            };
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if buf.is_empty() {
                        *buf = Vec::new();
                    }
                }
                other => return other,
            }
        }
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    /// rustls may hold decrypted bytes the socket no longer shows, so this
    /// reads into a small buffer in the task instead of waiting on the
    /// socket (the rest of a larger head follows from rustls's buffer
    /// without another system call).
    async fn idle_read(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut first = [0u8; 512];
        let n = self.read(&mut first).await?;
        buf.extend_from_slice(&first[..n]);
        Ok(n)
    }
}

/// A boxed stream (the TLS stream is boxed after the handshake, so the
/// connection's task does not carry it inline) waits as its content does.
impl<T: ClientIo> ClientIo for Box<T> {
    fn idle_read<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        (**self).idle_read(buf)
    }
}

/// The client stream handed to hyper: the bytes the codec read and did
/// not serve come first.
pub struct Rewind<T> {
    replay: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(replay: Vec<u8>, inner: T) -> Self {
        Self {
            replay,
            at: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.replay.len() {
            let n = (this.replay.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.replay[this.at..this.at + n]);
            this.at += n;
            if this.at == this.replay.len() {
                this.replay = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::net::TcpListener;

    use super::ClientIo;

    /// After a read that did not fill the buffer, tokio's readiness for the
    /// socket must be cleared: the next wait then goes to epoll instead of
    /// trying a `recvfrom` that can only return EAGAIN. Observed without
    /// counting system calls: with the readiness cleared, `try_read` does
    /// not even ask the kernel, so bytes that arrived since (and that the
    /// I/O driver has not seen yet) are not returned; with it left set,
    /// `try_read` reads them.
    #[tokio::test]
    async fn a_short_keep_alive_read_clears_the_readiness_so_no_empty_read_follows() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let n = server.idle_read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // The next request is in the socket, but the runtime has not run
        // its driver since the short read (no await in between).
        client.write_all(b"GET /next HTTP/1.1\r\n\r\n").unwrap();
        let mut probe = [0u8; 64];
        let early = server.try_read(&mut probe);
        assert_eq!(
            early.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "the readiness survived a short read"
        );
        // The wait then sees the new bytes through epoll.
        let mut buf = Vec::new();
        let n = server.idle_read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /next HTTP/1.1\r\n\r\n");
    }
}
