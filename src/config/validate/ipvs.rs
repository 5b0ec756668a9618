//! `[ipvs]` and `[[ipvs.service]]`: the kernel tier's services and real
//! servers.

use super::*;

pub(super) fn ipvs(
    c: &mut Checker<'_>,
    t: Option<&Spanned<toml::Table>>,
    groups: &Defined<PersistenceGroup>,
) -> Ipvs {
    let span = t.map_or(WHOLE, |t| t.span());
    let raw: RawIpvs = t.map(|t| c.entry(t, "ipvs")).unwrap_or_default();
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut services = Vec::new();
    for (i, s) in raw.service.iter().enumerate() {
        let name = c.unique_name(
            &mut names,
            &span,
            &format!("ipvs.service[{i}]"),
            "IPVS service",
            &s.name,
            i,
        );
        let p = format!("ipvs.service {name:?}");
        let protocol = c.choice(
            &span,
            &p,
            "protocol",
            &s.protocol,
            &[
                (IpvsProtocol::Tcp, "tcp"),
                (IpvsProtocol::Udp, "udp"),
                (IpvsProtocol::Sctp, "sctp"),
            ],
            IpvsProtocol::Tcp,
        );
        let family = c.choice(
            &span,
            &p,
            "family",
            &s.family,
            &[(Family::Inet, "inet"), (Family::Inet6, "inet6")],
            Family::Inet,
        );
        let virtual_service = match (&s.address, s.fwmark) {
            (Some(a), None) => c
                .socket_addr(&span, &p, "address", a)
                .map(|address| IpvsVirtual::Address { protocol, address }),
            (None, Some(mark)) if mark > 0 => Some(IpvsVirtual::Fwmark { mark, family }),
            (None, Some(_)) => {
                c.report(
                    &span,
                    &p,
                    Some("fwmark"),
                    "firewall mark 0 means no mark",
                    "use a mark from 1, set by your nftables/iptables rule",
                );
                None
            }
            (Some(_), Some(_)) => {
                c.report(
                    &span,
                    &p,
                    None,
                    "both `address` and `fwmark` are set",
                    "a service is either VIP:port (`address`) or a firewall mark (`fwmark`, like ipvsadm -f); keep one",
                );
                None
            }
            (None, None) => {
                c.report(
                    &span,
                    &p,
                    None,
                    "the service has neither `address` nor `fwmark`",
                    "add `address = \"198.51.100.100:80\"` or `fwmark = 99`",
                );
                None
            }
        };
        let scheduler = c.choice(
            &span,
            &p,
            "scheduler",
            &s.scheduler,
            &SchedulerKind::KERNEL,
            SchedulerKind::Wrr,
        );
        if let Some(g) = &s.persistence {
            check_group_ref(c, &span, &p, g, groups);
        }
        let forwarding = c.choice(
            &span,
            &p,
            "forwarding",
            &s.forwarding,
            &[
                (Forwarding::Dr, "dr"),
                (Forwarding::Nat, "nat"),
                (Forwarding::Tunnel, "tunnel"),
            ],
            Forwarding::Dr,
        );
        let mut real_servers = Vec::new();
        let mut seen = HashSet::new();
        for (j, r) in s.real_servers.iter().enumerate() {
            let rp = format!("{p}.real_servers[{j}]");
            let Some(text) = c.required(&span, &rp, "address", &r.address, "\"198.51.100.11:80\"")
            else {
                continue;
            };
            let Some(address) = c.socket_addr(&span, &rp, "address", text) else {
                continue;
            };
            if !seen.insert(address) {
                c.report(
                    &span,
                    &rp,
                    None,
                    format!("real server {address} is listed twice"),
                    "list each real server once; use `weight` to give it a larger share",
                );
            }
            reachable(
                c,
                &span,
                &rp,
                "address",
                address,
                virtual_service,
                forwarding,
            );
            let threshold = |c: &mut Checker<'_>, field, v| {
                c.number(
                    &span,
                    &rp,
                    field,
                    v,
                    0..=MAX_THRESHOLD,
                    "connections (0 = no limit)",
                    0,
                )
            };
            let upper = threshold(c, "upper_threshold", r.upper_threshold);
            let lower = threshold(c, "lower_threshold", r.lower_threshold);
            if upper != 0 && lower > upper {
                c.report(
                    &span,
                    &rp,
                    Some("lower_threshold"),
                    "the lower threshold is above the upper threshold",
                    "make lower_threshold <= upper_threshold (0 = no limit)",
                );
            }
            real_servers.push(RealServer {
                address,
                weight: c.number(&span, &rp, "weight", r.weight, 0..=MAX_WEIGHT, "", 1),
                upper_threshold: upper,
                lower_threshold: lower,
            });
        }
        if let Some(v) = virtual_service {
            if !keys.insert(v) {
                c.report(
                    &span,
                    &p,
                    None,
                    "another IPVS service has the same address (or fwmark)",
                    "define each virtual service once",
                );
            }
            let health = s.health.as_ref().map(|h| health(c, &span, &p, h));
            if let Some(h) = &health {
                check_port(c, &span, &p, h, &real_servers);
            }
            let on_all_down = on_all_down(c, &span, &p, s, v, forwarding, &real_servers);
            services.push(IpvsService {
                name,
                virtual_service: v,
                scheduler,
                persistence: s.persistence.clone(),
                forwarding,
                real_servers,
                health,
                inhibit_on_failure: s.inhibit_on_failure.unwrap_or(false),
                on_all_down,
            });
        }
    }
    Ipvs {
        own_all: raw.own_all.unwrap_or(false),
        on_shutdown: c.choice(
            &span,
            "ipvs",
            "on_shutdown",
            &raw.on_shutdown,
            &[(OnShutdown::Keep, "keep"), (OnShutdown::Remove, "remove")],
            OnShutdown::Keep,
        ),
        reconcile_interval: c.duration_in(
            &span,
            "ipvs",
            "reconcile_interval",
            &raw.reconcile_interval,
            Duration::from_secs(30),
            Duration::from_secs(1)..=DAY,
        ),
        drain_period: c.duration(
            &span,
            "ipvs",
            "drain_period",
            &raw.drain_period,
            Duration::from_secs(60),
        ),
        services,
    }
}

