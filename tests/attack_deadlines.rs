//! Hostile clients and backends against the deadlines of a proxied
//! HTTP/1 request (HTTP/2: `attack_deadlines_h2.rs`). Backends: one that
//! answers before it has taken the upload and then never reads again must
//! not hold the proxy's connection (and the client's upload) for ever; one
//! that takes neither the upload nor answers gets a 504; one refusing an
//! upload with 413 and a reset is not marked down. Clients: stalls inside
//! chunk-size lines, trailers and after `Expect: 100-continue`; an upload
//! paused longer than `response_timeout` between bytes (the client's time,
//! even with `passive_fall = 1`); a reader taking one byte at a time. A
//! WebSocket tunnel lives by `idle_timeout`, not by the request deadlines.

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
        // Keep the write half open for the rest of the test: the client is
        // not the one that stops.
        std::future::pending::<()>().await;
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

#[tokio::test]
async fn uploads_pausing_longer_than_response_timeout_never_mark_a_backend_down() {
    let b = Backend::start("one").await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"5s\"",
        "response_timeout = \"300ms\"\npassive_fall = 1\npassive_cooldown = \"60s\"\n\
         on_all_down = \"refuse\"",
    ))
    .await;
    // Three uploads, each pausing 700 ms (over twice response_timeout)
    // before each of its 3 bytes; one of them chunked, pausing inside a
    // chunk-size line and before its last chunk.
    let mut uploads = Vec::new();
    for i in 0..3 {
        uploads.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(proxy).await.unwrap();
            s.set_nodelay(true).unwrap();
            let pieces: Vec<&[u8]> = if i == 0 {
                vec![
                    b"POST /up HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"2",
                    b"\r\nab\r\n",
                    b"1\r\nc\r\n",
                    b"0\r\n\r\n",
                ]
            } else {
                vec![
                    b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\n\r\n",
                    b"a",
                    b"b",
                    b"c",
                ]
            };
            for p in pieces {
                s.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            let mut out = vec![0u8; 8192];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("body-bytes: ") {
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut out))
                    .await
                    .expect("an answer in time")
                    .unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&out[..n]);
            }
            String::from_utf8_lossy(&got).into_owned()
        }));
    }
    for u in uploads {
        let answer = u.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\nbody-bytes: 3"), "{answer}");
    }
    let snap = running.snapshot();
    assert!(snap.pools.get("p").unwrap().backends[0].healthy());
    let (status, _, _) = send(&h1_client(), get(proxy, "site.test", "/")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_websocket_tunnel_outlives_the_request_deadlines_and_closes_after_idle_timeout() {
    let b = Backend::start("ws").await;
    let (_running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"300ms\"\nsend_timeout = \"300ms\"\nidle_timeout = \"2s\"",
        "response_timeout = \"300ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: site.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    // Silent for over three times every request deadline, then still
    // echoed.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .unwrap_or_else(|_| panic!("no echo in round {round}"))
            .unwrap_or_else(|e| panic!("closed in round {round}: {e}"));
        assert_eq!(&echo, b"ping");
    }
    // Then idle_timeout closes it.
    let started = Instant::now();
    let rest = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(rest, Some(Vec::new()));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
}

#[tokio::test]
async fn a_backend_that_never_reads_the_upload_nor_answers_gets_504_and_its_connection_closed() {
    let b = EarlyAnswer::start(b"", Duration::from_secs(3)).await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"30s\"",
        "response_timeout = \"500ms\"\npassive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    let mut r = uploader(proxy, 256 << 20).await;
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"504 Gateway Timeout\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 504 Gateway Timeout\r\n"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The backend's own fault: it counts.
    let snap = running.snapshot();
    assert!(!snap.pools.get("p").unwrap().backends[0].healthy());
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
    assert!(drained < 64 << 20, "the upload went on: {drained} bytes");
}

#[tokio::test]
async fn expect_100_continue_then_no_body_gets_408_after_request_body_timeout() {
    let b = RawBackend::start(Act::Listen).await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"400ms\"",
        "response_timeout = \"30s\"\npassive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closes the connection");
    let got = String::from_utf8_lossy(&got).into_owned();
    let waited = started.elapsed();
    let answer = got.trim_start_matches("HTTP/1.1 100 Continue\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got}"
    );
    assert!(answer.ends_with("\r\n\r\n408 Request Timeout\n"), "{got}");
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
    let snap = running.snapshot();
    assert!(snap.pools.get("p").unwrap().backends[0].healthy());
}

