//! Property test of the HTTP/1.1 path as a whole, over real sockets:
//! generated request heads and bodies, valid and hostile (Content-Length
//! and Transfer-Encoding combinations, chunk sizes, obs-fold, bare LF,
//! duplicate fields, control bytes, huge sizes), sent to a listener on the
//! default codec. Whatever is sent, the backend receives at most one
//! request, well framed, with the method, target, one Host and the body
//! that was sent; or the client got an error and the backend nothing. A
//! request valid by construction is always served.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One generated field.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    value: Vec<u8>,
    /// Only safe bytes and a name with no framing or hop-by-hop meaning.
    plain: bool,
}

#[derive(Debug, Clone)]
enum Framing {
    None,
    Length,
    /// Content-Length off by this much.
    WrongLength(i8),
    TwoLengths(bool),
    Chunked(Vec<usize>),
    ChunkedAndLength,
    ChunkedThenIdentity,
    BareLfChunk,
    HugeLength,
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    fields: Vec<Field>,
    framing: Framing,
    body: Vec<u8>,
    bare_lf: bool,
    fold: bool,
}

impl Case {
    fn valid(&self) -> bool {
        !self.bare_lf
            && !self.fold
            && self.fields.iter().all(|f| f.plain)
            && matches!(
                self.framing,
                Framing::None | Framing::Length | Framing::Chunked(_)
            )
            && (!matches!(self.framing, Framing::None) || self.body.is_empty())
    }

