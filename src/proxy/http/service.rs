//! The request path: route by Host and path, answer locally when the proxy
//! must (redirect, 4xx, 503), otherwise forward to a backend of the chosen
//! pool and stream its response back. WebSocket upgrades become a tunnel.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::access::{Exchange, Record};
use super::body::{BackendBody, RequestBody, ResponseBody, Source};
use super::conn::Conn;
use super::headers::{self, Options};
use super::route::VhostRoute;
use super::upstream::{ForwardError, Upstream};
use crate::balance::{Lease, PersistenceTable, Pool};
use crate::proxy::Snapshot;

/// Serve one request. Never fails: every problem becomes a response.
pub async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    conn.state.saw_version(req.version());
    let snap = conn.snapshot.load_full();
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
    let mut ex = Exchange::begin(conn.clone(), record, snap.config.global.access_log);
    let mut vhost = None;
    let planned = plan(&conn, &snap, &req, &mut vhost);
    let resp = match planned {
        Ok(plan) => {
            ex.record.vhost = vhost.as_ref().map(|v| v.name.clone());
            forward(&conn, &snap, req, plan, &mut ex).await
        }
        Err(local) => {
            ex.record.vhost = vhost.as_ref().map(|v| v.name.clone());
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
    /// The client's Host (authority for HTTP/2), with any port.
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
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let bad_host = || {
        local(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: missing or invalid Host header\n",
        )
    };
    let Some(host) = host else {
        return Err(bad_host());
    };
    let Some(name) = host_name(&host) else {
        return Err(bad_host());
    };
    let vhost = routes.vhosts.lookup(&name);
    if let Some(sni) = conn.sni.as_deref() {
        let by_sni = routes.vhosts.lookup(sni);
        let same = match (by_sni, vhost) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            return Err(local(
                StatusCode::MISDIRECTED_REQUEST,
                "421 Misdirected Request: the Host header names a different site than TLS SNI\n",
            ));
        }
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
            trusted: routes.trusts(conn.peer.ip),
            forwarded: routes.forwarded,
            via: routes.via,
        },
    })
}

/// A backend of `pool` for `client`, through the persistence table if any.
fn select(pool: &Pool, table: Option<&Arc<PersistenceTable>>, client: IpAddr) -> Option<Lease> {
    match table {
        Some(t) => pool.select_persistent(client, t),
        None => pool.select(client),
    }
}

/// The host name of a Host value: port removed (IPv6 brackets kept), final
/// dot removed, lower case. None if it is not text or is empty.
fn host_name(host: &HeaderValue) -> Option<Cow<'_, str>> {
    let text = host.to_str().ok()?;
    let name = if text.starts_with('[') {
        &text[..=text.find(']')?]
    } else {
        match text.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => text,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
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
    let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    if !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, plan.host.clone());
    }
    headers::add_forwarding(
        &mut parts.headers,
        &conn.peer,
        &plan.host,
        parts.version,
        plan.opts,
    );
    let target = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.version = if plan.upstream.http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let attempts = plan.pool.backends.len().clamp(1, 3);
    let client_version = parts.version;
    let body = RequestBody::new(body, plan.max_body_size, conn.request_body_timeout);
    let mut req = Request::from_parts(parts, body);
    let mut lease = plan.lease;
    let mut attempt = 1;
    let ((mut resp, reusable), addr) = loop {
        let addr = lease.address;
        ex.record.upstream = Some(addr);
        *req.uri_mut() = plan.upstream.target(addr, target.clone());
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
        // Passive check: connect failures and backend failures after
        // connecting (reset, closed, no response head in time) count.
        let counted = snap
            .config
            .pool(&plan.pool.name)
            .filter(|_| e.is_connect() || e.is_backend_failure());
        if let Some(cfg) = counted {
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
                plan.pool.log_flip(addr, false, &cause);
            }
        }
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
        lease.state().stats.responses.record(resp.status().as_u16());
    }
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    // An upgraded connection belongs to the tunnel, never to the pool.
    let reusable = reusable.filter(|_| !switched);
    match client_upgrade {
        Some(client) if switched => {
            let backend = hyper::upgrade::on(&mut resp);
            let lease = ex.lease.take();
            let idle = conn.idle_timeout;
            conn.shutdown.spawn(tunnel(client, backend, lease, idle));
        }
        _ => {}
    }
    headers::strip_hop_by_hop(resp.headers_mut(), upgrade && switched);
    if plan.opts.via {
        let version = resp.version();
        headers::add_via(resp.headers_mut(), version);
    }
    let idle = plan.upstream.response_timeout;
    resp.map(|body| Source::Backend(BackendBody::new(body, reusable, addr, idle)))
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

/// Splice an upgraded client connection (e.g. a WebSocket) to the upgraded
/// backend connection until either side closes or both stay idle.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, lease: Option<Lease>, idle: Duration) {
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

    fn name(h: &'static str) -> Option<String> {
        host_name(&HeaderValue::from_static(h)).map(|c| c.into_owned())
    }

    #[test]
    fn host_names_lose_port_and_final_dot_and_case() {
        assert_eq!(
            name("WWW.Example.com:8080").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(name("www.example.com.").as_deref(), Some("www.example.com"));
        assert_eq!(name("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(name(":80"), None);
    }

    proptest::proptest! {
        #[test]
        fn host_name_never_panics_on_any_header_value(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![0x20u8..0x7f, proptest::strategy::Just(b'\t'), 0x80u8..=0xff],
                0..40,
            ),
        ) {
            let _ = host_name(&HeaderValue::from_bytes(&bytes).unwrap());
        }

        #[test]
        fn any_host_name_loses_port_final_dot_and_case(
            labels in proptest::collection::vec("[a-zA-Z0-9-]{1,10}", 1..5),
            dot: bool,
            port: Option<u16>,
        ) {
            let name = labels.join(".");
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let text = format!("{name}{}{port}", if dot { "." } else { "" });
            let got = host_name(&HeaderValue::from_str(&text).unwrap()).map(Cow::into_owned);
            proptest::prop_assert_eq!(got, Some(name.to_ascii_lowercase()));
        }

        #[test]
        fn ipv6_literals_keep_their_brackets_and_lose_the_port(ip: [u8; 16], port: Option<u16>) {
            let literal = format!("[{}]", std::net::Ipv6Addr::from(ip));
            let text = format!("{literal}{}", port.map(|p| format!(":{p}")).unwrap_or_default());
            let got = host_name(&HeaderValue::from_str(&text).unwrap()).map(Cow::into_owned);
            proptest::prop_assert_eq!(got, Some(literal));
        }
    }
}
