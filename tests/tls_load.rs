//! Load-time validation of certificates (names, dates, paths) and
//! `vipd gen-cert`.

mod tls_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use tls_support::*;
use vipd::tls::{CertProblem, TlsState};

fn config(hosts: &str, tls: &str) -> String {
    format!(
        r#"
[tls]
{tls}
[[listener]]
name = "front"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "echo"
[[pool]]
name = "echo"
backends = [{{ address = "127.0.0.1:9" }}]
[[vhost]]
name = "www"
hosts = [{hosts}]
pool = "echo"
certificates = [{{ cert = "www.crt", key = "www.key" }}]
"#
    )
}

fn build(dir: &TempDir, hosts: &str, tls: &str) -> Result<TlsState, vipd::tls::TlsError> {
    let backend = "127.0.0.1:9".parse().unwrap();
    let cfg = load_config(dir.path(), &config(hosts, tls), backend);
    TlsState::build(&cfg, None)
}

#[test]
fn a_certificate_that_does_not_cover_a_host_of_its_vhost_names_both() {
    let dir = TempDir::new("tls-san");
    write_pair(
        dir.path(),
        "www",
        &Pki::new().issue(&["www.example.test", "*.img.example.test"], Alg::Ecdsa),
    );
    let err = build(
        &dir,
        r#""www.example.test", "a.img.example.test", "api.example.test""#,
        "",
    )
    .unwrap_err();
    assert_eq!(
        err.problems(),
        [CertProblem {
            field: "vhost \"www\".certificates[0].cert".into(),
            path: dir.path().join("www.crt"),
            problem: "the certificate does not cover host \"api.example.test\" of the vhost (its subjectAltName DNS names: www.example.test, *.img.example.test)".into(),
            fix: "use a certificate whose subjectAltName lists the host (or a matching *. wildcard), or remove the host from the vhost".into(),
        }]
    );
}

#[test]
fn an_expired_certificate_is_an_error_unless_invalid_dates_are_allowed() {
    let dir = TempDir::new("tls-expired");
    let issued = Pki::new().issue_dated(
        &["www.example.test"],
        Alg::Ecdsa,
        Some(((2020, 1, 1), (2021, 1, 1))),
    );
    write_pair(dir.path(), "www", &issued);
    let err = build(&dir, r#""www.example.test""#, "").unwrap_err();
    assert_eq!(
        err.problems(),
        [CertProblem {
            field: "vhost \"www\".certificates[0].cert".into(),
            path: dir.path().join("www.crt"),
            problem: "the certificate expired on Jan  1 00:00:00 2021 +00:00".into(),
            fix: "renew the certificate, or set `allow_invalid_dates = true` in [tls] to serve it anyway".into(),
        }]
    );
    let state = build(&dir, r#""www.example.test""#, "allow_invalid_dates = true").unwrap();
    assert_eq!(
        state.warnings(),
        [format!(
            "vhost \"www\".certificates[0].cert: {}: the certificate expired on Jan  1 00:00:00 2021 +00:00 (served anyway: [tls] allow_invalid_dates = true)",
            dir.path().join("www.crt").display()
        )]
    );
}

#[test]
fn a_certificate_not_valid_yet_is_an_error() {
    let dir = TempDir::new("tls-future");
    let issued = Pki::new().issue_dated(
        &["www.example.test"],
        Alg::Ecdsa,
        Some(((2090, 1, 1), (2091, 1, 1))),
    );
    write_pair(dir.path(), "www", &issued);
    let err = build(&dir, r#""www.example.test""#, "").unwrap_err();
    assert_eq!(err.problems().len(), 1);
    assert_eq!(
        err.problems()[0].problem,
        "the certificate is not valid before Jan  1 00:00:00 2090 +00:00"
    );
}

#[test]
fn relative_paths_are_read_from_the_config_files_directory_and_summarised() {
    let dir = TempDir::new("tls-relative");
    let issued = Pki::new().issue(&["www.example.test"], Alg::Rsa);
    write_pair(dir.path(), "www", &issued);
    let state = build(&dir, r#""www.example.test""#, "").unwrap();
    let certs = state.certificates();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].vhost, "www");
    assert_eq!(certs[0].cert.cert_path, dir.path().join("www.crt"));
    assert_eq!(certs[0].cert.key_type, "RSA");
    assert_eq!(certs[0].cert.names, ["www.example.test"]);
    assert_eq!(certs[0].cert.not_after, "Jan  1 00:00:00 4096 +00:00");
    assert_eq!(
        certs[0].cert.sha256,
        vipd::tls::load::sha256_hex(&issued.der)
    );
    assert_eq!(certs[0].cert.sha256.len(), 64);
}

#[test]
fn gen_cert_writes_a_certificate_vipd_accepts_and_a_key_only_its_owner_reads() {
    let dir = TempDir::new("tls-gencert");
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args([
            "gen-cert",
            "--names",
            "www.example.test,*.example.test",
            "--out-dir",
        ])
        .arg(dir.path())
        .args(["--stem", "www"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |f: &str| {
        std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("www.key"), 0o600);
    assert_eq!(mode("www.crt"), 0o644);
    let state = build(&dir, r#""www.example.test", "api.example.test""#, "").unwrap();
    let cert = &state.certificates()[0].cert;
    assert_eq!(cert.names, ["www.example.test", "*.example.test"]);
    assert_eq!(cert.key_type, "ECDSA");

    let again = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args([
            "gen-cert",
            "--names",
            "www.example.test",
            "--key-type",
            "rsa",
            "--out-dir",
        ])
        .arg(dir.path())
        .args(["--stem", "www"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        format!(
            "vipd: {}: already exists; pass --force to overwrite it\n",
            dir.path().join("www.crt").display()
        )
    );
    let forced = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args([
            "gen-cert",
            "--names",
            "www.example.test",
            "--key-type",
            "rsa",
            "--force",
            "--out-dir",
        ])
        .arg(dir.path())
        .args(["--stem", "www"])
        .output()
        .unwrap();
    assert!(forced.status.success());
    assert_eq!(mode("www.key"), 0o600);
    let state = build(&dir, r#""www.example.test""#, "").unwrap();
    assert_eq!(state.certificates()[0].cert.key_type, "RSA");
}

#[test]
fn vipd_check_loads_the_certificates_and_fails_on_a_bad_one() {
    let dir = TempDir::new("tls-check");
    write_pair(
        dir.path(),
        "www",
        &Pki::new().issue(&["www.example.test"], Alg::Ecdsa),
    );
    let path = write_config(
        dir.path(),
        &config(r#""www.example.test""#, ""),
        "127.0.0.1:9".parse().unwrap(),
    );
    let ok = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(dir.path().join("www.key"), "garbage").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        format!(
            "{}: 1 certificate error\n  vhost \"www\".certificates[0].key: {}: no PEM private key block found\n    fix: the file must hold one private key in PEM: PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY\n",
            path.display(),
            dir.path().join("www.key").display()
        )
    );
}
