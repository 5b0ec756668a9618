//! One probe of one backend: TCP connect, TLS handshake with SNI, or an
//! HTTP(S) GET with an expected status range and body substring.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{HealthCheck, HealthKind};

/// Most of a response body read to look for `expect_body`.
const BODY_LIMIT: usize = 64 * 1024;

/// Why a probe failed; the text is what the flip log shows.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// The HTTP request or response head failed.
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    /// The status is outside `expect_status`.
    #[error("HTTP status {got}, expected {lo}-{hi}")]
    Status { got: u16, lo: u16, hi: u16 },
    /// The body could not be read (or exceeded 64 KiB).
    #[error("response body could not be read: {0}")]
    Body(String),
    /// The body lacks `expect_body`.
    #[error("response body does not contain {0:?}")]
    BodyMismatch(String),
    /// The probe did not finish within `timeout`.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// A prepared check: what to send and what to expect, built once per
/// configuration and shared by the pool's backend checkers.
#[derive(Debug)]
pub struct Probe {
    check: HealthCheck,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Probe {
    /// Prepare the check described by `check`.
    pub fn new(check: &HealthCheck) -> Self {
        let tls = matches!(check.kind, HealthKind::Https | HealthKind::Tls).then(|| {
            let alpn = if check.kind == HealthKind::Https {
                vec![b"http/1.1".to_vec()]
            } else {
                Vec::new()
            };
            Arc::new(client_config(alpn))
        });
        Self {
            check: check.clone(),
            tls,
        }
    }

    /// The check settings.
    pub fn settings(&self) -> &HealthCheck {
        &self.check
    }

    /// Probe `addr` once, bounded by the check's timeout.
    pub async fn run(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        let timeout = self.check.timeout;
        // `port` (keepalived's connect_port): fwmark real servers have port 0
        let addr = self
            .check
            .port
            .map_or(addr, |p| SocketAddr::new(addr.ip(), p));
        tokio::time::timeout(timeout, self.exchange(addr))
            .await
            .unwrap_or(Err(ProbeError::Timeout(timeout)))
    }

    async fn exchange(&self, addr: SocketAddr) -> Result<(), ProbeError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match (&self.tls, self.check.kind) {
            (None, HealthKind::Tcp) => Ok(()),
            (None, _) => self.http(tcp, addr).await,
            (Some(tls), kind) => {
                let stream = TlsConnector::from(tls.clone())
                    .connect(self.server_name(addr), tcp)
                    .await
                    .map_err(ProbeError::Tls)?;
                if kind == HealthKind::Https {
                    self.http(stream, addr).await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// SNI: the check's `host`, else the address (which sends no SNI).
    fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        self.check
            .host
            .as_deref()
            .and_then(|h| ServerName::try_from(h.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    async fn http<S>(&self, stream: S, addr: SocketAddr) -> Result<(), ProbeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ProbeError::Http)?;
        let driver = tokio::spawn(conn);
        let host = self.check.host.clone().unwrap_or_else(|| addr.to_string());
        let req = Request::get(self.check.path.as_str())
            .header(HOST, host)
            .header(
                USER_AGENT,
                concat!("vipd-health/", env!("CARGO_PKG_VERSION")),
            )
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeError::Body(e.to_string()))?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(ProbeError::Http)?;
            let got = resp.status().as_u16();
            let (lo, hi) = self.check.expect_status;
            if !(lo..=hi).contains(&got) {
                return Err(ProbeError::Status { got, lo, hi });
            }
            if let Some(want) = &self.check.expect_body {
                let body = Limited::new(resp.into_body(), BODY_LIMIT)
                    .collect()
                    .await
                    .map_err(|e| ProbeError::Body(e.to_string()))?
                    .to_bytes();
                if !contains(&body, want.as_bytes()) {
                    return Err(ProbeError::BodyMismatch(want.clone()));
                }
            }
            Ok(())
        }
        .await;
        driver.abort();
        result
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A client config for probes. Certificates are not verified: a check asks
/// "does the backend complete a handshake", and backends commonly present
/// internal or self-signed certificates. Handshake signatures still are.
fn client_config(alpn: Vec<Vec<u8>>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = AnyCertificate(provider.signature_verification_algorithms);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| {
            // The aws-lc-rs default provider supports the default versions;
            // fall back to TLS 1.3 alone rather than fail a check.
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by aws-lc-rs")
        })
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    config
}

/// Accepts any certificate chain, verifies handshake signatures.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
