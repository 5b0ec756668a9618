//! Every phase of a proxied HTTP request has a deadline, and the side that
//! misses it is the one blamed: a stalled upload is the client's (408,
//! never a passive-check failure), a client that does not read is closed
//! after `send_timeout`, a backend that stalls mid-body or answers late
//! after the request was fully sent is the backend's.

mod http_support;
mod support;
mod tls_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use http_support::*;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A [`RawBackend`] acting as `act`, behind listener `web` (with `listener`
/// settings) and pool `p` (with `pool` settings) of a proxy.
async fn raw_site(
    act: Act,
    listener: &str,
    pool: &str,
) -> (RawBackend, Arc<vipd::app::Running>, SocketAddr) {
    let b = RawBackend::start(act).await;
    let (running, proxy) = start_web(&site_config(&[b.addr], listener, pool)).await;
    (b, running, proxy)
}

/// Send a POST announcing 100 body bytes, then only 5 of them; returns the
/// stream with the answer not yet read.
async fn stalled_upload(proxy: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 100\r\n\r\nhello")
        .await
        .unwrap();
    s
}

/// Send a request head announcing `len` body bytes, then the body one byte
/// every `every`; returns the stream with the answer not yet read.
async fn slow_upload(proxy: SocketAddr, path: &str, len: usize, every: Duration) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: site.test\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..len {
        tokio::time::sleep(every).await;
        if s.write_all(b"a").await.is_err() {
            // The proxy answered early and closed; the caller reads why.
            break;
        }
    }
    s
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_both_connections_are_closed_after_request_body_timeout() {
    let (b, _running, proxy) = raw_site(
        Act::Listen,
        "request_body_timeout = \"400ms\"",
        "response_timeout = \"30s\"",
    )
    .await;
    let mut s = stalled_upload(proxy).await;
    let started = Instant::now();
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closes the connection");
    let waited = started.elapsed();
    let answer = text(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n408 Request Timeout\n"),
        "{answer}"
    );
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(b.accepted(), 1);
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}

#[tokio::test]
async fn an_http2_upload_that_stalls_gets_408_after_request_body_timeout() {
    let (b, _running, proxy) = raw_site(
        Act::Listen,
        "request_body_timeout = \"400ms\"",
        "response_timeout = \"30s\"",
    )
    .await;
    let (mut tx, _conn) = h2_handshake::<Stalled>(proxy).await;
    let req = Request::post("http://site.test/up")
        .header("content-length", "100")
        .body(Stalled(Some(Bytes::from_static(b"hello"))))
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), 408);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "408 Request Timeout\n");
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}

