//! Header rewriting between client and backend: hop-by-hop headers are
//! stripped both ways, forwarding headers (`X-Forwarded-*`, RFC 7239
//! `Forwarded`, `Via`, optionally `X-Real-IP`) are added to requests, an
//! `Upgrade` is kept only for the protocols the listener allows, and
//! request trailers lose every field that belongs in the head.
//!
//! Forwarding headers a client sends are kept (and appended to) only when
//! the client is a trusted proxy; from anyone else every `X-Forwarded-*`
//! header is replaced or removed, and other client-address claims
//! (`X-Real-IP`, `True-Client-IP`, `X-Client-IP`, `X-Cluster-Client-IP`)
//! removed, so a client cannot forge the address or scheme a backend sees.
//! Their spellings with `_` for `-` are removed from everyone.

use std::net::IpAddr;

use hyper::Version;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP` (nginx's name for the client address).
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Client-address headers other proxies and CDNs set. vipd does not write
/// them (except `X-Real-IP` when asked), but a backend may believe them, so
/// an untrusted client's are removed.
const CLIENT_CLAIMS: [&str; 4] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
];

/// Whether header `name` (lower case) is a claim only a proxy may make: a
/// [`CLIENT_CLAIMS`] header or any `X-Forwarded-*` (besides For, Proto and
/// Host, which vipd writes, Rack believes `X-Forwarded-Ssl` and
/// `-Scheme`, Spring and Werkzeug `X-Forwarded-Prefix` and `-Port`).
fn is_claim(name: &str) -> bool {
    name.starts_with("x-forwarded-") || CLIENT_CLAIMS.contains(&name)
}

/// Whether a client's header `name` must go before vipd adds its own: a
/// claim from an untrusted client, or, from anyone, a claim spelt with `_`
/// for `-`. CGI, WSGI and Rack read `X_Forwarded_For` as the same variable
/// as `X-Forwarded-For`, and no proxy writes that spelling.
pub(super) fn forged(name: &str, trusted: bool) -> bool {
    if name.contains('_') {
        return is_claim(&name.replace('_', "-"));
    }
    !trusted && is_claim(name)
}

/// The `Upgrade` value to forward for an HTTP/1.1 upgrade request
/// (`Connection: upgrade` with an `Upgrade` header): the offered protocols
/// whose name (the part before any `/version`) is in `allowed`, which is
/// lower case. `None` when the request offers none of them, and then the
/// request is forwarded as a plain one. `h2c` is never in `allowed`
/// (validation refuses it), so an h2c upgrade is never tunnelled.
pub fn allowed_upgrade(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if !connection_has(headers, "upgrade") {
        return None;
    }
    let mut kept: Vec<u8> = Vec::new();
    for offered in tokens(headers.get_all(header::UPGRADE).iter()) {
        if upgrade_allowed(offered, allowed) {
            if !kept.is_empty() {
                kept.extend_from_slice(b", ");
            }
            kept.extend_from_slice(offered);
        }
    }
    (!kept.is_empty())
        .then(|| HeaderValue::from_bytes(&kept).ok())
        .flatten()
}

/// Whether a backend's `101` switches to protocols the client offered
/// (`asked`, as [`allowed_upgrade`] returned it): every protocol of its
/// `Upgrade` header, compared by name, and at least one.
pub fn upgrade_agreed(response: &HeaderMap, asked: &HeaderValue) -> bool {
    let names: Vec<&[u8]> = tokens(std::iter::once(asked)).map(protocol_name).collect();
    let mut chosen = tokens(response.get_all(header::UPGRADE).iter()).peekable();
    chosen.peek().is_some()
        && chosen.all(|p| {
            let p = protocol_name(p);
            names.iter().any(|n| n.eq_ignore_ascii_case(p))
        })
}

/// Whether an offered `Upgrade` protocol is in the lower-case list `allowed`.
fn upgrade_allowed(offered: &[u8], allowed: &[String]) -> bool {
    let name = protocol_name(offered);
    !name.is_empty()
        && allowed
            .iter()
            .any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
}

/// `websocket` of `websocket/13`: an `Upgrade` protocol without its version.
fn protocol_name(protocol: &[u8]) -> &[u8] {
    protocol
        .split(|b| *b == b'/')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// The tokens of every `Connection` header, blanks trimmed. Split as bytes:
/// a non-ASCII byte elsewhere in a value must not hide its tokens.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    tokens(headers.get_all(header::CONNECTION).iter())
}

/// The comma-separated elements of a header's values, blanks trimmed.
fn tokens<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> impl Iterator<Item = &'a [u8]> {
    values
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The headers that describe one connection (RFC 9110 7.6.1) and are never
/// forwarded. `Upgrade` is left to the caller because a WebSocket handshake
/// keeps it. `HTTP2-Settings` belongs to the h2c upgrade (RFC 7540 3.2.1),
/// which is never forwarded, so it goes even when `Connection` omits it.
const FIXED_HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "http2-settings",
];

/// Whether `name` (lower case, as `HeaderName`s are) is in [`FIXED_HOP_BY_HOP`].
pub(super) fn is_fixed_hop_by_hop(name: &str) -> bool {
    FIXED_HOP_BY_HOP.contains(&name)
}

/// Whether a `Connection` token names a header that [`strip_hop_by_hop`]
/// handles without the token: a fixed hop-by-hop header, or `Upgrade`.
pub(super) fn handled_without_token(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"upgrade")
        || FIXED_HOP_BY_HOP
            .iter()
            .any(|f| token.eq_ignore_ascii_case(f.as_bytes()))
}

/// Fields a request's trailer section may not carry (RFC 9110 6.5.1):
/// framing, routing, hop-by-hop and the forwarding fields vipd vouches for
/// in the head. A backend that merges trailers into the head (some do)
/// would otherwise take a client's `X-Forwarded-For` or `Host` from them.
const NOT_IN_TRAILERS: [&str; 8] = [
    "host",
    "content-length",
    "content-type",
    "te",
    "upgrade",
    "forwarded",
    "via",
    "authorization",
];

/// Remove from a request's trailers every field that belongs in the head
/// only ([`NOT_IN_TRAILERS`], hop-by-hop fields, and every client-address
/// claim in any spelling), from every client, trusted or not.
pub fn strip_request_trailers(trailers: &mut HeaderMap) {
    remove_where(trailers, |n| {
        NOT_IN_TRAILERS.contains(&n) || is_fixed_hop_by_hop(n) || forged(n, false)
    });
}

/// Remove every field whose (lower-case) name `doomed` picks, all its
/// values.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| doomed(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Remove hop-by-hop headers: the fixed set, `TE` unless it is exactly
/// `trailers` (which gRPC needs end to end), and every header the
/// `Connection` header names. With `upgrade`, `Upgrade` is kept and
/// `Connection: upgrade` re-added so the handshake reaches the other side.
///
/// This runs on every request and response, so it makes one pass over the
/// header names and looks nothing up unless a name calls for it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed = headers.get_all(header::CONNECTION);
    // Whether `Connection` names a header that the checks below would not
    // drop anyway. Most name only `keep-alive` or `upgrade`, and then no
    // header name needs comparing with the tokens.
    let names_others = tokens(listed.iter()).any(|t| !handled_without_token(t));
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        let drop = if n == "upgrade" {
            !upgrade
        } else {
            is_fixed_hop_by_hop(n)
                || (n == "te"
                    && headers
                        .get_all(header::TE)
                        .iter()
                        .any(|te| te.as_bytes() != b"trailers"))
                || (names_others
                    && tokens(listed.iter()).any(|t| t.eq_ignore_ascii_case(n.as_bytes())))
        };
        if drop {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Per-connection values of the forwarding headers, computed once when the
/// connection is accepted.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub ip: IpAddr,
    /// `ip` as an `X-Forwarded-For` element.
    xff: HeaderValue,
    /// `ip` as an RFC 7239 `for=` node (IPv6 quoted and bracketed).
    node: String,
    /// `http` or `https`.
    proto: &'static str,
}

impl Peer {
    /// Values for a client at `ip`, connected over `https` or not.
    pub fn new(ip: IpAddr, https: bool) -> Self {
        let ip = ip.to_canonical();
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Self {
            ip,
            xff: HeaderValue::try_from(ip.to_string()).expect("an IP is a valid header value"),
            node,
            proto: if https { "https" } else { "http" },
        }
    }

    /// `http` or `https`.
    pub fn proto(&self) -> &'static str {
        self.proto
    }

    /// The client's address as an `X-Forwarded-For` element.
    pub(super) fn xff(&self) -> &[u8] {
        self.xff.as_bytes()
    }

    /// The client's address as an RFC 7239 `for=` node.
    pub(super) fn node(&self) -> &str {
        &self.node
    }
}

/// What [`add_forwarding`] adds beyond the `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Whether the client's own forwarding headers are believed.
    pub trusted: bool,
    /// Add RFC 7239 `Forwarded`.
    pub forwarded: bool,
    /// Add `Via`.
    pub via: bool,
    /// Set `X-Real-IP` to the client's address (a trusted proxy's own
    /// `X-Real-IP` is kept).
    pub real_ip: bool,
}

