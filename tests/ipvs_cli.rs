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
