//! Real-kernel IPVS tests. They program the kernel's IPVS table, so they run
//! only inside the QEMU VM started by `tests/vm/run.sh` (which builds this
//! target with `--features vm-tests`). Outside the VM every test fails on
//! purpose: they are never skipped silently.
//!
//! - `table_*` run in the guest's initial network namespace.
//! - `e2e_dr_*` run inside the `director` namespace of the DR topology that
//!   `tests/vm/guest.sh` builds (client, router, director, rs1, rs2).
//! - `e2e_nat_*` run inside the `natdir` namespace of the NAT topology.

mod ipvs_vm;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;
use vipd::ipvs::list::{self, Format};
use vipd::ipvs::reconcile::{self, ApplyReport};
use vipd::ipvs::{
    Dest, Error, Family, Forward, IpvsSocket, Op, Protocol, Reconciler, Service, ServiceKey,
    desired,
};

const VIP: &str = "198.51.100.100";
const VIP2: &str = "198.51.100.101";

/// The example DR config as `ipvsadm -Ln` must show it.
const EXAMPLE_LN: &str = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  198.51.100.100:80 wrr
  -> 198.51.100.11:80             Route   1      0          0         
  -> 198.51.100.12:80             Route   2      0          0         
FWM  99 rr persistent 300
  -> 198.51.100.11:0              Route   1      0          0         
  -> 198.51.100.12:0              Route   1      0          0         
";

/// The example DR config as `ipvsadm -Sn` must save it.
const EXAMPLE_SN: &str = "\
-A -t 198.51.100.100:80 -s wrr
-a -t 198.51.100.100:80 -r 198.51.100.11:80 -g -w 1
-a -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 2
-A -f 99 -s rr -p 300
-a -f 99 -r 198.51.100.11:0 -g -w 1
-a -f 99 -r 198.51.100.12:0 -g -w 1
";

fn in_vm() {
    assert_eq!(
        std::env::var("VIPD_IPVS_VM").as_deref(),
        Ok("1"),
        "these tests change the kernel's IPVS table: run them with `bash tests/vm/run.sh`"
    );
}

fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

/// Runs a command, asserts success, returns stdout.
fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The vipd binary: `VIPD_BIN` (a stripped copy that run.sh puts in the
/// guest's initramfs, much faster to start than the debug build over 9p), or
/// the one cargo built.
fn vipd_bin() -> String {
    std::env::var("VIPD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vipd").to_string())
}

fn vipd(args: &[&str]) -> String {
    run(&vipd_bin(), args)
}

fn ipvsadm(args: &[&str]) -> String {
    run("ipvsadm", args)
}

fn sock() -> IpvsSocket {
    in_vm();
    IpvsSocket::open().expect("IPVS is loaded in the VM")
}

fn example() -> (Vec<Service>, Reconciler) {
    let cfg = vipd::config::load(Path::new(&repo("config/ipvs-dr.toml")))
        .expect("example config is valid");
    (
        desired::services(&cfg),
        Reconciler::new(desired::policy(&cfg)),
    )
}

fn lines(ops: &[Op]) -> Vec<String> {
    ops.iter().map(ToString::to_string).collect()
}

fn ok(report: ApplyReport) -> Vec<String> {
    if let Some((op, e)) = report.failed.first() {
        panic!("{op}: {e}");
    }
    lines(&report.applied)
}

fn tcp(addr: &str) -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: addr.parse().unwrap(),
    }
}

fn dest(addr: &str, forward: Forward, weight: u32) -> Dest {
    Dest {
        addr: addr.parse().unwrap(),
        forward,
        weight,
        upper_threshold: 0,
        lower_threshold: 0,
    }
}

// ------------------------------------------------------------- table tests

#[test]
fn table_example_dr_config_applies_to_exactly_the_expected_table() {
    let mut s = sock();
    s.flush().unwrap();
    let applied = vipd(&["ipvs", "apply", "-c", &repo("config/ipvs-dr.toml")]);
    assert_eq!(
        applied,
        "ipvsadm -A -t 198.51.100.100:80 -s wrr
ipvsadm -a -t 198.51.100.100:80 -r 198.51.100.11:80 -g -w 1
ipvsadm -a -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 2
ipvsadm -A -f 99 -s rr -p 300
ipvsadm -a -f 99 -r 198.51.100.11:0 -g -w 1
ipvsadm -a -f 99 -r 198.51.100.12:0 -g -w 1
"
    );
    assert_eq!(ipvsadm(&["-Ln"]), EXAMPLE_LN);
    assert_eq!(ipvsadm(&["-Sn"]), EXAMPLE_SN);
    assert_eq!(vipd(&["ipvs", "list"]), EXAMPLE_LN);
    let plan = vipd(&["ipvs", "plan", "-c", &repo("config/ipvs-dr.toml")]);
    assert!(
        plan.ends_with(": the kernel IPVS table already matches\n"),
        "{plan}"
    );
    s.flush().unwrap();
}

