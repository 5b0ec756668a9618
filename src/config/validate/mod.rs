//! Raw file -> typed model, collecting every problem instead of stopping at the first.
//!
//! This module holds the [`Checker`] (problems with file:line, field and
//! fix; range and duration helpers), the top level and the small sections
//! (`[global]`, `[tls]`), and the cross-section checks (binds). Each larger
//! section has its own file: [`listener`], [`pool`] (pools, health,
//! persistence), [`vhost`], [`ipvs`], [`admin`]; [`sizes`] bounds the sizes
//! of collections.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

mod admin;
mod entry;
mod ipvs;
mod listener;
mod pool;
mod sizes;
mod vhost;

use self::admin::admin;
use self::ipvs::*;
use self::listener::*;
use self::pool::*;
use self::sizes::{
    Defined, MAX_CLIENTS, RouteBudget, check_clients_total, check_probe_rate, served_vhosts,
};
use self::vhost::*;
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
    /// Whether entries were left unread past [`MAX_PROBLEMS`] (their
    /// problems are not all counted).
    skipped: bool,
    /// The file as a tree that keeps every key's position, parsed by
    /// [`Self::entry`] at the first entry serde refuses (a valid file is
    /// parsed once); `Some(None)` if TOML could not read it.
    doc: Option<Option<toml_edit::ImDocument<&'a str>>>,
    /// Where each entry of `doc` starts ([`entry::entries`]).
    entries: HashMap<usize, (String, usize)>,
    /// Keys [`Self::entry`] reported and dropped, by the start of their
    /// entry: their paths inside it.
    dropped: HashMap<usize, Vec<String>>,
}

impl<'a> Checker<'a> {
    fn new(src: &'a str) -> Self {
        Checker {
            src,
            newlines: src.match_indices('\n').map(|(i, _)| i).collect(),
            problems: Vec::new(),
            unlisted: 0,
            skipped: false,
            doc: None,
            entries: HashMap::new(),
            dropped: HashMap::new(),
        }
    }

    /// Every problem found, in the order of the file, the unlisted ones
    /// summed up in a last one.
    fn finish(mut self) -> Vec<Problem> {
        self.problems
            .sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        if self.unlisted > 0 {
            self.problems.push(Problem {
                line: None,
                column: None,
                field: "(file)".into(),
                problem: format!(
                    "{}{} more problems are not listed (vipd lists the first {MAX_PROBLEMS})",
                    if self.skipped { "at least " } else { "" },
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
        let full = match field {
            Some(f) => format!("{path}.{f}"),
            None => path.to_string(),
        };
        if field.is_some() && self.dropped(span, &full) {
            return;
        }
        let at = self.locate(span, field);
        self.push(at, full, problem.into(), fix.into());
    }

    /// Report a problem at `offset` in the file; `field` is its full path.
    fn report_at(
        &mut self,
        offset: usize,
        field: String,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let at = self.position(offset);
        self.push(at, field, problem.into(), fix.into());
    }

    fn push(
        &mut self,
        (line, column): (usize, usize),
        field: String,
        problem: String,
        fix: String,
    ) {
        if self.problems.len() >= MAX_PROBLEMS {
            self.unlisted += 1;
            return;
        }
        self.problems.push(Problem {
            line: Some(line),
            column: Some(column),
            field,
            problem,
            fix,
        });
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
            None if self.dropped(span, &format!("{path}.{field}")) => None,
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
            None if self.dropped(span, &format!("{path}.name")) => format!("#{index}"),
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

/// Most tokio worker threads: far more than any host's cores, while 100000
/// of them took 254 MB of thread stacks before serving anything.
const MAX_WORKERS: usize = 1024;

/// Largest TLS session cache: rustls allocates it up front, about 90 bytes
/// a session (9 MiB here; `1e9` aborted vipd).
const MAX_SESSION_CACHE: usize = 100_000;

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
        workers: c.number(
            &span,
            p,
            "workers",
            raw.workers,
            0..=MAX_WORKERS,
            "threads",
            0,
        ),
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
        session_cache_size: session_cache_size(c, &span, raw.session_cache_size.as_ref()),
        session_timeout: c.duration_in(
            &span,
            "tls",
            "session_timeout",
            &raw.session_timeout,
            Duration::from_secs(300),
            Duration::from_secs(1)..=DAY,
        ),
        ticket_lifetime: c.duration_in(
            &span,
            "tls",
            "ticket_lifetime",
            &raw.ticket_lifetime,
            MAX_TICKET_LIFETIME,
            Duration::from_secs(1)..=MAX_TICKET_LIFETIME,
        ),
        session_tickets: raw.session_tickets.unwrap_or(true),
        allow_invalid_dates: raw.allow_invalid_dates.unwrap_or(false),
    }
}

/// Bytes a cached TLS session is counted for when the size is given in
/// bytes: nginx's estimate (about 4000 sessions a megabyte).
const SESSION_BYTES: u64 = 256;

/// Longest ticket lifetime: rustls rotates ticket keys every 6 hours and
/// accepts a ticket for two rotations at most.
const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// `[tls] session_cache_size` in entries, from a number of sessions or a
/// size in bytes (`"10m"`, `"512k"`).
fn session_cache_size(
    c: &mut Checker<'_>,
    span: &Range<usize>,
    raw: Option<&RawCacheSize>,
) -> usize {
    const DEFAULT: usize = 20_480;
    let entries = match raw {
        None => return DEFAULT,
        Some(RawCacheSize::Entries(n)) => usize::try_from(*n).unwrap_or(usize::MAX),
        Some(RawCacheSize::Bytes(text)) => match parse_bytes(text) {
            Some(bytes) => usize::try_from(bytes / SESSION_BYTES).unwrap_or(usize::MAX),
            None => {
                c.report(
                    span,
                    "tls",
                    Some("session_cache_size"),
                    format!("invalid size {text:?}"),
                    "write a number of sessions (20480) or a size in bytes with a unit, as nginx does: \"512k\", \"10m\"",
                );
                return DEFAULT;
            }
        },
    };
    let unit = match raw {
        Some(RawCacheSize::Bytes(text)) => {
            format!("sessions ({text:?} at {SESSION_BYTES} bytes a session)")
        }
        _ => "sessions".to_string(),
    };
    c.number(
        span,
        "tls",
        "session_cache_size",
        Some(entries),
        0..=MAX_SESSION_CACHE,
        &unit,
        DEFAULT,
    )
}

/// "512k", "10m", "1g" (powers of 1024, as nginx reads sizes) or a bare
/// number of bytes.
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
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
