//! No configuration value crashes or stalls vipd: every numeric and duration
//! field is fed its extremes (0, 1, the edges of its range, the largest value
//! of its type, and for durations "0s", "1ms" and absurdly long ones), first
//! to `vipd check`, then by SIGHUP to one running vipd. Out-of-range values
//! get an error naming the field; nothing panics or aborts; a reload never
//! takes the process down, and the configuration in service keeps serving.
//!
//! The values go to "spare" sections (a listener, pool, vhost... that no
//! request of the test uses), so that an accepted extreme cannot disturb the
//! "web" listener the test sends traffic through.
//!
//! To cover a new field, add one line to `FIELDS` in `bounds_table`.

mod bounds_table;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bounds_table::{FIELDS, Field, declared_fields, render, rounds, with_certificate};
use support::{Vipd, check_within, echo_thread, echo_through, fifo};

/// `vipd check -c path` under the address-space limit of
/// [`check_within`], with a generous deadline.
fn vipd_check(path: &Path) -> (Option<i32>, String) {
    check_within(path, Duration::from_secs(60))
}

/// Peak and current resident memory of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Whether `log` reports `field` as a problem: vipd prints
/// `file:line:col: <field>: <problem>`.
fn names(log: &str, field: &Field) -> bool {
    log.contains(&format!(": {}: ", field.path()))
}