#[test]
fn table_a_service_deleted_by_hand_is_repaired_by_the_next_reconcile() {
    let mut s = sock();
    s.flush().unwrap();
    let (want, mut r) = example();
    assert_eq!(
        ok(r.reconcile(&mut s, &want, Instant::now()).unwrap()).len(),
        6
    );
    ipvsadm(&["-D", "-t", "198.51.100.100:80"]);
    ipvsadm(&["-e", "-f", "99", "-r", "198.51.100.12:0", "-g", "-w", "5"]);
    assert_eq!(
        ok(r.reconcile(&mut s, &want, Instant::now()).unwrap()),
        [
            "ipvsadm -A -t 198.51.100.100:80 -s wrr",
            "ipvsadm -a -t 198.51.100.100:80 -r 198.51.100.11:80 -g -w 1",
            "ipvsadm -a -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 2",
            "ipvsadm -e -f 99 -r 198.51.100.12:0 -g -w 1",
        ]
    );
    assert_eq!(ipvsadm(&["-Ln"]), EXAMPLE_LN);
    assert_eq!(
        ok(r.reconcile(&mut s, &want, Instant::now()).unwrap()),
        Vec::<String>::new()
    );
    s.flush().unwrap();
}

/// A table with every kind of service and forwarding, made by ipvsadm, plus
/// marks and addresses more than 2^31 apart (ipvsadm's sort overflows there).
const RICH_TABLE: &str = "
ipvsadm -A -t 192.0.2.10:80 -s sh -b sh-fallback,sh-port
ipvsadm -a -t 192.0.2.10:80 -r 192.0.2.21:80 -g -w 1 -x 100 -y 10
ipvsadm -a -t 192.0.2.10:80 -r 192.0.2.3:80 -m -w 0
ipvsadm -A -t 192.0.2.10:443 -s wrr -p 360 -M 255.255.255.0
ipvsadm -a -t 192.0.2.10:443 -r 192.0.2.21:443 -i -w 5
ipvsadm -A -u 192.0.2.10:53 -s rr -o
ipvsadm -A --sctp-service 192.0.2.10:5000 -s lc
ipvsadm -A -u [2001:db8::10]:53 -s rr -p 60 -M 64
ipvsadm -a -u [2001:db8::10]:53 -r [2001:db8::21]:53 -m -w 3
ipvsadm -A -f 7 -6 -s mh -b mh-port
ipvsadm -A -f 99 -s rr -p
ipvsadm -a -f 99 -r 192.0.2.21:0 -g -w 1
ipvsadm -A -f 3000000000 -s rr
ipvsadm -A -t [2001:db8::10]:80 -s rr
ipvsadm -A -t [2001:db8:9000::10]:80 -s rr
ipvsadm -a -t [2001:db8:9000::10]:80 -r [2001:db8::21]:80 -m
ipvsadm -a -t [2001:db8:9000::10]:80 -r [2001:db8:9000::21]:80 -m
";

#[test]
fn table_vipd_list_matches_ipvsadm_for_every_format() {
    let mut s = sock();
    s.flush().unwrap();
    run("bash", &["-ec", RICH_TABLE]);
    let info = s.info().unwrap();
    let services = s.services().unwrap();
    for (args, format) in [
        (&["-Ln"][..], Format::Plain),
        (&["-Ln", "--stats"], Format::Stats),
        (&["-Ln", "--rate"], Format::Rate),
    ] {
        assert_eq!(
            list::render(&info, &services, format),
            ipvsadm(args),
            "ipvsadm {args:?}"
        );
    }
    assert_eq!(vipd(&["ipvs", "list"]), ipvsadm(&["-Ln"]));
    assert_eq!(
        vipd(&["ipvs", "list", "--stats"]),
        ipvsadm(&["-Ln", "--stats"])
    );
    assert_eq!(
        vipd(&["ipvs", "list", "--rate"]),
        ipvsadm(&["-Ln", "--rate"])
    );
    for args in [
        &["--thresholds"][..],
        &["--persistent-conn"],
        &["--stats", "--exact"],
        &["--rate", "--exact"],
    ] {
        assert_eq!(
            vipd(&[&["ipvs", "list"][..], args].concat()),
            ipvsadm(&[&["-Ln"][..], args].concat()),
            "{args:?}"
        );
    }
    assert_eq!(vipd(&["ipvs", "list", "-c"]), ipvsadm(&["-Lnc"]));
    s.flush().unwrap();
}

