//! Kernel IPVS tier: vipd programs the kernel's IP Virtual Server table over
//! generic netlink, the way `ipvsadm` does, without shelling out.
//!
//! # Layout
//! - [`consts`]: uapi constants, named as in `include/uapi/linux/ip_vs.h`.
//! - [`attrs`]: pure encode/decode of IPVS generic netlink messages (no I/O).
//! - [`socket`]: the generic netlink socket: family resolution, requests, dumps.
//! - [`reconcile`]: the diff between desired and kernel state, and its application.
//! - [`list`]: `ipvsadm -Ln`-style rendering of the kernel table.
//! - [`conns`]: `ipvsadm -Lnc`-style rendering of the connection table.
//! - [`desired`]: the config's `[ipvs]` section as kernel-level desired state.
//! - [`cli`]: the `vipd ipvs plan|apply|list` subcommands.
//! - [`task`]: the reconcile loop of `vipd run` (start, SIGHUP, interval, shutdown).
//!
//! The types in this file describe kernel-level state and do not depend on the
//! config module: the config is converted into `Vec<Service>` by the caller.

pub mod attrs;
pub mod cli;
pub mod conns;
pub mod consts;
pub mod desired;
pub mod list;
pub mod reconcile;
pub mod save;
pub mod socket;
pub mod task;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

pub use reconcile::{Op, Policy, Reconciler};
pub use socket::IpvsSocket;

/// Address family of a service or real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    Inet,
    /// IPv6 (`AF_INET6`).
    Inet6,
}

impl Family {
    /// The family of an IP address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }

    /// Longest prefix for this family: 32 or 128.
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::Inet => 32,
            Family::Inet6 => 128,
        }
    }
}

/// Transport protocol of an address:port service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (`-t`).
    Tcp,
    /// UDP (`-u`).
    Udp,
    /// SCTP (`--sctp-service`).
    Sctp,
}

impl Protocol {
    /// Upper-case name as `ipvsadm -L` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// What identifies a virtual service in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    /// A virtual address and port for one protocol (`-t/-u/--sctp-service`).
    Addr {
        /// Transport protocol.
        protocol: Protocol,
        /// Virtual IP and port.
        addr: SocketAddr,
    },
    /// A firewall mark set by netfilter or tc (`-f`), per address family.
    Fwmark {
        /// The mark (non-zero).
        mark: u32,
        /// Address family of the marked traffic.
        family: Family,
    },
}

impl ServiceKey {
    /// Address family of the service.
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Addr { addr, .. } => Family::of(addr.ip()),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

impl fmt::Display for ServiceKey {
    /// The service as ipvsadm's command line names it: `-t 192.0.2.10:80`,
    /// `-u [2001:db8::1]:53`, `--sctp-service ...`, `-f 99` or `-f 99 -6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Addr { protocol, addr } => {
                let flag = match protocol {
                    Protocol::Tcp => "-t",
                    Protocol::Udp => "-u",
                    Protocol::Sctp => "--sctp-service",
                };
                write!(f, "{flag} {addr}")
            }
            ServiceKey::Fwmark {
                mark,
                family: Family::Inet,
            } => write!(f, "-f {mark}"),
            ServiceKey::Fwmark {
                mark,
                family: Family::Inet6,
            } => write!(f, "-f {mark} -6"),
        }
    }
}

/// How the director forwards packets to a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forward {
    /// Direct routing / gatewaying (`-g`): the real server answers the client
    /// itself, so it needs the VIP on a non-ARPing interface.
    Dr,
    /// Masquerading (`-m`): replies must pass back through the director.
    Nat,
    /// IP-in-IP tunnelling (`-i`).
    Tunnel,
    /// Local node: reported by the kernel for a real server that is the
    /// director itself. vipd never requests it.
    Local,
}

impl Forward {
    /// Kernel value (`IP_VS_CONN_F_*` under `IP_VS_CONN_F_FWD_MASK`).
    pub fn to_kernel(self) -> u32 {
        match self {
            Forward::Nat => consts::IP_VS_CONN_F_MASQ,
            Forward::Local => consts::IP_VS_CONN_F_LOCALNODE,
            Forward::Tunnel => consts::IP_VS_CONN_F_TUNNEL,
            Forward::Dr => consts::IP_VS_CONN_F_DROUTE,
        }
    }

    /// Decodes a kernel forwarding value; `None` for methods vipd does not know.
    pub fn from_kernel(v: u32) -> Option<Self> {
        match v & consts::IP_VS_CONN_F_FWD_MASK {
            consts::IP_VS_CONN_F_MASQ => Some(Forward::Nat),
            consts::IP_VS_CONN_F_LOCALNODE => Some(Forward::Local),
            consts::IP_VS_CONN_F_TUNNEL => Some(Forward::Tunnel),
            consts::IP_VS_CONN_F_DROUTE => Some(Forward::Dr),
            _ => None,
        }
    }

