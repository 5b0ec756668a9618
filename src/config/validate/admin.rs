//! `[admin]`: the admin endpoint is closed by default. A listen address
//! other than loopback needs a bearer token, the names a request's Host may
//! carry are listed, and every connection has a deadline and a slot.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::file::RawAdmin;
use crate::config::model::Admin;

pub(super) fn admin(c: &mut Checker<'_>, t: &Spanned<toml::Table>) -> Admin {
    let span = t.span();
    let raw: RawAdmin = c.entry(t, "admin");
    let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:9100".into());
    let listen = c
        .socket_addr(&span, "admin", "listen", &listen_text)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9100)));
    let ip = listen.ip().to_canonical();
    if !ip.is_loopback() && raw.token_file.is_none() {
        let what = if ip.is_unspecified() {
            "a wildcard address"
        } else {
            "not a loopback address"
        };
        c.report(
            &span,
            "admin",
            Some("listen"),
            format!(
                "{ip} is {what} and no token_file is set: anyone who reaches it could drain backends and reload"
            ),
            "set `token_file` to a file holding a bearer token, or listen on 127.0.0.1 or [::1]",
        );
    }
    let mut hosts = Vec::new();
    for h in raw.hosts.iter().flatten() {
        match host_name(h) {
            Some(name) => hosts.push(name),
            None => c.report(
                &span,
                "admin",
                Some("hosts"),
                format!("{h:?} is not a host name or IP address"),
                "write names without scheme or port, as clients put them in Host: \"lb1.mgmt.example\", \"10.0.0.5\"",
            ),
        }
    }
    let timeouts = Duration::from_millis(100)..=Duration::from_secs(600);
    let header_timeout = c.duration_in(
        &span,
        "admin",
        "header_timeout",
        &raw.header_timeout,
        Admin::DEFAULT_HEADER_TIMEOUT,
        timeouts.clone(),
    );
    let request_timeout = c.duration_in(
        &span,
        "admin",
        "request_timeout",
        &raw.request_timeout,
        Admin::DEFAULT_REQUEST_TIMEOUT,
        timeouts,
    );
    let max_connections = c.number(
        &span,
        "admin",
        "max_connections",
        raw.max_connections,
        1..=4096,
        "connections",
        Admin::DEFAULT_MAX_CONNECTIONS,
    );
    Admin {
        listen,
        token_file: raw.token_file.map(Into::into),
        hosts,
        header_timeout,
        request_timeout,
        max_connections,
    }
}

/// An `admin.hosts` entry as Host names are compared: lower case, final dot
/// removed, IPv6 literals in brackets. None if it is not a name or an IP.
/// Not `crate::authority`: config imports no other module, and an
/// operator's entry is held to DNS rules (letters, digits, `-`, labels of at
/// most 63), stricter than what a client may send.
fn host_name(text: &str) -> Option<String> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    if let Ok(v6) = bare.unwrap_or(text).parse::<Ipv6Addr>() {
        // The admin guard compares an IPv4-mapped Host as its IPv4 address.
        return Some(match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{v6}]"),
        });
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    valid.then(|| name.to_ascii_lowercase())
}
