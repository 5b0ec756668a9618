//! Routing one request head, whichever codec parsed it: find its one host
//! (target authority or Host, which must agree), check it against the TLS
//! SNI, pick the vhost, path route, pool and backend, or the local answer
//! (redirect, 4xx, 503). Both the hyper path ([`super::service`]) and the
//! pass-through HTTP/1.1 codec ([`super::h1`]) describe their head as a
//! [`RequestView`] and call [`plan`], so one piece of code decides where a
//! request goes and what a refused one is answered.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use tracing::{debug, warn};

use super::body::Source;
use super::conn::Conn;
use super::headers::Options;
use super::route::{ListenerRoutes, VhostRoute};
use super::upstream::Upstream;
use crate::authority::Authority;
use crate::balance::{Lease, PersistenceTable, Pool};
use crate::proxy::Snapshot;

/// What routing needs of a request head, borrowed from whichever codec
/// parsed it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub version: Version,
    /// The target's scheme, for an absolute-form target.
    pub scheme: Option<&'a str>,
    /// The target's authority (absolute-form, authority-form, HTTP/2
    /// `:authority`).
    pub authority: Option<&'a str>,
    /// The target's path, without the query.
    pub path: &'a str,
    /// The target's path and query as the client wrote them, if any.
    pub path_and_query: Option<&'a str>,
    /// The first Host field's value.
    pub host: Option<&'a [u8]>,
    /// Whether there is more than one Host field.
    pub more_hosts: bool,
    /// How many header fields the head carries.
    pub headers: usize,
    /// The least the body is known to carry (its Content-Length).
    pub body_hint: u64,
}

impl<'a> RequestView<'a> {
    /// The view of a request hyper parsed.
    pub fn of<B: Body>(req: &'a Request<B>) -> Self {
        let uri = req.uri();
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host = hosts.next().map(HeaderValue::as_bytes);
        Self {
            method: req.method().as_str(),
            version: req.version(),
            scheme: uri.scheme_str(),
            authority: uri.authority().map(|a| a.as_str()),
            path: uri.path(),
            path_and_query: uri.path_and_query().map(|p| p.as_str()),
            host,
            more_hosts: hosts.next().is_some(),
            headers: req.headers().len(),
            body_hint: req.body().size_hint().lower(),
        }
    }
}

/// Where a request goes.
pub struct Plan {
    pub upstream: Arc<Upstream>,
    pub pool: Arc<Pool>,
    pub persistence: Option<Arc<PersistenceTable>>,
    pub lease: Lease,
    /// The authority the request was routed by, as the client wrote it
    /// (validated), with any port: the backend's one Host.
    pub host: HeaderValue,
    pub max_body_size: Option<u64>,
    pub opts: Options,
}

/// A response made by the proxy: status and a one-line plain-text body.
pub fn local(status: StatusCode, text: &'static str) -> Response<Source> {
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

pub fn error_response(status: StatusCode) -> Response<Source> {
    local(status, error_text(status))
}

/// The body of the proxy's answer with `status` to a failed exchange.
pub fn error_text(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "400 Bad Request\n",
        StatusCode::REQUEST_TIMEOUT => "408 Request Timeout\n",
        StatusCode::PAYLOAD_TOO_LARGE => "413 Payload Too Large\n",
        StatusCode::BAD_GATEWAY => "502 Bad Gateway\n",
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
        _ => "",
    }
}

