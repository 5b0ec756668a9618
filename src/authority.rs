//! The one validator and normal form for the host names clients send: the
//! Host header, HTTP/2 `:authority`, absolute-form request targets and TLS
//! SNI. Routing, the SNI/Host (421) check and certificate selection all
//! compare names in this form, so they can never disagree about which site
//! a name means.
//!
//! An authority is `host [ ":" port ]` (RFC 3986 3.2, without userinfo):
//! a registered name of unreserved characters (`A-Z a-z 0-9 - . _ ~`), an
//! IPv4 address, or a bracketed IPv6 literal; the port is 1 to 5 digits up
//! to 65535. Anything else (spaces, `/`, `"`, `,`, `@`, percent escapes,
//! an empty name, label or port) is refused, which also keeps these bytes out of
//! every forwarding header that repeats the host. The normal form is lower
//! case, without a final dot, with IPv6 literals in their canonical text.
//! It is a leaf module: it imports nothing from the crate.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

/// Longest host name accepted (a DNS name is at most 253 characters; the
/// rest is room for an IPv6 literal's brackets).
const MAX_HOST: usize = 255;

/// A validated, normalised authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    /// Lower case, no final dot; IPv6 literals bracketed and canonical.
    host: Cow<'a, str>,
    port: Option<u16>,
}

/// Why bytes are not an authority. The bytes always come from a client
/// (Host, `:authority`, request target, SNI, an admin request's Origin), so
/// the client is the side at fault: the proxy answers 400 (logged with
/// `side = "client"`), SNI selection falls back to the default certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("empty host")]
    Empty,
    #[error("host name too long")]
    TooLong,
    #[error("empty label in a host name")]
    Label,
    #[error("character not allowed in a host name")]
    Character,
    #[error("malformed IPv6 literal")]
    Ipv6,
    #[error("port is not a number from 0 to 65535")]
    Port,
}

impl<'a> Authority<'a> {
    /// Validate and normalise `text` (the bytes of a Host value, an
    /// `:authority` or a URI's authority).
    pub fn parse(text: &'a [u8]) -> Result<Self, Invalid> {
        let (host, port) = if text.first() == Some(&b'[') {
            let close = text.iter().position(|&b| b == b']').ok_or(Invalid::Ipv6)?;
            let port = match &text[close + 1..] {
                [] => None,
                [b':', digits @ ..] => Some(port(digits)?),
                _ => return Err(Invalid::Ipv6),
            };
            let inner = std::str::from_utf8(&text[1..close]).map_err(|_| Invalid::Ipv6)?;
            let ip: Ipv6Addr = inner.parse().map_err(|_| Invalid::Ipv6)?;
            (Cow::Owned(format!("[{ip}]")), port)
        } else {
            let (name, port) = match text.iter().rposition(|&b| b == b':') {
                Some(i) => (&text[..i], Some(port(&text[i + 1..])?)),
                None => (text, None),
            };
            (reg_name(name)?, port)
        };
        Ok(Self { host, port })
    }

    /// The host in normal form (no port).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host in normal form, without copying it.
    pub fn into_host(self) -> Cow<'a, str> {
        self.host
    }

    /// The port, if one was written.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether both name the same host and port, where an omitted port is
    /// `default_port` (the scheme's: 80 for http, 443 for https).
    pub fn same_as(&self, other: &Authority<'_>, default_port: u16) -> bool {
        self.host == other.host
            && self.port.unwrap_or(default_port) == other.port.unwrap_or(default_port)
    }
}

/// The normal form, `host[:port]`; it parses back to the same authority.
impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// The normal form of a TLS server name (SNI), or None if it is not a
/// host name without port.
pub fn server_name(sni: &str) -> Option<Cow<'_, str>> {
    match Authority::parse(sni.as_bytes()) {
        Ok(Authority { host, port: None }) => Some(host),
        _ => None,
    }
}

/// A registered name or IPv4 address, lower case, final dot removed.
/// Labels may not be empty (`.a.test`, `a..test`, `a.test..`), as in DNS:
/// otherwise `a.test..` would keep a final dot in its normal form.
fn reg_name(name: &[u8]) -> Result<Cow<'_, str>, Invalid> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(Invalid::Empty);
    }
    if name.starts_with(b".") || name.ends_with(b".") || name.windows(2).any(|w| w == b"..") {
        return Err(Invalid::Label);
    }
    if name.len() > MAX_HOST {
        return Err(Invalid::TooLong);
    }
    let unreserved = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if !name.iter().all(unreserved) {
        return Err(Invalid::Character);
    }
    let text = std::str::from_utf8(name).map_err(|_| Invalid::Character)?;
    Ok(if name.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    })
}

