//! Request and response heads parsed with `httparse` straight over the
//! read buffer (no `HeaderMap`), with the framing checks of RFC 9112 6.3
//! done once, here.
//!
//! The request side sorts heads in two: the plain ones this codec serves
//! (HTTP/1.1, origin-form target of plain characters, one Host, no
//! `Transfer-Encoding`, at most one `Content-Length` of digits, no
//! `Upgrade` or `Expect`, within the listener's limits), and everything
//! else, which is [`Parsed::Unusual`]: the connection then goes to hyper,
//! which answers it exactly as it always has (a 400 or 431 for a hostile
//! head). So this codec never has to be as forgiving as hyper, only
//! stricter.
//!
//! Backend responses are hostile too: a response whose framing is not
//! exactly one of no body, one `Content-Length`, `Transfer-Encoding:
//! chunked` alone (from HTTP/1.1), or close-delimited is [`ResponseError`]
//! (a 502).

use httparse::{EMPTY_HEADER, Header, Status};

/// Most header fields a head parsed here may carry (a stack table). A
/// request with more goes to hyper, which applies the listener's
/// `max_headers` to it; a response with more is refused.
pub const MAX_FIELDS: usize = 128;

/// The outcome of parsing what has arrived of a head.
pub enum Parsed<T> {
    /// More bytes are needed.
    Partial,
    Done(T),
    /// Not for this codec: hand the connection to hyper.
    Unusual,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the backend closes (responses only).
    Close,
}

/// A request head this codec serves, borrowed from the read buffer.
pub struct RequestHead<'h, 'b> {
    /// Bytes of the head, final CRLF included.
    pub len: usize,
    pub method: &'b str,
    pub target: &'b str,
    pub fields: &'h [Header<'b>],
    pub host: &'b [u8],
    pub framing: Framing,
    /// The client asked to close after this exchange (`Connection: close`).
    pub close: bool,
}

/// Whether every CR of `head` is followed by LF and every LF preceded by
/// CR: a bare CR or LF is how some parsers are told apart (RFC 9112 2.2).
fn crlf_only(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in head {
        if (b == b'\n') != (prev == b'\r') {
            return false;
        }
        prev = b;
    }
    true
}

/// Whether `target` is an origin-form target of plain characters: `/`
/// followed by RFC 3986 unreserved, sub-delims, `:@/?%`. Anything else
/// (absolute-form, `*`, a fragment, raw non-ASCII) goes to hyper.
fn plain_target(target: &str) -> bool {
    target.starts_with('/')
        && target.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'@'
                        | b'/'
                        | b'?'
                        | b'%'
                )
        })
}

/// A `Content-Length` value: 1 to 18 digits, nothing else (no sign, no
/// list, no blank inside).
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The comma-separated elements of a field value, blanks trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Parse a request head from `buf` into `fields`, within `max_bytes` and
/// `max_fields`. Call again with more bytes on `Partial`.
pub fn request<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [Header<'b>; MAX_FIELDS],
    max_bytes: usize,
    max_fields: usize,
) -> Parsed<RequestHead<'h, 'b>> {
    let mut req = httparse::Request::new(fields);
    let len = match req.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() < max_bytes => return Parsed::Partial,
        _ => return Parsed::Unusual,
    };
    if len > max_bytes || req.version != Some(1) || !crlf_only(&buf[..len]) {
        return Parsed::Unusual;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Unusual;
    };
    if method == "CONNECT" || !plain_target(target) || req.headers.len() > max_fields {
        return Parsed::Unusual;
    }
    let mut host = None;
    let mut length = None;
    let mut close = false;
    for f in req.headers.iter() {
        let n = f.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            if host.replace(f.value).is_some() {
                return Parsed::Unusual;
            }
        } else if n.eq_ignore_ascii_case(b"content-length") {
            match content_length(f.value) {
                Some(v) if length.is_none() => length = Some(v),
                _ => return Parsed::Unusual,
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"upgrade")
            || n.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Unusual;
        } else if n.eq_ignore_ascii_case(b"connection") {
            close |= tokens(f.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        }
    }
    let Some(host) = host else {
        return Parsed::Unusual;
    };
    let framing = match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    };
    Parsed::Done(RequestHead {
        len,
        method,
        target,
        fields: req.headers,
        host,
        framing,
        close,
    })
}

/// A backend's response head, borrowed from the backend read buffer.
pub struct ResponseHead<'h, 'b> {
    pub len: usize,
    pub code: u16,
    pub reason: &'b str,
    /// HTTP/1.0 (the connection is not kept unless it says so; vipd never
    /// keeps it).
    pub http10: bool,
    pub fields: &'h [Header<'b>],
    pub framing: Framing,
    /// The backend will close the connection after this response.
    pub close: bool,
}

/// Why a backend's response head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head")]
    Malformed,
    #[error("response head larger than {0} bytes")]
    TooLarge(usize),
    #[error(
        "ambiguous response framing (Content-Length and Transfer-Encoding, several lengths, a coding other than chunked, or Transfer-Encoding from HTTP/1.0)"
    )]
    Framing,
}

/// Most bytes a backend's response head may take.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Parse a response head to a request that was a `HEAD` or not. 1xx heads
/// come back as they are (the caller skips them).
pub fn response<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [Header<'b>; MAX_FIELDS],
    head_request: bool,
) -> Result<Option<ResponseHead<'h, 'b>>, ResponseError> {
    let mut resp = httparse::Response::new(fields);
    let len = match resp.parse(buf) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
        Ok(Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError::TooLarge(MAX_RESPONSE_HEAD));
        }
        Err(_) => return Err(ResponseError::Malformed),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(ResponseError::TooLarge(MAX_RESPONSE_HEAD));
    }
    if !crlf_only(&buf[..len]) {
        return Err(ResponseError::Malformed);
    }
    let (Some(code @ 100..), Some(version)) = (resp.code, resp.version) else {
        return Err(ResponseError::Malformed);
    };
    let mut length = None;
    let mut chunked = false;
    let mut close = version == 0;
    for f in resp.headers.iter() {
        let n = f.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-length") {
            match content_length(f.value) {
                Some(v) if length.is_none() => length = Some(v),
                _ => return Err(ResponseError::Framing),
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !f.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(ResponseError::Framing);
            }
            chunked = true;
        } else if n.eq_ignore_ascii_case(b"connection") {
            for t in tokens(f.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                }
            }
        }
    }
    // Transfer-Encoding in an HTTP/1.0 message is faulty framing (RFC 9112
    // 6.1), as hyper has it.
    if chunked && (length.is_some() || version == 0) {
        return Err(ResponseError::Framing);
    }
    let framing = if head_request || code < 200 || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some(ResponseHead {
        len,
        code,
        reason: resp.reason.unwrap_or(""),
        http10: version == 0,
        fields: resp.headers,
        framing,
        close: close || framing == Framing::Close,
    }))
}

/// An empty field table for [`request`] and [`response`].
pub fn fields<'b>() -> [Header<'b>; MAX_FIELDS] {
    [EMPTY_HEADER; MAX_FIELDS]
}

#[cfg(test)]
mod tests;
