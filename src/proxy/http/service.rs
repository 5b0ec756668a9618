//! The request path: find the request's one host (target authority or
//! Host, which must agree), route by it and the path, answer locally when
//! the proxy must (redirect, 4xx, 503), otherwise forward to a backend of
//! the chosen pool and stream its response back. Upgrades the listener
//! allows (WebSocket by default) become a tunnel that keeps the
//! connection's slot.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::access::{Exchange, Record};
use super::body::{BackendBody, RequestBody, ResponseBody, Source};
use super::conn::Conn;
use super::headers::{self, Options};
use super::route::{ListenerRoutes, VhostRoute};
use super::upstream::{ForwardError, Upstream};
use crate::authority::Authority;
use crate::balance::{BackendState, Lease, PersistenceTable, Pool};
use crate::proxy::Snapshot;
use crate::proxy::listener::Admission;

/// Serve one request. Never fails: every problem becomes a response.
pub async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    conn.state.saw_version(req.version());
    let snap = conn.snapshot();
    let record = Record {
        start: Instant::now(),
        client: conn.peer.ip,
        vhost: None,
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        status: 499,
        bytes: 0,
        upstream: None,
    };
    let version = req.version();
    let mut ex = Exchange::begin(conn.clone(), record, snap.config.global.access_log);
    let mut vhost = None;
    let planned = plan(&conn, &snap, &req, &mut vhost);
    let resp = match planned {
        Ok(plan) => {
            ex.record.vhost = vhost.as_ref().map(|v| v.name.clone());
            forward(&conn, &snap, req, plan, &mut ex).await
        }
        Err(mut local) => {
            ex.record.vhost = vhost.as_ref().map(|v| v.name.clone());
            // A request refused as malformed or ambiguous ends its HTTP/1
            // connection, as HAProxy and nginx do: nothing that follows on
            // it can be trusted to be framed the way the client meant.
            let refused = matches!(
                local.status(),
                StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED
            );
            if refused && version < Version::HTTP_2 {
                local
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            local
        }
    };
    let (mut parts, source) = resp.into_parts();
    if conn.https {
        if let Some(hsts) = vhost.as_ref().and_then(|v| v.hsts.clone()) {
            parts
                .headers
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert(hsts);
        }
    }
    ex.record.status = parts.status.as_u16();
    conn.stats
        .record_request(ex.record.status, ex.record.start.elapsed());
    Ok(Response::from_parts(parts, ResponseBody::new(source, ex)))
}

/// A response made by the proxy: status and a one-line plain-text body.
fn local(status: StatusCode, text: &'static str) -> Response<Source> {
    let mut resp = Response::new(Source::local(text));
    *resp.status_mut() = status;
    if !text.is_empty() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    resp
}

fn error_response(status: StatusCode) -> Response<Source> {
    let text = match status {
        StatusCode::BAD_REQUEST => "400 Bad Request\n",
        StatusCode::REQUEST_TIMEOUT => "408 Request Timeout\n",
        StatusCode::PAYLOAD_TOO_LARGE => "413 Payload Too Large\n",
        StatusCode::BAD_GATEWAY => "502 Bad Gateway\n",
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
        _ => "",
    };
    local(status, text)
}

/// Where a request goes.
struct Plan {
    upstream: Arc<Upstream>,
    pool: Arc<Pool>,
    persistence: Option<Arc<PersistenceTable>>,
    lease: Lease,
    /// The authority the request was routed by, as the client wrote it
    /// (validated), with any port: the backend's one Host.
    host: HeaderValue,
    max_body_size: Option<u64>,
    opts: Options,
}

