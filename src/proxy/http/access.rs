//! The access log: one line per request, in Common Log Format with vipd's
//! fields appended, or as a JSON object, written to stdout.
//!
//! A request never waits for stdout and makes no system call for its line:
//! each worker thread formats its lines straight into its own buffer (one
//! per worker, [`Shards`]; the time text is made once per second per
//! worker), and a writer thread swaps the buffers out and writes each in one
//! go, every [`FLUSH_INTERVAL`] or sooner when a buffer passes
//! [`WAKE_AT`] bytes. A buffer holds at most [`MAX_BUFFERED`] bytes: while
//! the writer is behind (a slow or blocked stdout), further lines are
//! dropped and counted ([`dropped`]). [`flush`] writes what is left at
//! shutdown.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, Uri, Version};
use tokio::time::Instant;

use super::conn::Conn;
use crate::balance::Lease;
use crate::config::AccessLog;
use crate::metrics::Shards;

/// Longest time a line waits in its worker's buffer before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A worker's buffer is handed to the writer early once it holds this many
/// bytes (a few hundred lines), so that a busy proxy writes in large chunks
/// without waiting for the interval.
pub const WAKE_AT: usize = 32 * 1024;

/// Most bytes one worker's buffer holds while the writer is behind; a line
/// that finds it full is dropped and counted.
pub const MAX_BUFFERED: usize = 1024 * 1024;

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
        if self.format != AccessLog::Off {
            emit(self.format, &self.record);
        }
    }
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Access-log lines dropped because stdout could not keep up (or failed).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// One worker's lines waiting for the writer, and its time text.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    clock: Clock,
}

/// The time text of the current second, made once per second.
#[derive(Default)]
struct Clock {
    /// The Unix second `clf` and `iso` show; 0 before the first line.
    secs: u64,
    /// `26/Nov/2026:23:16:32 +0000`
    clf: String,
    /// `2026-11-26T23:16:32.` (the milliseconds follow per line)
    iso: String,
}

impl Clock {
    /// Bring the text to `now`'s second; the milliseconds of `now`.
    fn at(&mut self, now: SystemTime) -> u32 {
        let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if d.as_secs() != self.secs || self.clf.is_empty() {
            self.secs = d.as_secs();
            self.clf.clear();
            clf_time(&mut self.clf, now);
            self.iso.clear();
            iso_second(&mut self.iso, now);
        }
        d.subsec_millis()
    }
}

/// The buffers and the writer thread that empties them.
struct Log {
    buffers: Shards<Mutex<Buffer>>,
    writer: Thread,
    /// Held while buffers are written out, so that the writer thread and a
    /// shutdown [`flush`] keep each worker's lines in order.
    output: Mutex<()>,
}

/// Lock a buffer; a panic while one was held leaves at worst a partial
/// line, never a broken buffer.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The log, started on first use; `None` if its thread could not start.
fn log() -> Option<&'static Log> {
    static LOG: OnceLock<Option<Log>> = OnceLock::new();
    LOG.get_or_init(|| {
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(|| {
                let mut spare = Vec::new();
                loop {
                    std::thread::park_timeout(FLUSH_INTERVAL);
                    if let Some(log) = log() {
                        log.write_out(&mut spare);
                    }
                }
            })
            .ok()?;
        Some(Log {
            buffers: Shards::default(),
            writer: writer.thread().clone(),
            output: Mutex::new(()),
        })
    })
    .as_ref()
}

impl Log {
    /// Write every worker's buffered lines to stdout. `spare` is an empty
    /// buffer swapped in for each full one, so capacity circulates and a
    /// worker never waits for stdout (only for the swap).
    fn write_out(&self, spare: &mut Vec<u8>) {
        let _order = lock(&self.output);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for buffer in self.buffers.iter() {
            {
                let mut b = lock(buffer);
                if b.bytes.is_empty() {
                    continue;
                }
                std::mem::swap(&mut b.bytes, spare);
            }
            if out.write_all(spare).and_then(|()| out.flush()).is_err() {
                let lines = spare.iter().filter(|&&c| c == b'\n').count();
                DROPPED.fetch_add(lines as u64, Ordering::Relaxed);
            }
            spare.clear();
            // A burst while the writer was behind does not stay allocated.
            spare.shrink_to(2 * WAKE_AT);
        }
    }
}

