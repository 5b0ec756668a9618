//! Hostile HTTP/2 clients (and HTTP/2 backends) against the deadlines of
//! a proxied request, on raw frames where a real client would behave:
//! zero-length DATA frames are no progress; RST_STREAM mid-upload is the
//! client's fault; a hundred stalled uploads on one connection each get
//! their 408; a window opened one byte at a time and a PING flood that is
//! never read are closed after `send_timeout`; clients that do not read
//! cannot starve a backend connection every client shares, and slow
//! uploads filling a backend's streams do not mark it down.

mod http_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Frames the server sent on `stream` that end or answer it (HEADERS,
/// RST_STREAM) or end the connection (GOAWAY), read until `limit`.
async fn h2_answer(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    stream: u32,
    limit: Instant,
) -> Option<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            buf.drain(..9 + len);
            if kind == 7 || (id == stream && (kind == 1 || kind == 3)) {
                return Some(kind);
            }
        }
        match tokio::time::timeout_at(limit, r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

#[tokio::test]
async fn zero_length_http2_data_frames_do_not_keep_a_stalled_upload_alive() {
    let b = RawBackend::start(Act::Listen).await;
    let (_running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"400ms\"",
        "response_timeout = \"30s\"",
    ))
    .await;
    let s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (mut r, mut w) = s.into_split();
    let mut hello = h2_preface();
    // POST / for site.test, content-length 100, no END_STREAM.
    let mut block = vec![0x83, 0x86, 0x84, 0x41, 9];
    block.extend_from_slice(b"site.test");
    block.extend_from_slice(&[0x5c, 3]);
    block.extend_from_slice(b"100");
    hello.extend(h2_frame(1, 0x4, 1, &block));
    w.write_all(&hello).await.unwrap();
    // An empty DATA frame every 100 ms, for longer than the answer may take.
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.write_all(&h2_frame(0, 0, 1, &[])).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let answer = h2_answer(&mut r, 1, started + Duration::from_secs(4)).await;
    let waited = started.elapsed();
    trickle.abort();
    assert_eq!(
        answer,
        Some(1),
        "no answer to the stalled stream in {waited:?}"
    );
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}

