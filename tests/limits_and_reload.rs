//! Limits reached gracefully (per-client caps, file descriptor exhaustion)
//! and SIGHUP reloads under steady load.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn config(backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[global]
grace_period = "2s"

[[listener]]
name = "l4"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p"
{extra}

[[pool]]
name = "p"
backends = [{{ address = "{backend}" }}]
"#
    )
}

/// A tokio runtime on its own thread serving an echo backend.
fn echo_backend_thread() -> SocketAddr {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(echo_backend());
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    addr
}

fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut buf = vec![0; msg.len()];
    s.read_exact(&mut buf)?;
    assert_eq!(buf, msg);
    Ok(())
}

fn closed_without_data(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn one_client_over_its_connection_cap_is_refused_while_others_are_served() {
    let backend = echo_backend_thread();
    let vipd = Vipd::run(&config(backend, "max_connections_per_client = 2"));
    let addr = vipd.listening(&["l4"])["l4"];

    let mut a1 = connect_from([127, 0, 0, 2], addr);
    let mut a2 = connect_from([127, 0, 0, 2], addr);
    echo_round_trip(&mut a1, b"a1").unwrap();
    echo_round_trip(&mut a2, b"a2").unwrap();
    let mut a3 = connect_from([127, 0, 0, 2], addr);
    assert!(closed_without_data(&mut a3), "third connection was served");
    vipd.wait_for("per-client limit", Duration::from_secs(5));
    let mut b = connect_from([127, 0, 0, 3], addr);
    echo_round_trip(&mut b, b"b").expect("another client is served");
    drop(a1);
    // The freed slot is usable again (the proxy notices the close asynchronously).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from([127, 0, 0, 2], addr);
        if echo_round_trip(&mut again, b"again").is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
    }
}

#[test]
fn a_global_cap_below_the_number_of_listeners_starves_none_of_them() {
    let backend = echo_backend_thread();
    let second = r#"
[[listener]]
name = "other"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p"
"#;
    let text = config(backend, second).replace(
        "grace_period = \"2s\"",
        "grace_period = \"2s\"\nmax_connections = 1",
    );
    let vipd = Vipd::run(&text);
    let addrs = vipd.listening(&["l4", "other"]);
    // One connection at a time, to each listener in turn: every one is
    // served, whichever listener's accept loop is idle meanwhile.
    for round in 0..3 {
        for name in ["l4", "other"] {
            let mut s = connect_from([127, 0, 0, 4], addrs[name]);
            echo_round_trip(&mut s, b"ping")
                .unwrap_or_else(|e| panic!("round {round}: {name} not served: {e}"));
        }
    }
}

#[test]
fn running_out_of_file_descriptors_slows_accepting_and_recovers() {
    let backend = echo_backend_thread();
    let dir = tempdir();
    let path = dir.join("vipd.toml");
    std::fs::write(&path, config(backend, "")).unwrap();
    // Start vipd with a tiny descriptor limit.
    let script = format!(
        "ulimit -n 40 && exec {} run -c {}",
        env!("CARGO_BIN_EXE_vipd"),
        path.display()
    );
    let mut vipd = Vipd::spawn(
        Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null()),
        dir,
    );
    let addr = vipd.listening(&["l4"])["l4"];

    // Hold far more connections than 40 descriptors allow (2 per proxied connection).
    let mut held = Vec::new();
    for i in 0..60u32 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = s.write_all(&i.to_be_bytes());
        held.push(s);
    }
    vipd.wait_for("out of resources; backing off", Duration::from_secs(10));
    assert!(vipd.alive(), "vipd died when out of descriptors");
    drop(held);

    // Once descriptors are free again, new connections are served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if echo_round_trip(&mut s, b"recovered").is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "vipd did not recover:\n{}",
            vipd.log()
        );
    }
    assert!(vipd.alive());
}

#[test]
fn sighup_every_100ms_under_load_fails_no_connection() {
    let backend = echo_backend_thread();
    let mut vipd = Vipd::run(&config(backend, ""));
    let addr = vipd.listening(&["l4"])["l4"];

    // A long-lived connection opened before the reloads keeps streaming.
    let mut long = TcpStream::connect(addr).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo_round_trip(&mut long, b"first").unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pid = vipd.child.id();
    let s2 = stop.clone();
    let hupper = std::thread::spawn(move || {
        let mut n = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap();
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    });
    let started = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while started.elapsed() < Duration::from_secs(3) {
        let result = TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            echo_round_trip(&mut s, b"request")
        });
        match result {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
        echo_round_trip(&mut long, b"still here").unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reloads = hupper.join().unwrap();
    assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    assert!(ok > 50, "only {ok} connections in 3 s");
    assert!(reloads >= 20, "only {reloads} SIGHUPs sent");
    vipd.wait_for("reload complete", Duration::from_secs(5));
    assert!(!vipd.log().contains("reload failed"));
    assert!(vipd.alive());
}

#[test]
fn vipd_drops_to_the_configured_user_after_binding() {
    let backend = echo_backend_thread();
    let vipd = Vipd::run(&config(backend, "").replacen(
        "grace_period = \"2s\"",
        "grace_period = \"2s\"\nuser = \"nobody\"",
        1,
    ));
    let addr = vipd.listening(&["l4"])["l4"];
    vipd.wait_for("dropped privileges after binding", Duration::from_secs(5));
    let status = std::fs::read_to_string(format!("/proc/{}/status", vipd.child.id())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    let nobody = String::from_utf8(nobody.stdout).unwrap();
    let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
    assert_eq!(uids, vec![nobody.trim(); 4], "{uid_line}");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo_round_trip(&mut s, b"still serving").unwrap();
}

/// Open a connection from 127.0.0.1 (the trusted balancer) carrying `header`
/// and answer whether the proxy served it.
fn proxied_round_trip(to: SocketAddr, header: &[u8]) -> (TcpStream, bool) {
    let mut s = connect_from([127, 0, 0, 1], to);
    s.write_all(header).unwrap();
    let served = echo_round_trip(&mut s, b"hi").is_ok();
    (s, served)
}

#[test]
fn behind_a_trusted_balancer_the_per_client_cap_counts_each_claimed_client_not_the_balancer() {
    let backend = echo_backend_thread();
    let extra = "max_connections_per_client = 1\nproxy_protocol = true\n\
                 trusted_proxies = [\"127.0.0.0/8\"]\nheader_timeout = \"2s\"";
    let vipd = Vipd::run(&config(backend, extra));
    let addr = vipd.listening(&["l4"])["l4"];
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 4000 80\r\n").into_bytes();

    let (_a, served) = proxied_round_trip(addr, &v1("192.0.2.1"));
    assert!(served, "the balancer's first client was refused");
    let (_b, served) = proxied_round_trip(addr, &v1("192.0.2.2"));
    assert!(
        served,
        "a second client of the balancer was capped as the first"
    );
    // The same client named as IPv4-mapped IPv6 in a v2 header is the same
    // client: it does not get a second slot.
    let mapped = proxy_protocol_v2("[::ffff:192.0.2.1]:4001", "[::ffff:127.0.0.1]:80");
    let (mut again, served) = proxied_round_trip(addr, &mapped);
    assert!(
        !served && closed_without_data(&mut again),
        "client over its cap was served"
    );
    vipd.wait_for("per-client limit", Duration::from_secs(5));
}

fn proxy_protocol_v2(source: &str, destination: &str) -> Vec<u8> {
    vipd::proxy::proxy_protocol::encode_v2(source.parse().unwrap(), destination.parse().unwrap())
}
