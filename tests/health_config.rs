//! Configuration of health checks, slow start, passive checks and the
//! all-down policy: defaults, and the exact errors for bad settings.

use std::path::Path;
use std::time::Duration;

use vipd::config::{HealthKind, OnAllDown, parse};

fn pool(extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9001\" }}]\n{extra}"
    )
}

#[test]
fn pool_health_settings_have_documented_defaults() {
    let c = parse(&pool("health = { kind = \"http\" }"), Path::new("t.toml")).unwrap();
    let p = &c.pools[0];
    let h = p.health.as_ref().unwrap();
    assert_eq!(h.kind, HealthKind::Http);
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall),
        (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
    );
    assert_eq!((h.path.as_str(), h.expect_status), ("/", (200, 399)));
    assert_eq!(p.on_all_down, OnAllDown::FailOpen);
    assert_eq!(p.slow_start, Duration::ZERO);
    assert_eq!(
        (p.passive_fall, p.passive_cooldown),
        (3, Duration::from_secs(10))
    );
}

#[test]
fn a_sorry_server_alone_selects_the_sorry_policy() {
    let c = parse(
        &pool("sorry = \"127.0.0.1:9999\"\nslow_start = \"30s\""),
        Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(
        c.pools[0].on_all_down,
        OnAllDown::Sorry("127.0.0.1:9999".parse().unwrap())
    );
    assert_eq!(c.pools[0].slow_start, Duration::from_secs(30));
}

#[test]
fn on_all_down_sorry_without_a_sorry_server_is_refused_with_the_fix() {
    let err = parse(&pool("on_all_down = \"sorry\""), Path::new("t.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.toml: 1 configuration error\n\
         t.toml:10:1: pool \"p\".on_all_down: `on_all_down = \"sorry\"` needs a sorry server\n    \
         fix: add `sorry = \"192.0.2.99:80\"`, the server that answers while every backend is down"
    );
}

#[test]
fn unknown_all_down_policies_and_contradictions_are_all_reported() {
    let text = pool("on_all_down = \"panic\"\n")
        + "\n[[pool]]\nname = \"q\"\nbackends = [{ address = \"127.0.0.1:9002\" }]\n\
           on_all_down = \"fail_open\"\nsorry = \"127.0.0.1:9999\"\nslow_start = \"soon\"\n";
    let err = parse(&text, Path::new("t.toml")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.toml: 3 configuration errors\n\
         t.toml:10:1: pool \"p\".on_all_down: unknown value \"panic\"\n    \
         fix: use one of \"fail_open\", \"sorry\", \"refuse\"\n\
         t.toml:16:1: pool \"q\".sorry: a sorry server is set but `on_all_down` is \"fail_open\"\n    \
         fix: set `on_all_down = \"sorry\"`, or remove `sorry`\n\
         t.toml:17:1: pool \"q\".slow_start: invalid duration \"soon\": it does not start with a whole number\n    \
         fix: write a number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\""
    );
}

#[test]
fn health_and_admin_sections_are_accepted_by_this_build() {
    let text = pool("health = { kind = \"tls\", host = \"a.example\" }")
        + "\n[admin]\nlisten = \"127.0.0.1:9100\"\n";
    let c = parse(&text, Path::new("t.toml")).unwrap();
    assert_eq!(c.admin.unwrap().listen.to_string(), "127.0.0.1:9100");
}
