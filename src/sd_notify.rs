//! systemd readiness notification (`Type=notify`): one datagram to the
//! socket named by `$NOTIFY_SOCKET`, written with std's `UnixDatagram`.
//! Without the variable (not under systemd) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Send `state` (e.g. `"READY=1"`) to the service manager. Returns
/// `Ok(false)` when `NOTIFY_SOCKET` is not set.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    notify_to(&path, state)?;
    Ok(true)
}

/// Send `state` to the socket at `path`; a leading `@` names a socket in
/// the abstract namespace, as systemd writes it.
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_to_delivers_the_state_as_one_datagram() {
        let dir = std::env::temp_dir().join(format!("vipd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn notify_to_reaches_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("vipd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
