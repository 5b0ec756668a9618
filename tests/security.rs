//! Operating safely: warnings an operator must see.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::Vipd;

#[test]
fn a_private_key_readable_by_others_is_warned_about_and_still_served() {
    let dir = support::tempdir();
    let out = Command::new(env!("CARGO_BIN_EXE_vipd"))
        .args([
            "gen-cert",
            "--names",
            "www.test",
            "--stem",
            "www",
            "--out-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = dir.join("www.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
protocol = "tls"
pool = "p"

[[pool]]
name = "p"
backends = [{ address = "127.0.0.1:9" }]

[[vhost]]
name = "www"
hosts = ["www.test"]
pool = "p"
certificates = [{ cert = "www.crt", key = "www.key" }]
"#;
    let path = dir.join("vipd.toml");
    std::fs::write(&path, config).unwrap();
    let vipd = Vipd::run_file(&path, dir.clone());
    vipd.listening(&["tls"]);
    let line = vipd.wait_for("readable by group or others", Duration::from_secs(5));
    assert!(line.contains("mode=\"644\""), "{line}");
    assert!(line.contains("chmod 600"), "{line}");
    assert!(!vipd.log().contains("BEGIN"), "key material in the log");
}
