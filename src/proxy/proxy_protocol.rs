//! The PROXY protocol (HAProxy, versions 1 and 2): reading the header a
//! trusted upstream puts before the client's bytes, so that the client's
//! address it carries becomes the connection's identity, and writing a v2
//! header to backends that want to see the client's address.
//!
//! [`parse`] is pure: it takes the bytes received so far and says whether
//! they hold a complete header, need more, or are malformed. [`read_header`]
//! drives it over a socket, consuming exactly the header's bytes (it peeks,
//! then reads only what belongs to the header) so that the client's own
//! bytes stay in the socket for whatever handles the connection next.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;

/// Longest v2 address-and-TLV block accepted. The format allows 65535; real
/// senders (HAProxy, cloud load balancers) stay well under this, and a bound
/// keeps a hostile upstream from making the proxy buffer 64 KiB per socket.
pub const V2_MAX_PAYLOAD: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// The original client. `None` for v2 `LOCAL` (a health check from the
    /// upstream itself), v1 `UNKNOWN`, and address families without one
    /// (unspecified, unix): the TCP peer then stays the client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when carried.
    pub destination: Option<SocketAddr>,
}

/// Result of [`parse`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes are a valid beginning; more are needed.
    Incomplete,
    /// A complete header of `len` bytes.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Its length in bytes; the client's data starts after it.
        len: usize,
    },
}

/// Why bytes are not a valid PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// No CRLF within the v1 length bound.
    #[error("PROXY v1 header has no CRLF within {V1_MAX} bytes")]
    V1TooLong,
    /// A v1 line that does not follow the grammar.
    #[error("PROXY v1 header is malformed: {0}")]
    V1(&'static str),
    /// A v2 version nibble other than 2.
    #[error("PROXY v2 header has version {0}, expected 2")]
    V2Version(u8),
    /// A v2 command other than LOCAL (0) or PROXY (1).
    #[error("PROXY v2 header has unknown command {0:#x}")]
    V2Command(u8),
    /// A v2 family/transport byte not valid for a TCP connection.
    #[error("PROXY v2 header has unsupported address family and transport {0:#04x}")]
    V2Family(u8),
    /// A v2 length too short for the announced addresses.
    #[error("PROXY v2 header is {len} bytes long, too short for its {need}-byte addresses")]
    V2Short {
        /// Announced length.
        len: usize,
        /// Length the family's addresses need.
        need: usize,
    },
    /// A v2 header longer than [`V2_MAX_PAYLOAD`].
    #[error("PROXY v2 header announces {0} bytes, more than the {V2_MAX_PAYLOAD} accepted")]
    V2TooLong(usize),
}