/// Route a request, or answer it locally.
#[allow(clippy::result_large_err)] // the Err is the response itself, moved once
fn plan(
    conn: &Conn,
    snap: &Snapshot,
    req: &Request<Incoming>,
    vhost_out: &mut Option<Arc<VhostRoute>>,
) -> Result<Plan, Response<Source>> {
    let Some(routes) = snap.http.listener(&conn.listener) else {
        return Err(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: listener removed\n",
        ));
    };
    if req.headers().len() > routes.max_headers {
        // HTTP/1 heads with more fields never get here (hyper answers 431);
        // HTTP/2 only bounds the header list's size.
        return Err(local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "431 Request Header Fields Too Large\n",
        ));
    }
    if req.method() == Method::CONNECT {
        return Err(local(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 Method Not Allowed: CONNECT is not proxied\n",
        ));
    }
    let (name, host) = match request_host(req, conn.https) {
        Ok(Some((authority, value))) => (authority.into_host(), value),
        Ok(None) => unnamed_site(conn, routes)
            .ok_or_else(|| bad_request("400 Bad Request: missing Host header\n"))?,
        Err(why) => return Err(bad_request(why)),
    };
    let vhost = routes.vhosts.lookup(&name);
    if !sni_agrees(routes, conn.sni.as_deref(), vhost) {
        return Err(local(
            StatusCode::MISDIRECTED_REQUEST,
            "421 Misdirected Request: the Host header names a different site than TLS SNI\n",
        ));
    }
    let Some(vhost) = vhost else {
        return Err(local(
            StatusCode::NOT_FOUND,
            "404 Not Found: no site is configured for this host\n",
        ));
    };
    *vhost_out = Some(vhost.clone());
    if vhost.redirect_https && !conn.https {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{name}{target}");
        let mut resp = local(StatusCode::PERMANENT_REDIRECT, "");
        if let Ok(v) = HeaderValue::try_from(location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Err(resp);
    }
    if let Some(limit) = vhost.max_body_size {
        if req.body().size_hint().lower() > limit {
            return Err(error_response(StatusCode::PAYLOAD_TOO_LARGE));
        }
    }
    let Some(pool_name) = vhost.pool_for(req.uri().path()) else {
        return Err(local(
            StatusCode::NOT_FOUND,
            "404 Not Found: no route for this path\n",
        ));
    };
    let (Some(pool), Some(upstream)) = (snap.pools.get(pool_name), snap.upstreams.get(pool_name))
    else {
        return Err(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: no backend is available\n",
        ));
    };
    let persistence = routes
        .persistence
        .as_deref()
        .and_then(|g| snap.persistence.get(g))
        .cloned();
    let Some(lease) = select(pool, persistence.as_ref(), conn.peer.ip) else {
        warn!(side = "backend", pool = %pool_name, "no healthy backend; answering 503");
        return Err(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: no backend is available\n",
        ));
    };
    Ok(Plan {
        upstream: upstream.clone(),
        pool: pool.clone(),
        persistence,
        lease,
        host: host.clone(),
        max_body_size: vhost.max_body_size,
        opts: Options {
            trusted: routes.trusts(conn.peer.ip, conn.arrival),
            forwarded: routes.forwarded,
            via: routes.via,
            real_ip: routes.real_ip,
        },
    })
}

/// Whether the TLS SNI, if any, leads to the same site as the request's
/// host did (`vhost`): otherwise a client could reach one vhost over a
/// handshake made for another (RFC 9110 7.4: 421).
fn sni_agrees(routes: &ListenerRoutes, sni: Option<&str>, vhost: Option<&Arc<VhostRoute>>) -> bool {
    let Some(sni) = sni else { return true };
    match (routes.vhosts.lookup(sni), vhost) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A backend of `pool` for `client`, through the persistence table if any.
fn select(pool: &Pool, table: Option<&Arc<PersistenceTable>>, client: IpAddr) -> Option<Lease> {
    match table {
        Some(t) => pool.select_persistent(client, t),
        None => pool.select(client),
    }
}

/// The one host a request names, in normal form, and the Host value its
/// backend receives (RFC 9112 3.2, RFC 9113 8.3.1): the request target's
/// authority (absolute-form, or HTTP/2 `:authority`), else the Host header.
/// Both present must agree (case, a final dot and the scheme's default port
/// aside). The target's form is checked here too: authority-form is for
/// CONNECT, asterisk-form for OPTIONS. `Ok(None)`: an HTTP/1.0 request
/// without Host. `Err`: the 400 text.
fn request_host<B>(
    req: &Request<B>,
    https: bool,
) -> Result<Option<(Authority<'_>, HeaderValue)>, &'static str> {
    let uri = req.uri();
    if req.version() < Version::HTTP_2 && uri.scheme().is_none() && uri.authority().is_some() {
        return Err("400 Bad Request: authority-form request target outside CONNECT\n");
    }
    // A proxy for http and https only: `ftp://a.test/` is not a request
    // for a site vipd serves.
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Err("400 Bad Request: request target scheme is not http or https\n");
    }
    // RFC 9112 3.2.4: `*` is for OPTIONS only (HTTP/2 lets it through).
    if uri.path_and_query().is_some_and(|p| p.as_str() == "*") && req.method() != Method::OPTIONS {
        return Err("400 Bad Request: asterisk-form request target outside OPTIONS\n");
    }
    let mut values = req.headers().get_all(header::HOST).iter();
    let (value, extra) = (values.next(), values.next());
    if extra.is_some() {
        return Err("400 Bad Request: more than one Host header\n");
    }
    // RFC 9112 3.2: every HTTP/1.1 request carries Host, even one with an
    // absolute-form target.
    if value.is_none() && req.version() == Version::HTTP_11 {
        return Err("400 Bad Request: missing Host header\n");
    }
    let host = match value {
        Some(v) => Some(
            Authority::parse(v.as_bytes()).map_err(|_| "400 Bad Request: invalid Host header\n")?,
        ),
        None => None,
    };
    let Some(target) = uri.authority() else {
        return match (host, value) {
            (Some(h), Some(v)) => Ok(Some((h, v.clone()))),
            _ if req.version() < Version::HTTP_11 => Ok(None),
            _ => Err("400 Bad Request: missing Host header\n"),
        };
    };
    let routed = Authority::parse(target.as_str().as_bytes())
        .map_err(|_| "400 Bad Request: invalid authority in the request target\n")?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ if https => 443,
        _ => 80,
    };
    if host.is_some_and(|h| !routed.same_as(&h, default_port)) {
        return Err("400 Bad Request: the Host header does not match the request target\n");
    }
    let value = HeaderValue::from_str(target.as_str())
        .map_err(|_| "400 Bad Request: invalid authority in the request target\n")?;
    Ok(Some((routed, value)))
}