#[test]
fn table_the_kernel_stores_what_vipd_sent_and_vipd_reads_what_ipvsadm_sent() {
    let mut s = sock();
    s.flush().unwrap();
    // what ipvsadm created (the golden-vector commands) reads back as the same model
    run(
        "bash",
        &[
            "-ec",
            "ipvsadm -A -t 192.0.2.10:80 -s wrr
                  ipvsadm -a -t 192.0.2.10:80 -r 192.0.2.21:80 -g -w 1
                  ipvsadm -A -f 99 -s rr -p 300
                  ipvsadm -a -f 99 -r 192.0.2.21:0 -g -w 1
                  ipvsadm -A -t [2001:db8::10]:443 -s sh -p 60",
        ],
    );
    let mut web = Service::new(tcp("192.0.2.10:80"), "wrr");
    web.dests = vec![dest("192.0.2.21:80", Forward::Dr, 1)];
    let mut fwm = Service::new(
        ServiceKey::Fwmark {
            mark: 99,
            family: Family::Inet,
        },
        "rr",
    );
    fwm.timeout = Some(300);
    fwm.dests = vec![dest("192.0.2.21:0", Forward::Dr, 1)];
    let mut v6 = Service::new(tcp("[2001:db8::10]:443"), "sh");
    v6.timeout = Some(60);
    let mut got: Vec<Service> = s
        .services()
        .unwrap()
        .iter()
        .map(|k| k.to_service())
        .collect();
    got.sort_by_key(|s| s.key);
    let mut want = vec![web, fwm, v6];
    want.sort_by_key(|s| s.key);
    assert_eq!(got, want);
    s.flush().unwrap();

    // what vipd sends, the kernel stores and returns unchanged
    let mut nat = Service::new(
        ServiceKey::Addr {
            protocol: Protocol::Udp,
            addr: "192.0.2.10:53".parse().unwrap(),
        },
        "lc",
    );
    nat.timeout = Some(120);
    nat.netmask = 24;
    nat.flags = vipd::ipvs::consts::IP_VS_SVC_F_ONEPACKET;
    nat.dests = vec![
        Dest {
            upper_threshold: 50,
            lower_threshold: 5,
            ..dest("192.0.2.31:5353", Forward::Nat, 3)
        },
        dest("192.0.2.32:5353", Forward::Nat, 0),
    ];
    let mut tun = Service::new(
        ServiceKey::Fwmark {
            mark: 7,
            family: Family::Inet6,
        },
        "mh",
    );
    tun.flags = vipd::ipvs::consts::IP_VS_SVC_F_SCHED2;
    tun.dests = vec![dest("[2001:db8::21]:0", Forward::Tunnel, 2)];
    let mut sctp = Service::new(
        ServiceKey::Addr {
            protocol: Protocol::Sctp,
            addr: "192.0.2.10:5000".parse().unwrap(),
        },
        "wlc",
    );
    sctp.dests = vec![dest("192.0.2.21:5000", Forward::Dr, 4)];
    let mut want = vec![nat, tun, sctp];
    let mut r = Reconciler::new(vipd::ipvs::Policy::default());
    ok(r.reconcile(&mut s, &want, Instant::now()).unwrap());
    let mut got: Vec<Service> = s
        .services()
        .unwrap()
        .iter()
        .map(|k| k.to_service())
        .collect();
    got.sort_by_key(|s| s.key);
    for g in &mut got {
        g.dests.sort_by_key(|d| d.addr);
    }
    want.sort_by_key(|s| s.key);
    assert_eq!(got, want);
    s.flush().unwrap();
}

