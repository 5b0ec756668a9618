//! Reconciliation: the difference between the services vipd wants and what
//! the kernel has, as a list of operations, and their idempotent application.
//!
//! vipd owns the services in its desired set (and those it managed earlier in
//! this process), or every service when `own_all` is set; it never touches
//! the others. A real server that leaves the config is first quiesced (weight
//! 0: no new connections) and deleted once the drain period has passed, or
//! earlier when the kernel reports no connection left on it. The
//! [`Reconciler`] keeps the quiesce timestamps between passes; a one-shot
//! reconciler (`vipd ipvs plan|apply`) has none, so it takes a weight-0
//! server that is not in the file for one draining: deleted once idle,
//! otherwise shown as a pending [`Op::Draining`] (never "already matches").
//! A real server failing its health check ([`Service::evicted`]) is deleted
//! at once, without draining.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::consts::*;
use super::{Dest, Error, Family, IpvsSocket, KernelService, Result, Service, ServiceKey};

/// Who owns what, and how long removed real servers drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Delete kernel services that are not in the desired set.
    pub own_all: bool,
    /// Time between quiescing a removed real server and deleting it.
    pub drain_period: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            own_all: false,
            drain_period: Duration::from_secs(30),
        }
    }
}

/// One change to the kernel table. `Display` prints the equivalent ipvsadm
/// command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a service (its real servers follow as `AddDest`).
    AddService(Service),
    /// Change scheduler, persistence, netmask or flags.
    EditService(Service),
    /// Delete a service and its real servers.
    DeleteService(ServiceKey),
    /// Add a real server.
    AddDest {
        /// The service.
        service: ServiceKey,
        /// The real server.
        dest: Dest,
    },
    /// Change a real server's forwarding, weight or thresholds.
    EditDest {
        /// The service.
        service: ServiceKey,
        /// The real server as wanted.
        dest: Dest,
    },
    /// Set a removed real server's weight to 0 so that it drains.
    QuiesceDest {
        /// The service.
        service: ServiceKey,
        /// The real server, with weight 0.
        dest: Dest,
    },
    /// Delete a drained real server.
    DeleteDest {
        /// The service.
        service: ServiceKey,
        /// The real server's address.
        addr: SocketAddr,
    },
    /// A real server that is not in the file and still has connections:
    /// its deletion is pending (one-shot mode only; applying it does nothing).
    Draining {
        /// The service.
        service: ServiceKey,
        /// The real server's address.
        addr: SocketAddr,
        /// Its active and inactive connections.
        conns: u32,
        /// Persistence templates pointing at it.
        templates: u32,
    },
}

impl Op {
    /// The service this operation is about.
    pub fn service(&self) -> &ServiceKey {
        match self {
            Op::AddService(s) | Op::EditService(s) => &s.key,
            Op::DeleteService(k) => k,
            Op::AddDest { service, .. }
            | Op::EditDest { service, .. }
            | Op::QuiesceDest { service, .. }
            | Op::DeleteDest { service, .. }
            | Op::Draining { service, .. } => service,
        }
    }
}

/// ipvsadm's `-M`: dotted mask for IPv4, prefix length for IPv6.
fn netmask_arg(family: Family, prefix: u8) -> String {
    match family {
        Family::Inet => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            IpAddr::V4(Ipv4Addr::from(mask)).to_string()
        }
        Family::Inet6 => prefix.to_string(),
    }
}

/// ipvsadm's `-b` names for scheduler flags.
fn sched_flags_arg(scheduler: &str, flags: u32) -> Option<String> {
    let names: [&str; 3] = match scheduler {
        "sh" => ["sh-fallback", "sh-port", "flag-3"],
        "mh" => ["mh-fallback", "mh-port", "flag-3"],
        _ => ["flag-1", "flag-2", "flag-3"],
    };
    let set: Vec<&str> = [IP_VS_SVC_F_SCHED1, IP_VS_SVC_F_SCHED2, IP_VS_SVC_F_SCHED3]
        .iter()
        .zip(names)
        .filter(|(bit, _)| flags & **bit != 0)
        .map(|(_, n)| n)
        .collect();
    (!set.is_empty()).then(|| set.join(","))
}

