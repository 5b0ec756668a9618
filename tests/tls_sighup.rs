//! The real binary under SIGHUP: new certificates are picked up, a broken
//! key is refused with a logged error while the old certificate keeps
//! serving, and the process stays up and exits cleanly on SIGTERM.

mod tls_support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tls_support::*;

/// The child's stderr, collected line by line by a reader thread.
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn capture(child: &mut Child) -> Self {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Self(lines)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Wait until `needle` has been logged `count` times (20 s at most).
    async fn wait_for(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged {count} time(s); log:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_swaps_in_new_certificates_and_keeps_the_old_ones_when_a_key_is_broken() {
    let dir = TempDir::new("tls-sighup");
    let pki = Pki::new();
    let a1 = pki.issue(&["a.test"], Alg::Ecdsa);
    write_pair(dir.path(), "a", &a1);
    // A free port for the child (the config cannot report port 0 back).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let body = format!(
        r#"
[[listener]]
name = "front"
bind = "127.0.0.1:{port}"
protocol = "tls"
pool = "echo"
[[pool]]
name = "echo"
backends = [{{ address = "{{backend}}" }}]
[[vhost]]
name = "a"
hosts = ["a.test"]
pool = "echo"
certificates = [{{ cert = "a.crt", key = "a.key" }}]
"#
    );
    let path = write_config(dir.path(), &body, echo_backend().await);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["run", "-c"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::capture(&mut child);
    log.wait_for("vipd started", 1).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = Arc::new(client(TLS13_AND_12));
    assert_eq!(leaf_for(addr, "a.test", &client).await, a1.der);
    let mut open = connect(addr, "a.test", &client).await.unwrap();

    let a2 = pki.issue(&["a.test"], Alg::Rsa);
    write_pair(dir.path(), "a", &a2);
    signal(&child, "-HUP");
    log.wait_for("reload complete", 1).await;
    assert_eq!(leaf_for(addr, "a.test", &client).await, a2.der);
    assert_eq!(roundtrip(&mut open, b"still open").await, b"still open");

    std::fs::write(dir.path().join("a.key"), "garbage").unwrap();
    signal(&child, "-HUP");
    log.wait_for("reload failed", 1).await;
    assert!(
        log.text().contains(&format!(
            "vhost \"a\".certificates[0].key: {}: no PEM private key block found",
            dir.path().join("a.key").display()
        )),
        "log:\n{}",
        log.text()
    );
    assert_eq!(child.try_wait().unwrap(), None, "vipd is still running");
    assert_eq!(leaf_for(addr, "a.test", &client).await, a2.der);

    drop(open);
    signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "vipd did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
}