    /// The bytes on the wire for request number `n` (its target `/case/n`).
    fn bytes(&self, n: usize) -> Vec<u8> {
        let eol: &[u8] = if self.bare_lf { b"\n" } else { b"\r\n" };
        let mut out = format!("{} /case/{n} HTTP/1.1", self.method).into_bytes();
        out.extend_from_slice(b"\r\nHost: site.test\r\n");
        for f in &self.fields {
            out.extend_from_slice(f.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&f.value);
            out.extend_from_slice(eol);
            if self.fold {
                out.extend_from_slice(b" folded");
                out.extend_from_slice(eol);
            }
        }
        let len = self.body.len();
        let mut body = self.body.clone();
        match &self.framing {
            Framing::None => {}
            Framing::Length => {
                out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes())
            }
            Framing::WrongLength(d) => {
                let l = (len as i64 + i64::from(*d)).max(0);
                out.extend_from_slice(format!("Content-Length: {l}\r\n").as_bytes());
            }
            Framing::TwoLengths(same) => {
                let other = if *same { len } else { len + 1 };
                out.extend_from_slice(
                    format!("Content-Length: {len}\r\nContent-Length: {other}\r\n").as_bytes(),
                );
            }
            Framing::HugeLength => {
                out.extend_from_slice(b"Content-Length: 99999999999999999999999\r\n")
            }
            Framing::Chunked(sizes) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                body = chunk(&self.body, sizes, false);
            }
            Framing::BareLfChunk => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                body = chunk(&self.body, &[], true);
            }
            Framing::ChunkedAndLength => {
                out.extend_from_slice(
                    format!("Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n").as_bytes(),
                );
                body = chunk(&self.body, &[], false);
            }
            Framing::ChunkedThenIdentity => {
                out.extend_from_slice(
                    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                );
                body = chunk(&self.body, &[], false);
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

/// `body` as chunks of the given sizes (the rest in one chunk), with bare
/// LF line ends if `lf`.
fn chunk(body: &[u8], sizes: &[usize], lf: bool) -> Vec<u8> {
    let eol: &[u8] = if lf { b"\n" } else { b"\r\n" };
    let mut out = Vec::new();
    let mut rest = body;
    let mut sizes = sizes.iter();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        out.extend_from_slice(format!("{n:x}").as_bytes());
        out.extend_from_slice(eol);
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn field() -> impl Strategy<Value = Field> {
    let plain_name = "X-[A-Za-z0-9]{1,8}";
    let plain_value =
        prop::collection::vec(prop_oneof![0x21u8..0x7f, Just(b' ')], 0..16).prop_map(|mut v| {
            // No blank at either end (a parser may trim it).
            while v.last() == Some(&b' ') {
                v.pop();
            }
            while v.first() == Some(&b' ') {
                v.remove(0);
            }
            v
        });
    let hostile_name = prop::sample::select(vec![
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "TE",
        "Keep-Alive",
        "X-Forwarded-For",
        "Forwarded",
        "X_Forwarded_For",
        "Trailer",
        "Host ",
    ]);
    let hostile_value = prop::collection::vec(
        prop_oneof![6 => 0x20u8..0x7f, 1 => Just(b'\t'), 1 => 0x80u8..=0xff, 1 => Just(b'\r'), 1 => Just(b'\n'), 1 => Just(0u8)],
        0..16,
    );
    prop_oneof![
        3 => (plain_name, plain_value).prop_map(|(name, value)| Field { name, value, plain: true }),
        1 => (hostile_name, hostile_value).prop_map(|(name, value)| Field { name: name.to_string(), value, plain: false }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let framing = prop_oneof![
        3 => Just(Framing::None),
        3 => Just(Framing::Length),
        1 => (-3i8..3).prop_map(Framing::WrongLength),
        1 => any::<bool>().prop_map(Framing::TwoLengths),
        2 => prop::collection::vec(1usize..40, 0..4).prop_map(Framing::Chunked),
        1 => Just(Framing::ChunkedAndLength),
        1 => Just(Framing::ChunkedThenIdentity),
        1 => Just(Framing::BareLfChunk),
        1 => Just(Framing::HugeLength),
    ];
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]),
        prop::collection::vec(field(), 0..6),
        framing,
        prop::collection::vec(any::<u8>(), 0..64),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(method, fields, framing, body, bare_lf, fold)| Case {
            method,
            fields,
            framing,
            body,
            bare_lf,
            fold,
        })
}

/// The proxy and its recording backend, started once for every case.
struct Rig {
    rt: tokio::runtime::Runtime,
    proxy: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let proxy = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend = listener.local_addr().unwrap();
            let s2 = seen.clone();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(record(s, s2.clone()));
                }
            });
            let config = format!(
                "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\nheader_timeout = \"1s\"\nrequest_body_timeout = \"500ms\"\n\n[[pool]]\nname = \"p\"\nbackends = [{{ address = \"{backend}\" }}]\nresponse_timeout = \"1s\"\n\n[[vhost]]\nname = \"site\"\nhosts = [\"site.test\"]\npool = \"p\"\n"
            );
            let config = vipd::config::parse(&config, std::path::Path::new("t.toml")).unwrap();
            let running = vipd::app::Running::start(config).await.unwrap();
            let addr = running.local_addr("web").await.unwrap();
            std::mem::forget(running);
            addr
        });
        Rig { rt, proxy, seen }
    })
}

