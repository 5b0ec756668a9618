//! What `vipd run` prints when it cannot start: each cause once, with its fix.

mod support;

use std::time::Duration;

use support::Vipd;

#[test]
fn binding_an_address_not_on_this_host_names_the_os_error_once_and_the_freebind_fix() {
    let mut vipd = Vipd::run(
        r#"
[[listener]]
name = "web"
bind = "192.0.2.77:8080"
protocol = "tcp"
pool = "app"

[[pool]]
name = "app"
backends = [{ address = "127.0.0.1:9" }]
"#,
    );
    assert_eq!(vipd.wait_exit(Duration::from_secs(10)), Some(1));
    let log = vipd.log();
    assert_eq!(
        log.lines().last().unwrap(),
        "vipd: listener \"web\": cannot bind 192.0.2.77:8080: Cannot assign requested address (os error 99) \
         (the address is not on this host; set `freebind = true` to bind a VIP before it arrives)",
        "{log}"
    );
}
