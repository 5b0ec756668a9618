//! The command-line side of the admin endpoint: `vipd persistence list`
//! asks a running vipd over HTTP, as `ipvsadm -Lnc` asks the kernel, and
//! prints the answer as a table. Blocking std I/O under deadlines: the
//! command runs once and exits, no runtime needed.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::config::{self, Config};

/// Time to connect, and to get the whole answer.
const DEADLINE: Duration = Duration::from_secs(10);

/// Largest answer read: [`super::MAX_LISTED`] entries per group fit many
/// times over.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Where the admin endpoint of a running vipd is, and its token.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Address to connect to (a wildcard `listen` is reached on loopback).
    pub addr: SocketAddr,
    /// Bearer token, when the endpoint has one.
    pub token: Option<String>,
}

impl Endpoint {
    /// The endpoint `config`'s `[admin]` section describes, its token read
    /// from `token_file`; `None` without `[admin]`.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let Some(admin) = &config.admin else {
            return Ok(None);
        };
        let token = admin.token_file.as_deref().map(read_token).transpose()?;
        Ok(Some(Self {
            addr: reachable(admin.listen),
            token,
        }))
    }
}

/// The token in `path`, as the endpoint reads it (surrounding blanks trimmed).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = config::read_bounded_text(path, 4096)
        .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// A wildcard address is answered on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET path` on the endpoint; the body of a 200 answer, parsed as JSON.
pub fn get_json(endpoint: &Endpoint, path: &str) -> anyhow::Result<serde_json::Value> {
    let addr = endpoint.addr;
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE)
        .with_context(|| format!("cannot connect to the admin endpoint {addr} (is vipd running with [admin] listen = \"{addr}\"?)"))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    let auth = endpoint
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Accept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer of {addr}"))?;
    if answer.len() as u64 > MAX_ANSWER {
        bail!("the answer of {addr} is larger than {MAX_ANSWER} bytes");
    }
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{addr} did not answer over HTTP");
    };
    let status = head.split(' ').nth(1).unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    if status != "200" {
        let why = json
            .as_ref()
            .and_then(|j| j["error"].as_str())
            .map_or_else(|| body.trim().to_string(), str::to_string);
        bail!("the admin endpoint {addr} answered {status}: {why}");
    }
    json.with_context(|| format!("{addr} answered something other than JSON"))
}

/// `GET /api/persistence/entries` printed like `ipvsadm -Lnc` prints
/// templates: one line per client prefix, the backend host it sticks to,
/// its open connections and the time left once they closed (`mm:ss`; `-`
/// while connections are open, as the entry cannot expire then).
pub fn render_persistence(answer: &serde_json::Value) -> String {
    let mut rows = vec![[
        "group".to_string(),
        "client".to_string(),
        "backend".to_string(),
        "conns".to_string(),
        "expire".to_string(),
    ]];
    let mut notes = Vec::new();
    let groups = answer["groups"].as_array().map_or(&[][..], Vec::as_slice);
    for g in groups {
        let name = g["name"].as_str().unwrap_or_default();
        let entries = g["entries"].as_array().map_or(&[][..], Vec::as_slice);
        for e in entries {
            let expire = e["expires_in_s"].as_u64().map_or_else(
                || "-".to_string(),
                |s| format!("{:02}:{:02}", s / 60, s % 60),
            );
            rows.push([
                name.to_string(),
                e["client"].as_str().unwrap_or_default().to_string(),
                e["backend"].as_str().unwrap_or_default().to_string(),
                e["connections"].as_u64().unwrap_or(0).to_string(),
                expire,
            ]);
        }
        let total = g["entries_total"].as_u64().unwrap_or(0);
        if total > entries.len() as u64 {
            notes.push(format!(
                "group {name:?}: the first {} of {total} entries are listed",
                entries.len()
            ));
        }
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let plural = if groups.len() == 1 { "" } else { "s" };
    let mut out = format!(
        "vipd persistence entries ({} group{plural})\n",
        groups.len()
    );
    for row in &rows {
        let line = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}
