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