fn fmt_service(f: &mut fmt::Formatter<'_>, cmd: &str, s: &Service) -> fmt::Result {
    write!(f, "ipvsadm {cmd} {} -s {}", s.key, s.scheduler)?;
    if let Some(t) = s.timeout {
        write!(f, " -p {t}")?;
        let family = s.key.family();
        if s.netmask != family.max_prefix() {
            write!(f, " -M {}", netmask_arg(family, s.netmask))?;
        }
    }
    if s.flags & IP_VS_SVC_F_ONEPACKET != 0 {
        f.write_str(" -o")?;
    }
    if let Some(b) = sched_flags_arg(&s.scheduler, s.flags) {
        write!(f, " -b {b}")?;
    }
    Ok(())
}

fn fmt_dest(f: &mut fmt::Formatter<'_>, cmd: &str, service: &ServiceKey, d: &Dest) -> fmt::Result {
    write!(
        f,
        "ipvsadm {cmd} {service} -r {} {} -w {}",
        d.addr,
        d.forward.switch(),
        d.weight
    )?;
    if d.upper_threshold != 0 {
        write!(f, " -x {}", d.upper_threshold)?;
    }
    if d.lower_threshold != 0 {
        write!(f, " -y {}", d.lower_threshold)?;
    }
    Ok(())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddService(s) => fmt_service(f, "-A", s),
            Op::EditService(s) => fmt_service(f, "-E", s),
            Op::DeleteService(k) => write!(f, "ipvsadm -D {k}"),
            Op::AddDest { service, dest } => fmt_dest(f, "-a", service, dest),
            Op::EditDest { service, dest } | Op::QuiesceDest { service, dest } => {
                fmt_dest(f, "-e", service, dest)
            }
            Op::DeleteDest { service, addr } => write!(f, "ipvsadm -d {service} -r {addr}"),
            Op::Draining {
                service,
                addr,
                conns,
                templates,
            } => {
                write!(
                    f,
                    "ipvsadm -d {service} -r {addr} # draining: {conns} connections"
                )?;
                if *templates > 0 {
                    write!(f, ", {templates} persistence templates")?;
                }
                Ok(())
            }
        }
    }
}

/// True when the kernel service already has `want`'s parameters (vipd sets
/// no persistence engine, and an edit without one removes it).
fn same_params(want: &Service, have: &KernelService) -> bool {
    let have_flags = have.flags & !IP_VS_SVC_F_HASHED;
    have.pe_name.is_none()
        && want.scheduler == have.scheduler
        && want.kernel_flags() == have_flags
        && want.netmask == have.netmask
        && want.timeout.is_none_or(|t| t == have.timeout)
}

/// Outcome of applying a plan.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Operations the kernel accepted (or that were already in effect).
    pub applied: Vec<Op>,
    /// Operations that failed, with the kernel's error.
    pub failed: Vec<(Op, Error)>,
}

impl ApplyReport {
    /// True when every operation succeeded.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }
}

fn errno_in(e: &Error, set: &[i32]) -> bool {
    e.errno().is_some_and(|n| set.contains(&n))
}

