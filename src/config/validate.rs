//! Raw file -> typed model, collecting every problem instead of stopping at the first.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

mod admin;
mod sizes;

use self::admin::admin;
use self::sizes::{
    Defined, MAX_CLIENTS, RouteBudget, check_clients_total, check_probe_rate, served_vhosts,
};
use super::error::{ConfigError, Problem};
use super::file::*;
use super::model::*;

/// The top level of the file: each section kept as a spanned table so that
/// every entry is deserialized on its own (one bad entry does not hide the
/// problems of the next) and problems point at a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Skeleton {
    global: Option<Spanned<toml::Table>>,
    admin: Option<Spanned<toml::Table>>,
    tls: Option<Spanned<toml::Table>>,
    #[serde(default)]
    listener: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    pool: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    persistence: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    vhost: Vec<Spanned<toml::Table>>,
    /// Not spanned: `[[ipvs.service]]` alone defines `ipvs` implicitly, and
    /// an implicit table has no span to give.
    ipvs: Option<toml::Table>,
}

/// Most problems listed for one file. Past them, the rest are only
/// counted: a file of 100 000 bad entries must not take minutes to check
/// or print a report nobody reads.
const MAX_PROBLEMS: usize = 200;

/// Collects problems while validating one file.
struct Checker<'a> {
    src: &'a str,
    /// Offset of every '\n' in `src`, to turn offsets into lines quickly.
    newlines: Vec<usize>,
    problems: Vec<Problem>,
    /// Problems found past [`MAX_PROBLEMS`].
    unlisted: usize,
}

impl<'a> Checker<'a> {
    fn new(src: &'a str) -> Self {
        Checker {
            src,
            newlines: src.match_indices('\n').map(|(i, _)| i).collect(),
            problems: Vec::new(),
            unlisted: 0,
        }
    }

    /// Every problem found, the unlisted ones summed up in a last one.
    fn finish(mut self) -> Vec<Problem> {
        if self.unlisted > 0 {
            self.problems.push(Problem {
                line: None,
                column: None,
                field: "(file)".into(),
                problem: format!(
                    "{} more problems are not listed (vipd lists the first {MAX_PROBLEMS})",
                    self.unlisted
                ),
                fix: "correct the problems above and run `vipd check` again".into(),
            });
        }
        self.problems
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = self.newlines.partition_point(|&n| n < offset);
        let start = before.checked_sub(1).map_or(0, |i| self.newlines[i] + 1);
        (before + 1, offset - start + 1)
    }

    /// Where `field` is written inside the entry spanning `span`, or the entry itself.
    fn locate(&self, span: &Range<usize>, field: Option<&str>) -> (usize, usize) {
        let entry = &self.src[span.start.min(self.src.len())..span.end.min(self.src.len())];
        if let Some(field) = field {
            let mut offset = span.start;
            for line in entry.split_inclusive('\n') {
                let trimmed = line.trim_start();
                if let Some(rest) = trimmed.strip_prefix(field) {
                    if rest.trim_start().starts_with('=') {
                        return self.position(offset + (line.len() - trimmed.len()));
                    }
                }
                offset += line.len();
            }
        }
        self.position(span.start)
    }

