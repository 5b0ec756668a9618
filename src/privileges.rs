//! Dropping root after the listeners are bound, as nginx and HAProxy do with
//! `user`/`group`.

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("global.user: no user named {0:?} exists; create it or fix the name")]
    NoUser(String),
    #[error("global.group: no group named {0:?} exists; create it or fix the name")]
    NoGroup(String),
    #[error(
        "cannot switch to user {user:?}: {source} (vipd must start as root to drop privileges)"
    )]
    Switch {
        user: String,
        #[source]
        source: nix::Error,
    },
}

/// Switch the whole process (every thread) to `user` and `group` (default:
/// the user's primary group), clearing supplementary groups.
pub fn drop_to(user: &str, group: Option<&str>) -> Result<(), PrivilegeError> {
    use nix::unistd::{Group, User, setgid, setgroups, setuid};
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
    let switch = |source| PrivilegeError::Switch {
        user: user.into(),
        source,
    };
    setgroups(&[gid]).map_err(switch)?;
    setgid(gid).map_err(switch)?;
    setuid(u.uid).map_err(switch)?;
    Ok(())
}
