use std::path::Path;

use super::*;
use crate::balance::Backend;
use crate::config::SchedulerKind;

fn group(
    timeout_s: u64,
    prefix_v4: u8,
    max_entries: usize,
    expire_quiescent: bool,
) -> config::PersistenceGroup {
    config::PersistenceGroup {
        name: "web".into(),
        timeout: Duration::from_secs(timeout_s),
        prefix_v4,
        prefix_v6: 64,
        max_entries,
        expire_quiescent,
    }
}

/// A round-robin pool over hosts 10.0.0.1.. on `port`.
fn pool(port: u16, hosts: u8) -> Pool {
    let backends = (1..=hosts)
        .map(|h| Backend::new(SocketAddr::from(([10, 0, 0, h], port)), 1))
        .collect();
    Pool::from_backends("p", backends, SchedulerKind::Rr, 65_537)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

use std::net::SocketAddr;

#[test]
fn a_client_reaches_the_same_backend_host_through_every_pool_of_the_group() {
    let table = Arc::new(PersistenceTable::new(&group(360, 32, 100, false)));
    let (http, https) = (pool(80, 3), pool(443, 3));
    let a = http.select_persistent(ip("192.0.2.1"), &table).unwrap();
    let b = http.select_persistent(ip("192.0.2.2"), &table).unwrap();
    assert_eq!(a.address, "10.0.0.1:80".parse().unwrap());
    assert_eq!(b.address, "10.0.0.2:80".parse().unwrap());
    // A new client takes the 443 pool's first rr pick, 10.0.0.1; the next
    // rr pick would be 10.0.0.2, but client .1 sticks to 10.0.0.1.
    let c = https.select_persistent(ip("192.0.2.3"), &table).unwrap();
    assert_eq!(c.address, "10.0.0.1:443".parse().unwrap());
    let a2 = https.select_persistent(ip("192.0.2.1"), &table).unwrap();
    assert_eq!(a2.address, "10.0.0.1:443".parse().unwrap());
    let b2 = https.select_persistent(ip("192.0.2.2"), &table).unwrap();
    assert_eq!(b2.address, "10.0.0.2:443".parse().unwrap());
    assert_eq!(table.lookup(ip("192.0.2.1")).unwrap().connections, 2);
    assert!(a.is_persistent());
}

#[test]
fn clients_of_one_netmask_share_an_entry() {
    let table = Arc::new(PersistenceTable::new(&group(360, 24, 100, false)));
    let p = pool(80, 3);
    let picks: Vec<SocketAddr> = [
        "192.0.2.1",
        "192.0.2.200",
        "192.0.3.1",
        "2001:db8::1",
        "2001:db8::ffff:1",
        "2001:db8:0:1::1",
    ]
    .iter()
    .map(|c| p.select_persistent(ip(c), &table).unwrap().address)
    .collect();
    let host = |i: u8| SocketAddr::from(([10, 0, 0, i], 80));
    assert_eq!(
        picks,
        vec![host(1), host(1), host(2), host(3), host(3), host(1)]
    );
    let clients: Vec<String> = table.list().iter().map(|e| e.client.to_string()).collect();
    assert_eq!(
        clients,
        [
            "192.0.2.0/24",
            "192.0.3.0/24",
            "2001:db8::/64",
            "2001:db8:0:1::/64"
        ]
    );
}

#[test]
fn a_limited_listing_gives_the_smallest_prefixes_in_order_and_counts_them_all() {
    let table = Arc::new(PersistenceTable::new(&group(360, 32, 100, false)));
    let p = pool(80, 3);
    let leases: Vec<_> = [
        "192.0.2.9",
        "192.0.2.3",
        "192.0.2.7",
        "192.0.2.1",
        "192.0.2.5",
    ]
    .iter()
    .map(|c| p.select_persistent(ip(c), &table).unwrap())
    .collect();
    let (rows, live) = table.list_first(3);
    let clients: Vec<String> = rows.iter().map(|e| e.client.to_string()).collect();
    assert_eq!(clients, ["192.0.2.1/32", "192.0.2.3/32", "192.0.2.5/32"]);
    assert_eq!(live, 5);
    assert_eq!(table.list_first(10).0.len(), 5);
    assert!(table.list_first(0).0.is_empty());
    drop(leases);
}

#[tokio::test(start_paused = true)]
async fn an_entry_lives_while_connections_are_open_and_expires_timeout_after_the_last() {
    let table = Arc::new(PersistenceTable::new(&group(360, 32, 100, false)));
    let p = pool(80, 2);
    let client = ip("192.0.2.1");
    let first = p.select_persistent(client, &table).unwrap();
    let second = p.select_persistent(client, &table).unwrap();
    tokio::time::advance(Duration::from_secs(1000)).await;
    let e = table.lookup(client).unwrap();
    assert_eq!((e.connections, e.expires_in), (2, None));
    drop(first);
    assert_eq!(table.lookup(client).unwrap().expires_in, None);
    drop(second);
    let e = table.lookup(client).unwrap();
    assert_eq!(
        (e.connections, e.expires_in),
        (0, Some(Duration::from_secs(360)))
    );
    tokio::time::advance(Duration::from_secs(359)).await;
    assert_eq!(
        table.lookup(client).unwrap().expires_in,
        Some(Duration::from_secs(1))
    );
    // Reconnecting within the timeout sticks and stops the countdown.
    let again = p.select_persistent(client, &table).unwrap();
    assert_eq!(again.address.ip(), ip("10.0.0.1"));
    drop(again);
    tokio::time::advance(Duration::from_secs(360)).await;
    assert_eq!(table.lookup(client), None);
    assert!(table.list().is_empty());
    assert_eq!(table.purge_expired(), 1);
    // Expired: the client is scheduled afresh (rr moves on to 10.0.0.2).
    let fresh = p.select_persistent(client, &table).unwrap();
    assert_eq!(fresh.address.ip(), ip("10.0.0.2"));
}

#[test]
fn an_unhealthy_persistent_backend_reschedules_the_client() {
    let table = Arc::new(PersistenceTable::new(&group(360, 32, 100, false)));
    let p = pool(80, 3);
    let client = ip("192.0.2.1");
    assert_eq!(
        p.select_persistent(client, &table).unwrap().address.ip(),
        ip("10.0.0.1")
    );
    p.backends[0]
        .state
        .healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        p.select_persistent(client, &table).unwrap().address.ip(),
        ip("10.0.0.2")
    );
    p.backends[0]
        .state
        .healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        p.select_persistent(client, &table).unwrap().address.ip(),
        ip("10.0.0.2")
    );
}