    fn report(
        &mut self,
        span: &Range<usize>,
        path: &str,
        field: Option<&str>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        if self.problems.len() >= MAX_PROBLEMS {
            self.unlisted += 1;
            return;
        }
        let (line, column) = self.locate(span, field);
        let full = match field {
            Some(f) => format!("{path}.{f}"),
            None => path.to_string(),
        };
        self.problems.push(Problem {
            line: Some(line),
            column: Some(column),
            field: full,
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    /// Deserialize one entry, reporting serde problems. An unknown field is
    /// reported and dropped, and the entry read again, so that one typo does
    /// not hide the entry's other problems.
    fn entry<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        table: &Spanned<toml::Table>,
        path: &str,
    ) -> T {
        let mut fields = table.get_ref().clone();
        loop {
            match T::deserialize(toml::Value::Table(fields.clone())) {
                Ok(raw) => return raw,
                Err(e) => {
                    let msg = e.message().trim().to_string();
                    let unknown = msg.starts_with("unknown field");
                    let field = if unknown {
                        backticked(&msg).filter(|f| fields.contains_key(f.as_str()))
                    } else {
                        culprit::<T>(&fields, &msg)
                    };
                    let fix = if unknown {
                        "remove it, or correct its spelling to one of the fields listed"
                    } else {
                        "give the value the type shown (see the configuration reference in README.md)"
                    };
                    self.report(&table.span(), path, field.as_deref(), msg, fix);
                    match field {
                        Some(f) => {
                            fields.remove(&f);
                        }
                        _ => return T::default(),
                    }
                }
            }
        }
    }

    fn required<'v>(
        &mut self,
        span: &Range<usize>,
        path: &str,
        field: &str,
        value: &'v Option<String>,
        example: &str,
    ) -> Option<&'v str> {
        match value {
            Some(v) => Some(v.as_str()),
            None => {
                self.report(
                    span,
                    path,
                    None,
                    format!("missing required field `{field}`"),
                    format!("add `{field} = {example}`"),
                );
                None
            }
        }
    }

    /// A duration of at most a day (or `default` when unset); see
    /// [`Self::duration_in`] for other bounds.
    fn duration(
        &mut self,
        span: &Range<usize>,
        path: &str,
        field: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        self.duration_in(span, path, field, value, default, Duration::ZERO..=DAY)
    }

    /// A duration inside `range` (or `default` when unset). Out of range or
    /// unreadable, it is reported once and `default` is returned, so that
    /// nothing built from a rejected file sees the bad value.
    fn duration_in(
        &mut self,
        span: &Range<usize>,
        path: &str,
        field: &str,
        value: &Option<String>,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let Some(text) = value else { return default };
        let (min, max) = (show(*range.start()), show(*range.end()));
        match parse_duration(text) {
            Ok(d) if range.contains(&d) => d,
            Ok(_) => {
                self.report(
                    span,
                    path,
                    Some(field),
                    format!("{text:?} is outside {min}..={max}"),
                    format!(
                        "set `{field}` between \"{min}\" and \"{max}\" (default \"{}\")",
                        show(default)
                    ),
                );
                default
            }
            Err(why) => {
                self.report(
                    span,
                    path,
                    Some(field),
                    format!("invalid duration {text:?}: {why}"),
                    "write a number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\"",
                );
                default
            }
        }
    }

