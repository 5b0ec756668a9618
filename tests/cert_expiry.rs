//! A certificate with fewer than 21 days left is logged at WARN when vipd
//! starts and again on every reload, and one with more is not.

mod support;

use std::time::Duration;

use support::Vipd;

fn config(dir: &std::path::Path, days: u32, name: &str) -> String {
    let cert = vipd::tls::gencert::generate(
        &[name.to_string()],
        vipd::tls::gencert::KeyType::EcdsaP256,
        days,
    )
    .unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), &cert.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &cert.key_pem).unwrap();
    format!(
        r#"
[[listener]]
name = "secure"
bind = "127.0.0.1:0"
protocol = "https"
vhosts = ["{name}"]

[[vhost]]
name = "{name}"
hosts = ["{name}"]
certificates = [{{ cert = "{dir}/{name}.crt", key = "{dir}/{name}.key" }}]
pool = "p"

[[pool]]
name = "p"
backends = [{{ address = "127.0.0.1:9" }}]
"#,
        dir = dir.display()
    )
}

const WARNING: &str = "certificate expires in less than 21 days; renew it and reload";

#[test]
fn a_certificate_under_21_days_is_a_warning_at_start_and_on_each_reload() {
    let dir = support::tempdir();
    let path = dir.join("vipd.toml");
    std::fs::write(&path, config(&dir, 20, "soon.test")).unwrap();
    let vipd = Vipd::run_file(&path, dir.clone());
    let line = vipd.wait_for(WARNING, Duration::from_secs(10));
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains("vhost=soon.test"), "{line}");
    // Issued for 20 days: 20 whole days left, or 19 once a second passed.
    assert!(
        line.contains("days_left=20 ") || line.contains("days_left=19 "),
        "{line}"
    );
    vipd.wait_for("vipd started", Duration::from_secs(10));
    vipd.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vipd.log().matches(WARNING).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", vipd.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_certificate_with_more_days_left_is_no_warning() {
    let dir = support::tempdir();
    let path = dir.join("vipd.toml");
    std::fs::write(&path, config(&dir, 22, "later.test")).unwrap();
    let vipd = Vipd::run_file(&path, dir.clone());
    let line = vipd.wait_for("certificate in service", Duration::from_secs(10));
    assert!(
        line.contains("days_left=22 ") || line.contains("days_left=21 "),
        "{line}"
    );
    vipd.wait_for("vipd started", Duration::from_secs(10));
    assert!(!vipd.log().contains(WARNING), "{}", vipd.log());
}
