//! HTTP proxy failure paths and client-side timeouts.

mod http_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use http_support::*;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The site of [`site_config`] in front of `backend`, with bodies of at
/// most 10 bytes.
fn config(backend: SocketAddr, extra_listener: &str, extra_pool: &str) -> String {
    site_config(&[backend], extra_listener, extra_pool) + "max_body_size = 10\n"
}

/// [`config`] with two backends in the pool, `first` then `second`.
fn config_two(first: SocketAddr, second: SocketAddr, extra_pool: &str) -> String {
    site_config(&[first, second], "", extra_pool) + "max_body_size = 10\n"
}

async fn proxy_for(backend: SocketAddr, extra_listener: &str, extra_pool: &str) -> SocketAddr {
    let (running, addr) = start_web(&config(backend, extra_listener, extra_pool)).await;
    std::mem::forget(running);
    addr
}

#[tokio::test]
async fn a_refused_backend_connection_is_a_502() {
    let proxy = proxy_for(closed_port().await, "", "").await;
    let (status, _, body) = send(&h1_client(), get(proxy, "site.test", "/")).await;
    assert_eq!(status, 502);
    assert_eq!(body, "502 Bad Gateway\n");
}

#[tokio::test]
async fn a_backend_slower_than_response_timeout_is_a_504() {
    let b = Backend::start("slow").await;
    let proxy = proxy_for(b.addr, "", "response_timeout = \"200ms\"").await;
    let started = Instant::now();
    let (status, _, body) = send(&h1_client(), get(proxy, "site.test", "/sleep/5000")).await;
    assert_eq!(status, 504);
    assert_eq!(body, "504 Gateway Timeout\n");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_pool_without_available_backends_is_a_503() {
    let b = Backend::start("b").await;
    let text = config(b.addr, "", "").replace(
        &format!("{{ address = \"{}\" }}", b.addr),
        &format!("{{ address = \"{}\", weight = 0 }}", b.addr),
    );
    let (_running, proxy) = start_web(&text).await;
    let (status, _, body) = send(&h1_client(), get(proxy, "site.test", "/")).await;
    assert_eq!(status, 503);
    assert_eq!(body, "503 Service Unavailable: no backend is available\n");
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn a_body_declared_over_max_body_size_is_a_413_without_reaching_the_backend() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr, "", "").await;
    let mut req = get(proxy, "site.test", "/");
    *req.body_mut() = Full::new(Bytes::from_static(b"0123456789abcdef"));
    let (status, _, body) = send(&h1_client(), req).await;
    assert_eq!(status, 413);
    assert_eq!(body, "413 Payload Too Large\n");
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn a_streamed_body_growing_over_max_body_size_is_a_413() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr, "", "").await;
    let body = Chunked((0..4).map(|_| Bytes::from_static(b"0123456")).collect());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{proxy}/"))
        .header("host", "site.test")
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
}

/// A body of chunks that are all ready, sent with unknown length (chunked).
struct Chunked(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn a_malformed_request_is_a_400_from_the_proxy() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr, "", "").await;
    let answer = raw(
        proxy,
        b"GET / HTTP/1.1\r\nHost: site.test\r\nBroken header line\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    let answer = raw(
        proxy,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("400 Bad Request: missing Host header\n"),
        "{answer}"
    );
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_header_is_cut_off_at_header_timeout() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(
        b.addr,
        "header_timeout = \"300ms\"\nidle_timeout = \"60s\"",
        "",
    )
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0);
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_idle_timeout_not_header_timeout() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(
        b.addr,
        "header_timeout = \"100ms\"\nidle_timeout = \"600ms\"",
        "",
    )
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    let answered = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let waited = answered.elapsed();
    assert_eq!(n, 0);
    assert!(waited >= Duration::from_millis(550), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[tokio::test]
async fn an_idle_timeout_shorter_than_header_timeout_closes_a_keep_alive_connection_at_idle_timeout()
 {
    let b = Backend::start("b").await;
    let proxy = proxy_for(
        b.addr,
        "header_timeout = \"3s\"\nidle_timeout = \"300ms\"",
        "",
    )
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    let answered = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let waited = answered.elapsed();
    assert_eq!(n, 0);
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[tokio::test]
async fn a_keep_alive_connection_busy_for_longer_than_idle_timeout_stays_open() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(
        b.addr,
        "header_timeout = \"300ms\"\nidle_timeout = \"500ms\"",
        "",
    )
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut buf = vec![0u8; 4096];
    // Eight requests 250 ms apart: 2 s in all, each gap half the idle
    // timeout.
    for i in 0..8 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"),
            "request {i}: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_websocket_upgrade_is_tunnelled_both_ways() {
    let b = Backend::start("ws").await;
    let proxy = proxy_for(b.addr, "", "").await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    for msg in [&b"hello"[..], b"second message"] {
        s.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, msg);
    }
}

#[tokio::test]
async fn requests_without_a_body_are_sent_to_another_backend_when_connecting_fails() {
    let live = Backend::start("live").await;
    let dead = closed_port().await;
    let text = config_two(dead, live.addr, "");
    let (_running, proxy) = start_web(&text).await;
    let c = h1_client();
    for _ in 0..4 {
        let (status, h, _) = send(&c, get(proxy, "site.test", "/")).await;
        assert_eq!(status, 200);
        assert_eq!(h.get("x-backend").unwrap(), "live");
    }
    assert_eq!(live.requests(), 4);
}

#[tokio::test]
async fn a_listener_persistence_group_keeps_a_client_on_one_backend() {
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let text = config(
        one.addr,
        "persistence = \"sticky\"\n\n[[persistence]]\nname = \"sticky\"\ntimeout = \"60s\"",
        "",
    )
    .replace(
        &format!("backends = [{{ address = \"{}\" }}]", one.addr),
        &format!(
            "backends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]",
            one.addr, two.addr
        ),
    );
    let (_running, proxy) = start_web(&text).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (status, h, _) = send(&h1_client(), get(proxy, "site.test", "/")).await;
        assert_eq!(status, 200);
        seen.push(h.get("x-backend").unwrap().to_str().unwrap().to_string());
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(one.requests() + two.requests(), 6);
}

/// A backend that accepts, reads a request and closes without answering.
async fn hang_up_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            if s.read(&mut buf).await.unwrap_or(0) > 0 {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            drop(s);
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_backend_that_hangs_up_before_answering_is_taken_out_by_passive_checks() {
    let live = Backend::start("live").await;
    let (bad, bad_requests) = hang_up_backend().await;
    let text = config_two(bad, live.addr, "passive_fall = 2\nscheduler = \"rr\"");
    let (_running, proxy) = start_web(&text).await;
    let c = h1_client();
    // rr: bad, live, bad: the two exchanges bad fails are 502s.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(&c, get(proxy, "site.test", "/")).await.0);
    }
    assert_eq!(statuses, [502, 200, 502]);
    assert_eq!(bad_requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Two consecutive failures (passive_fall = 2) took bad out.
    for _ in 0..4 {
        let (status, h, _) = send(&c, get(proxy, "site.test", "/")).await;
        assert_eq!(status, 200);
        assert_eq!(h.get("x-backend").unwrap(), "live");
    }
    assert_eq!(bad_requests.load(std::sync::atomic::Ordering::SeqCst), 2);
}
