//! Pure encode/decode of IPVS generic netlink messages: no I/O, no state.
//!
//! A request is `nlmsghdr` + `genlmsghdr` + attributes (`nlattr`, payload
//! padded to 4 bytes). IPVS nests a service in `IPVS_CMD_ATTR_SERVICE` and a
//! real server in `IPVS_CMD_ATTR_DEST`; both nests carry `NLA_F_NESTED`, as
//! libnl (ipvsadm) sends them. Requests are laid out byte for byte like
//! ipvsadm 1.31's, which the golden tests below check against captures.
//! Every parse error says where it happened (message, nest, attribute).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::consts::*;
use super::{
    Dest, Family, Forward, Info, KernelDest, KernelService, Protocol, Service, ServiceKey, Stats,
};

/// A message or attribute that does not parse, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{context}: {reason}")]
pub struct ParseError {
    /// Path to the bad element, outermost first (`service > attr ADDR`).
    pub context: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ParseError {
    fn new(context: impl Into<String>, reason: impl Into<String>) -> Self {
        ParseError {
            context: context.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes an outer context (`dest` + `attr PORT` -> `dest > attr PORT`).
    pub fn within(mut self, outer: &str) -> Self {
        self.context = if self.context.is_empty() {
            outer.to_string()
        } else {
            format!("{outer} > {}", self.context)
        };
        self
    }
}

type PResult<T> = Result<T, ParseError>;

// ------------------------------------------------------------------ encoding

/// Builds one netlink message: header, genl header, then attributes.
#[derive(Debug)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    /// Starts a message of netlink type `nl_type` (the genl family id).
    pub fn new(nl_type: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
        buf.extend_from_slice(&nl_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        MsgBuilder { buf }
    }

    /// Appends an attribute with a raw payload, padded to 4 bytes.
    pub fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + payload.len()).expect("netlink attribute too large");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Appends a u8 attribute.
    pub fn put_u8(&mut self, ty: u16, v: u8) {
        self.put(ty, &[v]);
    }
    /// Appends a u16 attribute in host order.
    pub fn put_u16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_ne_bytes());
    }
    /// Appends a u32 attribute in host order.
    pub fn put_u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }
    /// Appends a NUL-terminated string attribute.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    /// Opens a nest (with `NLA_F_NESTED`); close it with [`MsgBuilder::end_nest`].
    pub fn begin_nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes the nest opened at `start`.
    pub fn end_nest(&mut self, start: usize) {
        let len = u16::try_from(self.buf.len() - start).expect("netlink nest too large");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Sets the total length and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("netlink message too large");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `CTRL_CMD_GETFAMILY` for `name`, sent to the genl controller.
pub fn get_family(seq: u32, name: &str) -> Vec<u8> {
    let mut m = MsgBuilder::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        CTRL_VERSION,
    );
    m.put_str(CTRL_ATTR_FAMILY_NAME, name);
    m.finish()
}

