//! Hostile clients and hostile backends against the pass-through HTTP/1.1
//! codec, over real sockets, each case also run through a listener with
//! `http1_codec = "hyper"` where the two should agree: what the backend
//! receives is one well-framed request per client request, and what the
//! client receives is one well-framed response per request.

mod http_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use http_support::start_proxy;

/// A raw backend that keeps every byte each connection sent it (one entry
/// per connection) and, per connection, answers the first request head it
/// sees with `answer`, then keeps reading.
struct Scripted {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    async fn start(answer: &'static [u8]) -> Self {
        Self::answering(answer, false).await
    }

    /// Answer every request head (of requests without a body).
    async fn start_each(answer: &'static [u8]) -> Self {
        Self::answering(answer, true).await
    }

    async fn answering(answer: &'static [u8], each: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let g = g.clone();
                let slot = {
                    let mut g = g.lock().unwrap();
                    g.push(Vec::new());
                    g.len() - 1
                };
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    let mut answered = 0;
                    loop {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let heads = {
                                    let mut g = g.lock().unwrap();
                                    g[slot].extend_from_slice(&chunk[..n]);
                                    g[slot].windows(4).filter(|w| w == b"\r\n\r\n").count()
                                };
                                let due = if each { heads } else { heads.min(1) };
                                while answered < due {
                                    answered += 1;
                                    if s.write_all(answer).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, got }
    }

    /// Everything the backend received, all connections joined.
    fn received(&self) -> String {
        let g = self.got.lock().unwrap();
        g.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("")
    }
}

/// Listeners `vipd` and `hyper` (the codec each uses) for site `site.test`
/// in front of `backend`.
async fn proxy(backend: SocketAddr) -> (Arc<vipd::app::Running>, SocketAddr, SocketAddr) {
    let config = format!(
        r#"
[[listener]]
name = "vipd"
bind = "127.0.0.1:0"
protocol = "http"
vhosts = ["site"]
header_timeout = "1s"
request_body_timeout = "1s"

[[listener]]
name = "hyper"
bind = "127.0.0.1:0"
protocol = "http"
vhosts = ["site"]
http1_codec = "hyper"
header_timeout = "1s"
request_body_timeout = "1s"

[[pool]]
name = "p"
backends = [{{ address = "{backend}" }}]
response_timeout = "1s"

[[vhost]]
name = "site"
hosts = ["site.test"]
pool = "p"
"#
    );
    let running = start_proxy(&config).await;
    let v = running.local_addr("vipd").await.unwrap();
    let h = running.local_addr("hyper").await.unwrap();
    (running, v, h)
}

/// Write `bytes` and read until the proxy closes or `quiet` passes with
/// nothing new.
async fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, s.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_content_length_does_not_strip_the_request_framing() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: site.test\r\n\r\n";
    let attack = format!(
        "POST /a HTTP/1.1\r\nHost: site.test\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    for codec in ["vipd", "hyper"] {
        let backend = Scripted::start(OK).await;
        let (_running, v, h) = proxy(backend.addr).await;
        let addr = if codec == "vipd" { v } else { h };
        let reply = exchange(addr, attack.as_bytes(), Duration::from_millis(800)).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{codec}: {reply}");
        let got = backend.received();
        // Whatever the backend got, the body must be framed as one: the
        // request it receives carries its length.
        let head = &got[..got.find("\r\n\r\n").unwrap()];
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {}", smuggled.len())),
            "{codec}: the backend got a body without its framing:\n{got}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_connection_field_naming_content_length_does_not_unframe_the_response() {
    let backend = Scripted::start(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let (_running, v, _h) = proxy(backend.addr).await;
    let reply = exchange(
        v,
        b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        Duration::from_millis(800),
    )
    .await;
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\r\ncontent-length: 2\r\n")
            && reply.ends_with("\r\n\r\nok"),
        "the client got a response it cannot frame on a kept-alive connection:\n{reply}"
    );
}

/// A backend that answers the first request on each connection `200` and
/// keeps it open, then takes the second request and closes without an
/// answer (as one that crashed mid-request does). Returns every request
/// line it received.
async fn answers_once_per_connection() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let l = l.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let body: usize = head
                            .lines()
                            .find_map(|h| {
                                h.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(str::to_string)
                            })
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < end + 4 + body {
                            break;
                        }
                        buf.drain(..end + 4 + body);
                        l.lock()
                            .unwrap()
                            .push(head.lines().next().unwrap().to_string());
                        served += 1;
                        if served > 1 {
                            return;
                        }
                        if s.write_all(OK).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, lines)
}

