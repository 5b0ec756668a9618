//! The admin endpoint is closed by default, over real sockets: `vipd check`
//! refuses it off loopback without a token, requests addressed to another
//! host or sent from another web origin get 403 (DNS rebinding, CSRF), and
//! idle or slow connections are bounded by a header timeout, a request
//! deadline and a connection cap.

mod health_support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use health_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use vipd::app::Running;

fn config_text(backend: &TestBackend, admin_extra: &str) -> String {
    admin_config(admin_extra, &tcp_site("127.0.0.1:0", &[backend], ""))
}

async fn start(backend: &TestBackend, admin_extra: &str) -> (std::sync::Arc<Running>, SocketAddr) {
    let running = Running::start(config(&config_text(backend, admin_extra)))
        .await
        .unwrap();
    let admin = running.admin_addr().await.unwrap();
    (running, admin)
}

/// One request to the admin endpoint with the given header lines (Host
/// included by the caller): `(status, body)`.
async fn exchange(admin: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    admin_request(admin, method, path, headers, "").await
}

fn error_text(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"].as_str().unwrap().to_string()
}

/// Read until EOF (or a reset) for up to `limit`; None if still open.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

/// `vipd check -c file`: its exit code and what it printed on stderr.
fn vipd_check(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "-c"])
        .arg(file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

/// Connect to `admin` and write `request`; the answer is not yet read.
async fn send_raw(admin: SocketAddr, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    s
}

#[test]
fn vipd_check_refuses_a_wildcard_or_non_loopback_admin_listen_without_a_token_file() {
    let dir = std::env::temp_dir().join(format!("vipd-admin-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (listen, what) in [
        ("0.0.0.0:9100", "0.0.0.0 is a wildcard address"),
        ("[::]:9100", ":: is a wildcard address"),
        ("192.0.2.7:9100", "192.0.2.7 is not a loopback address"),
    ] {
        let file = dir.join("admin.toml");
        std::fs::write(
            &file,
            format!(
                "[admin]\nlisten = \"{listen}\"\n\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\n\
                 protocol = \"tcp\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
            ),
        )
        .unwrap();
        let (code, stderr) = vipd_check(&file);
        let path = file.display();
        assert_eq!(code, Some(64), "{listen}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{path}: 1 configuration error\n\
                 {path}:2:1: admin.listen: {what} and no token_file is set: anyone who reaches it could drain backends and reload\n    \
                 fix: set `token_file` to a file holding a bearer token, or listen on 127.0.0.1 or [::1]"
            )),
            "{listen}: {stderr}"
        );

        // With a token file the same address is accepted.
        let text = std::fs::read_to_string(&file).unwrap().replace(
            &format!("listen = \"{listen}\"\n"),
            &format!("listen = \"{listen}\"\ntoken_file = \"/etc/vipd/admin.token\"\n"),
        );
        std::fs::write(&file, text).unwrap();
        let (code, stderr) = vipd_check(&file);
        assert_eq!(code, Some(0), "{listen} with a token: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_cross_origin_post_drain_is_refused_with_403_and_the_backend_stays_undrained() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "").await;
    let drain = format!("/api/pools/p/backends/{}/drain", a.addr);

    let evil = format!("Host: {admin}\r\nOrigin: http://evil.example\r\n");
    let (status, body) = exchange(admin, "POST", &drain, &evil).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        error_text(&body),
        "cross-origin requests are refused (Origin \"http://evil.example\")"
    );
    assert_eq!(backend(&running, "p", a.addr).weight(), 1);

    // A page of another local service is another origin too.
    let other_port = format!("Host: {admin}\r\nOrigin: http://127.0.0.1:1\r\n");
    let (status, _) = exchange(admin, "POST", &drain, &other_port).await;
    assert_eq!(status, 403);
    // Origin is checked on reads as well: a cross-origin fetch learns nothing.
    let (status, _) = exchange(admin, "GET", "/api/pools", &evil).await;
    assert_eq!(status, 403);
    assert_eq!(backend(&running, "p", a.addr).weight(), 1);

    // The admin's own origin (its status page) may drain.
    let own = format!("Host: {admin}\r\nOrigin: http://{admin}\r\n");
    let (status, body) = exchange(admin, "POST", &drain, &own).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(backend(&running, "p", a.addr).weight(), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_second_origin_header_naming_another_site_is_refused_with_403() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "").await;
    let drain = format!("/api/pools/p/backends/{}/drain", a.addr);
    let two = format!("Host: {admin}\r\nOrigin: http://{admin}\r\nOrigin: http://evil.example\r\n");
    let (status, body) = exchange(admin, "POST", &drain, &two).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        error_text(&body),
        "cross-origin requests are refused (Origin \"http://evil.example\")"
    );
    assert_eq!(backend(&running, "p", a.addr).weight(), 1);
    running.stop().await;
}

#[tokio::test]
async fn an_absolute_form_target_naming_another_host_is_refused_with_403() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "").await;
    let drain = format!("http://evil.example/api/pools/p/backends/{}/drain", a.addr);
    let host = format!("Host: {admin}\r\n");
    let (status, body) = exchange(admin, "POST", &drain, &host).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        error_text(&body),
        "the request target must name this admin endpoint (evil.example); add other names to admin.hosts"
    );
    assert_eq!(backend(&running, "p", a.addr).weight(), 1);
    // Its own address in the target is served.
    let own = format!("http://{admin}/api/status");
    assert_eq!(exchange(admin, "GET", &own, &host).await.0, 200);
    running.stop().await;
}