/// An IPVS request, independent of the family id and sequence number.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// `ipvsadm -A`.
    NewService(&'a Service),
    /// `ipvsadm -E`.
    SetService(&'a Service),
    /// `ipvsadm -D`.
    DelService(&'a ServiceKey),
    /// `ipvsadm -a`.
    NewDest(&'a ServiceKey, &'a Dest),
    /// `ipvsadm -e`.
    SetDest(&'a ServiceKey, &'a Dest),
    /// `ipvsadm -d`.
    DelDest(&'a ServiceKey, SocketAddr),
    /// Dump of all services.
    GetServices,
    /// Dump of one service's real servers.
    GetDests(&'a ServiceKey),
    /// Version and connection table size.
    GetInfo,
    /// `ipvsadm -C`.
    Flush,
}

impl Request<'_> {
    /// The `IPVS_CMD_*` command.
    pub fn cmd(&self) -> u8 {
        match self {
            Request::NewService(_) => IPVS_CMD_NEW_SERVICE,
            Request::SetService(_) => IPVS_CMD_SET_SERVICE,
            Request::DelService(_) => IPVS_CMD_DEL_SERVICE,
            Request::NewDest(..) => IPVS_CMD_NEW_DEST,
            Request::SetDest(..) => IPVS_CMD_SET_DEST,
            Request::DelDest(..) => IPVS_CMD_DEL_DEST,
            Request::GetServices => IPVS_CMD_GET_SERVICE,
            Request::GetDests(_) => IPVS_CMD_GET_DEST,
            Request::GetInfo => IPVS_CMD_GET_INFO,
            Request::Flush => IPVS_CMD_FLUSH,
        }
    }

    /// Dumps end with `NLMSG_DONE`; everything else with an ack.
    pub fn is_dump(&self) -> bool {
        matches!(self, Request::GetServices | Request::GetDests(_))
    }

    /// The scheduler a service request names (for error messages).
    pub fn scheduler(&self) -> Option<&str> {
        match self {
            Request::NewService(s) | Request::SetService(s) => Some(&s.scheduler),
            _ => None,
        }
    }

    /// Encodes the request for IPVS family `family` with sequence `seq`.
    pub fn encode(&self, family: u16, seq: u32) -> Vec<u8> {
        let flags = if self.is_dump() {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        let mut m = MsgBuilder::new(family, flags, seq, self.cmd(), IPVS_GENL_VERSION);
        match self {
            Request::NewService(s) | Request::SetService(s) => {
                service_nest(&mut m, &s.key, &ServiceParams::of(s));
            }
            Request::DelService(k) | Request::GetDests(k) => {
                service_nest(&mut m, k, &ServiceParams::reference(k));
            }
            Request::NewDest(k, d) | Request::SetDest(k, d) => {
                service_nest(&mut m, k, &ServiceParams::reference(k));
                dest_nest(&mut m, d);
            }
            Request::DelDest(k, addr) => {
                service_nest(&mut m, k, &ServiceParams::reference(k));
                let n = m.begin_nest(IPVS_CMD_ATTR_DEST);
                put_dest_addr(&mut m, *addr);
                m.end_nest(n);
            }
            Request::GetServices | Request::GetInfo | Request::Flush => {}
        }
        m.finish()
    }
}

impl fmt::Display for Request<'_> {
    /// Short description for error context: `add service -t 192.0.2.10:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::NewService(s) => write!(f, "add service {}", s.key),
            Request::SetService(s) => write!(f, "edit service {}", s.key),
            Request::DelService(k) => write!(f, "delete service {k}"),
            Request::NewDest(k, d) => write!(f, "add real server {} to {k}", d.addr),
            Request::SetDest(k, d) => write!(f, "edit real server {} of {k}", d.addr),
            Request::DelDest(k, a) => write!(f, "delete real server {a} from {k}"),
            Request::GetServices => f.write_str("list services"),
            Request::GetDests(k) => write!(f, "list real servers of {k}"),
            Request::GetInfo => f.write_str("get IPVS info"),
            Request::Flush => f.write_str("flush IPVS table"),
        }
    }
}

/// The non-identity service attributes. ipvsadm always sends all of them,
/// even in real-server commands (with an empty scheduler), and so does vipd.
struct ServiceParams<'a> {
    scheduler: &'a str,
    flags: u32,
    timeout: u32,
    netmask: u32,
}

impl<'a> ServiceParams<'a> {
    fn of(s: &'a Service) -> Self {
        ServiceParams {
            scheduler: &s.scheduler,
            flags: s.kernel_flags(),
            timeout: s.timeout.unwrap_or(0),
            netmask: encode_netmask(s.key.family(), s.netmask),
        }
    }

    fn reference(k: &ServiceKey) -> Self {
        let family = k.family();
        ServiceParams {
            scheduler: "",
            flags: 0,
            timeout: 0,
            netmask: encode_netmask(family, family.max_prefix()),
        }
    }
}

/// `IPVS_SVC_ATTR_NETMASK`: an IPv4 mask in network byte order, or an IPv6
/// prefix length.
fn encode_netmask(family: Family, prefix: u8) -> u32 {
    match family {
        Family::Inet => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from_ne_bytes(mask.to_be_bytes())
        }
        Family::Inet6 => u32::from(prefix.min(128)),
    }
}

fn decode_netmask(family: Family, raw: u32) -> PResult<u8> {
    match family {
        Family::Inet => {
            let mask = u32::from_be_bytes(raw.to_ne_bytes());
            Ok(u8::try_from(mask.leading_ones()).expect("at most 32"))
        }
        Family::Inet6 => match u8::try_from(raw) {
            Ok(p) if p <= 128 => Ok(p),
            _ => Err(ParseError::new(
                "",
                format!("IPv6 prefix length {raw} is above 128"),
            )),
        },
    }
}

