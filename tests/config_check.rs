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
            "3:1: global.workerz: unknown field `workerz`, expected one of `workers`, `grace_period`, `max_connections`, `log_format`, `access_log`, `user`, `group`\n    fix: remove it, or correct its spelling to one of the fields listed",
            "2:1: global.grace_period: invalid duration \"3 parsecs\": unknown unit \"parsecs\"\n    fix: write a number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\"",
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
            "7:1: listener[0].backlog: invalid type: string \"lots\", expected u32\n    fix: give the value the type shown (see the configuration reference in README.md)",
            "13:1: listener \"b\".persistence: no persistence group is named \"sticky\"\n    fix: define [[persistence]] with name = \"sticky\"",
            "11:1: listener \"b\".bind: 127.0.0.1:80 is already bound by another listener\n    fix: give each listener its own address:port; one listener can serve many vhosts",
        ]
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
        stdout.contains("configuration OK (1 listeners, 1 pools"),
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

#[test]
fn every_shipped_example_passes_check() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, _, stderr) = vipd_check(&path);
            assert_eq!(code, Some(0), "{}: {stderr}", path.display());
            n += 1;
        }
    }
    assert!(n >= 1, "no example configurations found");
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
