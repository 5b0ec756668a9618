//! TLS termination: certificates per vhost, SNI selection, rustls server
//! configs per listener, session resumption, and reload.
//!
//! [`TlsState::build`] turns a [`Config`] into one immutable value: every
//! certificate of every vhost served over TLS, read from disk and validated,
//! and one [`Acceptor`] (a rustls `ServerConfig` with an [`SniResolver`]) per
//! `tls`/`https` listener. It lives in the proxy snapshot (one `ArcSwap` with
//! the config and pools), so a reload swaps config and certificates together
//! and a failed certificate load leaves the whole previous snapshot serving.
//! Only the [`Resumption`] state (ticketer, session cache) is carried over
//! from the previous `TlsState`.
//!
//! - [`load`]: PEM files to a validated `CertifiedKey`.
//! - [`resolver`]: SNI lookup (exact, wildcard, default or strict).
//! - [`reload`]: state kept across reloads and the reload summary.
//! - [`gencert`]: self-signed certificates for `vipd gen-cert`.

pub mod gencert;
pub mod load;
pub mod reload;
pub mod resolver;
mod session;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::version::{TLS12, TLS13};
use tokio::io::{AsyncRead, AsyncWrite};

pub use load::{CertProblem, LoadedCert};
pub use reload::Resumption;
pub use resolver::{CertList, SniResolver};

use crate::config::{Config, Protocol, TlsVersion};

/// Why the TLS state could not be built; nothing was swapped.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificates or keys failed to load or validate; all are listed.
    #[error("{}", render(.0))]
    Certificates(Vec<CertProblem>),
    /// rustls refused a server configuration (should not happen with a
    /// validated config).
    #[error("listener {listener:?}: cannot build the TLS configuration: {source}")]
    Config {
        listener: String,
        #[source]
        source: rustls::Error,
    },
    /// The session ticket key could not be generated.
    #[error("cannot create the TLS session ticket key: {0}")]
    Ticketer(#[source] rustls::Error),
}

impl TlsError {
    /// The certificate problems (empty for other errors).
    pub fn problems(&self) -> &[CertProblem] {
        match self {
            TlsError::Certificates(p) => p,
            _ => &[],
        }
    }
}

fn render(problems: &[CertProblem]) -> String {
    let mut out = format!(
        "{} certificate error{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The handshake failed (bad client hello, no certificate for the name
    /// under `strict_sni`, no common version or ALPN, I/O error).
    #[error("TLS handshake failed: {0}")]
    Failed(#[source] std::io::Error),
}

/// A server-side TLS stream as returned by [`Acceptor::accept`].
pub type ServerTlsStream<IO> = tokio_rustls::server::TlsStream<IO>;

/// Terminates TLS for one listener: its rustls `ServerConfig` and the
/// handshake deadline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Acceptor {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl Acceptor {
    /// The rustls configuration (ALPN, versions, resolver, resumption), for
    /// callers that drive the handshake themselves.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The listener's `handshake_timeout`.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Run the server handshake on `io` under the listener's
    /// `handshake_timeout`. Call it in the connection's task, never in the
    /// accept loop. The negotiated ALPN protocol is
    /// `stream.get_ref().1.alpn_protocol()`.
    pub async fn accept<IO>(&self, io: IO) -> Result<ServerTlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(io)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::Timeout(self.handshake_timeout)),
        }
    }
}

/// One loaded certificate and where it is configured.
#[derive(Debug, Clone)]
pub struct VhostCert {
    /// The vhost's name.
    pub vhost: String,
    /// Index in the vhost's `certificates`.
    pub index: usize,
    /// The validated certificate.
    pub cert: LoadedCert,
}

/// Every certificate in service and one [`Acceptor`] per TLS listener,
/// built and validated as a whole.
#[derive(Debug, Clone)]
pub struct TlsState {
    acceptors: HashMap<String, Acceptor>,
    certificates: Vec<VhostCert>,
    warnings: Vec<String>,
    resumption: Resumption,
}

impl TlsState {
    /// Read and validate every certificate of every vhost served by a
    /// `tls` or `https` listener, and build each listener's acceptor.
    /// Resumption state comes from `previous` when given. Any problem fails
    /// the whole build, listing every problem found.
    pub fn build(config: &Config, previous: Option<&TlsState>) -> Result<Self, TlsError> {
        Self::build_at(config, previous, SystemTime::now())
    }

