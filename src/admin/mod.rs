//! The admin endpoint: a separate HTTP/1.1 listener (127.0.0.1 by default,
//! never a VIP) serving Prometheus metrics, JSON views of the running state,
//! a read-only status page, and a few writes: backend weight/drain and
//! reload. An optional bearer token guards every path; it is required
//! (validation refuses the file without it) unless the endpoint listens on
//! loopback. Every request must be addressed to the endpoint itself and
//! come from no other web origin ([`guard`]). Each connection serves one
//! request under `header_timeout` and `request_timeout`, and at most
//! `max_connections` are served at once.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/` | HTML status page (static; its script reads `/api/status`) |
//! | GET | `/metrics` | Prometheus text 0.0.4, or OpenMetrics if `Accept` asks |
//! | GET | `/api/status` | everything the status page shows, in one document |
//! | GET | `/api/listeners` | listeners and their counters |
//! | GET | `/api/pools`, `/api/pools/{pool}` | pools, backends, health, weights |
//! | GET | `/api/persistence` | persistence groups |
//! | GET | `/api/persistence/entries` | every group's entries (`vipd persistence list`) |
//! | GET | `/api/certificates` | served certificates and expiry |
//! | GET | `/api/ipvs` | IPVS services and real-server health |
//! | POST | `/api/pools/{pool}/backends/{addr}/weight` | body `{"weight": N}` or `{"weight": null}` |
//! | POST | `/api/pools/{pool}/backends/{addr}/drain` | weight 0: no new connections |
//! | POST | `/api/pools/{pool}/backends/{addr}/undrain` | back to the configured weight |
//! | POST | `/api/reload` | same as SIGHUP |

pub mod client;
mod guard;
mod history;
mod page;
mod prom;
mod views;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config;
use crate::health::IpvsHealth;
use crate::metrics::Metrics;
use crate::proxy::SharedSnapshot;

pub use history::PageState;

/// Largest request body the admin API reads.
const BODY_LIMIT: usize = 4096;

/// Actions the admin API asks of the running application.
pub trait Control: Send + Sync {
    /// Re-read and apply the configuration file, as SIGHUP does.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listen address could not be bound.
    #[error("admin endpoint: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The token file could not be read.
    #[error("admin endpoint: cannot read token_file {path}: {source}")]
    TokenRead {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The token file holds no token.
    #[error("admin endpoint: token_file {path} is empty; put the bearer token in it")]
    TokenEmpty { path: std::path::PathBuf },
}

/// Read the bearer token from `path` (surrounding whitespace ignored). Only
/// a regular file of at most 64 KiB is read: a FIFO would hold the reload,
/// `/dev/zero` would fill memory.
pub fn read_token(path: &Path) -> Result<String, AdminError> {
    const MAX: u64 = 64 * 1024;
    let text = config::read_bounded_text(path, MAX).map_err(|e| match e {
        config::ReadError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    });
    let text = text.map_err(|source| AdminError::TokenRead {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AdminError::TokenEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Everything the admin endpoint reads and the handles it acts through.
pub struct AdminState {
    /// The live snapshot: config, pools and backend state, TLS state.
    pub snapshot: SharedSnapshot,
    /// Listener, persistence and reload counters.
    pub metrics: Arc<Metrics>,
    /// Health of IPVS real servers.
    pub ipvs_health: Arc<IpvsHealth>,
    /// The bearer token, swapped on reload; `None` = no authentication.
    pub token: ArcSwapOption<String>,
    /// Weak, so that the admin task does not keep the application alive.
    pub control: Weak<dyn Control>,
    /// Rate history and cached summaries for the status page.
    pub page: PageState,
}

/// Bind the admin listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serve the admin API on `listener` until `stop` is cancelled.
///
/// At most `max_connections` are served at once (read at start, like a
/// listener's caps); the loop waits for a free slot before accepting, so
/// excess connections wait in the kernel backlog as HAProxy's `maxconn`
/// makes them. A connection serves one request (no keep-alive): its head
/// must arrive within `header_timeout`, and the whole exchange must be done
/// within `request_timeout` of the accept, or the connection is closed.
pub async fn run(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let addr = listener
        .local_addr()
        .map_or_else(|e| format!("(unknown: {e})"), |a| a.to_string());
    // Defaults while a reload has removed the `[admin]` section and this
    // endpoint has not been stopped yet.
    let settings = || {
        state.snapshot.load().config.admin.as_ref().map_or(
            (
                config::Admin::DEFAULT_MAX_CONNECTIONS,
                config::Admin::DEFAULT_HEADER_TIMEOUT,
                config::Admin::DEFAULT_REQUEST_TIMEOUT,
            ),
            |a| (a.max_connections, a.header_timeout, a.request_timeout),
        )
    };
    let slots = Arc::new(Semaphore::new(settings().0));
    tokio::spawn(sample_history(state.clone(), stop.clone()));
    info!(%addr, max_connections = settings().0, "admin endpoint listening");
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let (_, header_timeout, request_timeout) = settings();
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state, peer, local).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = stop.cancelled() => {}
                r = tokio::time::timeout(request_timeout, conn) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, side = "client", error = %e, "admin connection ended"),
                    Err(_) => warn!(%peer, side = "client",
                        timeout_ms = request_timeout.as_millis() as u64,
                        "admin request not done within request_timeout; closing"),
                },
            }
        });
    }
    debug!("admin endpoint stopped");
}

