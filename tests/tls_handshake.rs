//! Real handshakes against `tls` listeners over loopback: SNI selection,
//! wildcards, default and strict SNI, RSA/ECDSA choice, protocol versions,
//! the handshake timeout, and ALPN on https acceptors.

mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use rustls::SignatureScheme;
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "echo"
default_vhost = "b"
handshake_timeout = "300ms"

[[listener]]
name = "strict"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "echo"
strict_sni = true

[[pool]]
name = "echo"
backends = [{ address = "{backend}" }]

[[vhost]]
name = "a"
hosts = ["a.test"]
pool = "echo"
certificates = [{ cert = "a.crt", key = "a.key" }]

[[vhost]]
name = "b"
hosts = ["b.test", "www.b.test"]
pool = "echo"
certificates = [{ cert = "b.crt", key = "b.key" }]

[[vhost]]
name = "wild"
hosts = ["*.w.test"]
pool = "echo"
certificates = [{ cert = "w.crt", key = "w.key" }]

[[vhost]]
name = "exact"
hosts = ["exact.w.test"]
pool = "echo"
certificates = [{ cert = "e.crt", key = "e.key" }]

[[vhost]]
name = "dual"
hosts = ["dual.test"]
pool = "echo"
certificates = [
  { cert = "dual-ec.crt", key = "dual-ec.key" },
  { cert = "dual-rsa.crt", key = "dual-rsa.key" },
]
"#;

struct Fixture {
    _dir: TempDir,
    running: Arc<vipd::app::Running>,
    certs: std::collections::HashMap<&'static str, Issued>,
}

impl Fixture {
    async fn start() -> Self {
        let dir = TempDir::new("tls-handshake");
        let pki = Pki::new();
        let mut certs = std::collections::HashMap::new();
        for (stem, names, alg) in [
            ("a", &["a.test"][..], Alg::Ecdsa),
            ("b", &["b.test", "www.b.test"][..], Alg::Ecdsa),
            ("w", &["*.w.test"][..], Alg::Ecdsa),
            ("e", &["exact.w.test"][..], Alg::Ecdsa),
            ("dual-ec", &["dual.test"][..], Alg::Ecdsa),
            ("dual-rsa", &["dual.test"][..], Alg::Rsa),
        ] {
            let issued = pki.issue(names, alg);
            write_pair(dir.path(), stem, &issued);
            certs.insert(stem, issued);
        }
        // The RSA key in PKCS#1 and one EC key in SEC1 form: every PEM key
        // format is read.
        std::fs::write(
            dir.path().join("dual-rsa.key"),
            certs["dual-rsa"].key_pem_traditional(Alg::Rsa),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.key"),
            certs["a"].key_pem_traditional(Alg::Ecdsa),
        )
        .unwrap();
        let backend = echo_backend().await;
        let config = load_config(dir.path(), CONFIG, backend);
        let running = vipd::app::Running::start(config).await.unwrap();
        Self {
            _dir: dir,
            running,
            certs,
        }
    }

    async fn addr(&self, listener: &str) -> std::net::SocketAddr {
        self.running.local_addr(listener).await.unwrap()
    }

    fn der(&self, stem: &str) -> &[u8] {
        &self.certs[stem].der
    }
}

#[tokio::test]
async fn each_sni_name_gets_its_own_certificate_with_a_chain_the_client_verifies() {
    let pki = Pki::new();
    let dir = TempDir::new("tls-verify");
    let a = pki.issue(&["a.test"], Alg::Ecdsa);
    let b = pki.issue(&["b.test", "www.b.test"], Alg::Rsa);
    write_pair(dir.path(), "a", &a);
    write_pair(dir.path(), "b", &b);
    let body = r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "echo"
[[pool]]
name = "echo"
backends = [{ address = "{backend}" }]
[[vhost]]
name = "a"
hosts = ["a.test"]
pool = "echo"
certificates = [{ cert = "a.crt", key = "a.key" }]
[[vhost]]
name = "b"
hosts = ["b.test", "www.b.test"]
pool = "echo"
certificates = [{ cert = "b.crt", key = "b.key" }]
"#;
    let config = load_config(dir.path(), body, echo_backend().await);
    let running = vipd::app::Running::start(config).await.unwrap();
    let addr = running.local_addr("front").await.unwrap();
    let client = Arc::new(verifying_client(&pki));
    assert_eq!(leaf_for(addr, "a.test", &client).await, a.der);
    assert_eq!(leaf_for(addr, "b.test", &client).await, b.der);
    assert_eq!(leaf_for(addr, "www.b.test", &client).await, b.der);
    let s = connect(addr, "a.test", &client).await.unwrap();
    assert_eq!(
        s.get_ref().1.peer_certificates().unwrap().len(),
        2,
        "leaf and CA are served"
    );
}

