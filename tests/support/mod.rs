//! Shared fixtures for integration tests: echo backends, an in-process proxy,
//! and the real `vipd` binary with its log parsed for readiness.
#![allow(dead_code)] // each test binary uses a different subset
#![allow(unreachable_pub)] // `pub` here means "for the test files", which the lint cannot see

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP echo server on 127.0.0.1:0 that echoes until the client half-closes,
/// then closes its side.
pub async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A backend that writes `name` and closes, recording how many connections it saw.
pub async fn named_backend(name: &'static str) -> (SocketAddr, Arc<Mutex<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            *c.lock().unwrap() += 1;
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// An address on which nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Parse `text` as a configuration (panics with the errors if invalid).
pub fn config(text: &str) -> vipd::config::Config {
    match vipd::config::parse(text, Path::new("test.toml")) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid:\n{e}"),
    }
}

/// The problems `text` has as a configuration, one line each as vipd
/// prints them after the file name (`line:col: field: problem` and the
/// fix); none if it is valid.
pub fn problems(text: &str) -> Vec<String> {
    match vipd::config::parse(text, Path::new("site.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

/// Start the proxy in-process.
pub async fn start(text: &str) -> Arc<vipd::app::Running> {
    vipd::app::Running::start(config(text)).await.unwrap()
}

/// Read a whole stream until EOF.
pub async fn read_all<R: AsyncReadExt + Unpin>(r: &mut R) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).await.unwrap();
    v
}

/// The real `vipd` binary running a config file, its stderr collected.
pub struct Vipd {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<()>,
    pub dir: PathBuf,
}

impl Vipd {
    /// Write `config` to a temp dir and run `vipd run -c` on it.
    pub fn run(config: &str) -> Self {
        let dir = tempdir();
        let path = dir.join("vipd.toml");
        std::fs::write(&path, config).unwrap();
        Self::run_file(&path, dir)
    }

    pub fn run_file(path: &Path, dir: PathBuf) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vipd"));
        cmd.args(["run", "-c"]).arg(path);
        Self::spawn(&mut cmd, dir)
    }

    /// Run a prepared command (e.g. vipd under a shell that sets limits).
    pub fn spawn(cmd: &mut Command, dir: PathBuf) -> Self {
        Self::start(cmd.stdout(Stdio::null()), dir)
    }

    /// Like [`Vipd::run`], with stdout (the access log) piped to
    /// `child.stdout` for the test to read, or not.
    pub fn run_piped(config: &str) -> Self {
        let dir = tempdir();
        let path = dir.join("vipd.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vipd"));
        cmd.args(["run", "-c"]).arg(&path).stdout(Stdio::piped());
        Self::start(&mut cmd, dir)
    }

    fn start(cmd: &mut Command, dir: PathBuf) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
                let _ = tx.send(());
            }
        });
        Self {
            child,
            lines,
            new_line: rx,
            dir,
        }
    }

    /// Wait until a log line contains `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.new_line.recv_timeout(left).is_err() {
                panic!(
                    "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Addresses of listeners by name, once all are listening.
    pub fn listening(&self, names: &[&str]) -> HashMap<String, SocketAddr> {
        names
            .iter()
            .map(|n| {
                let line = self.wait_for(&format!("listener={n} addr="), Duration::from_secs(10));
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .unwrap()
                    .parse()
                    .unwrap();
                (n.to_string(), addr)
            })
            .collect()
    }

    /// The admin endpoint's address, once it listens.
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_for("admin endpoint listening", Duration::from_secs(10));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr=IP:PORT in {line:?}"))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Send a signal by name ("TERM", "HUP", ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for exit up to `timeout`; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Vipd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("vipd-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Address space allowed to `vipd check` in the configuration tests: any
/// allocation near it aborts the check, which the tests see.
pub const CHECK_MEMORY_KIB: u64 = 1024 * 1024;

/// `vipd check -c path` under a [`CHECK_MEMORY_KIB`] address-space limit,
/// killed after `limit`: exit code (None if killed) and all it printed.
pub fn check_within(path: &Path, limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {CHECK_MEMORY_KIB} && exec \"$0\" check -c \"$1\" 2>&1"
        ))
        .arg(env!("CARGO_BIN_EXE_vipd"))
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let deadline = std::time::Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap();
    (code, String::from_utf8_lossy(&text).into_owned())
}

/// A TCP echo server on 127.0.0.1 on plain threads (for tests without a
/// runtime), one thread per connection.
pub fn echo_thread() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One exchange through an L4 listener in front of [`echo_thread`].
pub fn echo_through(addr: SocketAddr) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut got = [0; 4];
    s.read_exact(&mut got).unwrap();
    got.to_vec()
}

/// A FIFO at `path` (nothing ever writes to it).
pub fn fifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}
