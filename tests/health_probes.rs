//! Single probes against loopback servers: HTTP status range and body
//! substring, TLS handshake with SNI, HTTPS, timeouts and refusals, with the
//! exact error text the flip log shows.

mod health_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use health_support::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use vipd::config::{HealthCheck, HealthKind};
use vipd::health::Probe;

fn check(kind: HealthKind) -> HealthCheck {
    HealthCheck {
        kind,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(500),
        rise: 1,
        fall: 1,
        path: "/health".into(),
        host: None,
        expect_status: (200, 299),
        expect_body: None,
        port: None,
    }
}

#[tokio::test]
async fn an_http_check_passes_on_a_status_in_range_and_fails_outside_it() {
    let b = TestBackend::start("alpha").await;
    let probe = Probe::new(&check(HealthKind::Http));
    assert!(probe.run(b.addr).await.is_ok());
    b.health_status.store(503, Ordering::Relaxed);
    let err = probe.run(b.addr).await.unwrap_err();
    assert_eq!(err.to_string(), "HTTP status 503, expected 200-299");
}

#[tokio::test]
async fn an_http_check_with_expect_body_needs_the_substring_in_the_body() {
    let b = TestBackend::start("alpha-ok").await;
    let mut c = check(HealthKind::Http);
    c.expect_body = Some("-ok".into());
    assert!(Probe::new(&c).run(b.addr).await.is_ok());
    c.expect_body = Some("ready".into());
    let err = Probe::new(&c).run(b.addr).await.unwrap_err();
    assert_eq!(err.to_string(), "response body does not contain \"ready\"");
}

#[tokio::test]
async fn a_tcp_check_fails_on_a_refused_connect_and_times_out_on_silence() {
    let b = TestBackend::start("gone").await;
    let addr = b.kill().await;
    let err = Probe::new(&check(HealthKind::Tcp))
        .run(addr)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "connect failed: Connection refused (os error 111)"
    );

    // A server that accepts but never answers an HTTP check.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut c = check(HealthKind::Http);
    c.timeout = Duration::from_millis(150);
    let err = Probe::new(&c)
        .run(silent.local_addr().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no answer within 150ms");
}

/// A TLS server with a self-signed certificate for `backend.example` that
/// reports the SNI of every handshake and answers HTTP with 200 "secure".
async fn tls_server() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Option<String>>,
) {
    let ck = rcgen::generate_simple_self_signed(vec!["backend.example".into()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = tx.send(tls.get_ref().1.server_name().map(str::to_string));
                let mut buf = [0u8; 1024];
                if let Ok(n) = tls.read(&mut buf).await {
                    if n > 0 {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure")
                            .await;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_tls_check_completes_a_handshake_sending_the_configured_sni() {
    let (addr, mut sni) = tls_server().await;
    let mut c = check(HealthKind::Tls);
    c.host = Some("backend.example".into());
    Probe::new(&c).run(addr).await.unwrap();
    assert_eq!(
        sni.recv().await.unwrap().as_deref(),
        Some("backend.example")
    );
}

#[tokio::test]
async fn an_https_check_sends_sni_and_reads_the_response_over_tls() {
    let (addr, mut sni) = tls_server().await;
    let mut c = check(HealthKind::Https);
    c.host = Some("backend.example".into());
    c.expect_body = Some("secure".into());
    Probe::new(&c).run(addr).await.unwrap();
    assert_eq!(
        sni.recv().await.unwrap().as_deref(),
        Some("backend.example")
    );
}

#[tokio::test]
async fn a_tls_check_fails_against_a_server_that_does_not_speak_tls() {
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = plain.accept().await.unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let err = Probe::new(&check(HealthKind::Tls))
        .run(addr)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TLS handshake failed: received corrupt message of type InvalidContentType"
    );
}
