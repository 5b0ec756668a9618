//! `[[pool]]` with its backends and `health`, and `[[persistence]]`
//! groups, plus the checks of references to them from other sections.

use super::*;

pub(super) fn health(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    path: &str,
    raw: &RawHealth,
) -> HealthCheck {
    let p = format!("{path}.health");
    let kind = c.choice(
        span,
        &p,
        "kind",
        &raw.kind,
        &[
            (HealthKind::Tcp, "tcp"),
            (HealthKind::Http, "http"),
            (HealthKind::Https, "https"),
            (HealthKind::Tls, "tls"),
        ],
        HealthKind::Tcp,
    );
    let interval = c.duration_in(
        span,
        &p,
        "interval",
        &raw.interval,
        Duration::from_secs(2),
        SHORTEST..=Duration::from_secs(3600),
    );
    let timeout = c.duration_in(
        span,
        &p,
        "timeout",
        &raw.timeout,
        Duration::from_secs(1),
        SHORTEST..=Duration::from_secs(3600),
    );
    let expect_status = match &raw.expect_status {
        None => (200, 399),
        Some(text) => parse_status_range(text).unwrap_or_else(|| {
            c.report(
                span,
                &p,
                Some("expect_status"),
                format!("invalid status range {text:?}"),
                "write a code (\"200\") or an inclusive range (\"200-399\") of codes 100..=599",
            );
            (200, 399)
        }),
    };
    if let Some(path) = &raw.path {
        if !path.starts_with('/') || path.parse::<hyper::http::uri::PathAndQuery>().is_err() {
            c.report(
                span,
                &p,
                Some("path"),
                format!("{path:?} is not a request path"),
                "write an absolute path without spaces, e.g. \"/healthz\"",
            );
        }
    }
    if let Some(host) = &raw.host {
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
            c.report(
                span,
                &p,
                Some("host"),
                format!("{host:?} is not a host name"),
                "write the Host the backend expects, e.g. \"www.example.com\"",
            );
        }
    }
    let rise = c.number(span, &p, "rise", raw.rise, 1..=1000, "results", 2);
    let fall = c.number(span, &p, "fall", raw.fall, 1..=1000, "results", 3);
    let port = raw.port.and_then(|v| match u16::try_from(v) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            c.report(
                span,
                &p,
                Some("port"),
                format!("{v} is outside 1..=65535"),
                "set `port` between 1 and 65535, or remove it to check each server's own port",
            );
            None
        }
    });
    HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
        path: raw.path.clone().unwrap_or_else(|| "/".into()),
        host: raw.host.clone(),
        expect_status,
        expect_body: raw.expect_body.clone(),
        port,
    }
}

pub(super) fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = text.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

pub(super) fn pool(
    c: &mut Checker<'_>,
    t: &Spanned<toml::Table>,
    i: usize,
    names: &mut HashSet<String>,
) -> Pool {
    let span = t.span();
    let raw: RawPool = c.entry(t, &format!("pool[{i}]"));
    let name = c.unique_name(names, &span, &format!("pool[{i}]"), "pool", &raw.name, i);
    let p = format!("pool {name:?}");
    let scheduler = c.choice(
        &span,
        &p,
        "scheduler",
        &raw.scheduler,
        &SchedulerKind::POOL,
        SchedulerKind::Wrr,
    );
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for (j, b) in raw.backends.iter().enumerate() {
        let bp = format!("{p}.backends[{j}]");
        let Some(text) = c.required(&span, &bp, "address", &b.address, "\"192.0.2.21:80\"") else {
            continue;
        };
        let Some(address) = c.socket_addr(&span, &bp, "address", text) else {
            continue;
        };
        if !seen.insert(address) {
            c.report(
                &span,
                &bp,
                None,
                format!("backend {address} is listed twice"),
                "list each backend once; use `weight` to give it a larger share",
            );
        }
        nonzero_port(c, &span, &bp, "address", address);
        backends.push(Backend {
            address,
            weight: c.number(&span, &bp, "weight", b.weight, 0..=MAX_WEIGHT, "", 1),
        });
    }
    if backends.is_empty() && raw.backends.is_empty() {
        c.report(
            &span,
            &p,
            Some("backends"),
            "the pool has no backends",
            "add `backends = [{ address = \"192.0.2.21:80\", weight = 1 }]`",
        );
    }
    let mh_table_size = raw.mh_table_size.unwrap_or(65_537);
    // the range first, so that trial division stays short
    if !(7..=MAX_MH_TABLE).contains(&mh_table_size) || !is_prime(mh_table_size) {
        c.report(
            &span,
            &p,
            Some("mh_table_size"),
            format!("{mh_table_size} is not a prime in 7..={MAX_MH_TABLE}"),
            format!("use a prime well above 100 x the number of backends, at most {MAX_MH_TABLE} (the kernel's largest), e.g. 65537"),
        );
    }
    let on_all_down = on_all_down(c, &span, &p, &raw);
    Pool {
        slow_start: c.duration(&span, &p, "slow_start", &raw.slow_start, Duration::ZERO),
        on_all_down,
        passive_fall: c.number(
            &span,
            &p,
            "passive_fall",
            raw.passive_fall,
            0..=1000,
            "failures (0 = passive checks off)",
            3,
        ),
        passive_cooldown: c.duration_in(
            &span,
            &p,
            "passive_cooldown",
            &raw.passive_cooldown,
            Duration::from_secs(10),
            SHORTEST..=DAY,
        ),
        health: raw.health.as_ref().map(|h| health(c, &span, &p, h)),
        connect_timeout: c.duration_in(
            &span,
            &p,
            "connect_timeout",
            &raw.connect_timeout,
            Duration::from_secs(5),
            SHORTEST..=DAY,
        ),
        response_timeout: c.duration_in(
            &span,
            &p,
            "response_timeout",
            &raw.response_timeout,
            Duration::from_secs(60),
            SHORTEST..=DAY,
        ),
        name,
        scheduler,
        mh_table_size,
        backends,
        send_proxy: raw.send_proxy.unwrap_or(false),
        http2: raw.http2.unwrap_or(false),
        idle_timeout: c.duration_in(
            &span,
            &p,
            "idle_timeout",
            &raw.idle_timeout,
            Duration::from_secs(30),
            SHORTEST..=DAY,
        ),
        max_idle: c.number(
            &span,
            &p,
            "max_idle",
            raw.max_idle,
            0..=10_000,
            "connections per backend",
            256,
        ),
    }
}

