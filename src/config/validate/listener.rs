//! `[[listener]]`: addresses, protocols, limits, timeouts, forwarding
//! headers, upgrades and PROXY protocol.

use super::*;

#[allow(clippy::too_many_arguments)] // one reference per section a listener may name
pub(super) fn listener(
    c: &mut Checker<'_>,
    t: &Spanned<toml::Table>,
    i: usize,
    names: &mut HashSet<String>,
    pools: &Defined<Pool>,
    groups: &Defined<PersistenceGroup>,
    vhosts: &Defined<Vhost>,
    routes: &mut RouteBudget,
) -> Listener {
    let span = t.span();
    let raw: RawListener = c.entry(t, &format!("listener[{i}]"));
    let name = c.unique_name(
        names,
        &span,
        &format!("listener[{i}]"),
        "listener",
        &raw.name,
        i,
    );
    let p = format!("listener {name:?}");
    let bind = c
        .required(&span, &p, "bind", &raw.bind, "\"198.51.100.100:80\"")
        .and_then(|b| c.socket_addr(&span, &p, "bind", b))
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    if raw.protocol.is_none() {
        c.report(
            &span,
            &p,
            None,
            "missing required field `protocol`",
            "add `protocol = \"tcp\"` (or \"tls\", \"http\", \"https\")",
        );
    }
    let protocol = c.choice(
        &span,
        &p,
        "protocol",
        &raw.protocol,
        &[
            (Protocol::Tcp, "tcp"),
            (Protocol::Tls, "tls"),
            (Protocol::Http, "http"),
            (Protocol::Https, "https"),
        ],
        Protocol::Tcp,
    );
    match (&raw.pool, protocol) {
        (Some(pool), Protocol::Tcp | Protocol::Tls) => {
            check_pool_ref(c, &span, &p, "pool", pool, pools)
        }
        (None, Protocol::Tcp | Protocol::Tls) => c.report(
            &span,
            &p,
            None,
            format!("a {} listener needs a pool", protocol.as_str()),
            "add `pool = \"...\"` naming a [[pool]]",
        ),
        (Some(_), Protocol::Http | Protocol::Https) => c.report(
            &span,
            &p,
            Some("pool"),
            "http and https listeners route to pools through vhosts",
            "remove `pool` and set `pool` in the [[vhost]] sections this listener serves",
        ),
        (None, _) => {}
    }
    let served = served_vhosts(c, &span, &p, &raw, protocol, vhosts, routes);
    if protocol == Protocol::Tcp && !raw.vhosts.is_empty() {
        c.report(
            &span,
            &p,
            Some("vhosts"),
            "a tcp listener does not look at host names",
            "remove `vhosts`, or use protocol \"http\" to route by Host",
        );
    }
    if protocol.is_tls() {
        for v in served.iter().filter_map(|n| vhosts.get(n)) {
            if v.certificates.is_empty() {
                c.report(
                    &span,
                    &p,
                    Some("vhosts"),
                    format!("vhost {:?} has no certificate but is served over TLS", v.name),
                    format!(
                        "add `certificates = [{{ cert = \"...\", key = \"...\" }}]` to vhost {:?} (vipd gen-cert makes a self-signed pair)",
                        v.name
                    ),
                );
            }
        }
    }
    if let Some(d) = &raw.default_vhost {
        if !served.contains(d) {
            c.report(
                &span,
                &p,
                Some("default_vhost"),
                format!("{d:?} is not one of the vhosts this listener serves"),
                "name a vhost listed in `vhosts`",
            );
        }
    }
    if let Some(g) = &raw.persistence {
        check_group_ref(c, &span, &p, g, groups);
    }
    let alpn = raw.alpn.clone().unwrap_or_else(|| match protocol {
        Protocol::Https => vec!["h2".into(), "http/1.1".into()],
        _ => Vec::new(),
    });
    for (i, a) in alpn.iter().enumerate() {
        if !matches!(a.as_str(), "h2" | "http/1.1") || protocol != Protocol::Https {
            c.report(
                &span,
                &p,
                Some("alpn"),
                format!("ALPN {a:?} is not served here"),
                "only https listeners negotiate ALPN, with \"h2\" and \"http/1.1\"",
            );
        } else if alpn[..i].contains(a) {
            // each handshake compares the client's list with every entry
            c.report(
                &span,
                &p,
                Some("alpn"),
                format!("ALPN {a:?} is listed twice"),
                "list each protocol once: [\"h2\", \"http/1.1\"]",
            );
            break;
        }
    }
    let mut trusted_proxies = Vec::new();
    if raw.trusted_proxies.len() > MAX_TRUSTED {
        c.report(
            &span,
            &p,
            Some("trusted_proxies"),
            format!(
                "{} networks are listed, more than {MAX_TRUSTED}: every connection and request is compared with each",
                raw.trusted_proxies.len()
            ),
            "list the networks your proxies send from, merged into wider prefixes",
        );
    }
    for t in raw.trusted_proxies.iter().take(MAX_TRUSTED) {
        match t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => c.report(
                &span,
                &p,
                Some("trusted_proxies"),
                format!("{t:?} is not an address or network"),
                "write addresses or CIDR networks: \"10.0.0.0/8\", \"2001:db8::1\"",
            ),
        }
    }
    if raw.proxy_protocol == Some(true) && raw.trusted_proxies.is_empty() {
        c.report(
            &span,
            &p,
            Some("proxy_protocol"),
            "`proxy_protocol = true` with no `trusted_proxies` would let any client claim any address",
            "list the proxies that send PROXY headers, e.g. `trusted_proxies = [\"10.0.0.5\"]`; to accept them from anyone, write `trusted_proxies = [\"0.0.0.0/0\", \"::/0\"]`",
        );
    }
    for (field, set) in [
        ("forwarded", raw.forwarded),
        ("via", raw.via),
        ("x_real_ip", raw.x_real_ip),
    ] {
        if set.is_some() && !protocol.is_http() {
            c.report(
                &span,
                &p,
                Some(field),
                format!("`{field}` adds an HTTP header, and this listener does not speak HTTP"),
                "remove it, or use protocol \"http\" or \"https\"",
            );
        }
    }
    let (max_header_bytes, max_headers) = header_limits(c, &span, &p, &raw, protocol);
    let upgrades = upgrades(c, &span, &p, &raw, protocol);
    let (request_body_timeout, send_timeout) = transfer_timeouts(c, &span, &p, &raw, protocol);
    let http1_codec = c.choice(
        &span,
        &p,
        "http1_codec",
        &raw.http1_codec,
        &[(Http1Codec::Vipd, "vipd"), (Http1Codec::Hyper, "hyper")],
        Http1Codec::Vipd,
    );
    if raw.http1_codec.is_some() && !protocol.is_http() {
        c.report(
            &span,
            &p,
            Some("http1_codec"),
            "`http1_codec` picks how HTTP requests are parsed, and this listener does not speak HTTP",
            "remove it, or use protocol \"http\" or \"https\"",
        );
    }
    let max_connections = c.number(
        &span,
        &p,
        "max_connections",
        raw.max_connections,
        1..=MAX_CONNECTIONS,
        "connections",
        10_000,
    );
    Listener {
        bind,
        protocol,
        pool: raw.pool.clone(),
        vhosts: served,
        default_vhost: raw.default_vhost.clone(),
        strict_sni: raw.strict_sni.unwrap_or(false),
        alpn,
        persistence: raw.persistence.clone(),
        freebind: raw.freebind.unwrap_or(false),
        reuseport: raw.reuseport.unwrap_or(false),
        backlog: c.number(
            &span,
            &p,
            "backlog",
            raw.backlog,
            1..=65_535,
            "connections",
            1024,
        ),
        max_connections,
        max_connections_per_client: c.number(
            &span,
            &p,
            "max_connections_per_client",
            raw.max_connections_per_client,
            0..=MAX_CONNECTIONS,
            "connections (0 = no limit)",
            0,
        ),
        connection_rate_per_client: c.number(
            &span,
            &p,
            "connection_rate_per_client",
            raw.connection_rate_per_client,
            0..=1_000_000,
            "connections per second (0 = no limit)",
            0,
        ),
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
        trusted_proxies,
        handshake_timeout: c.duration_in(
            &span,
            &p,
            "handshake_timeout",
            &raw.handshake_timeout,
            Duration::from_secs(10),
            SHORTEST..=DAY,
        ),
        header_timeout: c.duration_in(
            &span,
            &p,
            "header_timeout",
            &raw.header_timeout,
            Duration::from_secs(10),
            SHORTEST..=DAY,
        ),
        idle_timeout: c.duration_in(
            &span,
            &p,
            "idle_timeout",
            &raw.idle_timeout,
            Duration::from_secs(if protocol.is_http() { 60 } else { 3600 }),
            SHORTEST..=7 * DAY,
        ),
        request_body_timeout,
        send_timeout,
        forwarded: raw.forwarded.unwrap_or(false),
        via: raw.via.unwrap_or(false),
        x_real_ip: raw.x_real_ip.unwrap_or(false),
        max_header_bytes,
        max_headers,
        upgrades,
        http1_codec,
        name,
    }
}

