//! The `vipd` binary under a stand-in service manager: READY=1 on
//! `$NOTIFY_SOCKET` once it serves, SIGHUP reloads (seen through the admin
//! API), SIGTERM sends STOPPING=1 and exits cleanly.

mod health_support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use health_support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_notifies_readiness_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("vipd-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let backend = TestBackend::start("a").await;
    let (web, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let conf = |weight: u32| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
             protocol = \"tcp\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n\
             backends = [{{ address = \"{}\", weight = {weight} }}]\n",
            backend.addr
        )
    };
    let file = dir.join("vipd.toml");
    std::fs::write(&file, conf(1)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["run", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = tokio::task::block_in_place(|| recv(&notify));
    assert_eq!(ready, "READY=1");
    // Ready means serving: both sockets answer without any retry.
    assert_eq!(request(web).await.as_deref(), Ok("a"));
    let (status, _) = http(admin, "GET", "/api/status", None, "").await;
    assert_eq!(status, 200);

    std::fs::write(&file, conf(5)).unwrap();
    signal(child.id(), "-HUP");
    let status_msg = tokio::task::block_in_place(|| recv(&notify));
    assert_eq!(status_msg, "STATUS=configuration reloaded");
    let (_, body) = http(admin, "GET", "/api/pools/p", None, "").await;
    let pool: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pool["backends"][0]["configured_weight"], 5);
    let (_, body) = http(admin, "GET", "/api/status", None, "").await;
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["reloads"], 1);

    signal(child.id(), "-TERM");
    let stopping = tokio::task::block_in_place(|| recv(&notify));
    assert_eq!(stopping, "STOPPING=1");
    let exit = tokio::task::block_in_place(|| child.wait().unwrap());
    assert!(exit.success(), "{exit:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
