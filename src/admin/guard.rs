//! Who may talk to the admin endpoint: a request must be addressed to it
//! (its Host, and an absolute-form target's authority, name the address
//! the connection arrived on, `localhost` on loopback, or an `admin.hosts`
//! entry) and must not come from another web origin (no `Origin` header
//! may name one). This stops DNS rebinding (a hostile page whose name resolves to
//! the admin address) and cross-site requests from a browser that can
//! reach the endpoint (CSRF), whether or not a token is set.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use hyper::HeaderMap;
use hyper::header::{HOST, ORIGIN};

use crate::authority::Authority;

/// Why a request was refused; the text is the body of the 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    #[error("the Host header must name this admin endpoint ({0}); add other names to admin.hosts")]
    Host(String),
    #[error(
        "the request target must name this admin endpoint ({0}); add other names to admin.hosts"
    )]
    Target(String),
    #[error("cross-origin requests are refused (Origin {0:?})")]
    Origin(String),
}

/// Check the Host, the target's authority (`target`, absolute-form only)
/// and the Origin of a request that arrived on `local`, with the extra
/// `hosts` names (normalised as [`authority`] returns names).
pub(super) fn check(
    headers: &HeaderMap,
    target: Option<&str>,
    local: SocketAddr,
    hosts: &[String],
) -> Result<(), Refused> {
    let mut all = headers.get_all(HOST).iter();
    let host = match (all.next(), all.next()) {
        (Some(h), None) => h.to_str().ok(),
        _ => None,
    };
    let own = own_names(local);
    let host_text = host.unwrap_or_default();
    let ours =
        |text: &str| authority(text).filter(|(name, _)| own.iter().chain(hosts).any(|n| n == name));
    let named = host
        .and_then(ours)
        .ok_or_else(|| Refused::Host(host_text.to_string()))?;
    if let Some(t) = target.filter(|t| ours(t).is_none()) {
        return Err(Refused::Target(t.to_string()));
    }
    // Every Origin: a second one must not slip another site past the first.
    for origin in headers.get_all(ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .and_then(authority)
            .is_some_and(|o| o == named);
        if !same {
            let text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
            return Err(Refused::Origin(text));
        }
    }
    Ok(())
}

/// The names that always mean this endpoint on a connection to `local`:
/// its address, and `localhost` when that is a loopback address.
fn own_names(local: SocketAddr) -> Vec<String> {
    let ip = local.ip().to_canonical();
    let mut names = vec![match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }];
    if ip.is_loopback() {
        names.push("localhost".to_string());
    }
    names
}

/// `(name, port)` of an authority `host[:port]` in the proxy's normal form
/// ([`crate::authority`]: the same characters refused, lower case, no final
/// dot, canonical IPv6), with two admin twists: an IPv4-mapped IPv6 literal
/// becomes its IPv4 address (as [`own_names`] writes a mapped local
/// address), and an absent port is 80. None if it is not an authority.
fn authority(text: &str) -> Option<(String, u16)> {
    let parsed = Authority::parse(text.as_bytes()).ok()?;
    let port = parsed.port().unwrap_or(80);
    let host = parsed.into_host();
    let mapped = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<Ipv6Addr>().ok())
        .and_then(|v6| v6.to_ipv4_mapped());
    let name = match mapped {
        Some(v4) => v4.to_string(),
        None => host.into_owned(),
    };
    Some((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const LOCAL: &str = "127.0.0.1:9100";

    fn checked(pairs: &[(&str, &str)]) -> Result<(), Refused> {
        check(
            &headers(pairs),
            None,
            LOCAL.parse().unwrap(),
            &["lb1.mgmt".to_string()],
        )
    }

    #[test]
    fn hosts_naming_the_endpoint_pass_and_others_are_refused() {
        for ok in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "LOCALHOST:9100",
            "lb1.mgmt.:19100",
        ] {
            assert_eq!(checked(&[("host", ok)]), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example",
            "127.0.0.1.evil.example",
            "",
            "127.0.0.1:x",
            "a/b",
        ] {
            assert_eq!(
                checked(&[("host", bad)]),
                Err(Refused::Host(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(checked(&[]), Err(Refused::Host(String::new())));
        let two = [("host", "127.0.0.1"), ("host", "evil.example")];
        assert_eq!(checked(&two), Err(Refused::Host(String::new())));
    }

    #[test]
    fn an_origin_must_be_the_hosts_own_http_origin() {
        let host = ("host", "127.0.0.1:9100");
        assert_eq!(
            checked(&[host, ("origin", "http://127.0.0.1:9100")]),
            Ok(())
        );
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:3000",
            "https://127.0.0.1:9100",
            "null",
            "http://127.0.0.1:9100/path",
        ] {
            assert_eq!(
                checked(&[host, ("origin", bad)]),
                Err(Refused::Origin(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn ipv6_and_mapped_addresses_are_compared_canonically() {
        let local: SocketAddr = "[::1]:9100".parse().unwrap();
        let h = headers(&[("host", "[0:0::1]:9100")]);
        assert_eq!(check(&h, None, local, &[]), Ok(()));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9100".parse().unwrap();
        let h = headers(&[("host", "127.0.0.1:9100")]);
        assert_eq!(check(&h, None, mapped, &[]), Ok(()));
    }
}