    /// A number inside `range` (or `default` when unset); `unit` says what
    /// it counts. Out of range, it is reported once and `default` is
    /// returned.
    #[allow(clippy::too_many_arguments)] // where, which field, and its bounds
    fn number<T: Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        span: &Range<usize>,
        path: &str,
        field: &str,
        value: Option<T>,
        range: RangeInclusive<T>,
        unit: &str,
        default: T,
    ) -> T {
        let Some(v) = value else { return default };
        if range.contains(&v) {
            return v;
        }
        let (min, max) = (range.start(), range.end());
        self.report(
            span,
            path,
            Some(field),
            format!("{v} is outside {min}..={max} {unit}").trim_end(),
            format!("set `{field}` between {min} and {max} (default {default})"),
        );
        default
    }

    fn socket_addr(
        &mut self,
        span: &Range<usize>,
        path: &str,
        field: &str,
        text: &str,
    ) -> Option<SocketAddr> {
        match SocketAddr::from_str(text) {
            Ok(a) => Some(a),
            Err(_) => {
                self.report(
                    span,
                    path,
                    Some(field),
                    format!("invalid socket address {text:?}"),
                    "write an IP address and a port: \"192.0.2.10:80\" or \"[2001:db8::10]:443\" (host names are not resolved)",
                );
                None
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        span: &Range<usize>,
        path: &str,
        field: &str,
        value: &Option<String>,
        choices: &[(T, &str)],
        default: T,
    ) -> T {
        let Some(text) = value else { return default };
        match choices.iter().find(|(_, name)| *name == text) {
            Some((v, _)) => *v,
            None => {
                let names: Vec<String> = choices.iter().map(|(_, n)| format!("\"{n}\"")).collect();
                self.report(
                    span,
                    path,
                    Some(field),
                    format!("unknown value {text:?}"),
                    format!("use one of {}", names.join(", ")),
                );
                default
            }
        }
    }

    fn unique_name(
        &mut self,
        seen: &mut HashSet<String>,
        span: &Range<usize>,
        path: &str,
        kind: &str,
        name: &Option<String>,
        index: usize,
    ) -> String {
        match name {
            None => {
                self.report(
                    span,
                    path,
                    None,
                    "missing required field `name`",
                    format!("add `name = \"...\"` so that other sections can refer to this {kind}"),
                );
                format!("#{index}")
            }
            Some(n) if n.is_empty() => {
                self.report(
                    span,
                    path,
                    Some("name"),
                    "the name is empty",
                    "give it a non-empty name",
                );
                format!("#{index}")
            }
            Some(n) if n.len() > MAX_NAME => {
                self.report(
                    span,
                    path,
                    Some("name"),
                    format!("the name is {} bytes long", n.len()),
                    format!("give it a name of at most {MAX_NAME} bytes"),
                );
                format!("#{index}")
            }
            Some(n) => {
                if !seen.insert(n.clone()) {
                    self.report(
                        span,
                        path,
                        Some("name"),
                        format!("duplicate {kind} name {n:?}"),
                        format!("give every {kind} a different name"),
                    );
                }
                n.clone()
            }
        }
    }
}

/// The key whose removal makes a type error go away: serde's message for a
/// wrong type does not name the field, so find it by elimination.
fn culprit<T: for<'de> Deserialize<'de>>(fields: &toml::Table, msg: &str) -> Option<String> {
    fields.keys().find_map(|k| {
        let mut fewer = fields.clone();
        fewer.remove(k);
        match T::deserialize(toml::Value::Table(fewer)) {
            Ok(_) => Some(k.clone()),
            Err(e) if e.message().trim() != msg => Some(k.clone()),
            Err(_) => None,
        }
    })
}

fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

/// Parse "500ms", "30s", "5m", "1h", "1d" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "it does not start with a whole number".to_string())?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    let d = match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        other => return Err(format!("unknown unit {other:?}")),
    };
    d.ok_or_else(|| "it is too large".to_string())
}

/// One day, the upper bound of most durations: far enough for every
/// timeout, near enough that `now + duration` never overflows a clock.
const DAY: Duration = Duration::from_secs(86_400);

/// The shortest timeout or interval: below it a connection's timers or a
/// health checker would wake the process hundreds of times a second.
const SHORTEST: Duration = Duration::from_millis(100);

/// Longest section name: names are copied into every error, log line,
/// metric label and table that refers to the section, so a 1.5 MB name
/// cost gigabytes.
const MAX_NAME: usize = 128;

/// Longest host name, and label, as DNS allows (RFC 1035 2.3.4).
const MAX_HOST: usize = 253;
const MAX_LABEL: usize = 63;

/// Most `routes` of a vhost: a request is compared with each prefix in
/// turn (100 000 of them cost almost a millisecond per request).
const MAX_ROUTES_PER_VHOST: usize = 10_000;

/// Most `upgrades` of a listener: a request's `Upgrade` header may offer
/// thousands of protocols, each compared with the whole list.
const MAX_UPGRADES: usize = 32;

/// Most `trusted_proxies` of a listener: the list is scanned per
/// connection and per request.
const MAX_TRUSTED: usize = 1000;

/// Largest connection cap (global, per listener, per client): far above
/// what one host's file descriptors allow, far below tokio's semaphore limit.
const MAX_CONNECTIONS: usize = 10_000_000;

/// Largest weight, as ipvsadm allows (the kernel keeps weights in an `int`).
const MAX_WEIGHT: u32 = 65_535;

/// Largest IPVS connection threshold, as ipvsadm allows.
const MAX_THRESHOLD: u32 = 65_535;

/// Largest Maglev table: the kernel's biggest (IP_VS_MH_TAB_INDEX 17), 512 KiB.
const MAX_MH_TABLE: u32 = 131_071;