#[test]
fn table_errors_are_clear_and_keep_the_errno() {
    let mut s = sock();
    s.flush().unwrap();
    let bad = Service::new(tcp("192.0.2.10:80"), "nosuch");
    let e = s.add_service(&bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        "add service -t 192.0.2.10:80: unknown scheduler \"nosuch\": the kernel has no module `ip_vs_nosuch` (try `modprobe ip_vs_nosuch`)"
    );
    let web = Service::new(tcp("192.0.2.10:80"), "rr");
    s.add_service(&web).unwrap();
    let e = s.add_service(&web).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
    assert!(matches!(e, Error::Kernel { .. }));
    reconcile::apply_op(&mut s, &Op::AddService(web.clone())).expect("EEXIST on add is an edit");
    let rs: std::net::SocketAddr = "192.0.2.21:80".parse().unwrap();
    assert_eq!(
        s.delete_dest(&web.key, rs).unwrap_err().errno(),
        Some(libc::ENOENT)
    );
    reconcile::apply_op(
        &mut s,
        &Op::DeleteDest {
            service: web.key,
            addr: rs,
        },
    )
    .expect("already gone");
    s.delete_service(&web.key).unwrap();
    let e = s.delete_service(&web.key).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ESRCH), "{e}");
    reconcile::apply_op(&mut s, &Op::DeleteService(web.key)).expect("already gone");
}

#[test]
fn table_a_removed_real_server_is_quiesced_before_it_is_deleted() {
    let mut s = sock();
    s.flush().unwrap();
    let (mut want, mut r) = example();
    let t0 = Instant::now();
    ok(r.reconcile(&mut s, &want, t0).unwrap());
    want[0].dests.pop();
    assert_eq!(
        ok(r.reconcile(&mut s, &want, t0).unwrap()),
        ["ipvsadm -e -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 0"]
    );
    assert!(
        ipvsadm(&["-Ln"]).contains("  -> 198.51.100.12:80             Route   0      0          0")
    );
    assert_eq!(r.draining(), 1);
    // no connection uses it, so the next pass deletes it
    assert_eq!(
        ok(r.reconcile(&mut s, &want, t0 + Duration::from_secs(1))
            .unwrap()),
        ["ipvsadm -d -t 198.51.100.100:80 -r 198.51.100.12:80"]
    );
    assert!(!ipvsadm(&["-Ln"]).contains("198.51.100.12:80"));
    s.flush().unwrap();
}

// ------------------------------------------------------------- end to end

/// Fetches each URL from the `ns` namespace with busybox wget (one spawn),
/// returning the bodies (`ERR` for failures).
fn fetch(ns: &str, urls: &[String]) -> Vec<String> {
    let script =
        "for u in \"$@\"; do timeout 5 busybox wget -q -O - \"$u\" 2>/dev/null || echo ERR; done";
    let mut args = vec!["netns", "exec", ns, "sh", "-c", script, "sh"];
    args.extend(urls.iter().map(String::as_str));
    run("ip", &args).lines().map(str::to_string).collect()
}

#[test]
fn e2e_dr_wrr_carries_tcp_from_the_client_to_both_real_servers() {
    let mut s = sock();
    s.flush().unwrap();
    let (want, mut r) = example();
    ok(r.reconcile(&mut s, &want, Instant::now()).unwrap());
    let replies = fetch("client", &vec![format!("http://{VIP}/"); 9]);
    let count = |n: &str| replies.iter().filter(|r| *r == n).count();
    assert_eq!(
        (count("rs1"), count("rs2")),
        (3, 6),
        "wrr 1:2 over 9 connections: {replies:?}"
    );
    std::thread::sleep(Duration::from_millis(2500)); // the estimator folds counters every 2 s
    let web = s
        .services()
        .unwrap()
        .into_iter()
        .find(|k| k.key == want[0].key)
        .unwrap();
    assert_eq!(web.stats.conns, 9);
    assert!(web.stats.inpkts > 0);
    assert_eq!(web.stats.outpkts, 0, "DR replies go straight to the client");
    assert_eq!(
        vipd(&["ipvs", "list", "--stats"]),
        ipvsadm(&["-Ln", "--stats"])
    );
}

