//! A hostile or careless operator's configuration files: within the 16 MiB
//! file cap, tens of thousands of sections or bad entries, references that
//! do not resolve, listeners that each serve every vhost. `vipd check`
//! answers in seconds with bounded memory, and a reload carrying such a
//! file is refused (or applied) while the configuration in service keeps
//! serving.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Vipd, check_within, echo_thread, echo_through};

/// A tcp listener "web" on port 0 to the echo server at `echo`.
fn served(echo: SocketAddr) -> String {
    format!(
        "[[pool]]\nname = \"echo\"\nbackends = [{{ address = \"{echo}\" }}]\n\n\
         [[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"echo\"\n"
    )
}

/// `n` pools, each with one out-of-range value.
fn bad_pools(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[pool]]\nname = \"bad{i}\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\nconnect_timeout = \"0s\"\n"
            )
        })
        .collect()
}

#[test]
fn a_file_of_20000_bad_entries_is_checked_in_seconds_and_lists_the_first_200() {
    let dir = support::tempdir();
    let path = dir.join("bad.toml");
    std::fs::write(&path, bad_pools(20_000)).unwrap();
    let started = Instant::now();
    let (code, text) = check_within(&path, Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(64),
        "after {took:?}: {}",
        &text[..text.len().min(2000)]
    );
    // A debug build on a loaded 2-core machine takes about 10 s; work
    // quadratic in the entries would take many minutes.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(text.starts_with(&format!("{}: 201 configuration errors\n", path.display())));
    assert_eq!(
        text.matches("connect_timeout: \"0s\" is outside").count(),
        200
    );
    assert!(text.ends_with(&format!(
        "{}: (file): 19800 more problems are not listed (vipd lists the first 200)\n    \
         fix: correct the problems above and run `vipd check` again\n",
        path.display()
    )));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reload_with_20000_bad_entries_is_refused_in_seconds_and_the_old_file_keeps_serving() {
    let echo = echo_thread();
    let base = served(echo);
    let mut vipd = Vipd::run(&base);
    let addr = vipd.listening(&["web"])["web"];
    assert_eq!(echo_through(addr), b"ping");
    std::fs::write(vipd.dir.join("vipd.toml"), base + &bad_pools(20_000)).unwrap();
    let started = Instant::now();
    vipd.signal("HUP");
    let line = vipd.wait_for("reload failed", Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(line.contains("201 configuration errors"), "{line}");
    assert!(vipd.alive());
    assert_eq!(echo_through(addr), b"ping");
    // the reload is over: TERM is heard again
    vipd.signal("TERM");
    assert_eq!(vipd.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_missing_pool_among_5000_names_ten_of_them_in_its_fix_not_all() {
    let dir = support::tempdir();
    let path = dir.join("refs.toml");
    let mut config = String::new();
    for i in 0..5000 {
        config += &format!(
            "[[pool]]\nname = \"pool-number-{i}\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n"
        );
    }
    for i in 0..5000 {
        config +=
            &format!("[[vhost]]\nname = \"v{i}\"\nhosts = [\"h{i}.test\"]\npool = \"nope{i}\"\n");
    }
    std::fs::write(&path, config).unwrap();
    let (code, text) = check_within(&path, Duration::from_secs(20));
    assert_eq!(code, Some(64), "{}", &text[..text.len().min(2000)]);
    assert!(text.len() < 256 * 1024, "{} bytes of report", text.len());
    let ten: Vec<String> = (0..10).map(|i| format!("pool-number-{i}")).collect();
    let fix = format!(
        "fix: define a [[pool]] with name = \"nope0\", or use one of: {}, ...\n",
        ten.join(", ")
    );
    assert!(text.contains(&fix), "{}", &text[..text.len().min(2000)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn listeners_that_together_serve_over_a_million_host_names_are_refused_once() {
    // 5000 listeners without `vhosts` each serve all 5000 vhosts: 25
    // million routes from a 600 KB file
    let dir = support::tempdir();
    let path = dir.join("routes.toml");
    let mut config =
        String::from("[[pool]]\nname = \"p\"\nbackends = [{ address = \"127.0.0.1:9\" }]\n");
    for i in 0..5000 {
        config += &format!("[[vhost]]\nname = \"v{i}\"\nhosts = [\"h{i}.test\"]\npool = \"p\"\n");
    }
    for i in 0..5000 {
        config += &format!(
            "[[listener]]\nname = \"l{i}\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n"
        );
    }
    std::fs::write(&path, config).unwrap();
    let (code, text) = check_within(&path, Duration::from_secs(20));
    assert_eq!(code, Some(64), "{}", &text[..text.len().min(2000)]);
    assert!(text.starts_with(&format!("{}: 1 configuration error\n", path.display())));
    assert!(text.contains(
        ": listener \"l200\".vhosts: the listeners together serve over 1000000 host names \
         (this one adds 5000); each keeps its own table of the names it serves\n    \
         fix: list in `vhosts` only the vhosts each listener serves, or serve them from fewer listeners\n"
    ), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn thirty_thousand_pools_and_vhosts_are_checked_and_reloaded_in_seconds() {
    let echo = echo_thread();
    let mut config = served(echo);
    for i in 0..30_000 {
        config += &format!(
            "[[pool]]\nname = \"p{i}\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[vhost]]\nname = \"v{i}\"\nhosts = [\"h{i}.test\"]\npool = \"p{i}\"\n"
        );
    }
    // one listener serving every vhost, and 5000 more listeners
    config += "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n";
    for i in 0..5000 {
        config += &format!(
            "[[listener]]\nname = \"l{i}\"\nbind = \"127.0.1.{}:{}\"\nprotocol = \"tcp\"\npool = \"p{i}\"\n",
            1 + i / 1000,
            1024 + i % 1000,
        );
    }
    let dir = support::tempdir();
    let path = dir.join("many.toml");
    std::fs::write(&path, &config).unwrap();
    let started = Instant::now();
    let (code, text) = check_within(&path, Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(0),
        "after {took:?}: {}",
        &text[..text.len().min(2000)]
    );
    // (See above: about 10 s in a debug build on a loaded machine.)
    assert!(took < Duration::from_secs(30), "check took {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
    // served by a running vipd: the reload builds every table
    let mut vipd = Vipd::run(&served(echo));
    let addr = vipd.listening(&["web"])["web"];
    std::fs::write(vipd.dir.join("vipd.toml"), &config).unwrap();
    let started = Instant::now();
    vipd.signal("HUP");
    vipd.wait_for("reload complete", Duration::from_secs(60));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "reload took {took:?}");
    assert!(vipd.alive());
    assert_eq!(echo_through(addr), b"ping");
    assert!(!vipd.log().contains("reload failed"));
}

#[test]
fn a_configuration_path_that_became_a_fifo_fails_the_check_and_the_reload_at_once() {
    let echo = echo_thread();
    let mut vipd = Vipd::run(&served(echo));
    let addr = vipd.listening(&["web"])["web"];
    let path = vipd.dir.join("vipd.toml");
    std::fs::remove_file(&path).unwrap();
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success());
    let (code, text) = check_within(&path, Duration::from_secs(10));
    assert_eq!(code, Some(66), "{text}");
    let why = "cannot read the configuration file: not a regular file \
               (name the TOML file itself, not a FIFO, device or directory)";
    assert_eq!(text, format!("{}: {why}\n", path.display()));
    vipd.signal("HUP");
    let line = vipd.wait_for("reload failed", Duration::from_secs(10));
    assert!(line.contains(why), "{line}");
    assert_eq!(echo_through(addr), b"ping");
    vipd.signal("TERM");
    assert_eq!(vipd.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn section_names_of_a_megabyte_are_refused_without_copying_them_into_every_error() {
    // ten 1.5 MB pool names, then 300 references that resolve to none:
    // each error's fix lists pool names
    let dir = support::tempdir();
    let path = dir.join("names.toml");
    let mut config = String::new();
    for i in 0..10u8 {
        let name = char::from(b'a' + i).to_string().repeat(1_500_000);
        config +=
            &format!("[[pool]]\nname = \"{name}\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n");
    }
    for i in 0..300 {
        config +=
            &format!("[[vhost]]\nname = \"v{i}\"\nhosts = [\"h{i}.test\"]\npool = \"nope\"\n");
    }
    std::fs::write(&path, config).unwrap();
    let (code, text) = check_within(&path, Duration::from_secs(20));
    assert_eq!(code, Some(64), "{}", &text[..text.len().min(2000)]);
    assert!(text.len() < 256 * 1024, "{} bytes of report", text.len());
    assert!(
        text.contains(&format!(
            "{}:2:1: pool[0].name: the name is 1500000 bytes long\n    \
             fix: give it a name of at most 128 bytes\n",
            path.display()
        )),
        "{}",
        &text[..text.len().min(2000)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_vhost_host_name_longer_than_dns_allows_is_refused() {
    let long_label = format!("{}.test", "a".repeat(64));
    let long_name = format!("{}test", "abc.".repeat(63));
    for host in [long_label, long_name] {
        let config = format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[vhost]]\nname = \"v\"\nhosts = [\"ok.test\", \"{host}\"]\npool = \"p\"\n"
        );
        let problems: Vec<String> = match vipd::config::parse(&config, Path::new("h.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(
            problems,
            [format!(
                "6:1: vhost \"v\".hosts: {host:?} is not a host name\n    \
                 fix: write exact names (\"www.example.com\") or a leading wildcard (\"*.example.com\"), \
                 without port, of at most 253 bytes and 63 per label"
            )]
        );
    }
}

#[test]
fn an_admin_reload_of_a_large_file_leaves_a_single_worker_serving_meanwhile() {
    let echo = echo_thread();
    let base = format!(
        "[global]\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        served(echo)
    );
    let vipd = Vipd::run(&base);
    let addr = vipd.listening(&["web"])["web"];
    let admin = vipd.admin_addr();
    let mut big = base.clone();
    for i in 0..30_000 {
        big += &format!(
            "[[pool]]\nname = \"p{i}\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[vhost]]\nname = \"v{i}\"\nhosts = [\"h{i}.test\"]\npool = \"p{i}\"\n"
        );
    }
    std::fs::write(vipd.dir.join("vipd.toml"), big).unwrap();
    let reload = std::thread::spawn(move || {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST /api/reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    });
    // exchanges through the listener while the reload runs
    let mut during = Vec::new();
    while !reload.is_finished() {
        let started = Instant::now();
        assert_eq!(echo_through(addr), b"ping");
        during.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = reload.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let slowest = during.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(1), "{during:?}");
    assert!(
        during.len() >= 3,
        "the reload was too quick to test: {during:?}"
    );
}

/// A pool "p" of `n` backends checked every `interval`.
fn checked_pool(n: usize, interval: &str) -> String {
    let backends: Vec<String> = (0..n)
        .map(|i| format!("{{ address = \"127.1.{}.{}:80\" }}", i / 250, 1 + i % 250))
        .collect();
    format!(
        "[[pool]]\nname = \"p\"\nbackends = [{}]\n\n[pool.health]\nkind = \"tcp\"\ninterval = \"{interval}\"\n",
        backends.join(", ")
    )
}

#[test]
fn health_checks_that_together_would_probe_over_10000_servers_a_second_are_refused() {
    let problems = |text: &str| -> Vec<String> {
        match vipd::config::parse(text, Path::new("h.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    };
    // 5000 backends every 100 ms: 50 000 probes a second
    assert_eq!(
        problems(&checked_pool(5000, "100ms")),
        [
            "1:1: pool \"p\".health.interval: the health checks would probe over 10000 servers \
          per second in all (5000 here every 100ms)\n    \
          fix: raise `interval` (servers / interval = probes per second), or check fewer servers"
        ]
    );
    // every second, 5000 a second: accepted
    assert_eq!(problems(&checked_pool(5000, "1s")), Vec::<String>::new());
}

#[test]
fn persistence_groups_that_together_would_hold_over_ten_million_clients_are_refused() {
    let groups = |max: &[usize]| -> String {
        max.iter()
            .enumerate()
            .map(|(i, m)| format!("[[persistence]]\nname = \"g{i}\"\nmax_entries = {m}\n"))
            .collect()
    };
    let problems = |text: &str| -> Vec<String> {
        match vipd::config::parse(text, Path::new("g.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    };
    assert_eq!(
        problems(&groups(&[10_000_000; 100])),
        [
            "6:1: persistence \"g1\".max_entries: the persistence groups would hold over 10000000 \
          clients in all\n    \
          fix: lower `max_entries` so that the groups' add up to at most 10000000"
        ]
    );
    assert_eq!(
        problems(&groups(&[5_000_000, 5_000_000])),
        Vec::<String>::new()
    );
}

#[test]
fn a_listener_trusting_over_1000_proxy_networks_is_refused() {
    let listener = |n: usize| -> String {
        let nets: Vec<String> = (0..n)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n\
             proxy_protocol = true\ntrusted_proxies = [{}]\n",
            nets.join(", ")
        )
    };
    let problems = |text: &str| -> Vec<String> {
        match vipd::config::parse(text, Path::new("t.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    };
    assert_eq!(
        problems(&listener(100_000)),
        [
            "10:1: listener \"l\".trusted_proxies: 100000 networks are listed, more than 1000: \
          every connection and request is compared with each\n    \
          fix: list the networks your proxies send from, merged into wider prefixes"
        ]
    );
    assert_eq!(problems(&listener(1000)), Vec::<String>::new());
}

#[test]
fn a_vhost_with_over_10000_routes_is_refused() {
    let vhost = |n: usize| -> String {
        let routes: Vec<String> = (0..n)
            .map(|i| format!("{{ path_prefix = \"/r{i}/\", pool = \"p\" }}"))
            .collect();
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[vhost]]\nname = \"v\"\nhosts = [\"a.test\"]\npool = \"p\"\nroutes = [{}]\n",
            routes.join(", ")
        )
    };
    let problems = |text: &str| -> Vec<String> {
        match vipd::config::parse(text, Path::new("r.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    };
    assert_eq!(
        problems(&vhost(100_000)),
        [
            "8:1: vhost \"v\".routes: 100000 routes are listed, more than 10000: \
          every request is compared with each\n    \
          fix: route by shorter prefixes that cover several paths \
          (\"/api/\" for \"/api/a/\" and \"/api/b/\")"
        ]
    );
    assert_eq!(problems(&vhost(10_000)), Vec::<String>::new());
}

#[test]
fn a_listener_allowing_over_32_upgrade_protocols_is_refused() {
    let listener = |n: usize| -> String {
        let names: Vec<String> = (0..n).map(|i| format!("\"proto{i}\"")).collect();
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[vhost]]\nname = \"v\"\nhosts = [\"a.test\"]\npool = \"p\"\n\
             [[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\n\
             upgrades = [{}]\n",
            names.join(", ")
        )
    };
    let problems = |text: &str| -> Vec<String> {
        match vipd::config::parse(text, Path::new("u.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    };
    assert_eq!(
        problems(&listener(100_000)),
        [
            "12:1: listener \"l\".upgrades: 100000 protocols are listed, more than 32: \
          each one a client offers is compared with every one\n    \
          fix: list the protocols your backends speak, e.g. [\"websocket\"]"
        ]
    );
    assert_eq!(problems(&listener(32)), Vec::<String>::new());
}

#[test]
fn an_alpn_protocol_listed_twice_is_refused() {
    let listener = |alpn: &str| -> String {
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[vhost]]\nname = \"v\"\nhosts = [\"a.test\"]\npool = \"p\"\n\
             certificates = [{{ cert = \"a.crt\", key = \"a.key\" }}]\n\
             [[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"https\"\n\
             alpn = [{alpn}]\n"
        )
    };
    let problems = |text: &str| -> Vec<String> {
        match vipd::config::parse(text, Path::new("a.toml")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    };
    // 100 000 entries: a handshake whose client offers no "h2" would
    // compare its list with each
    let many = vec!["\"h2\""; 100_000].join(", ");
    assert_eq!(
        problems(&listener(&many)),
        [
            "13:1: listener \"l\".alpn: ALPN \"h2\" is listed twice\n    \
          fix: list each protocol once: [\"h2\", \"http/1.1\"]"
        ]
    );
    assert_eq!(
        problems(&listener("\"h2\", \"http/1.1\"")),
        Vec::<String>::new()
    );
}
