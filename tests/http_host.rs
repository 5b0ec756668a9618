//! One host per request, over real sockets: the authority a request is
//! routed by is the one its backend receives as its only Host; requests
//! naming two hosts, a malformed host or an authority-form target are 400;
//! forwarding headers cannot be forged or injected through the Host.

mod http_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};

use http_support::*;

const WAIT: Duration = Duration::from_secs(3);

/// Pools `a` and `b` behind vhosts `a.test` and `b.test`, and a default
/// vhost (pool a), so an unknown or odd host would still find a backend.
fn config(a: SocketAddr, b: SocketAddr, listener_extra: &str) -> String {
    let listener =
        format!("default_vhost = \"fallback\"\nheader_timeout = \"2s\"\n{listener_extra}");
    [
        http_listener(&listener),
        pool_section("a", &[a], ""),
        pool_section("b", &[b], ""),
        vhost_section("site-a", "a.test", "a"),
        vhost_section("site-b", "b.test", "b"),
        vhost_section("fallback", "fallback.test", "a"),
    ]
    .join("\n")
}

async fn setup(listener_extra: &str) -> (Backend, Backend, SocketAddr) {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (running, proxy) = start_web(&config(a.addr, b.addr, listener_extra)).await;
    // The proxy keeps running for the test's lifetime.
    std::mem::forget(running);
    (a, b, proxy)
}

/// Send one raw request head and return the whole answer.
async fn ask(proxy: SocketAddr, head: &str) -> String {
    raw(proxy, head.as_bytes(), WAIT).await
}

/// Assert that `answer` is a 400 whose body gives `reason`.
#[track_caller]
fn assert_400(answer: &str, reason: &str) {
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert_eq!(body_of(answer), format!("400 Bad Request: {reason}\n"));
}

#[tokio::test]
async fn an_absolute_form_target_and_a_host_naming_another_site_are_a_400() {
    let (a, b, proxy) = setup("").await;
    let answer = ask(
        proxy,
        "GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_400(&answer, "the Host header does not match the request target");
    assert_eq!((a.requests(), b.requests()), (0, 0));
}

#[tokio::test]
async fn an_agreeing_absolute_form_request_reaches_its_site_with_one_host() {
    let (a, b, proxy) = setup("").await;
    // Case, a final dot and the default port do not make hosts differ.
    let answer = ask(
        proxy,
        "GET http://A.test/x HTTP/1.1\r\nHost: a.test.:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = body_of(&answer);
    assert!(body.starts_with("GET /x HTTP/1.1\n"), "{body}");
    assert_eq!(echoed_values(body, "host"), ["A.test"]);
    assert_eq!(echoed_values(body, "x-forwarded-host"), ["A.test"]);
    assert_eq!((a.requests(), b.requests()), (1, 0));
}

#[tokio::test]
async fn two_host_headers_are_a_400_even_when_they_agree() {
    let (a, b, proxy) = setup("").await;
    for second in ["b.test", "a.test"] {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: {second}\r\nConnection: close\r\n\r\n"
        );
        let answer = ask(proxy, &head).await;
        assert_400(&answer, "more than one Host header");
    }
    assert_eq!((a.requests(), b.requests()), (0, 0));
}

#[tokio::test]
async fn a_malformed_host_is_a_400_even_with_a_default_vhost() {
    let (a, b, proxy) = setup("").await;
    for host in [
        "a.test/x",
        "a.test, b.test",
        "a.test\"",
        "user@a.test",
        "a test",
        "a.test:http",
        "",
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = ask(proxy, &head).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{host:?}: {answer}"
        );
        assert_eq!(
            body_of(&answer),
            "400 Bad Request: invalid Host header\n",
            "{host:?}"
        );
    }
    assert_eq!((a.requests(), b.requests()), (0, 0));
}

