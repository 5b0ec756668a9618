//! Attacks that combine features across sections and reloads: tunnels
//! open across reloads that change or remove their listener, and
//! timeouts changed by a reload while a client stalls, and a PROXY v2
//! header in front of TLS and HTTP/2.

mod http_support;
mod tls_support;

use std::net::SocketAddr;
use std::time::Duration;

use http_support::{
    Act, RawBackend, active_gauge, read_head, read_until_closed, site_config, start_web,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An admin endpoint, for the gauge.
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// Send a WebSocket upgrade request; return the stream and response head.
async fn upgrade(proxy: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await.expect("a response head");
    (s, head)
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

async fn gauge_reaches(admin: SocketAddr, want: &str) -> String {
    let mut gauge = String::new();
    for _ in 0..250 {
        gauge = active_gauge(admin).await;
        if gauge == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gauge
}

fn parse(text: &str) -> vipd::config::Config {
    vipd::config::parse(text, std::path::Path::new("test.toml")).unwrap()
}

#[tokio::test]
async fn tunnels_open_across_reloads_that_drop_their_upgrade_or_their_listener_stay_counted_until_they_close()
 {
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let other = "[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n";
    let top = format!("{ADMIN}{other}");
    let text = |listener: &str| format!("{top}\n{}", site_config(&[b.addr], listener, ""));
    let (running, proxy) = start_web(&text("")).await;
    let admin = running.admin_addr().await.unwrap();
    let (mut t1, head) = upgrade(proxy).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    echo(&mut t1, b"one").await;

    // `upgrades = []`: new upgrades are served as plain requests, the open
    // tunnel carries on.
    running.apply(parse(&text("upgrades = []"))).await.unwrap();
    let (plain, head) = upgrade(proxy).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\n"), "{head}");
    drop(plain);
    echo(&mut t1, b"two").await;
    assert_eq!(
        gauge_reaches(
            admin,
            "vipd_listener_connections_active{listener=\"web\"} 1"
        )
        .await,
        "vipd_listener_connections_active{listener=\"web\"} 1"
    );

    // The listener removed: it stops accepting, the tunnel carries on and
    // still holds its global slot and its place in the gauge.
    let without_web = format!(
        "{top}\n{}",
        site_config(&[b.addr], "", "").replace("name = \"web\"", "name = \"web2\"")
    );
    running.apply(parse(&without_web)).await.unwrap();
    echo(&mut t1, b"three").await;
    assert_eq!(
        active_gauge(admin).await,
        "vipd_listener_connections_active{listener=\"web\"} 1"
    );
    // Added back (on another port): the tunnel is still one of its
    // connections.
    running.apply(parse(&text(""))).await.unwrap();
    echo(&mut t1, b"four").await;
    assert_eq!(
        active_gauge(admin).await,
        "vipd_listener_connections_active{listener=\"web\"} 1"
    );
    drop(t1);
    assert_eq!(
        gauge_reaches(
            admin,
            "vipd_listener_connections_active{listener=\"web\"} 0"
        )
        .await,
        "vipd_listener_connections_active{listener=\"web\"} 0"
    );
    running.stop().await;
}

/// Start a POST announcing 100 body bytes and send 5 of them.
async fn stalled_upload(proxy: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 100\r\n\r\nhello")
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn a_reload_changing_request_body_timeout_applies_to_connections_accepted_after_it() {
    let b = RawBackend::start(Act::Listen).await;
    let text = |timeout: &str| {
        site_config(
            &[b.addr],
            &format!("request_body_timeout = \"{timeout}\""),
            "response_timeout = \"30s\"",
        )
    };
    let (running, proxy) = start_web(&text("600ms")).await;
    let mut before = stalled_upload(proxy).await;
    // Lengthened while the upload is stalled: the open connection keeps
    // the deadline it was accepted with.
    running.apply(parse(&text("30s"))).await.unwrap();
    let mut after = stalled_upload(proxy).await;
    let answer = read_until_closed(&mut before, Duration::from_secs(5))
        .await
        .expect("the stalled upload accepted before the reload is cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    // The connection accepted after it has the new, longer deadline.
    let mut buf = [0u8; 64];
    let early = timeout(Duration::from_millis(1500), after.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the new connection was cut off under the old timeout"
    );
    drop(after);
    running.stop().await;
}

/// From 127.0.0.5 (a trusted PROXY sender), a PROXY v2 header naming
/// `client`, then TLS with SNI `a.test` and ALPN h2: the HTTP/2 sender.
async fn proxied_h2(
    proxy: SocketAddr,
    client: &str,
    pki: &tls_support::Pki,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.5:0".parse().unwrap()).unwrap();
    let mut tcp = sock.connect(proxy).await.unwrap();
    let header = vipd::proxy::proxy_protocol::encode_v2(client.parse().unwrap(), proxy);
    tcp.write_all(&header).await.unwrap();
    let mut cfg = tls_support::verifying_client(pki);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    tx
}

/// A GET for `authority` carrying forged forwarding headers: status and body.
async fn forged_get(
    tx: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let req = hyper::Request::builder()
        .uri(format!("https://{authority}/"))
        .version(hyper::Version::HTTP_2)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "http")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn behind_a_proxy_v2_header_tls_and_http2_streams_keep_the_claimed_client_and_the_sni_check()
{
    let pki = tls_support::Pki::new();
    let dir = tls_support::TempDir::new("combined");
    let a = tls_support::write_pair(
        dir.path(),
        "a",
        &pki.issue(&["a.test"], tls_support::Alg::Ecdsa),
    );
    let b = tls_support::write_pair(
        dir.path(),
        "b",
        &pki.issue(&["b.test"], tls_support::Alg::Ecdsa),
    );
    let backend = http_support::Backend::start("app").await;
    let cert = |p: &(std::path::PathBuf, std::path::PathBuf)| {
        format!(
            "[{{ cert = \"{}\", key = \"{}\" }}]",
            p.0.display(),
            p.1.display()
        )
    };
    let text = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
         proxy_protocol = true\ntrusted_proxies = [\"127.0.0.5\"]\nheader_timeout = \"2s\"\n\
         x_real_ip = true\n\n{}\n\
         [[vhost]]\nname = \"a\"\nhosts = [\"a.test\"]\npool = \"p\"\ncertificates = {}\n\n\
         [[vhost]]\nname = \"b\"\nhosts = [\"b.test\"]\npool = \"p\"\ncertificates = {}\n",
        http_support::pool_section("p", &[backend.addr], ""),
        cert(&a),
        cert(&b),
    );
    let (running, proxy) = start_web(&text).await;
    let mut tx = proxied_h2(proxy, "192.0.2.7:4000", &pki).await;
    for _ in 0..2 {
        let (status, body) = forged_get(&mut tx, "a.test").await;
        assert_eq!(status, 200, "{body}");
        // The sender is trusted, the client it names is not: every claim
        // of the client is replaced by the address the header carries.
        assert_eq!(
            http_support::echoed_values(&body, "x-forwarded-for"),
            ["192.0.2.7"]
        );
        assert_eq!(
            http_support::echoed_values(&body, "x-real-ip"),
            ["192.0.2.7"]
        );
        assert_eq!(
            http_support::echoed_values(&body, "x-forwarded-proto"),
            ["https"]
        );
        // A stream for the other site on the same connection: 421, and the
        // connection serves on.
        let (status, _) = forged_get(&mut tx, "b.test").await;
        assert_eq!(status, 421);
    }
    assert_eq!(backend.requests(), 2);
    drop(tx);
    running.stop().await;
}

#[tokio::test]
async fn bytes_pipelined_behind_a_408_are_never_read_as_a_request() {
    let b = RawBackend::start(Act::Listen).await;
    let text = site_config(
        &[b.addr],
        "request_body_timeout = \"400ms\"",
        "response_timeout = \"30s\"",
    );
    let (running, proxy) = start_web(&text).await;
    let mut s = stalled_upload(proxy).await;
    let mut head = [0u8; 30];
    timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head[..], b"HTTP/1.1 408 Request Timeout\r\n");
    // The rest of the body, then a request of its own: too late.
    let rest = format!(
        "{}GET /smuggled HTTP/1.1\r\nHost: site.test\r\n\r\n",
        "x".repeat(95)
    );
    let _ = s.write_all(rest.as_bytes()).await;
    let _ = read_until_closed(&mut s, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heads = b.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("POST /up HTTP/1.1\n"), "{heads:?}");
    running.stop().await;
}

#[tokio::test]
async fn a_websocket_tunnel_over_tls_outlives_a_certificate_reload_and_the_removal_of_its_listener()
{
    let pki = tls_support::Pki::new();
    let dir = tls_support::TempDir::new("combined-ws");
    let pair = tls_support::write_pair(
        dir.path(),
        "a",
        &pki.issue(&["site.test"], tls_support::Alg::Ecdsa),
    );
    let b = RawBackend::start(Act::SwitchAsAsked).await;
    let vhost = format!(
        "[[vhost]]\nname = \"site\"\nhosts = [\"site.test\"]\npool = \"p\"\n\
         certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
        pair.0.display(),
        pair.1.display()
    );
    let with_listener = |name: &str| {
        format!(
            "{ADMIN}[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\n{}\n{vhost}",
            http_support::pool_section("p", &[b.addr], "")
        )
    };
    let (running, proxy) = start_web(&with_listener("web")).await;
    let admin = running.admin_addr().await.unwrap();
    let cfg = std::sync::Arc::new(tls_support::verifying_client(&pki));
    let mut t = tls_support::connect(proxy, "site.test", &cfg)
        .await
        .unwrap();
    let first_leaf = tls_support::served_leaf(&t);
    t.write_all(
        b"GET /ws HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 4096];
    let n = timeout(Duration::from_secs(5), t.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert_eq!(tls_support::roundtrip(&mut t, b"one").await, b"one");

    // A new certificate: new handshakes get it, the tunnel carries on.
    tls_support::write_pair(
        dir.path(),
        "a",
        &pki.issue(&["site.test"], tls_support::Alg::Ecdsa),
    );
    running.apply(parse(&with_listener("web"))).await.unwrap();
    let fresh = tls_support::connect(proxy, "site.test", &cfg)
        .await
        .unwrap();
    assert_ne!(tls_support::served_leaf(&fresh), first_leaf);
    drop(fresh);
    assert_eq!(tls_support::roundtrip(&mut t, b"two").await, b"two");

    // The listener removed: the tunnel carries on, counted, until it closes.
    running.apply(parse(&with_listener("web2"))).await.unwrap();
    assert_eq!(tls_support::roundtrip(&mut t, b"three").await, b"three");
    assert_eq!(
        active_gauge(admin).await,
        "vipd_listener_connections_active{listener=\"web\"} 1"
    );
    drop(t);
    assert_eq!(
        gauge_reaches(
            admin,
            "vipd_listener_connections_active{listener=\"web\"} 0"
        )
        .await,
        "vipd_listener_connections_active{listener=\"web\"} 0"
    );
    running.stop().await;
}
