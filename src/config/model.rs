//! The validated, typed configuration every other module consumes.
//!
//! Nothing here can be invalid: names referenced by listeners exist, addresses
//! parsed, durations are durations. A `Config` is immutable; a reload builds a
//! new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (reload re-reads it).
    pub source: Option<PathBuf>,
    pub global: Global,
    pub admin: Option<Admin>,
    pub tls: TlsSettings,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
    pub persistence: Vec<PersistenceGroup>,
    pub vhosts: Vec<Vhost>,
    pub ipvs: Ipvs,
    /// Where each named section sits, for the lookups below.
    pub index: Index,
}

impl Config {
    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        find(&self.listeners, &self.index.listeners, name, |l| &l.name)
    }

    /// The pool called `name` (validation guarantees references resolve).
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        find(&self.pools, &self.index.pools, name, |p| &p.name)
    }

    /// The persistence group called `name`.
    pub fn persistence_group(&self, name: &str) -> Option<&PersistenceGroup> {
        find(&self.persistence, &self.index.persistence, name, |g| {
            &g.name
        })
    }

    /// The vhost called `name`.
    pub fn vhost(&self, name: &str) -> Option<&Vhost> {
        find(&self.vhosts, &self.index.vhosts, name, |v| &v.name)
    }
}

/// Position of every named section by name, so that a lookup takes constant
/// time: a file may define 100 000 pools and vhosts, and building routes
/// with a scan per reference took minutes. Validation builds it; a lookup
/// checks the name it finds, and scans when the sections were edited after
/// (tests do), so a stale index is never wrong, only slower.
#[derive(Debug, Clone, Default)]
pub struct Index {
    listeners: HashMap<String, usize>,
    pools: HashMap<String, usize>,
    persistence: HashMap<String, usize>,
    vhosts: HashMap<String, usize>,
}

impl Index {
    pub(super) fn new(
        listeners: &[Listener],
        pools: &[Pool],
        persistence: &[PersistenceGroup],
        vhosts: &[Vhost],
    ) -> Self {
        fn positions<T>(all: &[T], name: fn(&T) -> &str) -> HashMap<String, usize> {
            let mut out = HashMap::with_capacity(all.len());
            for (i, x) in all.iter().enumerate() {
                out.entry(name(x).to_string()).or_insert(i);
            }
            out
        }
        Self {
            listeners: positions(listeners, |l| &l.name),
            pools: positions(pools, |p| &p.name),
            persistence: positions(persistence, |g| &g.name),
            vhosts: positions(vhosts, |v| &v.name),
        }
    }
}

fn find<'a, T>(
    all: &'a [T],
    index: &HashMap<String, usize>,
    name: &str,
    name_of: fn(&T) -> &str,
) -> Option<&'a T> {
    match index.get(name).and_then(|&i| all.get(i)) {
        Some(x) if name_of(x) == name => Some(x),
        _ => all.iter().find(|x| name_of(x) == name),
    }
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct Global {
    /// Tokio worker threads; 0 means one per core.
    pub workers: usize,
    /// How long open connections may take to finish on shutdown.
    pub grace_period: Duration,
    /// Cap on connections over all listeners.
    pub max_connections: usize,
    pub log_format: LogFormat,
    pub access_log: AccessLog,
    /// Switch to this user once listeners are bound (needs root at start).
    pub user: Option<String>,
    /// Group to switch to (default: the user's primary group).
    pub group: Option<String>,
}

/// Format of the process log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Per-request access log of HTTP listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Common,
    Json,
}

/// The admin endpoint.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token file; required unless `listen` is a loopback address.
    pub token_file: Option<PathBuf>,
    /// Names besides the address a connection arrived on (and `localhost`
    /// on loopback) that a request's Host may carry: lower case, no port,
    /// IPv6 literals in brackets. Anything else is refused (DNS rebinding).
    pub hosts: Vec<String>,
    /// Time a connection has to send a complete request head.
    pub header_timeout: Duration,
    /// Time one admin connection (one request: head, body, handling and
    /// response) may take from accept.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the kernel backlog.
    pub max_connections: usize,
}

impl Admin {
    /// `header_timeout` when the file sets none.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// `request_timeout` when the file sets none.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// `max_connections` when the file sets none: a few dashboards and
    /// scrapers, not a crowd.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
}

/// TLS settings shared by all TLS listeners.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub min_version: TlsVersion,
    /// Server-side session cache entries (0 disables it).
    pub session_cache_size: usize,
    /// How long a cached session may be resumed (nginx `ssl_session_timeout`).
    pub session_timeout: Duration,
    /// How long a session ticket may be resumed; also the lifetime hint
    /// sent with it.
    pub ticket_lifetime: Duration,
    pub session_tickets: bool,
    /// Accept expired / not yet valid certificates with a warning.
    pub allow_invalid_dates: bool,
}

/// Lowest TLS protocol version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Raw TCP forwarded to a pool (L4).
    Tcp,
    /// TLS terminated, then raw TCP to a pool.
    Tls,
    /// Plain HTTP routed by Host.
    Http,
    /// TLS terminated, then HTTP routed by Host.
    Https,
}

