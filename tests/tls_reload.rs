//! Reload: every certificate is re-read; a valid new set serves new
//! handshakes while open connections keep streaming; a broken set (garbage
//! key, missing file, mismatched key) is refused with an exact error and the
//! old certificates keep serving every name.

mod tls_support;

use std::path::PathBuf;
use std::sync::Arc;

use tls_support::*;

const CONFIG: &str = r#"
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
hosts = ["b.test"]
pool = "echo"
certificates = [{ cert = "b.crt", key = "b.key" }]
"#;

struct Fixture {
    dir: TempDir,
    pki: Pki,
    running: Arc<vipd::app::Running>,
    addr: std::net::SocketAddr,
    a: Issued,
    b: Issued,
    client: Arc<rustls::ClientConfig>,
}

impl Fixture {
    async fn start() -> Self {
        let dir = TempDir::new("tls-reload");
        let pki = Pki::new();
        let a = pki.issue(&["a.test"], Alg::Ecdsa);
        let b = pki.issue(&["b.test"], Alg::Ecdsa);
        write_pair(dir.path(), "a", &a);
        write_pair(dir.path(), "b", &b);
        let config = load_config(dir.path(), CONFIG, echo_backend().await);
        let running = vipd::app::Running::start(config).await.unwrap();
        let addr = running.local_addr("front").await.unwrap();
        Self {
            dir,
            pki,
            running,
            addr,
            a,
            b,
            client: Arc::new(client(TLS13_AND_12)),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Both names still get the certificates loaded at start.
    async fn assert_old_set_served(&self) {
        assert_eq!(
            leaf_for(self.addr, "a.test", &self.client).await,
            self.a.der
        );
        assert_eq!(
            leaf_for(self.addr, "b.test", &self.client).await,
            self.b.der
        );
    }

    /// Reload and return the error text.
    async fn failed_reload(&self) -> String {
        self.running.reload().await.unwrap_err().to_string()
    }
}

#[tokio::test]
async fn new_certificates_serve_new_handshakes_while_an_open_connection_keeps_streaming() {
    let f = Fixture::start().await;
    let mut open = connect(f.addr, "a.test", &f.client).await.unwrap();
    assert_eq!(roundtrip(&mut open, b"before").await, b"before");

    let a2 = f.pki.issue(&["a.test"], Alg::Rsa);
    write_pair(f.dir.path(), "a", &a2);
    // The config file is unchanged: the reload re-reads certificates anyway.
    f.running.reload().await.unwrap();

    assert_eq!(leaf_for(f.addr, "a.test", &f.client).await, a2.der);
    assert_eq!(leaf_for(f.addr, "b.test", &f.client).await, f.b.der);
    assert_eq!(
        roundtrip(&mut open, b"after the reload").await,
        b"after the reload"
    );
    assert_eq!(served_leaf(&open), f.a.der);

    // Reloading again with nothing changed is harmless.
    f.running.reload().await.unwrap();
    assert_eq!(leaf_for(f.addr, "a.test", &f.client).await, a2.der);
}

#[tokio::test]
async fn a_garbage_key_fails_the_reload_and_the_old_certificates_keep_serving() {
    let f = Fixture::start().await;
    std::fs::write(f.path("a.key"), "this is not a key\n").unwrap();
    assert_eq!(
        f.failed_reload().await,
        format!(
            "1 certificate error\n  vhost \"a\".certificates[0].key: {}: no PEM private key block found\n    fix: the file must hold one private key in PEM: PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY",
            f.path("a.key").display()
        )
    );
    f.assert_old_set_served().await;
}

#[tokio::test]
async fn a_corrupt_key_block_fails_the_reload_and_the_old_certificates_keep_serving() {
    let f = Fixture::start().await;
    std::fs::write(
        f.path("a.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = f.failed_reload().await;
    assert_eq!(
        err,
        format!(
            "1 certificate error\n  vhost \"a\".certificates[0].key: {}: the private key cannot be used: unexpected error: failed to parse private key as RSA, ECDSA, or EdDSA\n    fix: provide an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key in PEM",
            f.path("a.key").display()
        )
    );
    f.assert_old_set_served().await;
}

#[tokio::test]
async fn a_missing_certificate_file_fails_the_reload_and_the_old_certificates_keep_serving() {
    let f = Fixture::start().await;
    std::fs::remove_file(f.path("b.crt")).unwrap();
    assert_eq!(
        f.failed_reload().await,
        format!(
            "1 certificate error\n  vhost \"b\".certificates[0].cert: {}: cannot read the certificate file: No such file or directory (os error 2)\n    fix: check the path (relative paths start at the configuration file's directory) and the file's permissions",
            f.path("b.crt").display()
        )
    );
    f.assert_old_set_served().await;
}

#[tokio::test]
async fn a_key_of_another_certificate_fails_the_reload_and_the_old_certificates_keep_serving() {
    let f = Fixture::start().await;
    let other = f.pki.issue(&["a.test"], Alg::Ecdsa);
    std::fs::write(f.path("a.key"), &other.key_pem).unwrap();
    assert_eq!(
        f.failed_reload().await,
        format!(
            "1 certificate error\n  vhost \"a\".certificates[0].key: {}: the key does not match the certificate {} (their public keys differ)\n    fix: pair each certificate with the key it was issued for",
            f.path("a.key").display(),
            f.path("a.crt").display()
        )
    );
    f.assert_old_set_served().await;
}

#[tokio::test]
async fn every_broken_pair_is_reported_at_once_and_a_fixed_set_reloads_afterwards() {
    let f = Fixture::start().await;
    std::fs::write(f.path("a.key"), "garbage").unwrap();
    std::fs::remove_file(f.path("b.key")).unwrap();
    let err = f.failed_reload().await;
    assert_eq!(
        err.lines().next(),
        Some("2 certificate errors"),
        "full error: {err}"
    );
    f.assert_old_set_served().await;

    let a2 = f.pki.issue(&["a.test"], Alg::Ecdsa);
    let b2 = f.pki.issue(&["b.test"], Alg::Ecdsa);
    write_pair(f.dir.path(), "a", &a2);
    write_pair(f.dir.path(), "b", &b2);
    f.running.reload().await.unwrap();
    assert_eq!(leaf_for(f.addr, "a.test", &f.client).await, a2.der);
    assert_eq!(leaf_for(f.addr, "b.test", &f.client).await, b2.der);
}

#[tokio::test]
async fn a_reload_that_adds_a_vhost_serves_its_certificate_and_a_broken_one_changes_nothing() {
    let f = Fixture::start().await;
    let with_c = format!(
        "{CONFIG}[[vhost]]\nname = \"c\"\nhosts = [\"c.test\"]\npool = \"echo\"\ncertificates = [{{ cert = \"c.crt\", key = \"c.key\" }}]\n"
    );
    let backend = f.running.snapshot().config.pools[0].backends[0].address;
    write_config(f.dir.path(), &with_c, backend);

    // c.crt and c.key do not exist yet: neither the new vhost nor anything else changes.
    let fix = "check the path (relative paths start at the configuration file's directory) and the file's permissions";
    assert_eq!(
        f.failed_reload().await,
        format!(
            "2 certificate errors\n  vhost \"c\".certificates[0].cert: {}: cannot read the certificate file: No such file or directory (os error 2)\n    fix: {fix}\n  vhost \"c\".certificates[0].key: {}: cannot read the key file: No such file or directory (os error 2)\n    fix: {fix}",
            f.path("c.crt").display(),
            f.path("c.key").display()
        )
    );
    assert_eq!(f.running.snapshot().config.vhosts.len(), 2);
    // Unknown to the running config, c.test gets the default (first) vhost.
    assert_eq!(leaf_for(f.addr, "c.test", &f.client).await, f.a.der);

    let c = f.pki.issue(&["c.test"], Alg::Ecdsa);
    write_pair(f.dir.path(), "c", &c);
    f.running.reload().await.unwrap();
    assert_eq!(f.running.snapshot().config.vhosts.len(), 3);
    let published: Vec<_> = f
        .running
        .snapshot()
        .tls
        .certificates()
        .iter()
        .map(|c| (c.vhost.clone(), c.cert.names.clone(), c.cert.not_after_unix))
        .collect();
    // rcgen's default notAfter: 4096-01-01T00:00:00Z.
    let end = 67_090_118_400;
    assert_eq!(
        published,
        [
            ("a".to_owned(), vec!["a.test".to_owned()], end),
            ("b".to_owned(), vec!["b.test".to_owned()], end),
            ("c".to_owned(), vec!["c.test".to_owned()], end),
        ]
    );
    assert_eq!(leaf_for(f.addr, "c.test", &f.client).await, c.der);
    f.assert_old_set_served().await;
}
