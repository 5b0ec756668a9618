//! `vipd ipvs` on a host: the commands parse, and a kernel without IPVS gets a
//! message that says which module to load. (Real-kernel behaviour is tested
//! in the VM: tests/ipvs_kernel.rs.)

use std::process::Command;

#[test]
fn plan_on_a_kernel_without_ipvs_says_to_load_ip_vs() {
    if std::path::Path::new("/sys/module/ip_vs").exists() {
        eprintln!(
            "ip_vs is loaded on this host; the missing-module message is covered only where it is absent"
        );
        return;
    }
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ipvs-dr.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["ipvs", "plan", "-c", config])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vipd: IPVS is not available in this kernel: load it with `modprobe ip_vs`\n"
    );
}

#[test]
fn a_dr_real_server_on_another_port_is_refused_at_config_check() {
    let dir = std::env::temp_dir().join(format!("vipd-ipvs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"
[ipvs]

[[ipvs.service]]
name = "web"
address = "198.51.100.100:80"
forwarding = "dr"
real_servers = [ { address = "198.51.100.11:8080" } ]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["ipvs", "plan", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(64), "config errors exit 64");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("real server port 8080 differs from the VIP port 80; in dr mode the kernel cannot change the port"), "{err}");
}

/// `vipd check` on `toml`: exit code and stderr.
fn check(toml: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!(
        "vipd-ipvs-check-{}-{}",
        std::process::id(),
        toml.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vipd.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const FWMARK_GROUP: &str = r#"
[[persistence]]
name = "web"
timeout = "300s"

[[ipvs.service]]
name = "web"
fwmark = 99
scheduler = "rr"
persistence = "web"
real_servers = [ { address = "198.51.100.11:0" }, { address = "198.51.100.12:0" } ]
"#;

#[test]
fn an_unknown_ipvs_scheduler_is_refused_with_the_kernel_schedulers_listed() {
    let (code, err) = check(&FWMARK_GROUP.replace("\"rr\"", "\"nosuch\""));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(
            "ipvs.service \"web\".scheduler: unknown value \"nosuch\"\n    fix: use one of \"rr\", \"wrr\", \"lc\", \"wlc\", \"lblc\", \"lblcr\", \"dh\", \"sh\", \"sed\", \"nq\", \"fo\", \"ovf\", \"mh\""
        ),
        "{err}"
    );
    // p2c is a user-space scheduler; lblc is the kernel's only
    let (code, err) = check(&FWMARK_GROUP.replace("\"rr\"", "\"p2c\""));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("scheduler: unknown value \"p2c\""), "{err}");
    let (code, err) = check(&FWMARK_GROUP.replace("\"rr\"", "\"lblc\""));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_pool_refuses_a_scheduler_only_the_kernel_has() {
    let (code, err) = check(
        r#"
[[pool]]
name = "web"
scheduler = "lblc"
backends = [ { address = "127.0.0.1:8080" } ]
"#,
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("pool \"web\".scheduler: unknown value \"lblc\"\n    fix: use one of \"rr\", \"wrr\", \"lc\", \"wlc\", \"sed\", \"nq\", \"sh\", \"mh\", \"p2c\""),
        "{err}"
    );
}

#[test]
fn health_on_a_fwmark_service_needs_a_port() {
    let with_health = format!("{FWMARK_GROUP}health = {{ kind = \"tcp\" }}\n");
    let (code, err) = check(&with_health);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("ipvs.service \"web\".health.port: real server 198.51.100.11:0 has port 0 (a fwmark service), so the check has no port to probe\n    fix: add `port = 80` (the port the real servers serve) to `health`, like keepalived's connect_port"),
        "{err}"
    );
    let (code, err) = check(&with_health.replace("kind = \"tcp\"", "kind = \"tcp\", port = 80"));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(&with_health.replace("kind = \"tcp\"", "kind = \"tcp\", port = 0"));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("health.port: 0 is outside 1..=65535"), "{err}");
}