/// Route a request, or answer it locally.
#[allow(clippy::result_large_err)] // the Err is the response itself, moved once
pub fn plan(
    conn: &Conn,
    snap: &Snapshot,
    req: &RequestView<'_>,
    vhost_out: &mut Option<Arc<VhostRoute>>,
) -> Result<Plan, Response<Source>> {
    let Some(routes) = snap.http.listener(&conn.listener) else {
        return Err(local(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable: listener removed\n",
        ));
    };
    if req.headers > routes.max_headers {
        // HTTP/1 heads with more fields never get here (hyper answers 431);
        // HTTP/2 only bounds the header list's size.
        return Err(local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "431 Request Header Fields Too Large\n",
        ));
    }
    if req.method == "CONNECT" {
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
    let host = HeaderValue::from_bytes(host)
        .map_err(|_| bad_request("400 Bad Request: invalid Host header\n"))?;
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
        let target = req.path_and_query.unwrap_or("/");
        let location = format!("https://{name}{target}");
        let mut resp = local(StatusCode::PERMANENT_REDIRECT, "");
        if let Ok(v) = HeaderValue::try_from(location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Err(resp);
    }
    if let Some(limit) = vhost.max_body_size {
        if req.body_hint > limit {
            return Err(error_response(StatusCode::PAYLOAD_TOO_LARGE));
        }
    }
    let Some(pool_name) = vhost.pool_for(req.path) else {
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
        host,
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
pub fn select(pool: &Pool, table: Option<&Arc<PersistenceTable>>, client: IpAddr) -> Option<Lease> {
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
pub fn request_host<'a>(
    req: &RequestView<'a>,
    https: bool,
) -> Result<Option<(Authority<'a>, &'a [u8])>, &'static str> {
    if req.version < Version::HTTP_2 && req.scheme.is_none() && req.authority.is_some() {
        return Err("400 Bad Request: authority-form request target outside CONNECT\n");
    }
    // A proxy for http and https only: `ftp://a.test/` is not a request
    // for a site vipd serves.
    if req
        .scheme
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Err("400 Bad Request: request target scheme is not http or https\n");
    }
    // RFC 9112 3.2.4: `*` is for OPTIONS only (HTTP/2 lets it through).
    if req.path_and_query == Some("*") && req.method != "OPTIONS" {
        return Err("400 Bad Request: asterisk-form request target outside OPTIONS\n");
    }
    if req.more_hosts {
        return Err("400 Bad Request: more than one Host header\n");
    }
    let value = req.host;
    // RFC 9112 3.2: every HTTP/1.1 request carries Host, even one with an
    // absolute-form target.
    if value.is_none() && req.version == Version::HTTP_11 {
        return Err("400 Bad Request: missing Host header\n");
    }
    let host = match value {
        Some(v) => Some(Authority::parse(v).map_err(|_| "400 Bad Request: invalid Host header\n")?),
        None => None,
    };
    let Some(target) = req.authority else {
        return match (host, value) {
            (Some(h), Some(v)) => Ok(Some((h, v))),
            _ if req.version < Version::HTTP_11 => Ok(None),
            _ => Err("400 Bad Request: missing Host header\n"),
        };
    };
    let routed = Authority::parse(target.as_bytes())
        .map_err(|_| "400 Bad Request: invalid authority in the request target\n")?;
    let default_port = match req.scheme {
        Some("https") => 443,
        Some("http") => 80,
        _ if https => 443,
        _ => 80,
    };
    if host.is_some_and(|h| !routed.same_as(&h, default_port)) {
        return Err("400 Bad Request: the Host header does not match the request target\n");
    }
    Ok(Some((routed, target.as_bytes())))
}

/// The host of an HTTP/1.0 request without Host, and the Host its backend
/// gets: the TLS SNI, else the default vhost's first exact name.
fn unnamed_site<'a>(
    conn: &'a Conn,
    routes: &'a ListenerRoutes,
) -> Option<(Cow<'a, str>, &'a [u8])> {
    if let Some(sni) = conn.sni.as_deref() {
        return Some((sni.into(), sni.as_bytes()));
    }
    let value = routes.vhosts.default_vhost()?.first_host.as_ref()?;
    Some((value.to_str().ok()?.into(), value.as_bytes()))
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
        let req = b
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        request_host(&RequestView::of(&req), false).map(|found| {
            found.map(|(a, v)| (a.to_string(), String::from_utf8(v.to_vec()).unwrap()))
        })
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