/// `upgrades` of a listener: protocol names, lower-cased, `websocket` by
/// default. `h2c` is refused: vipd speaks HTTP/2 itself, and a tunnelled
/// h2c connection would escape its HTTP/2 limits.
pub(super) fn upgrades(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    p: &str,
    raw: &RawListener,
    protocol: Protocol,
) -> Vec<String> {
    let Some(list) = &raw.upgrades else {
        return vec!["websocket".to_string()];
    };
    if !protocol.is_http() {
        c.report(
            span,
            p,
            Some("upgrades"),
            "`upgrades` tunnels HTTP upgrades, and this listener does not speak HTTP",
            "remove it, or use protocol \"http\" or \"https\"",
        );
    }
    if list.len() > MAX_UPGRADES {
        c.report(
            span,
            p,
            Some("upgrades"),
            format!(
                "{} protocols are listed, more than {MAX_UPGRADES}: each one a client offers is compared with every one",
                list.len()
            ),
            "list the protocols your backends speak, e.g. [\"websocket\"]",
        );
    }
    let mut out = Vec::new();
    for name in list.iter().take(MAX_UPGRADES) {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if name.eq_ignore_ascii_case("h2c") {
            c.report(
                span,
                p,
                Some("upgrades"),
                "\"h2c\" is never tunnelled: vipd serves HTTP/2 itself",
                "remove it; HTTP/2 clients use ALPN (https) or prior knowledge (http)",
            );
        } else if !token {
            c.report(
                span,
                p,
                Some("upgrades"),
                format!("{name:?} is not a protocol name"),
                "write protocol names as they appear in the Upgrade header, e.g. \"websocket\"",
            );
        } else {
            out.push(name.to_ascii_lowercase());
        }
    }
    out
}

