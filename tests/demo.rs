//! `vipd demo` (the README's first command) works out of the box: it prints
//! what to try, and every printed command, run as printed with the real
//! `curl`, answers as the comment next to it says: the tcp listener
//! alternates backends, the http and https listeners echo the forwarding
//! headers and keep the client on one backend (one persistence group), and
//! the status page, `/metrics` and the JSON API answer on the admin
//! endpoint.

mod support;

use std::process::Command;
use std::time::Duration;

use support::Vipd;

/// Run a printed command line (`curl ...`, words split on spaces) and
/// return its stdout.
fn run(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "curl", "{line}");
    let out = Command::new("curl")
        .args(&words[1..])
        .output()
        .expect("curl is installed");
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The backend named in a demo answer (`hello from backend-N (...)`).
fn backend(answer: &str) -> &str {
    answer
        .strip_prefix("hello from ")
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("not a demo answer: {answer}"))
}

#[test]
fn the_demo_prints_commands_that_work_and_shows_headers_persistence_and_the_status_page() {
    let dir = support::tempdir();
    // The banner goes to stdout: send it to the captured stderr.
    let vipd = Vipd::spawn(
        Command::new("sh").args(["-c", "exec \"$0\" demo 1>&2", env!("CARGO_BIN_EXE_vipd")]),
        dir,
    );
    vipd.wait_for("vipd started", Duration::from_secs(20));
    let log = vipd.log();
    let printed: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.starts_with("vipd demo is running."))
        .take_while(|l| !l.starts_with("Stop it with Ctrl-C."))
        .collect();
    let commands: Vec<&str> = printed
        .iter()
        .filter_map(|l| l.strip_prefix("  "))
        .map(|l| l.split(" # ").next().unwrap().trim())
        .collect();
    assert_eq!(
        commands,
        [
            "curl http://127.0.0.1:8080/",
            "curl http://127.0.0.1:8081/",
            "curl -k https://localhost:8443/",
            "curl http://127.0.0.1:9100/metrics",
            "curl http://127.0.0.1:9100/api/status",
            "curl http://127.0.0.1:9100/api/persistence",
        ],
        "{log}"
    );
    assert!(
        printed.contains(&"Status page (open it in a browser): http://127.0.0.1:9100/"),
        "{log}"
    );

    // tcp: round robin over the two backends, the request echoed.
    let (one, two) = (run(commands[0]), run(commands[0]));
    assert!(one.contains("you asked for GET / from 127.0.0.1:"), "{one}");
    let mut pair = [backend(&one), backend(&two)];
    pair.sort_unstable();
    assert_eq!(pair, ["backend-1", "backend-2"], "{one}{two}");
    // The raw TCP path adds no headers: the backend sees curl's Host only.
    assert!(one.contains("\n  host: 127.0.0.1:8080\n"), "{one}");
    assert!(one.contains("\n  x-forwarded-for: (none)\n"), "{one}");

    // http: the forwarding headers vipd adds.
    let http = run(commands[1]);
    assert!(http.contains("\n  host: 127.0.0.1:8081\n"), "{http}");
    assert!(http.contains("\n  x-forwarded-for: 127.0.0.1\n"), "{http}");
    assert!(http.contains("\n  x-forwarded-proto: http\n"), "{http}");
    // https: the same client sticks to the same backend (one group).
    let https = run(commands[2]);
    assert!(https.contains("\n  host: localhost:8443\n"), "{https}");
    assert!(https.contains("\n  x-forwarded-proto: https\n"), "{https}");
    let stuck = backend(&http).to_string();
    for _ in 0..3 {
        assert_eq!(backend(&run(commands[1])), stuck);
        assert_eq!(backend(&run(commands[2])), stuck);
    }
    // HTTP/2 over TLS too.
    let h2 = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-w",
            "\n%{http_version}",
            "https://localhost:8443/tls",
        ])
        .output()
        .unwrap();
    let h2 = String::from_utf8(h2.stdout).unwrap();
    assert!(h2.contains("you asked for GET /tls"), "{h2}");
    assert!(h2.ends_with("\n2"), "negotiated HTTP/2 over TLS: {h2}");

    // The admin endpoint: metrics (Prometheus text), JSON, the page.
    let metrics = run(commands[3]);
    assert!(
        metrics
            .contains("\nvipd_listener_requests_total{listener=\"demo-http\",class=\"2xx\"} 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nvipd_persistence_hits_total{group=\"demo\"} 8\n"),
        "{metrics}"
    );
    let status: serde_json::Value = serde_json::from_str(&run(commands[4])).unwrap();
    let names: Vec<_> = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo-tcp", "demo-http", "demo-https"]);
    let states: Vec<_> = status["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["up", "up"]);
    assert_eq!(
        status["certificates"]["certificates"][0]["names"][0],
        "localhost"
    );
    let persistence: serde_json::Value = serde_json::from_str(&run(commands[5])).unwrap();
    let group = &persistence["groups"][0];
    assert_eq!(group["name"], "demo");
    assert_eq!(group["entries"][0]["client"], "127.0.0.1/32");
    let page = run("curl http://127.0.0.1:9100/");
    assert!(page.contains("<title>vipd status</title>"), "{page}");
}