fn af(family: Family) -> u16 {
    match family {
        Family::Inet => AF_INET,
        Family::Inet6 => AF_INET6,
    }
}

fn proto(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first 4.
fn inet_addr(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

fn service_nest(m: &mut MsgBuilder, key: &ServiceKey, p: &ServiceParams<'_>) {
    let n = m.begin_nest(IPVS_CMD_ATTR_SERVICE);
    m.put_u16(IPVS_SVC_ATTR_AF, af(key.family()));
    match key {
        ServiceKey::Addr { protocol, addr } => {
            m.put_u16(IPVS_SVC_ATTR_PROTOCOL, proto(*protocol));
            m.put(IPVS_SVC_ATTR_ADDR, &inet_addr(addr.ip()));
            m.put(IPVS_SVC_ATTR_PORT, &addr.port().to_be_bytes());
        }
        ServiceKey::Fwmark { mark, .. } => m.put_u32(IPVS_SVC_ATTR_FWMARK, *mark),
    }
    m.put_str(IPVS_SVC_ATTR_SCHED_NAME, p.scheduler);
    // struct ip_vs_flags { __u32 flags; __u32 mask; }: mask = all bits set
    let mut flags = [0u8; 8];
    flags[..4].copy_from_slice(&p.flags.to_ne_bytes());
    flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
    m.put(IPVS_SVC_ATTR_FLAGS, &flags);
    m.put_u32(IPVS_SVC_ATTR_TIMEOUT, p.timeout);
    m.put_u32(IPVS_SVC_ATTR_NETMASK, p.netmask);
    m.end_nest(n);
}

fn put_dest_addr(m: &mut MsgBuilder, addr: SocketAddr) {
    m.put_u16(IPVS_DEST_ATTR_ADDR_FAMILY, af(Family::of(addr.ip())));
    m.put(IPVS_DEST_ATTR_ADDR, &inet_addr(addr.ip()));
    m.put(IPVS_DEST_ATTR_PORT, &addr.port().to_be_bytes());
}

fn dest_nest(m: &mut MsgBuilder, d: &Dest) {
    let n = m.begin_nest(IPVS_CMD_ATTR_DEST);
    put_dest_addr(m, d.addr);
    m.put_u32(IPVS_DEST_ATTR_FWD_METHOD, d.forward.to_kernel());
    m.put_u32(IPVS_DEST_ATTR_WEIGHT, d.weight);
    // tunnel encapsulation: plain IPIP, as ipvsadm sends by default
    m.put_u8(IPVS_DEST_ATTR_TUN_TYPE, IP_VS_CONN_F_TUNNEL_TYPE_IPIP);
    m.put_u16(IPVS_DEST_ATTR_TUN_PORT, 0);
    m.put_u16(IPVS_DEST_ATTR_TUN_FLAGS, 0);
    m.put_u32(IPVS_DEST_ATTR_U_THRESH, d.upper_threshold);
    m.put_u32(IPVS_DEST_ATTR_L_THRESH, d.lower_threshold);
    m.end_nest(n);
}

// ------------------------------------------------------------------ decoding

/// One netlink message inside a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nlmsg<'a> {
    /// `nlmsg_type`: a family id, `NLMSG_ERROR` or `NLMSG_DONE`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`, echoed from the request.
    pub seq: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

/// Splits a datagram into netlink messages.
pub fn messages(buf: &[u8]) -> PResult<Vec<Nlmsg<'_>>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let ctx = || format!("netlink message at byte {}", buf.len() - rest.len());
        if rest.len() < NLMSG_HDRLEN {
            return Err(ParseError::new(
                ctx(),
                format!("{} bytes left, header needs 16", rest.len()),
            ));
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(ParseError::new(
                ctx(),
                format!("length {len} outside 16..={}", rest.len()),
            ));
        }
        out.push(Nlmsg {
            ty: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes")),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        let aligned = len.next_multiple_of(4).min(rest.len());
        rest = &rest[aligned..];
    }
    Ok(out)
}

/// What one received message means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `NLMSG_ERROR` with error 0.
    Ack,
    /// `NLMSG_ERROR` with `-errno`; holds the positive errno.
    Error(i32),
    /// `NLMSG_DONE`: end of a dump.
    Done,
    /// A genl message: its command and attributes.
    Data {
        /// `genlmsghdr.cmd`.
        cmd: u8,
        /// The attribute stream after the genl header.
        attrs: &'a [u8],
    },
}

/// Classifies a message.
pub fn reply<'a>(msg: &Nlmsg<'a>) -> PResult<Reply<'a>> {
    match msg.ty {
        NLMSG_ERROR => {
            let code = msg
                .payload
                .get(0..4)
                .ok_or_else(|| ParseError::new("NLMSG_ERROR", "shorter than its error code"))?;
            match i32::from_ne_bytes(code.try_into().expect("4 bytes")) {
                0 => Ok(Reply::Ack),
                e => Ok(Reply::Error(e.saturating_neg())),
            }
        }
        NLMSG_DONE => Ok(Reply::Done),
        _ => {
            if msg.payload.len() < GENL_HDRLEN {
                return Err(ParseError::new(
                    "genl message",
                    "shorter than the genl header",
                ));
            }
            Ok(Reply::Data {
                cmd: msg.payload[0],
                attrs: &msg.payload[GENL_HDRLEN..],
            })
        }
    }
}