/// Largest request body limit: 1 TiB.
const MAX_BODY_SIZE: u64 = 1 << 40;

/// Write a duration back in the unit an operator would use ("100ms", "5m").
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    match units.iter().find(|(n, _)| ms >= *n && ms % n == 0) {
        Some((n, unit)) => format!("{}{unit}", ms / n),
        None if ms == 0 => "0s".into(),
        None => format!("{ms}ms"),
    }
}

/// Parse an IPv4 netmask given as dotted quad or prefix length.
fn parse_netmask_v4(text: &str) -> Result<u8, String> {
    if let Ok(prefix) = text.parse::<u8>() {
        return if prefix <= 32 {
            Ok(prefix)
        } else {
            Err("an IPv4 prefix length is at most 32".into())
        };
    }
    let mask: std::net::Ipv4Addr = text
        .parse()
        .map_err(|_| "it is neither a dotted netmask nor a prefix length".to_string())?;
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    if bits.checked_shl(prefix).unwrap_or(0) != 0 {
        return Err("the mask bits are not contiguous".into());
    }
    Ok(prefix as u8)
}

/// Validate the text of a configuration file into a [`Config`].
pub(super) fn validate(src: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let skeleton: Skeleton = match toml::from_str(src) {
        Ok(s) => s,
        Err(e) => {
            let mut c = Checker::new(src);
            let (line, column) = e.span().map_or((None, None), |s| {
                let (l, col) = c.position(s.start);
                (Some(l), Some(col))
            });
            let msg = e.message().trim().to_string();
            let fix = if msg.starts_with("unknown field") {
                "the sections are [global], [admin], [tls], [[listener]], [[pool]], [[persistence]], [[vhost]] and [ipvs] with [[ipvs.service]]; remove or rename this one"
            } else {
                "fix the TOML syntax at this position"
            };
            c.problems.push(Problem {
                line,
                column,
                field: "(file)".into(),
                problem: msg,
                fix: fix.into(),
            });
            return Err(invalid(c.finish()));
        }
    };
    let mut c = Checker::new(src);
    let config = build(&mut c, &skeleton, path);
    if c.problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(c.finish()))
    }
}

const WHOLE: Range<usize> = 0..0;

fn build(c: &mut Checker<'_>, s: &Skeleton, path: &Path) -> Config {
    let global = global(c, s.global.as_ref());
    let admin = s.admin.as_ref().map(|t| admin(c, t));
    let tls = tls_settings(c, s.tls.as_ref());
    let mut names = HashSet::new();
    let pools: Vec<Pool> = s
        .pool
        .iter()
        .enumerate()
        .map(|(i, t)| pool(c, t, i, &mut names))
        .collect();
    let pool_names = Defined::new(&pools, |p| p.name.as_str());
    let mut names = HashSet::new();
    let persistence: Vec<PersistenceGroup> = s
        .persistence
        .iter()
        .enumerate()
        .map(|(i, t)| persistence(c, t, i, &mut names))
        .collect();
    check_clients_total(c, s, &persistence);
    let groups = Defined::new(&persistence, |g| g.name.as_str());
    let mut names = HashSet::new();
    let vhosts: Vec<Vhost> = s
        .vhost
        .iter()
        .enumerate()
        .map(|(i, t)| vhost(c, t, i, &mut names, &pool_names))
        .collect();
    let vhost_names = Defined::new(&vhosts, |v| v.name.as_str());
    let mut routes = RouteBudget::new(&vhosts);
    let mut names = HashSet::new();
    let listeners: Vec<Listener> = s
        .listener
        .iter()
        .enumerate()
        .map(|(i, t)| {
            listener(
                c,
                t,
                i,
                &mut names,
                &pool_names,
                &groups,
                &vhost_names,
                &mut routes,
            )
        })
        .collect();
    let ipvs_table = s.ipvs.as_ref().map(|t| {
        let start = c.src.find("[ipvs").unwrap_or(0);
        Spanned::new(start..c.src.len(), t.clone())
    });
    let ipvs = ipvs(c, ipvs_table.as_ref(), &groups);
    check_binds(c, s, &listeners, admin.as_ref());
    let ipvs_span = ipvs_table.as_ref().map_or(WHOLE, |t| t.span());
    check_probe_rate(c, s, &pools, &ipvs, &ipvs_span);
    if let (Some(user), false) = (&global.user, ipvs.services.is_empty()) {
        c.report(
            &s.global.as_ref().map_or(WHOLE, |t| t.span()),
            "global",
            Some("user"),
            format!("switching to user {user:?} drops CAP_NET_ADMIN, which every later IPVS reconcile needs"),
            "remove `user` and run vipd with only the capabilities it needs (systemd: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE, User=...), or manage IPVS from a separate vipd",
        );
    }
    let index = Index::new(&listeners, &pools, &persistence, &vhosts);
    Config {
        source: Some(path.to_path_buf()),
        global,
        admin,
        tls,
        listeners,
        pools,
        persistence,
        index,
        vhosts,
        ipvs,
    }
}

