//! `vipd demo` (the README's first command) works out of the box: its tcp,
//! http and https listeners reach both built-in backends.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use support::Vipd;

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_demo_serves_tcp_http_and_https_from_both_backends() {
    let dir = support::tempdir();
    let vipd = Vipd::spawn(Command::new(env!("CARGO_BIN_EXE_vipd")).arg("demo"), dir);
    vipd.wait_for("vipd started", Duration::from_secs(20));

    let mut seen = Vec::new();
    for path in ["/one", "/two"] {
        let reply = http_get("127.0.0.1:8080", path);
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(
            reply.contains(&format!("you asked for GET {path}")),
            "{reply}"
        );
        seen.push(reply.contains("hello from backend-1"));
    }
    assert_eq!(seen, [true, false], "round robin over the two backends");

    let reply = http_get("127.0.0.1:8081", "/routed");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(reply.contains("you asked for GET /routed"), "{reply}");

    let curl = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-w",
            "\n%{http_version}",
            "https://localhost:8443/tls",
        ])
        .output()
        .expect("curl is installed");
    let body = String::from_utf8(curl.stdout).unwrap();
    assert!(body.contains("you asked for GET /tls"), "{body}");
    assert!(body.ends_with("\n2"), "negotiated HTTP/2 over TLS: {body}");
}
