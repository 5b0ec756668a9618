//! Configuration errors (exact messages) and `vipd check` exit codes.

use std::path::Path;
use std::process::Command;

fn problems(text: &str) -> Vec<String> {
    match vipd::config::parse(text, Path::new("site.toml")) {
        Ok(_) => panic!("config unexpectedly valid"),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

const POOL: &str = r#"
[[pool]]
name = "web"
backends = [{ address = "192.0.2.21:80" }]
"#;

#[test]
fn every_problem_is_reported_at_once_with_line_field_and_fix() {
    let text = format!(
        r#"[global]
grace_period = "3 parsecs"
workerz = 4

[[listener]]
name = "www"
bind = "192.0.2.10"
protocol = "htp"
pool = "nope"
{POOL}"#
    );
    assert_eq!(
        problems(&text),
        vec![
            "2:1: global.grace_period: invalid duration \"3 parsecs\": unknown unit \"parsecs\"\n    fix: write a number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\"",
            "3:1: global.workerz: unknown field `workerz`\n    fix: did you mean `workers`?",
            "7:1: listener \"www\".bind: invalid socket address \"192.0.2.10\"\n    fix: write an IP address and a port: \"192.0.2.10:80\" or \"[2001:db8::10]:443\" (host names are not resolved)",
            "8:1: listener \"www\".protocol: unknown value \"htp\"\n    fix: use one of \"tcp\", \"tls\", \"http\", \"https\"",
            "9:1: listener \"www\".pool: no pool is named \"nope\"\n    fix: define a [[pool]] with name = \"nope\", or use one of: web",
        ]
    );
}

#[test]
fn the_whole_error_names_the_file_and_counts_the_problems() {
    let err = vipd::config::parse("[[pool]]\nname = \"a\"\n", Path::new("/etc/vipd/site.toml"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/etc/vipd/site.toml: 1 configuration error\n/etc/vipd/site.toml:1:1: pool \"a\".backends: the pool has no backends\n    fix: add `backends = [{ address = \"192.0.2.21:80\", weight = 1 }]`"
    );
}

#[test]
fn toml_syntax_errors_point_at_the_position() {
    let p = problems("[[listener]\nname = 1\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("1:"), "{}", p[0]);
    assert!(
        p[0].contains("fix: fix the TOML syntax at this position"),
        "{}",
        p[0]
    );
}

#[test]
fn an_unknown_section_is_refused() {
    let p = problems("[frontend]\nbind = \"x\"\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("unknown field `frontend`"), "{}", p[0]);
    assert!(p[0].contains("the sections are [global]"), "{}", p[0]);
}

#[test]
fn wrong_types_and_references_are_reported_per_entry() {
    let text = format!(
        r#"
[[listener]]
name = "a"
bind = "127.0.0.1:80"
protocol = "tcp"
pool = "web"
backlog = "lots"

[[listener]]
name = "b"
bind = "127.0.0.1:80"
protocol = "tcp"
persistence = "sticky"
pool = "web"
{POOL}"#
    );
    assert_eq!(
        problems(&text),
        vec![
            "7:1: listener \"a\".backlog: invalid type: string \"lots\", expected u32\n    fix: give the value the type shown (see the configuration reference in README.md)",
            "11:1: listener \"b\".bind: 127.0.0.1:80 is already bound by another listener\n    fix: give each listener its own address:port; one listener can serve many vhosts",
            "13:1: listener \"b\".persistence: no persistence group is named \"sticky\"\n    fix: define [[persistence]] with name = \"sticky\"",
        ]
    );
}

const LISTENER: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
protocol = "http"
vhosts = ["site"]

[[vhost]]
name = "site"
hosts = ["a.test"]
pool = "app"
"#;

#[test]
fn a_misspelled_field_in_one_backend_is_one_error_at_its_own_line_and_column() {
    let text = format!(
        r#"{LISTENER}
[[pool]]
name = "app"
backends = [
  {{ address = "192.0.2.21:80" }},
  {{ address = "192.0.2.22:80", wieght = 2 }},
]
"#
    );
    assert_eq!(
        problems(&text),
        vec![
            "17:32: pool \"app\".backends[1].wieght: unknown field `wieght`\n    fix: did you mean `weight`?"
        ]
    );
}

#[test]
fn mistakes_in_backend_tables_and_health_are_each_reported_once_where_written() {
    let text = format!(
        r#"{LISTENER}
[[pool]]
name = "app"
[[pool.backends]]
address = "192.0.2.21:80"
weight = "heavy"
[[pool.backends]]
  adress = "192.0.2.22:80"
[pool.health]
kind = "tcp"
intervall = "1s"
"#
    );
    assert_eq!(
        problems(&text),
        vec![
            "17:1: pool \"app\".backends[0].weight: invalid type: string \"heavy\", expected u32\n    fix: give the value the type shown (see the configuration reference in README.md)",
            "19:3: pool \"app\".backends[1].adress: unknown field `adress`\n    fix: did you mean `address`?",
            "22:1: pool \"app\".health.intervall: unknown field `intervall`\n    fix: did you mean `interval`?",
        ]
    );
}

#[test]
fn a_name_of_the_wrong_type_is_one_error_not_also_a_missing_name() {
    let text = format!(
        r#"{LISTENER}
[[pool]]
name = "app"
backends = [{{ address = "192.0.2.21:80" }}]

[[pool]]
name = 5
backends = [{{ address = "192.0.2.22:80" }}]
"#
    );
    assert_eq!(
        problems(&text),
        vec![
            "18:1: pool[1].name: invalid type: integer `5`, expected a string\n    fix: give the value the type shown (see the configuration reference in README.md)"
        ]
    );
}

#[test]
fn a_field_far_from_every_known_name_gets_the_list_instead_of_a_guess() {
    let text = format!(
        r#"{LISTENER}
[[pool]]
name = "app"
backends = [{{ address = "192.0.2.21:80", colour = "blue" }}]
"#
    );
    assert_eq!(
        problems(&text),
        vec![
            "15:42: pool \"app\".backends[0].colour: unknown field `colour`\n    fix: remove it, or use one of the fields here: `address`, `weight`"
        ]
    );
}

#[test]
fn check_help_lists_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        help.ends_with(
            "Exit status:\n  0   the configuration is valid (certificates and keys read and matched)\n  64  the configuration has errors (each printed as file:line:column: field: problem, then its fix)\n  66  the configuration file cannot be read (missing, not a regular file, too large, not UTF-8)\n"
        ),
        "{help}"
    );
}

#[test]
fn dr_real_server_port_must_equal_the_vip_port() {
    let text = r#"
[ipvs]
[[ipvs.service]]
name = "web"
address = "198.51.100.100:80"
forwarding = "dr"
real_servers = [{ address = "198.51.100.11:8080" }]
"#;
    let p = problems(text);
    assert!(
        p.iter().any(|p| p.contains("ipvs.service \"web\".real_servers[0].address: real server port 8080 differs from the VIP port 80; in dr mode the kernel cannot change the port")),
        "{p:#?}"
    );
}

#[test]
fn persistence_netmask_accepts_ipvsadm_style_masks() {
    let text = r#"
[[persistence]]
name = "a"
netmask = "255.255.0.255"
"#;
    assert_eq!(
        problems(text),
        vec![
            "4:1: persistence \"a\".netmask: invalid IPv4 netmask \"255.255.0.255\": the mask bits are not contiguous\n    fix: write it as ipvsadm -M does, \"255.255.255.0\", or as a prefix length, \"24\""
        ]
    );
}

fn vipd_check(path: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_exits_0_on_a_good_file_64_on_a_bad_one_and_66_on_a_missing_one() {
    let dir = std::env::temp_dir().join(format!("vipd-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"web\"\n{POOL}"),
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[listener]]\nname = \"l\"\n").unwrap();

    let (code, stdout, _) = vipd_check(&good);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("configuration OK (1 listener, 1 pool, 0 vhosts, 0 IPVS services)"),
        "{stdout}"
    );

    let (code, _, stderr) = vipd_check(&bad);
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("bad.toml: 3 configuration errors"),
        "{stderr}"
    );
    assert!(stderr.contains("missing required field `bind`"), "{stderr}");

    let (code, _, stderr) = vipd_check(&dir.join("missing.toml"));
    assert_eq!(code, Some(66));
    assert!(
        stderr.contains("cannot read the configuration file"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `vipd gen-cert` commands an example's header comment lists.
fn gen_cert_commands(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter_map(|l| l.strip_prefix("#   vipd gen-cert "))
        .map(|l| {
            l.split_whitespace()
                .map(|w| w.trim_matches('\'').to_string())
                .collect()
        })
        .collect()
}

#[test]
fn every_shipped_example_passes_check_once_its_listed_certificates_are_made() {
    use std::os::unix::fs::PermissionsExt;
    // a copy of config/ without certificates, as a fresh clone has it
    let root = std::env::temp_dir().join(format!("vipd-examples-{}", std::process::id()));
    let dir = root.join("config");
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let mut n = 0;
    let mut keys = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            for args in gen_cert_commands(&text) {
                let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
                    .arg("gen-cert")
                    .args(&args)
                    .current_dir(&root)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{args:?}: {out:?}");
                keys += 1;
            }
            let copy = dir.join(path.file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            let (code, _, stderr) = vipd_check(&copy);
            assert_eq!(code, Some(0), "{}: {stderr}", path.display());
            n += 1;
        }
    }
    assert!(n >= 4, "{n} example configurations found");
    assert_eq!(keys, 3, "the https example lists its three certificates");
    for entry in std::fs::read_dir(dir.join("certs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "key") {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_ipvs_service_needs_no_explicit_ipvs_table() {
    let text = r#"
[[ipvs.service]]
name = "web"
address = "198.51.100.100:80"
real_servers = [{ address = "198.51.100.11:80" }]
"#;
    let c = vipd::config::parse(text, Path::new("site.toml")).unwrap();
    assert_eq!(c.ipvs.services.len(), 1);
    assert_eq!(
        c.ipvs.services[0].real_servers[0].address.to_string(),
        "198.51.100.11:80"
    );
}

#[test]
fn dropping_privileges_is_refused_together_with_ipvs_services() {
    let text = r#"
[global]
user = "nobody"

[[ipvs.service]]
name = "web"
address = "198.51.100.100:80"
"#;
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("3:1: global.user: switching to user \"nobody\" drops CAP_NET_ADMIN"),
        "{}",
        p[0]
    );
}

#[test]
fn the_session_cache_size_is_a_number_of_sessions_or_a_size_in_bytes_as_nginx_writes_it() {
    let tls = |size: &str| {
        let text = format!("[tls]\nsession_cache_size = {size}\n");
        vipd::config::parse(&text, Path::new("site.toml")).map(|c| c.tls.session_cache_size)
    };
    assert_eq!(tls("20000").unwrap(), 20_000);
    assert_eq!(tls("\"2m\"").unwrap(), 8192);
    assert_eq!(tls("\"512k\"").unwrap(), 2048);
    let defaults = vipd::config::parse("", Path::new("site.toml")).unwrap().tls;
    assert_eq!(
        (
            defaults.session_timeout.as_secs(),
            defaults.ticket_lifetime.as_secs()
        ),
        (300, 43_200)
    );
    assert_eq!(
        problems("[tls]\nsession_cache_size = \"100m\"\n"),
        vec![
            "2:1: tls.session_cache_size: 409600 is outside 0..=100000 sessions (\"100m\" at 256 bytes a session)\n    fix: set `session_cache_size` between 0 and 100000 (default 20480)"
        ]
    );
    assert_eq!(
        problems("[tls]\nsession_cache_size = \"ten\"\nticket_lifetime = \"1d\"\n"),
        vec![
            "2:1: tls.session_cache_size: invalid size \"ten\"\n    fix: write a number of sessions (20480) or a size in bytes with a unit, as nginx does: \"512k\", \"10m\"",
            "3:1: tls.ticket_lifetime: \"1d\" is outside 1s..=12h\n    fix: set `ticket_lifetime` between \"1s\" and \"12h\" (default \"12h\")",
        ]
    );
}

#[test]
fn a_section_of_thousands_of_unknown_keys_lists_twenty_and_is_not_read_again_past_them() {
    let mut text = String::from("[global]\n");
    for i in 0..20_000 {
        text += &format!("k{i} = 1\n");
    }
    let started = std::time::Instant::now();
    let p = problems(&text);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p.len(), 21);
    assert_eq!(
        p[0],
        "1:1: global: more than 20 keys of this section are unknown or mistyped\n    fix: correct the keys listed above and run `vipd check` again"
    );
    assert_eq!(
        p[1],
        "2:1: global.k0: unknown field `k0`\n    fix: remove it, or use one of the fields here: `workers`, `grace_period`, `max_connections`, `log_format`, `access_log`, `user`, `group`"
    );
    assert_eq!(
        p[20],
        "21:1: global.k19: unknown field `k19`\n    fix: remove it, or use one of the fields here: `workers`, `grace_period`, `max_connections`, `log_format`, `access_log`, `user`, `group`"
    );
}

#[test]
fn a_misspelled_real_server_field_is_one_error_named_as_the_service_is() {
    let text = r#"
[[ipvs.service]]
name = "web"
address = "198.51.100.100:80"
forwarding = "nat"
real_servers = [
  { adress = "192.0.2.21:80" },
]
"#;
    assert_eq!(
        problems(text),
        vec![
            "7:5: ipvs.service \"web\".real_servers[0].adress: unknown field `adress`\n    fix: did you mean `address`?"
        ]
    );
}
