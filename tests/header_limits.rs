//! Request-head limits of HTTP listeners (`max_header_bytes`, `max_headers`):
//! over either, the client gets 431 and the backend never sees the request;
//! at the limits, requests pass. HTTP/1.1 and HTTP/2, over loopback.

mod http_support;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use http_support::*;
use hyper::Request;

/// The head limit of the test listener, in bytes.
const LIMIT: usize = 16 * 1024;
/// The header field limit of the test listener.
const FIELDS: usize = 20;

fn config(backend: SocketAddr) -> String {
    let limits = format!("max_header_bytes = {LIMIT}\nmax_headers = {FIELDS}");
    site_config(&[backend], &limits, "")
}

async fn proxy_for(backend: SocketAddr) -> SocketAddr {
    let (running, addr) = start_web(&config(backend)).await;
    std::mem::forget(running);
    addr
}

/// An HTTP/1.1 request head of exactly `len` bytes with `fields` header
/// fields (Host and Connection included), padded in the last field.
fn head(len: usize, fields: usize) -> Vec<u8> {
    assert!(fields >= 3);
    let mut h = String::from("GET /x HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n");
    for i in 0..fields - 3 {
        h.push_str(&format!("x-f{i}: v\r\n"));
    }
    let fixed = h.len() + "x-pad: \r\n\r\n".len();
    assert!(
        len >= fixed,
        "a head of {len} bytes cannot hold {fields} fields"
    );
    h.push_str(&format!("x-pad: {}\r\n\r\n", "p".repeat(len - fixed)));
    assert_eq!(h.len(), len);
    h.into_bytes()
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_head_at_both_limits_reaches_the_backend() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr).await;
    let reply = raw(proxy, &head(LIMIT, FIELDS), WAIT).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply:.200}");
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_and_never_reaches_the_backend() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr).await;
    let reply = raw(proxy, &head(LIMIT * 3 / 2, 3), WAIT).await;
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{reply:.200}"
    );
    assert_eq!((b.connections(), b.requests()), (0, 0));
}

#[tokio::test]
async fn more_header_fields_than_max_headers_get_431_and_never_reach_the_backend() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr).await;
    // Small in bytes, one field too many: hyper's parser refuses it as too
    // large, so the answer is 431 (not 400).
    let reply = raw(proxy, &head(1024, FIELDS + 1), WAIT).await;
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{reply:.200}"
    );
    assert_eq!((b.connections(), b.requests()), (0, 0));
}

#[tokio::test]
async fn the_default_limits_are_64_kib_and_100_fields() {
    let b = Backend::start("b").await;
    let text = config(b.addr)
        .replace(&format!("max_header_bytes = {LIMIT}\n"), "")
        .replace(&format!("max_headers = {FIELDS}\n"), "");
    let (_running, proxy) = start_web(&text).await;
    // 97 fields: vipd drops Connection and adds three X-Forwarded-*, which
    // keeps the backend (hyper, also 100 at most) under its own limit.
    let under = raw(proxy, &head(60 * 1024, 97), WAIT).await;
    assert!(under.starts_with("HTTP/1.1 200 OK"), "{under:.200}");
    let long = raw(proxy, &head(100 * 1024, 3), WAIT).await;
    assert!(long.starts_with("HTTP/1.1 431"), "{long:.200}");
    let many = raw(proxy, &head(4096, 101), WAIT).await;
    assert!(many.starts_with("HTTP/1.1 431"), "{many:.200}");
    assert_eq!(b.requests(), 1);
}

/// Send `req` over a fresh HTTP/2 prior-knowledge connection: the status,
/// or the stream error.
async fn h2_send(proxy: SocketAddr, req: Request<Full<Bytes>>) -> Result<u16, hyper::Error> {
    let resp = h2_connect(proxy).await.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

fn h2_request(fields: &[(String, String)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .uri("http://site.test/x")
        .version(hyper::Version::HTTP_2);
    for (k, v) in fields {
        req = req.header(k, v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn an_http2_header_list_over_the_limit_gets_431_and_never_reaches_the_backend() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr).await;
    let big = vec![("x-pad".to_string(), "p".repeat(LIMIT))];
    // h2 answers 431 on the stream itself (then resets it), before hyper
    // hands the request to vipd.
    let status = h2_send(proxy, h2_request(&big)).await;
    assert_eq!(status.ok(), Some(431));
    // The connection's other streams are unaffected.
    let small = vec![("x-pad".to_string(), "p".repeat(LIMIT / 2))];
    assert_eq!(h2_send(proxy, h2_request(&small)).await.ok(), Some(200));
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn http2_requests_with_more_fields_than_max_headers_get_431_from_vipd() {
    let b = Backend::start("b").await;
    let proxy = proxy_for(b.addr).await;
    let fields = |n: usize| -> Vec<(String, String)> {
        (0..n).map(|i| (format!("x-f{i}"), "v".into())).collect()
    };
    // HTTP/2 has no field count of its own: the request path counts them
    // (pseudo-headers excluded).
    assert_eq!(
        h2_send(proxy, h2_request(&fields(FIELDS + 1))).await.ok(),
        Some(431)
    );
    assert_eq!(b.requests(), 0);
    assert_eq!(
        h2_send(proxy, h2_request(&fields(FIELDS))).await.ok(),
        Some(200)
    );
    assert_eq!(b.requests(), 1);
}

fn problems(listener_extra: &str, protocol: &str) -> Vec<String> {
    let pool = if protocol == "tcp" {
        "pool = \"p\""
    } else {
        ""
    };
    let backend = "127.0.0.1:1".parse().unwrap();
    let text = site_config(&[backend], &format!("{pool}\n{listener_extra}"), "")
        .replace("protocol = \"http\"", &format!("protocol = \"{protocol}\""));
    support::problems(&text)
}

#[test]
fn header_limits_outside_their_range_are_refused_with_the_bounds() {
    assert_eq!(
        problems("max_header_bytes = 4096\nmax_headers = 0", "http"),
        vec![
            "7:1: listener \"web\".max_header_bytes: 4096 is outside 8192..=1048576 bytes\n    fix: set `max_header_bytes` between 8192 and 1048576 (default 65536)",
            "8:1: listener \"web\".max_headers: 0 is outside 1..=1000 header fields\n    fix: set `max_headers` between 1 and 1000 (default 100)",
        ]
    );
    assert_eq!(
        problems("max_header_bytes = 8192\nmax_headers = 1000", "http"),
        Vec::<String>::new()
    );
}

#[test]
fn header_limits_on_a_tcp_listener_are_refused() {
    assert_eq!(
        problems("max_headers = 50", "tcp"),
        vec![
            "7:1: listener \"web\".max_headers: `max_headers` limits HTTP requests, and this listener does not speak HTTP\n    fix: remove it, or use protocol \"http\" or \"https\"",
        ]
    );
}
