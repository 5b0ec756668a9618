//! Upgraded connections (WebSocket tunnels) over real sockets: they stay
//! under the listener's connection caps and in its active gauge until they
//! close, they end at `idle_timeout`, and only the upgrades a listener
//! allows are tunnelled (`h2c` never is).

mod http_support;

use std::net::SocketAddr;
use std::time::Duration;

use http_support::{Act, RawBackend, active_gauge, read_head, site_config, start_web};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// An admin endpoint, for the gauge.
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// One http listener `web` in front of `backend`; `top` goes before it
/// (`[admin]`, `[global]`), `listener_extra` inside it.
fn config(backend: SocketAddr, listener_extra: &str, top: &str) -> String {
    format!("{top}\n{}", site_config(&[backend], listener_extra, ""))
}

/// Send an upgrade request naming `upgrade` (and `extra` header lines)
/// and return the stream with the response head.
async fn upgrade(proxy: SocketAddr, upgrade: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.expect("a response head");
    (s, head)
}

/// Open a WebSocket tunnel through `proxy` and check that it echoes.
async fn tunnel(proxy: SocketAddr) -> TcpStream {
    let (mut s, head) = upgrade(proxy, "websocket", "").await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\n"),
        "{head}"
    );
    echo(&mut s, b"ping").await;
    s
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, msg);
}

/// Send a plain GET on a new connection and read for up to `wait`: the
/// answer's first bytes, "closed" or "no answer".
async fn plain_get(proxy: SocketAddr, wait: Duration) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let text = match timeout(wait, s.read(&mut buf)).await {
        Ok(Ok(0)) => "closed".to_string(),
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        // Closed with the request unread: the kernel answers with a reset.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "closed".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "no answer".to_string(),
    };
    (s, text)
}

#[tokio::test]
async fn a_client_holding_two_tunnels_cannot_open_a_third_connection_with_a_per_client_cap_of_two()
{
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, "max_connections_per_client = 2", "")).await;
    let mut first = tunnel(proxy).await;
    let second = tunnel(proxy).await;

    let (_, third) = plain_get(proxy, Duration::from_secs(3)).await;
    assert_eq!(third, "closed", "the third connection is refused");
    echo(&mut first, b"still open").await;

    // Closing one tunnel frees its slot.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, answer) = plain_get(proxy, Duration::from_secs(2)).await;
        if answer.starts_with("HTTP/1.1 200 OK\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
    running.stop().await;
}

#[tokio::test]
async fn open_tunnels_count_in_the_active_connections_gauge_until_they_close() {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, "", ADMIN)).await;
    let admin = running.admin_addr().await.unwrap();
    let first = tunnel(proxy).await;
    let second = tunnel(proxy).await;
    assert_eq!(
        active_gauge(admin).await,
        "vipd_listener_connections_active{listener=\"web\"} 2"
    );
    drop((first, second));
    let mut gauge = String::new();
    for _ in 0..250 {
        gauge = active_gauge(admin).await;
        if gauge.ends_with(" 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gauge,
        "vipd_listener_connections_active{listener=\"web\"} 0"
    );
    running.stop().await;
}

/// Two tunnels fill a cap of two connections: a third connection waits in
/// the backlog until one closes.
async fn tunnels_fill_a_cap_of_two(listener_extra: &str, top: &str) {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, listener_extra, top)).await;
    let first = tunnel(proxy).await;
    let mut second = tunnel(proxy).await;

    // The third waits in the backlog: connected, but not served.
    let (mut third, answer) = plain_get(proxy, Duration::from_millis(800)).await;
    assert_eq!(answer, "no answer");
    echo(&mut second, b"still open").await;

    drop(first);
    let mut buf = vec![0u8; 4096];
    let n = timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the waiting connection is served once a tunnel closes")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    drop((second, third));
    running.stop().await;
}

#[tokio::test]
async fn the_listener_max_connections_holds_while_tunnels_are_open_and_frees_when_one_closes() {
    tunnels_fill_a_cap_of_two("max_connections = 2", "").await;
}

#[tokio::test]
async fn the_global_max_connections_holds_while_tunnels_are_open_and_frees_when_one_closes() {
    tunnels_fill_a_cap_of_two("", "[global]\nmax_connections = 2\n").await;
}

#[tokio::test]
async fn a_tunnel_idle_past_idle_timeout_is_closed() {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, "idle_timeout = \"500ms\"", "")).await;
    let mut s = tunnel(proxy).await;
    let idle_from = Instant::now();
    let mut buf = [0u8; 16];
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the idle tunnel is closed")
        .unwrap_or(0);
    let waited = idle_from.elapsed();
    assert_eq!(n, 0);
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    running.stop().await;
}

#[tokio::test]
async fn an_h2c_upgrade_and_its_http2_settings_are_not_forwarded_to_the_backend() {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, "", "")).await;
    // Connection does not list HTTP2-Settings, as a hostile client would send it.
    let (mut s, head) = upgrade(proxy, "h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\n"), "{head}");
    let mut body = [0u8; 2];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"ok");

    let heads = b.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let got = &heads[0];
    assert!(got.starts_with("GET /ws HTTP/1.1\n"), "{got}");
    assert!(!got.contains("\nupgrade:"), "{got}");
    assert!(!got.contains("\nhttp2-settings:"), "{got}");
    assert!(!got.contains("\nconnection:"), "{got}");
    running.stop().await;
}

