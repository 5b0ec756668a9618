//! Reading and validating one vhost certificate: PEM chain + private key
//! (PKCS#8, PKCS#1 RSA or SEC1 EC), key/certificate match, subjectAltName
//! coverage of the vhost's hosts, and validity dates.
//!
//! Every failure becomes a [`CertProblem`] naming the config field, the file
//! and the fix; all problems of a pair are reported, not just the first.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::CertificateFiles;

/// One thing wrong with a certificate or key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProblem {
    /// Config field, e.g. `vhost "www".certificates[0].key`.
    pub field: String,
    /// The file concerned (resolved path).
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for CertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}\n    fix: {}",
            self.field,
            self.path.display(),
            self.problem,
            self.fix
        )
    }
}

/// A validated certificate chain with its signing key, plus what the
/// reload summary logs about it.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// The chain and key handed to rustls.
    pub certified: Arc<CertifiedKey>,
    /// Resolved path of the chain file.
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate (DER), lower-case hex.
    pub sha256: String,
    /// Key algorithm: `ECDSA`, `RSA` or `Ed25519`.
    pub key_type: String,
    /// DNS names of the leaf's subjectAltName, lower case.
    pub names: Vec<String>,
    /// End of validity, as printed by x509-parser (`Nov 26 23:17:04 2027 +00:00`).
    pub not_after: String,
    /// End of validity, seconds since the epoch (for sorting and alerts).
    pub not_after_unix: i64,
    /// Non-fatal findings (dates accepted with `allow_invalid_dates`).
    pub warnings: Vec<String>,
}

/// Resolve a configured path: relative paths are taken from the directory
/// of the configuration file, so that a service whose working directory is
/// `/` finds the same files as `vipd check` run next to the config.
pub fn resolve_path(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// What [`load_pair`] needs besides the files.
pub struct LoadContext<'a> {
    /// Directory relative paths are resolved against.
    pub base: Option<&'a Path>,
    /// The crypto provider whose key loader parses the private key.
    pub provider: &'a CryptoProvider,
    /// Accept expired / not-yet-valid certificates with a warning.
    pub allow_invalid_dates: bool,
    /// "Now" for date checks (a parameter so tests can move it).
    pub now: SystemTime,
}

