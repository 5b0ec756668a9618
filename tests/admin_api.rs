//! The admin endpoint on a real loopback socket: draining through the API,
//! Prometheus exposition checked with a parser against the traffic sent,
//! bearer-token refusal, VIP isolation, and reload.

mod health_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use health_support::*;
use prometheus_parse::{LineInfo, Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vipd::app::Running;

fn config_text(bind: &str, backends: &[&TestBackend], admin_extra: &str) -> String {
    admin_config(admin_extra, &tcp_site(bind, backends, "scheduler = \"rr\""))
}

async fn admin(running: &Running) -> SocketAddr {
    running.admin_addr().await.expect("admin endpoint runs")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The backend entry `addr` of pool `p` in `GET /api/pools/p`.
async fn backend_view(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    let (status, body) = http(admin, "GET", "/api/pools/p", None, "").await;
    assert_eq!(status, 200, "{body}");
    json(&body)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn draining_keeps_an_open_connection_alive_while_new_ones_avoid_the_backend() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let running = Running::start(config(&config_text("127.0.0.1:0", &[&a, &b], "")))
        .await
        .unwrap();
    let proxy = running.local_addr("web").await.unwrap();
    let admin = admin(&running).await;

    // A connection to a is opened and left mid-request (rr picks a first).
    let mut held = TcpStream::connect(proxy).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let ad = a.addr;
    wait_for("the held connection reached a", || {
        backend(&running, "p", ad)
            .state
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;

    let path = format!("/api/pools/p/backends/{}/drain", a.addr);
    let (status, body) = http(admin, "POST", &path, None, "").await;
    assert_eq!(status, 200, "{body}");
    let view = json(&body);
    assert_eq!(view["status"], "drained");
    assert_eq!(view["weight"], 0);
    assert_eq!(view["configured_weight"], 1);
    assert_eq!(view["active_connections"], 1);

    let answers = requests(proxy, 10).await;
    assert_eq!(count(&answers, "b"), 10, "{answers:?}");
    assert_eq!(backend_view(admin, a.addr).await["active_connections"], 1);

    // The held connection still completes on the drained backend.
    held.write_all(b"Host: t\r\n\r\n").await.unwrap();
    let mut out = String::new();
    held.read_to_string(&mut out).await.unwrap();
    assert!(out.ends_with("\r\n\r\na"), "{out:?}");
    drop(held);
    for _ in 0..500 {
        if backend_view(admin, a.addr).await["active_connections"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend_view(admin, a.addr).await["active_connections"], 0);

    // Undrain: a is back in rotation at its configured weight.
    let path = format!("/api/pools/p/backends/{}/undrain", a.addr);
    let (status, body) = http(admin, "POST", &path, None, "").await;
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("up")));
    let answers = requests(proxy, 10).await;
    assert_eq!((count(&answers, "a"), count(&answers, "b")), (5, 5));
    running.stop().await;
}

#[tokio::test]
async fn a_weight_set_through_the_api_reshapes_wrr_at_once() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = config_text("127.0.0.1:0", &[&a, &b], "").replace("\"rr\"", "\"wrr\"");
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();
    let admin = admin(&running).await;
    let answers = requests(proxy, 8).await;
    assert_eq!((count(&answers, "a"), count(&answers, "b")), (4, 4));

    let path = format!("/api/pools/p/backends/{}/weight", a.addr);
    let (status, body) = http(admin, "POST", &path, None, r#"{"weight": 3}"#).await;
    assert_eq!(status, 200, "{body}");
    // wrr with weights {3, 1} from the next connection on: a a a b.
    let order: String = requests(proxy, 8)
        .await
        .iter()
        .map(|a| a.as_deref().unwrap_or("?"))
        .collect();
    assert_eq!(order, "aaabaaab");

    let (status, body) = http(admin, "POST", &path, None, r#"{"weight": null}"#).await;
    assert_eq!(status, 200, "{body}");
    let answers = requests(proxy, 8).await;
    assert_eq!((count(&answers, "a"), count(&answers, "b")), (4, 4));
    running.stop().await;
}

#[tokio::test]
async fn setting_a_weight_through_the_api_validates_its_input() {
    let a = TestBackend::start("a").await;
    let running = Running::start(config(&config_text("127.0.0.1:0", &[&a], "")))
        .await
        .unwrap();
    let admin = admin(&running).await;
    let path = format!("/api/pools/p/backends/{}/weight", a.addr);
    let (status, body) = http(admin, "POST", &path, None, r#"{"weight": 7}"#).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["weight"], 7);
    assert_eq!(json(&body)["weight_override"], 7);
    let (status, body) = http(admin, "POST", &path, None, r#"{"weight": null}"#).await;
    assert_eq!((status, json(&body)["weight"].as_u64()), (200, Some(1)));
    let (status, body) = http(admin, "POST", &path, None, r#"{"weight": -1}"#).await;
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("body must be {\"weight\": N} or {\"weight\": null}: "),
        "{body}"
    );
    let (status, body) = http(
        admin,
        "POST",
        "/api/pools/p/backends/127.0.0.1:1/drain",
        None,
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        json(&body)["error"],
        "pool \"p\" has no backend 127.0.0.1:1"
    );
    let (status, body) = http(admin, "GET", "/api/pools/nope", None, "").await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (404, Some("no pool named \"nope\""))
    );
    running.stop().await;
}

/// Sample values by metric name and labels (rendered `k=v,...`, sorted).
fn samples(text: &str) -> HashMap<(String, String), f64> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let v = match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(_) | Value::Summary(_) => continue,
        };
        out.insert((s.metric, labels.join(",")), v);
    }
    out
}

#[tokio::test]
async fn metrics_parse_as_prometheus_exposition_and_count_the_traffic_sent() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("bb").await;
    let running = Running::start(config(&config_text("127.0.0.1:0", &[&a, &b], "")))
        .await
        .unwrap();
    let proxy = running.local_addr("web").await.unwrap();
    let admin = admin(&running).await;

    let answers = requests(proxy, 6).await;
    assert_eq!((count(&answers, "a"), count(&answers, "bb")), (3, 3));
    let text = loop {
        let (status, text) = http(admin, "GET", "/metrics", None, "").await;
        assert_eq!(status, 200);
        if text.contains("vipd_listener_connections_active{listener=\"web\"} 0\n") {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Every line is a comment the parser understands or a sample (text
    // format 0.0.4, the default: no `# EOF`).
    let lines: Vec<&str> = text.lines().collect();
    assert!(!text.contains("# EOF"));
    for line in &lines {
        let info = LineInfo::parse(line);
        assert!(
            matches!(
                info,
                LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Sample { .. }
            ),
            "unparsable line {line:?}"
        );
    }

    let m = samples(&text);
    let get = |name: &str, labels: &str| {
        *m.get(&(name.to_string(), labels.to_string()))
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
    };
    let req = REQUEST.len() as f64;
    // Each response is the status line, two headers and the backend's name.
    let resp = |name: &str| {
        format!(
            "HTTP/1.1 200 X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
            name.len()
        )
        .len() as f64
    };
    assert_eq!(
        get("vipd_listener_connections_accepted_total", "listener=web"),
        6.0
    );
    assert_eq!(get("vipd_listener_connections_active", "listener=web"), 0.0);
    assert_eq!(
        get("vipd_listener_bytes_in_total", "listener=web"),
        6.0 * req
    );
    assert_eq!(
        get("vipd_listener_bytes_out_total", "listener=web"),
        3.0 * resp("a") + 3.0 * resp("bb")
    );
    for (backend, name) in [(a.addr, "a"), (b.addr, "bb")] {
        let l = format!("backend={backend},pool=p");
        assert_eq!(get("vipd_backend_selected_total", &l), 3.0);
        assert_eq!(get("vipd_backend_up", &l), 1.0);
        assert_eq!(get("vipd_backend_weight", &l), 1.0);
        assert_eq!(get("vipd_backend_connections_active", &l), 0.0);
        assert_eq!(get("vipd_backend_connect_failures_total", &l), 0.0);
        assert_eq!(get("vipd_backend_bytes_out_total", &l), 3.0 * req);
        assert_eq!(get("vipd_backend_bytes_in_total", &l), 3.0 * resp(name));
        assert_eq!(get("vipd_backend_connect_duration_seconds_count", &l), 3.0);
    }
    assert_eq!(get("vipd_pool_backends_up", "pool=p"), 2.0);
    assert_eq!(get("vipd_reloads_total", ""), 0.0);
    assert_eq!(get("vipd_last_reload_success", ""), 1.0);
    assert!(text.contains("# TYPE vipd_backend_connect_duration_seconds histogram\n"));
    assert!(text.contains(&format!(
        "vipd_backend_connect_duration_seconds_bucket{{le=\"+Inf\",pool=\"p\",backend=\"{}\"}} 3\n",
        a.addr
    )));
    running.stop().await;
}

#[tokio::test]
async fn the_admin_api_refuses_requests_without_the_configured_token() {
    let dir = std::env::temp_dir().join(format!("vipd-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let a = TestBackend::start("a").await;
    let extra = format!("token_file = \"{}\"", token_file.display());
    let running = Running::start(config(&config_text("127.0.0.1:0", &[&a], &extra)))
        .await
        .unwrap();
    let admin = admin(&running).await;

    // The page is a static document (its script sends the token with each
    // fetch): served without the token, with no state in it.
    let (status, page) = http(admin, "GET", "/", None, "").await;
    assert_eq!(status, 200);
    assert!(!page.contains(&a.addr.to_string()), "{page}");
    assert!(!page.contains("\"p\""), "{page}");
    for path in ["/metrics", "/api/status", "/api/pools"] {
        let (status, body) = http(admin, "GET", path, None, "").await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(json(&body)["error"], "a valid bearer token is required");
        let (status, _) = http(admin, "GET", path, Some("s3cret-tokeN"), "").await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = http(admin, "GET", path, Some("s3cret-token"), "").await;
        assert_eq!(status, 200, "{path}");
    }
    let drain = format!("/api/pools/p/backends/{}/drain", a.addr);
    let (status, _) = http(admin, "POST", &drain, None, "").await;
    assert_eq!(status, 401);
    assert_eq!(backend(&running, "p", a.addr).weight(), 1);
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_admin_endpoint_is_not_reachable_on_the_vip_address() {
    let a = TestBackend::start("a").await;
    // The VIP is 127.0.0.2 (loopback, so the test can bind it); admin stays
    // on 127.0.0.1.
    let running = Running::start(config(&config_text("127.0.0.2:0", &[&a], "")))
        .await
        .unwrap();
    let vip = running.local_addr("web").await.unwrap();
    let admin = admin(&running).await;
    assert_eq!(admin.ip().to_string(), "127.0.0.1");

    let on_vip = SocketAddr::new(vip.ip(), admin.port());
    let err = TcpStream::connect(on_vip).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The VIP's own port forwards to the backend, never to admin.
    assert_eq!(request(vip).await.as_deref(), Ok("a"));
    let (status, _) = http(admin, "GET", "/api/status", None, "").await;
    assert_eq!(status, 200);
    running.stop().await;
}

#[test]
fn configuration_refuses_an_admin_endpoint_on_a_vip_address() {
    let text = r#"
[admin]
listen = "192.0.2.10:9100"
token_file = "/etc/vipd/admin.token"

[[listener]]
name = "web"
bind = "192.0.2.10:80"
protocol = "tcp"
pool = "p"

[[pool]]
name = "p"
backends = [{ address = "192.0.2.21:80" }]
"#;
    let err = vipd::config::parse(text, Path::new("vip.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vip.toml: 1 configuration error\n\
         vip.toml:3:1: admin.listen: 192.0.2.10 is a VIP served by a listener\n    \
         fix: bind the admin endpoint to 127.0.0.1 or a management address, never the VIP"
    );
}

#[tokio::test]
async fn post_reload_applies_the_changed_file_like_sighup_and_is_counted() {
    let dir = std::env::temp_dir().join(format!("vipd-admin-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vipd.toml");
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    std::fs::write(&file, config_text("127.0.0.1:0", &[&a], "")).unwrap();
    let running = Running::start(vipd::config::load(&file).unwrap())
        .await
        .unwrap();
    let proxy = running.local_addr("web").await.unwrap();
    let admin = admin(&running).await;
    assert_eq!(count(&requests(proxy, 4).await, "a"), 4);

    std::fs::write(&file, config_text("127.0.0.1:0", &[&b], "")).unwrap();
    let (status, body) = http(admin, "POST", "/api/reload", None, "").await;
    assert_eq!((status, body.trim()), (200, "{\n  \"reloaded\": true\n}"));
    assert_eq!(count(&requests(proxy, 4).await, "b"), 4);

    std::fs::write(&file, "[[listener]]\nname = 1\n").unwrap();
    let (status, body) = http(admin, "POST", "/api/reload", None, "").await;
    assert_eq!(status, 422);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("reload failed; the previous configuration stays in service: "),
        "{body}"
    );
    assert_eq!(count(&requests(proxy, 2).await, "b"), 2);

    let (_, body) = http(admin, "GET", "/api/status", None, "").await;
    let st = json(&body);
    assert_eq!(
        (st["reloads"].as_u64(), st["reload_failures"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(st["last_reload_ok"], false);
    let (_, text) = http(admin, "GET", "/metrics", None, "").await;
    assert!(text.contains("\nvipd_reloads_total 2\n"), "{text}");
    assert!(text.contains("\nvipd_reload_failures_total 1\n"));
    assert!(text.contains("\nvipd_last_reload_success 0\n"));
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The whole response (head and body) of a GET to the admin endpoint with
/// extra header lines.
async fn raw_get(admin: SocketAddr, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn the_status_page_is_a_self_contained_document_and_api_status_carries_what_it_shows() {
    let a = TestBackend::start("a").await;
    let running = Running::start(config(&config_text("127.0.0.1:0", &[&a], "")))
        .await
        .unwrap();
    let admin = admin(&running).await;
    let page = raw_get(admin, "/", "").await;
    let (head, body) = page.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\ncontent-type: text/html; charset=utf-8\r\n"));
    assert!(head.contains("\r\ncontent-security-policy: default-src 'none'; script-src 'sha256-"));
    assert!(head.contains("connect-src 'self';"), "{head}");
    assert!(head.contains("\r\nx-content-type-options: nosniff\r\n"));
    assert!(body.starts_with("<!doctype html>"));
    assert!(body.contains("fetch(\"/api/status\""));

    let (status, body) = http(admin, "GET", "/api/status", None, "").await;
    assert_eq!(status, 200);
    let st = json(&body);
    assert_eq!(st["listeners"][0]["name"], "web");
    assert_eq!(st["pools"][0]["name"], "p");
    let b = &st["pools"][0]["backends"][0];
    assert_eq!(b["address"], a.addr.to_string());
    assert_eq!(
        (b["status"].as_str(), b["last_change"].is_null()),
        (Some("up"), true)
    );
    assert_eq!(st["certificates"]["warn_days"], 21);
    assert_eq!(st["ipvs"]["services"], serde_json::json!([]));
    assert_eq!(st["last_reload_error"], serde_json::Value::Null);

    // A drain is recorded with who did it.
    let drain = format!("/api/pools/p/backends/{}/drain", a.addr);
    assert_eq!(http(admin, "POST", &drain, None, "").await.0, 200);
    let (_, body) = http(admin, "GET", "/api/status", None, "").await;
    let change = &json(&body)["pools"][0]["backends"][0]["last_change"];
    assert_eq!(change["to"], "drained");
    let cause = change["cause"].as_str().unwrap();
    assert!(
        cause.starts_with("drained through the admin API by 127.0.0.1:"),
        "{cause}"
    );
    let (status, _) = http(admin, "DELETE", "/api/pools", None, "").await;
    assert_eq!(status, 405);
    let (status, _) = http(admin, "GET", "/nope", None, "").await;
    assert_eq!(status, 404);
    running.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_0_0_4_unless_accept_prefers_openmetrics() {
    let a = TestBackend::start("a").await;
    let running = Running::start(config(&config_text("127.0.0.1:0", &[&a], "")))
        .await
        .unwrap();
    let admin = admin(&running).await;
    let classic = raw_get(admin, "/metrics", "Accept: text/plain;version=0.0.4\r\n").await;
    let none = raw_get(admin, "/metrics", "").await;
    // Prometheus's own scrape header prefers OpenMetrics.
    let prometheus = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let om = raw_get(admin, "/metrics", prometheus).await;
    for text in [&classic, &none] {
        assert!(
            text.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{text}"
        );
        assert!(text.contains("\n# TYPE vipd_reloads_total counter\nvipd_reloads_total 0\n"));
        assert!(!text.contains("# EOF"));
    }
    assert!(om.contains(
        "\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
    ));
    assert!(om.contains("\n# TYPE vipd_reloads counter\nvipd_reloads_total 0\n"));
    assert!(om.ends_with("\n# EOF\n"), "{om}");
    running.stop().await;
}

/// A TLS client trusting only `cert_pem`, with a session cache, so that a
/// second connection resumes.
fn tls_client(cert_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test]
async fn tls_handshakes_and_certificate_expiry_show_in_metrics_and_the_api() {
    let dir = std::env::temp_dir().join(format!("vipd-admin-tls-{}", std::process::id()));
    let generated = vipd::tls::gencert::generate(
        &["site.example".to_string()],
        vipd::tls::gencert::KeyType::EcdsaP256,
        10,
    )
    .unwrap();
    let (cert, key) = vipd::tls::gencert::write(&generated, &dir, "site", true).unwrap();
    let a = TestBackend::start("a").await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[vhost]]
name = "site"
hosts = ["site.example"]
pool = "p"
certificates = [{{ cert = "{}", key = "{}" }}]

[[listener]]
name = "secure"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "p"
vhosts = ["site"]

[[pool]]
name = "p"
backends = [{{ address = "{}" }}]
"#,
        cert.display(),
        key.display(),
        a.addr
    );
    let running = Running::start(config(&text)).await.unwrap();
    let vip = running.local_addr("secure").await.unwrap();
    let admin = admin(&running).await;

    let client = tls_client(&generated.cert_pem);
    for _ in 0..2 {
        let tcp = TcpStream::connect(vip).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("site.example").unwrap();
        let mut tls = client.connect(name, tcp).await.unwrap();
        tls.write_all(REQUEST.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = tls.read_to_string(&mut out).await;
        assert!(out.ends_with("\r\n\r\na"), "{out:?}");
    }
    // A client that does not speak TLS.
    let mut plain = TcpStream::connect(vip).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink).await;

    let text = loop {
        let (_, text) = http(admin, "GET", "/metrics", None, "").await;
        if text.contains(
            "vipd_listener_tls_handshakes_total{listener=\"secure\",result=\"failed\"} 1\n",
        ) && text.contains("vipd_listener_connections_active{listener=\"secure\"} 0\n")
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let m = samples(&text);
    let get = |name: &str, labels: &str| m[&(name.to_string(), labels.to_string())];
    assert_eq!(
        get(
            "vipd_listener_tls_handshakes_total",
            "listener=secure,result=full"
        ),
        1.0
    );
    assert_eq!(
        get(
            "vipd_listener_tls_handshakes_total",
            "listener=secure,result=resumed"
        ),
        1.0
    );
    assert_eq!(
        get(
            "vipd_listener_tls_handshake_duration_seconds_count",
            "listener=secure"
        ),
        3.0
    );
    assert_eq!(
        get(
            "vipd_listener_connections_accepted_total",
            "listener=secure"
        ),
        3.0
    );
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = unix();
    let (_, body) = http(admin, "GET", "/api/certificates", None, "").await;
    let after = unix();
    let certs = json(&body);
    let c = &certs["certificates"][0];
    assert_eq!(c["vhost"], "site");
    assert_eq!(c["names"], serde_json::json!(["site.example"]));
    // The certificate is valid for 10 days from generation; days_left is
    // whole days from the moment the API answered.
    let not_after = c["not_after_unix"].as_i64().unwrap();
    let days_left = c["days_left"].as_i64().unwrap();
    assert!(
        [before, after]
            .iter()
            .any(|t| (not_after - t).div_euclid(86_400) == days_left),
        "{c}"
    );
    let expiry = get(
        "vipd_certificate_expiry_timestamp_seconds",
        "index=0,name=site.example,vhost=site",
    );
    assert_eq!(expiry, c["not_after_unix"].as_f64().unwrap());
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn draining_ends_persistence_to_the_backend_only_when_the_group_expires_quiescent() {
    // Persistence sticks to a backend host, so the backends get their own IPs.
    let a = TestBackend::start_at("a", "127.0.0.2:0".parse().unwrap()).await;
    let b = TestBackend::start_at("b", "127.0.0.3:0".parse().unwrap()).await;
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[persistence]]
name = "expire"
timeout = "5m"
expire_quiescent = true

[[persistence]]
name = "keep"
timeout = "5m"
expire_quiescent = false

[[listener]]
name = "expiring"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p1"
persistence = "expire"

[[listener]]
name = "keeping"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p2"
persistence = "keep"

[[pool]]
name = "p1"
scheduler = "rr"
backends = [{{ address = "{a}" }}, {{ address = "{b}" }}]

[[pool]]
name = "p2"
scheduler = "rr"
backends = [{{ address = "{a}" }}, {{ address = "{b}" }}]
"#,
        a = a.addr,
        b = b.addr
    );
    let running = Running::start(config(&text)).await.unwrap();
    let admin = admin(&running).await;
    for (listener, pool, after_drain) in [("expiring", "p1", "b"), ("keeping", "p2", "a")] {
        let vip = running.local_addr(listener).await.unwrap();
        let sticky = requests(vip, 4).await;
        assert_eq!(count(&sticky, "a"), 4, "{listener}: {sticky:?}");
        let path = format!("/api/pools/{pool}/backends/{}/drain", a.addr);
        assert_eq!(http(admin, "POST", &path, None, "").await.0, 200);
        let answers = requests(vip, 4).await;
        assert_eq!(count(&answers, after_drain), 4, "{listener}: {answers:?}");
    }

    // The tables, once every connection has closed: one entry per group.
    let groups = loop {
        let (status, body) = http(admin, "GET", "/api/persistence", None, "").await;
        assert_eq!(status, 200);
        let groups = json(&body)["groups"].clone();
        let open: u64 = groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["entries"].as_array().unwrap().clone())
            .map(|e| e["connections"].as_u64().unwrap())
            .sum();
        if open == 0 {
            break groups;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for (g, backend, hits, misses) in [(0, "127.0.0.3", 6, 2), (1, "127.0.0.2", 7, 1)] {
        let group = &groups[g];
        assert_eq!(group["size"], 1, "{group}");
        assert_eq!(group["entries"][0]["client"], "127.0.0.1/32");
        assert_eq!(group["entries"][0]["backend"], backend);
        assert_eq!(
            (group["hits"].as_u64(), group["misses"].as_u64()),
            (Some(hits), Some(misses))
        );
    }
    let (_, text) = http(admin, "GET", "/metrics", None, "").await;
    let m = samples(&text);
    let get = |name: &str, labels: &str| m[&(name.to_string(), labels.to_string())];
    assert_eq!(get("vipd_persistence_entries", "group=expire"), 1.0);
    assert_eq!(get("vipd_persistence_hits_total", "group=expire"), 6.0);
    assert_eq!(get("vipd_persistence_misses_total", "group=expire"), 2.0);
    assert_eq!(get("vipd_persistence_hits_total", "group=keep"), 7.0);
    assert_eq!(get("vipd_persistence_misses_total", "group=keep"), 1.0);
    running.stop().await;
}

#[tokio::test]
async fn http_requests_are_counted_by_status_class_per_listener_and_backend() {
    let a = TestBackend::start("a").await;
    a.health_status
        .store(503, std::sync::atomic::Ordering::Relaxed);
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[vhost]]
name = "site"
hosts = ["t"]
pool = "p"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
vhosts = ["site"]

[[pool]]
name = "p"
backends = [{{ address = "{}" }}]
"#,
        a.addr
    );
    let running = Running::start(config(&text)).await.unwrap();
    let web = running.local_addr("web").await.unwrap();
    let admin = admin(&running).await;
    for path in ["/", "/x", "/health"] {
        let mut s = TcpStream::connect(web).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let want = if path == "/health" {
            "HTTP/1.1 503"
        } else {
            "HTTP/1.1 200"
        };
        assert!(out.starts_with(want), "{out:?}");
    }
    let (_, text) = http(admin, "GET", "/metrics", None, "").await;
    let m = samples(&text);
    let get = |name: &str, labels: &str| m[&(name.to_string(), labels.to_string())];
    let l = |class: &str| format!("class={class},listener=web");
    assert_eq!(get("vipd_listener_requests_total", &l("2xx")), 2.0);
    assert_eq!(get("vipd_listener_requests_total", &l("5xx")), 1.0);
    assert_eq!(get("vipd_listener_requests_total", &l("4xx")), 0.0);
    assert_eq!(
        get(
            "vipd_listener_request_duration_seconds_count",
            "listener=web"
        ),
        3.0
    );
    let b = |class: &str| format!("backend={},class={class},pool=p", a.addr);
    assert_eq!(get("vipd_backend_responses_total", &b("2xx")), 2.0);
    assert_eq!(get("vipd_backend_responses_total", &b("5xx")), 1.0);
    running.stop().await;
}

#[tokio::test]
async fn the_ipvs_view_says_why_the_kernel_table_cannot_be_read() {
    // This host's kernel has no IPVS (the VM suite covers a kernel that has):
    // the view still lists the configured services and names the fix.
    let backend = TestBackend::start("a").await;
    let text = format!(
        "{}\n[[ipvs.service]]\nname = \"web\"\naddress = \"198.51.100.100:80\"\nreal_servers = [{{ address = \"198.51.100.11:80\", weight = 2 }}]\n",
        config_text("127.0.0.1:0", &[&backend], "")
    );
    let config = vipd::config::parse(&text, Path::new("t.toml")).unwrap();
    let running = Running::start(config).await.unwrap();
    let (status, body) = http(admin(&running).await, "GET", "/api/ipvs", None, "").await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["services"][0]["name"], "web");
    assert_eq!(
        v["services"][0]["real_servers"][0]["address"],
        "198.51.100.11:80"
    );
    assert_eq!(v["services"][0]["real_servers"][0]["weight"], 2);
    // The in-process proxy does not program IPVS, so the kernel has no such service.
    assert!(v["services"][0]["kernel_stats"].is_null());
    match v["kernel_error"].as_str() {
        Some(err) => assert!(err.contains("modprobe ip_vs"), "{err}"),
        None => assert!(
            std::path::Path::new("/proc/net/ip_vs").exists(),
            "no kernel error, yet this kernel has no IPVS: {body}"
        ),
    }
}