    /// [`TlsState::build`] with the date checks done at `now`.
    pub fn build_at(
        config: &Config,
        previous: Option<&TlsState>,
        now: SystemTime,
    ) -> Result<Self, TlsError> {
        let settings = &config.tls;
        let resumption = match previous {
            Some(p) => p.resumption.carry_over(settings),
            None => Resumption::new(settings).map_err(TlsError::Ticketer)?,
        };
        let base = config.source.as_deref().and_then(|p| p.parent());
        let cx = load::LoadContext {
            base,
            provider: &resumption.provider,
            allow_invalid_dates: settings.allow_invalid_dates,
            now,
        };
        let tls_listeners: Vec<_> = config
            .listeners
            .iter()
            .filter(|l| l.protocol.is_tls())
            .collect();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut certificates = Vec::new();
        let mut per_vhost: HashMap<&str, CertList> = HashMap::new();
        let over_tls: HashSet<&str> = tls_listeners
            .iter()
            .flat_map(|l| l.vhosts.iter().map(String::as_str))
            .collect();
        for v in &config.vhosts {
            if !over_tls.contains(v.name.as_str()) {
                continue;
            }
            let mut list = Vec::new();
            for (i, files) in v.certificates.iter().enumerate() {
                let field = format!("vhost {:?}.certificates[{i}]", v.name);
                match load::load_pair(files, &v.hosts, &field, &cx) {
                    Ok(c) => {
                        warnings.extend(c.warnings.iter().cloned());
                        list.push(c.certified.clone());
                        certificates.push(VhostCert {
                            vhost: v.name.clone(),
                            index: i,
                            cert: c,
                        });
                    }
                    Err(p) => problems.extend(p),
                }
            }
            per_vhost.insert(&v.name, list.into());
        }
        if !problems.is_empty() {
            return Err(TlsError::Certificates(problems));
        }
        let mut acceptors = HashMap::new();
        for l in tls_listeners {
            let default = if l.strict_sni {
                None
            } else {
                l.default_vhost
                    .as_deref()
                    .or(l.vhosts.first().map(String::as_str))
                    .and_then(|d| per_vhost.get(d).cloned())
            };
            let mut resolver = SniResolver::new(default);
            for name in &l.vhosts {
                let (Some(v), Some(certs)) = (config.vhost(name), per_vhost.get(name.as_str()))
                else {
                    continue;
                };
                for h in &v.hosts {
                    if !resolver.insert(h, certs.clone()) {
                        warnings.push(format!(
                            "listener {:?}: host {h:?} of vhost {:?} is already served by an earlier vhost; the earlier one's certificate is used",
                            l.name, v.name
                        ));
                    }
                }
            }
            let server = server_config(
                l,
                config.tls.min_version,
                settings.session_tickets,
                &resumption,
                resolver,
            )
            .map_err(|source| TlsError::Config {
                listener: l.name.clone(),
                source,
            })?;
            acceptors.insert(
                l.name.clone(),
                Acceptor {
                    config: Arc::new(server),
                    handshake_timeout: l.handshake_timeout,
                },
            );
        }
        Ok(Self {
            acceptors,
            certificates,
            warnings,
            resumption,
        })
    }

    /// The acceptor of the `tls`/`https` listener called `listener`.
    pub fn acceptor(&self, listener: &str) -> Option<&Acceptor> {
        self.acceptors.get(listener)
    }

    /// Every certificate in service, in configuration order.
    pub fn certificates(&self) -> &[VhostCert] {
        &self.certificates
    }

    /// Non-fatal findings of the build (dates accepted by
    /// `allow_invalid_dates`, hosts claimed by two vhosts).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The resumption state shared by all listeners.
    pub fn resumption(&self) -> &Resumption {
        &self.resumption
    }

    /// Log the certificates in service and any warnings.
    pub fn log_summary(&self) {
        reload::log_summary(self);
    }
}

/// Build the rustls server configuration of one listener.
fn server_config(
    l: &crate::config::Listener,
    min_version: TlsVersion,
    tickets: bool,
    resumption: &Resumption,
    resolver: SniResolver,
) -> Result<ServerConfig, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&TLS13, &TLS12],
        TlsVersion::Tls13 => &[&TLS13],
    };
    let mut cfg = ServerConfig::builder_with_provider(resumption.provider.clone())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    if l.protocol == Protocol::Https {
        cfg.alpn_protocols = l.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    }
    cfg.session_storage = resumption.cache.clone();
    if tickets {
        cfg.ticketer = resumption.ticketer.clone();
    }
    Ok(cfg)
}

/// Load and validate every certificate `config` serves over TLS, without
/// binding anything (for `vipd check`). Returns the state built, whose
/// [`TlsState::certificates`] and [`TlsState::warnings`] can be printed.
pub fn check(config: &Config) -> Result<TlsState, TlsError> {
    TlsState::build(config, None)
}

impl fmt::Display for VhostCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vhost {:?}.certificates[{}]: {} {} [{}] sha256 {} expires {}",
            self.vhost,
            self.index,
            self.cert.cert_path.display(),
            self.cert.key_type,
            self.cert.names.join(", "),
            self.cert.sha256,
            self.cert.not_after
        )
    }
}