/// A port: 1 to 5 digits, at most 65535.
fn port(digits: &[u8]) -> Result<u16, Invalid> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Invalid::Port);
    }
    let n = digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| Invalid::Port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> Result<String, Invalid> {
        Authority::parse(text.as_bytes()).map(|a| a.to_string())
    }

    #[test]
    fn names_lose_case_and_a_final_dot_and_keep_their_port() {
        assert_eq!(
            norm("WWW.Example.com:8080").unwrap(),
            "www.example.com:8080"
        );
        assert_eq!(norm("www.example.com.").unwrap(), "www.example.com");
        assert_eq!(norm("www.example.com.:443").unwrap(), "www.example.com:443");
        assert_eq!(norm("192.0.2.1:80").unwrap(), "192.0.2.1:80");
        assert_eq!(norm("under_score~x").unwrap(), "under_score~x");
    }

    #[test]
    fn ipv6_literals_are_canonical_and_keep_their_brackets() {
        assert_eq!(norm("[::1]:80").unwrap(), "[::1]:80");
        assert_eq!(norm("[2001:DB8:0:0::1]").unwrap(), "[2001:db8::1]");
        assert_eq!(norm("[::1"), Err(Invalid::Ipv6));
        assert_eq!(norm("[::1]x"), Err(Invalid::Ipv6));
        assert_eq!(norm("[v1.x]"), Err(Invalid::Ipv6));
        assert_eq!(norm("::1"), Err(Invalid::Character));
    }

    #[test]
    fn bytes_that_could_split_or_quote_a_header_are_refused() {
        for bad in [
            "a b",
            "a/b",
            "a\"b",
            "a, b",
            "user@a.test",
            "a%2eb",
            "a;b",
            "a\\b",
            "a\tb",
            "é.test",
        ] {
            assert_eq!(norm(bad), Err(Invalid::Character), "{bad:?}");
        }
        assert_eq!(norm(""), Err(Invalid::Empty));
        assert_eq!(norm("."), Err(Invalid::Empty));
        for bad in [".a.test", "a..test", "a.test..", "..", "a.test..:80"] {
            assert_eq!(norm(bad), Err(Invalid::Label), "{bad:?}");
        }
        assert_eq!(norm(":80"), Err(Invalid::Empty));
        assert_eq!(norm("a.test:"), Err(Invalid::Port));
        assert_eq!(norm("a.test:65536"), Err(Invalid::Port));
        assert_eq!(norm("a.test:+80"), Err(Invalid::Port));
        assert_eq!(norm(&"a".repeat(256)), Err(Invalid::TooLong));
    }

    #[test]
    fn an_omitted_port_is_the_default_port_when_comparing() {
        let a = Authority::parse(b"A.test.").unwrap();
        let b = Authority::parse(b"a.test:80").unwrap();
        assert!(a.same_as(&b, 80));
        assert!(!a.same_as(&b, 443));
        let c = Authority::parse(b"b.test:80").unwrap();
        assert!(!b.same_as(&c, 80));
    }

    #[test]
    fn server_names_are_host_names_without_port() {
        assert_eq!(server_name("A.Test.").as_deref(), Some("a.test"));
        assert_eq!(server_name("a.test:443"), None);
        assert_eq!(server_name("a test"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_the_normal_form_parses_back_to_itself(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"aZ09-._~:[]@/\", \\%".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..48,
            ),
        ) {
            if let Ok(a) = Authority::parse(&bytes) {
                let text = a.to_string();
                let again = Authority::parse(text.as_bytes());
                proptest::prop_assert_eq!(again.as_ref(), Ok(&a));
                proptest::prop_assert_eq!(again.unwrap().to_string(), text);
            }
        }

        #[test]
        fn any_dns_name_with_any_port_is_accepted_in_lower_case(
            labels in proptest::collection::vec("[a-zA-Z0-9-]{1,10}", 1..5),
            dot: bool,
            port: Option<u16>,
        ) {
            let name = labels.join(".");
            let suffix = port.map(|p| format!(":{p}")).unwrap_or_default();
            let text = format!("{name}{}{suffix}", if dot { "." } else { "" });
            let a = Authority::parse(text.as_bytes()).unwrap();
            proptest::prop_assert_eq!(a.host(), name.to_ascii_lowercase());
            proptest::prop_assert_eq!(a.port(), port);
        }

        #[test]
        fn any_ipv6_literal_keeps_its_brackets(ip: [u8; 16], port: Option<u16>) {
            let literal = format!("[{}]", Ipv6Addr::from(ip));
            let text = format!("{literal}{}", port.map(|p| format!(":{p}")).unwrap_or_default());
            let a = Authority::parse(text.as_bytes()).unwrap();
            proptest::prop_assert_eq!(a.host(), literal);
        }
    }
}