/// A request body that sends one chunk and then never another.
struct Stalled(Option<Bytes>);

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// `GET /big` from a [`small_window_client`]; the answer is not yet read.
async fn get_big_with_small_window(proxy: SocketAddr) -> TcpStream {
    let mut s = small_window_client(proxy).await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn a_client_that_never_reads_a_large_response_is_closed_after_send_timeout() {
    let (b, _running, proxy) = raw_site(
        Act::Stream(64 << 20),
        "send_timeout = \"500ms\"",
        "response_timeout = \"30s\"",
    )
    .await;
    let mut s = get_big_with_small_window(proxy).await;
    // Read nothing while the proxy's writes stall: it gives up on the
    // exchange (the backend connection closes), then see the client closed.
    // Reading earlier would unblock the writes.
    assert!(b.closed_soon(1).await, "the backend connection stays open");
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closes the connection");
    assert!(
        text(&got[..12]).starts_with("HTTP/1.1 200"),
        "{}",
        text(&got[..12])
    );
    assert!(got.len() < 64 << 20, "the whole response arrived");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}

#[tokio::test]
async fn an_https_client_that_never_reads_a_large_response_is_closed_after_send_timeout() {
    let b = RawBackend::start(Act::Stream(64 << 20)).await;
    let pki = tls_support::Pki::new();
    let dir = tls_support::TempDir::new("deadlines");
    let leaf = pki.issue(&["site.test"], tls_support::Alg::Ecdsa);
    let (cert, key) = tls_support::write_pair(dir.path(), "site", &leaf);
    let text = site_config(
        &[b.addr],
        "send_timeout = \"500ms\"",
        "response_timeout = \"30s\"",
    )
    .replace("protocol = \"http\"", "protocol = \"https\"")
    .replace(
        "pool = \"p\"\n",
        &format!(
            "pool = \"p\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert.display(),
            key.display()
        ),
    );
    let (_running, proxy) = start_web(&text).await;
    let tcp = small_window_client(proxy).await;
    let cfg = Arc::new(tls_support::client(tls_support::TLS13_AND_12));
    let name = rustls::pki_types::ServerName::try_from("site.test").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    // As above: wait, without reading, until the proxy gives up.
    assert!(b.closed_soon(1).await, "the backend connection stays open");
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy kept the TLS connection open");
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(got.len() < 64 << 20, "the whole response arrived");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}

#[tokio::test]
async fn a_client_reading_slowly_but_steadily_gets_the_whole_response() {
    // The backend's idle timeout between body chunks (500ms) runs only while
    // the proxy waits on the backend, not while it waits for the client.
    let len = 8 << 20;
    let (_b, _running, proxy) = raw_site(
        Act::Stream(len),
        "send_timeout = \"5s\"",
        "response_timeout = \"500ms\"",
    )
    .await;
    let mut s = get_big_with_small_window(proxy).await;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for pause in 0.. {
        if pause < 3 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {} bytes", received.len());
        received.extend_from_slice(&buf[..n]);
        let head = received.windows(4).position(|w| w == b"\r\n\r\n");
        if head.is_some_and(|h| received.len() - h - 4 >= len) {
            break;
        }
    }
    let head = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(text(&received[..head]).starts_with("HTTP/1.1 200 OK\r\n"));
    let got = received.len() - head - 4;
    assert_eq!(got, len);
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_off_after_response_timeout_and_not_pooled() {
    let (b, _running, proxy) = raw_site(
        Act::StallAfter(1000, 100),
        "",
        "response_timeout = \"500ms\"",
    )
    .await;
    for round in 1..=2 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let got = read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .expect("the proxy closes the client connection");
        let waited = started.elapsed();
        let got = text(&got);
        let (head, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        // Field names keep the backend's case.
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\ncontent-length: 1000"),
            "{head}"
        );
        assert_eq!(body.len(), 100);
        assert!(waited >= Duration::from_millis(450), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(
            b.closed_soon(round).await,
            "the backend connection stays open"
        );
        // The broken connection was not pooled: each request opened one.
        assert_eq!(b.accepted(), round);
    }
}

#[tokio::test]
async fn an_http2_stream_whose_window_the_client_never_opens_is_closed_after_send_timeout() {
    let (b, _running, proxy) = raw_site(
        Act::Stream(8 << 20),
        "send_timeout = \"500ms\"",
        "response_timeout = \"30s\"",
    )
    .await;
    let (mut tx, conn) = h2_handshake::<Full<Bytes>>(proxy).await;
    let resp = tx.send_request(get_big()).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Never read the body: hyper sends no WINDOW_UPDATE, so the proxy's
    // stream stays blocked by flow control while its socket is idle.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    let waited = started.elapsed();
    assert!(ended.is_ok(), "the proxy kept the HTTP/2 connection open");
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
    drop(resp);
}

/// An HTTP/2 `GET /big` for `site.test`.
fn get_big() -> Request<Full<Bytes>> {
    Request::get("http://site.test/big")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// An HTTP/2 connection to `proxy` whose streams have 64 KiB windows (the
/// client sends a WINDOW_UPDATE every 32 KiB read) and whose connection
/// window never limits them.
async fn small_window_h2(
    proxy: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(64 << 20)
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    (tx, tokio::spawn(conn))
}

#[tokio::test]
async fn an_http2_client_reading_slowly_but_steadily_gets_the_whole_response() {
    // The backend sends large chunks; what counts is how often the client
    // opens its window, not how long a chunk takes to drain.
    let len = 1 << 20;
    let (_b, _running, proxy) = raw_site(
        Act::Stream(len),
        "send_timeout = \"600ms\"",
        "response_timeout = \"30s\"",
    )
    .await;
    let (mut tx, _conn) = small_window_h2(proxy).await;
    let resp = tx.send_request(get_big()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("cut off after {read} bytes: {e}"));
        let n = frame.data_ref().map_or(0, |d| d.len());
        read += n;
        // About 200 KiB/s: 80 ms per 16 KiB, so a 200 KiB backend chunk
        // takes a second to drain.
        tokio::time::sleep(Duration::from_micros(80_000 * n as u64 / 16_384)).await;
    }
    assert_eq!(read, len);
}

#[tokio::test]
async fn an_http2_stream_starved_while_a_decoy_stream_moves_still_closes_the_connection() {
    let (b, _running, proxy) = raw_site(
        Act::Stream(64 << 20),
        "send_timeout = \"500ms\"",
        "response_timeout = \"30s\"",
    )
    .await;
    let (mut tx, conn) = small_window_h2(proxy).await;
    let starved = tx.send_request(get_big()).await.unwrap();
    let decoy = tx.send_request(get_big()).await.unwrap();
    // The decoy is read steadily, the other stream never.
    let reader = tokio::spawn(async move {
        let mut body = decoy.into_body();
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        read
    });
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    let waited = started.elapsed();
    assert!(ended.is_ok(), "the proxy kept the HTTP/2 connection open");
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    let read = reader.await.unwrap();
    assert!(read > 0, "the decoy stream never moved");
    assert!(b.closed_soon(2).await, "a backend connection stays open");
    drop(starved);
}

#[tokio::test]
async fn a_response_head_later_than_response_timeout_after_a_fully_sent_body_is_a_504_that_counts()
{
    let b = Backend::start("slow").await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"5s\"",
        "response_timeout = \"400ms\"\npassive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    // The upload takes about 1 s, longer than response_timeout: that time is
    // the client's. The backend then sleeps: that is its own.
    let started = Instant::now();
    let mut s = slow_upload(proxy, "/sleep/5000", 5, Duration::from_millis(200)).await;
    let sent = started.elapsed();
    let got = read_until_first_answer(&mut s).await;
    let waited = started.elapsed();
    assert!(got.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n504 Gateway Timeout\n"), "{got}");
    assert!(
        waited >= sent + Duration::from_millis(350),
        "{waited:?} {sent:?}"
    );
    assert!(
        waited < sent + Duration::from_secs(3),
        "{waited:?} {sent:?}"
    );
    let snap = running.snapshot();
    let pool = snap.pools.get("p").unwrap();
    assert!(!pool.backends[0].healthy(), "the late head did not count");
}

#[tokio::test]
async fn a_response_head_timeout_closes_the_backend_connection() {
    let (b, _running, proxy) = raw_site(Act::Listen, "", "response_timeout = \"300ms\"").await;
    let (status, _, body) = send(&h1_client(), get(proxy, "site.test", "/")).await;
    assert_eq!(status, 504);
    assert_eq!(body, "504 Gateway Timeout\n");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}

#[tokio::test]
async fn a_stalled_upload_to_an_http2_backend_is_the_clients_fault_not_the_backends() {
    let b = Backend::start("h2").await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"400ms\"",
        "http2 = true\npassive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    let mut s = stalled_upload(proxy).await;
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closes the connection");
    let answer = text(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    let snap = running.snapshot();
    assert!(snap.pools.get("p").unwrap().backends[0].healthy());
    let (status, _, _) = send(&h1_client(), get(proxy, "site.test", "/")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn slow_uploads_leave_the_backends_up_and_other_clients_served() {
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let (running, proxy) = start_web(&site_config(
        &[one.addr, two.addr],
        "request_body_timeout = \"5s\"",
        "response_timeout = \"1s\"\npassive_fall = 2\npassive_cooldown = \"60s\"\n\
         on_all_down = \"refuse\"",
    ))
    .await;
    let all_up = || {
        let snap = running.snapshot();
        let pool = snap.pools.get("p").unwrap();
        pool.backends.iter().all(|b| b.healthy())
    };
    let uploads: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = slow_upload(proxy, "/up", 8, Duration::from_millis(200)).await;
                read_until_first_answer(&mut s).await
            })
        })
        .collect();
    // Others are served while the uploads crawl.
    let client = h1_client();
    let started = Instant::now();
    let mut others = Vec::new();
    while started.elapsed() < Duration::from_millis(1800) {
        others.push(send(&client, get(proxy, "site.test", "/")).await.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(all_up(), "a backend was marked down during the uploads");
    assert!(others.len() >= 5, "{others:?}");
    assert!(others.iter().all(|s| *s == 200), "{others:?}");
    for u in uploads {
        let answer = u.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("body-bytes: 8\n"), "{answer}");
    }
    assert!(all_up(), "a backend was marked down");
    let (status, _, _) = send(&client, get(proxy, "site.test", "/")).await;
    assert_eq!(status, 200);
}

/// Read one HTTP/1.1 answer with a Content-Length body.
async fn read_until_first_answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let t = text(&out);
        if let Some((head, body)) = t.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse::<usize>().unwrap());
            if len.is_some_and(|len| body.len() >= len) {
                break;
            }
        }
    }
    text(&out)
}