/// One attribute: its type (flags masked off) and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// Type without `NLA_F_NESTED`/`NLA_F_NET_BYTEORDER`.
    pub ty: u16,
    /// Payload without padding.
    pub payload: &'a [u8],
}

/// Splits an attribute stream.
pub fn attributes(buf: &[u8]) -> PResult<Vec<Attr<'_>>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLA_HDRLEN {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(ParseError::new(
                format!("attr {ty}"),
                format!("length {len} outside 4..={}", rest.len()),
            ));
        }
        out.push(Attr {
            ty,
            payload: &rest[NLA_HDRLEN..len],
        });
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    Ok(out)
}

impl<'a> Attr<'a> {
    fn fixed<const N: usize>(&self, name: &str) -> PResult<[u8; N]> {
        self.payload
            .get(..N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                ParseError::new(
                    format!("attr {name}"),
                    format!("{} bytes, expected {N}", self.payload.len()),
                )
            })
    }
    fn u8(&self, name: &str) -> PResult<u8> {
        Ok(self.fixed::<1>(name)?[0])
    }
    fn u16(&self, name: &str) -> PResult<u16> {
        Ok(u16::from_ne_bytes(self.fixed(name)?))
    }
    fn be16(&self, name: &str) -> PResult<u16> {
        Ok(u16::from_be_bytes(self.fixed(name)?))
    }
    fn u32(&self, name: &str) -> PResult<u32> {
        Ok(u32::from_ne_bytes(self.fixed(name)?))
    }
    fn u64(&self, name: &str) -> PResult<u64> {
        Ok(u64::from_ne_bytes(self.fixed(name)?))
    }
    fn string(&self, name: &str) -> PResult<String> {
        let raw = self.payload.split(|b| *b == 0).next().unwrap_or_default();
        String::from_utf8(raw.to_vec())
            .map_err(|_| ParseError::new(format!("attr {name}"), "not UTF-8"))
    }
}

fn find<'a>(attrs: &[Attr<'a>], ty: u16) -> Option<Attr<'a>> {
    attrs.iter().copied().find(|a| a.ty == ty)
}

fn need<'a>(attrs: &[Attr<'a>], ty: u16, name: &str) -> PResult<Attr<'a>> {
    find(attrs, ty).ok_or_else(|| ParseError::new(format!("attr {name}"), "missing"))
}

fn decode_addr(family: Family, a: Attr<'_>, name: &str) -> PResult<IpAddr> {
    let b: [u8; 16] = match family {
        Family::Inet => {
            let v4: [u8; 4] = a.fixed(name)?;
            return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
        }
        Family::Inet6 => a.fixed(name)?,
    };
    Ok(IpAddr::V6(Ipv6Addr::from(b)))
}

fn decode_family(v: u16) -> PResult<Family> {
    match v {
        AF_INET => Ok(Family::Inet),
        AF_INET6 => Ok(Family::Inet6),
        other => Err(ParseError::new(
            "",
            format!("unknown address family {other}"),
        )),
    }
}

/// Parses the controller's `CTRL_CMD_NEWFAMILY` reply attributes.
pub fn parse_family_id(attrs_buf: &[u8]) -> PResult<u16> {
    let a = attributes(attrs_buf).map_err(|e| e.within("genl family reply"))?;
    need(&a, CTRL_ATTR_FAMILY_ID, "CTRL_ATTR_FAMILY_ID")
        .and_then(|a| a.u16("CTRL_ATTR_FAMILY_ID"))
        .map_err(|e| e.within("genl family reply"))
}

