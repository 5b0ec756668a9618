//! The pass-through HTTP/1.1 codec against hyper, over real sockets: what
//! a backend receives from the codec (field case and order kept, hop-by-hop
//! fields gone, vipd's forwarding fields added, one Host), backend
//! connections reused from the pool, and a differential run of the
//! smuggling and bad-input corpus through a listener of each codec
//! (`http1_codec = "vipd"` and `"hyper"`): the codec's answer is the same
//! as hyper's or stricter, and the backends see the same requests.

mod http_support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use http_support::start_proxy;

/// A raw backend that records every request it receives, byte for byte
/// (head and body, framed by Content-Length or chunked), answers each
/// `200` with body `ok`, and keeps the connection open.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    accepted: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s2, a2) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a2.fetch_add(1, Ordering::SeqCst);
                let seen = s2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(len) = whole_request(&buf) {
                            seen.lock().unwrap().push(buf[..len].to_vec());
                            buf.drain(..len);
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            accepted,
        }
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

/// The length of the whole request at the start of `buf`, if it is there.
fn whole_request(buf: &[u8]) -> Option<usize> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut at = head;
        loop {
            let line = at + find(&buf[at..], b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            at = line + 2;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let end = at + find(&buf[at..], b"\r\n")?;
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        return Some(at);
                    }
                }
            }
            at += size + 2;
            if at > buf.len() {
                return None;
            }
        }
    }
    let len: usize = value("content-length").map_or(Some(0), |v| v.trim().parse().ok())?;
    (buf.len() >= head + len).then_some(head + len)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Two listeners, `vipd` and `hyper` (the codec each uses), each in front
/// of its own recorder, for site `site.test`.
async fn two_codecs() -> (Arc<vipd::app::Running>, [(SocketAddr, Recorder); 2]) {
    let (a, b) = (Recorder::start().await, Recorder::start().await);
    let config = format!(
        r#"
[[listener]]
name = "vipd"
bind = "127.0.0.1:0"
protocol = "http"
vhosts = ["site"]
header_timeout = "1s"
request_body_timeout = "1s"

[[listener]]
name = "hyper"
bind = "127.0.0.1:0"
protocol = "http"
vhosts = ["site-h"]
http1_codec = "hyper"
header_timeout = "1s"
request_body_timeout = "1s"

[[pool]]
name = "p"
backends = [{{ address = "{}" }}]
response_timeout = "1s"

[[pool]]
name = "ph"
backends = [{{ address = "{}" }}]
response_timeout = "1s"

[[vhost]]
name = "site"
hosts = ["site.test"]
pool = "p"

[[vhost]]
name = "site-h"
hosts = ["site.test"]
pool = "ph"
"#,
        a.addr, b.addr
    );
    let running = start_proxy(&config).await;
    let v = running.local_addr("vipd").await.unwrap();
    let h = running.local_addr("hyper").await.unwrap();
    (running, [(v, a), (h, b)])
}

