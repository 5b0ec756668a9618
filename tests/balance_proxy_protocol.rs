//! PROXY protocol through the running proxy: the carried client address
//! becomes the client identity; malformed headers close the connection with
//! nothing forwarded; `send_proxy` pools receive a v2 header.

mod balance_support;
mod http_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use balance_support::{backends, connect_from, start};
use vipd::proxy::proxy_protocol::{self, Parsed};

fn proxied(port: u16, send_proxy: bool) -> String {
    format!(
        r#"
[[listener]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "app"
persistence = "sticky"
proxy_protocol = true
trusted_proxies = ["127.0.0.0/8"]
header_timeout = "2s"

[[pool]]
name = "app"
send_proxy = {send_proxy}
backends = [{{ address = "127.0.0.1:{port}" }}]

[[persistence]]
name = "sticky"
"#
    )
}

/// Send `bytes`, half-close, and return the greeting line the backend sent
/// through the proxy (empty when the proxy closed the connection).
async fn exchange(from: &str, to: SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect_from(from, to).await;
    s.write_all(bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let mut line = String::new();
    // A proxy that closes with our bytes unread resets the connection.
    match BufReader::new(s).read_line(&mut line).await {
        Ok(_) => line,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("{e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn the_v1_and_v2_source_address_becomes_the_client_and_the_header_is_stripped() {
    let (port, mut received) = backends(&["127.0.0.1"]).await;
    let running = start(&proxied(port, false)).await;
    let edge = running.local_addr("edge").await.unwrap();

    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nhello v1";
    assert_eq!(
        exchange("127.0.0.1", edge, v1).await,
        format!("127.0.0.1:{port}\n")
    );
    assert_eq!(received.recv().await.unwrap().bytes, b"hello v1");

    let mut v2 = proxy_protocol::encode_v2("[2001:db8::9]:4000".parse().unwrap(), edge);
    v2.extend_from_slice(b"hello v2");
    assert_eq!(
        exchange("127.0.0.1", edge, &v2).await,
        format!("127.0.0.1:{port}\n")
    );
    assert_eq!(received.recv().await.unwrap().bytes, b"hello v2");

    let table = running
        .snapshot()
        .persistence
        .get("sticky")
        .unwrap()
        .clone();
    let clients: Vec<String> = table.list().iter().map(|e| e.client.to_string()).collect();
    assert_eq!(clients, ["192.0.2.7/32", "2001:db8::9/128"]);
    assert_eq!(table.lookup(ip("127.0.0.1")), None);
    running.stop().await;
}

#[tokio::test]
async fn a_malformed_or_missing_header_closes_the_connection_and_forwards_nothing() {
    let (port, mut received) = backends(&["127.0.0.1"]).await;
    let running = start(&proxied(port, false)).await;
    let edge = running.local_addr("edge").await.unwrap();
    let bad: [&[u8]; 4] = [
        b"PROXY TCP4 192.0.2.7 bogus 1 2\r\nsecret",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0csecret-bytes",
        // Closed before the header was complete.
        b"PROXY TCP4 192.0.2.7",
    ];
    for bytes in bad {
        assert_eq!(exchange("127.0.0.1", edge, bytes).await, "");
    }
    // The backend's first connection is the next valid one.
    let ok = b"PROXY TCP4 192.0.2.8 198.51.100.1 1 2\r\nfirst";
    assert_eq!(
        exchange("127.0.0.1", edge, ok).await,
        format!("127.0.0.1:{port}\n")
    );
    assert_eq!(received.recv().await.unwrap().bytes, b"first");
    assert!(received.try_recv().is_err());
    running.stop().await;
}

#[tokio::test]
async fn an_untrusted_peer_is_refused() {
    let (port, mut received) = backends(&["127.0.0.1"]).await;
    let text = proxied(port, false).replace("127.0.0.0/8", "192.0.2.0/24");
    let running = start(&text).await;
    let edge = running.local_addr("edge").await.unwrap();
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nhello";
    assert_eq!(exchange("127.0.0.1", edge, v1).await, "");
    running.stop().await;
    assert!(received.try_recv().is_err());
}

#[tokio::test]
async fn a_send_proxy_pool_receives_the_client_in_a_v2_header() {
    let (port, mut received) = backends(&["127.0.0.1"]).await;
    let text = proxied(port, true).replace("proxy_protocol = true\n", "");
    let running = start(&text).await;
    let edge = running.local_addr("edge").await.unwrap();
    let mut s = connect_from("127.0.0.5", edge).await;
    let client = s.local_addr().unwrap();
    s.write_all(b"data").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let got = received.recv().await.unwrap().bytes;
    let Ok(Parsed::Complete { header, len }) = proxy_protocol::parse(&got) else {
        panic!("backend received no PROXY header: {got:?}");
    };
    assert_eq!(header.version, 2);
    assert_eq!(header.source, Some(client));
    assert_eq!(header.destination, Some(edge));
    assert_eq!(&got[len..], b"data");
    running.stop().await;
}

/// An `http` listener behind PROXY senders in `trusted`, with one backend
/// that echoes the request head it received.
async fn http_behind_proxies(trusted: &str) -> (http_support::Backend, SocketAddr) {
    let backend = http_support::Backend::start("app").await;
    let text = format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
proxy_protocol = true
trusted_proxies = {trusted}
header_timeout = "2s"

[[pool]]
name = "app"
backends = [{{ address = "{}" }}]

[[vhost]]
name = "site"
hosts = ["a.test"]
pool = "app"
"#,
        backend.addr
    );
    let running = start(&text).await;
    let web = running.local_addr("web").await.unwrap();
    std::mem::forget(running);
    (backend, web)
}

/// From `from`, send a PROXY v1 header naming `client`, then a GET with
/// `X-Forwarded-For: 6.6.6.6`; the answer ("" when the proxy closed).
async fn proxied_get(from: &str, to: SocketAddr, client: &str) -> String {
    let head = format!(
        "PROXY TCP4 {client} 127.0.0.1 4000 80\r\nGET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
    );
    let mut s = connect_from(from, to).await;
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn forwarded_for(answer: &str) -> Vec<String> {
    http_support::echoed_values(http_support::body_of(answer), "x-forwarded-for")
}

#[tokio::test]
async fn a_peer_outside_trusted_proxies_cannot_send_proxy_even_claiming_a_trusted_address() {
    let (backend, web) = http_behind_proxies("[\"127.0.0.5\"]").await;
    assert_eq!(proxied_get("127.0.0.1", web, "127.0.0.5").await, "");
    assert_eq!(backend.requests(), 0);
}

#[tokio::test]
async fn the_clients_of_a_trusted_proxy_sender_cannot_forge_x_forwarded_for() {
    let (_backend, web) = http_behind_proxies("[\"127.0.0.5\"]").await;
    // The sender is trusted; the client it names is not, so its own
    // X-Forwarded-For is replaced by the address the PROXY header carries.
    let answer = proxied_get("127.0.0.5", web, "192.0.2.7").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(forwarded_for(&answer), ["192.0.2.7"]);
    // A client that is itself a trusted proxy keeps its chain.
    let (_backend, web) = http_behind_proxies("[\"127.0.0.0/8\"]").await;
    let answer = proxied_get("127.0.0.5", web, "127.0.0.9").await;
    assert_eq!(forwarded_for(&answer), ["6.6.6.6, 127.0.0.9"]);
}

#[test]
fn check_refuses_proxy_protocol_without_trusted_proxies_and_names_the_fix() {
    let dir = std::env::temp_dir().join(format!("vipd-pp-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edge.toml");
    let text = proxied(8080, false).replace("trusted_proxies = [\"127.0.0.0/8\"]\n", "");
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let expected = format!(
        "{}: 1 configuration error\n{}:8:1: listener \"edge\".proxy_protocol: `proxy_protocol = true` with no `trusted_proxies` would let any client claim any address\n    fix: list the proxies that send PROXY headers, e.g. `trusted_proxies = [\"10.0.0.5\"]`; to accept them from anyone, write `trusted_proxies = [\"0.0.0.0/0\", \"::/0\"]`",
        path.display(),
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // The explicit "anyone" list passes.
    let open = text.replace(
        "proxy_protocol = true\n",
        "proxy_protocol = true\ntrusted_proxies = [\"0.0.0.0/0\", \"::/0\"]\n",
    );
    vipd::config::parse(&open, std::path::Path::new("edge.toml")).unwrap();
}

#[tokio::test]
async fn a_proxy_header_naming_no_client_earns_its_client_no_trust() {
    let (_backend, web) = http_behind_proxies("[\"127.0.0.0/8\"]").await;
    let get =
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n";
    // v1 UNKNOWN, and v2 PROXY with the unspecified family: the sender
    // (trusted) did not know the client, and an unknown client is not a
    // trusted proxy. (v2 LOCAL: the sender's own connection, same rule.)
    let mut v2_unspec = proxy_protocol::V2_SIGNATURE.to_vec();
    v2_unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
    let mut v2_local = proxy_protocol::V2_SIGNATURE.to_vec();
    v2_local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    for header in [b"PROXY UNKNOWN\r\n".to_vec(), v2_unspec, v2_local] {
        let mut s = connect_from("127.0.0.5", web).await;
        s.write_all(&header).await.unwrap();
        s.write_all(get).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(forwarded_for(&answer), ["127.0.0.5"], "{header:?}");
    }
}
