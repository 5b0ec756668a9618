//! HTTP proxy routing and header handling, through real clients and
//! backends over loopback.

mod http_support;

use std::net::SocketAddr;

use http_support::*;

/// Two pools (`a`, `b`) and vhosts: `www.a.test` -> a (with `/b/` routed to
/// b), `*.b.test` -> b, `plain.test` redirects to https, `default` -> a.
fn config(a: SocketAddr, b: SocketAddr, listener_extra: &str, pool_extra: &str) -> String {
    let listener = format!("default_vhost = \"fallback\"\n{listener_extra}");
    [
        http_listener(&listener),
        pool_section("a", &[a], pool_extra),
        pool_section("b", &[b], pool_extra),
        VHOSTS.to_string(),
    ]
    .join("\n")
}

const VHOSTS: &str = r#"[[vhost]]
name = "www"
hosts = ["www.a.test"]
pool = "a"
routes = [{ path_prefix = "/b/", pool = "b" }]

[[vhost]]
name = "wild"
hosts = ["*.b.test"]
pool = "b"

[[vhost]]
name = "secure"
hosts = ["plain.test"]
redirect_https = true

[[vhost]]
name = "fallback"
hosts = ["fallback.test"]
pool = "a"
"#;

async fn setup(listener_extra: &str, pool_extra: &str) -> (Backend, Backend, SocketAddr) {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (running, proxy) = start_web(&config(a.addr, b.addr, listener_extra, pool_extra)).await;
    // The proxy keeps running for the test's lifetime.
    std::mem::forget(running);
    (a, b, proxy)
}

fn backend(h: &hyper::HeaderMap) -> &str {
    h.get("x-backend").unwrap().to_str().unwrap()
}

#[tokio::test]
async fn two_vhosts_route_to_their_pools_by_host_and_path() {
    let (_a, _b, proxy) = setup("", "").await;
    let c = h1_client();
    let (status, h, body) = send(&c, get(proxy, "www.a.test", "/x")).await;
    assert_eq!(status, 200);
    assert_eq!(backend(&h), "a");
    assert!(body.starts_with("GET /x HTTP/1.1\n"), "{body}");
    let (_, h, _) = send(&c, get(proxy, "WWW.A.TEST:80", "/b/y")).await;
    assert_eq!(backend(&h), "b");
    let (_, h, _) = send(&c, get(proxy, "api.b.test", "/")).await;
    assert_eq!(backend(&h), "b");
}