/// Bounds of the request-head limits. hyper's HTTP/1 read buffer, which a
/// head must fit, cannot be smaller than 8 KiB; above 1 MiB one connection
/// could pin that much memory. Above 100 fields hyper allocates its parse
/// table per request instead of using the stack.
pub(super) const HEADER_BYTES: (usize, usize) = (8192, 1024 * 1024);
pub(super) const HEADER_COUNT: (usize, usize) = (1, 1000);

/// `max_header_bytes` and `max_headers` of a listener (HTTP only). A value
/// refused is reported and replaced by its default, as
/// [`Checker::number`] does.
pub(super) fn header_limits(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    p: &str,
    raw: &RawListener,
    protocol: Protocol,
) -> (usize, usize) {
    let checks = [
        (
            "max_header_bytes",
            raw.max_header_bytes,
            HEADER_BYTES,
            "bytes",
            64 * 1024,
        ),
        (
            "max_headers",
            raw.max_headers,
            HEADER_COUNT,
            "header fields",
            100,
        ),
    ];
    let mut out = [0; 2];
    for (slot, (field, set, (min, max), unit, default)) in out.iter_mut().zip(checks) {
        *slot = default;
        if set.is_none() {
            continue;
        }
        if !protocol.is_http() {
            c.report(
                span,
                p,
                Some(field),
                format!("`{field}` limits HTTP requests, and this listener does not speak HTTP"),
                "remove it, or use protocol \"http\" or \"https\"",
            );
            continue;
        }
        *slot = c.number(span, p, field, set, min..=max, unit, default);
    }
    (out[0], out[1])
}

/// `request_body_timeout` and `send_timeout` of a listener (HTTP only),
/// both 60 s by default as in nginx.
pub(super) fn transfer_timeouts(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    p: &str,
    raw: &RawListener,
    protocol: Protocol,
) -> (Duration, Duration) {
    let default = Duration::from_secs(60);
    let mut out = [default; 2];
    let fields = [
        ("request_body_timeout", &raw.request_body_timeout),
        ("send_timeout", &raw.send_timeout),
    ];
    for (slot, (field, value)) in out.iter_mut().zip(fields) {
        if value.is_none() {
            continue;
        }
        if !protocol.is_http() {
            c.report(
                span,
                p,
                Some(field),
                format!("`{field}` times HTTP transfers, and this listener does not speak HTTP"),
                "remove it (`idle_timeout` covers tcp/tls), or use protocol \"http\" or \"https\"",
            );
            continue;
        }
        *slot = c.duration_in(span, p, field, value, default, SHORTEST..=DAY);
    }
    (out[0], out[1])
}
