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

/// Largest configuration file read: thousands of vhosts fit in 16 MiB, and
/// a path naming `/dev/zero` must not fill memory.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Why [`read_bounded`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file")]
    NotRegular,
    #[error("larger than {0} bytes")]
    TooLarge(u64),
}

/// The bytes of `path` if it is a regular file of at most `max` bytes: how
/// every file the configuration names (itself, certificates, keys, the
/// admin token) is read. A FIFO would hold `vipd check`, or a reload and
/// every signal after it, until someone writes to it; `/dev/zero` would be
/// read until memory runs out.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    if !std::fs::metadata(path)?.is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(bytes)
}

/// [`read_bounded`] for a text file: its bytes must be UTF-8.
pub fn read_bounded_text(path: &Path, max: u64) -> Result<String, ReadError> {
    String::from_utf8(read_bounded(path, max)?).map_err(|_| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// Read and validate the configuration file at `path` (a regular file of
/// at most [`MAX_FILE`] bytes, see [`read_bounded`]).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read = |path: &Path| -> std::io::Result<String> {
        read_bounded_text(path, MAX_FILE).map_err(|e| match e {
            ReadError::Io(e) => e,
            ReadError::NotRegular => std::io::Error::other(
                "not a regular file (name the TOML file itself, not a FIFO, device or directory)",
            ),
            ReadError::TooLarge(max) => {
                std::io::Error::other(format!("the file is larger than {max} bytes"))
            }
        })
    };
    let src = read(path).map_err(|source| ConfigError::Read {
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
    let over_http: std::collections::HashSet<&str> = config
        .vhosts
        .iter()
        .flat_map(|v| v.pool.iter().chain(v.routes.iter().map(|r| &r.pool)))
        .map(String::as_str)
        .collect();
    for pool in &config.pools {
        let p = format!("pool {:?}", pool.name);
        if pool.send_proxy && over_http.contains(pool.name.as_str()) {
            refuse(
                format!("{p}.send_proxy"),
                "sending the PROXY protocol to a pool served over HTTP",
            );
        }
    }
    out
}