#[test]
fn transfer_timeouts_outside_their_range_or_on_a_tcp_listener_are_refused_with_the_fix() {
    let backend: SocketAddr = "192.0.2.21:80".parse().unwrap();
    let text = site_config(
        &[backend],
        "request_body_timeout = \"0s\"\nsend_timeout = \"2d\"",
        "",
    ) + "
[[listener]]
name = \"raw\"
bind = \"127.0.0.1:0\"
protocol = \"tcp\"
pool = \"p\"
send_timeout = \"5s\"
";
    assert_eq!(
        support::problems(&text),
        vec![
            "6:1: listener \"web\".request_body_timeout: \"0s\" is outside 100ms..=1d\n    fix: set `request_body_timeout` between \"100ms\" and \"1d\" (default \"1m\")",
            "7:1: listener \"web\".send_timeout: \"2d\" is outside 100ms..=1d\n    fix: set `send_timeout` between \"100ms\" and \"1d\" (default \"1m\")",
            "24:1: listener \"raw\".send_timeout: `send_timeout` times HTTP transfers, and this listener does not speak HTTP\n    fix: remove it (`idle_timeout` covers tcp/tls), or use protocol \"http\" or \"https\"",
        ]
    );
}

#[tokio::test]
async fn a_stalled_http1_upload_to_an_http2_backend_is_answered_with_connection_close() {
    // The 408 must announce the close to the HTTP/1.1 client, whatever
    // version the backend speaks.
    let b = Backend::start("h2").await;
    let (_running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"400ms\"",
        "http2 = true",
    ))
    .await;
    let mut s = stalled_upload(proxy).await;
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closes the connection");
    let answer = text(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
}