#[test]
fn e2e_dr_fwmark_group_keeps_one_client_on_one_real_server_for_80_and_443() {
    let mut s = sock();
    let (want, mut r) = example();
    ok(r.reconcile(&mut s, &want, Instant::now()).unwrap());
    // tests/vm/guest.sh marks VIP2:80 and VIP2:443 with 99 (tc skbedit)
    let urls: Vec<String> = (0..6)
        .map(|i| format!("http://{VIP2}:{}/", if i % 2 == 0 { 80 } else { 443 }))
        .collect();
    let replies = fetch("client", &urls);
    assert!(replies[0] == "rs1" || replies[0] == "rs2", "{replies:?}");
    assert!(
        replies.iter().all(|r| *r == replies[0]),
        "persistence across ports 80 and 443: {replies:?}"
    );
    let fwm = s
        .services()
        .unwrap()
        .into_iter()
        .find(|k| k.key == want[1].key)
        .unwrap();
    let used: u32 = fwm.dests.iter().map(|d| d.persist_conns).sum();
    assert!(used >= 1, "a persistence template exists: {fwm:?}");
}

const NAT_CONFIG: &str = r#"
[ipvs]
drain_period = "10s"

[[ipvs.service]]
name = "nat"
address = "203.0.113.100:80"
scheduler = "rr"
forwarding = "nat"
real_servers = [ { address = "192.0.2.11:8080" }, { address = "192.0.2.12:8080" } ]
"#;

#[test]
fn e2e_nat_rr_alternates_real_servers_and_replies_pass_the_director() {
    let mut s = sock();
    s.flush().unwrap();
    let cfg = vipd::config::parse(NAT_CONFIG, Path::new("nat.toml")).expect("valid NAT config");
    let want = desired::services(&cfg);
    let mut r = Reconciler::new(desired::policy(&cfg));
    ok(r.reconcile(&mut s, &want, Instant::now()).unwrap());
    let replies = fetch("nclient", &vec!["http://203.0.113.100/".to_string(); 4]);
    let mut sorted = replies.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["rs1-nat", "rs1-nat", "rs2-nat", "rs2-nat"],
        "{replies:?}"
    );
    assert_ne!(replies[0], replies[1], "rr alternates");
    std::thread::sleep(Duration::from_millis(2500));
    let svc = s.services().unwrap().remove(0);
    assert_eq!(svc.stats.conns, 4);
    assert!(svc.stats.outpkts > 0, "NAT replies pass the director");
}

// ------------------------------------------------------------- vipd run

fn run_config(with_api: bool) -> String {
    let api = if with_api {
        r#"
[[ipvs.service]]
name = "api"
address = "192.0.2.10:443"
scheduler = "rr"
real_servers = [ { address = "192.0.2.21:443" } ]
"#
    } else {
        ""
    };
    format!(
        r#"
[ipvs]
on_shutdown = "remove"
reconcile_interval = "1s"
drain_period = "1s"

[[ipvs.service]]
name = "web"
address = "192.0.2.10:80"
scheduler = "wrr"
real_servers = [ {{ address = "192.0.2.21:80", weight = 1 }}, {{ address = "192.0.2.22:80", weight = 2 }} ]
{api}"#
    )
}