#[test]
fn weight_zero_keeps_persistence_unless_expire_quiescent() {
    for (expire, want) in [(false, "10.0.0.1"), (true, "10.0.0.2")] {
        let table = Arc::new(PersistenceTable::new(&group(360, 32, 100, expire)));
        let client = ip("192.0.2.1");
        let p = pool(80, 2);
        drop(p.select_persistent(client, &table));
        let mut quiesced: Vec<Backend> = p.backends.clone();
        quiesced[0].weight = 0;
        let q = Pool::from_backends("p", quiesced, SchedulerKind::Rr, 65_537);
        assert_eq!(
            q.select_persistent(client, &table).unwrap().address.ip(),
            ip(want)
        );
        // New clients never go to the quiesced backend.
        assert_eq!(
            q.select_persistent(ip("192.0.2.9"), &table)
                .unwrap()
                .address
                .ip(),
            ip("10.0.0.2")
        );
    }
}

#[test]
fn a_full_table_evicts_the_entry_closest_to_expiry() {
    let table = Arc::new(PersistenceTable::new(&group(360, 32, 2, false)));
    let p = pool(80, 3);
    let a = p.select_persistent(ip("192.0.2.1"), &table).unwrap();
    let b = p.select_persistent(ip("192.0.2.2"), &table).unwrap();
    // Both entries have open connections: the third client is served
    // without being recorded.
    let c = p.select_persistent(ip("192.0.2.3"), &table).unwrap();
    assert!(!c.is_persistent());
    assert_eq!(table.len(), 2);
    drop(b);
    drop(a);
    // .2 was released first, so it expires first and is evicted.
    let d = p.select_persistent(ip("192.0.2.4"), &table).unwrap();
    assert!(d.is_persistent());
    let clients: Vec<String> = table.list().iter().map(|e| e.client.to_string()).collect();
    assert_eq!(clients, ["192.0.2.1/32", "192.0.2.4/32"]);
}