#[tokio::test]
async fn a_backend_switching_to_a_protocol_the_client_did_not_get_to_ask_for_is_a_502() {
    let b = RawBackend::start(Act::SwitchTo("h2c")).await;
    let (running, proxy) = start_web(&config(b.addr, "", "")).await;
    for asked in ["h2c", "websocket"] {
        let (mut s, head) = upgrade(proxy, asked, "").await;
        assert!(
            head.starts_with("HTTP/1.1 502 Bad Gateway\n"),
            "{asked}: {head}"
        );
        // Nothing is tunnelled: the bytes after the head are the 502 body.
        let mut body = vec![0u8; "502 Bad Gateway\n".len()];
        s.read_exact(&mut body).await.unwrap();
        assert_eq!(body, b"502 Bad Gateway\n", "{asked}");
    }
    running.stop().await;
}

#[tokio::test]
async fn an_upgrade_the_listener_does_not_allow_is_forwarded_as_a_plain_request() {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, "", "")).await;
    let (_, head) = upgrade(proxy, "x-raw-tcp", "").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\n"), "{head}");
    let got = &b.heads()[0];
    assert!(!got.contains("\nupgrade:"), "{got}");
    assert!(!got.contains("\nconnection:"), "{got}");
    running.stop().await;
}

#[tokio::test]
async fn the_upgrades_setting_names_the_protocols_tunnelled_case_insensitively() {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, "upgrades = [\"X-Raw-TCP\"]", "")).await;

    let (mut s, head) = upgrade(proxy, "x-raw-tcp/2, h2c", "").await;
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\n"),
        "{head}"
    );
    echo(&mut s, b"raw bytes").await;
    // Only the allowed protocol reached the backend.
    assert!(
        b.heads()[0].contains("\nupgrade: x-raw-tcp/2\n"),
        "{:?}",
        b.heads()
    );

    drop(s);

    // websocket is not in this listener's list.
    let (_, head) = upgrade(proxy, "websocket", "").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\n"), "{head}");
    running.stop().await;
}

#[test]
fn configuration_refuses_h2c_and_non_tokens_in_upgrades() {
    let text = config(
        "127.0.0.1:1".parse().unwrap(),
        "upgrades = [\"websocket\", \"h2c\", \"web socket\"]",
        "",
    );
    let err = vipd::config::parse(&text, std::path::Path::new("up.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "up.toml: 2 configuration errors\n\
         up.toml:7:1: listener \"web\".upgrades: \"h2c\" is never tunnelled: vipd serves HTTP/2 itself\n    \
         fix: remove it; HTTP/2 clients use ALPN (https) or prior knowledge (http)\n\
         up.toml:7:1: listener \"web\".upgrades: \"web socket\" is not a protocol name\n    \
         fix: write protocol names as they appear in the Upgrade header, e.g. \"websocket\""
    );
}

#[tokio::test]
async fn a_reload_lowering_the_per_client_cap_counts_the_tunnels_already_open() {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, "max_connections_per_client = 4", "")).await;
    let mut first = tunnel(proxy).await;
    let second = tunnel(proxy).await;
    let lowered = config(b.addr, "max_connections_per_client = 2", "");
    let lowered = vipd::config::parse(&lowered, std::path::Path::new("test.toml")).unwrap();
    running.apply(lowered).await.unwrap();

    let (_, third) = plain_get(proxy, Duration::from_secs(3)).await;
    assert_eq!(third, "closed", "the two open tunnels fill the new cap");
    echo(&mut first, b"still open").await;
    drop((first, second));
    running.stop().await;
}

/// Two tunnels open under a cap of four (`before`: listener lines and top
/// of the file), then a reload to `after`, a cap of two: a new connection
/// waits until a tunnel closes.
async fn a_reload_lowers_a_cap_below_two_open_tunnels(before: (&str, &str), after: (&str, &str)) {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let (running, proxy) = start_web(&config(b.addr, before.0, before.1)).await;
    let first = tunnel(proxy).await;
    let mut second = tunnel(proxy).await;
    let lowered = config(b.addr, after.0, after.1);
    let lowered = vipd::config::parse(&lowered, std::path::Path::new("test.toml")).unwrap();
    running.apply(lowered).await.unwrap();

    // The connection that was already waiting for the next accept may be
    // served under the old cap; after it, the new cap holds.
    let (_, served) = plain_get(proxy, Duration::from_secs(3)).await;
    assert!(served.starts_with("HTTP/1.1 200 OK\r\n"), "{served}");
    let (mut waiting, answer) = plain_get(proxy, Duration::from_millis(800)).await;
    assert_eq!(answer, "no answer", "two tunnels fill the lowered cap");
    echo(&mut second, b"still open").await;

    drop(first);
    let mut buf = vec![0u8; 4096];
    let n = timeout(Duration::from_secs(5), waiting.read(&mut buf))
        .await
        .expect("the waiting connection is served once a tunnel closes")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    drop((second, waiting));
    running.stop().await;
}

#[tokio::test]
async fn a_reload_lowering_max_connections_holds_the_tunnels_already_open_to_it() {
    a_reload_lowers_a_cap_below_two_open_tunnels(
        ("max_connections = 4", ""),
        ("max_connections = 2", ""),
    )
    .await;
}

#[tokio::test]
async fn a_reload_lowering_the_global_max_connections_holds_the_tunnels_already_open_to_it() {
    a_reload_lowers_a_cap_below_two_open_tunnels(
        ("", "[global]\nmax_connections = 4"),
        ("", "[global]\nmax_connections = 2"),
    )
    .await;
}
