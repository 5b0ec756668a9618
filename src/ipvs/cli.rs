//! `vipd ipvs plan|apply|list|save`: one-shot commands over the kernel table. The
//! caller loads and validates the config (exit codes for bad configs are
//! main's business) and hands it in.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::list::{self, Format};
use super::{IpvsSocket, Reconciler, desired, reconcile};
use crate::config::Config;

/// The `vipd ipvs` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum IpvsCommand {
    /// Print what `apply` would change, as the equivalent ipvsadm commands.
    Plan {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the config's kernel table as an `ipvsadm-restore` script
    /// (`ipvsadm -Sn` format), from the config alone: no kernel IPVS needed.
    Save {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Make the kernel IPVS table match the config once, then exit.
    Apply {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the kernel IPVS table like `ipvsadm -Ln`.
    List {
        /// Totals: connections, packets and bytes (`ipvsadm -Ln --stats`).
        #[arg(long, conflicts_with = "rate")]
        stats: bool,
        /// Per-second rates (`ipvsadm -Ln --rate`).
        #[arg(long)]
        rate: bool,
    },
}

impl IpvsCommand {
    /// The config file the command needs, if any.
    pub fn config_path(&self) -> Option<&Path> {
        match self {
            IpvsCommand::Plan { config }
            | IpvsCommand::Apply { config }
            | IpvsCommand::Save { config } => Some(config),
            IpvsCommand::List { .. } => None,
        }
    }
}

/// Runs a subcommand. `config` must be the loaded [`IpvsCommand::config_path`]
/// for `plan` and `apply`.
pub fn run(cmd: &IpvsCommand, config: Option<&Config>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        IpvsCommand::List { stats, rate } => {
            let format = match (stats, rate) {
                (true, _) => Format::Stats,
                (_, true) => Format::Rate,
                _ => Format::Plain,
            };
            let mut sock = IpvsSocket::open()?;
            let info = sock.info()?;
            let services = sock.services()?;
            out.write_all(list::render(&info, &services, format).as_bytes())?;
        }
        IpvsCommand::Save { config: path } => {
            let Some(cfg) = config else {
                bail!("{}: configuration not loaded", path.display())
            };
            out.write_all(super::save::script(cfg)?.as_bytes())?;
        }
        IpvsCommand::Plan { config: path } | IpvsCommand::Apply { config: path } => {
            let Some(cfg) = config else {
                bail!("{}: configuration not loaded", path.display())
            };
            let services = desired::services(cfg);
            for s in &services {
                s.validate()?;
            }
            let reconciler = Reconciler::new(desired::policy(cfg));
            let mut sock = IpvsSocket::open()?;
            let actual = sock.services().context("reading the kernel IPVS table")?;
            let ops = reconciler.plan(&services, &actual, tokio::time::Instant::now());
            if ops.is_empty() {
                writeln!(
                    out,
                    "# {}: the kernel IPVS table already matches",
                    path.display()
                )?;
                return Ok(());
            }
            if matches!(cmd, IpvsCommand::Plan { .. }) {
                for op in &ops {
                    writeln!(out, "{op}")?;
                }
                return Ok(());
            }
            let report = reconcile::apply(&mut sock, ops);
            for op in &report.applied {
                writeln!(out, "{op}")?;
            }
            for (op, e) in &report.failed {
                eprintln!("vipd: failed: {op}: {e}");
            }
            if !report.is_ok() {
                bail!(
                    "{} of {} IPVS changes failed",
                    report.failed.len(),
                    report.failed.len() + report.applied.len()
                );
            }
        }
    }
    Ok(())
}
