//! Configuration: one TOML file, parsed by serde into raw types (`file`), then
//! validated into an immutable typed model (`model`) with every problem
//! reported at once (`error`).

mod error;
mod file;
mod model;
mod validate;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use model::*;
pub use validate::parse_duration;

/// The configuration `vipd demo` runs, embedded in the binary.
pub const DEMO_CONFIG: &str = include_str!("../demo.toml");

/// Read and validate the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&src, path)
}

/// Validate configuration text; `path` names it in errors.
pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigError> {
    let config = validate::validate(src, path)?;
    let problems = unsupported(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// Settings the schema accepts but this build does not implement yet. They
/// are refused, never silently ignored.
fn unsupported(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut refuse = |field: String, what: &str| {
        out.push(Problem {
            line: None,
            column: None,
            field,
            problem: format!("{what} is not supported yet by this version of vipd"),
            fix: "remove the setting (see \"Status\" in README.md for what is implemented)".into(),
        })
    };
    for pool in &config.pools {
        let p = format!("pool {:?}", pool.name);
        let over_http = config.vhosts.iter().any(|v| {
            v.pool.as_deref() == Some(pool.name.as_str())
                || v.routes.iter().any(|r| r.pool == pool.name)
        });
        if pool.send_proxy && over_http {
            refuse(
                format!("{p}.send_proxy"),
                "sending the PROXY protocol to a pool served over HTTP",
            );
        }
    }
    out
}