/// The host of an HTTP/1.0 request without Host, and the Host its backend
/// gets: the TLS SNI, else the default vhost's first exact name.
fn unnamed_site<'a>(
    conn: &'a Conn,
    routes: &ListenerRoutes,
) -> Option<(Cow<'a, str>, HeaderValue)> {
    if let Some(sni) = conn.sni.as_deref() {
        return Some((sni.into(), HeaderValue::from_str(sni).ok()?));
    }
    let value = routes.vhosts.default_vhost()?.first_host.clone()?;
    Some((value.to_str().ok()?.to_owned().into(), value))
}

/// A 400 for a request whose host is missing, ambiguous or malformed.
fn bad_request(why: &'static str) -> Response<Source> {
    debug!(
        side = "client",
        reason = why.trim_end(),
        "bad request host; answering 400"
    );
    local(StatusCode::BAD_REQUEST, why)
}

/// Send the request to the planned backend and return its response.
///
/// When connecting fails and the request has no body, it is sent to another
/// backend (up to three tries, as the L4 path does); every connect outcome
/// feeds the backend's passive health check.
async fn forward(
    conn: &Arc<Conn>,
    snap: &Snapshot,
    mut req: Request<Incoming>,
    plan: Plan,
    ex: &mut Exchange,
) -> Response<Source> {
    // Only the upgrades the listener allows are tunnelled; any other
    // `Upgrade` is stripped and the request goes on as a plain one.
    let upgrade = (req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE))
    .then(|| snap.http.listener(&conn.listener))
    .flatten()
    .and_then(|routes| headers::allowed_upgrade(req.headers(), &routes.upgrades));
    if let Some(offered) = &upgrade {
        req.headers_mut().insert(header::UPGRADE, offered.clone());
    }
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    // Exactly one Host, the authority the request was routed (and checked
    // against SNI) by.
    parts.headers.insert(header::HOST, plan.host.clone());
    headers::add_forwarding(
        &mut parts.headers,
        &conn.peer,
        &plan.host,
        parts.version,
        plan.opts,
    );
    let target = origin_form(&parts.uri);
    // Read before `parts.version` becomes the backend's version below.
    let client_version = parts.version;
    let authority = plan
        .upstream
        .http2()
        .then(|| hyper::http::uri::Authority::try_from(plan.host.as_bytes()).ok())
        .flatten();
    parts.version = if plan.upstream.http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let attempts = plan.pool.backends.len().clamp(1, 3);
    let body = RequestBody::new(body, plan.max_body_size, conn.request_body_timeout);
    let mut req = Request::from_parts(parts, body);
    let mut lease = plan.lease;
    let mut attempt = 1;
    let ((mut resp, reusable), addr) = loop {
        let addr = lease.address;
        ex.record.upstream = Some(addr);
        *req.uri_mut() = plan
            .upstream
            .target(addr, authority.as_ref(), target.clone());
        let state = lease.state().clone();
        ex.lease = Some(lease);
        let failed = match plan.upstream.send(addr, req).await {
            Ok(sent) => {
                if state.connect_succeeded() {
                    plan.pool.log_flip(
                        addr,
                        true,
                        "passive check: request succeeded after cool-down",
                    );
                }
                break (sent, addr);
            }
            Err(failed) => failed,
        };
        let e = failed.error;
        if !matches!(e, ForwardError::ClientBodyTimeout { .. }) {
            // (A stalled body has logged itself.)
            warn!(side = e.side(), error = %e, attempt, "request failed");
        }
        passive_check(snap, &plan.pool, addr, &state, &e);
        if !e.is_connect() {
            return failure_response(&e, client_version);
        }
        // A persistent client is rescheduled rather than sent back to a
        // backend that just refused it.
        if let Some(l) = ex.lease.take() {
            l.connect_failed();
        }
        // Nothing reached the backend, so the request (body included) can
        // go to another one.
        let retry = failed.request.filter(|_| attempt < attempts);
        let Some(again) = retry else {
            return error_response(e.status());
        };
        let Some(other) = select(&plan.pool, plan.persistence.as_ref(), conn.peer.ip) else {
            return error_response(e.status());
        };
        req = again;
        lease = other;
        attempt += 1;
    };
    if let Some(lease) = &ex.lease {
        lease.state().stats.record_response(resp.status().as_u16());
    }
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched && !start_tunnel(conn, upgrade.as_ref(), client_upgrade, &mut resp, ex) {
        return error_response(StatusCode::BAD_GATEWAY);
    }
    // An upgraded connection belongs to the tunnel, never to the pool.
    let reusable = reusable.filter(|_| !switched);
    headers::strip_hop_by_hop(resp.headers_mut(), switched);
    if plan.opts.via {
        let version = resp.version();
        headers::add_via(resp.headers_mut(), version);
    }
    let idle = plan.upstream.response_timeout;
    resp.map(|body| Source::Backend(BackendBody::new(body, reusable, addr, idle)))
}

