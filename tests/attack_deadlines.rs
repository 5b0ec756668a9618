//! Hostile clients and backends against the deadlines of a proxied
//! request: a backend that answers before it has taken the upload and then
//! never reads again must not hold the proxy's connection (and the client's
//! upload) for ever.

mod http_support;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A backend that answers each request at once with `answer` and then does
/// not read for `deaf`; afterwards it drains the connection and records
/// how many bytes it got after the head and whether the proxy closed it
/// within 5 s of the drain starting.
struct EarlyAnswer {
    addr: SocketAddr,
    /// Bytes read after the request head, once the proxy closed.
    drained: Arc<AtomicUsize>,
    /// Connections the proxy closed (EOF or reset) within 5 s of draining.
    closed: Arc<AtomicUsize>,
}

impl EarlyAnswer {
    async fn start(answer: &'static [u8], deaf: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drained = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (d, c) = (drained.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (d, c) = (d.clone(), c.clone());
                tokio::spawn(async move {
                    if read_head(&mut s).await.is_none() {
                        return;
                    }
                    s.write_all(answer).await.unwrap();
                    tokio::time::sleep(deaf).await;
                    let mut buf = vec![0u8; 1 << 16];
                    let mut got = 0;
                    let limit = Instant::now() + Duration::from_secs(5);
                    loop {
                        match tokio::time::timeout_at(limit, s.read(&mut buf)).await {
                            Err(_) => break,
                            Ok(Ok(0) | Err(_)) => {
                                c.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(Ok(n)) => got += n,
                        }
                    }
                    d.fetch_add(got, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            drained,
            closed,
        }
    }
}

/// A client that announces a `len`-byte upload and writes it as fast as
/// the proxy takes it, on its own task; returns the stream's read half.
async fn uploader(proxy: SocketAddr, len: usize) -> tokio::net::tcp::OwnedReadHalf {
    let s = TcpStream::connect(proxy).await.unwrap();
    let (r, mut w) = s.into_split();
    let head = format!("POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: {len}\r\n\r\n");
    tokio::spawn(async move {
        w.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'u'; 1 << 16];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if w.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        // Keep the write half open: the client is not the one that stops.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(w);
    });
    r
}

#[tokio::test]
async fn a_backend_that_answers_early_and_never_reads_the_upload_has_its_connection_closed() {
    let len = 256 << 20;
    let b = EarlyAnswer::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        Duration::from_secs(3),
    )
    .await;
    let (_running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"30s\"\nheader_timeout = \"30s\"\nidle_timeout = \"30s\"",
        "response_timeout = \"500ms\"",
    ))
    .await;
    let mut r = uploader(proxy, len).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf))
            .await
            .expect("the early answer reaches the client")
            .unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    // The backend has answered; once it reads again it must find that the
    // proxy gave up on the connection instead of still streaming the
    // upload into it.
    let done = Instant::now() + Duration::from_secs(12);
    while b.closed.load(Ordering::SeqCst) == 0 && Instant::now() < done {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = b.drained.load(Ordering::SeqCst);
    assert_eq!(
        b.closed.load(Ordering::SeqCst),
        1,
        "still open after {drained} bytes"
    );
    assert!(
        drained < 64 << 20,
        "the proxy went on writing the upload to the backend: {drained} bytes"
    );
}
