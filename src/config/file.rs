//! The raw configuration file, exactly as serde reads it from TOML.
//!
//! Every struct rejects unknown fields so that a typo is an error, never a
//! silently ignored setting. Values stay close to what the operator wrote
//! (strings for addresses and durations); `validate` turns them into the typed
//! model and reports every problem at once.

use serde::Deserialize;

/// `[global]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub(super) workers: Option<usize>,
    pub(super) grace_period: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) log_format: Option<String>,
    pub(super) access_log: Option<String>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
}

/// `[admin]`: the read-mostly admin/metrics endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) header_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
}

/// `[tls]`: settings shared by every TLS listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) min_version: Option<String>,
    pub(super) session_cache_size: Option<RawCacheSize>,
    pub(super) session_timeout: Option<String>,
    pub(super) ticket_lifetime: Option<String>,
    pub(super) session_tickets: Option<bool>,
    pub(super) allow_invalid_dates: Option<bool>,
}

/// `session_cache_size`: a number of sessions (`20480`), or a size in
/// bytes as nginx writes `ssl_session_cache shared:SSL:10m` (`"10m"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawCacheSize {
    Entries(u64),
    Bytes(String),
}

impl<'de> Deserialize<'de> for RawCacheSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = RawCacheSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of sessions (20480) or a size in bytes (\"10m\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(RawCacheSize::Entries)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawCacheSize::Entries(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawCacheSize::Bytes(v.to_string()))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// One `[[listener]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<String>,
    pub(super) bind: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) pool: Option<String>,
    #[serde(default)]
    pub(super) vhosts: Vec<String>,
    pub(super) default_vhost: Option<String>,
    pub(super) strict_sni: Option<bool>,
    pub(super) alpn: Option<Vec<String>>,
    pub(super) persistence: Option<String>,
    pub(super) freebind: Option<bool>,
    pub(super) reuseport: Option<bool>,
    pub(super) backlog: Option<u32>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) connection_rate_per_client: Option<u32>,
    pub(super) proxy_protocol: Option<bool>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) header_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) request_body_timeout: Option<String>,
    pub(super) send_timeout: Option<String>,
    pub(super) forwarded: Option<bool>,
    pub(super) via: Option<bool>,
    pub(super) x_real_ip: Option<bool>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_headers: Option<usize>,
    pub(super) upgrades: Option<Vec<String>>,
    pub(super) http1_codec: Option<String>,
}

/// One backend inside a pool.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Option<String>,
    pub(super) weight: Option<u32>,
}

/// `health` inside a pool or an IPVS service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
    pub(super) expect_status: Option<String>,
    pub(super) expect_body: Option<String>,
    pub(super) port: Option<u32>,
}

/// One `[[pool]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: Option<String>,
    pub(super) scheduler: Option<String>,
    pub(super) mh_table_size: Option<u32>,
    #[serde(default)]
    pub(super) backends: Vec<RawBackend>,
    pub(super) health: Option<RawHealth>,
    pub(super) connect_timeout: Option<String>,
    pub(super) response_timeout: Option<String>,
    pub(super) send_proxy: Option<bool>,
    pub(super) http2: Option<bool>,
    pub(super) slow_start: Option<String>,
    pub(super) on_all_down: Option<String>,
    pub(super) sorry: Option<String>,
    pub(super) passive_fall: Option<u32>,
    pub(super) passive_cooldown: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_idle: Option<usize>,
}

/// One `[[persistence]]` group.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPersistence {
    pub(super) name: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) netmask: Option<String>,
    pub(super) netmask_v6: Option<u8>,
    pub(super) max_entries: Option<usize>,
    pub(super) expire_quiescent: Option<bool>,
}

/// A certificate/key pair of a vhost.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

/// A path-prefix route inside a vhost.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path_prefix: Option<String>,
    pub(super) pool: Option<String>,
}

/// One `[[vhost]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVhost {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    #[serde(default)]
    pub(super) certificates: Vec<RawCertificate>,
    pub(super) pool: Option<String>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    pub(super) redirect_https: Option<bool>,
    pub(super) hsts_max_age: Option<String>,
    pub(super) max_body_size: Option<u64>,
}

/// `[ipvs]`: the kernel tier.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpvs {
    pub(super) own_all: Option<bool>,
    pub(super) on_shutdown: Option<String>,
    pub(super) reconcile_interval: Option<String>,
    pub(super) drain_period: Option<String>,
    #[serde(default)]
    pub(super) service: Vec<RawIpvsService>,
}

/// One `[[ipvs.service]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpvsService {
    pub(super) name: Option<String>,
    pub(super) address: Option<String>,
    pub(super) fwmark: Option<u32>,
    pub(super) family: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) scheduler: Option<String>,
    pub(super) persistence: Option<String>,
    pub(super) forwarding: Option<String>,
    #[serde(default)]
    pub(super) real_servers: Vec<RawRealServer>,
    pub(super) health: Option<RawHealth>,
    pub(super) inhibit_on_failure: Option<bool>,
    pub(super) on_all_down: Option<String>,
    pub(super) sorry: Option<String>,
}

/// One real server of an IPVS service.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRealServer {
    pub(super) address: Option<String>,
    pub(super) weight: Option<u32>,
    pub(super) upper_threshold: Option<u32>,
    pub(super) lower_threshold: Option<u32>,
}
