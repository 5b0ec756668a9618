//! Bad input from the internet: garbage and plaintext on a TLS port, a
//! truncated ClientHello, and request smuggling attempts on an HTTP port.
//! vipd closes or answers 400, forwards nothing, and keeps serving.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 backend that records every request line it parses and
/// answers each with a 2-byte body, keeping the connection open. It records
/// the head of every complete request.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some((len, head)) = complete_request(&buf) {
                        seen.lock().unwrap().push(head);
                        buf.drain(..len);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// If `buf` starts with a whole HTTP/1.1 request (head and body, by
/// Content-Length or chunked), its length and request line.
fn complete_request(buf: &[u8]) -> Option<(usize, String)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let first = String::from_utf8_lossy(&buf[..end]).to_string();
    if head.contains("transfer-encoding: chunked") {
        let mut at = end;
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[at..line_end]).ok()?.trim(), 16)
                    .ok()?;
            at = line_end + 2;
            if size == 0 {
                return (buf.len() >= at + 2).then_some((at + 2, first));
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + len).then_some((end + len, first))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn certs() -> std::path::PathBuf {
    let dir = support::tempdir();
    let g = vipd::tls::gencert::generate(
        &["www.test".to_string()],
        vipd::tls::gencert::KeyType::EcdsaP256,
        30,
    )
    .unwrap();
    vipd::tls::gencert::write(&g, &dir, "www", true).unwrap();
    dir
}

fn config(backend: SocketAddr, dir: &std::path::Path) -> String {
    format!(
        r#"
[[listener]]
name = "https"
bind = "127.0.0.1:0"
protocol = "https"
handshake_timeout = "300ms"

[[listener]]
name = "http"
bind = "127.0.0.1:0"
protocol = "http"
default_vhost = "www"

[[vhost]]
name = "www"
hosts = ["www.test"]
pool = "p"
certificates = [{{ cert = "{d}/www.crt", key = "{d}/www.key" }}]

[[pool]]
name = "p"
backends = [{{ address = "{backend}" }}]
"#,
        d = dir.display()
    )
}

/// Send `bytes`, then read until the proxy closes; returns what came back.
async fn send_and_drain(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy did not close the connection");
    out
}

async fn https_still_serves(addr: SocketAddr) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "--resolve",
            &format!("www.test:{}:127.0.0.1", addr.port()),
        ])
        .arg(format!("https://www.test:{}/after", addr.port()))
        .output()
        .await
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plaintext_on_the_tls_port_are_dropped_and_nothing_is_forwarded() {
    let (backend, seen) = recording_backend().await;
    let dir = certs();
    let running = support::start(&config(backend, &dir)).await;
    let https = running.local_addr("https").await.unwrap();

    // Random bytes (fixed pseudo-random sequence).
    let mut x: u32 = 0x9e37_79b9;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let reply = send_and_drain(https, &garbage).await;
    assert!(
        reply.len() < 16,
        "at most a TLS alert comes back: {reply:?}"
    );

    // Plaintext HTTP on the TLS port.
    let reply = send_and_drain(https, b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n").await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "answered in plaintext: {reply:?}"
    );

    assert!(seen.lock().unwrap().is_empty(), "something was forwarded");
    https_still_serves(https).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("GET /after HTTP/1.1\r\n"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_client_hello_is_cut_off_by_the_handshake_timeout() {
    let (backend, seen) = recording_backend().await;
    let dir = certs();
    let running = support::start(&config(backend, &dir)).await;
    let https = running.local_addr("https").await.unwrap();
    // A TLS record header announcing a 512-byte handshake, then only part of it.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    hello.extend_from_slice(&[0x42; 30]);
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(https).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed by the handshake timeout")
        .ok();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    assert!(seen.lock().unwrap().is_empty());
    https_still_serves(https).await;
}

/// Send a raw request on the http listener; returns everything the proxy
/// sent until it closed or went quiet for half a second.
async fn raw_http(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts_are_rejected_and_never_forwarded_as_two_requests() {
    let (backend, seen) = recording_backend().await;
    let dir = certs();
    let running = support::start(&config(backend, &dir)).await;
    let http = running.local_addr("http").await.unwrap();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: www.test\r\n\r\n";
    let attempts = [
        // Content-Length with Transfer-Encoding: chunked.
        format!(
            "POST /a HTTP/1.1\r\nHost: www.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        // Two different Content-Length values.
        format!(
            "POST /b HTTP/1.1\r\nHost: www.test\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        // obs-fold (a header line continued on the next line).
        format!(
            "POST /c HTTP/1.1\r\nHost: www.test\r\nX-A: 1\r\n  folded: 2\r\nContent-Length: 0\r\n\r\n{smuggled}"
        ),
        // An invalid chunk size.
        format!(
            "POST /d HTTP/1.1\r\nHost: www.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"
        ),
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        let reply = raw_http(http, attempt.as_bytes()).await;
        let forwarded = seen.lock().unwrap().clone();
        assert!(
            !forwarded.iter().any(|l| l.contains("/smuggled")),
            "attempt {i}: the smuggled request reached the backend: {forwarded:?}"
        );
        assert!(
            forwarded.len() <= i + 1,
            "attempt {i}: more than one request forwarded: {forwarded:?}"
        );
        // One answer only: 400, or for CL+TE the chunked request answered
        // and the connection closed (RFC 9112 6.3).
        let statuses: Vec<&str> = reply
            .match_indices("HTTP/1.1 ")
            .map(|(at, _)| &reply[at + 9..at + 12])
            .collect();
        let want = if i == 0 { "200" } else { "400" };
        assert_eq!(statuses, [want], "attempt {i}: {reply:?}");
        if i == 0 {
            assert!(
                reply.to_ascii_lowercase().contains("connection: close"),
                "{reply:?}"
            );
        }
    }
    // RFC 9112 6.3: with both Transfer-Encoding and Content-Length, the
    // chunked framing wins and the connection is closed after the response;
    // the backend must never see both framings.
    let forwarded = seen.lock().unwrap().clone();
    let post_a = forwarded
        .iter()
        .find(|h| h.starts_with("POST /a "))
        .expect("POST /a forwarded");
    let lower = post_a.to_ascii_lowercase();
    assert!(
        !(lower.contains("content-length:") && lower.contains("transfer-encoding:")),
        "both framings forwarded: {post_a}"
    );
    // The listener still serves a normal request.
    let reply = raw_http(
        http,
        b"GET /fine HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
