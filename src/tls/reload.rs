//! What survives a reload, and what a reload reports.
//!
//! A reload rebuilds every certificate and every rustls `ServerConfig`
//! (see [`super::TlsState::build`]), but the session-resumption state is
//! carried from the previous [`super::TlsState`]: one rotating ticketer and
//! one server-side session cache shared by every listener, so tickets and
//! session ids issued before a reload still resume after it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ProducesTickets, StoresServerSessions};
use tracing::{info, warn};

use super::TlsState;
use super::session::{TimedCache, TimedTickets};
use crate::config::TlsSettings;

/// Crypto provider, ticketer and session cache shared by all listeners and
/// kept across reloads.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// aws-lc-rs, passed explicitly to every `ServerConfig` (no reliance on
    /// a process-wide default provider).
    pub provider: Arc<CryptoProvider>,
    /// Stateless tickets: AES-256 + HMAC-SHA256 keys rotated every 6 hours
    /// by rustls' `TicketRotator`, each ticket valid `ticket_lifetime`.
    pub ticketer: Arc<dyn ProducesTickets>,
    /// Server-side cache for session ids (TLS 1.2) and stateful TLS 1.3
    /// tickets, `session_cache_size` entries of `session_timeout` each.
    pub cache: Arc<dyn StoresServerSessions>,
    /// The ticketer and cache under the lifetimes, kept when a reload
    /// changes only a lifetime.
    keys: Arc<dyn ProducesTickets>,
    store: Arc<dyn StoresServerSessions>,
    cache_size: usize,
}

impl Resumption {
    /// Fresh state for `settings`.
    pub fn new(settings: &TlsSettings) -> Result<Self, rustls::Error> {
        Ok(Self::timed(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            rustls::crypto::aws_lc_rs::Ticketer::new()?,
            new_cache(settings.session_cache_size),
            settings,
        ))
    }

    fn timed(
        provider: Arc<CryptoProvider>,
        keys: Arc<dyn ProducesTickets>,
        store: Arc<dyn StoresServerSessions>,
        settings: &TlsSettings,
    ) -> Self {
        Self {
            provider,
            ticketer: Arc::new(TimedTickets {
                inner: keys.clone(),
                lifetime: settings.ticket_lifetime,
            }),
            cache: Arc::new(TimedCache {
                inner: store.clone(),
                lifetime: settings.session_timeout,
            }),
            keys,
            store,
            cache_size: settings.session_cache_size,
        }
    }

    /// The state to use after a reload to `settings`: everything is kept,
    /// except the session cache when its size changed; new lifetimes apply
    /// to sessions and tickets issued before.
    pub fn carry_over(&self, settings: &TlsSettings) -> Self {
        let mut store = self.store.clone();
        if settings.session_cache_size != self.cache_size {
            info!(
                from = self.cache_size,
                to = settings.session_cache_size,
                "TLS session cache resized; cached sessions are dropped"
            );
            store = new_cache(settings.session_cache_size);
        }
        Self::timed(self.provider.clone(), self.keys.clone(), store, settings)
    }
}

fn new_cache(size: usize) -> Arc<dyn StoresServerSessions> {
    if size == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(size)
    }
}

/// Certificates with fewer days left than this are logged at WARN at start
/// and on every reload, and highlighted on the status page (Let's Encrypt
/// clients renew at 30 days left; 21 leaves room for a failed renewal).
pub const EXPIRY_WARN_DAYS: i64 = 21;

/// Log every certificate in service (vhost, names, fingerprint, expiry),
/// a warning for each that expires within [`EXPIRY_WARN_DAYS`], and every
/// warning found while loading.
pub fn log_summary(state: &TlsState) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for c in state.certificates() {
        let days_left = (c.cert.not_after_unix - now).div_euclid(86_400);
        info!(
            vhost = %c.vhost,
            index = c.index,
            names = %c.cert.names.join(","),
            key = %c.cert.key_type,
            sha256 = %c.cert.sha256,
            not_after = %c.cert.not_after,
            days_left,
            file = %c.cert.cert_path.display(),
            "certificate in service"
        );
        if days_left < EXPIRY_WARN_DAYS {
            warn!(
                vhost = %c.vhost,
                index = c.index,
                names = %c.cert.names.join(","),
                not_after = %c.cert.not_after,
                days_left,
                file = %c.cert.cert_path.display(),
                "certificate expires in less than {EXPIRY_WARN_DAYS} days; renew it and reload"
            );
        }
    }
    for w in state.warnings() {
        warn!("{w}");
    }
}
