use std::net::IpAddr;

use super::*;
use crate::proxy::http::h1::parse::{self, Parsed};

fn opts(trusted: bool) -> Options {
    Options {
        trusted,
        forwarded: false,
        via: false,
        real_ip: false,
    }
}

/// The head the backend gets for `head` from client 192.0.2.7.
fn rewritten(head: &str, o: Options) -> String {
    let mut f = parse::fields();
    let Parsed::Done(h) = parse::request(head.as_bytes(), &mut f, 8192, 100) else {
        panic!("not served here: {head:?}");
    };
    let peer = Peer::new("192.0.2.7".parse::<IpAddr>().unwrap(), false);
    let mut out = Vec::new();
    request(&mut out, &h, h.host, &peer, o);
    String::from_utf8(out).unwrap()
}

#[test]
fn hop_by_hop_fields_go_and_the_rest_keep_their_case_and_order() {
    let got = rewritten(
        "GET /p?q HTTP/1.1\r\nX-B: 1\r\nHost: A.test\r\nConnection: keep-alive, X-Secret\r\nx-secret: s\r\nKeep-Alive: 5\r\nTE: gzip\r\nProxy-Connection: x\r\nTrailer: t\r\nHTTP2-Settings: x\r\nx-a: 2\r\n\r\n",
        opts(false),
    );
    assert_eq!(
        got,
        "GET /p?q HTTP/1.1\r\nX-B: 1\r\nHost: A.test\r\nx-a: 2\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: A.test\r\n\r\n"
    );
    let te = rewritten(
        "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        opts(false),
    );
    assert!(te.contains("\r\nTE: trailers\r\n"), "{te}");
}

#[test]
fn an_untrusted_clients_claims_go_and_a_trusted_ones_are_appended_to() {
    let head = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n";
    assert_eq!(
        rewritten(head, opts(false)),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n"
    );
    assert_eq!(
        rewritten(head, opts(true)),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\nX-Forwarded-Host: a\r\n\r\n"
    );
}

#[test]
fn forwarded_via_and_real_ip_are_added_when_asked() {
    let o = Options {
        trusted: false,
        forwarded: true,
        via: true,
        real_ip: true,
    };
    assert_eq!(
        rewritten(
            "GET / HTTP/1.1\r\nHost: a.test:8080\r\nVia: 1.0 other\r\n\r\n",
            o
        ),
        "GET / HTTP/1.1\r\nHost: a.test:8080\r\nX-Real-IP: 192.0.2.7\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test:8080\r\nForwarded: for=192.0.2.7;host=\"a.test:8080\";proto=http\r\nVia: 1.0 other, 1.1 vipd\r\n\r\n"
    );
}

fn response_of(head: &str, extras: ResponseExtras<'_>) -> String {
    let mut f = parse::fields();
    let h = parse::response(head.as_bytes(), &mut f, false)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    response(&mut out, &h, extras);
    String::from_utf8(out).unwrap()
}

#[test]
fn responses_lose_hop_by_hop_fields_and_get_framing_close_hsts_and_via() {
    let plain = ResponseExtras {
        via: false,
        hsts: None,
        close: false,
    };
    assert_eq!(
        response_of(
            "HTTP/1.1 200 Fine\r\nServer: x\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 3\r\n\r\n",
            plain
        ),
        "HTTP/1.1 200 Fine\r\nServer: x\r\nContent-Length: 3\r\n\r\n"
    );
    assert_eq!(
        response_of(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\n\r\n",
            ResponseExtras {
                via: true,
                hsts: Some(b"max-age=60"),
                close: true
            }
        ),
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\nstrict-transport-security: max-age=60\r\nvia: 1.1 vipd\r\n\r\n"
    );
    assert_eq!(
        response_of(
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
            ResponseExtras {
                via: true,
                hsts: None,
                close: true
            }
        ),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\nvia: 1.0 vipd\r\n\r\n"
    );
}

#[test]
fn local_answers_carry_the_hyper_paths_text() {
    let mut out = Vec::new();
    local(
        &mut out,
        hyper::StatusCode::BAD_GATEWAY,
        "502 Bad Gateway\n",
        true,
        None,
    );
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 16\r\ndate: "), "{s}");
    assert!(s.ends_with(" GMT\r\n\r\n502 Bad Gateway\n"), "{s}");
}