/// Passive check: a connect failure, or a failure the backend caused after
/// connecting (reset, closed, no response head in time), counts against
/// `addr`; a failure of the client's (a stalled upload) never does.
fn passive_check(
    snap: &Snapshot,
    pool: &Pool,
    addr: SocketAddr,
    state: &BackendState,
    e: &ForwardError,
) {
    let counted = snap
        .config
        .pool(&pool.name)
        .filter(|_| e.is_connect() || e.is_backend_failure());
    let Some(cfg) = counted else { return };
    let down = if e.is_connect() {
        state.connect_failed(cfg)
    } else {
        state.passive_failure(cfg)
    };
    if down {
        let cause = format!(
            "passive check: {} consecutive failures; last: {e}",
            cfg.passive_fall
        );
        pool.log_flip(addr, false, &cause);
    }
}

/// Splice the client's connection to the backend's after a `101`, in a
/// task of its own. A backend may only switch to a protocol the client
/// offered (`asked`) and the listener allows: anything else (h2c above all)
/// is never tunnelled, and false says to answer 502 instead.
fn start_tunnel(
    conn: &Conn,
    asked: Option<&HeaderValue>,
    client: Option<OnUpgrade>,
    resp: &mut Response<Incoming>,
    ex: &mut Exchange,
) -> bool {
    let agreed = asked.is_some_and(|asked| headers::upgrade_agreed(resp.headers(), asked));
    let (Some(client), true) = (client, agreed) else {
        warn!(side = "backend", upgrade = ?resp.headers().get(header::UPGRADE),
            "backend switched protocols to an upgrade the client did not offer; answering 502");
        return false;
    };
    let backend = hyper::upgrade::on(resp);
    let lease = ex.lease.take();
    // The tunnel keeps the connection's slot under the listener's caps
    // (and in its active gauge) until it closes.
    let admission = conn.admission.clone();
    conn.shutdown
        .spawn(tunnel(client, backend, lease, conn.idle_timeout, admission));
    true
}

