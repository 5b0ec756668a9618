//! Dropping root after the listeners are bound, as nginx and HAProxy do with
//! `user`/`group`.

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("global.user: no user named {0:?} exists; create it or fix the name")]
    NoUser(String),
    #[error("global.group: no group named {0:?} exists; create it or fix the name")]
    NoGroup(String),
    #[error("cannot switch to user {user:?}: {source} ({hint})")]
    Switch {
        user: String,
        #[source]
        source: nix::Error,
        /// What stood in the way, from the process's uid and capabilities.
        hint: String,
    },
}

/// Switch the whole process (every thread) to `user` and `group` (default:
/// the user's primary group), clearing supplementary groups. Nothing to do
/// when the process already runs as them (systemd `User=`/`Group=`).
pub fn drop_to(user: &str, group: Option<&str>) -> Result<(), PrivilegeError> {
    use nix::unistd::{Group, User, getgid, getuid, setgid, setgroups, setuid};
    let u = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| PrivilegeError::NoUser(user.into()))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| PrivilegeError::NoGroup(g.into()))?
                .gid
        }
        None => u.gid,
    };
    if getuid() == u.uid && getgid() == gid && !getuid().is_root() {
        return Ok(());
    }
    let switch = |source| PrivilegeError::Switch {
        user: user.into(),
        source,
        hint: hint(user),
    };
    setgroups(&[gid]).map_err(switch)?;
    setgid(gid).map_err(switch)?;
    setuid(u.uid).map_err(switch)?;
    Ok(())
}

/// CAP_SETGID and CAP_SETUID, bits 6 and 7 of a capability set.
const SWITCH_CAPS: u64 = (1 << 6) | (1 << 7);

/// Why this process may not switch users: not started as root, or root
/// without the capabilities (a systemd `CapabilityBoundingSet=` that left
/// them out).
fn hint(user: &str) -> String {
    let uid = nix::unistd::getuid();
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    match (uid.is_root(), effective & SWITCH_CAPS == SWITCH_CAPS) {
        (true, false) => "vipd runs as root but without CAP_SETUID and CAP_SETGID; \
            under systemd, add them to CapabilityBoundingSet= as contrib/vipd.service does"
            .to_string(),
        (false, _) => format!(
            "vipd runs as uid {uid}, not root: start it as root (it binds, then switches to {user:?}), \
             or run it as {user:?} from the start (systemd User={user}) and remove `[global] user`"
        ),
        (true, true) => "the system refused it".to_string(),
    }
}
