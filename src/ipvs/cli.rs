//! `vipd ipvs plan|apply|list|save`: one-shot commands over the kernel table. The
//! caller loads and validates the config (exit codes for bad configs are
//! main's business) and hands it in.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::list::{self, Format};
use super::{IpvsSocket, Op, Reconciler, conns, desired, reconcile};
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
        #[arg(long, conflicts_with_all = ["rate", "thresholds", "persistent_conn", "connections"])]
        stats: bool,
        /// Per-second rates (`ipvsadm -Ln --rate`).
        #[arg(long, conflicts_with_all = ["thresholds", "persistent_conn", "connections"])]
        rate: bool,
        /// Upper and lower connection thresholds (`ipvsadm -Ln --thresholds`).
        #[arg(long, conflicts_with_all = ["persistent_conn", "connections"])]
        thresholds: bool,
        /// Persistence templates per real server (`ipvsadm -Ln
        /// --persistent-conn`); with `-c`, the persistence engine columns.
        #[arg(long)]
        persistent_conn: bool,
        /// Whole numbers in `--stats` and `--rate` (`ipvsadm --exact`).
        #[arg(long)]
        exact: bool,
        /// Connections and persistence templates (`ipvsadm -Lnc`).
        #[arg(short = 'c', long)]
        connections: bool,
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
        IpvsCommand::List {
            stats,
            rate,
            thresholds,
            persistent_conn,
            exact,
            connections,
        } => {
            if *connections {
                let file = std::fs::File::open(conns::PROC_FILE).with_context(|| {
                    format!("{}: is the ip_vs module loaded?", conns::PROC_FILE)
                })?;
                let input = std::io::BufReader::new(file);
                conns::copy(input, &mut out, *persistent_conn)?;
                return Ok(());
            }
            let format = match (stats, rate, thresholds, persistent_conn) {
                (true, ..) => Format::Stats,
                (_, true, ..) => Format::Rate,
                (_, _, true, _) => Format::Thresholds,
                (.., true) => Format::PersistConn,
                _ => Format::Plain,
            };
            let mut sock = IpvsSocket::open()?;
            let info = sock.info()?;
            let services = sock.services()?;
            out.write_all(list::render_exact(&info, &services, format, *exact).as_bytes())?;
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
            // no memory of earlier runs: a weight-0 server not in the file is draining
            let reconciler = Reconciler::one_shot(desired::policy(cfg));
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
            let (pending, ops): (Vec<Op>, Vec<Op>) = ops
                .into_iter()
                .partition(|op| matches!(op, Op::Draining { .. }));
            let report = reconcile::apply(&mut sock, ops);
            for op in report.applied.iter().chain(&pending) {
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
