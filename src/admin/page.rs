//! `GET /`: a small read-only HTML status page, like HAProxy's stats page.

use std::fmt::Write as _;

use super::AdminState;
use super::views;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Render the page from the same views the JSON API serves.
pub(super) fn render(state: &AdminState) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>vipd status</title>\
         <meta http-equiv=\"refresh\" content=\"5\"><style>\
         body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1em}\
         td,th{border:1px solid #999;padding:2px 8px;text-align:right}th{background:#ddd}\
         td:first-child{text-align:left}.up{background:#cfc}.down{background:#f99}.drained{background:#ffc}\
         </style></head><body>",
    );
    let st = views::status(state);
    let _ = write!(
        h,
        "<h1>vipd {}</h1><p>reloads: {} (failed: {}), last reload ok: {}</p>",
        esc(st["version"].as_str().unwrap_or("")),
        st["reloads"],
        st["reload_failures"],
        st["last_reload_ok"]
    );
    h.push_str(
        "<h2>Listeners</h2><table><tr><th>name</th><th>bind</th><th>protocol</th>\
         <th>active</th><th>accepted</th><th>bytes in</th><th>bytes out</th></tr>",
    );
    for l in views::listeners(state) {
        let v = serde_json::to_value(&l).unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(v["name"].as_str().unwrap_or("")),
            esc(v["bind"].as_str().unwrap_or("")),
            esc(v["protocol"].as_str().unwrap_or("")),
            v["connections_active"],
            v["connections_accepted"],
            v["bytes_in"],
            v["bytes_out"]
        );
    }
    h.push_str("</table>");
    for p in views::pools(state) {
        let _ = write!(
            h,
            "<h2>Pool {} <small>({}, check: {}, all down: {}{})</small></h2>\
             <table><tr><th>backend</th><th>status</th><th>weight</th><th>effective</th>\
             <th>active</th><th>total</th><th>connect failures</th><th>bytes in</th><th>bytes out</th></tr>",
            esc(&p.name),
            p.scheduler,
            p.health_check.unwrap_or("none"),
            p.on_all_down,
            if p.all_down { ", ALL DOWN" } else { "" }
        );
        for b in p.backends.iter().chain(p.sorry.as_ref()) {
            let _ = write!(
                h,
                "<tr class=\"{s}\"><td>{}</td><td>{s}</td><td>{}</td><td>{:.2}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&b.address),
                b.weight,
                b.effective_weight,
                b.active_connections,
                b.total_connections,
                b.connect_failures,
                b.bytes_in,
                b.bytes_out,
                s = b.status
            );
        }
        h.push_str("</table>");
    }
    h.push_str(
        "<p>JSON: <a href=\"/api/listeners\">listeners</a> <a href=\"/api/pools\">pools</a> \
         <a href=\"/api/persistence\">persistence</a> <a href=\"/api/certificates\">certificates</a> \
         <a href=\"/api/ipvs\">ipvs</a> <a href=\"/metrics\">metrics</a></p></body></html>",
    );
    h
}
