//! The access log: one line per request, in Common Log Format with vipd's
//! fields appended, or as a JSON object. Lines go to stdout through a
//! bounded channel and a writer thread, so a slow stdout never stalls the
//! proxy: when the channel is full, lines are dropped and counted.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::{Method, Uri, Version};
use tokio::time::Instant;

use super::conn::Conn;
use crate::balance::Lease;
use crate::config::AccessLog;

/// What one request did, as logged.
#[derive(Debug)]
pub struct Record {
    pub start: Instant,
    pub client: IpAddr,
    pub vhost: Option<Arc<str>>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// 499 until a response is chosen (the client went away first).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    pub upstream: Option<SocketAddr>,
}

/// One request in flight. Dropping it ends the request: it releases the
/// backend lease, marks the connection idle when it was the last request,
/// and writes the access-log line.
pub struct Exchange {
    pub record: Record,
    pub format: AccessLog,
    /// Keeps the backend counted as busy while the response streams.
    pub lease: Option<Lease>,
    conn: Arc<Conn>,
}

impl Exchange {
    /// Begin a request on `conn`; the connection counts it as in flight.
    pub fn begin(conn: Arc<Conn>, record: Record, format: AccessLog) -> Self {
        conn.state.request_started();
        Self {
            record,
            format,
            lease: None,
            conn,
        }
    }

    /// The client connection the request came on.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.lease = None;
        self.conn.state.request_done();
        let line = match self.format {
            AccessLog::Off => return,
            AccessLog::Common => common(&self.record, SystemTime::now()),
            AccessLog::Json => json(&self.record, SystemTime::now()),
        };
        emit(line);
    }
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Access-log lines dropped because stdout could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn emit(line: String) {
    static SINK: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
    let sink = SINK.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(8192);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                while let Ok(first) = rx.recv() {
                    let mut out = stdout.lock();
                    let mut ok = out.write_all(first.as_bytes()).is_ok();
                    while let Ok(next) = rx.try_recv() {
                        ok &= out.write_all(next.as_bytes()).is_ok();
                    }
                    ok &= out.flush().is_ok();
                    if !ok {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .ok()
            .map(|_| tx)
    });
    match sink.as_ref().map(|s| s.try_send(line)) {
        Some(Ok(())) => {}
        Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn target(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// Common Log Format (`client - - [time] "request" status bytes`) followed by
/// `vhost=`, `upstream=` and `duration_ms=`, newline-terminated.
pub fn common(r: &Record, now: SystemTime) -> String {
    let mut s = String::with_capacity(160);
    let _ = write!(s, "{} - - [", r.client);
    clf_time(&mut s, now);
    s.push_str("] \"");
    s.push_str(r.method.as_str());
    s.push(' ');
    for ch in target(&r.uri).chars() {
        if ch == '"' || ch == '\\' {
            s.push('\\');
        }
        s.push(ch);
    }
    let _ = writeln!(
        s,
        " {}\" {} {} vhost={} upstream={} duration_ms={:.3}",
        version_str(r.version),
        r.status,
        r.bytes,
        r.vhost.as_deref().unwrap_or("-"),
        r.upstream
            .map_or_else(|| "-".to_string(), |u| u.to_string()),
        r.start.elapsed().as_secs_f64() * 1000.0,
    );
    s
}

/// One JSON object per line.
pub fn json(r: &Record, now: SystemTime) -> String {
    let mut time = String::with_capacity(24);
    iso_time(&mut time, now);
    let mut s = serde_json::json!({
        "time": time,
        "client": r.client.to_string(),
        "vhost": r.vhost.as_deref(),
        "method": r.method.as_str(),
        "path": target(&r.uri),
        "protocol": version_str(r.version),
        "status": r.status,
        "bytes": r.bytes,
        "upstream": r.upstream.map(|u| u.to_string()),
        "duration_ms": (r.start.elapsed().as_secs_f64() * 1e6).round() / 1000.0,
    })
    .to_string();
    s.push('\n');
    s
}

/// (year, month 1-12, day, seconds of day, millis) in UTC.
fn civil(now: SystemTime) -> (i64, u32, u32, u64, u32) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs % 86_400, d.subsec_millis())
}

fn clf_time(s: &mut String, now: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, sod, _) = civil(now);
    let _ = write!(
        s,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
}

fn iso_time(s: &mut String, now: SystemTime) {
    let (y, m, d, sod, ms) = civil(now);
    let _ = write!(
        s,
        "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record() -> Record {
        Record {
            start: Instant::now(),
            client: "192.0.2.1".parse().unwrap(),
            vhost: Some("www".into()),
            method: Method::GET,
            uri: Uri::from_static("/a?b=c"),
            version: Version::HTTP_11,
            status: 200,
            bytes: 512,
            upstream: Some("10.0.0.1:80".parse().unwrap()),
        }
    }

    // 2026-11-26T23:16:32.045Z
    const NOW: Duration = Duration::from_millis(1_795_734_992_045);

    #[test]
    fn common_lines_follow_clf_with_vipd_fields() {
        let line = common(&record(), UNIX_EPOCH + NOW);
        let (head, duration) = line.rsplit_once("duration_ms=").unwrap();
        assert_eq!(
            head,
            "192.0.2.1 - - [26/Nov/2026:23:16:32 +0000] \"GET /a?b=c HTTP/1.1\" 200 512 vhost=www upstream=10.0.0.1:80 "
        );
        assert!(duration.ends_with('\n'));
        duration.trim_end().parse::<f64>().unwrap();
    }

    #[test]
    fn json_lines_carry_every_field() {
        let mut r = record();
        r.upstream = None;
        r.status = 503;
        let line = json(&r, UNIX_EPOCH + NOW);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-11-26T23:16:32.045Z");
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["vhost"], "www");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a?b=c");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 503);
        assert_eq!(v["bytes"], 512);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert!(v["duration_ms"].is_f64());
    }

    #[test]
    fn dates_convert_across_leap_years() {
        let mut s = String::new();
        // 2024-02-29T00:00:00Z
        iso_time(&mut s, UNIX_EPOCH + Duration::from_secs(1_709_164_800));
        assert_eq!(s, "2024-02-29T00:00:00.000Z");
    }
}
