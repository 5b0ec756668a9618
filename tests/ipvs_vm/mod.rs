//! The VM tests of issue 16 (the parent, `tests/ipvs_kernel.rs`, has the
//! helpers and the naming rule: `table_*` in the guest's first network
//! namespace, `e2e_dr_*` in the DR director's): `vipd run` driven by health
//! checks with real traffic from several clients, one-shot convergence,
//! listings, and the lifecycle of `vipd run` (SIGHUP, own_all, on_shutdown).

mod health;
mod lifecycle;
mod oneshot;

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vipd::ipvs::{IpvsSocket, KernelService};

use super::{run, vipd_bin};

/// A `vipd run` child with its config file and log.
pub(crate) struct VipdRun {
    child: Child,
    pub(crate) config: PathBuf,
    log: PathBuf,
}

impl VipdRun {
    /// Starts `vipd run` on `toml`, in a directory of its own named `name`.
    pub(crate) fn start(name: &str, toml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vipd-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("vipd.toml");
        let log = dir.join("vipd.log");
        std::fs::write(&config, toml).unwrap();
        let child = Command::new(vipd_bin())
            .args(["run", "-c", config.to_str().unwrap()])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        VipdRun { child, config, log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes a new config and sends SIGHUP.
    pub(crate) fn reload(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
        run("kill", &["-HUP", &self.child.id().to_string()]);
    }

    /// Waits until the log has `needle` `times` times.
    pub(crate) fn wait_log(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then asserts a clean exit; returns the log.
    pub(crate) fn stop(mut self) -> String {
        run("kill", &["-TERM", &self.child.id().to_string()]);
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "vipd run exited with {status}: {log}");
        log
    }
}

impl Drop for VipdRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls the kernel table until `cond` holds; returns how long it took.
pub(crate) fn wait_table(
    s: &mut IpvsSocket,
    what: &str,
    cond: impl Fn(&[KernelService]) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let table = s.services().unwrap();
        if cond(&table) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}: {table:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The real servers (address, weight) of the service `key`, sorted.
pub(crate) fn dests(t: &[KernelService], key: vipd::ipvs::ServiceKey) -> Vec<(String, u32)> {
    let mut d: Vec<_> = t
        .iter()
        .filter(|s| s.key == key)
        .flat_map(|s| s.dests.iter())
        .map(|d| (d.dest.addr.to_string(), d.dest.weight))
        .collect();
    d.sort();
    d
}

/// The client's eight extra addresses (tests/vm/guest.sh).
pub(crate) fn clients() -> Vec<String> {
    (11..=18).map(|i| format!("203.0.113.{i}")).collect()
}

/// One GET of `url` from each client address (curl --interface), in one
/// process; the bodies, `ERR` where a request failed.
pub(crate) fn fetch_from(clients: &[String], url: &str) -> Vec<String> {
    let script = "u=$1; shift; for ip in \"$@\"; do \
                  curl -s -m 5 --interface \"$ip\" \"$u\" || echo ERR; done";
    let mut args = vec!["netns", "exec", "client", "sh", "-c", script, "sh", url];
    args.extend(clients.iter().map(String::as_str));
    run("ip", &args).lines().map(str::to_string).collect()
}

/// A real server whose web servers are stopped; they start again when this
/// is dropped (also when a test fails, so that the next tests have them).
pub(crate) struct Stopped {
    ns: &'static str,
    ports: &'static [u16],
}

impl Stopped {
    /// Starts the web servers again now.
    pub(crate) fn restart(self) {}
}

impl Drop for Stopped {
    fn drop(&mut self) {
        start_web(self.ns, self.ports);
    }
}

/// [`fetch_from`], repeated (at most three times) while a request fails: the
/// first packets of a fresh topology wait for ARP, and a loaded host slows
/// TCG; for requests that must all succeed.
pub(crate) fn fetch_settled(clients: &[String], url: &str) -> Vec<String> {
    let mut replies = fetch_from(clients, url);
    for _ in 0..2 {
        if !replies.iter().any(|r| r == "ERR") {
            break;
        }
        replies = fetch_from(clients, url);
    }
    replies
}

/// Stops every web server of a real server's namespace (its check fails,
/// its traffic is refused) until the returned guard is dropped; `ports` are
/// those tests/vm/guest.sh serves there.
pub(crate) fn stop_web(ns: &'static str, ports: &'static [u16]) -> Stopped {
    let pids = run("ip", &["netns", "pids", ns]);
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").arg(pid).status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run("ip", &["netns", "pids", ns]).trim().is_empty() {
        assert!(Instant::now() < deadline, "{ns}: web servers still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    Stopped { ns, ports }
}

/// Starts the real server's web servers again, as tests/vm/guest.sh did.
fn start_web(ns: &str, ports: &[u16]) {
    for p in ports {
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "busybox",
                "httpd",
                "-p",
                &format!("0.0.0.0:{p}"),
                "-h",
                &format!("/tmp/www-{ns}"),
            ],
        );
    }
}

/// GET `path` from the admin endpoint at `addr` (in this namespace).
pub(crate) fn admin_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
