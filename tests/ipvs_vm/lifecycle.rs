//! `vipd run` over its life: SIGHUP with a changed weight, an added real
//! server and a broken file (refused once, table kept), `own_all` deleting
//! a hand-made service, and `on_shutdown = "keep"` leaving the table.

use super::super::{ipvsadm, sock, tcp};
use super::{VipdRun, dests, wait_table};

fn config(weight: u32, extra_rs: &str, own_all: bool, on_shutdown: &str) -> String {
    format!(
        r#"
[ipvs]
own_all = {own_all}
on_shutdown = "{on_shutdown}"
reconcile_interval = "1s"
drain_period = "1s"

[[ipvs.service]]
name = "web"
address = "192.0.2.10:80"
scheduler = "wrr"
real_servers = [ {{ address = "192.0.2.21:80", weight = 1 }}, {{ address = "192.0.2.22:80", weight = {weight} }}{extra_rs} ]
"#
    )
}

#[test]
fn table_sighup_applies_a_new_weight_and_an_added_real_server_and_refuses_a_broken_file_once() {
    let mut s = sock();
    s.flush().unwrap();
    let web = tcp("192.0.2.10:80");
    let vipd = VipdRun::start("sighup", &config(2, "", false, "remove"));
    let rs = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
        v.iter().map(|(a, w)| (a.to_string(), *w)).collect()
    };
    wait_table(&mut s, "the service at start", |t| {
        dests(t, web) == rs(&[("192.0.2.21:80", 1), ("192.0.2.22:80", 2)])
    });
    vipd.reload(&config(5, "", false, "remove"));
    wait_table(&mut s, "the new weight", |t| {
        dests(t, web) == rs(&[("192.0.2.21:80", 1), ("192.0.2.22:80", 5)])
    });
    let added = ", { address = \"192.0.2.23:80\", weight = 3 }";
    vipd.reload(&config(5, added, false, "remove"));
    let want = rs(&[
        ("192.0.2.21:80", 1),
        ("192.0.2.22:80", 5),
        ("192.0.2.23:80", 3),
    ]);
    wait_table(&mut s, "the added real server", |t| dests(t, web) == want);

    vipd.reload(&config(5, added, false, "remove").replace("\"wrr\"", "\"nosuch\""));
    vipd.wait_log("reload failed", 1);
    // two reconcile intervals: nothing changes, and the error is logged once
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(dests(&s.services().unwrap(), web), want);
    let log = vipd.stop();
    assert_eq!(log.matches("reload failed").count(), 1, "{log}");
    assert_eq!(
        log.matches("scheduler: unknown value \\\"nosuch\\\"")
            .count()
            + log.matches("scheduler: unknown value \"nosuch\"").count(),
        1,
        "the error once: {log}"
    );
    assert_eq!(s.services().unwrap(), []);
}

#[test]
fn table_own_all_under_vipd_run_deletes_a_service_made_by_hand_and_keep_leaves_the_table() {
    let mut s = sock();
    s.flush().unwrap();
    ipvsadm(&["-A", "-t", "192.0.2.99:80", "-s", "rr"]);
    let web = tcp("192.0.2.10:80");
    let hand = tcp("192.0.2.99:80");
    let vipd = VipdRun::start("own-all", &config(2, "", true, "keep"));
    wait_table(&mut s, "own_all to delete the hand-made service", |t| {
        t.iter().any(|s| s.key == web) && !t.iter().any(|s| s.key == hand)
    });
    // made by hand while vipd runs: the next periodic pass deletes it too
    ipvsadm(&["-A", "-t", "192.0.2.99:80", "-s", "rr"]);
    wait_table(&mut s, "the periodic pass to delete it again", |t| {
        !t.iter().any(|s| s.key == hand)
    });
    let before = ipvsadm(&["-Sn"]);
    let log = vipd.stop();
    assert!(log.contains("ipvs services left in the kernel"), "{log}");
    assert_eq!(
        ipvsadm(&["-Sn"]),
        before,
        "on_shutdown = \"keep\" leaves the table"
    );
    assert!(before.contains("-A -t 192.0.2.10:80 -s wrr"), "{before}");
    s.flush().unwrap();
}
