//! Generic netlink I/O for IPVS on top of `netlink-sys`: resolves the "IPVS"
//! family through the genl controller, sends one request at a time and
//! collects its replies (ack, error or dump). Blocking: async callers wrap
//! calls in `tokio::task::spawn_blocking`.
//!
//! The socket belongs to the network namespace of the thread that opens it,
//! and IPVS tables are per namespace.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};

use super::attrs::{self, Reply, Request};
use super::consts::*;
use super::{Error, Info, KernelDest, KernelService, Result, Service, ServiceKey};

/// How long to wait for the kernel before giving up on a reply.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A generic netlink socket bound to the kernel's IPVS family.
#[derive(Debug)]
pub struct IpvsSocket {
    sock: Socket,
    family: u16,
    seq: u32,
}

impl IpvsSocket {
    /// Opens a socket and resolves the IPVS family. Fails with
    /// [`Error::NotAvailable`] when the `ip_vs` module is not loaded.
    pub fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(Error::Io)?;
        sock.bind_auto().map_err(Error::Io)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(Error::Io)?;
        socket2::SockRef::from(&sock)
            .set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(Error::Io)?;
        let mut s = IpvsSocket {
            sock,
            family: 0,
            seq: std::process::id().wrapping_mul(7919),
        };
        let seq = s.next_seq();
        let replies = s
            .exchange(&attrs::get_family(seq, IPVS_GENL_NAME), seq, false)
            .map_err(|e| match e {
                RawError::Errno(libc::ENOENT) => Error::NotAvailable,
                RawError::Errno(libc::EPERM) => Error::PermissionDenied {
                    op: "resolve the IPVS netlink family".into(),
                },
                RawError::Errno(e) => Error::Kernel {
                    op: "resolve the IPVS netlink family".into(),
                    source: io::Error::from_raw_os_error(e),
                },
                RawError::Other(e) => e,
            })?;
        let (_, body) = replies.first().ok_or_else(|| {
            Error::Parse(attrs::ParseError {
                context: "genl family reply".into(),
                reason: "the controller acknowledged without data".into(),
            })
        })?;
        s.family = attrs::parse_family_id(body)?;
        Ok(s)
    }

    /// The resolved IPVS family id (dynamic, e.g. 32).
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `req` and returns the `(cmd, attributes)` of each data reply.
    pub fn request(&mut self, req: Request<'_>) -> Result<Vec<(u8, Vec<u8>)>> {
        let seq = self.next_seq();
        let bytes = req.encode(self.family, seq);
        self.exchange(&bytes, seq, req.is_dump())
            .map_err(|e| match e {
                RawError::Other(e) => e,
                RawError::Errno(libc::EPERM) => Error::PermissionDenied {
                    op: req.to_string(),
                },
                RawError::Errno(libc::ENOENT) if req.scheduler().is_some() => {
                    Error::UnknownScheduler {
                        op: req.to_string(),
                        scheduler: req.scheduler().unwrap_or_default().to_string(),
                    }
                }
                RawError::Errno(errno) => Error::Kernel {
                    op: req.to_string(),
                    source: io::Error::from_raw_os_error(errno),
                },
            })
    }

    fn exchange(
        &mut self,
        bytes: &[u8],
        seq: u32,
        dump: bool,
    ) -> Result<Vec<(u8, Vec<u8>)>, RawError> {
        self.sock
            .send(bytes, 0)
            .map_err(|e| RawError::Other(Error::Io(e)))?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| RawError::Other(Error::Io(e)))?;
            for msg in attrs::messages(&buf).map_err(|e| RawError::Other(e.into()))? {
                if msg.seq != seq {
                    continue; // a late reply to an earlier, abandoned request
                }
                match attrs::reply(&msg).map_err(|e| RawError::Other(e.into()))? {
                    Reply::Data { cmd, attrs } => out.push((cmd, attrs.to_vec())),
                    Reply::Error(errno) => return Err(RawError::Errno(errno)),
                    Reply::Ack if !dump => return Ok(out),
                    Reply::Done if dump => return Ok(out),
                    Reply::Ack | Reply::Done => {}
                }
            }
        }
    }

    /// IPVS version and connection table size.
    pub fn info(&mut self) -> Result<Info> {
        let replies = self.request(Request::GetInfo)?;
        let (_, body) = replies.first().ok_or_else(|| {
            Error::Parse(attrs::ParseError {
                context: "info reply".into(),
                reason: "no data".into(),
            })
        })?;
        Ok(attrs::parse_info(body)?)
    }

    /// All services with their real servers and counters.
    pub fn services(&mut self) -> Result<Vec<KernelService>> {
        let mut out = Vec::new();
        for (_, body) in self.request(Request::GetServices)? {
            let nest = attrs::top_nest(&body, IPVS_CMD_ATTR_SERVICE, "SERVICE")?;
            out.push(attrs::parse_service(nest)?);
        }
        for svc in &mut out {
            svc.dests = self.dests(&svc.key)?;
        }
        Ok(out)
    }

    /// The real servers of one service.
    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<KernelDest>> {
        let family = key.family();
        let mut out = Vec::new();
        for (_, body) in self.request(Request::GetDests(key))? {
            let nest = attrs::top_nest(&body, IPVS_CMD_ATTR_DEST, "DEST")?;
            out.push(attrs::parse_dest(nest, family)?);
        }
        Ok(out)
    }

    /// Creates a service (without its real servers).
    pub fn add_service(&mut self, svc: &Service) -> Result<()> {
        self.request(Request::NewService(svc)).map(drop)
    }

    /// Changes scheduler, persistence, netmask and flags of a service.
    pub fn edit_service(&mut self, svc: &Service) -> Result<()> {
        self.request(Request::SetService(svc)).map(drop)
    }

    /// Deletes a service and its real servers.
    pub fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.request(Request::DelService(key)).map(drop)
    }

    /// Adds a real server.
    pub fn add_dest(&mut self, key: &ServiceKey, dest: &super::Dest) -> Result<()> {
        self.request(Request::NewDest(key, dest)).map(drop)
    }

    /// Changes a real server's forwarding, weight and thresholds.
    pub fn edit_dest(&mut self, key: &ServiceKey, dest: &super::Dest) -> Result<()> {
        self.request(Request::SetDest(key, dest)).map(drop)
    }

    /// Removes a real server.
    pub fn delete_dest(&mut self, key: &ServiceKey, addr: std::net::SocketAddr) -> Result<()> {
        self.request(Request::DelDest(key, addr)).map(drop)
    }

    /// Removes every service (`ipvsadm -C`).
    pub fn flush(&mut self) -> Result<()> {
        self.request(Request::Flush).map(drop)
    }
}

/// A failure before it gets the request's context.
enum RawError {
    Errno(i32),
    Other(Error),
}