/// Applies one operation, treating "already done" answers as success:
/// `EEXIST` on add becomes an edit, `ESRCH`/`ENOENT` on edit becomes an add,
/// and on delete means it is already gone.
pub fn apply_op(sock: &mut IpvsSocket, op: &Op) -> Result<()> {
    const GONE: &[i32] = &[libc::ESRCH, libc::ENOENT];
    match op {
        Op::AddService(s) => match sock.add_service(s) {
            Err(e) if errno_in(&e, &[libc::EEXIST]) => sock.edit_service(s),
            r => r,
        },
        Op::EditService(s) => match sock.edit_service(s) {
            Err(e @ Error::Kernel { .. }) if errno_in(&e, &[libc::ESRCH]) => sock.add_service(s),
            r => r,
        },
        Op::DeleteService(k) => match sock.delete_service(k) {
            Err(e @ Error::Kernel { .. }) if errno_in(&e, GONE) => Ok(()),
            r => r,
        },
        Op::AddDest { service, dest } => match sock.add_dest(service, dest) {
            Err(e) if errno_in(&e, &[libc::EEXIST]) => sock.edit_dest(service, dest),
            r => r,
        },
        Op::EditDest { service, dest } => match sock.edit_dest(service, dest) {
            Err(e) if errno_in(&e, &[libc::ENOENT]) => sock.add_dest(service, dest),
            r => r,
        },
        Op::QuiesceDest { service, dest } => match sock.edit_dest(service, dest) {
            Err(e) if errno_in(&e, GONE) => Ok(()),
            r => r,
        },
        Op::DeleteDest { service, addr } => match sock.delete_dest(service, *addr) {
            Err(e) if errno_in(&e, GONE) => Ok(()),
            r => r,
        },
        Op::Draining { .. } => Ok(()),
    }
}

/// Applies every operation in order, continuing past failures, so that one
/// bad service does not hold back the others.
pub fn apply(sock: &mut IpvsSocket, ops: Vec<Op>) -> ApplyReport {
    let mut report = ApplyReport::default();
    for op in ops {
        match apply_op(sock, &op) {
            Ok(()) => report.applied.push(op),
            Err(e) => report.failed.push((op, e)),
        }
    }
    report
}

/// Reconciliation state kept across passes: which services vipd manages and
/// when each removed real server was quiesced.
#[derive(Debug, Clone)]
pub struct Reconciler {
    policy: Policy,
    /// Services desired now or at an earlier pass and not yet deleted, so that
    /// a service removed from the config is removed from the kernel too.
    managed: BTreeSet<ServiceKey>,
    /// Removed real servers with weight 0, and since when.
    quiesced: HashMap<(ServiceKey, SocketAddr), Instant>,
    /// No history across runs: a weight-0 server not in the file is draining.
    one_shot: bool,
}

impl Reconciler {
    /// A reconciler with no history.
    pub fn new(policy: Policy) -> Self {
        Reconciler {
            policy,
            managed: BTreeSet::new(),
            quiesced: HashMap::new(),
            one_shot: false,
        }
    }

