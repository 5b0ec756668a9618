//! Fixtures for the health and admin tests: loopback backends that answer a
//! tiny HTTP exchange with their name (and can be killed and restarted at the
//! same address), a raw HTTP client, and bounded polling.

#![allow(dead_code, unreachable_pub)] // reason: each test crate uses a different subset, and `pub` is for them

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A backend answering `GET <path>` with its name (status 200), except
/// `/health`, which answers with `health_status` (200 unless changed).
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    /// Requests other than `/health` answered.
    pub served: Arc<AtomicU64>,
    /// Status `/health` answers with.
    pub health_status: Arc<AtomicU16>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestBackend {
    /// Start on a fresh loopback port.
    pub async fn start(name: &str) -> Self {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Start on `addr` (to bring a killed backend back at its address).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind test backend");
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let health_status = Arc::new(AtomicU16::new(200));
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            name.to_string(),
            served.clone(),
            health_status.clone(),
            stop.clone(),
        ));
        Self {
            name: name.to_string(),
            addr,
            served,
            health_status,
            stop,
            task,
        }
    }

    /// Stop accepting and close the listening socket: new connects are refused.
    pub async fn kill(self) -> SocketAddr {
        self.stop.cancel();
        let _ = self.task.await;
        self.addr
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    served: Arc<AtomicU64>,
    health: Arc<AtomicU16>,
    stop: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let (name, served, health) = (name.clone(), served.clone(), health.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let status = if path == "/health" {
                health.load(Ordering::Relaxed)
            } else {
                served.fetch_add(1, Ordering::Relaxed);
                200
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                name.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The request the tests send through the proxy.
pub const REQUEST: &str = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// One request through the proxy at `addr`: the answering backend's name,
/// or an error if the connection failed or closed without an answer.
pub async fn request(addr: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(REQUEST.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        match out.split_once("\r\n\r\n") {
            Some((_, body)) => Ok(body.to_string()),
            None => Err(format!("no answer (got {out:?})")),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// `n` requests in a row; names of the answering backends, in order.
pub async fn requests(addr: SocketAddr, n: usize) -> Vec<Result<String, String>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(request(addr).await);
    }
    v
}

/// How many of `answers` came from `name`.
pub fn count(answers: &[Result<String, String>], name: &str) -> usize {
    answers.iter().filter(|a| a.as_deref() == Ok(name)).count()
}

/// A raw HTTP/1.1 exchange with the admin endpoint: `(status, body)`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    admin_request(addr, method, path, &format!("Host: {addr}\r\n{auth}"), body).await
}

/// One request to the admin endpoint at `addr` with the given `headers`
/// lines (Host included by the caller, each ending in CRLF), then
/// `Connection: close` and `body`: `(status, body)`.
pub async fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to admin");
    let req = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("admin answered in time")
        .unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A tcp listener `web` on `bind` in front of pool `p` of `backends`
/// (with `pool` settings after them).
pub fn tcp_site(bind: &str, backends: &[&TestBackend], pool: &str) -> String {
    let backends = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[listener]]
name = "web"
bind = "{bind}"
protocol = "tcp"
pool = "p"

[[pool]]
name = "p"
backends = [{backends}]
{pool}
"#
    )
}

/// An admin endpoint on 127.0.0.1:0 (with `admin` settings) before `rest`.
pub fn admin_config(admin: &str, rest: &str) -> String {
    format!("\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n{rest}")
}

/// Poll `cond` every 10 ms for up to 5 s; panics with `what` on timeout.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Parse a test configuration.
pub fn config(text: &str) -> vipd::config::Config {
    vipd::config::parse(text, Path::new("test.toml")).expect("test config is valid")
}

/// The live state of backend `addr` in pool `pool`.
pub fn backend(
    running: &vipd::app::Running,
    pool: &str,
    addr: SocketAddr,
) -> vipd::balance::Backend {
    running
        .snapshot()
        .pools
        .get(pool)
        .expect("pool exists")
        .backends
        .iter()
        .find(|b| b.address == addr)
        .expect("backend exists")
        .clone()
}

/// Whether backend `addr` of `pool` is healthy now.
pub fn healthy(running: &vipd::app::Running, pool: &str, addr: SocketAddr) -> bool {
    backend(running, pool, addr).state.is_healthy()
}