/// Read, parse and validate one certificate/key pair of a vhost serving
/// `hosts`. `field` is the config path of the pair, e.g.
/// `vhost "www".certificates[0]`.
pub fn load_pair(
    files: &CertificateFiles,
    hosts: &[String],
    field: &str,
    cx: &LoadContext<'_>,
) -> Result<LoadedCert, Vec<CertProblem>> {
    let cert_path = resolve_path(cx.base, &files.cert);
    let key_path = resolve_path(cx.base, &files.key);
    let cert_field = format!("{field}.cert");
    let key_field = format!("{field}.key");
    let problem = |field: &str, path: &Path, problem: String, fix: &str| CertProblem {
        field: field.to_owned(),
        path: path.to_path_buf(),
        problem,
        fix: fix.to_owned(),
    };
    let mut problems = Vec::new();
    let chain = read_chain(&cert_path).map_err(|(p, fix)| problem(&cert_field, &cert_path, p, fix));
    let key = read_key(&key_path).map_err(|(p, fix)| problem(&key_field, &key_path, p, fix));
    let (chain, key) = match (chain, key) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => {
            problems.extend(c.err());
            problems.extend(k.err());
            return Err(problems);
        }
    };
    let signing_key = match cx.provider.key_provider.load_private_key(key) {
        Ok(k) => k,
        Err(e) => {
            return Err(vec![problem(
                &key_field,
                &key_path,
                format!("the private key cannot be used: {e}"),
                "provide an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key in PEM",
            )]);
        }
    };
    let key_type = format!("{:?}", signing_key.algorithm());
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            problems.push(problem(
                &key_field,
                &key_path,
                format!(
                    "the key does not match the certificate {} (their public keys differ)",
                    cert_path.display()
                ),
                "pair each certificate with the key it was issued for",
            ));
        }
        Err(e) => problems.push(problem(
            &cert_field,
            &cert_path,
            format!("the leaf certificate cannot be parsed: {e}"),
            "provide a valid X.509 certificate in PEM, leaf first",
        )),
    }
    let leaf = certified.cert[0].clone();
    let parsed = match X509Certificate::from_der(leaf.as_ref()) {
        Ok((_, c)) => c,
        Err(e) => {
            problems.push(problem(
                &cert_field,
                &cert_path,
                format!("the leaf certificate cannot be parsed: {e}"),
                "provide a valid X.509 certificate in PEM, leaf first",
            ));
            return Err(problems);
        }
    };
    let names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for host in hosts {
        if !names.iter().any(|n| san_covers(n, host)) {
            problems.push(problem(
                &cert_field,
                &cert_path,
                format!(
                    "the certificate does not cover host {host:?} of the vhost (its subjectAltName DNS names: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
                "use a certificate whose subjectAltName lists the host (or a matching *. wildcard), or remove the host from the vhost",
            ));
        }
    }
    let validity = parsed.validity();
    let now = cx
        .now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let not_before = validity.not_before.timestamp();
    let not_after_unix = validity.not_after.timestamp();
    let not_after = validity.not_after.to_string();
    let mut warnings = Vec::new();
    let date_problem = if now < not_before {
        Some(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ))
    } else if now > not_after_unix {
        Some(format!("the certificate expired on {not_after}"))
    } else {
        None
    };
    if let Some(p) = date_problem {
        if cx.allow_invalid_dates {
            warnings.push(format!(
                "{cert_field}: {}: {p} (served anyway: [tls] allow_invalid_dates = true)",
                cert_path.display()
            ));
        } else {
            problems.push(problem(
                &cert_field,
                &cert_path,
                p,
                "renew the certificate, or set `allow_invalid_dates = true` in [tls] to serve it anyway",
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(LoadedCert {
        certified: Arc::new(certified),
        cert_path,
        sha256: sha256_hex(leaf.as_ref()),
        key_type,
        names,
        not_after,
        not_after_unix,
        warnings,
    })
}

/// Whether a certificate name (`www.example.com` or `*.example.com`)
/// covers a vhost host (exact or `*.` wildcard). A wildcard SAN covers one
/// label; a wildcard host needs the same wildcard in the certificate.
pub fn san_covers(san: &str, host: &str) -> bool {
    if san == host {
        return true;
    }
    match (san.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((label, rest))) => label != "*" && !label.is_empty() && rest == suffix,
        _ => false,
    }
}

type Failure = (String, &'static str);

/// Largest certificate or key file read: a chain of ten 4096-bit
/// certificates takes about 20 KiB.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Read a PEM file of at most [`MAX_PEM_FILE`] bytes, a regular file only
/// (see [`crate::config::read_bounded`]).
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    const FIX: &str = "check the path (relative paths start at the configuration file's directory) and the file's permissions";
    crate::config::read_bounded(path, MAX_PEM_FILE).map_err(|e| match e {
        crate::config::ReadError::Io(e) => (format!("cannot read the {what} file: {e}"), FIX),
        crate::config::ReadError::NotRegular => (
            format!("the {what} file is not a regular file"),
            "name a PEM file (not a device, FIFO or directory)",
        ),
        crate::config::ReadError::TooLarge(max) => (
            format!("the {what} file is larger than {max} bytes"),
            "name the PEM file itself; a certificate chain or key takes a few KiB",
        ),
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let bytes = read_pem(path, "certificate")?;
    let chain: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &bytes[..]).collect();
    match chain {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err((
            "no PEM CERTIFICATE block found".into(),
            "the file must hold the certificate chain in PEM (-----BEGIN CERTIFICATE-----), leaf first",
        )),
        Err(e) => Err((
            format!("the PEM data cannot be parsed: {e}"),
            "the file must hold the certificate chain in PEM (-----BEGIN CERTIFICATE-----), leaf first",
        )),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Failure> {
    const FIX: &str = "the file must hold one private key in PEM: PRIVATE KEY (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY";
    let bytes = read_pem(path, "key")?;
    warn_if_readable_by_others(path);
    match rustls_pemfile::private_key(&mut &bytes[..]) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(("no PEM private key block found".into(), FIX)),
        Err(e) => Err((format!("the PEM data cannot be parsed: {e}"), FIX)),
    }
}

/// A private key that group or others may read is a leak waiting to
/// happen: say so (the key is still used, as nginx does).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "private key file is readable by group or others; fix: chmod 600"
            );
        }
    }
}

/// SHA-256 of `der` as lower-case hex, the fingerprint `openssl x509
/// -fingerprint -sha256` prints (without colons).
pub fn sha256_hex(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::san_covers;

    #[test]
    fn a_wildcard_name_covers_exactly_one_label() {
        assert!(san_covers("www.example.com", "www.example.com"));
        assert!(san_covers("*.example.com", "www.example.com"));
        assert!(san_covers("*.example.com", "*.example.com"));
        assert!(!san_covers("*.example.com", "example.com"));
        assert!(!san_covers("*.example.com", "a.b.example.com"));
        assert!(!san_covers("www.example.com", "*.example.com"));
        assert!(!san_covers("api.example.com", "www.example.com"));
    }
}