/// `on_all_down` and the `sorry` server it may name.
pub(super) fn on_all_down(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    p: &str,
    raw: &RawPool,
) -> OnAllDown {
    let sorry = raw
        .sorry
        .as_deref()
        .and_then(|t| c.socket_addr(span, p, "sorry", t));
    if let Some(a) = sorry {
        nonzero_port(c, span, p, "sorry", a);
    }
    match raw.on_all_down.as_deref() {
        None if raw.sorry.is_some() => sorry.map_or(OnAllDown::FailOpen, OnAllDown::Sorry),
        None | Some("fail_open") => {
            if raw.sorry.is_some() {
                c.report(
                    span,
                    p,
                    Some("sorry"),
                    "a sorry server is set but `on_all_down` is \"fail_open\"",
                    "set `on_all_down = \"sorry\"`, or remove `sorry`",
                );
            }
            OnAllDown::FailOpen
        }
        Some("refuse") => OnAllDown::Refuse,
        Some("sorry") => match (sorry, &raw.sorry) {
            (Some(a), _) => OnAllDown::Sorry(a),
            (None, Some(_)) => OnAllDown::FailOpen,
            (None, None) => {
                c.report(
                    span,
                    p,
                    Some("on_all_down"),
                    "`on_all_down = \"sorry\"` needs a sorry server",
                    "add `sorry = \"192.0.2.99:80\"`, the server that answers while every backend is down",
                );
                OnAllDown::FailOpen
            }
        },
        Some(other) => {
            c.report(
                span,
                p,
                Some("on_all_down"),
                format!("unknown value {other:?}"),
                "use one of \"fail_open\", \"sorry\", \"refuse\"",
            );
            OnAllDown::FailOpen
        }
    }
}

/// A backend or sorry server on port 0 cannot be connected to.
pub(super) fn nonzero_port(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    path: &str,
    field: &str,
    a: SocketAddr,
) {
    if a.port() == 0 {
        c.report(
            span,
            path,
            Some(field),
            format!("{a} has port 0, which no connection can reach"),
            "write the port the server listens on, e.g. \"192.0.2.21:80\"",
        );
    }
}

pub(super) fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

pub(super) fn persistence(
    c: &mut Checker<'_>,
    t: &Spanned<toml::Table>,
    i: usize,
    names: &mut HashSet<String>,
) -> PersistenceGroup {
    let span = t.span();
    let raw: RawPersistence = c.entry(t, &format!("persistence[{i}]"));
    let name = c.unique_name(
        names,
        &span,
        &format!("persistence[{i}]"),
        "persistence group",
        &raw.name,
        i,
    );
    let p = format!("persistence {name:?}");
    let prefix_v4 = match &raw.netmask {
        None => 32,
        Some(text) => parse_netmask_v4(text).unwrap_or_else(|why| {
            c.report(
                &span,
                &p,
                Some("netmask"),
                format!("invalid IPv4 netmask {text:?}: {why}"),
                "write it as ipvsadm -M does, \"255.255.255.0\", or as a prefix length, \"24\"",
            );
            32
        }),
    };
    let prefix_v6 = c.number(
        &span,
        &p,
        "netmask_v6",
        raw.netmask_v6,
        0..=128,
        "bits",
        128,
    );
    let max_entries = c.number(
        &span,
        &p,
        "max_entries",
        raw.max_entries,
        1..=MAX_CLIENTS,
        "clients",
        1_000_000,
    );
    PersistenceGroup {
        // IPVS takes whole seconds and the kernel keeps them in 32-bit
        // jiffies, which overflow after about 49 days at HZ=1000.
        timeout: c.duration_in(
            &span,
            &p,
            "timeout",
            &raw.timeout,
            Duration::from_secs(360),
            Duration::from_secs(1)..=Duration::from_secs(30 * 86_400),
        ),
        name,
        prefix_v4,
        prefix_v6,
        max_entries,
        expire_quiescent: raw.expire_quiescent.unwrap_or(false),
    }
}

pub(super) fn check_pool_ref(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    path: &str,
    field: &str,
    name: &str,
    pools: &Defined<Pool>,
) {
    if pools.get(name).is_none() {
        // a few names help; 100 000 of them, once per bad reference, would
        // fill memory
        let mut known: Vec<&str> = pools.all.iter().take(10).map(|p| p.name.as_str()).collect();
        if pools.all.len() > known.len() {
            known.push("...");
        }
        c.report(
            span,
            path,
            Some(field),
            format!("no pool is named {name:?}"),
            format!(
                "define a [[pool]] with name = {name:?}, or use one of: {}",
                if known.is_empty() {
                    "(none defined)".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
}

pub(super) fn check_group_ref(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    path: &str,
    name: &str,
    groups: &Defined<PersistenceGroup>,
) {
    if groups.get(name).is_none() {
        c.report(
            span,
            path,
            Some("persistence"),
            format!("no persistence group is named {name:?}"),
            format!("define [[persistence]] with name = {name:?}"),
        );
    }
}