    /// A reconciler for one `plan` or `apply`: it cannot know since when a
    /// server has been quiesced, so it deletes a weight-0 server that is not
    /// in the file once idle and otherwise plans an [`Op::Draining`].
    pub fn one_shot(policy: Policy) -> Self {
        Reconciler {
            one_shot: true,
            ..Reconciler::new(policy)
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (on config reload); history is kept.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Real servers currently draining.
    pub fn draining(&self) -> usize {
        self.quiesced.len()
    }

    fn owns(&self, key: &ServiceKey, desired: &[Service]) -> bool {
        self.policy.own_all || self.managed.contains(key) || desired.iter().any(|s| s.key == *key)
    }

    /// What to change so that the kernel matches `desired`. Pure: it reads the
    /// reconciler's history but does not change it (see [`Reconciler::record`]).
    pub fn plan(&self, desired: &[Service], actual: &[KernelService], now: Instant) -> Vec<Op> {
        let mut ops = Vec::new();
        for want in desired {
            let Some(have) = actual.iter().find(|k| k.key == want.key) else {
                ops.push(Op::AddService(want.clone()));
                for d in &want.dests {
                    ops.push(Op::AddDest {
                        service: want.key,
                        dest: d.clone(),
                    });
                }
                continue;
            };
            if !same_params(want, have) {
                ops.push(Op::EditService(want.clone()));
            }
            for d in &want.dests {
                match have.dests.iter().find(|k| k.dest.addr == d.addr) {
                    None => ops.push(Op::AddDest {
                        service: want.key,
                        dest: d.clone(),
                    }),
                    Some(k) if k.dest != *d => ops.push(Op::EditDest {
                        service: want.key,
                        dest: d.clone(),
                    }),
                    Some(_) => {}
                }
            }
            let mut gone: Vec<_> = have
                .dests
                .iter()
                .filter(|k| !want.dests.iter().any(|d| d.addr == k.dest.addr))
                .collect();
            gone.sort_by_key(|k| k.dest.addr);
            for k in gone {
                let addr = k.dest.addr;
                if self.policy.drain_period.is_zero() || want.evicted.contains(&addr) {
                    ops.push(Op::DeleteDest {
                        service: want.key,
                        addr,
                    });
                } else if k.dest.weight != 0 {
                    ops.push(Op::QuiesceDest {
                        service: want.key,
                        dest: Dest {
                            weight: 0,
                            ..k.dest.clone()
                        },
                    });
                } else if let Some(since) = self.quiesced.get(&(want.key, addr)) {
                    if k.is_idle()
                        || now.saturating_duration_since(*since) >= self.policy.drain_period
                    {
                        ops.push(Op::DeleteDest {
                            service: want.key,
                            addr,
                        });
                    }
                } else if self.one_shot && k.is_idle() {
                    ops.push(Op::DeleteDest {
                        service: want.key,
                        addr,
                    });
                } else if self.one_shot {
                    ops.push(Op::Draining {
                        service: want.key,
                        addr,
                        conns: k.active_conns.saturating_add(k.inactive_conns),
                        templates: k.persist_conns,
                    });
                }
                // weight 0 with no timestamp: record() starts the clock now
            }
        }
        let mut extra: Vec<_> = actual
            .iter()
            .filter(|k| !desired.iter().any(|s| s.key == k.key) && self.owns(&k.key, desired))
            .map(|k| k.key)
            .collect();
        extra.sort();
        ops.extend(extra.into_iter().map(Op::DeleteService));
        ops
    }

    /// Updates the history after `applied` (a subset of the plan for
    /// `desired` against `actual`) went through at `now`.
    pub fn record(
        &mut self,
        desired: &[Service],
        actual: &[KernelService],
        applied: &[Op],
        now: Instant,
    ) {
        for op in applied {
            if let Op::DeleteService(k) = op {
                self.managed.remove(k);
            }
        }
        self.managed.extend(desired.iter().map(|s| s.key));
        let mut quiesced = HashMap::new();
        for want in desired {
            let Some(have) = actual.iter().find(|k| k.key == want.key) else {
                continue;
            };
            for k in &have.dests {
                let id = (want.key, k.dest.addr);
                if want.dests.iter().any(|d| d.addr == k.dest.addr) {
                    continue;
                }
                let deleted = applied.iter().any(
                    |op| matches!(op, Op::DeleteDest { service, addr } if (*service, *addr) == id),
                );
                let zeroed = k.dest.weight == 0
                    || applied.iter().any(|op| matches!(op, Op::QuiesceDest { service, dest } if (*service, dest.addr) == id));
                if !deleted && zeroed {
                    quiesced.insert(id, self.quiesced.get(&id).copied().unwrap_or(now));
                }
            }
        }
        self.quiesced = quiesced;
    }

    /// One pass: read the kernel table, plan, apply, record. Errors reading
    /// the table are returned; errors of single operations are in the report.
    pub fn reconcile(
        &mut self,
        sock: &mut IpvsSocket,
        desired: &[Service],
        now: Instant,
    ) -> Result<ApplyReport> {
        let actual = sock.services()?;
        let report = apply(sock, self.plan(desired, &actual, now));
        self.record(desired, &actual, &report.applied, now);
        Ok(report)
    }

    /// Operations that remove every service vipd owns (`on_shutdown = "remove"`).
    pub fn shutdown_plan(&self, desired: &[Service], actual: &[KernelService]) -> Vec<Op> {
        let mut keys: Vec<_> = actual
            .iter()
            .map(|k| k.key)
            .filter(|k| self.owns(k, desired))
            .collect();
        keys.sort();
        keys.into_iter().map(Op::DeleteService).collect()
    }
}

#[cfg(test)]
mod tests;