#[tokio::test]
async fn a_missing_host_is_a_400_on_http_1_1_and_the_default_vhost_on_http_1_0() {
    let (a, b, proxy) = setup("").await;
    let answer = ask(proxy, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_400(&answer, "missing Host header");
    // RFC 9112 wants Host on HTTP/1.1 even beside an absolute-form target.
    let answer = ask(
        proxy,
        "GET http://a.test/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(body_of(&answer), "400 Bad Request: missing Host header\n");
    assert_eq!(a.requests(), 0);
    // HTTP/1.0 predates Host: the default vhost serves it, and its backend
    // gets the vhost's first name as Host.
    let answer = ask(proxy, "GET /old HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert_eq!(echoed_values(body_of(&answer), "host"), ["fallback.test"]);
    assert_eq!((a.requests(), b.requests()), (1, 0));
}

#[tokio::test]
async fn an_authority_form_target_outside_connect_is_a_400() {
    let (a, b, proxy) = setup("").await;
    let answer = ask(
        proxy,
        "GET a.test:80 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_400(&answer, "authority-form request target outside CONNECT");
    assert_eq!((a.requests(), b.requests()), (0, 0));
}

#[tokio::test]
async fn an_http2_authority_and_a_host_header_naming_another_site_are_a_400() {
    let (a, b, proxy) = setup("").await;
    let (status, _, body) = h2_get_with_host(proxy, "http://a.test/", Some("b.test")).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "400 Bad Request: the Host header does not match the request target\n"
    );
    assert_eq!((a.requests(), b.requests()), (0, 0));
    // Agreeing, the backend gets exactly the one Host.
    let (status, _, body) = h2_get_with_host(proxy, "http://a.test/", Some("A.TEST")).await;
    assert_eq!(status, 200);
    assert_eq!(echoed_values(&body, "host"), ["a.test"]);
    assert_eq!((a.requests(), b.requests()), (1, 0));
}

#[tokio::test]
async fn a_host_carrying_a_quote_cannot_add_a_forwarded_element() {
    let (a, _b, proxy) = setup("forwarded = true").await;
    let answer = ask(
        proxy,
        "GET / HTTP/1.1\r\nHost: a.test\", for=6.6.6.6\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert_eq!(a.requests(), 0);
    // What a backend does receive: one element, vipd's own.
    let answer = ask(
        proxy,
        "GET / HTTP/1.1\r\nHost: a.test:8080\r\nForwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        echoed_values(body_of(&answer), "forwarded"),
        ["for=127.0.0.1;host=\"a.test:8080\";proto=http"]
    );
}

#[tokio::test]
async fn untrusted_clients_lose_their_x_real_ip_true_client_ip_and_x_forwarded_port() {
    let (_a, _b, proxy) = setup("").await;
    let head = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Forwarded-Port: 8443\r\nConnection: close\r\n\r\n";
    let answer = ask(proxy, head).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = body_of(&answer);
    for name in ["x-real-ip", "true-client-ip", "x-forwarded-port"] {
        assert_eq!(echoed_values(body, name), Vec::<String>::new(), "{name}");
    }
    assert_eq!(echoed_values(body, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn x_real_ip_is_set_to_the_client_when_asked_and_kept_from_trusted_proxies() {
    let (_a, _b, proxy) = setup("x_real_ip = true").await;
    let head = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n";
    let answer = ask(proxy, head).await;
    assert_eq!(echoed_values(body_of(&answer), "x-real-ip"), ["127.0.0.1"]);

    let (_a, _b, proxy) = setup("x_real_ip = true\ntrusted_proxies = [\"127.0.0.0/8\"]").await;
    let head = "GET / HTTP/1.1\r\nHost: a.test\r\nX-Real-IP: 203.0.113.9\r\nTrue-Client-IP: 203.0.113.9\r\nConnection: close\r\n\r\n";
    let body = ask(proxy, head).await;
    let body = body_of(&body);
    assert_eq!(echoed_values(body, "x-real-ip"), ["203.0.113.9"]);
    assert_eq!(echoed_values(body, "true-client-ip"), ["203.0.113.9"]);
}

#[tokio::test]
async fn untrusted_clients_lose_every_x_forwarded_header_and_the_underscore_spellings_of_address_claims()
 {
    // Rack believes X-Forwarded-Ssl and X-Forwarded-Scheme, Spring and
    // Werkzeug X-Forwarded-Prefix, the npm request-ip X-Client-IP; CGI,
    // WSGI and Rack map `_` to `-`, so X_Forwarded_For is read as the
    // X-Forwarded-For header.
    let forged = "X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-Ssl: on\r\nX-Forwarded-Scheme: https\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Server: evil\r\nX_Real_IP: 6.6.6.6\r\nTrue_Client_IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\nX-Cluster-Client-IP: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n";
    let head = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{forged}Connection: close\r\n\r\n");
    let (_a, _b, proxy) = setup("").await;
    let answer = ask(proxy, &head).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let mut names: Vec<String> = echoed(body_of(&answer))
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name != "body-bytes")
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto"
        ]
    );
    assert_eq!(
        echoed_values(body_of(&answer), "x-forwarded-for"),
        ["127.0.0.1"]
    );
    // A trusted proxy keeps its X-Forwarded-* headers, but an underscore
    // spelling is never a proxy's own and goes even then.
    let (_a, _b, proxy) = setup("trusted_proxies = [\"127.0.0.0/8\"]").await;
    let body = ask(proxy, &head).await;
    let body = body_of(&body);
    assert_eq!(echoed_values(body, "x-forwarded-ssl"), ["on"]);
    assert_eq!(echoed_values(body, "x-client-ip"), ["6.6.6.6"]);
    for name in [
        "x_forwarded_for",
        "x_real_ip",
        "true_client_ip",
        "x_forwarded_proto",
    ] {
        assert_eq!(echoed_values(body, name), Vec::<String>::new(), "{name}");
    }
}

#[tokio::test]
async fn an_absolute_form_target_with_an_empty_path_reaches_the_backend_as_slash() {
    let (a, _b, proxy) = setup("").await;
    // `http://a.test#x` has an empty path (the fragment is dropped): the
    // backend must get `/`, never an empty request target.
    for target in ["http://a.test#x", "http://a.test#/y"] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let answer = ask(proxy, &head).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{target}: {answer}"
        );
        let body = body_of(&answer);
        assert!(body.starts_with("GET / HTTP/1.1\n"), "{target}: {body}");
    }
    assert_eq!(a.requests(), 2);
}

#[tokio::test]
async fn a_host_with_an_empty_label_is_a_400() {
    let (a, b, proxy) = setup("").await;
    for host in [".a.test", "a..test", "a.test..", "a.test..:80"] {
        let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = ask(proxy, &head).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{host}: {answer}"
        );
        assert_eq!(body_of(&answer), "400 Bad Request: invalid Host header\n");
    }
    assert_eq!((a.requests(), b.requests()), (0, 0));
}

#[tokio::test]
async fn an_http2_backend_gets_the_routed_host_as_its_authority_too() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let pool_a = format!("backends = [{{ address = \"{}\" }}]", a.addr);
    let text = config(a.addr, b.addr, "").replace(&pool_a, &format!("{pool_a}\nhttp2 = true"));
    let running = start_proxy(&text).await;
    let proxy = running.local_addr("web").await.unwrap();
    // Over HTTP/2 the backend reads the host from `:authority`: it must be
    // the routed one (RFC 9113 8.3.1), not the backend's own address
    // beside a Host naming the site.
    let answer = ask(
        proxy,
        "GET /x?y=1 HTTP/1.1\r\nHost: A.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = body_of(&answer);
    assert!(
        body.starts_with("GET http://A.test:8080/x?y=1 HTTP/2.0\n"),
        "{body}"
    );
    assert_eq!(echoed_values(body, "host"), ["A.test:8080"]);
    assert_eq!(a.requests(), 1);
    running.stop().await;
}

/// A request body of given frames (data, then trailers).
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn request_trailers_cannot_carry_a_host_or_forwarding_claims_to_an_http2_backend() {
    use hyper::body::Frame;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let pool_a = format!("backends = [{{ address = \"{}\" }}]", a.addr);
    let text = config(a.addr, b.addr, "").replace(&pool_a, &format!("{pool_a}\nhttp2 = true"));
    let (running, proxy) = start_web(&text).await;
    let mut trailers = hyper::HeaderMap::new();
    for (name, value) in [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x_forwarded_for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("host", "b.test"),
        ("x-checksum", "abc"),
    ] {
        trailers.insert(name, value.parse().unwrap());
    }
    let frames = Frames(
        [
            Frame::data(Bytes::from_static(b"hello")),
            Frame::trailers(trailers),
        ]
        .into(),
    );
    let (mut tx, _conn) = h2_handshake(proxy).await;
    let req = Request::builder()
        .method("POST")
        .uri("http://a.test/upload")
        .version(hyper::Version::HTTP_2)
        .body(frames)
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("body-bytes: 5\n"), "{body}");
    // The end-to-end trailer arrives; the claims and the routing field do not.
    assert_eq!(
        echoed_values(&body, "trailer"),
        ["x-checksum=abc"],
        "{body}"
    );
    assert_eq!(a.requests(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_refused_request_ends_its_connection_and_what_follows_is_never_served() {
    let (a, b, proxy) = setup("").await;
    let follow = "GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n";
    for (refused, status) in [
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
            "400 Bad Request",
        ),
        (
            "GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "400 Bad Request",
        ),
        (
            "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            "405 Method Not Allowed",
        ),
    ] {
        let started = tokio::time::Instant::now();
        let answer = ask(proxy, &format!("{refused}{follow}")).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{refused}: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{refused}: {answer}"
        );
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        // Closed by the proxy, not by the test's read limit.
        assert!(started.elapsed() < WAIT, "{refused}: not closed");
    }
    assert_eq!((a.requests(), b.requests()), (0, 0));
}

#[tokio::test]
async fn an_absolute_form_target_of_another_scheme_is_a_400() {
    let (a, b, proxy) = setup("").await;
    for target in ["ftp://a.test/x", "gopher://a.test/", "HTTPX://a.test/"] {
        let answer = ask(
            proxy,
            &format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{target}: {answer}"
        );
        assert_eq!(
            body_of(&answer),
            "400 Bad Request: request target scheme is not http or https\n"
        );
    }
    assert_eq!((a.requests(), b.requests()), (0, 0));
    // The scheme is case-insensitive (RFC 3986 3.1).
    let answer = ask(
        proxy,
        "GET HTTP://a.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn an_asterisk_form_target_outside_options_is_a_400() {
    let (a, b, proxy) = setup("").await;
    let answer = ask(
        proxy,
        "GET * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert_eq!(
        body_of(&answer),
        "400 Bad Request: asterisk-form request target outside OPTIONS\n"
    );
    assert_eq!((a.requests(), b.requests()), (0, 0));
    // OPTIONS * is what the form is for.
    let answer = ask(
        proxy,
        "OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        body_of(&answer).starts_with("OPTIONS * HTTP/1.1\n"),
        "{answer}"
    );
}
