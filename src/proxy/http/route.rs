//! Virtual-host routing: which vhost serves a Host name, and which pool
//! serves a path inside it. Tables are built once per configuration and
//! looked up without allocating.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use fnv::FnvBuildHasher;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use ipnet::IpNet;

use crate::config;

/// A vhost as the request path needs it.
#[derive(Debug)]
pub struct VhostRoute {
    /// The vhost's name, as logged.
    pub name: Arc<str>,
    /// Path-prefix routes, longest prefix first.
    routes: Vec<(String, Arc<str>)>,
    /// Pool for paths no route matches.
    pool: Option<Arc<str>>,
    /// Answer plain-HTTP requests with a 308 to https.
    pub redirect_https: bool,
    /// Precomputed `Strict-Transport-Security` value for https responses.
    pub hsts: Option<HeaderValue>,
    /// Largest request body accepted, in bytes.
    pub max_body_size: Option<u64>,
    /// The first exact name in `hosts`: the Host sent to the backend for
    /// an HTTP/1.0 request that named no host.
    pub first_host: Option<HeaderValue>,
}

impl VhostRoute {
    fn new(v: &config::Vhost) -> Self {
        let mut routes: Vec<(String, Arc<str>)> = v
            .routes
            .iter()
            .map(|r| (r.path_prefix.clone(), r.pool.as_str().into()))
            .collect();
        // Stable sort: among equal lengths the first written wins.
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let hsts = v.hsts_max_age.map(|age| {
            HeaderValue::try_from(format!("max-age={}", age.as_secs()))
                .expect("digits are a valid header value")
        });
        Self {
            name: v.name.as_str().into(),
            routes,
            pool: v.pool.as_deref().map(Into::into),
            redirect_https: v.redirect_https,
            hsts,
            max_body_size: v.max_body_size,
            first_host: v
                .hosts
                .iter()
                .find(|h| !h.starts_with("*."))
                .and_then(|h| HeaderValue::try_from(h.as_str()).ok()),
        }
    }

    /// The pool serving `path`: the longest matching path prefix, else the
    /// vhost's pool.
    pub fn pool_for(&self, path: &str) -> Option<&Arc<str>> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, pool)| pool)
            .or(self.pool.as_ref())
    }
}

/// The vhosts one listener serves, by host name.
#[derive(Debug, Default)]
pub struct VhostTable {
    exact: HashMap<String, Arc<VhostRoute>, FnvBuildHasher>,
    /// Keyed by the suffix after `*.`; matches exactly one more label.
    wildcard: HashMap<String, Arc<VhostRoute>, FnvBuildHasher>,
    default: Option<Arc<VhostRoute>>,
}

impl VhostTable {
    /// The vhost for `host` (lower case, no port): exact names first, then
    /// `*.` wildcards, then the listener's default vhost.
    pub fn lookup(&self, host: &str) -> Option<&Arc<VhostRoute>> {
        self.lookup_named(host).or(self.default.as_ref())
    }

    /// The listener's default vhost.
    pub fn default_vhost(&self) -> Option<&Arc<VhostRoute>> {
        self.default.as_ref()
    }

    /// Like [`lookup`](Self::lookup) without the default vhost.
    pub fn lookup_named(&self, host: &str) -> Option<&Arc<VhostRoute>> {
        self.exact.get(host).or_else(|| {
            let (_, parent) = host.split_once('.')?;
            self.wildcard.get(parent)
        })
    }
}

/// What an HTTP listener needs per request.
#[derive(Debug)]
pub struct ListenerRoutes {
    pub vhosts: VhostTable,
    /// Peers whose forwarding headers are kept and appended to.
    pub trusted_proxies: Vec<IpNet>,
    /// Add RFC 7239 `Forwarded`.
    pub forwarded: bool,
    /// Add `Via`.
    pub via: bool,
    /// Set `X-Real-IP`.
    pub real_ip: bool,
    /// Client-IP persistence group the listener schedules through.
    pub persistence: Option<String>,
    /// Most header fields a request may carry (hyper enforces it for
    /// HTTP/1; the request path checks HTTP/2 requests).
    pub max_headers: usize,
    /// `Upgrade` protocols tunnelled after a `101`, lower case.
    pub upgrades: Vec<String>,
    /// hyper's server settings for the listener's connections (header
    /// limits), built once here rather than per connection.
    pub server: Arc<auto::Builder<TokioExecutor>>,
}