#[tokio::test]
async fn a_request_whose_host_is_not_the_admin_address_is_refused_with_403_even_for_get() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "hosts = [\"lb1.mgmt.example\"]").await;
    let expected = "the Host header must name this admin endpoint (evil.example); add other names to admin.hosts";
    for (method, path) in [
        ("GET", "/metrics".to_string()),
        ("GET", "/".to_string()),
        ("POST", format!("/api/pools/p/backends/{}/drain", a.addr)),
    ] {
        let (status, body) = exchange(admin, method, &path, "Host: evil.example\r\n").await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(error_text(&body), expected);
    }
    // A rebound name carrying the admin's own port is no better.
    let rebound = format!("Host: evil.example:{}\r\n", admin.port());
    assert_eq!(exchange(admin, "GET", "/metrics", &rebound).await.0, 403);
    assert_eq!(exchange(admin, "GET", "/metrics", "").await.0, 403);
    assert_eq!(backend(&running, "p", a.addr).weight(), 1);

    // Its own address, localhost and the configured name are served.
    for host in [
        admin.to_string(),
        format!("localhost:{}", admin.port()),
        "LB1.mgmt.example:19100".to_string(),
    ] {
        let (status, body) =
            exchange(admin, "GET", "/api/status", &format!("Host: {host}\r\n")).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    running.stop().await;
}

#[tokio::test]
async fn an_ipv4_mapped_admin_hosts_entry_matches_the_host_in_either_spelling() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "hosts = [\"::ffff:192.0.2.5\"]").await;
    for host in ["192.0.2.5", "[::ffff:192.0.2.5]:9100"] {
        let (status, body) =
            exchange(admin, "GET", "/api/status", &format!("Host: {host}\r\n")).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    assert_eq!(
        exchange(admin, "GET", "/api/status", "Host: 192.0.2.6\r\n")
            .await
            .0,
        403
    );
    running.stop().await;
}

#[tokio::test]
async fn a_hundred_idle_admin_connections_are_closed_at_header_timeout_and_a_legit_request_is_served()
 {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "header_timeout = \"500ms\"").await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }

    // 64 are served at once and the rest wait; the legit request is served
    // once the first idle ones time out, within a few header timeouts.
    let (status, _) = exchange(admin, "GET", "/api/status", &format!("Host: {admin}\r\n")).await;
    assert_eq!(status, 200);
    let served = opened.elapsed();
    assert!(served < Duration::from_secs(4), "{served:?}");

    for (i, s) in idle.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
        let got = closed_within(s, left).await;
        assert_eq!(got, Some(Vec::new()), "idle connection {i} still open");
    }
    let all_closed = opened.elapsed();
    assert!(all_closed >= Duration::from_millis(450), "{all_closed:?}");
    running.stop().await;
}

#[tokio::test]
async fn connections_beyond_admin_max_connections_wait_until_a_slot_frees() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "max_connections = 2\nheader_timeout = \"10s\"").await;
    let first = TcpStream::connect(admin).await.unwrap();
    let _second = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET /api/status HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    let mut third = send_raw(admin, &req).await;
    assert_eq!(
        closed_within(&mut third, Duration::from_millis(800)).await,
        None,
        "the third connection must wait while two are held"
    );
    drop(first);
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), third.read_to_end(&mut out))
        .await
        .expect("served once a slot freed")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    running.stop().await;
}

#[tokio::test]
async fn an_admin_connection_serves_one_request_and_closes() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "").await;
    let req = format!("GET /api/status HTTP/1.1\r\nHost: {admin}\r\n\r\n");
    let mut s = send_raw(admin, &req).await;
    let got = closed_within(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(got.as_deref().expect("closed after the answer"));
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    running.stop().await;
}

#[tokio::test]
async fn an_admin_request_whose_body_never_arrives_is_closed_at_request_timeout() {
    let a = TestBackend::start("a").await;
    let (running, admin) = start(&a, "request_timeout = \"700ms\"").await;
    let mut s = TcpStream::connect(admin).await.unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /api/pools/p/backends/{}/weight HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 20\r\n\r\n{{\"wei",
        a.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = closed_within(&mut s, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(got, Some(Vec::new()), "closed without an answer");
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(backend(&running, "p", a.addr).weight(), 1);
    running.stop().await;
}

#[test]
fn admin_limits_outside_their_ranges_are_refused() {
    let text = "[admin]\nlisten = \"127.0.0.1:9100\"\nmax_connections = 0\nheader_timeout = \"0s\"\nhosts = [\"evil/x\"]\n";
    let err = vipd::config::parse(text, std::path::Path::new("a.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a.toml: 3 configuration errors\n\
         a.toml:3:1: admin.max_connections: 0 is outside 1..=4096 connections\n    \
         fix: set `max_connections` between 1 and 4096 (default 64)\n\
         a.toml:4:1: admin.header_timeout: \"0s\" is outside 100ms..=10m\n    \
         fix: set `header_timeout` between \"100ms\" and \"10m\" (default \"10s\")\n\
         a.toml:5:1: admin.hosts: \"evil/x\" is not a host name or IP address\n    \
         fix: write names without scheme or port, as clients put them in Host: \"lb1.mgmt.example\", \"10.0.0.5\""
    );
}
