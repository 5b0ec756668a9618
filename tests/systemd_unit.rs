//! contrib/vipd.service: `systemd-analyze verify` finds nothing to say
//! about it, and vipd runs under its capability bounding set and
//! NoNewPrivileges (reproduced with setpriv) on a port below 1024,
//! switching to `[global] user` after the bind.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::{Vipd, echo_thread, echo_through, tempdir};

const UNIT: &str = include_str!("../contrib/vipd.service");

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn setting(key: &str) -> String {
    UNIT.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit sets no {key}="))
        .to_string()
}

/// setpriv arguments for the unit's CapabilityBoundingSet= and NoNewPrivileges=.
fn unit_privileges(bounding: &str) -> Vec<String> {
    let caps: Vec<String> = bounding
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut args = vec![
        "--bounding-set".to_string(),
        format!("-all,{}", caps.join(",")),
    ];
    if setting("NoNewPrivileges") == "yes" {
        args.push("--no-new-privs".to_string());
    }
    args
}

/// A free port below 1024 on 127.0.0.1.
fn low_port() -> u16 {
    (900..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

fn config(bind: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"
[global]
user = "nobody"

[[listener]]
name = "web"
bind = "{bind}"
protocol = "tcp"
pool = "app"

[[pool]]
name = "app"
backends = [{{ address = "{echo}" }}]
"#
    )
}

fn run_under(privileges: &[String], config: &str) -> Vipd {
    let dir = tempdir();
    let path = dir.join("vipd.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(privileges)
        .arg(env!("CARGO_BIN_EXE_vipd"))
        .args(["run", "-c"])
        .arg(&path);
    Vipd::spawn(&mut cmd, dir)
}

/// A `/proc/PID/status` line's value, e.g. `Uid:` or `CapEff:`.
fn status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_a_warning() {
    let dir = tempdir();
    let unit = dir.join("vipd.service");
    // verify checks that the binaries exist: point it at the built one
    std::fs::write(
        &unit,
        UNIT.replace("/usr/local/bin/vipd", env!("CARGO_BIN_EXE_vipd")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!((out.status.code(), said.as_str()), (Some(0), ""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_unit_reloads_with_sighup_and_waits_for_readiness() {
    assert_eq!(setting("Type"), "notify");
    assert_eq!(setting("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(!UNIT.contains("CAP_NET_RAW"), "nothing uses raw sockets");
}

#[test]
fn under_the_units_capabilities_vipd_binds_a_low_port_then_runs_as_its_user() {
    let echo = echo_thread();
    let bind: SocketAddr = ([127, 0, 0, 1], low_port()).into();
    let privileges = unit_privileges(&setting("CapabilityBoundingSet"));
    let mut vipd = run_under(&privileges, &config(bind, echo));
    assert_eq!(vipd.listening(&["web"])["web"], bind);
    vipd.wait_for("vipd started", Duration::from_secs(10));
    let pid = vipd.child.id();
    // setpriv execs vipd: the pid is vipd's
    assert_eq!(status(pid, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status(pid, "CapEff:"), "0000000000000000");
    assert_eq!(echo_through(bind), b"ping");
    assert!(vipd.alive());
}

#[test]
fn without_cap_setuid_the_switch_fails_with_a_hint_that_names_the_bounding_set() {
    let echo = echo_thread();
    // the unit's old bounding set: no CAP_SETUID, no CAP_SETGID
    let privileges = unit_privileges("CAP_NET_BIND_SERVICE CAP_NET_ADMIN");
    let mut vipd = run_under(&privileges, &config("127.0.0.1:0".parse().unwrap(), echo));
    assert_eq!(vipd.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(
        vipd.log().ends_with(
            "vipd: cannot switch to user \"nobody\": EPERM: Operation not permitted (vipd runs as root \
             but without CAP_SETUID and CAP_SETGID; under systemd, add them to \
             CapabilityBoundingSet= as contrib/vipd.service does)"
        ),
        "{}",
        vipd.log()
    );
}
