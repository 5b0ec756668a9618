//! `vipd persistence list` against a real running vipd: the entries of
//! its persistence table, asked through the admin endpoint (token rules
//! included), printed like `ipvsadm -Lnc` prints templates.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::{Vipd, echo_thread};

/// A tcp listener in group "front" (5 minutes, one entry per client
/// address) in front of one echo backend, and the admin endpoint.
fn config(echo: SocketAddr, admin: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{admin}

[[persistence]]
name = "front"
timeout = "5m"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "app"
persistence = "front"

[[pool]]
name = "app"
backends = [{{ address = "{echo}" }}]
"#
    )
}

/// An exchange through `addr` from the client address `from`.
fn exchange_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    s
}

fn list(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["persistence", "list"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn persistence_list_prints_group_client_backend_connections_and_expiry_like_ipvsadm_lnc() {
    let echo = echo_thread();
    let vipd = Vipd::run(&config(echo, ""));
    let web = vipd.listening(&["web"])["web"];
    let admin = vipd.admin_addr().to_string();

    let (code, out, err) = list(&["--admin", &admin]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert_eq!(
        out,
        "vipd persistence entries (1 group)\ngroup  client  backend  conns  expire\n"
    );

    // 127.0.0.1 keeps its connection open; 127.0.0.2 closed its own
    let held = exchange_from("127.0.0.1", web);
    drop(exchange_from("127.0.0.2", web));
    let backend = echo.ip();
    let mut out = String::new();
    for _ in 0..100 {
        out = list(&["--admin", &admin]).1;
        if out.contains("127.0.0.2/32  ") && out.contains("  0  ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], "vipd persistence entries (1 group)");
    assert_eq!(lines[1], "group  client        backend    conns  expire");
    assert_eq!(
        lines[2],
        format!("front  127.0.0.1/32  {backend}  1      -")
    );
    // the timer runs from the close: 5 minutes less the seconds since
    let closed = format!("front  127.0.0.2/32  {backend}  0      04:");
    assert!(lines[3].starts_with(&closed), "{out}");
    let seconds: u32 = lines[3][closed.len()..].parse().unwrap();
    assert!(seconds <= 59, "{out}");
    drop(held);
}

#[test]
fn persistence_list_reads_the_endpoint_and_token_from_the_config_and_is_refused_without_the_token()
{
    let echo = echo_thread();
    let dir = support::tempdir();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let vipd = Vipd::run(&config(
        echo,
        &format!("token_file = {:?}", token.display().to_string()),
    ));
    let admin = vipd.admin_addr();
    vipd.listening(&["web"]);

    let (code, _, err) = list(&["--admin", &admin.to_string()]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "vipd: the admin endpoint {admin} answered 401: a valid bearer token is required\n"
        )
    );

    let (code, out, err) = list(&[
        "--admin",
        &admin.to_string(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert!(
        out.starts_with("vipd persistence entries (1 group)\n"),
        "{out}"
    );

    // from the config: the file names the port and the token
    let file = dir.join("vipd.toml");
    let text = config(
        echo,
        &format!("token_file = {:?}", token.display().to_string()),
    )
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""));
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = list(&["-c", file.to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert!(
        out.starts_with("vipd persistence entries (1 group)\n"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn persistence_list_on_a_config_without_admin_says_there_is_nothing_to_ask() {
    let dir = support::tempdir();
    let file = dir.join("vipd.toml");
    std::fs::write(
        &file,
        config("127.0.0.1:9".parse().unwrap(), "")
            .replace("[admin]\nlisten = \"127.0.0.1:0\"\n", ""),
    )
    .unwrap();
    let (code, _, err) = list(&["-c", file.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "vipd: the configuration has no [admin] section: vipd serves no admin endpoint to ask\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
