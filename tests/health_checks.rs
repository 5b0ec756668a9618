//! Active and passive health checks through the real proxy on loopback:
//! detection of a killed backend, its return with slow start, fail-open,
//! sorry server, refuse, and health state across a reload.

mod health_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use health_support::*;
use vipd::app::Running;

fn two_backend_config(a: &TestBackend, b: &TestBackend, pool_extra: &str, health: &str) -> String {
    let pool = format!("scheduler = \"rr\"\n{pool_extra}\n{health}");
    tcp_site("127.0.0.1:0", &[a, b], &pool)
}

const TCP_CHECK: &str =
    r#"health = { kind = "tcp", interval = "100ms", timeout = "100ms", rise = 2, fall = 2 }"#;
const HTTP_CHECK: &str = r#"health = { kind = "http", interval = "100ms", timeout = "100ms", rise = 1, fall = 1, path = "/health", expect_status = "200-299" }"#;

#[tokio::test]
async fn a_backend_killed_during_a_request_stream_is_marked_down_and_then_no_request_fails() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = two_backend_config(&a, &b, "passive_fall = 0", TCP_CHECK);
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();

    let before = requests(proxy, 10).await;
    assert_eq!((count(&before, "a"), count(&before, "b")), (5, 5));

    // A steady stream of requests runs while b dies.
    let stream = tokio::spawn(async move {
        let mut answers = Vec::new();
        for _ in 0..200 {
            answers.push(request(proxy).await);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        answers
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_addr = b.kill().await;
    wait_for("b marked down", || !healthy(&running, "p", b_addr)).await;
    let after_detection = requests(proxy, 50).await;
    let during = stream.await.unwrap();

    assert_eq!(count(&after_detection, "a"), 50, "{after_detection:?}");
    // Connects to the dead backend are redispatched, so nothing failed even
    // before detection.
    assert_eq!(during.iter().filter(|r| r.is_err()).count(), 0);
    assert!(healthy(&running, "p", a.addr));
    let state = backend(&running, "p", b_addr).state;
    assert_eq!(state.stats.flips(), 1);
    assert!(state.stats.checks_failed() >= 2);
    running.stop().await;
}

#[tokio::test]
async fn a_returning_backend_comes_back_after_rise_successes_and_ramps_up_with_slow_start() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = two_backend_config(&a, &b, "slow_start = \"3s\"", TCP_CHECK);
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();

    let b_addr = b.kill().await;
    wait_for("b marked down", || !healthy(&running, "p", b_addr)).await;
    let b = TestBackend::start_at("b", b_addr).await;
    let state = backend(&running, "p", b_addr).state;
    let passed_before = state.stats.checks_passed();
    wait_for("b back up", || healthy(&running, "p", b_addr)).await;
    // rise = 2: two passing checks after the restart brought it back.
    assert_eq!(state.stats.checks_passed() - passed_before, 2);

    // Early in its 3 s ramp, b gets a small share of new connections.
    let ramping = backend(&running, "p", b_addr);
    assert!(
        ramping.effective_weight() < 0.5,
        "{}",
        ramping.effective_weight()
    );
    let early = requests(proxy, 20).await;
    assert_eq!(count(&early, "a") + count(&early, "b"), 20);
    assert!(
        count(&early, "b") < 5,
        "b took {} of 20",
        count(&early, "b")
    );

    // Once ramped, round robin splits evenly again.
    for _ in 0..400 {
        if state.ramp_permille() == 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state.ramp_permille(), 1000);
    let later = requests(proxy, 20).await;
    assert_eq!((count(&later, "a"), count(&later, "b")), (10, 10));
    drop(b);
    running.stop().await;
}

#[tokio::test]
async fn when_every_backend_fails_its_check_the_pool_fails_open() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = two_backend_config(&a, &b, "on_all_down = \"fail_open\"", HTTP_CHECK);
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();

    a.health_status.store(503, Ordering::Relaxed);
    b.health_status.store(503, Ordering::Relaxed);
    wait_for("both down", || {
        !healthy(&running, "p", a.addr) && !healthy(&running, "p", b.addr)
    })
    .await;
    assert!(running.snapshot().pools.get("p").unwrap().all_down());
    let answers = requests(proxy, 10).await;
    assert_eq!((count(&answers, "a"), count(&answers, "b")), (5, 5));
    running.stop().await;
}

#[tokio::test]
async fn when_every_backend_fails_its_check_the_sorry_server_answers_until_one_recovers() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let sorry = TestBackend::start("sorry").await;
    let extra = format!("on_all_down = \"sorry\"\nsorry = \"{}\"", sorry.addr);
    let text = two_backend_config(&a, &b, &extra, HTTP_CHECK);
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();

    a.health_status.store(500, Ordering::Relaxed);
    b.health_status.store(404, Ordering::Relaxed);
    wait_for("both down", || {
        !healthy(&running, "p", a.addr) && !healthy(&running, "p", b.addr)
    })
    .await;
    let answers = requests(proxy, 6).await;
    assert_eq!(count(&answers, "sorry"), 6, "{answers:?}");

    b.health_status.store(204, Ordering::Relaxed);
    wait_for("b back", || healthy(&running, "p", b.addr)).await;
    let answers = requests(proxy, 6).await;
    assert_eq!(count(&answers, "b"), 6, "{answers:?}");
    running.stop().await;
}