/// Add forwarding headers to a request from `peer` for `host` (the
/// validated authority the request was routed by, with any port).
pub fn add_forwarding(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: &HeaderValue,
    version: Version,
    opts: Options,
) {
    remove_where(headers, |n| forged(n, opts.trusted));
    if opts.real_ip && !(opts.trusted && headers.contains_key(&X_REAL_IP)) {
        headers.insert(X_REAL_IP.clone(), peer.xff.clone());
    }
    let xff = match opts
        .trusted
        .then(|| joined(headers, &X_FORWARDED_FOR))
        .flatten()
    {
        Some(mut chain) => {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(peer.xff.as_bytes());
            HeaderValue::from_bytes(&chain).unwrap_or_else(|_| peer.xff.clone())
        }
        None => peer.xff.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    if !(opts.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(peer.proto),
        );
    }
    if !(opts.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    let earlier = opts
        .trusted
        .then(|| joined(headers, &header::FORWARDED))
        .flatten();
    if opts.forwarded {
        let mut value = earlier.unwrap_or_default();
        if !value.is_empty() {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(b"for=");
        value.extend_from_slice(peer.node.as_bytes());
        value.extend_from_slice(b";host=");
        push_quoted(&mut value, host.as_bytes());
        value.extend_from_slice(b";proto=");
        value.extend_from_slice(peer.proto.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.insert(header::FORWARDED, v);
        }
    } else if !opts.trusted {
        headers.remove(header::FORWARDED);
    }
    if opts.via {
        add_via(headers, version);
    }
}

/// Append `value` to a `Forwarded` element as an RFC 7239 (section 4)
/// quoted-string, `"` and `\` escaped. Hosts reach here validated (no
/// quote can occur), but this keeps any byte from ending the string and
/// starting an element of its own. (`for` and `proto` are written by vipd
/// itself: a token, or a quoted bracketed IPv6 literal.)
pub(super) fn push_quoted(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    for &b in value {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Append this proxy to `Via`, naming the protocol version it received.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    let me = via_element(version);
    let value = match joined(headers, &header::VIA) {
        Some(mut v) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(me.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(me))
        }
        None => HeaderValue::from_static(me),
    };
    headers.insert(header::VIA, value);
}

/// This proxy's `Via` element for a message received in `version`.
pub(super) fn via_element(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0 vipd",
        Version::HTTP_2 => "2 vipd",
        _ => "1.1 vipd",
    }
}

/// All non-empty values of `name` joined with `, ` (empty list elements
/// carry nothing, RFC 9110 5.6.1), or None if there are none.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for v in headers.get_all(name).iter().filter(|v| !v.is_empty()) {
        let buf = out.get_or_insert_with(Vec::new);
        if !buf.is_empty() {
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(v.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
        h.get(k).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn hop_by_hop_headers_and_connection_named_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn a_non_ascii_byte_does_not_hide_connection_tokens() {
        let mut h = HeaderMap::new();
        h.append("x-secret", HeaderValue::from_static("1"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"X-Secret, \xff").unwrap(),
        );
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn te_goes_unless_every_value_is_trailers() {
        let mut h = headers(&[("te", "trailers"), ("te", "gzip")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(get(&h, "te"), None);
    }

    #[test]
    fn te_trailers_is_kept_and_upgrade_survives_a_websocket_handshake() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        let upgrade = allowed_upgrade(&h, &["websocket".to_string()]);
        assert_eq!(upgrade, Some(HeaderValue::from_static("websocket")));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(get(&h, "upgrade"), Some("websocket"));
        assert_eq!(get(&h, "connection"), Some("upgrade"));
        assert_eq!(get(&h, "te"), Some("trailers"));
    }

    #[test]
    fn only_allowed_upgrade_protocols_are_kept_and_h2c_never_is() {
        let allowed = ["websocket".to_string()];
        let offer = |upgrade: &str| {
            let h = headers(&[("connection", "upgrade"), ("upgrade", upgrade)]);
            allowed_upgrade(&h, &allowed)
        };
        assert_eq!(offer("h2c"), None);
        assert_eq!(
            offer("WebSocket/13"),
            Some(HeaderValue::from_static("WebSocket/13"))
        );
        assert_eq!(
            offer("h2c, websocket"),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(offer("/websocket"), None);
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert_eq!(allowed_upgrade(&no_connection, &allowed), None);
    }

    #[test]
    fn a_101_must_switch_to_a_protocol_the_client_offered() {
        let asked = HeaderValue::from_static("websocket/13");
        let agreed = |upgrade: &[(&str, &str)]| upgrade_agreed(&headers(upgrade), &asked);
        assert!(agreed(&[("upgrade", "WebSocket")]));
        assert!(!agreed(&[("upgrade", "h2c")]));
        assert!(!agreed(&[("upgrade", "websocket, h2c")]));
        assert!(!agreed(&[]));
    }

    #[test]
    fn untrusted_client_forwarding_headers_are_replaced() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let peer = Peer::new("192.0.2.1".parse().unwrap(), false);
        let host = HeaderValue::from_static("www.example.com:8080");
        let opts = Options {
            trusted: false,
            forwarded: false,
            via: false,
            real_ip: false,
        };
        add_forwarding(&mut h, &peer, &host, Version::HTTP_11, opts);
        assert_eq!(get(&h, "x-forwarded-for"), Some("192.0.2.1"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("www.example.com:8080"));
        assert_eq!(get(&h, "forwarded"), None);
    }

    #[test]
    fn trusted_proxy_chains_are_appended_to() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.9"),
            ("via", "1.1 edge"),
        ]);
        let peer = Peer::new("2001:db8::1".parse().unwrap(), true);
        let host = HeaderValue::from_static("www.example.com");
        let opts = Options {
            trusted: true,
            forwarded: true,
            via: true,
            real_ip: false,
        };
        add_forwarding(&mut h, &peer, &host, Version::HTTP_2, opts);
        assert_eq!(
            get(&h, "x-forwarded-for"),
            Some("203.0.113.9, 198.51.100.2, 2001:db8::1")
        );
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&h, "x-forwarded-host"), Some("www.example.com"));
        assert_eq!(
            get(&h, "forwarded"),
            Some("for=203.0.113.9, for=\"[2001:db8::1]\";host=\"www.example.com\";proto=https")
        );
        assert_eq!(get(&h, "via"), Some("1.1 edge, 2 vipd"));
    }

    #[test]
    fn untrusted_client_address_claims_are_dropped_and_x_real_ip_set_on_request() {
        let mut h = headers(&[
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-forwarded-port", "1"),
        ]);
        let peer = Peer::new("192.0.2.1".parse().unwrap(), false);
        let host = HeaderValue::from_static("a.test");
        let mut opts = Options {
            trusted: false,
            forwarded: false,
            via: false,
            real_ip: false,
        };
        add_forwarding(&mut h, &peer, &host, Version::HTTP_11, opts);
        assert_eq!(get(&h, "x-real-ip"), None);
        assert_eq!(get(&h, "true-client-ip"), None);
        assert_eq!(get(&h, "x-forwarded-port"), None);
        opts.real_ip = true;
        let mut h = headers(&[("x-real-ip", "6.6.6.6")]);
        add_forwarding(&mut h, &peer, &host, Version::HTTP_11, opts);
        assert_eq!(get(&h, "x-real-ip"), Some("192.0.2.1"));
        opts.trusted = true;
        let mut h = headers(&[("x-real-ip", "203.0.113.9"), ("true-client-ip", "x")]);
        add_forwarding(&mut h, &peer, &host, Version::HTTP_11, opts);
        assert_eq!(get(&h, "x-real-ip"), Some("203.0.113.9"));
        assert_eq!(get(&h, "true-client-ip"), Some("x"));
    }

    #[test]
    fn a_quote_in_the_host_cannot_end_the_forwarded_string() {
        let mut h = HeaderMap::new();
        let peer = Peer::new("192.0.2.1".parse().unwrap(), false);
        let host = HeaderValue::from_static("a\", for=6.6.6.6\\");
        let opts = Options {
            trusted: false,
            forwarded: true,
            via: false,
            real_ip: false,
        };
        add_forwarding(&mut h, &peer, &host, Version::HTTP_11, opts);
        assert_eq!(
            get(&h, "forwarded"),
            Some("for=192.0.2.1;host=\"a\\\", for=6.6.6.6\\\\\";proto=http")
        );
    }

    #[test]
    fn ipv4_mapped_clients_are_shown_as_ipv4() {
        let peer = Peer::new("::ffff:192.0.2.7".parse().unwrap(), false);
        assert_eq!(peer.ip.to_string(), "192.0.2.7");
    }
}