impl Protocol {
    /// Whether the listener terminates TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Https)
    }

    /// Whether the listener routes HTTP requests by vhost.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// One bound address and what is served on it.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// Pool for `tcp`/`tls` listeners.
    pub pool: Option<String>,
    /// Vhosts served (`http`/`https`, and certificates for `tls`); all vhosts when empty in the file.
    pub vhosts: Vec<String>,
    /// Vhost whose certificate answers clients without (matching) SNI, and
    /// whose routes serve requests with an unknown Host.
    pub default_vhost: Option<String>,
    /// Refuse TLS handshakes whose SNI matches no vhost.
    pub strict_sni: bool,
    pub alpn: Vec<String>,
    pub persistence: Option<String>,
    /// Bind even if the address is not (yet) on this host (IP_FREEBIND).
    pub freebind: bool,
    pub reuseport: bool,
    pub backlog: u32,
    pub max_connections: usize,
    /// Concurrent connections one client IP may hold (0 = no limit).
    pub max_connections_per_client: usize,
    /// New connections per second one client IP may open (0 = no limit).
    pub connection_rate_per_client: u32,
    /// Expect a PROXY protocol v1/v2 header from a trusted upstream.
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body from the client
    /// (nginx `client_body_timeout`); expiry is `408` and closes both sides.
    pub request_body_timeout: Duration,
    /// Longest a response may wait for the client to take more of it (a
    /// stalled socket write, or HTTP/2 flow control; nginx `send_timeout`);
    /// expiry closes the client connection.
    pub send_timeout: Duration,
    /// Add an RFC 7239 `Forwarded` header to requests (`http`/`https`).
    pub forwarded: bool,
    /// Add a `Via` header to requests and responses (`http`/`https`).
    pub via: bool,
    /// Set `X-Real-IP` to the client's address (`http`/`https`).
    pub x_real_ip: bool,
    /// Largest request head (request line and headers; HTTP/2: header list
    /// size) accepted, in bytes; larger ones get 431 (`http`/`https`).
    pub max_header_bytes: usize,
    /// Most header fields a request may carry; more get 431 (`http`/`https`).
    pub max_headers: usize,
    /// `Upgrade` protocols (lower case, without version) that are tunnelled
    /// after a `101`; others are stripped and the request is forwarded as a
    /// plain one (`http`/`https`). Never `h2c`.
    pub upgrades: Vec<String>,
    /// Which code serves plain HTTP/1.1 requests (`http`/`https`): vipd's
    /// pass-through codec by default; `hyper` is a diagnostic switch.
    pub http1_codec: Http1Codec,
}

/// Which codec serves plain HTTP/1.1 requests on a listener. HTTP/2,
/// upgrades and everything unusual go to hyper either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Codec {
    /// The pass-through codec (`proxy::http::h1`).
    #[default]
    Vipd,
    /// hyper for every request, as before the pass-through codec (a
    /// diagnostic, and the reference the codec is tested against).
    Hyper,
}

/// Scheduling algorithm, named as in ipvsadm: one enum for both tiers. The
/// kernel's set (`ip_vs_<name>` modules) plus `p2c`, which only the
/// user-space pools have; `vipd check` refuses a name the tier lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Fo,
    Ovf,
    Mh,
    P2c,
}

impl SchedulerKind {
    /// The schedulers user-space pools implement, with their config names.
    pub const POOL: [(SchedulerKind, &'static str); 9] = [
        (SchedulerKind::Rr, "rr"),
        (SchedulerKind::Wrr, "wrr"),
        (SchedulerKind::Lc, "lc"),
        (SchedulerKind::Wlc, "wlc"),
        (SchedulerKind::Sed, "sed"),
        (SchedulerKind::Nq, "nq"),
        (SchedulerKind::Sh, "sh"),
        (SchedulerKind::Mh, "mh"),
        (SchedulerKind::P2c, "p2c"),
    ];

    /// The kernel's IPVS schedulers (Linux 6.1), in ipvsadm's man page order.
    pub const KERNEL: [(SchedulerKind, &'static str); 13] = [
        (SchedulerKind::Rr, "rr"),
        (SchedulerKind::Wrr, "wrr"),
        (SchedulerKind::Lc, "lc"),
        (SchedulerKind::Wlc, "wlc"),
        (SchedulerKind::Lblc, "lblc"),
        (SchedulerKind::Lblcr, "lblcr"),
        (SchedulerKind::Dh, "dh"),
        (SchedulerKind::Sh, "sh"),
        (SchedulerKind::Sed, "sed"),
        (SchedulerKind::Nq, "nq"),
        (SchedulerKind::Fo, "fo"),
        (SchedulerKind::Ovf, "ovf"),
        (SchedulerKind::Mh, "mh"),
    ];

    /// The name used in the config file and by ipvsadm.
    pub fn as_str(self) -> &'static str {
        Self::KERNEL
            .iter()
            .chain(Self::POOL.iter())
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

/// A backend server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub address: SocketAddr,
    /// Relative share of new connections; 0 = quiesced (drained).
    pub weight: u32,
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    Tcp,
    Http,
    Https,
    Tls,
}

/// Active health check settings.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to mark a down backend up.
    pub rise: u32,
    /// Consecutive failures to mark an up backend down.
    pub fall: u32,
    pub path: String,
    pub host: Option<String>,
    /// Inclusive range of accepted HTTP status codes.
    pub expect_status: (u16, u16),
    pub expect_body: Option<String>,
    /// Probe this port instead of the target's own (keepalived's
    /// `connect_port`): fwmark real servers have port 0.
    pub port: Option<u16>,
}

/// A named group of backends and how to choose among them.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub scheduler: SchedulerKind,
    /// Maglev lookup table size (prime).
    pub mh_table_size: u32,
    pub backends: Vec<Backend>,
    pub health: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Send a PROXY v2 header to backends (`tcp`/`tls` listeners).
    pub send_proxy: bool,
    /// Speak HTTP/2 to backends.
    pub http2: bool,
    /// How long an unused keep-alive connection to a backend is kept
    /// (HTTP listeners); keep it below the backends' own keep-alive timeout.
    pub idle_timeout: Duration,
    /// Unused keep-alive connections kept per backend (HTTP listeners).
    pub max_idle: usize,
    /// A backend coming up ramps its share of new connections from ~0 to its
    /// full weight over this period (zero = at once).
    pub slow_start: Duration,
    /// What happens when no backend is up.
    pub on_all_down: OnAllDown,
    /// Consecutive connect failures on live traffic that mark a backend down
    /// (0 = passive checks off).
    pub passive_fall: u32,
    /// Without an active check, how long a passively failed backend rests
    /// before it is tried again.
    pub passive_cooldown: Duration,
}