fn global(c: &mut Checker<'_>, t: Option<&Spanned<toml::Table>>) -> Global {
    let span = t.map_or(WHOLE, |t| t.span());
    let raw: RawGlobal = t.map(|t| c.entry(t, "global")).unwrap_or_default();
    let p = "global";
    Global {
        workers: c.number(&span, p, "workers", raw.workers, 0..=1024, "threads", 0),
        grace_period: c.duration(
            &span,
            p,
            "grace_period",
            &raw.grace_period,
            Duration::from_secs(30),
        ),
        max_connections: c.number(
            &span,
            p,
            "max_connections",
            raw.max_connections,
            1..=MAX_CONNECTIONS,
            "connections",
            100_000,
        ),
        log_format: c.choice(
            &span,
            p,
            "log_format",
            &raw.log_format,
            &[(LogFormat::Text, "text"), (LogFormat::Json, "json")],
            LogFormat::Text,
        ),
        access_log: c.choice(
            &span,
            p,
            "access_log",
            &raw.access_log,
            &[
                (AccessLog::Off, "off"),
                (AccessLog::Common, "common"),
                (AccessLog::Json, "json"),
            ],
            AccessLog::Common,
        ),
        user: raw.user,
        group: raw.group,
    }
}

fn tls_settings(c: &mut Checker<'_>, t: Option<&Spanned<toml::Table>>) -> TlsSettings {
    let span = t.map_or(WHOLE, |t| t.span());
    let raw: RawTls = t.map(|t| c.entry(t, "tls")).unwrap_or_default();
    TlsSettings {
        min_version: c.choice(
            &span,
            "tls",
            "min_version",
            &raw.min_version,
            &[(TlsVersion::Tls12, "1.2"), (TlsVersion::Tls13, "1.3")],
            TlsVersion::Tls12,
        ),
        session_cache_size: c.number(
            &span,
            "tls",
            "session_cache_size",
            raw.session_cache_size,
            0..=100_000,
            "sessions",
            20_480,
        ),
        session_tickets: raw.session_tickets.unwrap_or(true),
        allow_invalid_dates: raw.allow_invalid_dates.unwrap_or(false),
    }
}

fn health(c: &mut Checker<'_>, span: &Range<usize>, path: &str, raw: &RawHealth) -> HealthCheck {
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
    }
}

fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = text.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&a) && (100..=599).contains(&b) && a <= b).then_some((a, b))
}

