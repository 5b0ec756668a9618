//! Faults on the HTTP path over real loopback sockets: a backend that dies
//! mid-response, a backend that resets, and SIGTERM with requests in flight.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests the slow backend has received (and is answering).
static SLOW_ARRIVED: AtomicUsize = AtomicUsize::new(0);

/// A backend that reads a request head, then misbehaves as `act` says.
async fn backend(act: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                match act {
                    "half-body" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part")
                            .await;
                        // Dies mid-response.
                    }
                    "reset" => {
                        let std = s.into_std().unwrap();
                        socket2::SockRef::from(&std)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(std);
                    }
                    _ => {
                        SLOW_ARRIVED.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                            .await;
                    }
                }
            });
        }
    });
    addr
}

fn config(backend: SocketAddr) -> String {
    format!(
        r#"
[global]
grace_period = "5s"

[[listener]]
name = "http"
bind = "127.0.0.1:0"
protocol = "http"
default_vhost = "www"

[[vhost]]
name = "www"
hosts = ["www.test"]
pool = "p"

[[pool]]
name = "p"
backends = [{{ address = "{backend}" }}]
"#
    )
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    r.map(|_| text)
}

fn spawn_runtime<F: std::future::Future + Send + 'static>(f: F) -> F::Output
where
    F::Output: Send + 'static,
{
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(f);
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    out
}

#[test]
fn a_backend_dying_mid_response_gives_the_client_a_clean_truncated_reply_not_a_hang() {
    let b = spawn_runtime(backend("half-body"));
    let vipd = support::Vipd::run(&config(b));
    let addr = vipd.listening(&["http"])["http"];
    let started = Instant::now();
    let reply = get(addr, "/dies").unwrap_or_default();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "hung for {:?}",
        started.elapsed()
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply:?}");
    assert!(reply.ends_with("only part"), "{reply:?}");
    // Fewer bytes than announced: the client can tell the body is truncated.
    // (Field names keep the backend's case.)
    assert!(
        reply.to_ascii_lowercase().contains("content-length: 1000"),
        "{reply:?}"
    );
}

#[test]
fn a_backend_that_resets_gives_502() {
    let b = spawn_runtime(backend("reset"));
    let vipd = support::Vipd::run(&config(b));
    let addr = vipd.listening(&["http"])["http"];
    let reply = get(addr, "/reset").unwrap();
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply:?}");
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let b = spawn_runtime(backend("slow"));
    let mut vipd = support::Vipd::run(&config(b));
    let addr = vipd.listening(&["http"])["http"];
    let in_flight: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || get(addr, &format!("/slow{i}"))))
        .collect();
    // Once every request is at the backend (in flight), stop vipd.
    let deadline = Instant::now() + Duration::from_secs(5);
    while SLOW_ARRIVED.load(Ordering::SeqCst) < 4 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the backend"
        );
        std::thread::yield_now();
    }
    vipd.signal("TERM");
    vipd.wait_for("draining open connections", Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
    for t in in_flight {
        let reply = t.join().unwrap().unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply:?}");
        assert!(reply.ends_with("slow"), "{reply:?}");
    }
    assert_eq!(vipd.wait_exit(Duration::from_secs(6)), Some(0));
}