    /// Name as `ipvsadm -L` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Forward::Nat => "Masq",
            Forward::Local => "Local",
            Forward::Tunnel => "Tunnel",
            Forward::Dr => "Route",
        }
    }

    /// ipvsadm switch (`-g`, `-m`, `-i`).
    pub fn switch(self) -> &'static str {
        match self {
            Forward::Nat => "-m",
            Forward::Tunnel => "-i",
            Forward::Dr | Forward::Local => "-g",
        }
    }
}

/// A real server (IPVS "destination") of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dest {
    /// Real server address. Its port is 0 for fwmark services; for DR and
    /// tunnel services it must equal the virtual port (the kernel ignores it).
    pub addr: SocketAddr,
    /// Forwarding method.
    pub forward: Forward,
    /// Scheduling weight; 0 quiesces the server (no new connections).
    pub weight: u32,
    /// Upper connection threshold (0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub lower_threshold: u32,
}

/// A virtual service with its real servers, as vipd wants it in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Identity in the kernel.
    pub key: ServiceKey,
    /// Scheduler name (`rr`, `wrr`, `sh`, ...); the kernel loads `ip_vs_<name>`.
    pub scheduler: String,
    /// Persistence timeout in seconds; `Some` sets `IP_VS_SVC_F_PERSISTENT`.
    pub timeout: Option<u32>,
    /// Persistence granularity as a prefix length (32 or 128 = per client
    /// address; 24 = per client /24). Only meaningful with `timeout`.
    pub netmask: u8,
    /// Other service flags (`IP_VS_SVC_F_ONEPACKET`, `..._SCHED1..3`). The
    /// persistent and hashed bits are ignored here.
    pub flags: u32,
    /// Real servers.
    pub dests: Vec<Dest>,
    /// Real servers that must leave the kernel at once instead of draining:
    /// those whose health check failed (a quiesced server keeps every
    /// client that has a persistence template on it) and a sorry server
    /// that is no longer needed.
    pub evicted: Vec<SocketAddr>,
}

impl Service {
    /// A service with no persistence, full netmask and no flags.
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Self {
        Service {
            key,
            scheduler: scheduler.into(),
            timeout: None,
            netmask: key.family().max_prefix(),
            flags: 0,
            dests: Vec::new(),
            evicted: Vec::new(),
        }
    }

    /// The flags word sent to the kernel.
    pub fn kernel_flags(&self) -> u32 {
        let user = self.flags & !(consts::IP_VS_SVC_F_PERSISTENT | consts::IP_VS_SVC_F_HASHED);
        user | if self.timeout.is_some() {
            consts::IP_VS_SVC_F_PERSISTENT
        } else {
            0
        }
    }

    /// Checks what the kernel would reject or silently ignore.
    pub fn validate(&self) -> Result<(), ModelError> {
        let svc = self.key;
        let err = |reason: String| {
            Err(ModelError {
                service: svc,
                reason,
            })
        };
        if let ServiceKey::Fwmark { mark: 0, .. } = svc {
            return err("fwmark 0 is not a valid mark".into());
        }
        if self.scheduler.is_empty() || self.scheduler.len() >= consts::IP_VS_SCHEDNAME_MAXLEN {
            return err(format!(
                "scheduler name {:?} must be 1 to {} bytes",
                self.scheduler,
                consts::IP_VS_SCHEDNAME_MAXLEN - 1
            ));
        }
        if self.netmask > svc.family().max_prefix() {
            return err(format!(
                "netmask /{} is longer than the address",
                self.netmask
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.dests {
            if !seen.insert(d.addr) {
                return err(format!("real server {} is listed twice", d.addr));
            }
            if let ServiceKey::Addr { addr, .. } = svc {
                if matches!(d.forward, Forward::Dr | Forward::Tunnel)
                    && d.addr.port() != addr.port()
                {
                    return err(format!(
                        "real server {}: port {} differs from the virtual port {}, but {} \
                         forwarding cannot change ports (the kernel ignores it); use port {} or NAT",
                        d.addr,
                        d.addr.port(),
                        addr.port(),
                        d.forward.name(),
                        addr.port()
                    ));
                }
            }
            if d.forward == Forward::Nat && Family::of(d.addr.ip()) != svc.family() {
                return err(format!(
                    "real server {}: NAT cannot change the address family",
                    d.addr
                ));
            }
            if d.upper_threshold != 0 && d.lower_threshold > d.upper_threshold {
                return err(format!(
                    "real server {}: lower threshold {} is above the upper threshold {}",
                    d.addr, d.lower_threshold, d.upper_threshold
                ));
            }
        }
        Ok(())
    }
}

/// A service definition the kernel would reject or misapply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IPVS service {service}: {reason}")]
pub struct ModelError {
    /// The offending service.
    pub service: ServiceKey,
    /// What is wrong and how to fix it.
    pub reason: String,
}

/// Traffic counters and rates of a service or real server (`STATS64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Packets in (client to server).
    pub inpkts: u64,
    /// Packets out (server to client; 0 for DR and tunnel).
    pub outpkts: u64,
    /// Bytes in.
    pub inbytes: u64,
    /// Bytes out.
    pub outbytes: u64,
    /// Connections per second (estimator, 2 s granularity).
    pub cps: u64,
    /// Packets in per second.
    pub inpps: u64,
    /// Packets out per second.
    pub outpps: u64,
    /// Bytes in per second.
    pub inbps: u64,
    /// Bytes out per second.
    pub outbps: u64,
}

/// A real server as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDest {
    /// Its configuration.
    pub dest: Dest,
    /// Active (established) connections.
    pub active_conns: u32,
    /// Inactive (other states) connections.
    pub inactive_conns: u32,
    /// Persistence templates pointing at it.
    pub persist_conns: u32,
    /// Counters.
    pub stats: Stats,
}

impl KernelDest {
    /// True when no connection or persistence template uses the server.
    pub fn is_idle(&self) -> bool {
        self.active_conns == 0 && self.inactive_conns == 0 && self.persist_conns == 0
    }
}

/// A virtual service as read back from the kernel, with its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelService {
    /// Identity.
    pub key: ServiceKey,
    /// Scheduler name.
    pub scheduler: String,
    /// Raw flags, including `IP_VS_SVC_F_HASHED`, which the kernel sets.
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful only when persistent).
    pub timeout: u32,
    /// Persistence netmask as a prefix length.
    pub netmask: u8,
    /// Persistence engine name (`sip`), if any.
    pub pe_name: Option<String>,
    /// Counters.
    pub stats: Stats,
    /// Real servers (filled by a separate `GET_DEST` dump).
    pub dests: Vec<KernelDest>,
}

