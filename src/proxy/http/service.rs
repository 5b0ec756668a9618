//! The request path: find the request's one host (target authority or
//! Host, which must agree), route by it and the path, answer locally when
//! the proxy must (redirect, 4xx, 503), otherwise forward to a backend of
//! the chosen pool and stream its response back. Upgrades the listener
//! allows (WebSocket by default) become a tunnel that keeps the
//! connection's slot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::access::{Exchange, Record};
use super::body::{BackendBody, RequestBody, ResponseBody, Source};
use super::conn::Conn;
use super::headers;
use super::plan::{Plan, RequestView, error_response, plan, select};
use super::upstream::ForwardError;
use crate::balance::{BackendState, Lease, Pool};
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
    let planned = plan(&conn, &snap, &RequestView::of(&req), &mut vhost);
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
    // hyper's HTTP/1 client sends no body with a GET, HEAD or DELETE of
    // unknown length unless the request says chunked, and the client's
    // body would vanish (its request answered as if it had none). Say so.
    if !plan.upstream.http2() && !body.is_end_stream() && body.size_hint().exact().is_none() {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
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
pub(super) fn passive_check(
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