#[tokio::test]
async fn an_http2_stream_reset_during_its_upload_does_not_count_against_the_backend() {
    let b = RawBackend::start(Act::Listen).await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "",
        "response_timeout = \"30s\"\npassive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    let s = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let mut hello = h2_preface();
    let mut block = vec![0x83, 0x86, 0x84, 0x41, 9];
    block.extend_from_slice(b"site.test");
    block.extend_from_slice(&[0x5c, 3]);
    block.extend_from_slice(b"100");
    hello.extend(h2_frame(1, 0x4, 1, &block));
    hello.extend(h2_frame(0, 0, 1, b"hello"));
    w.write_all(&hello).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || b.heads().len() == 1).await,
        "the request never reached the backend"
    );
    // RST_STREAM CANCEL mid-upload.
    w.write_all(&h2_frame(3, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    assert!(b.closed_soon(1).await, "the backend connection stays open");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snap = running.snapshot();
    assert!(snap.pools.get("p").unwrap().backends[0].healthy());
    // Only the stream ended, not the connection.
    let ended = h2_answer(&mut r, 1, Instant::now() + Duration::from_millis(300)).await;
    assert_eq!(ended, None);
}

#[tokio::test]
async fn an_http2_client_flooding_pings_without_reading_is_closed_after_send_timeout() {
    let b = RawBackend::start(Act::Listen).await;
    let (_running, proxy) = start_web(&site_config(
        &[b.addr],
        "send_timeout = \"500ms\"\nheader_timeout = \"30s\"\nidle_timeout = \"30s\"",
        "",
    ))
    .await;
    let mut s = small_window_client(proxy).await;
    let hello = h2_preface();
    s.write_all(&hello).await.unwrap();
    let ping = h2_frame(6, 0, 0, &[7; 8]);
    let pings: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let started = Instant::now();
    // Write pings (bounded: 17 MB at most) until the proxy stops taking them.
    let mut sent = 0;
    while sent < 1000 {
        match tokio::time::timeout(Duration::from_millis(500), s.write_all(&pings)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    // Go on not reading for 4x send_timeout: the proxy must close the
    // connection in that window (reading earlier would take its pending
    // writes and let it go on; no backend is involved to signal the close,
    // and header/idle timeouts are 30 s, so only send_timeout can close it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rest = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(
        rest.is_some(),
        "open {:?} after the proxy stopped taking pings",
        started.elapsed()
    );
}

/// An HTTP/2 (and HTTP/1) backend on hyper: `/big` answers 16 MiB, any
/// other path `ok`.
async fn big_h2_backend() -> SocketAddr {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let big = bytes::Bytes::from(vec![b'x'; 16 << 20]);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let big = big.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = if req.uri().path() == "/big" {
                            big.clone()
                        } else {
                            bytes::Bytes::from_static(b"ok")
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn clients_that_do_not_read_cannot_starve_other_clients_of_a_shared_http2_backend() {
    let b = big_h2_backend().await;
    let (_running, proxy) = start_web(&site_config(
        &[b],
        "send_timeout = \"30s\"",
        "http2 = true\nresponse_timeout = \"1s\"",
    ))
    .await;
    // Four clients ask for a large body each and never read it.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = small_window_client(proxy).await;
        s.write_all(b"GET /big HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Everyone else is still served in full.
    for round in 0..3 {
        let answer = raw(
            proxy,
            b"GET /small HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "round {round}: {answer}"
        );
        assert!(answer.ends_with("\r\n\r\nok"), "round {round}: {answer}");
    }
    drop(idle);
}

#[tokio::test]
async fn a_hundred_stalled_http2_uploads_on_one_connection_each_get_408_and_free_their_backends() {
    let b = RawBackend::start(Act::Listen).await;
    let (running, proxy) = start_web(&site_config(
        &[b.addr],
        "request_body_timeout = \"500ms\"",
        "response_timeout = \"30s\"\npassive_fall = 1\npassive_cooldown = \"60s\"",
    ))
    .await;
    let s = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let mut out = h2_preface();
    let streams: Vec<u32> = (0..100).map(|i| 2 * i + 1).collect();
    for (i, &id) in streams.iter().enumerate() {
        // The first request indexes :authority and content-length; the
        // others refer to them (dynamic table entries 63 and 62).
        let block = if i == 0 {
            let mut b = vec![0x83, 0x86, 0x84, 0x41, 9];
            b.extend_from_slice(b"site.test");
            b.extend_from_slice(&[0x5c, 3]);
            b.extend_from_slice(b"100");
            b
        } else {
            vec![0x83, 0x86, 0x84, 0x80 | 63, 0x80 | 62]
        };
        out.extend(h2_frame(1, 0x4, id, &block));
        out.extend(h2_frame(0, 0, id, b"hello"));
    }
    w.write_all(&out).await.unwrap();
    // Every stream is answered (HEADERS) within a few seconds.
    let limit = Instant::now() + Duration::from_secs(8);
    let mut answered = std::collections::HashSet::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    while answered.len() < streams.len() {
        match tokio::time::timeout_at(limit, r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("{} of 100 answered: {other:?}", answered.len()),
        }
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            assert_ne!(buf[3], 7, "GOAWAY");
            if buf[3] == 1 {
                answered.insert(id);
            }
            buf.drain(..9 + len);
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || b.closed() == 100).await,
        "{} of 100 backend connections closed",
        b.closed()
    );
    let snap = running.snapshot();
    assert!(snap.pools.get("p").unwrap().backends[0].healthy());
    drop(w);
}

/// An HTTP/2-only backend on hyper that allows `streams` concurrent
/// streams and answers `ok` after reading each request body.
async fn few_streams_h2_backend(streams: u32) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(streams)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn slow_uploads_filling_an_http2_backends_streams_do_not_mark_it_down() {
    let b = few_streams_h2_backend(4).await;
    let (running, proxy) = start_web(&site_config(
        &[b],
        "request_body_timeout = \"5s\"",
        "http2 = true\nresponse_timeout = \"500ms\"\npassive_fall = 1\npassive_cooldown = \"60s\"\n\
         on_all_down = \"refuse\"",
    ))
    .await;
    let mut uploads = Vec::new();
    for _ in 0..4 {
        uploads.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(proxy).await.unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 8\r\n\r\n")
                .await
                .unwrap();
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                s.write_all(b"a").await.unwrap();
            }
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).await.unwrap();
            String::from_utf8_lossy(&got[..n]).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = raw(
        proxy,
        b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let snap = running.snapshot();
    let healthy = snap.pools.get("p").unwrap().backends[0].healthy();
    for u in uploads {
        let a = u.await.unwrap();
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    }
    assert!(healthy, "marked down; the other client got: {answer}");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn an_http2_client_opening_its_window_one_byte_at_a_time_is_closed_after_send_timeout() {
    let b = RawBackend::start(Act::Stream(64 << 20)).await;
    let (_running, proxy) = start_web(&site_config(
        &[b.addr],
        "send_timeout = \"500ms\"",
        "response_timeout = \"30s\"",
    ))
    .await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut hello = h2_preface();
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 9];
    block.extend_from_slice(b"site.test");
    hello.extend(h2_frame(1, 0x5, 1, &block));
    s.write_all(&hello).await.unwrap();
    let one = 1u32.to_be_bytes();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let started = Instant::now();
    let (mut data, mut buf, mut chunk) = (0usize, Vec::new(), vec![0u8; 65536]);
    let ended = 'read: loop {
        if started.elapsed() > Duration::from_secs(10) {
            break None;
        }
        tokio::select! {
            n = s.read(&mut chunk) => match n {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break Some("closed"),
            },
            _ = tick.tick() => {
                // Once the first window is used up, open it one byte at a
                // time, for the stream and the connection.
                if data >= 65_535 {
                    let mut w = h2_frame(8, 0, 0, &one);
                    w.extend(h2_frame(8, 0, 1, &one));
                    if s.write_all(&w).await.is_err() {
                        break Some("closed");
                    }
                }
            }
        }
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                0 => data += len,
                7 => break 'read Some("closed"),
                _ => {}
            }
            buf.drain(..9 + len);
        }
    };
    assert_eq!(ended, Some("closed"), "open after {data} bytes");
    assert!(data < 1 << 20, "{data}");
    assert!(b.closed_soon(1).await, "the backend connection stays open");
}
