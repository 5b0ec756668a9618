//! `https` listeners: TLS with SNI, ALPN h2 and http/1.1, SNI/Host
//! agreement, HSTS.

mod http_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use http_support::*;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// A test CA and leaf certificates it signs, written to a temp directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vipd-http-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vipd test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Self { dir, ca, ca_key }
    }

    /// Write a leaf for `names`; returns (cert path, key path).
    fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn client(&self, alpn: &[&str]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cert_entry(paths: &(PathBuf, PathBuf)) -> String {
    let show = |p: &Path| p.display().to_string();
    format!(
        "[{{ cert = \"{}\", key = \"{}\" }}]",
        show(&paths.0),
        show(&paths.1)
    )
}

async fn setup() -> (Pki, Backend, Backend, SocketAddr) {
    let pki = Pki::new();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let proxy = start_sites(&pki, a.addr, b.addr).await;
    (pki, a, b, proxy)
}

/// An `https` listener with site `www.a.test` (pool `a`, HSTS) and
/// `*.b.test` (pool `b`); returns its address.
async fn start_sites(pki: &Pki, a: SocketAddr, b: SocketAddr) -> SocketAddr {
    let www = pki.leaf("www", &["www.a.test"]);
    let wild = pki.leaf("wild", &["*.b.test"]);
    let text = format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "https"

[[pool]]
name = "a"
backends = [{{ address = "{a}" }}]

[[pool]]
name = "b"
backends = [{{ address = "{b}" }}]

[[vhost]]
name = "www"
hosts = ["www.a.test"]
pool = "a"
hsts_max_age = "365d"
redirect_https = true
certificates = {www}

[[vhost]]
name = "wild"
hosts = ["*.b.test"]
pool = "b"
certificates = {wild}
"#,
        www = cert_entry(&www),
        wild = cert_entry(&wild),
    );
    let running = start_proxy(&text).await;
    let proxy = running.local_addr("web").await.unwrap();
    std::mem::forget(running);
    proxy
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls(pki: &Pki, proxy: SocketAddr, sni: &str, alpn: &[&str]) -> Tls {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    pki.client(alpn).connect(name, tcp).await.unwrap()
}

/// One request over HTTP/1.1 on `stream`, with `host` as Host.
async fn h1(stream: Tls, host: &str, path: &str) -> (StatusCode, hyper::HeaderMap, String) {
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    collect(tx.send_request(req).await.unwrap()).await
}

/// One request over HTTP/2 on `stream`, with `authority` as :authority.
async fn h2(stream: Tls, authority: &str, path: &str) -> (StatusCode, hyper::HeaderMap, String) {
    let (mut tx, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("https://{authority}{path}"))
        .version(hyper::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    collect(tx.send_request(req).await.unwrap()).await
}

async fn collect(
    resp: hyper::Response<hyper::body::Incoming>,
) -> (StatusCode, hyper::HeaderMap, String) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn https_http1_requests_are_forwarded_with_hsts_and_proto_https() {
    let (pki, a, _b, proxy) = setup().await;
    let stream = tls(&pki, proxy, "www.a.test", &["http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, h, body) = h1(stream, "www.a.test", "/x").await;
    assert_eq!(status, 200);
    assert_eq!(h.get("x-backend").unwrap(), "a");
    assert_eq!(
        h.get("strict-transport-security").unwrap(),
        "max-age=31536000"
    );
    assert_eq!(echoed_values(&body, "x-forwarded-proto"), ["https"]);
    assert_eq!(a.requests(), 1);
}

#[tokio::test]
async fn alpn_h2_clients_are_served_over_http2() {
    let (pki, _a, _b, proxy) = setup().await;
    let stream = tls(&pki, proxy, "api.b.test", &["h2", "http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, h, body) = h2(stream, "api.b.test", "/h2").await;
    assert_eq!(status, 200);
    assert_eq!(h.get("x-backend").unwrap(), "b");
    assert!(body.starts_with("GET /h2 HTTP/1.1\n"), "{body}");
    assert_eq!(echoed_values(&body, "host"), ["api.b.test"]);
    assert!(h.get("strict-transport-security").is_none());
}

#[tokio::test]
async fn a_host_of_another_site_than_the_sni_is_a_421() {
    let (pki, a, b, proxy) = setup().await;
    let stream = tls(&pki, proxy, "www.a.test", &["http/1.1"]).await;
    let (status, _, body) = h1(stream, "api.b.test", "/").await;
    assert_eq!(status, 421);
    assert_eq!(
        body,
        "421 Misdirected Request: the Host header names a different site than TLS SNI\n"
    );
    let stream = tls(&pki, proxy, "api.b.test", &["h2"]).await;
    let (status, _, _) = h2(stream, "www.a.test", "/").await;
    assert_eq!(status, 421);
    assert_eq!((a.requests(), b.requests()), (0, 0));
}

#[tokio::test]
async fn names_under_one_wildcard_site_may_share_a_connection() {
    let (pki, _a, b, proxy) = setup().await;
    let stream = tls(&pki, proxy, "one.b.test", &["http/1.1"]).await;
    let (status, h, _) = h1(stream, "two.b.test", "/").await;
    assert_eq!(status, 200);
    assert_eq!(h.get("x-backend").unwrap(), "b");
    assert_eq!(b.requests(), 1);
}

/// Write `head` over `stream` and read the answer until the proxy closes.
async fn raw_tls(mut stream: Tls, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let limit = std::time::Duration::from_secs(3);
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_absolute_form_target_cannot_smuggle_another_host_past_the_sni_check() {
    let (pki, a, b, proxy) = setup().await;
    // The target agrees with SNI, the Host names the other site: before,
    // this passed the 421 check and a's backend got `Host: api.b.test`.
    let stream = tls(&pki, proxy, "www.a.test", &["http/1.1"]).await;
    let answer = raw_tls(
        stream,
        "GET https://www.a.test/ HTTP/1.1\r\nHost: api.b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("400 Bad Request: the Host header does not match the request target\n"),
        "{answer}"
    );
    // Target and Host agree on the other site: still a 421.
    let stream = tls(&pki, proxy, "www.a.test", &["http/1.1"]).await;
    let answer = raw_tls(
        stream,
        "GET https://api.b.test/ HTTP/1.1\r\nHost: api.b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 421 Misdirected Request\r\n"),
        "{answer}"
    );
    // SNI in another case with a final dot names the same site as Host.
    let stream = tls(&pki, proxy, "WWW.A.TEST", &["http/1.1"]).await;
    let answer = raw_tls(
        stream,
        "GET / HTTP/1.1\r\nHost: www.a.test.\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!((a.requests(), b.requests()), (1, 0));
}

#[tokio::test]
async fn http2_streams_for_another_site_than_the_sni_get_421_each_and_the_connection_stays_usable()
{
    let (pki, a, b, proxy) = setup().await;
    let stream = tls(&pki, proxy, "www.a.test", &["h2"]).await;
    let (tx, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let ask = |authority: &'static str, host: Option<&'static str>| {
        let mut tx = tx.clone();
        async move {
            let mut req = Request::builder()
                .uri(format!("https://{authority}/"))
                .version(hyper::Version::HTTP_2);
            if let Some(h) = host {
                req = req.header("host", h);
            }
            let req = req.body(Full::new(Bytes::new())).unwrap();
            collect(tx.send_request(req).await.unwrap()).await.0
        }
    };
    // Interleaved on one connection: each stream is judged alone.
    for _ in 0..3 {
        let (wrong, right, forged, dotted) = tokio::join!(
            ask("api.b.test", None),
            ask("www.a.test", None),
            ask("www.a.test", Some("api.b.test")),
            ask("WWW.A.TEST.", None),
        );
        assert_eq!(
            [wrong, right, forged, dotted].map(|s| s.as_u16()),
            [421, 200, 400, 200]
        );
    }
    assert_eq!((a.requests(), b.requests()), (6, 0));
    assert_eq!(ask("www.a.test", None).await, 200);
}

/// The bytes of a large test body: a pattern that a dropped, repeated or
/// reordered piece would break.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A backend that takes the whole upload, checks its pattern, and answers
/// `/big/<n>` with `x-got: <bytes received>` and `n` pattern bytes.
async fn big_backend() -> SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let n: usize = req
                        .uri()
                        .path()
                        .strip_prefix("/big/")
                        .map_or(0, |n| n.parse().unwrap());
                    let got = req.into_body().collect().await.unwrap().to_bytes();
                    let intact = got[..] == pattern(got.len())[..];
                    let resp = hyper::Response::builder()
                        .header("x-got", got.len())
                        .header("x-intact", intact.to_string())
                        .body(Full::new(Bytes::from(pattern(n))))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

const BIG: usize = 1 << 20;

/// A 1 MiB upload to `/big/<BIG>` on an open client.
fn big_request(uri: String, version: hyper::Version) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(uri)
        .version(version)
        .header("host", "www.a.test")
        .body(Full::new(Bytes::from(pattern(BIG))))
        .unwrap()
}

/// What an answer to [`big_request`] must be: 200, the whole upload seen
/// intact by the backend, and the whole 1 MiB answer intact.
async fn assert_big_answer(resp: hyper::Response<hyper::body::Incoming>) {
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200);
    assert_eq!(h.get("x-got").unwrap(), &BIG.to_string()[..]);
    assert_eq!(h.get("x-intact").unwrap(), "true");
    assert_eq!(body.len(), BIG);
    assert!(
        body[..] == pattern(BIG)[..],
        "the 1 MiB answer arrived altered"
    );
}

#[tokio::test]
async fn a_tls_http1_connection_that_sat_idle_after_a_request_serves_a_1_mib_upload_and_answer() {
    let pki = Pki::new();
    let big = big_backend().await;
    let proxy = start_sites(&pki, big, big).await;
    let stream = tls(&pki, proxy, "www.a.test", &["http/1.1"]).await;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let small = Request::builder()
        .uri("/big/10")
        .header("host", "www.a.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let first = tx.send_request(small).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.into_body().collect().await.unwrap().to_bytes().len(),
        10
    );
    // Idle, as a keep-alive connection waits for its next request.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let resp = tx
        .send_request(big_request(format!("/big/{BIG}"), hyper::Version::HTTP_11))
        .await
        .unwrap();
    assert_big_answer(resp).await;
    // And the connection is still good for the next one.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let resp = tx
        .send_request(big_request(format!("/big/{BIG}"), hyper::Version::HTTP_11))
        .await
        .unwrap();
    assert_big_answer(resp).await;
}

#[tokio::test]
async fn a_tls_http2_connection_that_sat_idle_after_a_request_serves_1_mib_uploads_and_answers() {
    let pki = Pki::new();
    let big = big_backend().await;
    let proxy = start_sites(&pki, big, big).await;
    let stream = tls(&pki, proxy, "www.a.test", &["h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (tx, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let uri = |n: usize| format!("https://www.a.test/big/{n}");
    let small = Request::builder()
        .uri(uri(10))
        .version(hyper::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let first = tx.clone().send_request(small).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.into_body().collect().await.unwrap().to_bytes().len(),
        10
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Two large streams at once on the idle connection.
    let (r1, r2) = tokio::join!(
        tx.clone()
            .send_request(big_request(uri(BIG), hyper::Version::HTTP_2)),
        tx.clone()
            .send_request(big_request(uri(BIG), hyper::Version::HTTP_2)),
    );
    tokio::join!(
        assert_big_answer(r1.unwrap()),
        assert_big_answer(r2.unwrap())
    );
}
