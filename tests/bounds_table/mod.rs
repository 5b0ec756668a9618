//! The table of every numeric and duration field of the configuration with
//! the range vipd enforces, the extremes each is fed, and the configuration
//! files that carry them, for `tests/config_bounds.rs`.
//!
//! To cover a new field, add one line to [`FIELDS`].

use std::net::SocketAddr;
use std::path::Path;

/// Where a field lives; the spare section of that kind carries it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Section {
    Global,
    Admin,
    Tls,
    Listener,
    Pool,
    Health,
    Backend,
    Persistence,
    Vhost,
    Ipvs,
    Service,
    RealServer,
}

pub(crate) use Section::*;

impl Section {
    /// The field path prefix vipd prints in its errors.
    fn path(self) -> &'static str {
        match self {
            Global => "global",
            Admin => "admin",
            Tls => "tls",
            Listener => "listener \"spare\"",
            Pool => "pool \"spare\"",
            Health => "pool \"spare\".health",
            Backend => "pool \"spare\".backends[0]",
            Persistence => "persistence \"spare\"",
            Vhost => "vhost \"spare\"",
            Ipvs => "ipvs",
            Service => "ipvs.service \"spare\"",
            RealServer => "ipvs.service \"spare\".real_servers[0]",
        }
    }
}

/// The range a field accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// An integer in `min..=max`, of a Rust type whose largest value TOML
    /// can write is `ty`.
    Int { min: u64, max: u64, ty: u64 },
    /// A prime in `7..=max`. The extremes include the largest primes of
    /// i32 and u32, which once aborted a reload and overflowed the check.
    Prime { max: u64 },
    /// A duration in `min..=max` (vipd's notation).
    Dur {
        min: &'static str,
        max: &'static str,
    },
}

/// Largest value TOML can write for each Rust type (TOML integers are i64).
pub(crate) const U8: u64 = u8::MAX as u64;
pub(crate) const U32: u64 = u32::MAX as u64;
pub(crate) const USIZE: u64 = i64::MAX as u64;
pub(crate) const U64: u64 = i64::MAX as u64;

pub(crate) struct Field {
    pub(crate) section: Section,
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
}

pub(crate) const fn int(
    section: Section,
    name: &'static str,
    min: u64,
    max: u64,
    ty: u64,
) -> Field {
    Field {
        section,
        name,
        kind: Kind::Int { min, max, ty },
    }
}

pub(crate) const fn dur(
    section: Section,
    name: &'static str,
    min: &'static str,
    max: &'static str,
) -> Field {
    Field {
        section,
        name,
        kind: Kind::Dur { min, max },
    }
}

/// Every numeric and duration field of the configuration, with the range
/// README.md documents for it.
pub(crate) const FIELDS: &[Field] = &[
    int(Global, "workers", 0, 1024, USIZE),
    int(Global, "max_connections", 1, 10_000_000, USIZE),
    dur(Global, "grace_period", "0s", "1d"),
    dur(Admin, "header_timeout", "100ms", "10m"),
    dur(Admin, "request_timeout", "100ms", "10m"),
    int(Admin, "max_connections", 1, 4096, USIZE),
    int(Tls, "session_cache_size", 0, 100_000, USIZE),
    dur(Tls, "session_timeout", "1s", "1d"),
    dur(Tls, "ticket_lifetime", "1s", "12h"),
    int(Listener, "backlog", 1, 65_535, U32),
    int(Listener, "max_connections", 1, 10_000_000, USIZE),
    int(Listener, "max_connections_per_client", 0, 10_000_000, USIZE),
    int(Listener, "connection_rate_per_client", 0, 1_000_000, U32),
    dur(Listener, "handshake_timeout", "100ms", "1d"),
    dur(Listener, "header_timeout", "100ms", "1d"),
    dur(Listener, "idle_timeout", "100ms", "7d"),
    dur(Listener, "request_body_timeout", "100ms", "1d"),
    dur(Listener, "send_timeout", "100ms", "1d"),
    int(Listener, "max_header_bytes", 8192, 1_048_576, USIZE),
    int(Listener, "max_headers", 1, 1000, USIZE),
    Field {
        section: Pool,
        name: "mh_table_size",
        kind: Kind::Prime { max: 131_071 },
    },
    dur(Pool, "connect_timeout", "100ms", "1d"),
    dur(Pool, "response_timeout", "100ms", "1d"),
    dur(Pool, "slow_start", "0s", "1d"),
    int(Pool, "passive_fall", 0, 1000, U32),
    dur(Pool, "passive_cooldown", "100ms", "1d"),
    dur(Pool, "idle_timeout", "100ms", "1d"),
    int(Pool, "max_idle", 0, 10_000, USIZE),
    dur(Health, "interval", "100ms", "1h"),
    dur(Health, "timeout", "100ms", "1h"),
    int(Health, "rise", 1, 1000, U32),
    int(Health, "fall", 1, 1000, U32),
    int(Health, "port", 1, 65_535, U32),
    int(Backend, "weight", 0, 65_535, U32),
    dur(Persistence, "timeout", "1s", "30d"),
    int(Persistence, "netmask_v6", 0, 128, U8),
    int(Persistence, "max_entries", 1, 10_000_000, USIZE),
    dur(Vhost, "hsts_max_age", "0s", "730d"),
    int(Vhost, "max_body_size", 0, 1 << 40, U64),
    dur(Ipvs, "reconcile_interval", "1s", "1d"),
    dur(Ipvs, "drain_period", "0s", "1d"),
    int(Service, "fwmark", 1, U32, U32),
    int(RealServer, "weight", 0, 65_535, U32),
    int(RealServer, "upper_threshold", 0, 65_535, U32),
    int(RealServer, "lower_threshold", 0, 65_535, U32),
];