/// Parses an `IPVS_CMD_SET_INFO` reply.
pub fn parse_info(attrs_buf: &[u8]) -> PResult<Info> {
    let f = || -> PResult<Info> {
        let a = attributes(attrs_buf)?;
        Ok(Info {
            version: need(&a, IPVS_INFO_ATTR_VERSION, "VERSION")?.u32("VERSION")?,
            conn_tab_size: need(&a, IPVS_INFO_ATTR_CONN_TAB_SIZE, "CONN_TAB_SIZE")?
                .u32("CONN_TAB_SIZE")?,
        })
    };
    f().map_err(|e| e.within("info reply"))
}

/// Parses a `STATS` (32-bit counters, 64-bit bytes) or `STATS64` nest.
pub fn parse_stats(buf: &[u8], is64: bool) -> PResult<Stats> {
    let a = attributes(buf)?;
    let get = |ty: u16, name: &str, wide: bool| -> PResult<u64> {
        match find(&a, ty) {
            None => Ok(0),
            Some(at) if wide || is64 => at.u64(name),
            Some(at) => at.u32(name).map(u64::from),
        }
    };
    Ok(Stats {
        conns: get(IPVS_STATS_ATTR_CONNS, "CONNS", false)?,
        inpkts: get(IPVS_STATS_ATTR_INPKTS, "INPKTS", false)?,
        outpkts: get(IPVS_STATS_ATTR_OUTPKTS, "OUTPKTS", false)?,
        inbytes: get(IPVS_STATS_ATTR_INBYTES, "INBYTES", true)?,
        outbytes: get(IPVS_STATS_ATTR_OUTBYTES, "OUTBYTES", true)?,
        cps: get(IPVS_STATS_ATTR_CPS, "CPS", false)?,
        inpps: get(IPVS_STATS_ATTR_INPPS, "INPPS", false)?,
        outpps: get(IPVS_STATS_ATTR_OUTPPS, "OUTPPS", false)?,
        inbps: get(IPVS_STATS_ATTR_INBPS, "INBPS", false)?,
        outbps: get(IPVS_STATS_ATTR_OUTBPS, "OUTBPS", false)?,
    })
}

