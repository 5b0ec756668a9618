//! Self-signed certificates for development and the demo (`vipd gen-cert`),
//! the equivalent of the LVS guide's `make nginx.crt`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Key algorithm of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (the default: small and fast).
    EcdsaP256,
    /// RSA 2048 with SHA-256, for old clients.
    Rsa2048,
}

/// A generated certificate and key, both PEM.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The self-signed certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// Why generating or writing a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum GenCertError {
    /// The name list was empty.
    #[error("no names given: pass at least one DNS name")]
    NoNames,
    /// rcgen refused a name or failed to generate the key.
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Creating the directory or writing a file failed.
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file exists and `force` was not given.
    #[error("{0}: already exists; pass --force to overwrite it")]
    Exists(PathBuf),
}

/// Generate a self-signed certificate for `names` (DNS names, `*.`
/// wildcards allowed; the first is also the subject CN), valid from one
/// hour ago for `days` days.
pub fn generate(names: &[String], key_type: KeyType, days: u32) -> Result<Generated, GenCertError> {
    let first = names.first().ok_or(GenCertError::NoNames)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, first.as_str());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(Duration::from_secs(3600));
    params.not_after = epoch + now + Duration::from_secs(u64::from(days) * 86_400);
    let key = match key_type {
        KeyType::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        KeyType::Rsa2048 => {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        }
    };
    let cert = params.self_signed(&key)?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The file stem for `name`: `*.example.com` becomes `wildcard.example.com`.
pub fn stem_for(name: &str) -> String {
    match name.strip_prefix("*.") {
        Some(rest) => format!("wildcard.{rest}"),
        None => name.to_owned(),
    }
}

/// Write `g` as `dir/<stem>.crt` (mode 0644) and `dir/<stem>.key` (mode
/// 0600), creating `dir`. Existing files are kept unless `force`.
/// Returns the certificate and key paths.
pub fn write(
    g: &Generated,
    dir: &Path,
    stem: &str,
    force: bool,
) -> Result<(PathBuf, PathBuf), GenCertError> {
    let io = |path: &Path, action| {
        let path = path.to_path_buf();
        move |source| GenCertError::Io {
            path,
            action,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir, "cannot create the directory"))?;
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    for p in [&cert, &key] {
        if !force && p.exists() {
            return Err(GenCertError::Exists(p.clone()));
        }
    }
    write_mode(&key, g.key_pem.as_bytes(), 0o600).map_err(io(&key, "cannot write the key"))?;
    write_mode(&cert, g.cert_pem.as_bytes(), 0o644)
        .map_err(io(&cert, "cannot write the certificate"))?;
    Ok((cert, key))
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // An existing file keeps its old mode on open; force it before writing.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()
}