/// Polls the kernel table (no process spawn) until `cond` holds.
fn wait_for(s: &mut IpvsSocket, what: &str, cond: impl Fn(&[vipd::ipvs::KernelService]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = s.services().unwrap();
        if cond(&table) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {table:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn table_vipd_run_reconciles_at_start_periodically_on_sighup_and_removes_on_shutdown() {
    let mut s = sock();
    s.flush().unwrap();
    let dir = std::env::temp_dir().join("vipd-run-test");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vipd.toml");
    let log = dir.join("vipd.log");
    std::fs::write(&cfg, run_config(true)).unwrap();
    let mut child = Command::new(vipd_bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let web = tcp("192.0.2.10:80");
    let api = tcp("192.0.2.10:443");
    let has = |k: ServiceKey| move |t: &[vipd::ipvs::KernelService]| t.iter().any(|s| s.key == k);
    wait_for(&mut s, "both services at start", |t| {
        has(web)(t) && has(api)(t)
    });

    s.delete_service(&web).unwrap();
    wait_for(
        &mut s,
        "the periodic pass to repair the hand-deleted service",
        |t| t.iter().any(|s| s.key == web && s.dests.len() == 2),
    );

    std::fs::write(&cfg, run_config(false)).unwrap();
    run("kill", &["-HUP", &pid]);
    wait_for(
        &mut s,
        "SIGHUP to remove the service dropped from the config",
        |t| has(web)(t) && !has(api)(t),
    );

    // A reload carrying an out-of-range value changes neither tier: the
    // api service stays removed and the weights stay, through the periodic
    // passes that follow the refusal too.
    let before = s.services().unwrap();
    let bad = run_config(true).replace("weight = 2", "weight = 70000");
    std::fs::write(&cfg, bad).unwrap();
    run("kill", &["-HUP", &pid]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("reload failed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed reload logged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("weight"), "the error names the field: {text}");
    // Two reconcile intervals (1 s) later the table is still the old one.
    std::thread::sleep(Duration::from_millis(2500));
    let keys = |t: &[vipd::ipvs::KernelService]| {
        t.iter()
            .map(|s| {
                (
                    s.key,
                    s.dests.iter().map(|d| d.dest.weight).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&s.services().unwrap()), keys(&before));
    assert!(child.try_wait().unwrap().is_none(), "vipd exited: {text}");

    run("kill", &["-TERM", &pid]);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "vipd run exited with {status}: {log}");
    assert_eq!(
        s.services().unwrap(),
        [],
        "on_shutdown = \"remove\" deletes vipd's services: {log}"
    );
}

#[test]
fn table_without_cap_net_admin_the_error_says_so() {
    in_vm();
    let cmd = format!("{} ipvs list", vipd_bin());
    let out = Command::new("su")
        .args(["-s", "/usr/bin/bash", "nobody", "-c", &cmd])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vipd: get IPVS info: permission denied: programming IPVS needs CAP_NET_ADMIN (run vipd as root or grant it the capability)\n"
    );
}

const HEALTH_CONFIG: &str = r#"
[ipvs]
reconcile_interval = "60s"

[[ipvs.service]]
name = "web"
address = "192.0.2.10:80"
scheduler = "wrr"
forwarding = "nat"
real_servers = [ { address = "192.0.2.21:80", weight = 1 }, { address = "192.0.2.22:80", weight = 2 } ]
health = { kind = "tcp", interval = "500ms", timeout = "500ms", rise = 1, fall = 1 }
"#;

#[test]
fn table_vipd_run_removes_a_real_server_whose_check_fails_and_adds_it_back_on_rise() {
    health_flip(HEALTH_CONFIG, &[1]);
}

#[test]
fn table_with_inhibit_on_failure_vipd_run_quiesces_a_failed_real_server_instead() {
    let config = HEALTH_CONFIG.replace("health = {", "inhibit_on_failure = true\nhealth = {");
    health_flip(&config, &[1, 0]);
}

/// `vipd run` on `config`: .22 fails its check (the kernel then has the
/// weights `down`), then answers and gets its weight 2 back.
fn health_flip(config: &str, down: &[u32]) {
    let mut s = sock();
    s.flush().unwrap();
    let dir = std::env::temp_dir().join(format!("vipd-health-{}", down.len()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "up\n").unwrap();
    let cfg = dir.join("vipd.toml");
    std::fs::write(&cfg, config).unwrap();
    // rs .21 answers (an address on lo with a web server); .22 does not exist yet
    let httpd = |ip: &str| {
        run("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        Command::new("busybox")
            .args([
                "httpd",
                "-f",
                "-p",
                &format!("{ip}:80"),
                "-h",
                dir.to_str().unwrap(),
            ])
            .spawn()
            .unwrap()
    };
    let mut rs1 = httpd("192.0.2.21");
    let log = dir.join("vipd.log");
    let mut vipd = Command::new(vipd_bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let weights = |t: &[vipd::ipvs::KernelService]| -> Vec<u32> {
        let mut d: Vec<_> = t
            .iter()
            .flat_map(|s| s.dests.iter())
            .map(|d| (d.dest.addr, d.dest.weight))
            .collect();
        d.sort();
        d.into_iter().map(|(_, w)| w).collect()
    };
    wait_for(
        &mut s,
        "the failing real server to be removed or quiesced",
        |t| weights(t) == down,
    );
    let mut rs2 = httpd("192.0.2.22");
    wait_for(
        &mut s,
        "the recovered real server to get its weight back",
        |t| weights(t) == [1, 2],
    );

    run("kill", &["-TERM", &vipd.id().to_string()]);
    let status = vipd.wait().unwrap();
    for rs in [&mut rs1, &mut rs2] {
        let _ = rs.kill();
        let _ = rs.wait();
    }
    for ip in ["192.0.2.21/32", "192.0.2.22/32"] {
        run("ip", &["addr", "del", ip, "dev", "lo"]);
    }
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "vipd run exited with {status}: {log}");
    assert!(log.contains("IPVS real server is down"), "{log}");
    s.flush().unwrap();
}
