use super::*;

/// How `request` sorts `head`: "partial", "unusual", or the framing.
fn sort(head: &str) -> String {
    let mut f = fields();
    match request(head.as_bytes(), &mut f, 8192, 100) {
        Parsed::Partial => "partial".into(),
        Parsed::Unusual => "unusual".into(),
        Parsed::Done(h) => format!("{:?} close={}", h.framing, h.close),
    }
}

#[test]
fn plain_requests_are_served_here_with_their_framing() {
    assert_eq!(
        sort("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        "Empty close=false"
    );
    assert_eq!(
        sort(
            "POST /x?y=1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 12\r\nConnection: keep-alive, Close\r\n\r\n"
        ),
        "Length(12) close=true"
    );
    assert_eq!(sort("GET / HTTP/1.1\r\nHost: a.test\r\n"), "partial");
}

#[test]
fn every_ambiguous_or_unusual_head_goes_to_hyper() {
    for head in [
        // framing
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        // line endings, folding, blanks
        "GET / HTTP/1.1\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        // host
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        // target, version, method
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        // upgrades and expectations
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        // NUL and controls
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
    ] {
        assert_eq!(sort(head), "unusual", "{head:?}");
    }
}

#[test]
fn heads_over_the_limits_go_to_hyper_which_answers_431() {
    let mut f = fields();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "y".repeat(9000)
    );
    assert!(matches!(
        request(big.as_bytes(), &mut f, 8192, 100),
        Parsed::Unusual
    ));
    let mut f = fields();
    let partial = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(9000));
    assert!(matches!(
        request(partial.as_bytes(), &mut f, 8192, 100),
        Parsed::Unusual
    ));
    let many: String = (0..5).map(|i| format!("X{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let mut f = fields();
    assert!(matches!(
        request(head.as_bytes(), &mut f, 8192, 5),
        Parsed::Unusual
    ));
    let mut f = fields();
    assert!(matches!(
        request(head.as_bytes(), &mut f, 8192, 6),
        Parsed::Done(_)
    ));
}

fn framing_of(head: &str, head_request: bool) -> Result<Framing, ResponseError> {
    let mut f = fields();
    response(head.as_bytes(), &mut f, head_request).map(|r| r.expect("complete").framing)
}

#[test]
fn response_framing_is_one_length_chunked_alone_none_or_close() {
    use Framing::*;
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
        Ok(Length(3))
    );
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
        Ok(Empty)
    );
    assert_eq!(
        framing_of(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n",
            false
        ),
        Ok(Chunked)
    );
    assert_eq!(
        framing_of(
            "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
            false
        ),
        Ok(Empty)
    );
    assert_eq!(
        framing_of("HTTP/1.1 304 Not Modified\r\n\r\n", false),
        Ok(Empty)
    );
    assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n", false), Ok(Close));
    assert_eq!(
        framing_of("HTTP/1.1 100 Continue\r\n\r\n", false),
        Ok(Empty)
    );
    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(
            framing_of(bad, false),
            Err(ResponseError::Framing),
            "{bad:?}"
        );
    }
    assert_eq!(
        framing_of("HTTP/1.1 200 OK\nContent-Length: 3\r\n\r\n", false),
        Err(ResponseError::Malformed)
    );
    assert_eq!(
        framing_of("HTTP/1.1 2000 OK\r\n\r\n", false),
        Err(ResponseError::Malformed)
    );
    // Below 100 is no status at all (not an informational one to skip).
    assert_eq!(
        framing_of("HTTP/1.1 099 Early\r\n\r\n", false),
        Err(ResponseError::Malformed)
    );
}