impl ListenerRoutes {
    fn new(
        l: &config::Listener,
        config: &config::Config,
        built: &HashMap<&str, Arc<VhostRoute>>,
    ) -> Self {
        let mut vhosts = VhostTable::default();
        for name in &l.vhosts {
            let (Some(v), Some(route)) = (config.vhost(name), built.get(name.as_str())) else {
                continue;
            };
            for host in &v.hosts {
                let (map, key) = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut vhosts.wildcard, suffix),
                    None => (&mut vhosts.exact, host.as_str()),
                };
                // The first vhost listed for a name wins.
                map.entry(key.to_string()).or_insert_with(|| route.clone());
            }
        }
        vhosts.default = l
            .default_vhost
            .as_deref()
            .and_then(|d| built.get(d).cloned());
        Self {
            vhosts,
            trusted_proxies: l.trusted_proxies.clone(),
            forwarded: l.forwarded,
            via: l.via,
            real_ip: l.x_real_ip,
            persistence: l.persistence.clone(),
            max_headers: l.max_headers,
            upgrades: l.upgrades.clone(),
            server: Arc::new(super::conn::server_builder(l)),
        }
    }

    /// Whether forwarding headers from `client` are believed. Behind a
    /// PROXY header, both the sender and the client it names must be
    /// trusted: the claim can never earn trust by itself, and the clients of
    /// a trusted layer-4 balancer (which passes their bytes untouched)
    /// cannot forge headers through it, not even one it cannot name.
    pub fn trusts(&self, client: IpAddr, arrival: Arrival) -> bool {
        let trusted = |ip: IpAddr| {
            let ip = ip.to_canonical();
            self.trusted_proxies.iter().any(|n| n.contains(&ip))
        };
        match arrival {
            Arrival::Direct => trusted(client),
            Arrival::Proxied(sender) => trusted(sender) && trusted(client),
            Arrival::Unnamed => false,
        }
    }
}

/// How a connection reached the listener: what decides, with
/// `trusted_proxies`, whether its client's forwarding headers are believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Straight from the client, the TCP peer.
    Direct,
    /// Through a PROXY header, sent by this TCP peer, that named the client.
    Proxied(IpAddr),
    /// Through a PROXY header that named no client (v1 `UNKNOWN`, v2 `LOCAL`,
    /// the unspecified or unix family). The client is then unknown: the
    /// sender may be a layer-4 balancer passing a stranger's bytes.
    Unnamed,
}

/// Routing of every HTTP listener, by listener name.
#[derive(Debug, Default)]
pub struct Routes {
    by_listener: HashMap<String, Arc<ListenerRoutes>, FnvBuildHasher>,
}

impl Routes {
    /// Build the tables of every `http`/`https` listener of `config`.
    pub fn build(config: &config::Config) -> Self {
        let built: HashMap<&str, Arc<VhostRoute>> = config
            .vhosts
            .iter()
            .map(|v| (v.name.as_str(), Arc::new(VhostRoute::new(v))))
            .collect();
        let by_listener = config
            .listeners
            .iter()
            .filter(|l| l.protocol.is_http())
            .map(|l| {
                (
                    l.name.clone(),
                    Arc::new(ListenerRoutes::new(l, config, &built)),
                )
            })
            .collect();
        Self { by_listener }
    }

    /// The tables of the listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRoutes>> {
        self.by_listener.get(name)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
default_vhost = "fallback"

[[pool]]
name = "a"
backends = [{ address = "127.0.0.1:1" }]

[[pool]]
name = "b"
backends = [{ address = "127.0.0.1:2" }]

[[vhost]]
name = "www"
hosts = ["www.example.com"]
pool = "a"
routes = [
  { path_prefix = "/api/", pool = "b" },
  { path_prefix = "/api/v2/", pool = "a" },
]

[[vhost]]
name = "wild"
hosts = ["*.example.com"]
pool = "b"

[[vhost]]
name = "fallback"
hosts = ["fallback.invalid"]
pool = "a"
"#;

    fn table() -> Arc<ListenerRoutes> {
        let config = config::parse(CONFIG, Path::new("t.toml")).unwrap();
        Routes::build(&config).listener("web").unwrap().clone()
    }

    #[test]
    fn exact_name_wins_over_wildcard() {
        let t = table();
        assert_eq!(&*t.vhosts.lookup("www.example.com").unwrap().name, "www");
        assert_eq!(&*t.vhosts.lookup("api.example.com").unwrap().name, "wild");
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let t = table();
        assert_eq!(
            &*t.vhosts.lookup("a.b.example.com").unwrap().name,
            "fallback"
        );
        assert_eq!(&*t.vhosts.lookup("example.com").unwrap().name, "fallback");
        assert!(t.vhosts.lookup_named("example.com").is_none());
    }

    #[test]
    fn longest_path_prefix_picks_the_pool() {
        let t = table();
        let www = t.vhosts.lookup("www.example.com").unwrap();
        assert_eq!(&**www.pool_for("/api/v2/x").unwrap(), "a");
        assert_eq!(&**www.pool_for("/api/x").unwrap(), "b");
        assert_eq!(&**www.pool_for("/").unwrap(), "a");
    }
}
