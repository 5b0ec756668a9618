//! A backend that never accepts: connects hang until the pool's
//! `connect_timeout`, then the HTTP client gets 504 (or, for a request
//! without a body, the answer of another backend) and an L4 connection is
//! closed (or spliced to another backend).
//!
//! The hanging backend is a loopback listener with `listen(0)` whose accept
//! queue is filled by connections nobody accepts: the kernel then drops
//! further SYNs (`net.ipv4.tcp_abort_on_overflow = 0`, the default), so a
//! connect neither succeeds nor fails until the client gives up.

mod http_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use http_support::{Backend, get, h1_client, send, site_config, start_web};
use hyper::Request;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);
/// How much later than `connect_timeout` an answer may come on a busy
/// machine.
const SLACK: Duration = Duration::from_millis(1500);

/// A listener whose handshakes never complete, and the queued connections
/// that keep it so.
struct Blackhole {
    addr: SocketAddr,
    _listener: Socket,
    _queued: Vec<std::net::TcpStream>,
}

fn blackhole() -> Blackhole {
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_abort_on_overflow")
            .unwrap()
            .trim(),
        "0",
        "with tcp_abort_on_overflow the kernel resets instead of dropping SYNs"
    );
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    // Fill the accept queue until a connect hangs.
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("connect to the filling listener: {e}"),
        }
        assert!(queued.len() < 8, "the accept queue never filled");
    }
    Blackhole {
        addr,
        _listener: listener,
        _queued: queued,
    }
}

#[test]
fn a_full_accept_queue_makes_connects_hang() {
    let hole = blackhole();
    let started = std::time::Instant::now();
    let e = std::net::TcpStream::connect_timeout(&hole.addr, Duration::from_millis(700))
        .expect_err("connected to a full accept queue");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(650));
}

fn http_config(backends: &[SocketAddr]) -> String {
    let pool = format!(
        "scheduler = \"rr\"\nconnect_timeout = \"{}ms\"\nresponse_timeout = \"10s\"\npassive_fall = 0",
        CONNECT_TIMEOUT.as_millis()
    );
    site_config(backends, "", &pool)
}

#[tokio::test]
async fn an_http_backend_that_never_accepts_is_a_504_after_connect_timeout() {
    let hole = blackhole();
    let (_running, proxy) = start_web(&http_config(&[hole.addr])).await;
    let started = Instant::now();
    let (status, _, body) = send(&h1_client(), get(proxy, "site.test", "/")).await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert_eq!(body, "504 Gateway Timeout\n");
    assert!(
        took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + SLACK,
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn a_request_without_a_body_is_retried_on_another_backend_after_connect_timeout() {
    let hole = blackhole();
    let good = Backend::start("good").await;
    let (_running, proxy) = start_web(&http_config(&[hole.addr, good.addr])).await;
    let client = h1_client();
    let mut slow = 0;
    // Round robin: at least one of two requests is first sent to the black
    // hole (both are, when the retry's pick moves the cursor on to it).
    for _ in 0..2 {
        let started = Instant::now();
        let (status, headers, _) = send(&client, get(proxy, "site.test", "/")).await;
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert_eq!(headers["x-backend"], "good");
        assert!(took < CONNECT_TIMEOUT + SLACK, "answered after {took:?}");
        if took >= CONNECT_TIMEOUT {
            slow += 1;
        }
    }
    assert!(slow >= 1, "no request waited for the black hole");
    assert_eq!(good.requests(), 2);
}

#[tokio::test]
async fn with_passive_checks_one_connect_timeout_takes_the_backend_out() {
    let hole = blackhole();
    let good = Backend::start("good").await;
    let text = http_config(&[hole.addr, good.addr]).replace(
        "passive_fall = 0",
        "passive_fall = 1\npassive_cooldown = \"1m\"",
    );
    let (_running, proxy) = start_web(&text).await;
    let client = h1_client();
    let mut slow = 0;
    for _ in 0..4 {
        let started = Instant::now();
        let (status, _, _) = send(&client, get(proxy, "site.test", "/")).await;
        assert_eq!(status, 200);
        if started.elapsed() >= CONNECT_TIMEOUT {
            slow += 1;
        }
    }
    assert_eq!(
        slow, 1,
        "the black hole was tried again after being marked down"
    );
}

#[tokio::test]
async fn a_request_with_a_body_goes_to_another_backend_with_its_body_after_connect_timeout() {
    let hole = blackhole();
    let good = Backend::start("good").await;
    let (_running, proxy) = start_web(&http_config(&[hole.addr, good.addr])).await;
    let client = h1_client();
    let mut waited = 0;
    for _ in 0..2 {
        let req = Request::post(format!("http://{proxy}/upload"))
            .header("host", "site.test")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let started = Instant::now();
        let (status, _, body) = send(&client, req).await;
        let took = started.elapsed();
        assert!(took < CONNECT_TIMEOUT + SLACK, "took {took:?}");
        if took >= CONNECT_TIMEOUT {
            waited += 1;
        }
        // Connecting failed before the request was handed over, so it
        // went to the other backend whole: the body arrived intact.
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("body-bytes: 7"), "{body}");
    }
    assert!(waited >= 1, "no request waited for the black hole");
    assert_eq!(good.requests(), 2);
}

fn tcp_config(backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[[listener]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p"

[[pool]]
name = "p"
scheduler = "rr"
backends = [{}]
connect_timeout = "{}ms"
passive_fall = 0
"#,
        list.join(", "),
        CONNECT_TIMEOUT.as_millis()
    )
}

#[tokio::test]
async fn an_l4_connection_to_a_backend_that_never_accepts_is_closed_after_connect_timeout() {
    let hole = blackhole();
    let running = support::start(&tcp_config(&[hole.addr])).await;
    let proxy = running.local_addr("l4").await.unwrap();
    let started = Instant::now();
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(CONNECT_TIMEOUT + SLACK, client.read(&mut buf))
        .await
        .expect("the connection was neither closed nor forwarded");
    let took = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "got data: {read:?}");
    assert!(took >= CONNECT_TIMEOUT, "closed after {took:?}");
}

#[tokio::test]
async fn an_l4_connection_goes_to_another_backend_after_connect_timeout() {
    let hole = blackhole();
    let echo = support::echo_backend().await;
    let running = support::start(&tcp_config(&[hole.addr, echo])).await;
    let proxy = running.local_addr("l4").await.unwrap();
    let mut slow = 0;
    for i in 0..2u8 {
        let started = Instant::now();
        let mut client = TcpStream::connect(proxy).await.unwrap();
        let msg = [b'a' + i; 8];
        client.write_all(&msg).await.unwrap();
        let mut buf = [0u8; 8];
        tokio::time::timeout(CONNECT_TIMEOUT + SLACK, client.read_exact(&mut buf))
            .await
            .expect("no echo in time")
            .unwrap();
        assert_eq!(buf, msg);
        if started.elapsed() >= CONNECT_TIMEOUT {
            slow += 1;
        }
    }
    assert!(slow >= 1, "no connection waited for the black hole");
}
