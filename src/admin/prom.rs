//! `GET /metrics`: the live snapshot and the counter registry rendered in
//! the Prometheus text format 0.0.4 (what classic scrapers and most tools
//! read), or in OpenMetrics 1.0 when the scraper's `Accept` prefers it (as
//! Prometheus itself does since 2.5).
//!
//! Names and labels are attached here, at scrape time, by walking the
//! current snapshot: the data path only ever touches atomics.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::header::HeaderValue;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::AdminState;
use crate::metrics::{Handshake, HistogramRead, StatusClasses};
use crate::proxy::Snapshot;

/// The two exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Prometheus text format 0.0.4: the default.
    Text004,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when
    /// `application/openmetrics-text` has a higher quality than
    /// `text/plain` (and above 0); text 0.0.4 otherwise, including for no
    /// `Accept`, `*/*` and anything unparsable.
    pub(super) fn negotiate(accept: Option<&HeaderValue>) -> Self {
        let Some(text) = accept.and_then(|v| v.to_str().ok()) else {
            return Format::Text004;
        };
        let (mut om, mut plain) = (0.0f32, 0.0f32);
        for range in text.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|q| q.parse::<f32>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" => plain = plain.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om > plain {
            Format::OpenMetrics
        } else {
            Format::Text004
        }
    }

    /// The response's `Content-Type`.
    pub(super) fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Render every metric in `format`.
pub(super) fn render(state: &AdminState, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        snapshot: state.snapshot.load_full(),
        metrics: state.metrics.clone(),
        ipvs: state.ipvs_health.clone(),
    }));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug.
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
        let _ = writeln!(out, "# EOF");
    }
    match format {
        Format::OpenMetrics => out,
        Format::Text004 => to_text_004(&out),
    }
}