/// The answer to a request that failed after reaching a backend. When the
/// client broke its body, the rest of it is not read: an HTTP/1 connection
/// cannot carry another request and is closed after the answer.
fn failure_response(e: &ForwardError, version: Version) -> Response<Source> {
    let mut resp = error_response(e.status());
    if e.side() == "client" && version != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The path and query a backend gets. An absolute-form target with an
/// empty path (`http://a.test#x`) keeps it empty inside: it reads as `/`,
/// but a URI built from it writes no request target at all. It becomes
/// `/` (RFC 9112 3.2.1), as it was routed.
fn origin_form(uri: &Uri) -> PathAndQuery {
    match uri.path_and_query() {
        Some(p) if !Uri::from(p.clone()).path().is_empty() => p.clone(),
        _ => PathAndQuery::from_static("/"),
    }
}

/// Splice an upgraded client connection (e.g. a WebSocket) to the upgraded
/// backend connection until either side closes or both stay idle for
/// `idle` (the listener's `idle_timeout`). `_admission` is the client
/// connection's slot, held until the tunnel ends.
async fn tunnel(
    client: OnUpgrade,
    backend: OnUpgrade,
    lease: Option<Lease>,
    idle: Duration,
    _admission: Arc<Admission>,
) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let result = crate::proxy::l4::pipe(TokioIo::new(client), TokioIo::new(backend), idle).await;
    let backend = lease.as_ref().map(|l| l.address);
    match result {
        Ok(t) => debug!(
            ?backend,
            bytes_in = t.upstream,
            bytes_out = t.downstream,
            "tunnel closed"
        ),
        Err(e) => debug!(?backend, error = %e, "tunnel ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `request_host` of a request with `target`, `version` and Host lines.
    fn host_of(
        target: &str,
        version: Version,
        hosts: &[&str],
    ) -> Result<Option<(String, String)>, &'static str> {
        let mut b = Request::builder().uri(target).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        let req = b.body(()).unwrap();
        request_host(&req, false)
            .map(|found| found.map(|(a, v)| (a.to_string(), v.to_str().unwrap().to_owned())))
    }

    fn ok(name: &str, value: &str) -> Result<Option<(String, String)>, &'static str> {
        Ok(Some((name.to_owned(), value.to_owned())))
    }

    const V11: Version = Version::HTTP_11;

    #[test]
    fn the_target_authority_wins_and_must_agree_with_host() {
        assert_eq!(host_of("/x", V11, &["A.test"]), ok("a.test", "A.test"));
        assert_eq!(
            host_of("http://A.test/x", V11, &["a.test.:80"]),
            ok("a.test", "A.test")
        );
        assert_eq!(
            host_of("https://a.test/x", V11, &["a.test:443"]),
            ok("a.test", "a.test")
        );
        assert_eq!(
            host_of("http://a.test/x", V11, &["b.test"]),
            Err("400 Bad Request: the Host header does not match the request target\n")
        );
        assert_eq!(
            host_of("https://a.test/x", V11, &["a.test:80"]),
            Err("400 Bad Request: the Host header does not match the request target\n")
        );
        assert_eq!(
            host_of("http://u@a.test/x", V11, &["a.test"]),
            Err("400 Bad Request: invalid authority in the request target\n")
        );
    }

    #[test]
    fn duplicate_missing_and_malformed_hosts_are_refused() {
        assert_eq!(
            host_of("/", V11, &["a.test", "a.test"]),
            Err("400 Bad Request: more than one Host header\n")
        );
        assert_eq!(
            host_of("/", V11, &[]),
            Err("400 Bad Request: missing Host header\n")
        );
        assert_eq!(
            host_of("/", V11, &[""]),
            Err("400 Bad Request: invalid Host header\n")
        );
        assert_eq!(
            host_of("/", V11, &["a.test, b.test"]),
            Err("400 Bad Request: invalid Host header\n")
        );
        assert_eq!(host_of("/", Version::HTTP_10, &[]), Ok(None));
        assert_eq!(
            host_of("http://a.test/", V11, &[]),
            Err("400 Bad Request: missing Host header\n")
        );
        assert_eq!(
            host_of("http://a.test/", Version::HTTP_10, &[]),
            ok("a.test", "a.test")
        );
        assert_eq!(
            host_of("a.test:80", V11, &["a.test"]),
            Err("400 Bad Request: authority-form request target outside CONNECT\n")
        );
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let h2 = Version::HTTP_2;
        assert_eq!(host_of("https://a.test/", h2, &[]), ok("a.test", "a.test"));
        assert_eq!(
            host_of("https://a.test/", h2, &["b.test"]),
            Err("400 Bad Request: the Host header does not match the request target\n")
        );
        assert_eq!(host_of("/", h2, &["a.test"]), ok("a.test", "a.test"));
    }
}