/// Milliseconds of a duration in vipd's notation.
pub(crate) fn millis(text: &str) -> u128 {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap();
    let n: u128 = text[..split].parse().unwrap();
    n * match &text[split..] {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => panic!("unit {u}"),
    }
}

pub(crate) fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// One value to try: as written in TOML, and whether vipd must accept it.
#[derive(Clone, Debug)]
pub(crate) struct Try {
    pub(crate) text: String,
    pub(crate) valid: bool,
}

impl Field {
    pub(crate) fn path(&self) -> String {
        format!("{}.{}", self.section.path(), self.name)
    }

    /// The extremes of this field, each once.
    pub(crate) fn extremes(&self) -> Vec<Try> {
        let mut out: Vec<Try> = Vec::new();
        let mut add = |text: String, valid: bool| {
            if !out.iter().any(|t| t.text == text) {
                out.push(Try { text, valid });
            }
        };
        match self.kind {
            Kind::Int { min, max, ty } => {
                let mut values = vec![0, 1, min, max, ty];
                values.extend(min.checked_sub(1));
                values.extend((max < ty).then_some(max + 1));
                for v in values {
                    add(v.to_string(), (min..=max).contains(&v));
                }
            }
            Kind::Prime { max } => {
                for v in [0, 1, 2, 7, max, max + 1, 2_147_483_647, 4_294_967_291, U32] {
                    add(v.to_string(), is_prime(v) && (7..=max).contains(&v));
                }
            }
            Kind::Dur { min, max } => {
                let (lo, hi) = (millis(min), millis(max));
                let mut values = vec![
                    "0s".to_string(),
                    "1ms".to_string(),
                    min.to_string(),
                    max.to_string(),
                    format!("{}ms", hi + 1),
                    "99999999999d".to_string(),
                    format!("{}s", u64::MAX),
                ];
                values.extend((lo > 0).then(|| format!("{}ms", lo - 1)));
                for v in values {
                    let ms = millis(&v);
                    add(v, (lo..=hi).contains(&ms));
                }
            }
        }
        out
    }
}