/// OpenMetrics text to Prometheus text 0.0.4. The samples are the same
/// (counters are `_total` in both); what differs is that a counter's
/// `# HELP`/`# TYPE` name the family without `_total` in OpenMetrics and
/// with it in 0.0.4, and that 0.0.4 has no `# UNIT` and no `# EOF`.
fn to_text_004(om: &str) -> String {
    let counters: HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 8 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let doc = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = doc {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                let _ = writeln!(out, "{prefix}{name}_total {tail}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One scrape's view: the snapshot at scrape time plus the registries.
#[derive(Debug)]
struct Scrape {
    snapshot: Arc<Snapshot>,
    metrics: Arc<crate::metrics::Metrics>,
    ipvs: Arc<crate::health::IpvsHealth>,
}

/// Writes one metric family: a descriptor, then a sample per label set.
struct Family<'a, 'e> {
    enc: &'a mut DescriptorEncoder<'e>,
}

impl Family<'_, '_> {
    fn counter<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in samples {
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }

    /// An unlabelled counter (no `{}` after the name).
    fn counter1(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.enc
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    /// An unlabelled gauge.
    fn gauge1(&mut self, name: &str, help: &str, v: i64) -> fmt::Result {
        self.enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&v)
    }

    fn gauge<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in samples {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
        Ok(())
    }

    fn histogram<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, HistogramRead)>,
    ) -> fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in samples {
            m.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

type L1<'a> = [(&'static str, &'a str); 1];

fn l1<'a>(key: &'static str, value: &'a str) -> L1<'a> {
    [(key, value)]
}
type L2<'a> = [(&'static str, &'a str); 2];
type L3<'a> = [(&'static str, &'a str); 3];

fn by_class<'a>(
    base: impl Fn(&'static str) -> Vec<(&'static str, &'a str)>,
    classes: [u64; 5],
) -> Vec<(Vec<(&'static str, &'a str)>, u64)> {
    StatusClasses::LABELS
        .iter()
        .zip(classes)
        .map(|(class, n)| (base(class), n))
        .collect()
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut f = Family { enc: &mut enc };
        let metrics = &self.metrics;
        let version = env!("CARGO_PKG_VERSION");
        f.gauge(
            "vipd_build_info",
            "Always 1; the version label names the running vipd.",
            [([("version", version)], 1i64)],
        )?;
        f.gauge1(
            "vipd_start_time_seconds",
            "Unix time the process started.",
            metrics.started_unix as i64,
        )?;
        f.counter1(
            "vipd_access_log_dropped_lines",
            "Access-log lines dropped because stdout could not keep up.",
            crate::proxy::http::access::dropped(),
        )?;
        let reload = metrics.reload_status();
        f.counter1(
            "vipd_reloads",
            "Reloads attempted (SIGHUP or POST /api/reload).",
            reload.attempts,
        )?;
        f.counter1(
            "vipd_reload_failures",
            "Reloads that failed; the previous configuration stayed in service.",
            reload.failures,
        )?;
        f.gauge1(
            "vipd_last_reload_success",
            "1 if the last reload succeeded (or none was attempted), else 0.",
            i64::from(reload.last_ok),
        )?;
        f.gauge1(
            "vipd_last_reload_timestamp_seconds",
            "Unix time of the last reload attempt, 0 before any.",
            reload.last_unix as i64,
        )?;
        self.listeners(&mut f)?;
        self.backends(&mut f)?;
        self.persistence(&mut f)?;
        let certs = self.snapshot.tls.certificates();
        let index: Vec<String> = certs.iter().map(|c| c.index.to_string()).collect();
        f.gauge(
            "vipd_certificate_expiry_timestamp_seconds",
            "Unix time at which a served certificate expires (notAfter).",
            certs.iter().zip(&index).map(|(c, i)| {
                let name = c.cert.names.first().map_or("", String::as_str);
                let l: L3<'_> = [("vhost", &c.vhost), ("index", i), ("name", name)];
                (l, c.cert.not_after_unix)
            }),
        )?;
        let rs = self.ipvs.all();
        f.gauge(
            "vipd_ipvs_real_server_up",
            "1 if the IPVS real server passes its health check, else 0.",
            rs.iter()
                .map(|(svc, addr, up)| (ipvs_labels(svc, addr), i64::from(*up))),
        )?;
        let checked: Vec<&str> = self
            .snapshot
            .config
            .ipvs
            .services
            .iter()
            .filter(|s| s.health.is_some())
            .map(|s| s.name.as_str())
            .collect();
        f.gauge(
            "vipd_ipvs_service_all_down",
            "1 while no real server of the IPVS service passes its check (on_all_down applies), else 0.",
            checked
                .iter()
                .map(|s| (l1("service", s), i64::from(self.ipvs.is_all_down(s)))),
        )?;
        Ok(())
    }
}

fn ipvs_labels(service: &str, addr: &std::net::SocketAddr) -> Vec<(String, String)> {
    vec![
        ("service".into(), service.to_string()),
        ("real_server".into(), addr.to_string()),
    ]
}

impl Scrape {
    fn listeners(&self, f: &mut Family<'_, '_>) -> fmt::Result {
        let all = self.metrics.listeners();
        let named = |n| l1("listener", n);
        let l: Vec<_> = all.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let counter = |get: fn(&crate::metrics::ListenerStats) -> u64| {
            l.iter()
                .map(move |(n, s)| (named(n), get(s)))
                .collect::<Vec<_>>()
        };
        f.counter(
            "vipd_listener_connections_accepted",
            "Connections accepted by the listener.",
            counter(|s| s.accepted()),
        )?;
        f.gauge(
            "vipd_listener_connections_active",
            "Connections of the listener open now.",
            l.iter().map(|(n, s)| (named(n), s.active())),
        )?;
        f.counter(
            "vipd_listener_bytes_in",
            "Bytes received from clients (counted when a connection ends).",
            counter(|s| s.bytes_in()),
        )?;
        f.counter(
            "vipd_listener_bytes_out",
            "Bytes sent to clients (counted when a connection ends).",
            counter(|s| s.bytes_out()),
        )?;
        let mut requests = Vec::new();
        for (n, s) in &l {
            requests.extend(by_class(
                |c| vec![("listener", *n), ("class", c)],
                s.requests(),
            ));
        }
        f.counter(
            "vipd_listener_requests",
            "HTTP responses sent, by status class.",
            requests,
        )?;
        let mut tls = Vec::new();
        for (n, s) in &l {
            for (result, outcome) in [
                ("full", Handshake::Full),
                ("resumed", Handshake::Resumed),
                ("failed", Handshake::Failed),
            ] {
                let labels: L2<'_> = [("listener", n), ("result", result)];
                tls.push((labels, s.handshakes(outcome)));
            }
        }
        f.counter(
            "vipd_listener_tls_handshakes",
            "TLS handshakes by result: full, resumed or failed.",
            tls,
        )?;
        f.histogram(
            "vipd_listener_tls_handshake_duration_seconds",
            "Time to complete a TLS handshake.",
            l.iter().map(|(n, s)| (named(n), s.handshake_latency())),
        )?;
        f.histogram(
            "vipd_listener_request_duration_seconds",
            "Time from a request's head to its response's head.",
            l.iter().map(|(n, s)| (named(n), s.request_latency())),
        )?;
        Ok(())
    }

    fn backends(&self, f: &mut Family<'_, '_>) -> fmt::Result {
        let mut pools: Vec<_> = self.snapshot.pools.iter().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        let mut rows = Vec::new();
        for p in &pools {
            for b in p.backends.iter().chain(p.sorry()) {
                rows.push((p.name.as_str(), b.address.to_string(), b));
            }
        }
        let labels = |p: &'_ str, a: &'_ str| -> Vec<(String, String)> {
            vec![
                ("pool".into(), p.to_string()),
                ("backend".into(), a.to_string()),
            ]
        };
        let each = |get: &dyn Fn(&crate::balance::Backend) -> u64| {
            rows.iter()
                .map(|(p, a, b)| (labels(p, a), get(b)))
                .collect::<Vec<_>>()
        };
        f.gauge(
            "vipd_pool_backends_up",
            "Backends of the pool that are healthy and not drained.",
            pools.iter().map(|p| {
                let l: L1<'_> = [("pool", &p.name)];
                (l, p.backends.iter().filter(|b| b.is_up()).count() as i64)
            }),
        )?;
        f.gauge(
            "vipd_backend_up",
            "1 if the backend passes its health checks (active and passive), else 0.",
            each(&|b| u64::from(b.state.is_healthy())),
        )?;
        f.gauge(
            "vipd_backend_weight",
            "Weight in force: the admin override if set, else the configured weight; 0 = drained.",
            each(&|b| u64::from(b.weight())),
        )?;
        f.gauge(
            "vipd_backend_effective_weight",
            "Weight in force scaled by the slow-start ramp; 0 while down.",
            rows.iter()
                .map(|(p, a, b)| (labels(p, a), b.effective_weight())),
        )?;
        f.gauge(
            "vipd_backend_connections_active",
            "Connections to the backend open now.",
            each(&|b| b.state.active.load(Ordering::Relaxed)),
        )?;
        f.counter(
            "vipd_backend_selected",
            "Times the scheduler picked the backend (one per connection attempt).",
            each(&|b| b.state.stats.selected()),
        )?;
        f.counter(
            "vipd_backend_connect_failures",
            "Connection attempts to the backend that failed or timed out.",
            each(&|b| b.state.stats.connect_failures()),
        )?;
        f.counter(
            "vipd_backend_bytes_out",
            "Bytes sent to the backend (counted when a connection ends).",
            each(&|b| b.state.stats.bytes_out()),
        )?;
        f.counter(
            "vipd_backend_bytes_in",
            "Bytes received from the backend (counted when a connection ends).",
            each(&|b| b.state.stats.bytes_in()),
        )?;
        let mut responses = Vec::new();
        for (p, a, b) in &rows {
            responses.extend(by_class(
                |c| vec![("pool", *p), ("backend", a.as_str()), ("class", c)],
                b.state.stats.responses(),
            ));
        }
        f.counter(
            "vipd_backend_responses",
            "HTTP responses received from the backend, by status class.",
            responses,
        )?;
        let mut checks = Vec::new();
        for (p, a, b) in &rows {
            for (result, n) in [
                ("passed", b.state.stats.checks_passed()),
                ("failed", b.state.stats.checks_failed()),
            ] {
                let l: L3<'_> = [("pool", p), ("backend", a.as_str()), ("result", result)];
                checks.push((l, n));
            }
        }
        f.counter(
            "vipd_backend_health_checks",
            "Active health checks by result.",
            checks,
        )?;
        f.counter(
            "vipd_backend_health_flips",
            "Up/down transitions of the backend (active and passive checks).",
            each(&|b| b.state.stats.flips()),
        )?;
        f.histogram(
            "vipd_backend_connect_duration_seconds",
            "Time to establish a TCP connection to the backend.",
            rows.iter()
                .map(|(p, a, b)| (labels(p, a), b.state.stats.connect_latency())),
        )?;
        Ok(())
    }

    fn persistence(&self, f: &mut Family<'_, '_>) -> fmt::Result {
        let mut tables: Vec<_> = self.snapshot.persistence.iter().collect();
        tables.sort_by(|a, b| a.name().cmp(b.name()));
        let g = |n| l1("group", n);
        f.gauge(
            "vipd_persistence_entries",
            "Client entries in the persistence table.",
            tables.iter().map(|t| (g(t.name()), t.len() as u64)),
        )?;
        f.counter(
            "vipd_persistence_hits",
            "Connections that followed an existing persistence entry.",
            tables
                .iter()
                .map(|t| (g(t.name()), t.stats().hits.load(Ordering::Relaxed))),
        )?;
        f.counter(
            "vipd_persistence_misses",
            "Connections that found no usable entry and were scheduled.",
            tables
                .iter()
                .map(|t| (g(t.name()), t.stats().misses.load(Ordering::Relaxed))),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(accept: &str) -> Format {
        Format::negotiate(Some(&HeaderValue::from_str(accept).unwrap()))
    }

    #[test]
    fn accept_chooses_openmetrics_only_when_it_is_preferred() {
        assert_eq!(Format::negotiate(None), Format::Text004);
        // Prometheus 2.x's scrape header.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(asked(prometheus), Format::OpenMetrics);
        assert_eq!(asked("application/openmetrics-text"), Format::OpenMetrics);
        for text in [
            "text/plain;version=0.0.4",
            "*/*",
            "text/plain, application/openmetrics-text;q=0.5",
            "application/openmetrics-text;q=0",
            "application/openmetrics-text;q=x, text/plain",
            "application/json",
            "",
        ] {
            assert_eq!(asked(text), Format::Text004, "{text}");
        }
    }

    #[test]
    fn text_004_names_counter_families_with_total_and_has_no_eof() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{x=\"1\"} 3\n\
                  # HELP g A gauge.\n# TYPE g gauge\ng 1\n# UNIT g seconds\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 3\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
