//! Connections to backends: one keep-alive client per pool, shared by every
//! connection and thread, kept across reloads while the pool's connection
//! settings stay the same. The client keys idle connections by backend
//! address, so each backend has its own bounded idle set.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fnv::FnvBuildHasher;
use hyper::http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{BodyError, RequestBody};
use crate::config;

/// The settings that shape a pool's connections; a reload that keeps them
/// keeps the pool's open connections.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    http2: bool,
}

impl Settings {
    fn of(p: &config::Pool) -> Self {
        Self {
            connect_timeout: p.connect_timeout,
            idle_timeout: p.idle_timeout,
            max_idle: p.max_idle,
            http2: p.http2,
        }
    }
}

/// The client of one pool.
pub struct Upstream {
    settings: Settings,
    client: Client<HttpConnector, RequestBody>,
    /// Time allowed from sending a request until the response head arrives.
    pub response_timeout: Duration,
    /// Backend addresses as URI authorities, built once.
    authorities: HashMap<SocketAddr, Authority, FnvBuildHasher>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    fn new(p: &config::Pool, reuse: Option<&Upstream>) -> Self {
        let settings = Settings::of(p);
        let client = match reuse {
            Some(old) if old.settings == settings => old.client.clone(),
            _ => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(settings.connect_timeout));
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(settings.idle_timeout)
                    .pool_max_idle_per_host(settings.max_idle)
                    .http2_only(settings.http2)
                    .set_host(false)
                    .build(connector)
            }
        };
        let authorities = p
            .backends
            .iter()
            .filter_map(|b| {
                let a = Authority::try_from(b.address.to_string()).ok()?;
                Some((b.address, a))
            })
            .collect();
        Self {
            settings,
            client,
            response_timeout: p.response_timeout,
            authorities,
        }
    }

    /// Whether requests go to backends over HTTP/2.
    pub fn http2(&self) -> bool {
        self.settings.http2
    }

    /// The client that sends requests to this pool's backends.
    pub fn client(&self) -> &Client<HttpConnector, RequestBody> {
        &self.client
    }

    /// `addr` as a URI authority.
    pub fn authority(&self, addr: SocketAddr) -> Authority {
        self.authorities.get(&addr).cloned().unwrap_or_else(|| {
            Authority::try_from(addr.to_string()).expect("a socket address is an authority")
        })
    }
}

/// The clients of every pool, by pool name.
#[derive(Debug, Default)]
pub struct Upstreams {
    by_pool: HashMap<String, Arc<Upstream>, FnvBuildHasher>,
}

impl Upstreams {
    /// Build a client per pool, reusing `previous` clients (and their open
    /// connections) whose settings did not change.
    pub fn build(config: &config::Config, previous: Option<&Upstreams>) -> Self {
        let by_pool = config
            .pools
            .iter()
            .map(|p| {
                let old = previous.and_then(|u| u.get(&p.name));
                (
                    p.name.clone(),
                    Arc::new(Upstream::new(p, old.map(|o| &**o))),
                )
            })
            .collect();
        Self { by_pool }
    }

    /// The client of the pool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_pool.get(name)
    }
}

/// Why a request could not be forwarded, with the side at fault.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request body grew past the vhost's `max_body_size` (client).
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// Reading the request body from the client failed (client).
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    /// The backend did not accept the connection in time (backend).
    #[error("backend {addr}: connect timed out")]
    ConnectTimeout { addr: SocketAddr },
    /// The backend refused the connection (backend).
    #[error("backend {addr}: connect failed: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// No response head within the pool's `response_timeout` (backend).
    #[error("backend {addr}: no response within {timeout:?}")]
    ResponseTimeout { addr: SocketAddr, timeout: Duration },
    /// The backend reset, closed, or sent something that is not HTTP (backend).
    #[error("backend {addr}: {reason}")]
    Backend { addr: SocketAddr, reason: String },
}

impl ForwardError {
    /// Classify a client error for a request sent to `addr`.
    pub fn classify(e: &hyper_util::client::legacy::Error, addr: SocketAddr) -> Self {
        let mut source: Option<&(dyn StdError + 'static)> = e.source();
        let mut timed_out = false;
        let mut innermost = None;
        while let Some(s) = source {
            if let Some(b) = s.downcast_ref::<BodyError>() {
                return match b {
                    BodyError::TooLarge { limit } => Self::BodyTooLarge { limit: *limit },
                    BodyError::Client(c) => Self::ClientBody(c.to_string()),
                };
            }
            if let Some(io) = s.downcast_ref::<io::Error>() {
                timed_out |= io.kind() == io::ErrorKind::TimedOut;
            }
            innermost = Some(s);
            source = s.source();
        }
        let reason = innermost.map_or_else(|| e.to_string(), |s| s.to_string());
        match (e.is_connect(), timed_out) {
            (true, true) => Self::ConnectTimeout { addr },
            (true, false) => Self::Connect { addr, reason },
            _ => Self::Backend { addr, reason },
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode as S;
        match self {
            Self::BodyTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            Self::ClientBody(_) => S::BAD_REQUEST,
            Self::ConnectTimeout { .. } | Self::ResponseTimeout { .. } => S::GATEWAY_TIMEOUT,
            Self::Connect { .. } | Self::Backend { .. } => S::BAD_GATEWAY,
        }
    }

    /// Whether connecting failed, so the request was never sent.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }

    /// Which side caused the failure: `client` or `backend`.
    pub fn side(&self) -> &'static str {
        match self {
            Self::BodyTooLarge { .. } | Self::ClientBody(_) => "client",
            _ => "backend",
        }
    }
}