#[tokio::test]
async fn wildcard_matches_one_label_and_unknown_hosts_use_the_default_vhost() {
    let (_a, _b, proxy) = setup("", "").await;
    let c = h1_client();
    let (_, h, _) = send(&c, get(proxy, "x.b.test", "/")).await;
    assert_eq!(backend(&h), "b");
    // Two labels below the wildcard: not matched, so the default (pool a).
    let (_, h, _) = send(&c, get(proxy, "x.y.b.test", "/")).await;
    assert_eq!(backend(&h), "a");
    let (_, h, _) = send(&c, get(proxy, "unknown.test", "/")).await;
    assert_eq!(backend(&h), "a");
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_with_host_and_path() {
    let (a, _b, proxy) = setup("", "").await;
    let c = h1_client();
    let (status, h, body) = send(&c, get(proxy, "plain.test:8080", "/p/q?r=1")).await;
    assert_eq!(status, 308);
    assert_eq!(h.get("location").unwrap(), "https://plain.test/p/q?r=1");
    assert_eq!(body, "");
    assert!(h.get("strict-transport-security").is_none());
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn untrusted_clients_get_their_forwarding_headers_replaced() {
    let (_a, _b, proxy) = setup("", "").await;
    let mut req = get(proxy, "www.a.test", "/");
    let h = req.headers_mut();
    h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    h.insert("x-forwarded-host", "evil.test".parse().unwrap());
    h.insert("forwarded", "for=203.0.113.9".parse().unwrap());
    let (_, _, body) = send(&h1_client(), req).await;
    assert_eq!(echoed_values(&body, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed_values(&body, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed_values(&body, "x-forwarded-host"), ["www.a.test"]);
    assert_eq!(echoed_values(&body, "forwarded"), Vec::<String>::new());
    assert_eq!(echoed_values(&body, "via"), Vec::<String>::new());
}

#[tokio::test]
async fn trusted_proxies_have_their_forwarding_headers_appended_to() {
    let extra = "trusted_proxies = [\"127.0.0.0/8\"]\nforwarded = true\nvia = true";
    let (_a, _b, proxy) = setup(extra, "").await;
    let mut req = get(proxy, "www.a.test", "/");
    let h = req.headers_mut();
    h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    h.insert("forwarded", "for=203.0.113.9;proto=https".parse().unwrap());
    let (_, resp_headers, body) = send(&h1_client(), req).await;
    assert_eq!(
        echoed_values(&body, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(echoed_values(&body, "x-forwarded-proto"), ["https"]);
    assert_eq!(echoed_values(&body, "x-forwarded-host"), ["www.a.test"]);
    assert_eq!(
        echoed_values(&body, "forwarded"),
        ["for=203.0.113.9;proto=https, for=127.0.0.1;host=\"www.a.test\";proto=http"]
    );
    assert_eq!(echoed_values(&body, "via"), ["1.1 vipd"]);
    assert_eq!(resp_headers.get("via").unwrap(), "1.1 vipd");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let (_a, _b, proxy) = setup("", "").await;
    let mut req = get(proxy, "www.a.test", "/hop");
    let h = req.headers_mut();
    h.insert("connection", "x-client-private".parse().unwrap());
    h.insert("x-client-private", "1".parse().unwrap());
    h.insert("proxy-authorization", "Basic Zm9v".parse().unwrap());
    h.insert("te", "gzip".parse().unwrap());
    h.insert("x-end-to-end", "kept".parse().unwrap());
    let (_, resp, body) = send(&h1_client(), req).await;
    let names: Vec<String> = echoed(&body).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "host",
            "x-end-to-end",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "body-bytes"
        ]
    );
    assert!(resp.get("x-backend-private").is_none());
    assert!(resp.get("keep-alive").is_none());
    assert!(resp.get("proxy-authenticate").is_none());
    assert_eq!(backend(&resp), "a");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (a, _b, proxy) = setup("", "").await;
    // Ten requests on ten separate client connections, one at a time.
    for _ in 0..10 {
        let (status, _, _) = send(&h1_client(), get(proxy, "www.a.test", "/")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(a.requests(), 10);
    assert_eq!(a.connections(), 1);
}

#[tokio::test]
async fn idle_upstream_connections_are_not_reused_after_the_pool_idle_timeout() {
    let (a, _b, proxy) = setup("", "idle_timeout = \"300ms\"").await;
    let c = h1_client();
    for _ in 0..2 {
        assert_eq!(send(&c, get(proxy, "www.a.test", "/")).await.0, 200);
    }
    assert_eq!(a.connections(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(send(&c, get(proxy, "www.a.test", "/")).await.0, 200);
    assert_eq!(a.requests(), 3);
    assert_eq!(a.connections(), 2, "an expired idle connection was reused");
}

#[tokio::test]
async fn http2_clients_are_routed_by_authority_and_forwarded_over_http1() {
    let (a, b, proxy) = setup("", "").await;
    let (status, h, body) = h2_get(proxy, "http://www.a.test/b/h2").await;
    assert_eq!(status, 200);
    assert_eq!(backend(&h), "b");
    assert!(body.starts_with("GET /b/h2 HTTP/1.1\n"), "{body}");
    assert_eq!(echoed_values(&body, "host"), ["www.a.test"]);
    let (_, h, _) = h2_get(proxy, "http://www.a.test/x").await;
    assert_eq!(backend(&h), "a");
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

#[tokio::test]
async fn pools_with_http2_reach_backends_over_one_h2_connection() {
    let (a, _b, proxy) = setup("", "http2 = true").await;
    let c = h1_client();
    for _ in 0..3 {
        let (status, h, body) = send(&c, get(proxy, "www.a.test", "/up")).await;
        assert_eq!(status, 200);
        assert_eq!(backend(&h), "a");
        assert!(body.starts_with("GET "), "{body}");
        assert!(body.lines().next().unwrap().ends_with("HTTP/2.0"), "{body}");
    }
    assert_eq!(a.connections(), 1);
}