// One worker thread: the pooled backend connection is the worker's.
#[tokio::test]
async fn a_post_the_backend_took_on_a_pooled_connection_is_not_sent_again_when_it_closes() {
    for codec in ["vipd", "hyper"] {
        let (backend, lines) = answers_once_per_connection().await;
        let (_running, v, h) = proxy(backend).await;
        let addr = if codec == "vipd" { v } else { h };
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /warm HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .await
            .unwrap();
        let mut first = vec![0u8; OK.len() + 512];
        let n = s.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        // Let the backend connection settle in the pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"POST /pay HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\n\r\n100")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(1500), s.read_to_end(&mut reply)).await;
        let pays = lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("POST /pay"))
            .count();
        assert_eq!(
            pays,
            1,
            "{codec}: the backend was sent the POST {pays} times; client got:\n{}",
            String::from_utf8_lossy(&reply)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_after_a_served_http1_request_does_not_switch_the_connection_to_http2() {
    let mut attack = b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n".to_vec();
    attack.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    // An empty SETTINGS frame.
    attack.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for codec in ["vipd", "hyper"] {
        let backend = Scripted::start(OK).await;
        let (_running, v, h) = proxy(backend.addr).await;
        let addr = if codec == "vipd" { v } else { h };
        let reply = exchange(addr, &attack, Duration::from_millis(800)).await;
        let after = &reply[reply.find("\r\n\r\nok").expect(&reply) + 6..];
        assert!(
            !after
                .as_bytes()
                .windows(3)
                .any(|w| w == [0, 0, 0] || w == [0, 0, 6]),
            "{codec}: HTTP/2 frames after an HTTP/1.1 response: {after:?}"
        );
        assert!(
            after.is_empty() || after.starts_with("HTTP/1.1 4"),
            "{codec}: {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_http10_response_is_refused_as_faulty_framing_by_both_codecs() {
    for codec in ["vipd", "hyper"] {
        let backend = Scripted::start(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        .await;
        let (_running, v, h) = proxy(backend.addr).await;
        let addr = if codec == "vipd" { v } else { h };
        let reply = exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
            Duration::from_millis(800),
        )
        .await;
        assert!(
            reply.starts_with("HTTP/1.1 502 Bad Gateway\r\n")
                && reply.ends_with("502 Bad Gateway\n"),
            "{codec}: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_response_reaches_the_client_without_a_content_length() {
    let backend =
        Scripted::start(b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\nX-A: 1\r\n\r\n").await;
    let (_running, v, _h) = proxy(backend.addr).await;
    let reply = exchange(
        v,
        b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        Duration::from_millis(800),
    )
    .await;
    assert_eq!(reply, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n");
}

/// A backend that reads a request and then floods `100 Continue` heads for
/// `secs` seconds.
async fn informational_flood(secs: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut c = [0u8; 1024];
                let _ = s.read(&mut c).await;
                let until = tokio::time::Instant::now() + Duration::from_secs(secs);
                let flood = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(4000);
                while tokio::time::Instant::now() < until {
                    if s.write_all(&flood).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_flooding_informational_responses_gets_a_504_within_response_timeout() {
    let backend = informational_flood(8).await;
    let (_running, v, h) = proxy(backend).await;
    for (codec, addr) in [("vipd", v), ("hyper", h)] {
        let started = tokio::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(4), s.read(&mut head))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        let reply = String::from_utf8_lossy(&head[..n]).into_owned();
        // response_timeout is 1 s; the flood lasts 8 s.
        assert!(
            reply.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"),
            "{codec}: after {:?}: {reply:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(4), "{codec}");
    }
}

/// A backend that answers each request head at once with `100 Continue`
/// (unasked), then reads the whole `Content-Length` body and answers `200`
/// with the number of body bytes it got.
async fn eager_continue() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut continued = false;
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if !continued {
                            continued = true;
                            if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                                return;
                            }
                        }
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= end + 4 + len {
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{len}",
                                len.to_string().len()
                            );
                            let _ = s.write_all(answer.as_bytes()).await;
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_on_after_an_unasked_100_continue_from_the_backend() {
    let backend = eager_continue().await;
    let (_running, v, h) = proxy(backend).await;
    for (codec, addr) in [("vipd", v), ("hyper", h)] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"0123456789").await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\n10"),
            "{codec}: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_502_to_a_head_request_carries_no_body() {
    // The backend closes every connection without an answer: a 502.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let (_running, v, h) = proxy(dead).await;
    for (codec, addr) in [("vipd", v), ("hyper", h)] {
        let reply = exchange(
            addr,
            b"HEAD / HTTP/1.1\r\nHost: site.test\r\n\r\n",
            Duration::from_millis(800),
        )
        .await;
        assert!(
            reply.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{codec}: {reply}"
        );
        assert!(
            reply.ends_with("\r\n\r\n"),
            "{codec}: a body after the head of a HEAD response: {reply:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_head_after_an_idle_pause_and_a_head_sent_byte_by_byte_are_both_served() {
    let backend = Scripted::start_each(OK).await;
    let (_running, v, _h) = proxy(backend.addr).await;
    let mut s = TcpStream::connect(v).await.unwrap();
    let mut reply = vec![0u8; 4096];
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut reply).await.unwrap();
    assert!(reply[..n].ends_with(b"\r\n\r\nok"));
    // Idle longer than header_timeout (1 s): the idle clock applies.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let big = format!(
        "GET /2 HTTP/1.1\r\nHost: site.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(6000)
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let n = s.read(&mut reply).await.unwrap();
    assert!(
        reply[..n].ends_with(b"\r\n\r\nok"),
        "{:?}",
        String::from_utf8_lossy(&reply[..n])
    );
    // A head one byte at a time, well within header_timeout.
    for b in b"GET /3 HTTP/1.1\r\nHost: site.test\r\n\r\n" {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let n = s.read(&mut reply).await.unwrap();
    assert!(
        reply[..n].ends_with(b"\r\n\r\nok"),
        "{:?}",
        String::from_utf8_lossy(&reply[..n])
    );
    let got = backend.received();
    assert!(got.contains("GET /2 ") && got.contains("GET /3 "), "{got}");
}

/// A backend that answers each connection's first request `ok`, then,
/// 100 ms later, sends a second response nobody asked for (`evil`), and
/// answers any later request `fresh`.
async fn answers_twice() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut answered = 0;
                loop {
                    let heads = buf.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    while answered < heads {
                        answered += 1;
                        let r: &[u8] = if answered == 1 {
                            OK
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
                        };
                        if s.write_all(r).await.is_err() {
                            return;
                        }
                        if answered == 1 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil";
                            if s.write_all(evil).await.is_err() {
                                return;
                            }
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

// One worker thread: both clients share the worker's backend idle list.
#[tokio::test]
async fn an_unasked_second_response_never_reaches_the_next_client_of_a_pooled_connection() {
    let backend = answers_twice().await;
    let (_running, v, h) = proxy(backend).await;
    for (codec, addr) in [("vipd", v), ("hyper", h)] {
        let get = b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n";
        let first = exchange(addr, get, Duration::from_millis(400)).await;
        assert!(first.ends_with("\r\n\r\nok"), "{codec}: {first}");
        let second = exchange(addr, get, Duration::from_millis(400)).await;
        assert!(
            !second.contains("evil") && second.starts_with("HTTP/1.1 200 OK\r\n"),
            "{codec}: the next client got {second}"
        );
    }
}