fn pool(
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
        &SchedulerKind::ALL,
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
fn on_all_down(c: &mut Checker<'_>, span: &Range<usize>, p: &str, raw: &RawPool) -> OnAllDown {
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
fn nonzero_port(c: &mut Checker<'_>, span: &Range<usize>, path: &str, field: &str, a: SocketAddr) {
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

fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn persistence(
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

fn check_pool_ref(
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

fn check_group_ref(
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

fn vhost(
    c: &mut Checker<'_>,
    t: &Spanned<toml::Table>,
    i: usize,
    names: &mut HashSet<String>,
    pools: &Defined<Pool>,
) -> Vhost {
    let span = t.span();
    let raw: RawVhost = c.entry(t, &format!("vhost[{i}]"));
    let name = c.unique_name(names, &span, &format!("vhost[{i}]"), "vhost", &raw.name, i);
    let p = format!("vhost {name:?}");
    let mut hosts = Vec::new();
    for h in &raw.hosts {
        let lower = h.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        let ok = !bare.is_empty()
            && bare.len() <= MAX_HOST
            && !bare.contains('*')
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= MAX_LABEL
                    && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
            });
        if ok {
            hosts.push(lower);
        } else {
            c.report(
                &span,
                &p,
                Some("hosts"),
                format!("{h:?} is not a host name"),
                "write exact names (\"www.example.com\") or a leading wildcard (\"*.example.com\"), without port, of at most 253 bytes and 63 per label",
            );
        }
    }
    if raw.hosts.is_empty() {
        c.report(
            &span,
            &p,
            Some("hosts"),
            "the vhost serves no host names",
            "add `hosts = [\"www.example.com\"]`",
        );
    }
    let mut certificates = Vec::new();
    for (j, cert) in raw.certificates.iter().enumerate() {
        let cp = format!("{p}.certificates[{j}]");
        let cf = c.required(&span, &cp, "cert", &cert.cert, "\"certs/www.pem\"");
        let kf = c.required(&span, &cp, "key", &cert.key, "\"certs/www.key\"");
        if let (Some(cf), Some(kf)) = (cf, kf) {
            certificates.push(CertificateFiles {
                cert: cf.into(),
                key: kf.into(),
            });
        }
    }
    if let Some(pool) = &raw.pool {
        check_pool_ref(c, &span, &p, "pool", pool, pools);
    }
    let mut routes = Vec::new();
    if raw.routes.len() > MAX_ROUTES_PER_VHOST {
        c.report(
            &span,
            &p,
            Some("routes"),
            format!(
                "{} routes are listed, more than {MAX_ROUTES_PER_VHOST}: every request is compared with each",
                raw.routes.len()
            ),
            "route by shorter prefixes that cover several paths (\"/api/\" for \"/api/a/\" and \"/api/b/\")",
        );
    }
    for (j, r) in raw.routes.iter().enumerate().take(MAX_ROUTES_PER_VHOST) {
        let rp = format!("{p}.routes[{j}]");
        let prefix = c.required(&span, &rp, "path_prefix", &r.path_prefix, "\"/api/\"");
        let pool = c.required(&span, &rp, "pool", &r.pool, "\"api\"");
        if let (Some(prefix), Some(pool)) = (prefix, pool) {
            if !prefix.starts_with('/') {
                c.report(
                    &span,
                    &rp,
                    Some("path_prefix"),
                    format!("{prefix:?} does not start with '/'"),
                    "write an absolute path prefix such as \"/api/\"",
                );
            }
            check_pool_ref(c, &span, &rp, "pool", pool, pools);
            routes.push(Route {
                path_prefix: prefix.into(),
                pool: pool.into(),
            });
        }
    }
    if raw.pool.is_none() && routes.is_empty() && raw.redirect_https != Some(true) {
        c.report(
            &span,
            &p,
            Some("pool"),
            "the vhost has no pool, no routes and no redirect: requests would have nowhere to go",
            "add `pool = \"...\"`",
        );
    }
    let hsts_max_age = raw.hsts_max_age.as_ref().map(|_| {
        c.duration_in(
            &span,
            &p,
            "hsts_max_age",
            &raw.hsts_max_age,
            Duration::ZERO,
            Duration::ZERO..=Duration::from_secs(730 * 86_400),
        )
    });
    Vhost {
        name,
        hosts,
        certificates,
        pool: raw.pool.clone(),
        routes,
        redirect_https: raw.redirect_https.unwrap_or(false),
        hsts_max_age,
        max_body_size: raw.max_body_size.filter(|&v| {
            let ok = v <= MAX_BODY_SIZE;
            if !ok {
                c.report(
                    &span,
                    &p,
                    Some("max_body_size"),
                    format!("{v} is outside 0..={MAX_BODY_SIZE} bytes"),
                    "set `max_body_size` between 0 and 1099511627776 (1 TiB), or remove it for no limit",
                );
            }
            ok
        }),
    }
}

#[allow(clippy::too_many_arguments)] // one reference per section a listener may name
fn listener(
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
        name,
    }
}

/// `upgrades` of a listener: protocol names, lower-cased, `websocket` by
/// default. `h2c` is refused: vipd speaks HTTP/2 itself, and a tunnelled
/// h2c connection would escape its HTTP/2 limits.
fn upgrades(
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
const HEADER_BYTES: (usize, usize) = (8192, 1024 * 1024);
const HEADER_COUNT: (usize, usize) = (1, 1000);

/// `max_header_bytes` and `max_headers` of a listener (HTTP only).
fn header_limits(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    p: &str,
    raw: &RawListener,
    protocol: Protocol,
) -> (usize, usize) {
    let bytes = raw.max_header_bytes.unwrap_or(64 * 1024);
    let count = raw.max_headers.unwrap_or(100);
    let checks = [
        (
            "max_header_bytes",
            raw.max_header_bytes,
            HEADER_BYTES,
            "bytes",
            "65536",
        ),
        (
            "max_headers",
            raw.max_headers,
            HEADER_COUNT,
            "header fields",
            "100",
        ),
    ];
    for (field, set, (min, max), unit, default) in checks {
        let Some(v) = set else { continue };
        if !protocol.is_http() {
            c.report(
                span,
                p,
                Some(field),
                format!("`{field}` limits HTTP requests, and this listener does not speak HTTP"),
                "remove it, or use protocol \"http\" or \"https\"",
            );
        } else if !(min..=max).contains(&v) {
            c.report(
                span,
                p,
                Some(field),
                format!("{v} is outside {min}..={max} {unit}"),
                format!("set `{field}` between {min} and {max} (default {default})"),
            );
        }
    }
    (bytes, count)
}

/// `request_body_timeout` and `send_timeout` of a listener (HTTP only),
/// both 60 s by default as in nginx.
fn transfer_timeouts(
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

fn ipvs(
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
        let scheduler = s.scheduler.clone().unwrap_or_else(|| "wrr".into());
        if scheduler.is_empty()
            || scheduler.len() > 15
            || !scheduler
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        {
            c.report(
                &span,
                &p,
                Some("scheduler"),
                format!("{scheduler:?} is not a kernel scheduler name"),
                "use an ip_vs scheduler: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh",
            );
        }
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
            if let Some(IpvsVirtual::Address { address: vip, .. }) = virtual_service {
                if forwarding != Forwarding::Nat && address.port() != vip.port() {
                    c.report(
                        &span,
                        &rp,
                        Some("address"),
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
                        &span,
                        &rp,
                        Some("address"),
                        "the real server's address family differs from the VIP's",
                        "use real servers of the VIP's family",
                    );
                }
            }
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
            services.push(IpvsService {
                name,
                virtual_service: v,
                scheduler,
                persistence: s.persistence.clone(),
                forwarding,
                real_servers,
                health: s.health.as_ref().map(|h| health(c, &span, &p, h)),
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

/// Two listeners on one address, or the admin endpoint on a listener's address.
fn check_binds(c: &mut Checker<'_>, s: &Skeleton, listeners: &[Listener], admin: Option<&Admin>) {
    let mut bound = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.bind.port() == 0 {
            continue;
        }
        if !bound.insert(l.bind) {
            c.report(
                &s.listener[i].span(),
                &format!("listener {:?}", l.name),
                Some("bind"),
                format!("{} is already bound by another listener", l.bind),
                "give each listener its own address:port; one listener can serve many vhosts",
            );
        }
    }
    if let (Some(a), Some(t)) = (admin, s.admin.as_ref()) {
        if !a.listen.ip().is_loopback() && listeners.iter().any(|l| l.bind.ip() == a.listen.ip()) {
            c.report(
                &t.span(),
                "admin",
                Some("listen"),
                format!("{} is a VIP served by a listener", a.listen.ip()),
                "bind the admin endpoint to 127.0.0.1 or a management address, never the VIP",
            );
        }
    }
}