/// Parse a PROXY v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let starts = |prefix: &[u8]| {
        let n = buf.len().min(prefix.len());
        buf[..n] == prefix[..n]
    };
    if starts(V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        parse_v1(buf)
    } else if starts(&V2_SIGNATURE) {
        parse_v2(buf)
    } else {
        Err(HeaderError::NotProxy)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= V1_MAX {
            return Err(HeaderError::V1TooLong);
        }
        return Ok(Parsed::Incomplete);
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| HeaderError::V1("not ASCII"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or("");
    let header = match family {
        // The receiver must ignore anything after UNKNOWN.
        "UNKNOWN" => ProxyHeader {
            version: 1,
            source: None,
            destination: None,
        },
        "TCP4" | "TCP6" => {
            let parts: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = parts[..] else {
                return Err(HeaderError::V1(
                    "expected source, destination, source port and destination port",
                ));
            };
            let ip = |s: &str| -> Result<IpAddr, HeaderError> {
                if family == "TCP4" {
                    s.parse::<Ipv4Addr>()
                        .map(IpAddr::V4)
                        .map_err(|_| HeaderError::V1("invalid IPv4 address"))
                } else {
                    s.parse::<Ipv6Addr>()
                        .map(IpAddr::V6)
                        .map_err(|_| HeaderError::V1("invalid IPv6 address"))
                }
            };
            ProxyHeader {
                version: 1,
                source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
                destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
            }
        }
        _ => return Err(HeaderError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Complete {
        header,
        len: end + 2,
    })
}

fn port(s: &str) -> Result<u16, HeaderError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if !digits || leading_zero {
        return Err(HeaderError::V1("invalid port"));
    }
    s.parse().map_err(|_| HeaderError::V1("invalid port"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let version = buf[12] >> 4;
    if version != 2 {
        return Err(HeaderError::V2Version(version));
    }
    let command = buf[12] & 0x0f;
    if command > 1 {
        return Err(HeaderError::V2Command(command));
    }
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(HeaderError::V2TooLong(len));
    }
    let need = match family {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        0x31 => 216,
        // LOCAL: the family must be ignored.
        _ if command == 0 => 0,
        _ => return Err(HeaderError::V2Family(family)),
    };
    if len < need {
        return Err(HeaderError::V2Short { len, need });
    }
    if buf.len() < 16 + len {
        return Ok(Parsed::Incomplete);
    }
    let a = &buf[16..16 + len];
    let (source, destination) = match (command, family) {
        (1, 0x11) => {
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        (1, 0x21) => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        _ => (None, None),
    };
    Ok(Parsed::Complete {
        header: ProxyHeader {
            version: 2,
            source,
            destination,
        },
        len: 16 + len,
    })
}

/// A v2 `PROXY` header for a TCP connection from `source` to `destination`.
/// Mixed families are sent as IPv6 (IPv4 as IPv4-mapped).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.push(0x21); // INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// Why reading a PROXY header from a socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes received are not a valid header.
    #[error(transparent)]
    Malformed(#[from] HeaderError),
    /// The client closed before sending a complete header.
    #[error("connection closed before a complete PROXY header")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Read one PROXY header from `stream`, consuming exactly its bytes. The
/// caller bounds it with a timeout.
pub async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, ReadError> {
    let mut consumed: Vec<u8> = Vec::with_capacity(64);
    let mut window = [0u8; 256];
    loop {
        let n = stream.peek(&mut window).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        let before = consumed.len();
        consumed.extend_from_slice(&window[..n]);
        match parse(&consumed)? {
            Parsed::Complete { header, len } => {
                stream.read_exact(&mut window[..len - before]).await?;
                return Ok(header);
            }
            // Every byte seen so far belongs to the header: take them, so the
            // next peek waits for new ones instead of returning these again.
            Parsed::Incomplete => {
                stream.read_exact(&mut window[..n]).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn v1_tcp4_and_tcp6_headers_carry_both_addresses() {
        let (h, len) = complete(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET /");
        assert_eq!(len, 45);
        assert_eq!(h.version, 1);
        assert_eq!(h.source, sa("192.0.2.7:56324"));
        assert_eq!(h.destination, sa("198.51.100.1:443"));
        let (h, _) = complete(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n");
        assert_eq!(h.source, sa("[2001:db8::7]:1"));
        assert_eq!(h.destination, sa("[2001:db8::1]:65535"));
    }

    #[test]
    fn v1_unknown_keeps_the_peer_as_client() {
        let (h, len) = complete(b"PROXY UNKNOWN ffff::1 whatever\r\n");
        assert_eq!((h.source, h.destination, len), (None, None, 32));
    }

    #[test]
    fn v1_partial_headers_ask_for_more() {
        for n in 0..45 {
            let buf = &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"[..n];
            assert_eq!(parse(buf), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn v1_malformed_headers_are_rejected_with_the_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
            (b"PROXX TCP4", "not a PROXY protocol header"),
            (
                b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
                "PROXY v1 header is malformed: protocol is not TCP4, TCP6 or UNKNOWN",
            ),
            (
                b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
                "PROXY v1 header is malformed: expected source, destination, source port and destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
                "PROXY v1 header is malformed: expected source, destination, source port and destination port",
            ),
            (
                b"PROXY TCP4 1.2.3.256 1.2.3.4 1 2\r\n",
                "PROXY v1 header is malformed: invalid IPv4 address",
            ),
            (
                b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n",
                "PROXY v1 header is malformed: invalid IPv4 address",
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                "PROXY v1 header is malformed: invalid IPv6 address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
                "PROXY v1 header is malformed: invalid port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
                "PROXY v1 header is malformed: invalid port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
                "PROXY v1 header is malformed: invalid port",
            ),
        ];
        for (buf, want) in cases {
            let got = parse(buf).map(|_| ()).unwrap_err().to_string();
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(buf));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(
            parse(&long).unwrap_err().to_string(),
            "PROXY v1 header has no CRLF within 107 bytes"
        );
    }

    #[test]
    fn v2_round_trips_ipv4_and_ipv6_and_mixed_families() {
        let cases = [
            (
                "192.0.2.7:56324",
                "198.51.100.1:443",
                "192.0.2.7:56324",
                "198.51.100.1:443",
            ),
            (
                "[2001:db8::7]:1",
                "[2001:db8::1]:2",
                "[2001:db8::7]:1",
                "[2001:db8::1]:2",
            ),
            (
                "192.0.2.7:9",
                "[2001:db8::1]:2",
                "[::ffff:192.0.2.7]:9",
                "[2001:db8::1]:2",
            ),
        ];
        for (src, dst, want_src, want_dst) in cases {
            let mut bytes = encode_v2(src.parse().unwrap(), dst.parse().unwrap());
            let n = bytes.len();
            bytes.extend_from_slice(b"payload");
            let (h, len) = complete(&bytes);
            assert_eq!(len, n);
            assert_eq!(
                (h.version, h.source, h.destination),
                (2, sa(want_src), sa(want_dst))
            );
        }
    }

    #[test]
    fn v2_encoding_is_the_specified_byte_layout() {
        let bytes = encode_v2(
            "192.0.2.7:256".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(
            bytes,
            [
                &V2_SIGNATURE[..],
                &[0x21, 0x11, 0, 12], // v2 PROXY, INET STREAM, 12 bytes
                &[192, 0, 2, 7],      // source
                &[10, 0, 0, 1],       // destination
                &[1, 0, 1, 0xbb],     // ports 256, 443
            ]
            .concat()
        );
    }

    #[test]
    fn v2_local_and_unspecified_carry_no_client_and_tlvs_are_skipped() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 3, 1, 0, 0]);
        assert_eq!(
            complete(&local),
            (
                ProxyHeader {
                    version: 2,
                    source: None,
                    destination: None
                },
                19
            )
        );
        let mut with_tlv = encode_v2(
            "192.0.2.7:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
        );
        with_tlv[15] = 12 + 4;
        with_tlv.extend_from_slice(&[0x04, 0, 1, 0xff]); // PP2_TYPE_NOOP
        let (h, len) = complete(&with_tlv);
        assert_eq!((h.source, len), (sa("192.0.2.7:1"), 32));
    }

    #[test]
    fn v2_malformed_headers_are_rejected_with_the_reason() {
        let header = |b12: u8, b13: u8, len: u16| {
            let mut v = V2_SIGNATURE.to_vec();
            v.extend_from_slice(&[b12, b13]);
            v.extend_from_slice(&len.to_be_bytes());
            v
        };
        let cases = [
            (
                header(0x11, 0x11, 12),
                "PROXY v2 header has version 1, expected 2",
            ),
            (
                header(0x22, 0x11, 12),
                "PROXY v2 header has unknown command 0x2",
            ),
            (
                header(0x21, 0x12, 12),
                "PROXY v2 header has unsupported address family and transport 0x12",
            ),
            (
                header(0x21, 0x11, 8),
                "PROXY v2 header is 8 bytes long, too short for its 12-byte addresses",
            ),
            (
                header(0x21, 0x21, 12),
                "PROXY v2 header is 12 bytes long, too short for its 36-byte addresses",
            ),
            (
                header(0x21, 0x11, 5000),
                "PROXY v2 header announces 5000 bytes, more than the 4096 accepted",
            ),
        ];
        for (buf, want) in cases {
            assert_eq!(parse(&buf).unwrap_err().to_string(), want);
        }
        let mut bad_sig = V2_SIGNATURE.to_vec();
        bad_sig[11] = b'X';
        assert_eq!(parse(&bad_sig), Err(HeaderError::NotProxy));
        // A valid v2 prefix still waiting for its addresses.
        assert_eq!(parse(&header(0x21, 0x11, 12)), Ok(Parsed::Incomplete));
        assert_eq!(parse(&V2_SIGNATURE[..5]), Ok(Parsed::Incomplete));
    }
}