#[tokio::test]
async fn a_wildcard_vhost_answers_subdomains_and_an_exact_name_wins_over_it() {
    let f = Fixture::start().await;
    let addr = f.addr("front").await;
    let client = Arc::new(client(TLS13_AND_12));
    assert_eq!(leaf_for(addr, "x.w.test", &client).await, f.der("w"));
    assert_eq!(leaf_for(addr, "api.w.test", &client).await, f.der("w"));
    assert_eq!(leaf_for(addr, "exact.w.test", &client).await, f.der("e"));
    // One label only: a.b.w.test is not covered by *.w.test, so the default answers.
    assert_eq!(leaf_for(addr, "a.b.w.test", &client).await, f.der("b"));
    assert_eq!(leaf_for(addr, "a.test", &client).await, f.der("a"));
}

#[tokio::test]
async fn unknown_and_absent_sni_get_the_default_vhost_certificate() {
    let f = Fixture::start().await;
    let addr = f.addr("front").await;
    let client = Arc::new(client(TLS13_AND_12));
    assert_eq!(leaf_for(addr, "unknown.test", &client).await, f.der("b"));
    let mut no_sni = tls_support::client(TLS13_AND_12);
    no_sni.enable_sni = false;
    let no_sni = Arc::new(no_sni);
    let mut s = connect(addr, "a.test", &no_sni).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"no sni").await, b"no sni");
    assert_eq!(served_leaf(&s), f.der("b"));
}

#[tokio::test]
async fn strict_sni_refuses_unknown_and_absent_names_and_serves_known_ones() {
    let f = Fixture::start().await;
    let addr = f.addr("strict").await;
    let client = Arc::new(client(TLS13_AND_12));
    assert_eq!(leaf_for(addr, "a.test", &client).await, f.der("a"));
    let err = connect(addr, "unknown.test", &client).await.unwrap_err();
    assert_eq!(err.to_string(), "received fatal alert: AccessDenied");
    let mut no_sni = tls_support::client(TLS13_AND_12);
    no_sni.enable_sni = false;
    let err = connect(addr, "a.test", &Arc::new(no_sni))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "received fatal alert: AccessDenied");
}