#[tokio::test]
async fn when_every_backend_fails_its_check_a_refusing_pool_closes_new_connections() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = two_backend_config(&a, &b, "on_all_down = \"refuse\"", HTTP_CHECK);
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();

    a.health_status.store(503, Ordering::Relaxed);
    b.health_status.store(503, Ordering::Relaxed);
    wait_for("both down", || {
        !healthy(&running, "p", a.addr) && !healthy(&running, "p", b.addr)
    })
    .await;
    let answers = requests(proxy, 3).await;
    assert_eq!(answers.iter().filter(|r| r.is_err()).count(), 3);
    assert_eq!(
        a.served.load(Ordering::Relaxed) + b.served.load(Ordering::Relaxed),
        0
    );
    running.stop().await;
}

#[tokio::test]
async fn passive_checks_take_a_refusing_backend_out_and_retry_it_after_the_cool_down() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let extra = "passive_fall = 2\npassive_cooldown = \"300ms\"";
    let text = two_backend_config(&a, &b, extra, "");
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();

    let b_addr = b.kill().await;
    // Each request to b is redispatched to a; the second failure marks b down.
    let answers = requests(proxy, 4).await;
    assert_eq!(count(&answers, "a"), 4);
    assert!(!healthy(&running, "p", b_addr));
    let state = backend(&running, "p", b_addr).state;
    assert_eq!(state.stats.connect_failures(), 2);
    let answers = requests(proxy, 10).await;
    assert_eq!(count(&answers, "a"), 10);
    assert_eq!(state.stats.connect_failures(), 2);

    let b = TestBackend::start_at("b", b_addr).await;
    wait_for("cool-down over", || healthy(&running, "p", b_addr)).await;
    let answers = requests(proxy, 10).await;
    assert_eq!((count(&answers, "a"), count(&answers, "b")), (5, 5));
    assert!(state.healthy.load(Ordering::Relaxed));
    drop(b);
    running.stop().await;
}

#[tokio::test]
async fn health_state_carries_across_a_reload_by_backend_address() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let c = TestBackend::start("c").await;
    let text = two_backend_config(&a, &b, "", TCP_CHECK);
    let running = Running::start(config(&text)).await.unwrap();
    let proxy = running.local_addr("web").await.unwrap();
    let b_addr = b.kill().await;
    wait_for("b marked down", || !healthy(&running, "p", b_addr)).await;

    // The reload reorders the backends and adds c; b stays down.
    let reloaded = two_backend_config(&c, &a, "", TCP_CHECK).replace(
        &format!("{{ address = \"{}\" }}]", a.addr),
        &format!(
            "{{ address = \"{}\" }}, {{ address = \"{b_addr}\" }}]",
            a.addr
        ),
    );
    running.apply(config(&reloaded)).await.unwrap();
    assert!(!healthy(&running, "p", b_addr));
    assert!(healthy(&running, "p", a.addr));
    // Every answer comes from a or c (the split is the scheduler's business).
    let answers = requests(proxy, 10).await;
    assert_eq!(count(&answers, "a") + count(&answers, "c"), 10);
    assert!(count(&answers, "a") > 0 && count(&answers, "c") > 0);
    running.stop().await;
}

#[tokio::test]
async fn with_fall_one_a_dead_backend_is_out_within_one_interval_plus_timeout() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let check =
        r#"health = { kind = "tcp", interval = "100ms", timeout = "100ms", rise = 1, fall = 1 }"#;
    let text = two_backend_config(&a, &b, "passive_fall = 0", check);
    let running = Running::start(config(&text)).await.unwrap();
    let b_addr = b.kill().await;
    let killed = tokio::time::Instant::now();
    wait_for("b marked down", || !healthy(&running, "p", b_addr)).await;
    let took = killed.elapsed();
    // interval + timeout = 200 ms; 150 ms more absorbs a loaded CI machine.
    assert!(took < Duration::from_millis(350), "took {took:?}");
    running.stop().await;
}

#[tokio::test]
async fn ipvs_real_servers_are_checked_and_their_health_published_for_the_reconciler() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let text = format!(
        r#"
[ipvs]
reconcile_interval = "30s"

[[ipvs.service]]
name = "vip80"
address = "192.0.2.10:80"
forwarding = "nat"
real_servers = [{{ address = "{}" }}, {{ address = "{}" }}]
health = {{ kind = "tcp", interval = "100ms", timeout = "100ms", rise = 1, fall = 1 }}
"#,
        a.addr, b.addr
    );
    let running = Running::start(config(&text)).await.unwrap();
    let board = running.ipvs_health().clone();
    let mut changes = board.subscribe();
    assert_eq!(board.is_up("vip80", a.addr), Some(true));
    assert_eq!(board.is_up("vip80", "127.0.0.1:1".parse().unwrap()), None);

    let b_addr = b.kill().await;
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("a flip is announced")
        .unwrap();
    assert_eq!(board.is_up("vip80", b_addr), Some(false));
    assert_eq!(
        board.all(),
        vec![
            ("vip80".to_string(), a.addr, true),
            ("vip80".to_string(), b_addr, false)
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    // Health survives a reload by (service, address).
    running.apply(config(&text)).await.unwrap();
    assert_eq!(board.is_up("vip80", b_addr), Some(false));
    running.stop().await;
}