/// Append `record`'s line to the calling worker's buffer, or count it
/// dropped when the buffer is full.
fn emit(format: AccessLog, record: &Record) {
    let Some(log) = log() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut b = lock(log.buffers.local());
    let before = b.bytes.len();
    if before >= MAX_BUFFERED {
        drop(b);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Buffer { bytes, clock } = &mut *b;
    let now = SystemTime::now();
    match format {
        AccessLog::Off => return,
        AccessLog::Common => common(bytes, clock, record, now),
        AccessLog::Json => json(bytes, clock, record, now),
    }
    let after = bytes.len();
    drop(b);
    if before < WAKE_AT && after >= WAKE_AT {
        log.writer.unpark();
    }
}

/// Write every line still buffered (at shutdown, after the last request).
pub fn flush() {
    if let Some(log) = log() {
        log.write_out(&mut Vec::new());
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
/// `vhost=`, `upstream=` and `duration_ms=`, newline-terminated, appended
/// to `out`. Numbers and addresses are written by hand: `core::fmt` (an
/// IPv4 address's `Display` above all) cost more than the rest of the line.
fn common(out: &mut Vec<u8>, clock: &mut Clock, r: &Record, now: SystemTime) {
    clock.at(now);
    push_ip(out, r.client);
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(clock.clf.as_bytes());
    out.extend_from_slice(b"] \"");
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.push(b' ');
    for &c in target(&r.uri).as_bytes() {
        if c == b'"' || c == b'\\' {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b' ');
    out.extend_from_slice(version_str(r.version).as_bytes());
    out.extend_from_slice(b"\" ");
    push_u64(out, u64::from(r.status));
    out.push(b' ');
    push_u64(out, r.bytes);
    out.extend_from_slice(b" vhost=");
    out.extend_from_slice(r.vhost.as_deref().unwrap_or("-").as_bytes());
    out.extend_from_slice(b" upstream=");
    match r.upstream {
        Some(u) => push_socket(out, u),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" duration_ms=");
    push_millis(out, r.start.elapsed());
    out.push(b'\n');
}

/// One JSON object per line, keys in alphabetical order, appended to `out`.
fn json(out: &mut Vec<u8>, clock: &mut Clock, r: &Record, now: SystemTime) {
    let ms = clock.at(now);
    // serde_json writes strings escaped and numbers as `Value` prints them.
    let string = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    out.extend_from_slice(b"{\"bytes\":");
    push_u64(out, r.bytes);
    out.extend_from_slice(b",\"client\":\"");
    push_ip(out, r.client);
    out.extend_from_slice(b"\",\"duration_ms\":");
    let duration = (r.start.elapsed().as_secs_f64() * 1e6).round() / 1000.0;
    let _ = serde_json::to_writer(&mut *out, &duration);
    out.extend_from_slice(b",\"method\":");
    string(out, r.method.as_str());
    out.extend_from_slice(b",\"path\":");
    string(out, target(&r.uri));
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(version_str(r.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    push_u64(out, u64::from(r.status));
    out.extend_from_slice(b",\"time\":\"");
    out.extend_from_slice(clock.iso.as_bytes());
    push_padded(out, u64::from(ms), 3);
    out.extend_from_slice(b"Z\",\"upstream\":");
    match r.upstream {
        Some(u) => {
            out.push(b'"');
            push_socket(out, u);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"vhost\":");
    match r.vhost.as_deref() {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}\n");
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `n` in decimal with at least `width` digits (leading zeros).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut len = 0;
    let mut rest = n;
    while rest > 0 || len < width {
        digits[19 - len] = b'0' + (rest % 10) as u8;
        rest /= 10;
        len += 1;
    }
    out.extend_from_slice(&digits[20 - len..]);
}

/// An address as `Display` writes it (dotted quad; IPv6 through `Display`).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// `ip:port`, or `[ip6]:port`, as `Display` writes it.
fn push_socket(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            push_ip(out, IpAddr::V4(*a.ip()));
            out.push(b':');
            push_u64(out, u64::from(a.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Milliseconds with three decimals (rounded to the microsecond).
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_nanos().saturating_add(500) / 1000).unwrap_or(u64::MAX);
    push_u64(out, us / 1000);
    out.push(b'.');
    push_padded(out, us % 1000, 3);
}

/// (year, month 1-12, day, seconds of day) in UTC.
fn civil(now: SystemTime) -> (i64, u32, u32, u64) {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
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
    (year, month, day, secs % 86_400)
}

fn clf_time(s: &mut String, now: SystemTime) {
    use std::fmt::Write as _;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, sod) = civil(now);
    let _ = write!(
        s,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
}

/// ISO 8601 up to the seconds and the dot: `2026-11-26T23:16:32.`
fn iso_second(s: &mut String, now: SystemTime) {
    use std::fmt::Write as _;
    let (y, m, d, sod) = civil(now);
    let _ = write!(
        s,
        "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
}

#[cfg(test)]
mod tests {
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

    fn line(
        write: fn(&mut Vec<u8>, &mut Clock, &Record, SystemTime),
        r: &Record,
        clock: &mut Clock,
        now: Duration,
    ) -> String {
        let mut out = Vec::new();
        write(&mut out, clock, r, UNIX_EPOCH + now);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn common_lines_follow_clf_with_vipd_fields() {
        let line = line(common, &record(), &mut Clock::default(), NOW);
        let (head, duration) = line.rsplit_once("duration_ms=").unwrap();
        assert_eq!(
            head,
            "192.0.2.1 - - [26/Nov/2026:23:16:32 +0000] \"GET /a?b=c HTTP/1.1\" 200 512 vhost=www upstream=10.0.0.1:80 "
        );
        assert!(duration.ends_with('\n'));
        duration.trim_end().parse::<f64>().unwrap();
    }

    #[test]
    fn common_lines_show_dashes_for_what_is_missing() {
        let mut r = record();
        r.uri = Uri::from_static("/%22?q={x}|y");
        r.vhost = None;
        r.upstream = None;
        r.status = 499;
        let line = line(common, &r, &mut Clock::default(), NOW);
        let (head, _) = line.rsplit_once("duration_ms=").unwrap();
        assert_eq!(
            head,
            "192.0.2.1 - - [26/Nov/2026:23:16:32 +0000] \"GET /%22?q={x}|y HTTP/1.1\" 499 512 vhost=- upstream=- "
        );
    }

    #[test]
    fn json_lines_carry_every_field_in_alphabetical_order() {
        let mut r = record();
        r.upstream = None;
        r.status = 503;
        r.uri = Uri::from_static("/a?q={x}");
        r.vhost = Some("w\"w\\".into());
        let line = line(json, &r, &mut Clock::default(), NOW);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-11-26T23:16:32.045Z");
        assert_eq!(v["client"], "192.0.2.1");
        assert_eq!(v["vhost"], "w\"w\\");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a?q={x}");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 503);
        assert_eq!(v["bytes"], 512);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert!(v["duration_ms"].is_f64());
        // Byte for byte what serde_json's own map (sorted keys) printed.
        let mut line_again = v.to_string();
        line_again.push('\n');
        assert_eq!(line, line_again);
    }

    #[test]
    fn the_time_text_follows_the_clock_across_seconds_and_days() {
        let mut clock = Clock::default();
        let r = record();
        let a = line(json, &r, &mut clock, NOW);
        let b = line(json, &r, &mut clock, NOW + Duration::from_millis(900));
        let c = line(common, &r, &mut clock, NOW + Duration::from_secs(86_400));
        assert!(a.contains("\"time\":\"2026-11-26T23:16:32.045Z\""), "{a}");
        assert!(b.contains("\"time\":\"2026-11-26T23:16:32.945Z\""), "{b}");
        assert!(c.contains("[27/Nov/2026:23:16:32 +0000]"), "{c}");
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_writes_them() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 65_535, u64::MAX] {
            out.clear();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for a in [
            "0.0.0.0:0",
            "192.0.2.255:8080",
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.1]:80",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            out.clear();
            push_socket(&mut out, addr);
            assert_eq!(out, addr.to_string().as_bytes());
            out.clear();
            push_ip(&mut out, addr.ip());
            assert_eq!(out, addr.ip().to_string().as_bytes());
        }
        for (nanos, text) in [
            (0, "0.000"),
            (999, "0.001"),
            (1_234_499, "1.234"),
            (12_000_000, "12.000"),
            (61_000_000_000, "61000.000"),
        ] {
            out.clear();
            push_millis(&mut out, Duration::from_nanos(nanos));
            assert_eq!(String::from_utf8_lossy(&out), text);
        }
    }

    #[test]
    fn dates_convert_across_leap_years() {
        let mut s = String::new();
        // 2024-02-29T00:00:00Z
        iso_second(&mut s, UNIX_EPOCH + Duration::from_secs(1_709_164_800));
        assert_eq!(s, "2024-02-29T00:00:00.");
    }
}