/// Sample the listeners' rates every [`history::INTERVAL`] until `stop`.
async fn sample_history(state: Arc<AdminState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(history::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => state.page.rates.sample(&state.metrics),
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Reply {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

/// Compare without an early exit, so response time does not leak how much
/// of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, state: &AdminState) -> bool {
    let Some(token) = state.token.load_full() else {
        return true;
    };
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

/// Decode `%XX` escapes (for IPv6 backend addresses in paths).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a request changes state (and so, off loopback, needs a token).
fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

async fn handle(
    req: Request<Incoming>,
    state: &AdminState,
    peer: SocketAddr,
    local: SocketAddr,
) -> Reply {
    let hosts = state
        .snapshot
        .load()
        .config
        .admin
        .as_ref()
        .map(|a| a.hosts.clone())
        .unwrap_or_default();
    let target = req.uri().authority().map(|a| a.as_str());
    if let Err(why) = guard::check(req.headers(), target, local, &hosts) {
        warn!(%peer, side = "client", method = %req.method(), path = req.uri().path(),
            reason = %why, "admin request refused");
        return error(StatusCode::FORBIDDEN, why.to_string());
    }
    // Validation requires a token off loopback; this keeps the rule even if
    // a configuration got here without one.
    let loopback = local.ip().to_canonical().is_loopback();
    if mutating(req.method()) && !loopback && state.token.load().is_none() {
        warn!(%peer, side = "client", "admin write refused: no token off loopback");
        return error(
            StatusCode::FORBIDDEN,
            "writes off loopback need admin.token_file to be set",
        );
    }
    // The page is a static document with no state in it: a browser cannot
    // send a bearer token when it opens a URL, so the page is served
    // without one and its script sends the token with each fetch.
    if req.method() == Method::GET && req.uri().path() == "/" {
        return status_page();
    }
    if !authorized(&req, state) {
        warn!(%peer, path = req.uri().path(), "admin request without a valid bearer token");
        let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let path = req.uri().path().to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let format = prom::Format::negotiate(req.headers().get(hyper::header::ACCEPT));
            reply(
                StatusCode::OK,
                format.content_type(),
                prom::render(state, format),
            )
        }
        (&Method::GET, ["api", "status"]) => json(StatusCode::OK, &views::status(state).await),
        (&Method::GET, ["api", "listeners"]) => json(StatusCode::OK, &views::listeners(state)),
        (&Method::GET, ["api", "pools"]) => json(StatusCode::OK, &views::pools(state)),
        (&Method::GET, ["api", "pools", name]) => {
            let snap = state.snapshot.load_full();
            match snap.pools.get(name) {
                Some(p) => json(StatusCode::OK, &views::pool(state, p)),
                None => error(StatusCode::NOT_FOUND, format!("no pool named {name:?}")),
            }
        }
        (&Method::GET, ["api", "persistence"]) => json(StatusCode::OK, &views::persistence(state)),
        (&Method::GET, ["api", "persistence", "entries"]) => {
            json(StatusCode::OK, &persistence_entries(state))
        }
        (&Method::GET, ["api", "certificates"]) => {
            json(StatusCode::OK, &views::certificates(state))
        }
        (&Method::GET, ["api", "ipvs"]) => {
            let kernel = views::read_kernel_ipvs(state).await;
            json(StatusCode::OK, &views::ipvs(state, kernel))
        }
        (&Method::POST, ["api", "reload"]) => reload(state, peer).await,
        (&Method::POST, ["api", "pools", pool, "backends", addr, action]) => {
            let (pool, addr, action) = (pool.to_string(), addr.to_string(), action.to_string());
            set_weight(req, state, &pool, &addr, &action, peer).await
        }
        (_, ["metrics"] | ["api", ..]) | (_, []) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
    }
}

fn status_page() -> Reply {
    let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", page::HTML);
    let h = r.headers_mut();
    for (name, value) in [
        ("content-security-policy", page::csp()),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        if let Ok(v) = hyper::header::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    r
}

/// Most entries listed per group: a table may hold millions, and one
/// listing must not hold the table's lock, or the endpoint's memory, for
/// long. The answer says how many there are.
pub const MAX_LISTED: usize = 10_000;

/// Every persistence group with its entries, client prefixes in order:
/// what `vipd persistence list` prints.
fn persistence_entries(state: &AdminState) -> serde_json::Value {
    let snap = state.snapshot.load_full();
    let groups: Vec<_> = snap
        .config
        .persistence
        .iter()
        .filter_map(|g| snap.persistence.get(&g.name).map(|t| (g, t)))
        .map(|(g, t)| {
            let (rows, live) = t.list_first(MAX_LISTED);
            let entries: Vec<_> = rows
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "client": e.client.to_string(),
                        "backend": e.backend.to_string(),
                        "connections": e.connections,
                        "expires_in_s": e.expires_in.map(|d| d.as_secs()),
                    })
                })
                .collect();
            serde_json::json!({
                "name": g.name,
                "timeout_s": g.timeout.as_secs(),
                "entries_total": live,
                "entries": entries,
            })
        })
        .collect();
    serde_json::json!({ "groups": groups })
}