/// Record each request (head and body as the backend reads them, by a
/// strict parser) and answer `200 ok`; a connection that sends anything
/// else is recorded as it is and closed.
async fn record(mut s: TcpStream, seen: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            match parse_request(&buf) {
                Ok(Some((len, req))) => {
                    seen.lock().unwrap().push(req);
                    buf.drain(..len);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(()) => {
                    seen.lock()
                        .unwrap()
                        .push(b"MALFORMED ".iter().chain(&buf).copied().collect());
                    return;
                }
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

/// A strict parse of one request: Ok(Some((length, "METHOD target\nhost\nbody"))).
#[allow(clippy::type_complexity)]
fn parse_request(buf: &[u8]) -> Result<Option<(usize, Vec<u8>)>, ()> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    if buf[..head]
        .windows(2)
        .filter(|w| w[1] == b'\n')
        .any(|w| w[0] != b'\r')
    {
        return Err(());
    }
    let all = |name: &str| -> Vec<Vec<u8>> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_vec())
            .collect()
    };
    let hosts = all("host");
    let (lengths, codings) = (all("content-length"), all("transfer-encoding"));
    if hosts.len() != 1
        || lengths.len() > 1
        || codings.len() > 1
        || (!lengths.is_empty() && !codings.is_empty())
    {
        return Err(());
    }
    let mut body = Vec::new();
    let end = if let Some(coding) = codings.first() {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(());
        }
        let mut at = head;
        loop {
            let Some(line) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size = std::str::from_utf8(&buf[at..at + line])
                .ok()
                .and_then(|t| usize::from_str_radix(t, 16).ok())
                .ok_or(())?;
            at += line + 2;
            if size == 0 {
                if buf.len() < at + 2 {
                    return Ok(None);
                }
                if &buf[at..at + 2] != b"\r\n" {
                    return Err(());
                }
                break at + 2;
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            body.extend_from_slice(&buf[at..at + size]);
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Err(());
            }
            at += size + 2;
        }
    } else {
        let len: usize = match lengths.first() {
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(())?,
            None => 0,
        };
        if buf.len() < head + len {
            return Ok(None);
        }
        body.extend_from_slice(&buf[head..head + len]);
        head + len
    };
    let mut out = format!("{} {}\n", req.method.unwrap_or(""), req.path.unwrap_or("")).into_bytes();
    out.extend_from_slice(&hosts[0]);
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok(Some((end, out)))
}

/// Send `bytes`, return the first status the proxy answered (None: it
/// closed without one), reading until it closes or goes quiet.
async fn send(proxy: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
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
        if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"ok")
            || out.ends_with(b"\n") && out.starts_with(b"HTTP/1.1 4")
        {
            break;
        }
    }
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_backend_gets_one_faithful_well_framed_request_or_nothing(c in case()) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let rig = rig();
        let n = N.fetch_add(1, Ordering::Relaxed);
        let before = rig.seen.lock().unwrap().len();
        let status = rig.rt.block_on(send(rig.proxy, &c.bytes(n)));
        // Give a forwarded request time to be recorded.
        std::thread::sleep(Duration::from_millis(20));
        let got: Vec<Vec<u8>> = rig.seen.lock().unwrap()[before..].to_vec();
        let mine: Vec<&Vec<u8>> = got.iter().filter(|r| r.windows(7 + n.to_string().len()).any(|w| w == format!("/case/{n}\n").as_bytes() || w == format!("/case/{n} ").as_bytes())).collect();
        prop_assert!(got.iter().all(|r| !r.starts_with(b"MALFORMED")), "the backend got a malformed request: {:?}", got);
        prop_assert!(mine.len() <= 1, "more than one request reached the backend: {:?}", mine);
        match (status, mine.first()) {
            (Some(200), Some(r)) => {
                let mut want = format!("{} /case/{n}\nsite.test\n", c.method).into_bytes();
                // Without framing, bytes after the head are a next request.
                if !matches!(c.framing, Framing::None) {
                    want.extend_from_slice(&c.body);
                }
                if c.valid() {
                    prop_assert_eq!(String::from_utf8_lossy(r), String::from_utf8_lossy(&want));
                } else {
                    // A lenient parse (hyper's, for what the codec hands
                    // it) may accept a head the strict one refuses: what
                    // reaches the backend still must be that request.
                    let head = format!("{} /case/{n}\nsite.test\n", c.method).into_bytes();
                    prop_assert!(r.starts_with(&head), "{:?}", String::from_utf8_lossy(r));
                }
            }
            (Some(s), None) => prop_assert!((400..600).contains(&s) && !c.valid(), "status {} for {:?}", s, c),
            (None, None) => prop_assert!(!c.valid(), "no answer to a valid request {:?}", c),
            (s, r) => prop_assert!(false, "status {:?} with backend request {:?}", s, r),
        }
        if c.valid() {
            prop_assert_eq!(status, Some(200), "a valid request was refused: {:?}", c);
        }
    }
}