/// A real (or sorry) server the kernel can forward to: DR and tunnelling
/// cannot change the port, and no mode changes the address family.
fn reachable(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    path: &str,
    field: &str,
    address: SocketAddr,
    virtual_service: Option<IpvsVirtual>,
    forwarding: Forwarding,
) {
    let Some(IpvsVirtual::Address { address: vip, .. }) = virtual_service else {
        return;
    };
    if forwarding != Forwarding::Nat && address.port() != vip.port() {
        c.report(
            span,
            path,
            Some(field),
            format!(
                "real server port {} differs from the VIP port {}; in {} mode the kernel cannot change the port",
                address.port(),
                vip.port(),
                if forwarding == Forwarding::Dr { "dr" } else { "tunnel" }
            ),
            format!("use port {} on the real server, or forwarding = \"nat\"", vip.port()),
        );
    }
    if address.is_ipv4() != vip.is_ipv4() {
        c.report(
            span,
            path,
            Some(field),
            "the real server's address family differs from the VIP's",
            "use real servers of the VIP's family",
        );
    }
}

/// A check needs a port: fwmark real servers have port 0, so `health.port`
/// (keepalived's `connect_port`) must name the one to probe.
fn check_port(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    path: &str,
    check: &HealthCheck,
    real_servers: &[RealServer],
) {
    if check.port.is_some() {
        return;
    }
    if let Some(r) = real_servers.iter().find(|r| r.address.port() == 0) {
        c.report(
            span,
            &format!("{path}.health"),
            Some("port"),
            format!(
                "real server {} has port 0 (a fwmark service), so the check has no port to probe",
                r.address
            ),
            "add `port = 80` (the port the real servers serve) to `health`, like keepalived's connect_port",
        );
    }
}

/// `on_all_down` (the pools' setting and values) and its `sorry` server,
/// which must be reachable like a real server and not be one.
fn on_all_down(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    path: &str,
    s: &RawIpvsService,
    virtual_service: IpvsVirtual,
    forwarding: Forwarding,
    real_servers: &[RealServer],
) -> OnAllDown {
    let sorry = s
        .sorry
        .as_deref()
        .and_then(|t| c.socket_addr(span, path, "sorry", t));
    if let Some(a) = sorry {
        reachable(c, span, path, "sorry", a, Some(virtual_service), forwarding);
        if real_servers.iter().any(|r| r.address == a) {
            c.report(
                span,
                path,
                Some("sorry"),
                format!("the sorry server {a} is also a real server"),
                "name a server that is not in `real_servers`",
            );
        }
    }
    match (s.on_all_down.as_deref(), sorry) {
        (None | Some("sorry"), Some(a)) => OnAllDown::Sorry(a),
        (None | Some("fail_open"), None) => OnAllDown::FailOpen,
        (Some("refuse"), None) => OnAllDown::Refuse,
        (Some(v @ ("fail_open" | "refuse")), Some(_)) => {
            c.report(
                span,
                path,
                Some("sorry"),
                format!("a sorry server is set but `on_all_down` is {v:?}"),
                "set `on_all_down = \"sorry\"`, or remove `sorry`",
            );
            OnAllDown::FailOpen
        }
        (Some("sorry"), None) => {
            if s.sorry.is_none() {
                c.report(
                    span,
                    path,
                    Some("on_all_down"),
                    "`on_all_down = \"sorry\"` needs a sorry server",
                    "add `sorry = \"198.51.100.99:80\"`, the server that answers while every real server is down",
                );
            }
            OnAllDown::FailOpen
        }
        (Some(other), _) => {
            c.report(
                span,
                path,
                Some("on_all_down"),
                format!("unknown value {other:?}"),
                "use one of \"fail_open\", \"sorry\", \"refuse\"",
            );
            OnAllDown::FailOpen
        }
    }
}