/// What a pool does when every backend is down (or drained).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAllDown {
    /// Use every backend with a weight above 0 as if healthy.
    FailOpen,
    /// Send every new connection to this "sorry" server.
    Sorry(SocketAddr),
    /// Refuse new connections.
    Refuse,
}

/// Client-IP persistence shared by listeners (and IPVS services) that name it.
#[derive(Debug, Clone)]
pub struct PersistenceGroup {
    pub name: String,
    /// Like `ipvsadm -p`: how long a client sticks after its last connection.
    pub timeout: Duration,
    /// IPv4 prefix length clients are grouped by (`ipvsadm -M`).
    pub prefix_v4: u8,
    /// IPv6 prefix length clients are grouped by.
    pub prefix_v6: u8,
    pub max_entries: usize,
    /// Drop persistence to quiesced (weight 0) backends, like IPVS's expire_quiescent_template.
    pub expire_quiescent: bool,
}

/// A certificate chain and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A path-prefix route inside a vhost.
#[derive(Debug, Clone)]
pub struct Route {
    pub path_prefix: String,
    pub pool: String,
}

/// An HTTP(S) virtual host.
#[derive(Debug, Clone)]
pub struct Vhost {
    pub name: String,
    /// Exact names and `*.example.com` wildcards, lower case.
    pub hosts: Vec<String>,
    pub certificates: Vec<CertificateFiles>,
    pub pool: Option<String>,
    pub routes: Vec<Route>,
    pub redirect_https: bool,
    pub hsts_max_age: Option<Duration>,
    pub max_body_size: Option<u64>,
}

/// The kernel IPVS tier.
#[derive(Debug, Clone)]
pub struct Ipvs {
    /// Manage every kernel service, deleting those not in the config.
    pub own_all: bool,
    pub on_shutdown: OnShutdown,
    pub reconcile_interval: Duration,
    /// How long a removed real server stays at weight 0 before deletion.
    pub drain_period: Duration,
    pub services: Vec<IpvsService>,
}

/// What happens to vipd's kernel services when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    Keep,
    Remove,
}

/// Address family of a fwmark service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Inet6,
}

/// Transport protocol of an IPVS address service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpvsProtocol {
    Tcp,
    Udp,
    Sctp,
}

/// What identifies an IPVS virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpvsVirtual {
    Address {
        protocol: IpvsProtocol,
        address: SocketAddr,
    },
    Fwmark {
        mark: u32,
        family: Family,
    },
}

/// How IPVS forwards packets to a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Direct routing (`ipvsadm -g`).
    Dr,
    /// Masquerading (`ipvsadm -m`).
    Nat,
    /// IP-in-IP tunnelling (`ipvsadm -i`).
    Tunnel,
}

/// A real server of an IPVS service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServer {
    pub address: SocketAddr,
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

/// A kernel IPVS virtual service.
#[derive(Debug, Clone)]
pub struct IpvsService {
    pub name: String,
    pub virtual_service: IpvsVirtual,
    /// Kernel scheduler (`ip_vs_<name>`).
    pub scheduler: SchedulerKind,
    pub persistence: Option<String>,
    pub forwarding: Forwarding,
    pub real_servers: Vec<RealServer>,
    pub health: Option<HealthCheck>,
    /// A real server whose check fails keeps its place at weight 0 instead
    /// of being removed (keepalived's `inhibit_on_failure`).
    pub inhibit_on_failure: bool,
    /// What the service does when no checked real server is up.
    pub on_all_down: OnAllDown,
}
