//! Heads written to the other side: the original fields, in their order
//! and case, minus the hop-by-hop ones and, from an untrusted client, the
//! forwarding claims; plus exactly one Host (the routed authority) and the
//! forwarding fields vipd adds. The policy is [`super::super::headers`]'s
//! (the same predicates decide which field goes); only the representation
//! differs: field slices over the read buffer appended to one write
//! buffer, in one pass, with no per-message allocation.

use std::cell::RefCell;
use std::time::SystemTime;

use httparse::Header;

use super::parse::{Framing, RequestHead, ResponseHead, tokens};
use crate::proxy::http::headers::{self, Options, Peer};

/// A field name in lower case, on the stack for the usual short names.
struct Lower {
    buf: [u8; 64],
    long: Option<String>,
    len: usize,
}

impl Lower {
    fn of(name: &str) -> Self {
        let mut l = Self {
            buf: [0; 64],
            long: None,
            len: name.len(),
        };
        if name.len() <= 64 {
            for (d, s) in l.buf.iter_mut().zip(name.bytes()) {
                *d = s.to_ascii_lowercase();
            }
        } else {
            l.long = Some(name.to_ascii_lowercase());
        }
        l
    }

    fn as_str(&self) -> &str {
        match &self.long {
            Some(s) => s,
            // httparse admits only token characters (ASCII) in names.
            None => std::str::from_utf8(&self.buf[..self.len]).unwrap_or(""),
        }
    }
}

/// The hop-by-hop rules of one head: which fields its `Connection`
/// fields name, and whether `TE` goes (anything but `trailers`).
struct HopByHop<'h, 'b> {
    fields: &'h [Header<'b>],
    /// `Connection` names a field the fixed rules would not drop anyway.
    names_others: bool,
    drop_te: bool,
}