#[tokio::test]
async fn a_client_reading_one_byte_just_under_send_timeout_is_still_closed() {
    let b = RawBackend::start(Act::Stream(64 << 20)).await;
    let (_running, proxy) = start_web(&site_config(
        &[b.addr],
        "send_timeout = \"500ms\"",
        "response_timeout = \"30s\"",
    ))
    .await;
    let mut s = small_window_client(proxy).await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    // One byte every 400 ms for 3 s: never a gap of send_timeout between
    // two reads, but far too little for the proxy's writes to progress.
    let mut byte = [0u8; 1];
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.read(&mut byte).await.unwrap(), 1);
    }
    // Then read fast: the proxy has closed (after what was already in the
    // sockets' buffers), instead of going on with the 64 MiB.
    let rest = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy kept the connection open");
    assert!(rest.len() < 32 << 20, "{} bytes arrived", rest.len());
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}

#[tokio::test]
async fn chunked_uploads_stalled_inside_a_chunk_size_line_or_the_trailers_get_408() {
    let b = RawBackend::start(Act::Listen).await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"400ms\"",
        "response_timeout = \"30s\"\npassive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    let head = "POST /up HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    for stall in ["5\r\nhello\r\n00", "5\r\nhello\r\n0\r\nx-trailer: 1"] {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(format!("{head}{stall}").as_bytes())
            .await
            .unwrap();
        let started = Instant::now();
        let got = read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .expect("the proxy closes the connection");
        let got = String::from_utf8_lossy(&got).into_owned();
        assert!(
            got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{stall:?}: {got}"
        );
        assert!(started.elapsed() >= Duration::from_millis(350));
    }
    assert!(
        eventually(Duration::from_secs(3), || b.closed() == 2).await,
        "a backend connection stays open"
    );
    let snap = running.snapshot();
    assert!(snap.pools.get("p").unwrap().backends[0].healthy());
}

#[tokio::test]
async fn a_backend_refusing_a_large_upload_early_and_closing_is_not_marked_down() {
    // Like nginx over client_max_body_size: 413 after the head, close.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await.is_some() {
                    let _ = s
                        .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
                        .await;
                }
            });
        }
    });
    let (running, proxy) = start_web(&site_config(
        &[addr],
        "",
        "passive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    for round in 0..3 {
        let mut r = uploader(proxy, 64 << 20).await;
        let got = read_until_closed(&mut r, Duration::from_secs(10))
            .await
            .expect("the proxy closes the connection");
        let got = String::from_utf8_lossy(&got).into_owned();
        // The 413 is (almost always) lost to the reset: the client gets a
        // 502, blamed on the backend in the log, but no passive check
        // failure.
        assert!(
            got.starts_with("HTTP/1.1 502 Bad Gateway\r\n")
                || got.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{got}"
        );
        let snap = running.snapshot();
        assert!(
            snap.pools.get("p").unwrap().backends[0].healthy(),
            "round {round}: marked down"
        );
    }
    let (status, _, _) = send(&h1_client(), get(proxy, "site.test", "/")).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn a_large_early_answer_reaches_a_slow_reader_in_full_before_the_close() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await.is_some() {
                    s.write_all(ANSWER).await.unwrap();
                    s.write_all(&vec![b'x'; 4 << 20]).await.unwrap();
                    // Never read the upload; stay open for the rest of
                    // the test.
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    let (_running, proxy) = start_web(&site_config(&[addr], "", "")).await;
    let mut s = small_window_client(proxy).await;
    s.write_all(b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'u'; 1000]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("stalled after {} bytes", got.len()),
        }
    }
    let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(got.len() - head, 4 << 20);
}
