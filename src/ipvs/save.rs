//! `vipd ipvs save`: the kernel table a config asks for, as the
//! `ipvsadm-restore` script `ipvsadm -Sn` would print for it, from the
//! config alone. Nothing here opens a netlink socket, so a config can be
//! reviewed (or its table loaded by hand) on a machine without IPVS.

use super::{Op, desired};
use crate::config::Config;

/// The `ipvsadm -Sn` lines for `cfg`'s services, in config order: each
/// service (`-A`) followed by its real servers (`-a`), weights as
/// configured (health checks do not run here).
pub fn script(cfg: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    for service in desired::services(cfg) {
        service.validate()?;
        let key = service.key;
        let dests = service.dests.clone();
        let ops = std::iter::once(Op::AddService(service)).chain(
            dests
                .into_iter()
                .map(|dest| Op::AddDest { service: key, dest }),
        );
        for op in ops {
            // an Op prints as the ipvsadm command; the script is its arguments
            let line = op.to_string();
            out.push_str(line.strip_prefix("ipvsadm ").unwrap_or(&line));
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_shipped_dr_example_saves_as_ipvsadm_restore_lines() {
        let text = include_str!("../../config/ipvs-dr.toml");
        let cfg = crate::config::parse(text, Path::new("ipvs-dr.toml")).unwrap();
        assert_eq!(
            script(&cfg).unwrap(),
            "-A -t 198.51.100.100:80 -s wrr\n\
             -a -t 198.51.100.100:80 -r 198.51.100.11:80 -g -w 1\n\
             -a -t 198.51.100.100:80 -r 198.51.100.12:80 -g -w 2\n\
             -A -f 99 -s rr -p 300\n\
             -a -f 99 -r 198.51.100.11:0 -g -w 1\n\
             -a -f 99 -r 198.51.100.12:0 -g -w 1\n"
        );
    }
}