#[test]
fn vipd_check_accepts_every_value_in_range_and_names_the_field_of_every_other_without_crashing() {
    let dir = support::tempdir();
    let path = dir.join("bounds.toml");
    let web: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let base = render(web, &[], true);
    std::fs::write(&path, &base).unwrap();
    let (code, text) = vipd_check(&path);
    assert_eq!(code, Some(0), "the base file must pass:\n{base}\n{text}");
    for round in rounds() {
        let values: Vec<(&Field, &str)> =
            round.iter().map(|(f, t)| (*f, t.text.as_str())).collect();
        let config = render(web, &values, true);
        std::fs::write(&path, &config).unwrap();
        let (code, text) = vipd_check(&path);
        let context = format!("file:\n{config}\nvipd check said:\n{text}");
        assert!(!text.contains("panicked"), "{context}");
        let bad: Vec<&Field> = round
            .iter()
            .filter(|(_, t)| !t.valid)
            .map(|(f, _)| *f)
            .collect();
        assert_eq!(code, Some(if bad.is_empty() { 0 } else { 64 }), "{context}");
        for (f, t) in &round {
            assert_eq!(
                names(&text, f),
                !t.valid,
                "{} = {} must be {}; {context}",
                f.path(),
                t.text,
                if t.valid {
                    "accepted"
                } else {
                    "refused, naming the field"
                }
            );
        }
        if !bad.is_empty() {
            let n = bad.len();
            assert!(
                text.contains(&format!(": {n} configuration error")),
                "one error per bad field ({n}); {context}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_reload_takes_vipd_down_whatever_number_the_new_file_carries() {
    let started = Instant::now();
    let echo = echo_thread();
    let mut vipd = Vipd::run(&render(echo, &[], false));
    let addr = vipd.listening(&["web", "spare"])["web"];
    assert_eq!(echo_through(addr), b"ping");
    let path = vipd.dir.join("vipd.toml");
    let pid = vipd.child.id();
    let mut reloads = 0;
    let mut peak = 0;
    // Sends `config` by SIGHUP, waits until the log says `outcome` and every
    // `needle`, then checks that vipd is up, serves "web" and stays small.
    let mut reload = |vipd: &mut Vipd, config: &str, outcome: &str, needles: &[String]| {
        let from = vipd.log().len();
        std::fs::write(&path, config).unwrap();
        vipd.signal("HUP");
        reloads += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = vipd.log();
            let new = &log[from..];
            if new.contains(outcome) && needles.iter().all(|n| new.contains(n.as_str())) {
                break;
            }
            assert!(
                vipd.alive(),
                "vipd exited on reload of:\n{config}\nlog:\n{new}"
            );
            assert!(
                Instant::now() < deadline,
                "no {outcome:?} naming {needles:?} after reloading:\n{config}\nlog:\n{new}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(vipd.alive(), "vipd exited after reloading:\n{config}");
        assert_eq!(echo_through(addr), b"ping", "after reloading:\n{config}");
        let (hwm, rss) = memory_kib(pid);
        assert!(
            hwm < 300 * 1024,
            "peak RSS {hwm} KiB (now {rss} KiB) after reloading:\n{config}"
        );
        peak = peak.max(hwm);
    };
    // every out-of-range value on its own: the error must name it, and the
    // configuration in service must keep serving
    for f in FIELDS {
        for t in f.extremes().into_iter().filter(|t| !t.valid) {
            let config = render(echo, &[(f, &t.text)], true);
            let needle = format!(": {}: ", f.path());
            reload(&mut vipd, &config, "reload failed", &[needle]);
        }
    }
    // in-range extremes are accepted, a few files for all of them
    for round in rounds() {
        let values: Vec<(&Field, &str)> = round
            .iter()
            .filter(|(_, t)| t.valid)
            .map(|(f, t)| (*f, t.text.as_str()))
            .collect();
        if !values.is_empty() {
            reload(
                &mut vipd,
                &render(echo, &values, true),
                "reload complete",
                &[],
            );
        }
    }
    // a certificate that is a FIFO nobody writes to: refused, not waited for
    let pipe = vipd.dir.join("cert.fifo");
    fifo(&pipe);
    let needle = "the certificate file is not a regular file".to_string();
    reload(
        &mut vipd,
        &with_certificate(echo, &pipe, &pipe),
        "reload failed",
        &[needle],
    );
    // an admin token file that is a FIFO or /dev/zero: refused, not read
    for token in [pipe.as_path(), Path::new("/dev/zero")] {
        let config = render(echo, &[], false).replace(
            "[admin]\n",
            &format!("[admin]\ntoken_file = {:?}\n", token.display().to_string()),
        );
        let needle = format!(
            "cannot read token_file {}: not a regular file",
            token.display()
        );
        reload(&mut vipd, &config, "reload failed", &[needle]);
    }
    let log = vipd.log();
    assert!(!log.contains("panicked"), "log:\n{log}");
    assert!(vipd.alive());
    eprintln!(
        "{reloads} reloads in {:?}, peak RSS {peak} KiB",
        started.elapsed()
    );
}

#[test]
fn a_certificate_path_naming_a_device_a_fifo_or_a_huge_file_is_refused_at_once() {
    let dir = support::tempdir();
    let web: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let (pipe, big) = (dir.join("cert.fifo"), dir.join("big.pem"));
    fifo(&pipe);
    std::fs::write(&big, vec![b'A'; 2 * 1024 * 1024]).unwrap();
    let zero = Path::new("/dev/zero");
    let path = dir.join("vipd.toml");
    for (file, problem) in [
        (zero, "the certificate file is not a regular file"),
        (&pipe, "the certificate file is not a regular file"),
        (&big, "the certificate file is larger than 1048576 bytes"),
    ] {
        std::fs::write(&path, with_certificate(web, file, &big)).unwrap();
        let started = Instant::now();
        let (code, text) = vipd_check(&path);
        assert_eq!(code, Some(64), "{text}");
        assert!(
            text.contains(&format!(
                "vhost \"tls\".certificates[0].cert: {}: {problem}",
                file.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("the key file is larger than 1048576 bytes"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_out_of_range_value_is_reported_once_with_its_bounds_and_default() {
    let text = r#"[global]
workers = 100000

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "web"
idle_timeout = "0s"

[[pool]]
name = "web"
mh_table_size = 2147483647
connect_timeout = "99999999999d"
backends = [{ address = "127.0.0.1:0", weight = 65536 }]
"#;
    assert_eq!(
        support::problems(text),
        vec![
            "2:1: global.workers: 100000 is outside 0..=1024 threads\n    fix: set `workers` between 0 and 1024 (default 0)",
            "9:1: listener \"web\".idle_timeout: \"0s\" is outside 100ms..=7d\n    fix: set `idle_timeout` between \"100ms\" and \"7d\" (default \"1h\")",
            "11:1: pool \"web\".backends[0].address: 127.0.0.1:0 has port 0, which no connection can reach\n    fix: write the port the server listens on, e.g. \"192.0.2.21:80\"",
            "11:1: pool \"web\".backends[0].weight: 65536 is outside 0..=65535\n    fix: set `weight` between 0 and 65535 (default 1)",
            "13:1: pool \"web\".mh_table_size: 2147483647 is not a prime in 7..=131071\n    fix: use a prime well above 100 x the number of backends, at most 131071 (the kernel's largest), e.g. 65537",
            "14:1: pool \"web\".connect_timeout: \"99999999999d\" is outside 100ms..=1d\n    fix: set `connect_timeout` between \"100ms\" and \"1d\" (default \"5s\")",
        ]
    );
}

#[test]
fn a_health_check_path_or_host_that_no_request_can_carry_is_refused() {
    let text = r#"[[pool]]
name = "web"
backends = [{ address = "127.0.0.1:80" }]
health = { kind = "http", path = "healthz now", host = "a b" }
"#;
    assert_eq!(
        support::problems(text),
        vec![
            "1:1: pool \"web\".health.path: \"healthz now\" is not a request path\n    fix: write an absolute path without spaces, e.g. \"/healthz\"",
            "1:1: pool \"web\".health.host: \"a b\" is not a host name\n    fix: write the Host the backend expects, e.g. \"www.example.com\"",
        ]
    );
}

#[test]
fn an_ipvs_real_server_listed_twice_is_refused_as_a_pool_backend_is() {
    let text = r#"[[ipvs.service]]
name = "web"
address = "198.51.100.100:80"
real_servers = [{ address = "192.0.2.21:80" }, { address = "192.0.2.21:80", weight = 2 }]
"#;
    assert_eq!(
        support::problems(text),
        vec![
            "1:2: ipvs.service \"web\".real_servers[1]: real server 192.0.2.21:80 is listed twice\n    fix: list each real server once; use `weight` to give it a larger share",
        ]
    );
}

#[test]
fn every_numeric_and_duration_field_of_the_file_format_is_in_the_extremes_table() {
    let declared = declared_fields();
    for f in FIELDS {
        assert!(
            declared.iter().any(|(s, n)| *s == f.section && n == f.name),
            "{} is in FIELDS but not declared in src/config/file.rs: {declared:?}",
            f.path()
        );
    }
    let missing: Vec<String> = declared
        .iter()
        .filter(|(s, n)| !FIELDS.iter().any(|f| f.section == *s && f.name == n))
        .map(|(s, n)| format!("{s:?} {n}"))
        .collect();
    assert!(
        missing.is_empty(),
        "add these fields to FIELDS in tests/config_bounds.rs, with the range vipd enforces: {missing:?}"
    );
}
