//! The `vipd` command: parse arguments, set up logging, load the
//! configuration, build the runtime and hand over to `vipd::app`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vipd::config::{self, Config, ConfigError, LogFormat};

/// Exit status for a configuration that does not validate (EX_DATAERR-like,
/// as sysexits' EX_USAGE = 64 that nginx -t users script against).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "vipd",
    version,
    about = "Front-door load balancer: IPVS + TLS/HTTP proxy from one config"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file without binding anything (like nginx -t).
    #[command(after_help = "Exit status:\n  \
        0   the configuration is valid (certificates and keys read and matched)\n  \
        64  the configuration has errors (each printed as file:line:column: field: problem, then its fix)\n  \
        66  the configuration file cannot be read (missing, not a regular file, too large, not UTF-8)")]
    Check {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the built-in demo on localhost: two backends and the proxy in front.
    Demo,
    /// Persistence tables of a running vipd, through its admin endpoint.
    #[command(subcommand)]
    Persistence(PersistenceCommand),
    /// Kernel IPVS: plan or apply a config's services, list the kernel table.
    #[command(subcommand)]
    Ipvs(vipd::ipvs::cli::IpvsCommand),
    /// Generate a self-signed certificate and key for development.
    GenCert {
        /// DNS names the certificate covers, comma separated (`*.` wildcards allowed).
        #[arg(long, value_delimiter = ',', required = true)]
        names: Vec<String>,
        /// Directory for `<name>.crt` and `<name>.key` (key mode 0600).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// File name stem (default: the first name, `*.` as `wildcard.`).
        #[arg(long)]
        stem: Option<String>,
        /// Key algorithm.
        #[arg(long, value_enum, default_value_t = KeyTypeArg::Ecdsa)]
        key_type: KeyTypeArg,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PersistenceCommand {
    /// Every group's entries, like `ipvsadm -Lnc` lists templates: group,
    /// client prefix, backend host, open connections, expires in (mm:ss).
    List {
        /// Configuration file of the running vipd: its [admin] listen and
        /// token_file say where to ask.
        #[arg(short, long, required_unless_present = "admin")]
        config: Option<PathBuf>,
        /// Admin endpoint address, instead of reading it from a config.
        #[arg(long, conflicts_with = "config")]
        admin: Option<std::net::SocketAddr>,
        /// Bearer token file, with --admin.
        #[arg(long, requires = "admin")]
        token_file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyTypeArg {
    /// ECDSA P-256.
    Ecdsa,
    /// RSA 2048.
    Rsa,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                match vipd::tls::check(&c) {
                    Ok(tls) => {
                        for cert in tls.certificates() {
                            println!("{cert}");
                        }
                        for w in tls.warnings() {
                            println!("warning: {w}");
                        }
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", config.display());
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
                println!(
                    "{}: configuration OK ({}, {}, {}, {})",
                    config.display(),
                    count(c.listeners.len(), "listener"),
                    count(c.pools.len(), "pool"),
                    count(c.vhosts.len(), "vhost"),
                    count(c.ipvs.services.len(), "IPVS service")
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Run { config } => match config::load(&config) {
            Ok(c) => exit(run(c)),
            Err(e) => config_failure(&e),
        },
        Command::GenCert {
            names,
            out_dir,
            stem,
            key_type,
            days,
            force,
        } => exit(gen_cert(&names, &out_dir, stem, key_type, days, force)),
        Command::Ipvs(cmd) => {
            let config = match cmd.config_path().map(config::load).transpose() {
                Ok(c) => c,
                Err(e) => return config_failure(&e),
            };
            exit(vipd::ipvs::cli::run(&cmd, config.as_ref()))
        }
        Command::Persistence(PersistenceCommand::List {
            config,
            admin,
            token_file,
        }) => {
            let config = match config.as_deref().map(config::load).transpose() {
                Ok(c) => c,
                Err(e) => return config_failure(&e),
            };
            exit(persistence_list(
                config.as_ref(),
                admin,
                token_file.as_deref(),
            ))
        }
        Command::Demo => exit(demo()),
    }
}

fn persistence_list(
    config: Option<&Config>,
    admin: Option<std::net::SocketAddr>,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    use vipd::admin::client::{self, Endpoint};
    let endpoint = match (config, admin) {
        (Some(c), _) => Endpoint::from_config(c)?.context(
            "the configuration has no [admin] section: vipd serves no admin endpoint to ask",
        )?,
        (None, Some(addr)) => Endpoint {
            addr,
            token: token_file.map(client::read_token).transpose()?,
        },
        (None, None) => anyhow::bail!("give --config or --admin"),
    };
    let answer = client::get_json(&endpoint, "/api/persistence/entries")?;
    print!("{}", client::render_persistence(&answer));
    Ok(())
}

fn gen_cert(
    names: &[String],
    out_dir: &Path,
    stem: Option<String>,
    key_type: KeyTypeArg,
    days: u32,
    force: bool,
) -> anyhow::Result<()> {
    use vipd::tls::gencert;
    let key_type = match key_type {
        KeyTypeArg::Ecdsa => gencert::KeyType::EcdsaP256,
        KeyTypeArg::Rsa => gencert::KeyType::Rsa2048,
    };
    let generated = gencert::generate(names, key_type, days)?;
    let stem = stem.unwrap_or_else(|| gencert::stem_for(&names[0]));
    let (cert, key) = gencert::write(&generated, out_dir, &stem, force)?;
    println!("certificate: {}", cert.display());
    println!("key:         {} (mode 0600)", key.display());
    println!(
        "use it in a [[vhost]]: certificates = [{{ cert = {:?}, key = {:?} }}]",
        cert.display().to_string(),
        key.display().to_string()
    );
    Ok(())
}

/// "1 listener", "2 listeners".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    if matches!(e, ConfigError::Invalid { .. }) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::from(66)
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vipd: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: most of vipd's errors
/// already name their cause (`cannot bind ...: Cannot assign requested
/// address (os error 99)`), and `{:#}` would print it a second time.
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    // One set of counters per worker thread, sized before any is made.
    vipd::metrics::set_workers(config.global.workers);
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if config.global.workers > 0 {
        b.worker_threads(config.global.workers);
    }
    b.enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn run(config: Config) -> anyhow::Result<()> {
    init_logging(config.global.log_format);
    let result = runtime(&config)?.block_on(vipd::app::run(config));
    // The runtime is gone, and with it every request: write the access-log
    // lines still buffered.
    vipd::proxy::http::access::flush();
    Ok(result?)
}

fn demo() -> anyhow::Result<()> {
    use vipd::tls::gencert;
    // A fresh self-signed certificate for "localhost" in a private temp dir.
    let dir = std::env::temp_dir().join(format!("vipd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let generated = gencert::generate(&["localhost".to_string()], gencert::KeyType::EcdsaP256, 30)?;
    gencert::write(&generated, &dir, "localhost", true)?;
    let text = config::DEMO_CONFIG.replace("@CERT_DIR@", &dir.display().to_string());
    let config = match config::parse(&text, Path::new("(embedded demo config)")) {
        Ok(c) => c,
        Err(e) => anyhow::bail!("{e}"),
    };
    init_logging(config.global.log_format);
    let rt = runtime(&config)?;
    let result = rt.block_on(async {
        let shutdown = vipd::shutdown::Shutdown::new();
        let addrs: Vec<_> = config
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.address))
            .collect();
        vipd::demo::start_backends(&addrs, &shutdown)
            .await
            .context("cannot start the demo backends (is another demo running?)")?;
        println!("vipd demo is running. Try, in another terminal:");
        for l in &config.listeners {
            let cmd = match l.protocol {
                config::Protocol::Https => format!("curl -k https://localhost:{}/", l.bind.port()),
                _ => format!("curl http://{}/", l.bind),
            };
            let what = match (&l.protocol, &l.persistence) {
                (config::Protocol::Tcp, _) => "answers alternate backend-1, backend-2".to_string(),
                (_, Some(g)) => format!(
                    "the backend echoes Host and X-Forwarded-*; persistence group {g:?}: one backend for you"
                ),
                _ => "the backend echoes Host and X-Forwarded-*".to_string(),
            };
            println!(
                "  {cmd:<44} # {} listener {:?}: {what}",
                l.protocol.as_str(),
                l.name
            );
        }
        if let Some(admin) = &config.admin {
            let base = format!("http://{}", admin.listen);
            println!("Status page (open it in a browser): {base}/");
            for (path, what) in [
                ("metrics", "Prometheus metrics"),
                ("api/status", "everything the status page shows, as JSON"),
                ("api/persistence", "which client sticks to which backend"),
            ] {
                println!("  {:<44} # {what}", format!("curl {base}/{path}"));
            }
        }
        println!("Stop it with Ctrl-C.");
        let result = vipd::app::run(config).await;
        shutdown.trigger();
        result.map_err(anyhow::Error::from)
    });
    drop(rt);
    vipd::proxy::http::access::flush();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
