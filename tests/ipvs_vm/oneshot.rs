//! One-shot `vipd ipvs plan|apply` against the kernel: they converge on a
//! real server removed from the file (no "already matches" while the table
//! differs), `plan` on an empty table replays through `ipvsadm-restore` to
//! the table `apply` makes, and `vipd ipvs list -c` is `ipvsadm -Lnc`.

use std::path::PathBuf;

use super::super::{VIP, VIP2, fetch, ipvsadm, repo, run, sock, vipd};

/// The example DR config with `web`'s second real server (.12) dropped.
fn without_rs2(name: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo("config/ipvs-dr.toml")).unwrap();
    let cut = text.replace("  { address = \"198.51.100.12:80\", weight = 2 },\n", "");
    assert_ne!(cut, text);
    let path = std::env::temp_dir().join(format!("vipd-{name}.toml"));
    std::fs::write(&path, cut).unwrap();
    path
}

#[test]
fn table_one_shot_apply_deletes_an_idle_real_server_removed_from_the_file_on_the_next_run() {
    let mut s = sock();
    s.flush().unwrap();
    vipd(&["ipvs", "apply", "-c", &repo("config/ipvs-dr.toml")]);
    let cut = without_rs2("oneshot-idle");
    let cut = cut.to_str().unwrap();
    assert_eq!(
        vipd(&["ipvs", "apply", "-c", cut]),
        "ipvsadm -e -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 0\n",
        "the first run quiesces it"
    );
    assert_eq!(
        vipd(&["ipvs", "plan", "-c", cut]),
        "ipvsadm -d -t 198.51.100.100:80 -r 198.51.100.12:80\n",
        "the table still differs from the file, so plan says so"
    );
    assert_eq!(
        vipd(&["ipvs", "apply", "-c", cut]),
        "ipvsadm -d -t 198.51.100.100:80 -r 198.51.100.12:80\n",
        "idle: the next run deletes it"
    );
    assert!(!ipvsadm(&["-Ln"]).contains("198.51.100.12:80"));
    let plan = vipd(&["ipvs", "plan", "-c", cut]);
    assert!(
        plan.ends_with(": the kernel IPVS table already matches\n"),
        "{plan}"
    );
    s.flush().unwrap();
}

#[test]
fn table_plan_on_an_empty_table_replayed_through_ipvsadm_restore_gives_the_table_apply_gives() {
    let mut s = sock();
    s.flush().unwrap();
    let config = repo("config/ipvs-dr.toml");
    let plan = vipd(&["ipvs", "plan", "-c", &config]);
    let script: String = plan
        .lines()
        .map(|l| {
            l.strip_prefix("ipvsadm ")
                .expect("an ipvsadm line")
                .to_string()
                + "\n"
        })
        .collect();
    run(
        "bash",
        &["-ec", &format!("ipvsadm-restore <<'EOF'\n{script}EOF")],
    );
    let restored = ipvsadm(&["-Sn"]);
    s.flush().unwrap();
    vipd(&["ipvs", "apply", "-c", &config]);
    assert_eq!(restored, ipvsadm(&["-Sn"]));
    assert_eq!(restored.lines().count(), 6, "{restored}");
    s.flush().unwrap();
}

/// `vipd ipvs list ARGS` and `ipvsadm ARGS`, equal byte for byte except for
/// the connection timers (`expire`, mm:ss), which tick between the two reads:
/// those may differ by 3 s at most.
fn same_listing(vipd_args: &[&str], ipvsadm_args: &[&str]) -> String {
    let mine = vipd(&[&["ipvs", "list"][..], vipd_args].concat());
    let theirs = ipvsadm(ipvsadm_args);
    let secs = |t: &str| -> Option<i64> {
        let (m, s) = t.split_once(':')?;
        Some(m.parse::<i64>().ok()? * 60 + s.parse::<i64>().ok()?)
    };
    let close = |a: &str, b: &str| {
        // "TCP 01:53  FIN_WAIT ...": protocol (3), space, expire (6)
        a.len() == b.len()
            && a.get(..4) == b.get(..4)
            && a.get(10..) == b.get(10..)
            && match (a.get(4..10), b.get(4..10)) {
                (Some(x), Some(y)) => match (secs(x.trim()), secs(y.trim())) {
                    (Some(x), Some(y)) => (x - y).abs() <= 3,
                    _ => x == y,
                },
                _ => false,
            }
    };
    let same = mine.lines().count() == theirs.lines().count()
        && mine.ends_with('\n') == theirs.ends_with('\n')
        && mine
            .lines()
            .zip(theirs.lines())
            .all(|(a, b)| a == b || close(a, b));
    assert!(
        same,
        "vipd ipvs list {vipd_args:?}:\n{mine}\nipvsadm {ipvsadm_args:?}:\n{theirs}"
    );
    mine
}

#[test]
fn e2e_dr_plan_shows_a_busy_quiesced_real_server_as_draining_and_list_c_matches_ipvsadm() {
    let mut s = sock();
    s.flush().unwrap();
    vipd(&["ipvs", "apply", "-c", &repo("config/ipvs-dr.toml")]);
    let replies = fetch("client", &vec![format!("http://{VIP}/"); 6]);
    assert!(
        replies.iter().filter(|r| *r == "rs2").count() >= 1,
        "{replies:?}"
    );
    fetch(
        "client",
        &[format!("http://{VIP2}/"), format!("http://{VIP2}:443/")],
    );

    let listing = same_listing(&["-c"], &["-Lnc"]);
    assert!(listing.contains("FIN_WAIT"), "DR connections: {listing}");
    assert!(listing.contains("IP  "), "the fwmark template: {listing}");
    same_listing(&["-c", "--persistent-conn"], &["-Lnc", "--persistent-conn"]);
    same_listing(&["--persistent-conn"], &["-Ln", "--persistent-conn"]);
    same_listing(&["--thresholds"], &["-Ln", "--thresholds"]);

    let cut = without_rs2("oneshot-busy");
    let cut = cut.to_str().unwrap();
    vipd(&["ipvs", "apply", "-c", cut]);
    let plan = vipd(&["ipvs", "plan", "-c", cut]);
    let want = "ipvsadm -d -t 198.51.100.100:80 -r 198.51.100.12:80 # draining: ";
    assert!(
        plan.starts_with(want) && plan.ends_with(" connections\n") && plan.lines().count() == 1,
        "{plan}"
    );
    assert_ne!(
        plan,
        format!("{want}0 connections\n"),
        "its TIME_WAIT connections count"
    );
    assert_eq!(
        vipd(&["ipvs", "apply", "-c", cut]),
        plan,
        "apply leaves it draining"
    );
    assert!(ipvsadm(&["-Ln"]).contains("198.51.100.12:80"));
    s.flush().unwrap();
}
