//! Property tests for the header rewriting vipd adds to proxied requests:
//! for arbitrary header maps and `Connection` token lists no hop-by-hop
//! header survives, headers named in `Connection` are removed and every
//! other header is kept as it was; forwarding headers from an untrusted
//! client are replaced (the forged values never reach a backend) and from a
//! trusted proxy appended to. Nothing panics on any header bytes.

use std::net::IpAddr;

use hyper::Version;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use vipd::proxy::http::headers::{self, Options, Peer};

/// Headers that describe one connection and must never be forwarded
/// (except `te: trailers`, checked separately).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// A header name: often one the proxy treats specially, otherwise any
/// token, in any case.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(HOP_BY_HOP.to_vec()).prop_map(str::to_string),
        prop::sample::select(FORWARDING.to_vec()).prop_map(str::to_string),
        Just("te".to_string()),
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
    ]
}

/// Any bytes a header value may hold (visible ASCII, space, tab,
/// obs-text), sometimes `trailers`, the one TE value that is forwarded.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let bytes = prop::collection::vec(
        prop_oneof![
            8 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..24,
    );
    prop_oneof![9 => bytes, 1 => Just(b"trailers".to_vec())]
}

/// A `Connection` value: tokens (some naming headers of the map, some
/// `close`/`upgrade`/garbage), separated by commas with optional blanks.
fn connection(names: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(if names.is_empty() {
            vec!["x".to_string()]
        } else {
            names
        }),
        Just("close".to_string()),
        Just("Upgrade".to_string()),
        "[ -~]{0,6}",
    ];
    (
        prop::collection::vec((token, " {0,2}", " {0,2}"), 1..5),
        prop::option::of(0x80u8..=0xff),
    )
        .prop_map(|(tokens, junk)| {
            let mut v = Vec::new();
            for (i, (t, before, after)) in tokens.iter().enumerate() {
                if i > 0 {
                    v.push(b',');
                }
                v.extend_from_slice(before.as_bytes());
                // Connection tokens are case-insensitive.
                let t = if i % 2 == 0 {
                    t.to_ascii_uppercase()
                } else {
                    t.clone()
                };
                v.extend_from_slice(t.as_bytes());
                v.extend_from_slice(after.as_bytes());
            }
            // A byte outside ASCII elsewhere in the value must not hide the
            // tokens around it.
            if let Some(b) = junk {
                v.extend_from_slice(b", \x80");
                v.push(b);
            }
            v
        })
}

/// A header map with `Connection` values that name some of its headers.
fn request_headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((name(), value()), 0..16)
        .prop_flat_map(|pairs| {
            let names: Vec<String> = pairs.iter().map(|(n, _)| n.clone()).collect();
            (Just(pairs), prop::collection::vec(connection(names), 0..3))
        })
        .prop_map(|(pairs, connections)| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_bytes(&v),
                ) {
                    h.append(n, v);
                }
            }
            for c in connections {
                h.append("connection", HeaderValue::from_bytes(&c).unwrap());
            }
            h
        })
}

/// Header names a `Connection` header lists (those that are valid names).
fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

fn peer_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        // IPv4-mapped IPv6 is shown as IPv4.
        any::<[u8; 4]>().prop_map(|v4| IpAddr::from(std::net::Ipv4Addr::from(v4).to_ipv6_mapped())),
    ]
}