#[test]
fn on_all_down_and_sorry_are_checked_like_the_pools() {
    let svc = |extra: &str| format!("{FWMARK_GROUP}{extra}\n");
    assert_eq!(check(&svc("on_all_down = \"refuse\"")).0, Some(0));
    assert_eq!(check(&svc("sorry = \"198.51.100.99:0\"")).0, Some(0));
    let (code, err) = check(&svc("on_all_down = \"sorry\""));
    assert_eq!(code, Some(64));
    assert!(
        err.contains("on_all_down: `on_all_down = \"sorry\"` needs a sorry server"),
        "{err}"
    );
    let (_, err) = check(&svc(
        "on_all_down = \"refuse\"\nsorry = \"198.51.100.99:0\"",
    ));
    assert!(
        err.contains("sorry: a sorry server is set but `on_all_down` is \"refuse\""),
        "{err}"
    );
    let (_, err) = check(&svc("sorry = \"198.51.100.11:0\""));
    assert!(
        err.contains("sorry: the sorry server 198.51.100.11:0 is also a real server"),
        "{err}"
    );
    let (_, err) = check(&svc("on_all_down = \"maybe\""));
    assert!(
        err.contains("on_all_down: unknown value \"maybe\"\n    fix: use one of \"fail_open\", \"sorry\", \"refuse\""),
        "{err}"
    );
    // a DR sorry server follows the real servers' port rule
    let dr = r#"
[[ipvs.service]]
name = "web"
address = "198.51.100.100:80"
real_servers = [ { address = "198.51.100.11:80" } ]
sorry = "198.51.100.99:8080"
"#;
    let (_, err) = check(dr);
    assert!(
        err.contains(
            "ipvs.service \"web\".sorry: real server port 8080 differs from the VIP port 80"
        ),
        "{err}"
    );
}

#[test]
fn save_prints_the_configs_table_as_an_ipvsadm_restore_script_without_kernel_ipvs() {
    let dir = std::env::temp_dir().join(format!("vipd-ipvs-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lvs.toml");
    std::fs::write(
        &path,
        r#"
[[persistence]]
name = "sticky"
timeout = "10m"
netmask = "255.255.255.0"
netmask_v6 = 64

[[ipvs.service]]
name = "nat"
address = "203.0.113.10:80"
scheduler = "wlc"
forwarding = "nat"
persistence = "sticky"
real_servers = [
  { address = "192.0.2.21:8080", weight = 3, upper_threshold = 100, lower_threshold = 80 },
  { address = "192.0.2.22:8080", weight = 0 },
]

[[ipvs.service]]
name = "dns6"
address = "[2001:db8::53]:53"
protocol = "udp"
scheduler = "rr"
forwarding = "tunnel"
persistence = "sticky"
real_servers = [{ address = "[2001:db8::1]:53" }]

[[ipvs.service]]
name = "marked6"
fwmark = 7
family = "inet6"
scheduler = "sh"
forwarding = "dr"
real_servers = [{ address = "[2001:db8::2]:0", weight = 5 }]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args(["ipvs", "save", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no kernel IPVS is needed"
    );
    assert_eq!(out.status.code(), Some(0));
    // `ipvsadm -Sn` lines: what `ipvsadm-restore` (`ipvsadm -R`) reads
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "-A -t 203.0.113.10:80 -s wlc -p 600 -M 255.255.255.0\n\
         -a -t 203.0.113.10:80 -r 192.0.2.21:8080 -m -w 3 -x 100 -y 80\n\
         -a -t 203.0.113.10:80 -r 192.0.2.22:8080 -m -w 0\n\
         -A -u [2001:db8::53]:53 -s rr -p 600 -M 64\n\
         -a -u [2001:db8::53]:53 -r [2001:db8::1]:53 -i -w 1\n\
         -A -f 7 -6 -s sh\n\
         -a -f 7 -6 -r [2001:db8::2]:0 -g -w 5\n"
    );
}
