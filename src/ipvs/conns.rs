//! The kernel's connection table (connections and persistence templates),
//! `/proc/net/ip_vs_conn`, rendered exactly as `ipvsadm -Lnc` (and with
//! `--persistent-conn`) prints it. ipvsadm reads that file too: the
//! netlink interface has no connection dump.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where the kernel lists the connections of the current network namespace.
pub const PROC_FILE: &str = "/proc/net/ip_vs_conn";

/// An address field of the file: 8 hex digits for IPv4, `%pI6` for IPv6.
fn addr(text: &str, port: &str) -> Option<SocketAddr> {
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match text.parse::<Ipv6Addr>() {
        Ok(v6) => IpAddr::V6(v6),
        Err(_) if text.len() == 8 => {
            IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(text, 16).ok()?))
        }
        Err(_) => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// One line of the file, as ipvsadm prints it; `None` for a line it
/// cannot read (ipvsadm would print garbage there; vipd skips it).
fn line(out: &mut String, text: &str, persistent_conn: bool) -> Option<()> {
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() < 9 {
        return None;
    }
    let client = addr(f[1], f[2])?;
    let virt = addr(f[3], f[4])?;
    let dest = addr(f[5], f[6])?;
    let expires: u32 = f[8].parse().ok()?;
    let expire = format!("{:02}:{:02}", expires / 60, expires % 60);
    let (proto, state) = (f[0], f[7]);
    if persistent_conn && f.len() >= 11 {
        let _ = writeln!(
            out,
            "{proto:<3} {expire:<6} {state:<11} {:<18} {:<18} {:<16} {:<18} {}",
            client.to_string(),
            virt.to_string(),
            dest.to_string(),
            f[9],
            f[10]
        );
    } else {
        let _ = writeln!(
            out,
            "{proto:<3} {expire:<6} {state:<11} {:<18} {:<18} {dest}",
            client.to_string(),
            virt.to_string()
        );
    }
    Some(())
}

/// The listing of `text` (the contents of [`PROC_FILE`]), header included.
pub fn render(text: &str, persistent_conn: bool) -> String {
    let mut out = Vec::new();
    copy(text.as_bytes(), &mut out, persistent_conn).expect("writing to memory");
    String::from_utf8(out).expect("the listing is UTF-8")
}

/// Streams the listing of `input` (the [`PROC_FILE`] format) to `out`, one
/// line at a time: the table can hold millions of connections.
pub fn copy(
    mut input: impl std::io::BufRead,
    mut out: impl std::io::Write,
    persistent_conn: bool,
) -> std::io::Result<()> {
    out.write_all(header(persistent_conn).as_bytes())?;
    let mut raw = Vec::new();
    let mut first = true;
    let mut text = String::new();
    loop {
        raw.clear();
        if input.read_until(b'\n', &mut raw)? == 0 {
            return Ok(());
        }
        if std::mem::take(&mut first) {
            continue; // the file's own header
        }
        text.clear();
        if line(&mut text, &String::from_utf8_lossy(&raw), persistent_conn).is_some() {
            out.write_all(text.as_bytes())?;
        }
    }
}

fn header(persistent_conn: bool) -> String {
    let mut out = String::from("IPVS connection entries\n");
    if persistent_conn {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} {:<18} {:<16} pe_data",
            "state", "source", "virtual", "destination", "pe name"
        );
    } else {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} destination",
            "state", "source", "virtual"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP CB007102 B3C2 C6336465 0050 C633640B 0050 TIME_WAIT         98
IP  CB007102 0000 00000063 0000 C633640B 0000 NONE             298
TCP 2001:0db8:0000:0000:0000:0000:0000:0002 1F90 2001:0db8:0000:0000:0000:0000:0000:0010 0050 2001:0db8:0000:0000:0000:0000:0000:0021 0050 ESTABLISHED     899
";

    #[test]
    fn connections_and_templates_print_as_ipvsadm_lnc() {
        assert_eq!(
            render(PROC, false),
            "\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 01:38  TIME_WAIT   203.0.113.2:46018  198.51.100.101:80  198.51.100.11:80
IP  04:58  NONE        203.0.113.2:0      0.0.0.99:0         198.51.100.11:0
TCP 14:59  ESTABLISHED [2001:db8::2]:8080 [2001:db8::10]:80  [2001:db8::21]:80
"
        );
    }

    #[test]
    fn persistent_conn_adds_the_persistence_engine_columns() {
        let text =
            "head\nUDP C0000202 13C4 C000020A 13C4 C0000215 13C4 UDP             170 sip 1234\n";
        assert_eq!(
            render(text, true),
            "\
IPVS connection entries
pro expire state       source             virtual            destination        pe name          pe_data
UDP 02:50  UDP         192.0.2.2:5060     192.0.2.10:5060    192.0.2.21:5060  sip                1234
"
        );
        // (ipvsadm pads the destination to 16 and the engine to 18 here,
        // unlike its header: "%-16s %-18s")
    }
}