async fn reload(state: &AdminState, peer: SocketAddr) -> Reply {
    let Some(control) = state.control.upgrade() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "vipd is shutting down");
    };
    info!(%peer, "reload requested through the admin API");
    // Its own task: the request's deadline may drop this future, and a
    // reload must never stop half-way.
    let done = tokio::spawn(async move { control.reload().await });
    match done.await.unwrap_or_else(|e| Err(e.to_string())) {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true })),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload failed; the previous configuration stays in service: {e}"),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: Option<u32>,
}

async fn set_weight(
    req: Request<Incoming>,
    state: &AdminState,
    pool: &str,
    addr: &str,
    action: &str,
    peer: SocketAddr,
) -> Reply {
    let weight = match action {
        "drain" => Some(0),
        "undrain" => None,
        "weight" => {
            let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
            };
            match serde_json::from_slice::<WeightBody>(&body) {
                Ok(b) => b.weight,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("body must be {{\"weight\": N}} or {{\"weight\": null}}: {e}"),
                    );
                }
            }
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}; use weight, drain or undrain"),
            );
        }
    };
    let snap = state.snapshot.load_full();
    let Some(p) = snap.pools.get(pool) else {
        return error(StatusCode::NOT_FOUND, format!("no pool named {pool:?}"));
    };
    let Some(b) = p.backends.iter().find(|b| b.address.to_string() == addr) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no backend {addr}"),
        );
    };
    b.state.set_weight_override(weight);
    let (to, how) = match weight {
        Some(0) => ("drained", "drained".to_string()),
        Some(w) => ("weight", format!("weight set to {w}")),
        None => (
            "undrained",
            format!("back to the configured weight {}", b.weight),
        ),
    };
    b.state
        .record_change(to, &format!("{how} through the admin API by {peer}"));
    info!(%peer, pool, backend = addr, weight = ?weight, configured = b.weight,
        "backend weight set through the admin API");
    json(StatusCode::OK, &views::BackendView::of(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_restores_ipv6_backend_addresses() {
        assert_eq!(
            percent_decode("%5B2001%3Adb8%3A%3A1%5D%3A80"),
            "[2001:db8::1]:80"
        );
        assert_eq!(percent_decode("127.0.0.1:80"), "127.0.0.1:80");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
    }

    #[test]
    fn token_comparison_needs_the_whole_token() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secre", b"secret"));
        assert!(!same(b"secreT", b"secret"));
    }
}
