//! Client-IP persistence through the running proxy: two listeners of one
//! group, netmask grouping, and rescheduling when the backend goes away.

mod balance_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use balance_support::{backend_for, backends, start};

/// Two tcp listeners ("http", "https") over pools of the same three hosts
/// (127.0.0.2-4) on two ports, both in persistence group "sticky".
fn two_ports(p80: u16, p443: u16, hosts: &[&str], netmask: &str) -> String {
    let list = |port: u16| {
        hosts
            .iter()
            .map(|h| format!("{{ address = \"{h}:{port}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
[[listener]]
name = "http"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "web80"
persistence = "sticky"

[[listener]]
name = "https"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "web443"
persistence = "sticky"

[[pool]]
name = "web80"
scheduler = "rr"
backends = [{}]

[[pool]]
name = "web443"
scheduler = "rr"
backends = [{}]

[[persistence]]
name = "sticky"
netmask = "{netmask}"
"#,
        list(p80),
        list(p443)
    )
}

const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_client_reaches_the_same_host_on_both_listeners_of_a_group() {
    let (p80, _r80) = backends(&HOSTS).await;
    let (p443, _r443) = backends(&HOSTS).await;
    let running = start(&two_ports(p80, p443, &HOSTS, "255.255.255.255")).await;
    let http = running.local_addr("http").await.unwrap();
    let https = running.local_addr("https").await.unwrap();
    // Give the 443 pool's rr a different position than the 80 pool's, so
    // that only persistence can make the hosts match.
    let first = backend_for("127.0.0.99", https).await;
    assert_eq!(first, SocketAddr::new(ip("127.0.0.2"), p443));
    let mut hosts = Vec::new();
    for c in 10..22 {
        let client = format!("127.0.0.{c}");
        let a = backend_for(&client, http).await;
        let b = backend_for(&client, https).await;
        assert_eq!(a.port(), p80);
        assert_eq!(b, SocketAddr::new(a.ip(), p443), "client {client}");
        hosts.push(a.ip());
    }
    // New clients were scheduled rr over the three hosts, in order.
    let want: Vec<IpAddr> = (0..12).map(|i| ip(HOSTS[i % 3])).collect();
    assert_eq!(hosts, want);
    let table = running
        .snapshot()
        .persistence
        .get("sticky")
        .unwrap()
        .clone();
    assert_eq!(table.len(), 13);
    let e = table.lookup(ip("127.0.0.10")).unwrap();
    assert_eq!(
        (e.client.to_string(), e.backend),
        ("127.0.0.10/32".to_string(), ip("127.0.0.2"))
    );
    running.stop().await;
}

#[tokio::test]
async fn clients_in_one_netmask_share_a_host() {
    let (p80, _r80) = backends(&HOSTS).await;
    let (p443, _r443) = backends(&HOSTS).await;
    let running = start(&two_ports(p80, p443, &HOSTS, "255.255.255.252")).await;
    let http = running.local_addr("http").await.unwrap();
    let https = running.local_addr("https").await.unwrap();
    let mut got = Vec::new();
    for c in 8..20 {
        let client = format!("127.0.0.{c}");
        let addr = if c % 2 == 0 { http } else { https };
        got.push(backend_for(&client, addr).await.ip());
    }
    // 127.0.0.8/30, .12/30 and .16/30 take the hosts in rr order.
    let want: Vec<IpAddr> = (0..12).map(|i| ip(HOSTS[i / 4])).collect();
    assert_eq!(got, want);
    let table = running
        .snapshot()
        .persistence
        .get("sticky")
        .unwrap()
        .clone();
    let rows: Vec<(String, IpAddr)> = table
        .list()
        .into_iter()
        .map(|e| (e.client.to_string(), e.backend))
        .collect();
    assert_eq!(
        rows,
        [
            ("127.0.0.8/30".to_string(), ip(HOSTS[0])),
            ("127.0.0.12/30".to_string(), ip(HOSTS[1])),
            ("127.0.0.16/30".to_string(), ip(HOSTS[2])),
        ]
    );
    running.stop().await;
}

#[tokio::test]
async fn a_client_is_rescheduled_when_its_host_is_removed_or_unhealthy() {
    let (p80, _r80) = backends(&HOSTS).await;
    let (p443, _r443) = backends(&HOSTS).await;
    let running = start(&two_ports(p80, p443, &HOSTS, "255.255.255.255")).await;
    let http = running.local_addr("http").await.unwrap();
    assert_eq!(backend_for("127.0.0.10", http).await.ip(), ip(HOSTS[0]));
    assert_eq!(backend_for("127.0.0.11", http).await.ip(), ip(HOSTS[1]));
    assert_eq!(backend_for("127.0.0.12", http).await.ip(), ip(HOSTS[2]));

    // Reload without the first host: its client moves, the others stay.
    let fewer = two_ports(p80, p443, &HOSTS[1..], "255.255.255.255");
    running
        .apply(balance_support::config(&fewer))
        .await
        .unwrap();
    let table = running
        .snapshot()
        .persistence
        .get("sticky")
        .unwrap()
        .clone();
    assert_eq!(table.lookup(ip("127.0.0.10")), None);
    assert_eq!(backend_for("127.0.0.11", http).await.ip(), ip(HOSTS[1]));
    assert_eq!(backend_for("127.0.0.12", http).await.ip(), ip(HOSTS[2]));
    // The rebuilt pool's rr starts at its first backend.
    assert_eq!(backend_for("127.0.0.10", http).await.ip(), ip(HOSTS[1]));

    // A host marked unhealthy loses its clients to the scheduler.
    let snap = running.snapshot();
    let pool = snap.pools.get("web80").unwrap();
    pool.backends[0]
        .state
        .healthy
        .store(false, Ordering::Relaxed);
    assert_eq!(backend_for("127.0.0.11", http).await.ip(), ip(HOSTS[2]));
    assert_eq!(backend_for("127.0.0.10", http).await.ip(), ip(HOSTS[2]));
    running.stop().await;
}

/// HTTP backends on `hosts` (one port) answering every request with the
/// address they were reached on, one request per connection.
async fn http_backends(hosts: &[&str]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    'retry: for _ in 0..20 {
        let first = tokio::net::TcpListener::bind((hosts[0], 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for h in &hosts[1..] {
            match tokio::net::TcpListener::bind((*h, port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'retry,
            }
        }
        for l in listeners {
            tokio::spawn(async move {
                let me = l.local_addr().unwrap();
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = me.to_string();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(resp.as_bytes()).await;
                    });
                }
            });
        }
        return port;
    }
    panic!("no common free port for {hosts:?}");
}

/// One HTTP/1.1 GET from `from` through `to`; the response body.
async fn http_get(from: &str, to: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = balance_support::connect_from(from, to).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[tokio::test]
async fn an_http_listener_shares_the_group_with_a_tcp_listener() {
    let (p_tcp, _r) = backends(&HOSTS).await;
    let p_http = http_backends(&HOSTS).await;
    let list = |port: u16| {
        HOSTS
            .iter()
            .map(|h| format!("{{ address = \"{h}:{port}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        r#"
[[listener]]
name = "raw"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "raw"
persistence = "sticky"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
persistence = "sticky"

[[pool]]
name = "raw"
scheduler = "rr"
backends = [{}]

[[pool]]
name = "web"
scheduler = "rr"
backends = [{}]

[[vhost]]
name = "app"
hosts = ["app.test"]
pool = "web"

[[persistence]]
name = "sticky"
"#,
        list(p_tcp),
        list(p_http)
    );
    let running = start(&text).await;
    let raw = running.local_addr("raw").await.unwrap();
    let web = running.local_addr("web").await.unwrap();
    // Move the http pool's rr off its first host.
    assert_eq!(
        http_get("127.0.0.99", web).await,
        format!("127.0.0.2:{p_http}")
    );
    for c in 10..16 {
        let client = format!("127.0.0.{c}");
        let host = backend_for(&client, raw).await.ip();
        assert_eq!(http_get(&client, web).await, format!("{host}:{p_http}"));
    }
    running.stop().await;
}
