//! The access log of a real `vipd` process on its stdout: lines written in
//! batches by the writer thread reach stdout within the flush interval,
//! the lines still buffered are written at shutdown, and a stdout nobody
//! reads never holds requests up: its lines are dropped, counted, and
//! bounded in memory.

mod http_support;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ChildStdout;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_support::{Backend, site_config};
use support::Vipd;

/// One worker (so one log buffer) and an admin endpoint, in front of `backend`.
fn config(backend: SocketAddr) -> String {
    format!(
        "[global]\nworkers = 1\naccess_log = \"common\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        site_config(&[backend], "", "")
    )
}

/// Every line of `stdout`, sent as it arrives.
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Send a keep-alive GET for `path` on `s` and read its whole response;
/// returns the status line.
fn get(s: &mut TcpStream, path: &str) -> String {
    // One write: a head split over several would wait on Nagle's algorithm.
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    head.lines().next().unwrap().to_string()
}

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_reach_stdout_within_the_flush_interval_and_the_rest_at_shutdown() {
    let backend = Backend::start("a").await;
    let mut vipd = Vipd::run_piped(&config(backend.addr));
    let lines = lines_of(vipd.child.stdout.take().unwrap());
    let web = vipd.listening(&["web"])["web"];
    let upstream = backend.addr;
    let first = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(web).unwrap();
        assert_eq!(get(&mut s, "/first?a=1"), "HTTP/1.1 200 OK");
        let answered = Instant::now();
        // The connection stays open: the line does not wait for it to close.
        let line = lines
            .recv_timeout(Duration::from_secs(2))
            .expect("a line within 2 s");
        (answered.elapsed(), line, lines, s)
    })
    .await
    .unwrap();
    let (took, line, lines, _open) = first;
    assert!(took < Duration::from_secs(1), "the line took {took:?}");
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains(" +0000] \"GET /first?a=1 HTTP/1.1\" 200 "),
        "{line}"
    );
    assert!(
        line.contains(&format!(" vhost=site upstream={upstream} duration_ms=")),
        "{line}"
    );
    // A burst answered right before TERM is still buffered when the signal
    // arrives (the interval is 100 ms): shutdown writes it out.
    let sent = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(web).unwrap();
        for i in 0..50 {
            assert_eq!(get(&mut s, &format!("/burst/{i}")), "HTTP/1.1 200 OK");
        }
        s
    })
    .await
    .unwrap();
    vipd.signal("TERM");
    drop(sent);
    assert_eq!(
        vipd.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        vipd.log()
    );
    let rest: Vec<String> = lines.iter().collect();
    let burst: Vec<&String> = rest
        .iter()
        .filter(|l| l.contains("\"GET /burst/"))
        .collect();
    assert_eq!(burst.len(), 50, "{rest:#?}");
    for (i, l) in burst.iter().enumerate() {
        assert!(
            l.contains(&format!("\"GET /burst/{i} HTTP/1.1\" 200 ")),
            "{l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_drops_and_counts_lines_without_holding_requests_up() {
    let backend = Backend::start("a").await;
    let mut vipd = Vipd::run_piped(&config(backend.addr));
    let stdout = vipd.child.stdout.take().unwrap();
    let web = vipd.listening(&["web"])["web"];
    let admin = vipd.admin_addr();
    // Lines of about 4 KiB: 1500 of them (6 MiB) are far more than the
    // pipe (64 KiB), the worker's buffer (1 MiB) and the buffer the writer
    // is stuck writing (1 MiB) hold.
    const REQUESTS: u64 = 1500;
    let path = format!("/{}", "x".repeat(4000));
    let slowest = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(web).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut slowest = Duration::ZERO;
        for _ in 0..REQUESTS {
            let started = Instant::now();
            assert_eq!(get(&mut s, &path), "HTTP/1.1 200 OK");
            slowest = slowest.max(started.elapsed());
        }
        slowest
    })
    .await
    .unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "slowest request {slowest:?}"
    );
    // Nothing has read stdout: most lines were dropped.
    let dropped = metric(admin, "vipd_access_log_dropped_lines_total");
    assert!(
        (REQUESTS - 600..REQUESTS).contains(&dropped),
        "{dropped} of {REQUESTS} lines dropped"
    );
    // Read stdout now: every line not counted as dropped arrives, whole.
    let lines = lines_of(stdout);
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got + dropped < REQUESTS && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            assert!(
                line.contains("\"GET /xxxx") && line.contains(" 200 "),
                "{line}"
            );
            got += 1;
        }
    }
    assert_eq!(
        got + dropped,
        REQUESTS,
        "{got} lines written, {dropped} dropped"
    );
    vipd.signal("TERM");
    assert_eq!(
        vipd.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        vipd.log()
    );
}