fn stats_of(a: &[Attr<'_>], ty32: u16, ty64: u16) -> PResult<Stats> {
    if let Some(s) = find(a, ty64) {
        parse_stats(s.payload, true).map_err(|e| e.within("STATS64"))
    } else if let Some(s) = find(a, ty32) {
        parse_stats(s.payload, false).map_err(|e| e.within("STATS"))
    } else {
        Ok(Stats::default())
    }
}

/// Parses the attributes of an `IPVS_CMD_ATTR_SERVICE` nest.
pub fn parse_service(buf: &[u8]) -> PResult<KernelService> {
    let f = || -> PResult<KernelService> {
        let a = attributes(buf)?;
        let family = decode_family(need(&a, IPVS_SVC_ATTR_AF, "AF")?.u16("AF")?)
            .map_err(|e| e.within("attr AF"))?;
        let key = match find(&a, IPVS_SVC_ATTR_FWMARK)
            .map(|m| m.u32("FWMARK"))
            .transpose()?
        {
            Some(mark) if mark != 0 => ServiceKey::Fwmark { mark, family },
            _ => {
                let protocol =
                    match need(&a, IPVS_SVC_ATTR_PROTOCOL, "PROTOCOL")?.u16("PROTOCOL")? {
                        IPPROTO_TCP => Protocol::Tcp,
                        IPPROTO_UDP => Protocol::Udp,
                        IPPROTO_SCTP => Protocol::Sctp,
                        p => {
                            return Err(ParseError::new(
                                "attr PROTOCOL",
                                format!("unknown protocol {p}"),
                            ));
                        }
                    };
                let ip = decode_addr(family, need(&a, IPVS_SVC_ATTR_ADDR, "ADDR")?, "ADDR")?;
                let port = need(&a, IPVS_SVC_ATTR_PORT, "PORT")?.be16("PORT")?;
                ServiceKey::Addr {
                    protocol,
                    addr: SocketAddr::new(ip, port),
                }
            }
        };
        let flags: [u8; 8] = need(&a, IPVS_SVC_ATTR_FLAGS, "FLAGS")?.fixed("FLAGS")?;
        let netmask = decode_netmask(
            family,
            need(&a, IPVS_SVC_ATTR_NETMASK, "NETMASK")?.u32("NETMASK")?,
        )
        .map_err(|e| e.within("attr NETMASK"))?;
        let pe_name = find(&a, IPVS_SVC_ATTR_PE_NAME)
            .map(|p| p.string("PE_NAME"))
            .transpose()?
            .filter(|s| !s.is_empty());
        Ok(KernelService {
            key,
            scheduler: need(&a, IPVS_SVC_ATTR_SCHED_NAME, "SCHED_NAME")?.string("SCHED_NAME")?,
            flags: u32::from_ne_bytes(flags[..4].try_into().expect("4 bytes")),
            timeout: need(&a, IPVS_SVC_ATTR_TIMEOUT, "TIMEOUT")?.u32("TIMEOUT")?,
            netmask,
            pe_name,
            stats: stats_of(&a, IPVS_SVC_ATTR_STATS, IPVS_SVC_ATTR_STATS64)?,
            dests: Vec::new(),
        })
    };
    f().map_err(|e| e.within("service"))
}

/// Parses the attributes of an `IPVS_CMD_ATTR_DEST` nest; `family` is the
/// service's, used when the kernel omits `ADDR_FAMILY` (before Linux 4.7).
pub fn parse_dest(buf: &[u8], family: Family) -> PResult<KernelDest> {
    let f = || -> PResult<KernelDest> {
        let a = attributes(buf)?;
        let family = match find(&a, IPVS_DEST_ATTR_ADDR_FAMILY) {
            Some(f) => {
                decode_family(f.u16("ADDR_FAMILY")?).map_err(|e| e.within("attr ADDR_FAMILY"))?
            }
            None => family,
        };
        let ip = decode_addr(family, need(&a, IPVS_DEST_ATTR_ADDR, "ADDR")?, "ADDR")?;
        let port = need(&a, IPVS_DEST_ATTR_PORT, "PORT")?.be16("PORT")?;
        let fwd = need(&a, IPVS_DEST_ATTR_FWD_METHOD, "FWD_METHOD")?.u32("FWD_METHOD")?;
        let forward = Forward::from_kernel(fwd).ok_or_else(|| {
            ParseError::new(
                "attr FWD_METHOD",
                format!("unknown forwarding method {fwd}"),
            )
        })?;
        let opt_u32 = |ty: u16, name: &str| -> PResult<u32> {
            find(&a, ty).map(|x| x.u32(name)).unwrap_or(Ok(0))
        };
        // TUN_TYPE is informative only: vipd uses IPIP; read it to validate the layout
        if let Some(t) = find(&a, IPVS_DEST_ATTR_TUN_TYPE) {
            t.u8("TUN_TYPE")?;
        }
        Ok(KernelDest {
            dest: Dest {
                addr: SocketAddr::new(ip, port),
                forward,
                weight: need(&a, IPVS_DEST_ATTR_WEIGHT, "WEIGHT")?.u32("WEIGHT")?,
                upper_threshold: opt_u32(IPVS_DEST_ATTR_U_THRESH, "U_THRESH")?,
                lower_threshold: opt_u32(IPVS_DEST_ATTR_L_THRESH, "L_THRESH")?,
            },
            active_conns: opt_u32(IPVS_DEST_ATTR_ACTIVE_CONNS, "ACTIVE_CONNS")?,
            inactive_conns: opt_u32(IPVS_DEST_ATTR_INACT_CONNS, "INACT_CONNS")?,
            persist_conns: opt_u32(IPVS_DEST_ATTR_PERSIST_CONNS, "PERSIST_CONNS")?,
            stats: stats_of(&a, IPVS_DEST_ATTR_STATS, IPVS_DEST_ATTR_STATS64)?,
        })
    };
    f().map_err(|e| e.within("dest"))
}

/// Finds the nest `ty` in a message's top-level attributes.
pub fn top_nest<'a>(attrs_buf: &'a [u8], ty: u16, name: &str) -> PResult<&'a [u8]> {
    let a = attributes(attrs_buf)?;
    Ok(need(&a, ty, name)?.payload)
}

#[cfg(test)]
mod tests;