impl<'h, 'b> HopByHop<'h, 'b> {
    fn of(fields: &'h [Header<'b>]) -> Self {
        let mut names_others = false;
        let mut drop_te = false;
        for f in fields {
            if f.name.eq_ignore_ascii_case("connection") {
                names_others |= tokens(f.value).any(|t| !headers::handled_without_token(t));
            } else if f.name.eq_ignore_ascii_case("te") {
                drop_te |= f.value != b"trailers";
            }
        }
        Self {
            fields,
            names_others,
            drop_te,
        }
    }

    /// Whether the field called `lower` is hop-by-hop (`Upgrade` always is
    /// here: upgrades go through hyper). `Content-Length` never is, even
    /// when `Connection` names it: the body is forwarded by it, so
    /// dropping it would let the body be read as the next message.
    fn drops(&self, lower: &str) -> bool {
        headers::is_fixed_hop_by_hop(lower)
            || lower == "upgrade"
            || (lower == "te" && self.drop_te)
            || (self.names_others
                && lower != "content-length"
                && self
                    .fields
                    .iter()
                    .filter(|f| f.name.eq_ignore_ascii_case("connection"))
                    .flat_map(|f| tokens(f.value))
                    .any(|t| t.eq_ignore_ascii_case(lower.as_bytes())))
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The non-empty values of the fields called `lower`, each followed by
/// `, ` (what follows is vipd's own element), unless `hop` drops them.
fn joined_prefix(out: &mut Vec<u8>, hop: &HopByHop<'_, '_>, lower: &str) {
    if hop.drops(lower) {
        return;
    }
    for f in hop.fields {
        if f.name.eq_ignore_ascii_case(lower) && !f.value.is_empty() {
            out.extend_from_slice(f.value);
            out.extend_from_slice(b", ");
        }
    }
}

/// Write the request head for the backend into `out`: request line,
/// the client's fields as the policy keeps them, `host` (the routed
/// authority) as its one Host, then the forwarding fields.
pub fn request(
    out: &mut Vec<u8>,
    head: &RequestHead<'_, '_>,
    host: &[u8],
    peer: &Peer,
    opts: Options,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let hop = HopByHop::of(head.fields);
    let (mut has_proto, mut has_host, mut has_real_ip) = (false, false, false);
    // Whether a kept field of these names exists (their joined values are
    // needed at the end).
    let (mut join_xff, mut join_fwd, mut join_via) = (false, false, false);
    let mut host_written = false;
    for f in head.fields {
        let lower = Lower::of(f.name);
        let n = lower.as_str();
        if hop.drops(n) || headers::forged(n, opts.trusted) {
            continue;
        }
        match n {
            "host" => {
                if !host_written {
                    field(out, f.name.as_bytes(), host);
                    host_written = true;
                }
                continue;
            }
            "x-forwarded-for" => {
                join_xff = true;
                continue;
            }
            "forwarded" if opts.forwarded => {
                join_fwd = true;
                continue;
            }
            // From an untrusted client `Forwarded` goes.
            "forwarded" if !opts.trusted => continue,
            "via" if opts.via => {
                join_via = true;
                continue;
            }
            "x-forwarded-proto" => has_proto = true,
            "x-forwarded-host" => has_host = true,
            "x-real-ip" => has_real_ip = true,
            _ => {}
        }
        field(out, f.name.as_bytes(), f.value);
    }
    if !host_written {
        field(out, b"Host", host);
    }
    if opts.real_ip && !has_real_ip {
        field(out, b"X-Real-IP", peer.xff());
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if join_xff && opts.trusted {
        joined_prefix(out, &hop, "x-forwarded-for");
    }
    out.extend_from_slice(peer.xff());
    out.extend_from_slice(b"\r\n");
    if !has_proto {
        field(out, b"X-Forwarded-Proto", peer.proto().as_bytes());
    }
    if !has_host {
        field(out, b"X-Forwarded-Host", host);
    }
    if opts.forwarded {
        out.extend_from_slice(b"Forwarded: ");
        if join_fwd && opts.trusted {
            joined_prefix(out, &hop, "forwarded");
        }
        out.extend_from_slice(b"for=");
        out.extend_from_slice(peer.node().as_bytes());
        out.extend_from_slice(b";host=");
        headers::push_quoted(out, host);
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(peer.proto().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if opts.via {
        out.extend_from_slice(b"Via: ");
        if join_via {
            joined_prefix(out, &hop, "via");
        }
        out.extend_from_slice(headers::via_element(hyper::Version::HTTP_11).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the client's response head gets besides the backend's fields.
#[derive(Debug, Clone, Copy)]
pub struct ResponseExtras<'a> {
    /// Add `Via`.
    pub via: bool,
    /// `Strict-Transport-Security` to add unless the backend set one.
    pub hsts: Option<&'a [u8]>,
    /// Tell the client this connection closes after the response.
    pub close: bool,
}

/// Write the response head for the client into `out`.
pub fn response(out: &mut Vec<u8>, head: &ResponseHead<'_, '_>, extras: ResponseExtras<'_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits.
    let c = head.code;
    out.extend_from_slice(&[
        b'0' + (c / 100 % 10) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(head.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let hop = HopByHop::of(head.fields);
    let mut has_hsts = false;
    let mut join_via = false;
    for f in head.fields {
        let lower = Lower::of(f.name);
        let n = lower.as_str();
        if hop.drops(n) {
            continue;
        }
        match n {
            "via" if extras.via => {
                join_via = true;
                continue;
            }
            "strict-transport-security" => has_hsts = true,
            // A 204 has no body, and a Content-Length on it (RFC 9110
            // 8.6 forbids one) would mislead a client into reading one.
            "content-length" if head.code == 204 => continue,
            _ => {}
        }
        field(out, f.name.as_bytes(), f.value);
    }
    if head.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if extras.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(hsts) = extras.hsts.filter(|_| !has_hsts) {
        field(out, b"strict-transport-security", hsts);
    }
    if extras.via {
        out.extend_from_slice(b"via: ");
        if join_via {
            joined_prefix(out, &hop, "via");
        }
        let version = if head.http10 {
            hyper::Version::HTTP_10
        } else {
            hyper::Version::HTTP_11
        };
        out.extend_from_slice(headers::via_element(version).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// An answer made by the proxy (a failed exchange): the same status line,
/// fields and body text hyper writes for the hyper path's answers.
pub fn local(
    out: &mut Vec<u8>,
    status: hyper::StatusCode,
    text: &str,
    close: bool,
    hsts: Option<&[u8]>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if !text.is_empty() {
        out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(hsts) = hsts {
        field(out, b"strict-transport-security", hsts);
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    date(out);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(text.as_bytes());
}

/// Append the current IMF-fixdate, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, s)| {
        if *at != secs || s.is_empty() {
            *at = secs;
            *s = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(s.as_bytes());
    });
}

#[cfg(test)]
mod tests;