fn values(h: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    h.get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    #[test]
    fn no_hop_by_hop_header_survives_and_the_others_are_kept(h in request_headers()) {
        let named = connection_named(&h);
        let mut out = h.clone();
        headers::strip_hop_by_hop(&mut out, false);
        for n in HOP_BY_HOP {
            prop_assert!(!out.contains_key(n), "{} survived", n);
        }
        for n in &named {
            prop_assert!(!out.contains_key(n), "{} is named in Connection and survived", n);
        }
        // TE survives only as `trailers`, which gRPC needs end to end.
        for te in out.get_all("te") {
            prop_assert_eq!(te.as_bytes(), b"trailers");
        }
        for n in h.keys() {
            let special = HOP_BY_HOP.contains(&n.as_str()) || n == "te" || named.contains(n);
            if !special {
                prop_assert_eq!(values(&out, n.as_str()), values(&h, n.as_str()), "{} changed", n);
            }
        }
    }

    #[test]
    fn a_websocket_handshake_keeps_only_upgrade_and_connection_upgrade(h in request_headers()) {
        let mut out = h.clone();
        headers::strip_hop_by_hop(&mut out, true);
        prop_assert_eq!(values(&out, "connection"), vec![b"upgrade".to_vec()]);
        prop_assert_eq!(values(&out, "upgrade"), values(&h, "upgrade"));
        for n in HOP_BY_HOP.iter().filter(|n| !matches!(**n, "connection" | "upgrade")) {
            prop_assert!(!out.contains_key(*n), "{} survived", n);
        }
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_client_are_replaced(
        h in request_headers(), ip in peer_ip(), https in any::<bool>(), forwarded in any::<bool>(),
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
    ) {
        let peer = Peer::new(ip, https);
        let host = HeaderValue::from_str(&host).unwrap();
        let mut out = h.clone();
        let opts = Options { trusted: false, forwarded, via: false, real_ip: false };
        headers::add_forwarding(&mut out, &peer, &host, Version::HTTP_11, opts);
        let shown = peer.ip.to_string();
        prop_assert_eq!(values(&out, "x-forwarded-for"), vec![shown.clone().into_bytes()]);
        prop_assert_eq!(values(&out, "x-forwarded-proto"), vec![peer.proto().as_bytes().to_vec()]);
        prop_assert_eq!(values(&out, "x-forwarded-host"), vec![host.as_bytes().to_vec()]);
        let fwd = values(&out, "forwarded");
        if forwarded {
            prop_assert_eq!(fwd.len(), 1);
            let node = if peer.ip.is_ipv6() { format!("\"[{shown}]\"") } else { shown };
            let own = format!("for={node};host=\"{}\";proto={}", host.to_str().unwrap(), peer.proto());
            prop_assert_eq!(String::from_utf8_lossy(&fwd[0]), own);
        } else {
            prop_assert!(fwd.is_empty(), "a client's Forwarded header was passed on");
        }
    }

    #[test]
    fn any_host_bytes_stay_inside_one_quoted_forwarded_string(
        host in proptest::collection::vec(
            proptest::prop_oneof![proptest::sample::select(b"\"\\,;= ".to_vec()), 0x21u8..0x7f],
            1..30,
        ),
    ) {
        let peer = Peer::new("192.0.2.1".parse().unwrap(), false);
        let host = HeaderValue::from_bytes(&host).unwrap();
        let mut out = hyper::HeaderMap::new();
        let opts = Options { trusted: false, forwarded: true, via: false, real_ip: false };
        headers::add_forwarding(&mut out, &peer, &host, Version::HTTP_11, opts);
        let fwd = values(&out, "forwarded").remove(0);
        let rest = fwd.strip_prefix(b"for=192.0.2.1;host=\"".as_slice()).unwrap();
        // Unescape the quoted-string: it must end exactly before `;proto=http`.
        let (mut unquoted, mut i) = (Vec::new(), 0);
        while rest[i] != b'"' {
            if rest[i] == b'\\' {
                i += 1;
            }
            unquoted.push(rest[i]);
            i += 1;
        }
        prop_assert_eq!(&unquoted[..], host.as_bytes());
        prop_assert_eq!(&rest[i..], b"\";proto=http".as_slice());
    }

    #[test]
    fn forwarding_headers_from_a_trusted_proxy_are_appended_to(
        h in request_headers(), ip in peer_ip(), https in any::<bool>(),
    ) {
        let peer = Peer::new(ip, https);
        let host = HeaderValue::from_static("www.example.com");
        let mut out = h.clone();
        let opts = Options { trusted: true, forwarded: true, via: true, real_ip: false };
        headers::add_forwarding(&mut out, &peer, &host, Version::HTTP_2, opts);
        let shown = peer.ip.to_string();
        // Empty list elements carry nothing and are dropped.
        let mut chain: Vec<Vec<u8>> = values(&h, "x-forwarded-for").into_iter().filter(|v| !v.is_empty()).collect();
        chain.push(shown.into_bytes());
        prop_assert_eq!(values(&out, "x-forwarded-for"), vec![chain.join(&b", "[..])]);
        // What the trusted proxy said about proto and host stands.
        for n in ["x-forwarded-proto", "x-forwarded-host"] {
            if h.contains_key(n) {
                prop_assert_eq!(values(&out, n), values(&h, n));
            } else {
                prop_assert_eq!(out.get_all(n).iter().count(), 1);
            }
        }
        let fwd = values(&out, "forwarded");
        prop_assert_eq!(fwd.len(), 1);
        let earlier: Vec<Vec<u8>> = values(&h, "forwarded").into_iter().filter(|v| !v.is_empty()).collect();
        prop_assert!(fwd[0].starts_with(&earlier.join(&b", "[..])));
        let own_end = format!(";proto={}", peer.proto());
        prop_assert!(fwd[0].ends_with(own_end.as_bytes()));
        let via = values(&out, "via");
        prop_assert_eq!(via.len(), 1);
        prop_assert!(via[0].ends_with(b"2 vipd"));
    }
}
