//! PROXY protocol through the running proxy: the carried client address
//! becomes the client identity; malformed headers close the connection with
//! nothing forwarded; `send_proxy` pools receive a v2 header.

mod balance_support;

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