/// The configuration: a "web" TCP listener to `web` (the traffic of the
/// test) and spare sections carrying `values`. `ipvs` adds the IPVS
/// sections (never in the file vipd starts with: IPVS needs the kernel).
pub(crate) fn render(web: SocketAddr, values: &[(&Field, &str)], ipvs: bool) -> String {
    let base: &[(Section, &[(&str, &str)])] = &[
        (Global, &[("grace_period", "\"1s\"")]),
        (Admin, &[("listen", "\"127.0.0.1:0\"")]),
        (Tls, &[]),
        (
            Listener,
            &[
                ("name", "\"spare\""),
                ("bind", "\"127.0.0.1:0\""),
                ("protocol", "\"http\""),
                ("vhosts", "[\"spare\"]"),
                ("persistence", "\"spare\""),
            ],
        ),
        (
            Pool,
            &[
                ("name", "\"spare\""),
                ("scheduler", "\"mh\""),
                ("passive_cooldown", "\"1s\""),
            ],
        ),
        (Health, &[("kind", "\"tcp\"")]),
        (Backend, &[("address", "\"127.0.0.1:9\"")]),
        (Persistence, &[("name", "\"spare\"")]),
        (
            Vhost,
            &[
                ("name", "\"spare\""),
                ("hosts", "[\"spare.test\"]"),
                ("pool", "\"spare\""),
            ],
        ),
        (Ipvs, &[]),
        (
            Service,
            &[
                ("name", "\"spare\""),
                ("fwmark", "1"),
                ("persistence", "\"spare\""),
            ],
        ),
        (RealServer, &[("address", "\"192.0.2.21:0\"")]),
    ];
    let fields = |section: Section| -> Vec<String> {
        let mut kv: Vec<(String, String)> = base
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, kv)| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        for (f, v) in values.iter().filter(|(f, _)| f.section == section) {
            let v = match f.kind {
                Kind::Dur { .. } => format!("{v:?}"),
                _ => v.to_string(),
            };
            match kv.iter_mut().find(|(k, _)| k == f.name) {
                Some(slot) => slot.1 = v,
                None => kv.push((f.name.to_string(), v)),
            }
        }
        kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect()
    };
    let lines = |section| fields(section).join("\n");
    let inline = |section| format!("{{ {} }}", fields(section).join(", "));
    let mut text = format!(
        r#"[global]
{}

[admin]
{}

[tls]
{}

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "web"

[[pool]]
name = "web"
backends = [{{ address = "{web}" }}]

[[listener]]
{}

[[pool]]
{}
backends = [{}]
health = {}

[[persistence]]
{}

[[vhost]]
{}
"#,
        lines(Global),
        lines(Admin),
        lines(Tls),
        lines(Listener),
        lines(Pool),
        inline(Backend),
        inline(Health),
        lines(Persistence),
        lines(Vhost),
    );
    if ipvs {
        text.push_str(&format!(
            "\n[ipvs]\n{}\n\n[[ipvs.service]]\n{}\nreal_servers = [{}]\n",
            lines(Ipvs),
            lines(Service),
            inline(RealServer),
        ));
    }
    text
}

/// `render` plus an https listener whose vhost's certificate and key are
/// the files `cert` and `key`.
pub(crate) fn with_certificate(web: SocketAddr, cert: &Path, key: &Path) -> String {
    render(web, &[], false)
        + &format!(
            r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "https"
vhosts = ["tls"]

[[vhost]]
name = "tls"
hosts = ["tls.test"]
pool = "spare"
certificates = [{{ cert = {cert:?}, key = {key:?} }}]
"#
        )
}

/// Round `k` takes the `k`-th extreme of every field (fields with fewer
/// extremes sit the round out), so that a few files try every extreme.
pub(crate) fn rounds() -> Vec<Vec<(&'static Field, Try)>> {
    let all: Vec<(&Field, Vec<Try>)> = FIELDS.iter().map(|f| (f, f.extremes())).collect();
    let n = all.iter().map(|(_, e)| e.len()).max().unwrap();
    (0..n)
        .map(|k| {
            all.iter()
                .filter_map(|(f, e)| e.get(k).map(|t| (*f, t.clone())))
                .collect()
        })
        .collect()
}

/// The numeric and duration fields `src/config/file.rs` declares, by
/// section: every `Option<integer>`, and every `Option<String>` whose name
/// says it is a duration.
pub(crate) fn declared_fields() -> Vec<(Section, String)> {
    const SOURCE: &str = include_str!("../../src/config/file.rs");
    let sections = [
        ("RawGlobal", Global),
        ("RawAdmin", Admin),
        ("RawTls", Tls),
        ("RawListener", Listener),
        ("RawBackend", Backend),
        ("RawHealth", Health),
        ("RawPool", Pool),
        ("RawPersistence", Persistence),
        ("RawVhost", Vhost),
        ("RawIpvs", Ipvs),
        ("RawIpvsService", Service),
        ("RawRealServer", RealServer),
    ];
    // RawCacheSize: a number of sessions, or a size in bytes
    let integers = [
        "u8",
        "u16",
        "u32",
        "u64",
        "usize",
        "i8",
        "i16",
        "i32",
        "i64",
        "RawCacheSize",
    ];
    let durations = [
        "timeout",
        "interval",
        "period",
        "slow_start",
        "cooldown",
        "max_age",
        "lifetime",
    ];
    let mut out = Vec::new();
    let mut section = None;
    for line in SOURCE.lines() {
        if let Some(rest) = line.strip_prefix("pub(super) struct ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            section = sections.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
            continue;
        }
        let Some(s) = section else { continue };
        let Some((name, ty)) = line
            .trim()
            .strip_prefix("pub(super) ")
            .and_then(|f| f.split_once(": "))
        else {
            continue;
        };
        let ty = ty.trim_end_matches(',');
        let numeric = integers.iter().any(|i| ty == format!("Option<{i}>"));
        let duration = ty == "Option<String>" && durations.iter().any(|d| name.ends_with(d));
        if numeric || duration {
            out.push((s, name.to_string()));
        }
    }
    out
}