#[tokio::test]
async fn a_vhost_with_ecdsa_and_rsa_certificates_serves_each_client_what_it_can_verify() {
    let f = Fixture::start().await;
    let addr = f.addr("front").await;
    let modern = Arc::new(client(TLS13_AND_12));
    assert_eq!(leaf_for(addr, "dual.test", &modern).await, f.der("dual-ec"));
    let rsa_only = Arc::new(client_with_schemes(
        TLS13_AND_12,
        vec![
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ],
    ));
    assert_eq!(
        leaf_for(addr, "dual.test", &rsa_only).await,
        f.der("dual-rsa")
    );
    let rsa_tls12 = Arc::new(client_with_schemes(
        TLS12_ONLY,
        vec![SignatureScheme::RSA_PKCS1_SHA256],
    ));
    assert_eq!(
        leaf_for(addr, "dual.test", &rsa_tls12).await,
        f.der("dual-rsa")
    );
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_served_by_default() {
    let f = Fixture::start().await;
    let addr = f.addr("front").await;
    for (versions, expected) in [
        (TLS12_ONLY, rustls::ProtocolVersion::TLSv1_2),
        (TLS13_ONLY, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let s = connect(addr, "a.test", &Arc::new(client(versions)))
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(expected));
    }
}

/// A TLS 1.1 ClientHello as an old client sends it: record and
/// client_version 0x0302, no supported_versions extension. It does offer
/// SNI and ECDSA signature algorithms, so the refusal is about the version
/// and nothing else.
fn tls11_client_hello() -> Vec<u8> {
    let mut ext = Vec::new();
    // server_name: type 0x0000, list of one host_name "a.test".
    let name = b"a.test";
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0x00);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    // signature_algorithms 0x000d: ecdsa_secp256r1_sha256, rsa_pkcs1_sha256.
    ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01]);
    // supported_groups 0x000a: secp256r1; ec_point_formats 0x000b: uncompressed.
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]);
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0x00); // empty session id
    // TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01]; // client_hello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02]; // handshake record, TLS 1.1
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn a_tls_1_1_client_hello_is_refused_with_a_protocol_version_alert() {
    let f = Fixture::start().await;
    let mut s = TcpStream::connect(f.addr("front").await).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    // alert record (0x15), version 0x0303, length 2: fatal (2), protocol_version (70).
    assert_eq!(reply, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_only_client() {
    let dir = TempDir::new("tls-min13");
    let pki = Pki::new();
    write_pair(dir.path(), "a", &pki.issue(&["a.test"], Alg::Ecdsa));
    let body = r#"
[tls]
min_version = "1.3"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "echo"
[[pool]]
name = "echo"
backends = [{ address = "{backend}" }]
[[vhost]]
name = "a"
hosts = ["a.test"]
pool = "echo"
certificates = [{ cert = "a.crt", key = "a.key" }]
"#;
    let config = load_config(dir.path(), body, echo_backend().await);
    let running = vipd::app::Running::start(config).await.unwrap();
    let addr = running.local_addr("front").await.unwrap();
    let err = connect(addr, "a.test", &Arc::new(client(TLS12_ONLY)))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "received fatal alert: ProtocolVersion");
    let s = connect(addr, "a.test", &Arc::new(client(TLS13_AND_12)))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_cut_at_handshake_timeout() {
    let f = Fixture::start().await;
    let mut s = TcpStream::connect(f.addr("front").await).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed before 10 s")
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}, before the 300ms handshake_timeout",
        started.elapsed()
    );
}

/// https listeners are refused by config validation until the HTTP layer
/// lands, so this builds the acceptor from an edited config and handshakes
/// in memory.
#[tokio::test]
async fn an_https_acceptor_negotiates_h2_when_the_client_offers_it() {
    let dir = TempDir::new("tls-alpn");
    let pki = Pki::new();
    write_pair(dir.path(), "a", &pki.issue(&["a.test"], Alg::Ecdsa));
    let body = r#"
[[listener]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "echo"
[[pool]]
name = "echo"
backends = [{ address = "{backend}" }]
[[vhost]]
name = "a"
hosts = ["a.test"]
pool = "echo"
certificates = [{ cert = "a.crt", key = "a.key" }]
"#;
    let mut config = load_config(dir.path(), body, echo_backend().await);
    config.listeners[0].protocol = vipd::config::Protocol::Https;
    config.listeners[0].alpn = vec!["h2".into(), "http/1.1".into()];
    let state = vipd::tls::TlsState::build(&config, None).unwrap();
    let acceptor = state.acceptor("front").unwrap().clone();
    assert_eq!(
        acceptor.server_config().alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    for (offered, expected) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"h2".to_vec()),
        (vec![b"http/1.1".to_vec(), b"h2".to_vec()], b"h2".to_vec()),
        (vec![b"http/1.1".to_vec()], b"http/1.1".to_vec()),
    ] {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move { acceptor.accept(s).await.map(|_| ()) });
        let mut cfg = client(TLS13_AND_12);
        cfg.alpn_protocols = offered;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let tls = connector.connect(name, c).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&expected[..]));
        server.await.unwrap().unwrap();
    }
}
