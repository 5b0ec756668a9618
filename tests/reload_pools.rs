//! Reloads that change an HTTP listener's pools under steady keep-alive
//! load: no request fails, requests in flight at a reload finish with 200
//! (on the backend they started with, even one just removed), and requests
//! sent after a reload reach only the backends of the new configuration.

mod http_support;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_support::{Backend, get, h1_client};
use tokio::time::Instant;

/// A configuration whose vhost routes to `pool`, and the pools `(name,
/// backends)` it defines.
fn config(pool: &str, pools: &[(&str, &[SocketAddr])]) -> String {
    let mut text = format!(
        r#"
[global]
access_log = "off"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"

[[vhost]]
name = "site"
hosts = ["site.test"]
pool = "{pool}"
"#
    );
    for (name, backends) in pools {
        let list: Vec<String> = backends
            .iter()
            .map(|a| format!("{{ address = \"{a}\" }}"))
            .collect();
        text.push_str(&format!(
            "\n[[pool]]\nname = \"{name}\"\nbackends = [{}]\n",
            list.join(", ")
        ));
    }
    text
}

/// One request of the load.
struct Done {
    started: Instant,
    ended: Instant,
    outcome: Result<(u16, String), String>,
}

/// A reload: when it began and returned, and the backend names the new
/// configuration routes to.
struct Reload {
    began: Instant,
    returned: Instant,
    serves: BTreeSet<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_new_ones_follow_the_new_pools() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (ra, rb) = (&[a.addr][..], &[b.addr][..]);
    let both = &[a.addr, b.addr][..];
    let sets = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
    // Each step: the configuration and the backends it serves from.
    let steps = [
        (config("p", &[("p", rb)]), sets(&["b"])),
        (config("p", &[("p", both)]), sets(&["a", "b"])),
        // The vhost moves to a new pool; pool "p" disappears.
        (config("q", &[("q", rb)]), sets(&["b"])),
        (config("p", &[("p", ra)]), sets(&["a"])),
        (config("p", &[("p", both)]), sets(&["a", "b"])),
        (config("p", &[("p", rb)]), sets(&["b"])),
    ];

    let dir = support::tempdir();
    let path = dir.join("vipd.toml");
    std::fs::write(&path, config("p", &[("p", ra)])).unwrap();
    let running = vipd::app::Running::start(vipd::config::load(&path).unwrap())
        .await
        .unwrap();
    let proxy = running.local_addr("web").await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                // One keep-alive connection per task, reused across reloads.
                let client = h1_client();
                let mut done = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = match client.request(get(proxy, "site.test", "/sleep/300")).await
                    {
                        Ok(resp) => {
                            let backend = resp
                                .headers()
                                .get("x-backend")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            Ok((resp.status().as_u16(), backend))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    done.push(Done {
                        started,
                        ended: Instant::now(),
                        outcome,
                    });
                }
                done
            })
        })
        .collect();

    let mut reloads = vec![Reload {
        began: Instant::now(),
        returned: Instant::now(),
        serves: sets(&["a"]),
    }];
    for (text, serves) in steps {
        // Mid-request for every client: requests take 300 ms.
        tokio::time::sleep(Duration::from_millis(450)).await;
        std::fs::write(&path, text).unwrap();
        let began = Instant::now();
        running.reload().await.unwrap();
        reloads.push(Reload {
            began,
            returned: Instant::now(),
            serves,
        });
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for c in clients {
        done.extend(c.await.unwrap());
    }

    let failed: Vec<_> = done
        .iter()
        .filter(|d| !matches!(&d.outcome, Ok((200, _))))
        .map(|d| &d.outcome)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        done.len()
    );
    for r in &reloads[1..] {
        let spanning = done
            .iter()
            .filter(|d| d.started < r.began && d.ended > r.returned)
            .count();
        assert!(spanning > 0, "no request was in flight during a reload");
    }
    // A request sent after a reload returned (and before the next began)
    // reaches only the backends of that configuration.
    for (i, r) in reloads.iter().enumerate() {
        let next = reloads.get(i + 1).map(|n| n.began);
        for d in &done {
            let after = d.started >= r.returned && next.is_none_or(|n| d.started < n);
            let Ok((_, backend)) = &d.outcome else {
                continue;
            };
            if after {
                assert!(
                    r.serves.contains(backend.as_str()),
                    "step {i}: request went to {backend:?}, configuration serves {:?}",
                    r.serves
                );
            }
        }
    }
    // Both backends served, so the test saw the pools change.
    assert!(a.requests() > 0 && b.requests() > 0);
    assert!(done.len() >= 6 * 7, "only {} requests", done.len());
    running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
