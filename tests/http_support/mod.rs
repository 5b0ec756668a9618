//! Fixtures for the HTTP proxy tests: echo backends on port 0 (one that
//! answers through hyper, one on raw sockets that records request heads),
//! config text for the usual "listener `web`, pool `p`, site `site.test`",
//! the proxy started in-process from config text, and small HTTP clients.

#![allow(dead_code, unreachable_pub)] // each test file uses a different subset

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A backend that answers every request with its name (header
/// `x-backend`) and a body listing what it received: the request line,
/// then each header as `name: value`, then `body-bytes: N`, then each
/// trailer as `trailer: name=value`.
///
/// Paths: `/sleep/<ms>` answers after that long; `/ws` accepts an HTTP
/// upgrade and echoes the upgraded stream; `/hop` answers with hop-by-hop
/// headers that the proxy must strip.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
}

impl Backend {
    /// Start a backend called `name`.
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        answer(name, req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            connections,
            requests,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = upgrade.await else { return };
            echo_until_closed(TokioIo::new(up)).await;
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("x-backend", name)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (k, v) in req.headers() {
        text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
    }
    let body = req.into_body().collect().await.ok();
    let trailers = body.as_ref().and_then(|b| b.trailers().cloned());
    let bytes = body.map_or(0, |b| b.to_bytes().len());
    text.push_str(&format!("body-bytes: {bytes}\n"));
    for (k, v) in trailers.iter().flatten() {
        text.push_str(&format!("trailer: {}={}\n", k, v.to_str().unwrap_or("?")));
    }
    let mut resp = Response::builder()
        .header("x-backend", name)
        .body(Full::new(Bytes::from(text)))
        .unwrap();
    if path == "/hop" {
        let h = resp.headers_mut();
        h.insert("connection", "x-backend-private".parse().unwrap());
        h.insert("x-backend-private", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
    }
    Ok(resp)
}

/// The headers the backend listed in its answer, as (name, value) pairs.
pub fn echoed(body: &str) -> Vec<(String, String)> {
    body.lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every value of header `name` in an echoed body.
pub fn echoed_values(body: &str, name: &str) -> Vec<String> {
    echoed(body)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

/// The body of a raw HTTP/1.1 answer (after the blank line), or "".
pub fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// One http listener `web` (with `listener` settings) in front of pool `p`
/// of `backends` (with `pool` settings), for vhost `site` named `site.test`.
/// The listener's settings start on line 6, the pool's follow its
/// `backends` line, and the vhost is the last section, so that tests can
/// append settings to it.
pub fn site_config(backends: &[SocketAddr], listener: &str, pool: &str) -> String {
    format!(
        "\n{}\n{}\n{}",
        http_listener(listener),
        pool_section("p", backends, pool),
        vhost_section("site", "site.test", "p")
    )
}

/// `[[listener]]` `web` on 127.0.0.1:0 speaking http, with `extra` settings.
pub fn http_listener(extra: &str) -> String {
    format!("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n{extra}\n")
}

/// `[[pool]]` `name` of `backends`, with `extra` settings after them.
pub fn pool_section(name: &str, backends: &[SocketAddr], extra: &str) -> String {
    let backends = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[[pool]]\nname = \"{name}\"\nbackends = [{backends}]\n{extra}\n")
}

/// `[[vhost]]` `name` for `host`, served by pool `pool`.
pub fn vhost_section(name: &str, host: &str, pool: &str) -> String {
    format!("[[vhost]]\nname = \"{name}\"\nhosts = [\"{host}\"]\npool = \"{pool}\"\n")
}

/// Start the proxy with `config` (TOML text).
pub async fn start_proxy(config: &str) -> Arc<vipd::app::Running> {
    let config = vipd::config::parse(config, Path::new("test.toml")).unwrap();
    vipd::app::Running::start(config).await.unwrap()
}

/// Start the proxy with `config`; return it with the address of its
/// listener `web`.
pub async fn start_web(config: &str) -> (Arc<vipd::app::Running>, SocketAddr) {
    let running = start_proxy(config).await;
    let addr = running.local_addr("web").await.unwrap();
    (running, addr)
}

/// An address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// An HTTP/1.1 client with keep-alive.
pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A GET to `proxy` for `host` and `path`.
pub fn get(proxy: SocketAddr, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Send `req` and return status, headers and body text.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, hyper::HeaderMap, String) {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Write raw bytes to `proxy` and read the answer until the server closes
/// or `limit` elapses.
pub async fn raw(proxy: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh HTTP/2 prior-knowledge connection to `proxy`.
pub async fn h2_connect(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    h2_handshake(proxy).await.0
}

/// A fresh HTTP/2 prior-knowledge connection to `proxy` sending bodies of
/// type `B`, and the task driving it (it ends when the connection closes).
pub async fn h2_handshake<B>(
    proxy: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake::<_, _, B>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    (tx, tokio::spawn(conn))
}

/// Send a GET for `uri` (whose authority names the site) over a fresh
/// HTTP/2 prior-knowledge connection to `proxy`.
pub async fn h2_get(proxy: SocketAddr, uri: &str) -> (StatusCode, hyper::HeaderMap, String) {
    h2_get_with_host(proxy, uri, None).await
}

/// [`h2_get`] with a `host` header beside the `:authority` of `uri`.
pub async fn h2_get_with_host(
    proxy: SocketAddr,
    uri: &str,
    host: Option<&str>,
) -> (StatusCode, hyper::HeaderMap, String) {
    let mut tx = h2_connect(proxy).await;
    let mut req = Request::builder().uri(uri).version(hyper::Version::HTTP_2);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = tx
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// What a [`RawBackend`] does once it has read a request head.
#[derive(Clone, Copy)]
pub enum Act {
    /// Answer nothing; read until the proxy closes.
    Listen,
    /// Answer `200` with a body of this many bytes, written as fast as the
    /// proxy takes them.
    Stream(usize),
    /// Announce a body of `.0` bytes, send `.1` of them, then stall.
    StallAfter(usize, usize),
    /// `101` with the request's own `Upgrade` when it has one, then echo the
    /// upgraded stream; else `200` with body `ok`, and close.
    SwitchAsAsked,
    /// `101` naming this protocol to every request, then echo.
    SwitchTo(&'static str),
}

/// A backend written on raw sockets, one request per connection, that
/// acts as its [`Act`] says. It records every request head it receives
/// (header names lower-cased, lines joined by `\n`) and counts the
/// connections it accepted and those the proxy closed (EOF or reset seen).
pub struct RawBackend {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl RawBackend {
    pub async fn start(act: Act) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (h, a, c) = (heads.clone(), accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    serve_raw(s, act, h).await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            heads,
            accepted,
            closed,
        }
    }

    /// Request heads received so far, header names lower-cased.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether the proxy has closed `n` connections to this backend,
    /// within 3 s.
    pub async fn closed_soon(&self, n: usize) -> bool {
        eventually(Duration::from_secs(3), || self.closed() == n).await
    }
}

/// Serve one connection; returns when it is closed.
async fn serve_raw(mut s: TcpStream, act: Act, heads: Arc<Mutex<Vec<String>>>) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    heads.lock().unwrap().push(head.clone());
    match act {
        Act::Listen => {}
        Act::Stream(len) => {
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
        }
        Act::StallAfter(len, sent) => {
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.write_all(&vec![b'x'; sent]).await;
        }
        Act::SwitchAsAsked | Act::SwitchTo(_) => return switch(s, act, &head).await,
    }
    let mut sink = [0u8; 4096];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// Answer an upgrade request as `act` says; after a `101`, echo the
/// upgraded stream until the proxy closes it.
async fn switch(mut s: TcpStream, act: Act, head: &str) {
    let asked = head
        .lines()
        .find_map(|l| l.strip_prefix("upgrade: "))
        .map(str::to_string);
    let switch_to = match act {
        Act::SwitchTo(p) => Some(p.to_string()),
        _ => asked,
    };
    let Some(protocol) = switch_to else {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
        return;
    };
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    if s.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    echo_until_closed(s).await;
}

/// Write back what arrives on `io` until it closes or fails.
async fn echo_until_closed<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let mut buf = [0u8; 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Read a head up to its blank line, one byte at a time so that nothing
/// after it is consumed; header names lower-cased, lines joined by `\n`.
/// None on EOF, or when a byte takes more than 5 s.
pub async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let lowered = text
        .split("\r\n")
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_ascii_lowercase()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    Some(lowered)
}

/// Read until the peer closes (EOF or reset), for up to `limit`; None if
/// it did not close in time.
pub async fn read_until_closed<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Wait until `f` holds, for up to `limit`.
pub async fn eventually(limit: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// A client socket with a 4 KiB receive buffer, as a client that reads
/// nothing would leave it.
pub async fn small_window_client(proxy: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&proxy.into()).unwrap();
    s.set_nonblocking(true).unwrap();
    TcpStream::from_std(s.into()).unwrap()
}

/// The HTTP/2 client preface and an empty SETTINGS frame, the start of
/// every hand-written HTTP/2 connection.
pub fn h2_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    out
}

/// An HTTP/2 frame: length, type, flags, stream, payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `vipd_listener_connections_active` of listener `web`, read from the
/// admin endpoint's /metrics.
pub async fn active_gauge(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out.lines()
        .find(|l| l.starts_with("vipd_listener_connections_active{listener=\"web\"}"))
        .unwrap_or("gauge missing")
        .to_string()
}
