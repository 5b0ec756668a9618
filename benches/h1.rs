//! The pass-through HTTP/1.1 codec's hot path: parsing a typical request
//! and response head, writing them for the other side, and checking a
//! chunked body as it passes.
//!
//! Run: `cargo bench --bench h1` (criterion reports elements/s, one
//! element being one head, or bytes/s for the chunked body).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vipd::proxy::http::h1::framing::Chunked;
use vipd::proxy::http::h1::parse::{self, Parsed};
use vipd::proxy::http::h1::write::{self, ResponseExtras};
use vipd::proxy::http::headers::{Options, Peer};

/// What wrk and a browser send (the second is a typical page request).
const WRK: &[u8] = b"GET /1k HTTP/1.1\r\nHost: localhost:8080\r\n\r\n";
const BROWSER: &[u8] = b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.test\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nReferer: https://www.example.test/\r\nConnection: keep-alive\r\nCookie: session=0123456789abcdef0123456789abcdef\r\nSec-Fetch-Dest: script\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\n\r\n";
/// nginx's answer to the bench's 1 KiB request.
const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 00:00:00 GMT\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\nLast-Modified: Tue, 01 Dec 2026 00:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"1-400\"\r\nAccept-Ranges: bytes\r\n\r\n";

fn parse_and_write(c: &mut Criterion) {
    let peer = Peer::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), false);
    let opts = Options {
        trusted: false,
        forwarded: false,
        via: false,
        real_ip: false,
    };
    let mut g = c.benchmark_group("h1");
    g.throughput(Throughput::Elements(1));
    for (name, head) in [("wrk", WRK), ("browser", BROWSER)] {
        g.bench_function(format!("parse request ({name})"), |b| {
            b.iter(|| {
                let mut f = parse::fields();
                match parse::request(black_box(head), &mut f, 65_536, 100) {
                    Parsed::Done(h) => h.len,
                    _ => 0,
                }
            })
        });
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("parse and write request ({name})"), |b| {
            b.iter(|| {
                let mut f = parse::fields();
                if let Parsed::Done(h) = parse::request(black_box(head), &mut f, 65_536, 100) {
                    out.clear();
                    write::request(&mut out, &h, h.host, &peer, opts);
                }
                out.len()
            })
        });
    }
    g.bench_function("parse response (nginx)", |b| {
        b.iter(|| {
            let mut f = parse::fields();
            parse::response(black_box(NGINX), &mut f, false).map(|h| h.map(|h| h.len))
        })
    });
    let mut out = Vec::with_capacity(4096);
    g.bench_function("parse and write response (nginx)", |b| {
        b.iter(|| {
            let mut f = parse::fields();
            if let Ok(Some(h)) = parse::response(black_box(NGINX), &mut f, false) {
                out.clear();
                let extras = ResponseExtras {
                    via: false,
                    hsts: None,
                    close: false,
                };
                write::response(&mut out, &h, extras);
            }
            out.len()
        })
    });
    g.finish();
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b'x'; 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("h1 chunked");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("check 64 chunks of 1 KiB", |b| {
        b.iter(|| {
            let mut c = Chunked::new();
            c.feed(black_box(&body)).map(|f| f.consumed)
        })
    });
    g.finish();
}

criterion_group!(benches, parse_and_write);
criterion_main!(benches);
