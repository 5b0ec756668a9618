//! The status page in a real browser: headless Chromium loads the page of a
//! running vipd whose https vhost has a certificate expiring in 10 days, a
//! backend down by its health check and a failed reload whose error quotes
//! a `<script>`, runs the page's script, and the rendered DOM is checked
//! for the listener, backend (state and cause), certificate (days left,
//! highlighted) and reload (error text, inert) rows. A screenshot is saved
//! as `target/status-page.png`.
//!
//! Without `chromium` the test fails in CI (`CI` set, as `.ci/run` sets
//! it) and is skipped with a loud message elsewhere.

mod health_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use health_support::*;
use vipd::app::Running;

/// The browser, or `None` (skip) outside CI; panics in CI when missing.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and chromium is not installed: the status page test cannot run \
             (apt-get install chromium)"
        );
        eprintln!(
            "\n\n*** SKIPPED: chromium is not installed, so the status page was NOT tested \
             in a browser (apt-get install chromium; in CI this test fails instead) ***\n"
        );
    }
    found
}

/// Run headless Chromium on `url` with `extra` arguments until the page's
/// scripts had `budget_ms` of virtual time; returns its stdout.
fn run_chromium(browser: &Path, url: &str, extra: &[&str], budget_ms: u32) -> String {
    // A profile of its own: two browsers on one profile refuse to start.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let profile = std::env::temp_dir().join(format!("vipd-chromium-{}-{run}", std::process::id()));
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--window-size=1400,1800",
            &format!("--virtual-time-budget={budget_ms}"),
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(extra)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chromium runs");
    // Pipes drained by threads (a big DOM must not fill the pipe), and a
    // deadline: a browser that hangs must fail the test, not stall it.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    let _ = std::fs::remove_dir_all(&profile);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The element of `dom` that starts at the first `<tag ...needle...>`,
/// up to its closing `</tag>` (rows and cells here do not nest).
fn element<'a>(dom: &'a str, tag: &str, needle: &str) -> &'a str {
    let start = dom
        .match_indices(&format!("<{tag} "))
        .map(|(i, _)| i)
        .find(|&i| dom[i..].split('>').next().unwrap_or("").contains(needle))
        .unwrap_or_else(|| panic!("no <{tag}> with {needle} in the rendered page:\n{dom}"));
    let end = dom[start..]
        .find(&format!("</{tag}>"))
        .map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

fn config(dir: &Path, up: &TestBackend, down: &TestBackend) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web-plain"
bind = "127.0.0.1:0"
protocol = "http"
default_vhost = "site"

[[listener]]
name = "web-secure"
bind = "127.0.0.1:0"
protocol = "https"
default_vhost = "site"

[[vhost]]
name = "site"
hosts = ["soon.test"]
certificates = [{{ cert = "{dir}/soon.crt", key = "{dir}/soon.key" }}]
pool = "p"