impl KernelService {
    /// True when the persistent flag is set.
    pub fn persistent(&self) -> bool {
        self.flags & consts::IP_VS_SVC_F_PERSISTENT != 0
    }

    /// The desired-state view of this service (drops counters and the
    /// kernel-owned hashed flag), e.g. to adopt a hand-made table.
    pub fn to_service(&self) -> Service {
        Service {
            key: self.key,
            scheduler: self.scheduler.clone(),
            timeout: self.persistent().then_some(self.timeout),
            netmask: self.netmask,
            flags: self.flags & !(consts::IP_VS_SVC_F_PERSISTENT | consts::IP_VS_SVC_F_HASHED),
            dests: self.dests.iter().map(|d| d.dest.clone()).collect(),
            evicted: Vec::new(),
        }
    }
}

/// `IPVS_CMD_GET_INFO` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// IPVS version code, e.g. `0x010201` for 1.2.1.
    pub version: u32,
    /// Size of the connection hash table.
    pub conn_tab_size: u32,
}

/// Errors from talking to the kernel. The errno is kept so that reconcile can
/// treat `EEXIST`/`ENOENT`/`ESRCH` as "already done".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The generic netlink family "IPVS" does not exist.
    #[error("IPVS is not available in this kernel: load it with `modprobe ip_vs`")]
    NotAvailable,
    /// The kernel refused with `EPERM`.
    #[error(
        "{op}: permission denied: programming IPVS needs CAP_NET_ADMIN (run vipd as root or grant it the capability)"
    )]
    PermissionDenied {
        /// What was attempted.
        op: String,
    },
    /// `ENOENT` on a service command: the scheduler (or persistence engine)
    /// module is missing.
    #[error(
        "{op}: unknown scheduler {scheduler:?}: the kernel has no module `ip_vs_{scheduler}` (try `modprobe ip_vs_{scheduler}`)"
    )]
    UnknownScheduler {
        /// What was attempted.
        op: String,
        /// The scheduler name that was sent.
        scheduler: String,
    },
    /// Any other negative acknowledgement from the kernel.
    #[error("{op}: {source}")]
    Kernel {
        /// What was attempted.
        op: String,
        /// The kernel's error, with its errno.
        source: io::Error,
    },
    /// The netlink socket itself failed.
    #[error("IPVS netlink socket: {0}")]
    Io(#[source] io::Error),
    /// The kernel sent something vipd cannot parse.
    #[error("IPVS netlink reply: {0}")]
    Parse(#[from] attrs::ParseError),
}

impl Error {
    /// The kernel errno behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::NotAvailable => Some(libc::ENOENT),
            Error::PermissionDenied { .. } => Some(libc::EPERM),
            Error::UnknownScheduler { .. } => Some(libc::ENOENT),
            Error::Kernel { source, .. } | Error::Io(source) => source.raw_os_error(),
            Error::Parse(_) => None,
        }
    }
}

/// Result alias for IPVS operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
