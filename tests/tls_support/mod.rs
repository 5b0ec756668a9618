//! Fixtures for the TLS tests: an rcgen test PKI, temporary directories,
//! echo backends, vipd started in-process, and rustls clients.

// Each test crate uses a different subset of these fixtures, and `pub` is
// how the including test crate reaches them.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vipd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Key algorithm of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Ecdsa,
    Rsa,
}

/// A leaf certificate issued by the test CA.
#[derive(Clone)]
pub struct Issued {
    /// Leaf then CA, PEM.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The leaf, DER (what the client sees first).
    pub der: Vec<u8>,
}

impl Issued {
    /// The key as PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) PEM,
    /// unwrapped from the PKCS#8 `privateKey` OCTET STRING.
    pub fn key_pem_traditional(&self, alg: Alg) -> String {
        let inner = pkcs8_private_key(&self.key_der);
        let label = match alg {
            Alg::Rsa => "RSA PRIVATE KEY",
            Alg::Ecdsa => "EC PRIVATE KEY",
        };
        pem(label, inner)
    }
}

/// A date as (year, month, day).
pub type Ymd = (i32, u8, u8);

/// The test certificate authority.
pub struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vipd test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Self { ca, ca_key }
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A leaf for `names`, valid now (rcgen's default dates: 1975 to 4096).
    pub fn issue(&self, names: &[&str], alg: Alg) -> Issued {
        self.issue_dated(names, alg, None)
    }

    /// A leaf for `names` valid between two dates (year, month, day).
    pub fn issue_dated(&self, names: &[&str], alg: Alg, dates: Option<(Ymd, Ymd)>) -> Issued {
        let key = match alg {
            Alg::Ecdsa => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            Alg::Rsa => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .unwrap()
            }
        };
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        if let Some(((y1, m1, d1), (y2, m2, d2))) = dates {
            params.not_before = rcgen::date_time_ymd(y1, m1, d1);
            params.not_after = rcgen::date_time_ymd(y2, m2, d2);
        }
        let leaf = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Issued {
            chain_pem: format!("{}{}", leaf.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            der: leaf.der().to_vec(),
        }
    }
}

/// Write `issued` as `dir/<stem>.crt` and `dir/<stem>.key`.
pub fn write_pair(dir: &Path, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &issued.chain_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert, key)
}

fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER element: (tag, content, rest).
fn der(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = b[0];
    let (len, hdr) = if b[1] < 0x80 {
        (b[1] as usize, 2)
    } else {
        let n = (b[1] & 0x7f) as usize;
        let len = b[2..2 + n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, 2 + n)
    };
    (tag, &b[hdr..hdr + len], &b[hdr + len..])
}

/// PKCS#8 PrivateKeyInfo: SEQUENCE { version, algorithm, privateKey OCTET STRING }.
fn pkcs8_private_key(pkcs8: &[u8]) -> &[u8] {
    let (_, seq, _) = der(pkcs8);
    let (_, _, rest) = der(seq); // version
    let (_, _, rest) = der(rest); // algorithm
    let (tag, key, _) = der(rest);
    assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
    key
}

/// A backend that echoes every byte back, on 127.0.0.1:0.
pub async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Accepts any certificate chain (the tests compare the served leaf
/// byte for byte instead) but checks handshake signatures for real, and
/// offers only `schemes` in the ClientHello.
#[derive(Debug)]
pub struct AnyChain {
    schemes: Vec<SignatureScheme>,
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

impl ServerCertVerifier for AnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

pub const TLS13_AND_12: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
pub const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
pub const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A client that accepts any chain and offers every signature scheme.
/// Resumption is off: a resumed handshake carries no certificate, and the
/// tests compare the certificate served.
pub fn client(versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
    let schemes = provider()
        .signature_verification_algorithms
        .supported_schemes();
    client_with_schemes(versions, schemes)
}

/// A client offering only `schemes` in signature_algorithms.
pub fn client_with_schemes(
    versions: &[&'static SupportedProtocolVersion],
    schemes: Vec<SignatureScheme>,
) -> ClientConfig {
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyChain { schemes }))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg
}

/// A client that verifies the chain against the test CA, as a browser would.
pub fn verifying_client(pki: &Pki) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(TLS13_AND_12)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg
}

/// Handshake with `addr` presenting SNI `name` (unless the config has
/// `enable_sni = false`).
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    cfg: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(cfg.clone());
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake finished within 10 s")
}

/// The DER of the leaf certificate the server presented.
pub fn served_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Send `msg` and read the same number of bytes back.
pub async fn roundtrip(s: &mut TlsStream<TcpStream>, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo within 10 s")
        .unwrap();
    buf
}

/// Handshake, check the echo through the proxy, and return the leaf served.
pub async fn leaf_for(addr: SocketAddr, name: &str, cfg: &Arc<ClientConfig>) -> Vec<u8> {
    let mut s = connect(addr, name, cfg).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"ping").await, b"ping");
    served_leaf(&s)
}

/// A config file with `body` (which may use `{backend}` and `{dir}`),
/// written to `dir/vipd.toml` and loaded.
pub fn load_config(dir: &Path, body: &str, backend: SocketAddr) -> vipd::config::Config {
    let path = write_config(dir, body, backend);
    vipd::config::load(&path).unwrap()
}

/// Write the config file and return its path.
pub fn write_config(dir: &Path, body: &str, backend: SocketAddr) -> PathBuf {
    let text = body
        .replace("{backend}", &backend.to_string())
        .replace("{dir}", &dir.display().to_string());
    let path = dir.join("vipd.toml");
    std::fs::write(&path, text).unwrap();
    path
}