/// Write `bytes` and read until the proxy closes or 1.5 s pass quietly.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(1500), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in `reply`.
fn statuses(reply: &str) -> Vec<u16> {
    reply
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| reply.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_reaches_the_backend_with_its_fields_in_case_and_order_minus_hop_by_hop() {
    let (_running, [(vipd, rec), _]) = two_codecs().await;
    let reply = exchange(
        vipd,
        b"GET /p?q=1 HTTP/1.1\r\nUser-Agent: t\r\nHost: Site.Test\r\nConnection: keep-alive, X-Private\r\nX-Private: s\r\nKeep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\nX-Mixed-CASE: v\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    assert!(
        reply.ends_with("\r\nconnection: close\r\n\r\nok"),
        "{reply}"
    );
    let seen = rec.seen();
    assert_eq!(
        String::from_utf8_lossy(&seen[0]),
        "GET /p?q=1 HTTP/1.1\r\nUser-Agent: t\r\nHost: Site.Test\r\nX-Mixed-CASE: v\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: Site.Test\r\n\r\n"
    );
}

// One worker thread: backend connections are pooled per worker.
#[tokio::test]
async fn keep_alive_requests_on_two_client_connections_reuse_one_pooled_backend_connection() {
    let (_running, [(vipd, rec), _]) = two_codecs().await;
    for _ in 0..2 {
        let three = "GET /1 HTTP/1.1\r\nHost: site.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: site.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";
        let reply = exchange(vipd, three.as_bytes()).await;
        assert_eq!(statuses(&reply), [200, 200, 200], "{reply}");
    }
    assert_eq!(rec.seen().len(), 6);
    assert_eq!(rec.accepted.load(Ordering::SeqCst), 1);
}

/// The smuggling and bad-input corpus of the project's tests (bad_input,
/// http_host, http_errors, header_limits, attack_*), each a whole client
/// write. `/smuggled` must never reach a backend.
fn corpus() -> Vec<String> {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: site.test\r\n\r\n";
    let n = smuggled.len();
    // A second request after a well-framed first one is pipelining.
    let after = "GET /after HTTP/1.1\r\nHost: site.test\r\n\r\n";
    let mut c = vec![
        format!(
            "POST /a HTTP/1.1\r\nHost: site.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + n
        ),
        format!(
            "POST /b HTTP/1.1\r\nHost: site.test\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /c HTTP/1.1\r\nHost: site.test\r\nX-A: 1\r\n  folded: 2\r\nContent-Length: 0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /d HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"
        ),
        format!(
            "POST /e HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /f HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /g HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!("POST /h HTTP/1.1\r\nHost: site.test\r\nContent-Length: +{n}\r\n\r\n{smuggled}"),
        format!(
            "POST /i HTTP/1.1\r\nHost: site.test\r\nContent-Length: {n}, {n}\r\n\r\n{smuggled}"
        ),
        format!("POST /j HTTP/1.1\r\nHost: site.test\r\nContent-Length : {n}\r\n\r\n{smuggled}"),
        format!(
            "POST /k HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{smuggled}"
        ),
        format!("POST /l HTTP/1.1\nHost: site.test\nContent-Length: {n}\n\n{smuggled}"),
        format!(
            "GET /m HTTP/1.1\r\nHost: site.test\r\nContent-Length: {n}\r\nContent-Length: {n}\r\n\r\n{smuggled}"
        ),
        format!(
            "POST http://site.test/n HTTP/1.1\r\nHost: site.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + n
        ),
        format!(
            "POST /o HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nHost: evil\r\n\r\n{after}"
        ),
        format!("POST /p HTTP/1.1\r\nHost: site.test\r\nContent-Length: 3\r\n\r\nabc{after}"),
        format!("GET /q HTTP/1.1\r\nHost: site.test\r\nHost: other.test\r\n\r\n{smuggled}"),
        format!("GET /r HTTP/1.1\r\nHost: site.test\rX: y\r\n\r\n{smuggled}"),
        format!("GET /s HTTP/1.1\r\nHost: site.test\r\nX: a\0b\r\n\r\n{smuggled}"),
    ];
    for (target, host) in [
        ("http://a.test/x", "b.test"),
        ("http://site.test/x", "site.test.:80"),
        ("site.test:80", "site.test"),
        ("*", "site.test"),
        ("HTTP://site.test/x", "site.test"),
        ("ftp://site.test/", "site.test"),
        ("/", ""),
        ("/", "site.test, other.test"),
        ("/", "u@site.test"),
        ("/", "site.test:99999"),
        ("/", "site..test"),
        ("/", "site.test\t"),
        ("/a#frag", "site.test"),
        ("/caf\u{e9}", "site.test"),
    ] {
        c.push(format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ));
    }
    c.extend([
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET / HTTP/1.0\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: site.test\r\nBroken header line\r\n\r\n".to_string(),
        "CONNECT site.test:443 HTTP/1.1\r\nHost: site.test:443\r\n\r\n".to_string(),
        "OPTIONS * HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n".to_string(),
        "GET /ws HTTP/1.1\r\nHost: site.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".to_string(),
        "POST /up HTTP/1.1\r\nHost: site.test\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n0123456789".to_string(),
        format!("GET / HTTP/1.1\r\nHost: site.test\r\nX-Big: {}\r\n\r\n", "b".repeat(70 * 1024)),
        format!("GET / HTTP/1.1\r\nHost: site.test\r\n{}\r\n", "X: y\r\n".repeat(120)),
        "GET  / HTTP/1.1\r\nHost: site.test\r\n\r\n".to_string(),
        "GET / HTTP/1.1 \r\nHost: site.test\r\n\r\n".to_string(),
        "G\u{c9}T / HTTP/1.1\r\nHost: site.test\r\n\r\n".to_string(),
        "\r\n\r\nGET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n".to_string(),
    ]);
    c
}

/// What one backend received, with the hop-by-hop and forwarding fields
/// each codec writes in its own way left out, names lower-cased, the rest
/// in order: the request's meaning.
fn meaning(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let mut out = vec![lines.next().unwrap_or("").to_string()];
    let mut fields: Vec<String> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            format!("{}: {}", n.to_ascii_lowercase(), v.trim())
        })
        .collect();
    fields.sort();
    out.extend(fields);
    out.push(body.to_string());
    out.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_case_gets_the_same_or_a_stricter_answer_from_the_codec_than_from_hyper() {
    let (_running, [(vipd, vrec), (hyper, hrec)]) = two_codecs().await;
    for (i, case) in corpus().iter().enumerate() {
        let (v_before, h_before) = (vrec.seen().len(), hrec.seen().len());
        let (v_reply, h_reply) = tokio::join!(
            exchange(vipd, case.as_bytes()),
            exchange(hyper, case.as_bytes())
        );
        let (v, h) = (statuses(&v_reply), statuses(&h_reply));
        let v_seen = vrec.seen()[v_before..].to_vec();
        let h_seen = hrec.seen()[h_before..].to_vec();
        for seen in v_seen.iter().chain(&h_seen) {
            // (A body may carry the text; a request line must not.)
            assert!(
                !seen.starts_with(b"GET /smuggled"),
                "case {i} {case:?}: smuggled through: {seen:?}"
            );
        }
        // The same answers, or the codec refused where hyper served (one
        // fewer 2xx, a 4xx in its place).
        let stricter = v.len() <= h.len()
            && v.iter()
                .zip(&h)
                .all(|(v, h)| v == h || (*h < 400 && (400..500).contains(v)));
        assert!(
            stricter,
            "case {i} {case:?}: vipd {v:?} vs hyper {h:?}\nvipd: {v_reply}\nhyper: {h_reply}"
        );
        assert!(
            v_seen.len() <= h_seen.len(),
            "case {i}: {v_seen:?} vs {h_seen:?}"
        );
        for (a, b) in v_seen.iter().zip(&h_seen) {
            let strip = |m: String| {
                m.lines()
                    .filter(|l| !l.starts_with("x-forwarded-") && !l.starts_with("connection:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(strip(meaning(a)), strip(meaning(b)), "case {i} {case:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_chunked_body_reaches_the_backend_with_its_body_through_either_codec() {
    let (_running, [(vipd, a), (hyper, b)]) = two_codecs().await;
    for (addr, rec) in [(vipd, &a), (hyper, &b)] {
        let reply = exchange(
            addr,
            b"GET /g HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(statuses(&reply), [200], "{reply}");
        let seen = rec.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let got = String::from_utf8_lossy(&seen[0]).to_ascii_lowercase();
        assert!(got.starts_with("get /g http/1.1\r\n"), "{got}");
        assert!(got.contains("\r\ntransfer-encoding: chunked\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
    }
}