[[pool]]
name = "p"
backends = [{{ address = "{up}" }}, {{ address = "{down}" }}]
health = {{ kind = "http", interval = "200ms", timeout = "500ms", rise = 1, fall = 1, path = "/health" }}
"#,
        dir = dir.display(),
        up = up.addr,
        down = down.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_listeners_backend_causes_expiring_certificates_and_the_reload_error() {
    let Some(browser) = chromium() else { return };
    let dir = std::env::temp_dir().join(format!("vipd-status-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = vipd::tls::gencert::generate(
        &["soon.test".to_string()],
        vipd::tls::gencert::KeyType::EcdsaP256,
        10,
    )
    .unwrap();
    std::fs::write(dir.join("soon.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("soon.key"), &cert.key_pem).unwrap();
    let up = TestBackend::start("up").await;
    let down = TestBackend::start("down").await;
    down.health_status.store(503, Ordering::Relaxed);
    let file = dir.join("vipd.toml");
    std::fs::write(&file, config(&dir, &up, &down)).unwrap();
    let running = Running::start(vipd::config::load(&file).unwrap())
        .await
        .unwrap();
    let admin: SocketAddr = running.admin_addr().await.unwrap();
    let web = running.local_addr("web-plain").await.unwrap();
    for _ in 0..3 {
        let (status, _) = admin_request(web, "GET", "/", "Host: soon.test\r\n", "").await;
        assert_eq!(status, 200);
    }
    // Traffic for the charts: three good requests and a 400 (no Host) per
    // round, until the test ends.
    let traffic = tokio::spawn(async move {
        loop {
            for _ in 0..3 {
                admin_request(web, "GET", "/", "Host: soon.test\r\n", "").await;
            }
            admin_request(web, "GET", "/", "", "").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut sampled = false;
    for _ in 0..100 {
        let (_, body) = http(admin, "GET", "/api/status", None, "").await;
        let st: serde_json::Value = serde_json::from_str(&body).unwrap();
        let samples = st["history"]["web-plain"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if samples
            .iter()
            .any(|s| s["req"].as_f64() > Some(5.0) && s["err"].as_f64() > Some(1.0))
        {
            sampled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sampled, "the server sampled request and error rates");
    wait_for("the failing backend to be marked down", || {
        let snap = running.snapshot();
        let p = snap.pools.get("p").unwrap();
        p.backends.iter().any(|b| !b.state.is_healthy())
    })
    .await;

    // A reload that fails, with markup in its error text.
    let hostile =
        "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED'\">";
    let bad = format!(
        "[[listener]]\nname = '''{hostile}'''\nbind = \"127.0.0.1:1\"\nprotocol = \"tcp\"\npool = \"p\"\n"
    );
    std::fs::write(&file, bad).unwrap();
    assert!(running.reload().await.is_err());

    let url = format!("http://{admin}/");
    let browser2 = browser.clone();
    let url2 = url.clone();
    let dom =
        tokio::task::spawn_blocking(move || run_chromium(&browser2, &url2, &["--dump-dom"], 6000))
            .await
            .unwrap();

    // Listener row, rendered by the script from /api/status.
    let row = element(&dom, "tr", "data-listener=\"web-plain\"");
    assert!(row.contains("<td class=\"l\">http</td>"), "{row}");
    // The cells without a class: conns now, accepted, req/s, 2xx/s,
    // 3xx/s, 4xx/s, 5xx/s, TLS and bytes.
    let cells: Vec<f64> = row
        .split("<td>")
        .skip(1)
        .map(|c| c.split('<').next().unwrap().parse().unwrap_or(f64::NAN))
        .collect();
    assert!(cells[1] >= 4.0, "accepted: {row}");
    assert!(
        cells[2] > 5.0 && cells[3] > 3.0 && cells[5] > 1.0,
        "rates: {row}"
    );
    assert_eq!((cells[4], cells[6]), (0.0, 0.0), "no 3xx, no 5xx: {row}");
    assert!(element(&dom, "tr", "data-listener=\"web-secure\"").contains("https"));
    // Backends: one up, one down with the check and its result as cause.
    let row = element(&dom, "tr", &format!("data-backend=\"{}\"", down.addr));
    assert!(row.contains("class=\"down\""), "{row}");
    assert!(row.contains("<td class=\"l state\">down</td>"), "{row}");
    assert!(
        row.contains("http check: 1 consecutive checks failed; last: "),
        "{row}"
    );
    assert!(row.contains("503"), "{row}");
    let row = element(&dom, "tr", &format!("data-backend=\"{}\"", up.addr));
    assert!(row.contains("<td class=\"l state\">up</td>"), "{row}");
    // The certificate: 9 whole days left (issued for 10 days), highlighted.
    let row = element(&dom, "tr", "data-vhost=\"site\"");
    assert!(row.contains("class=\"soon\""), "{row}");
    assert!(row.contains("soon.test"), "{row}");
    assert!(row.contains("ECDSA"), "{row}");
    assert!(
        row.contains("<td class=\"days\">9 (under 21)</td>"),
        "{row}"
    );
    // The failed reload with its full error text, as text: the markup in
    // it was not run (the title is the page's own) nor turned into elements.
    let row = element(&dom, "tr", "id=\"reload-row\"");
    assert!(row.contains("class=\"failed\""), "{row}");
    assert!(
        row.contains("FAILED: the previous configuration stays in service"),
        "{row}"
    );
    let error = element(&dom, "pre", "id=\"reload-error\"");
    assert!(error.contains(&file.display().to_string()), "{error}");
    assert!(
        error.contains("&lt;script&gt;document.title='PWNED'&lt;/script&gt;&lt;img src=x"),
        "{error}"
    );
    assert!(!dom.contains("PWNED</title>"), "the injected script ran");
    assert!(dom.contains("<title>vipd status</title>"));
    assert_eq!(dom.matches("<script").count(), 1, "one script: the page's");
    assert!(!dom.contains("<img"), "no element was made from the error");
    // The chart of the http listener is drawn.
    let chart = element(&dom, "div", "class=\"chart\" data-listener=\"web-plain\"");
    assert!(chart.contains("web-plain: "), "{chart}");
    let drawn = &dom[dom.find(chart).unwrap()..];
    let drawn = &drawn[..drawn.find("</svg>").unwrap()];
    assert!(
        drawn.contains("<polyline class=\"req\" points=\""),
        "{drawn}"
    );
    assert!(
        drawn.contains("<polyline class=\"err\" points=\""),
        "{drawn}"
    );
    // Some point of each line is above the baseline (y = 70): traffic and
    // errors are drawn.
    for class in ["req", "err"] {
        let at = drawn
            .find(&format!("<polyline class=\"{class}\" points=\""))
            .unwrap();
        let points = drawn[at..].split('"').nth(3).unwrap();
        let lowest = points
            .split(' ')
            .filter_map(|p| p.split(',').nth(1)?.parse::<f64>().ok())
            .fold(f64::MAX, f64::min);
        assert!(lowest < 69.0, "{class}: {points}");
    }

    // A screenshot for people, under target/.
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    // (With CARGO_TARGET_DIR elsewhere, the repository has no target/.)
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || run_chromium(&browser, &url, &[&arg], 6000))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // A later successful reload clears the error, in /api/status too.
    std::fs::write(&file, config(&dir, &up, &down)).unwrap();
    running.reload().await.unwrap();
    let (_, body) = http(admin, "GET", "/api/status", None, "").await;
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["last_reload_ok"], true);
    assert_eq!(st["last_reload_error"], serde_json::Value::Null);
    traffic.abort();
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_renders_only_when_opened_with_it_in_the_fragment() {
    let Some(browser) = chromium() else { return };
    let dir = std::env::temp_dir().join(format!("vipd-status-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, "page-token-1\n").unwrap();
    let up = TestBackend::start("up").await;
    let text = admin_config(
        &format!("token_file = \"{}\"", token_file.display()),
        &tcp_site("127.0.0.1:0", &[&up], ""),
    );
    let running = Running::start(vipd::config::parse(&text, Path::new("t.toml")).unwrap())
        .await
        .unwrap();
    let admin = running.admin_addr().await.unwrap();
    let (with, without) = tokio::task::spawn_blocking({
        let browser = browser.clone();
        move || {
            let with = run_chromium(
                &browser,
                &format!("http://{admin}/#token=page-token-1"),
                &["--dump-dom"],
                3000,
            );
            let without =
                run_chromium(&browser, &format!("http://{admin}/"), &["--dump-dom"], 3000);
            (with, without)
        }
    })
    .await
    .unwrap();
    assert!(element(&with, "tr", "data-listener=\"web\"").contains("tcp"));
    assert!(
        with.contains("<span id=\"conn\" class=\"muted\">live</span>"),
        "{with}"
    );
    assert!(!without.contains("data-listener=\"web\""), "{without}");
    assert!(
        without.contains("<span id=\"conn\" class=\"bad\">a token is needed</span>"),
        "{without}"
    );
    assert!(
        without.contains("<form id=\"login\" style=\"display: block;\">"),
        "{without}"
    );
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