#[test]
fn a_failed_connect_forgets_the_entry_and_the_old_lease_leaves_the_new_one_alone() {
    let table = Arc::new(PersistenceTable::new(&group(360, 32, 100, false)));
    let p = pool(80, 3);
    let client = ip("192.0.2.1");
    let open = p.select_persistent(client, &table).unwrap();
    let failed = p.select_persistent(client, &table).unwrap();
    assert_eq!(failed.address.ip(), ip("10.0.0.1"));
    failed.connect_failed();
    assert_eq!(table.lookup(client), None);
    let retry = p.select_persistent(client, &table).unwrap();
    assert_eq!(retry.address.ip(), ip("10.0.0.2"));
    drop(open);
    let e = table.lookup(client).unwrap();
    assert_eq!((e.backend, e.connections), (ip("10.0.0.2"), 1));
    drop(retry);
}

fn config(text: &str) -> config::Config {
    crate::config::parse(text, Path::new("test.toml")).unwrap()
}

const TWO_HOSTS: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "web"
persistence = "sticky"

[[pool]]
name = "web"
backends = [{ address = "10.0.0.1:80" }, { address = "10.0.0.2:80" }]

[[persistence]]
name = "sticky"
"#;

#[test]
fn reload_keeps_the_table_and_entries_to_backends_that_remain() {
    let first = config(TWO_HOSTS);
    let tables = PersistenceTables::build(&first, None);
    let table = tables.get("sticky").unwrap().clone();
    let p = Pool::new(&first.pools[0], None);
    drop(p.select_persistent(ip("192.0.2.1"), &table));
    drop(p.select_persistent(ip("192.0.2.2"), &table));
    let same = PersistenceTables::build(&first, Some(&tables));
    assert!(Arc::ptr_eq(same.get("sticky").unwrap(), &table));
    assert_eq!(table.len(), 2);
    let second = config(&TWO_HOSTS.replace(", { address = \"10.0.0.2:80\" }", ""));
    let after = PersistenceTables::build(&second, Some(&same));
    assert!(Arc::ptr_eq(after.get("sticky").unwrap(), &table));
    let left: Vec<IpAddr> = table.list().iter().map(|e| e.backend).collect();
    assert_eq!(left, [ip("10.0.0.1")]);
    let default = &after.get("sticky").unwrap().lock().settings;
    assert_eq!(default.timeout, Duration::from_secs(360));
}

#[test]
fn the_summary_names_the_prefixes_with_the_most_open_connections_first() {
    let table = Arc::new(PersistenceTable::new(&group(360, 24, 100, false)));
    let p = pool(80, 2);
    let mut leases = Vec::new();
    // 192.0.2.0/24 holds 3 connections, 198.51.100.0/24 holds 2, and
    // 203.0.113.0/24 and 10.1.1.0/24 one each.
    for (client, n) in [
        ("203.0.113.7", 1),
        ("192.0.2.1", 3),
        ("10.1.1.1", 1),
        ("198.51.100.9", 2),
    ] {
        for _ in 0..n {
            leases.push(p.select_persistent(ip(client), &table).unwrap());
        }
    }
    let s = table.summary(3);
    assert_eq!(s.entries, 4);
    let top: Vec<_> = s
        .top
        .iter()
        .map(|e| (e.client.to_string(), e.connections))
        .collect();
    assert_eq!(
        top,
        [
            ("192.0.2.0/24".to_string(), 3),
            ("198.51.100.0/24".to_string(), 2),
            ("10.1.1.0/24".to_string(), 1),
        ]
    );
    assert!(s.ranked);
    assert_eq!(table.summary(0).top, []);
    drop(leases);
}
