//! Command line and config file: turns `argv`, an optional TOML file (`--config FILE`) and the
//! environment into one validated [`Command`].
//!
//! - `args.rs`: every option (flag, help text, default, kind of value) in one clap definition;
//!   the daemon's options ([`DaemonOptions`]) are also the config file's keys (serde, derived).
//! - `values.rs`: the kinds of values (integer ranges, on/off, paths, URLs, ...), each checked
//!   the same way from a flag and from the file.
//! - `file.rs`: reading the TOML file; errors name the file and the key.
//! - `resolve.rs`: flags over the file over the defaults, then what several options decide
//!   together ([`DaemonConfig`], [`ViewConfig`], [`SelftestConfig`]).
//! - `credentials.rs`: the passwords and the broker's TLS files.
//!
//! Secrets never come from flags: the MQTT password comes from `--mqtt-password-file` or
//! `SPYGLASS_MQTT_PASSWORD`, the TURN password from `--turn-password-file`; they are held as
//! [`crate::secret::Secret`], which `Debug` prints as `<redacted>`.
//!
//! # Adding a daemon option
//!
//! 1. One field in [`DaemonOptions`] (`args.rs`): its doc comment is the help text; `#[arg(long,
//!    value_name = …, value_parser = K::parse, default_value_t = …, help_heading = …)]` and
//!    `#[serde(deserialize_with = "K::file")]`, with `K` a kind from `values.rs` (`Int<LO, HI>`,
//!    `OnOff`, `FilePath`, ...; a new kind of value is a new `Kind` there). The config file key
//!    is the flag's long name. A field that is `pub` is read as it is, `cfg.the_option`.
//! 2. Its line in `debian/spyglass.toml`, commented out, with the default (a test checks that
//!    every key is there and that the file parses with every key uncommented).
//!
//! Only an option that combines with others (like `--turn` with its credentials) also needs a
//! line in `resolve.rs`: keep its field `pub(super)` and give [`DaemonConfig`] the result.

mod args;
mod credentials;
mod file;
mod resolve;
mod values;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use args::DaemonOptions;
pub use file::file_keys;
pub use resolve::{Command, DaemonConfig, SelftestConfig, ViewConfig, load};

pub const DEFAULT_VIDEO: &str = crate::video::DEFAULT_SOURCE;
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 720;
pub const DEFAULT_FPS: u32 = 30;
pub const DEFAULT_BITRATE_KBPS: u32 = 2000;
/// The lowest bitrate rate control takes the shared encoder to, kbit/s (never above the maximum).
pub const DEFAULT_MIN_BITRATE_KBPS: u32 = 150;
pub const DEFAULT_MAX_VIEWERS: u32 = 4;
/// `--peer-timeout`'s default, as the flag writes it (seconds).
pub const DEFAULT_PEER_TIMEOUT_SECS: &str = "30";
pub const DEFAULT_MAX_CONNECTING: u32 = 8;
/// How long the TURN credentials made from `--turn-secret-file` are valid, seconds.
pub const DEFAULT_TURN_CREDENTIAL_LIFETIME_SECS: u32 = 3600;
pub const DEFAULT_HTTP_MAX_CONNECTIONS: u32 = 64;
/// Home Assistant's default discovery prefix.
pub const DEFAULT_HOMEASSISTANT_PREFIX: &str = "homeassistant";
/// Seconds between Home Assistant snapshots.
pub const DEFAULT_HOMEASSISTANT_INTERVAL_SECS: u32 = 60;
/// A WHEP token shorter than this is refused at start (a guessable token opens the camera).
pub const MIN_WHEP_TOKEN_LEN: usize = 16;
pub const DEFAULT_VIEW_FRAMES: u32 = 30;
pub const DEFAULT_VIEW_TIMEOUT_SECS: u32 = 20;
pub const DEFAULT_SELFTEST_SECONDS: u32 = 3;
/// Environment variable holding the MQTT password when no password file is given.
pub const PASSWORD_ENV: &str = "SPYGLASS_MQTT_PASSWORD";
/// Where the viewer page's HTTP server listens unless `--http` says otherwise.
pub const DEFAULT_HTTP: &str = "0.0.0.0:8080";
/// The built viewer page: `SPYGLASS_WEB_ROOT` at build time (the .deb sets
/// `/usr/share/spyglass/web`), else `web/dist` of the source tree.
pub const DEFAULT_WEB_ROOT: &str = match option_env!("SPYGLASS_WEB_ROOT") {
    Some(path) => path,
    None => concat!(env!("CARGO_MANIFEST_DIR"), "/web/dist"),
};

/// Why no [`Command`] could be made. Every variant names the flag, key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap's own error (unknown flag, bad flag value, missing argument) or a `--help` /
    /// `--version` request; [`ConfigError::exit`] prints it the clap way.
    #[error("{0}")]
    Usage(clap::Error),
    #[error("config file {}: {err}", .path.display())]
    FileRead { path: PathBuf, err: std::io::Error },
    #[error("config file {}: line {line}, column {column}: {message}", .path.display())]
    FileSyntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config file {}: unknown key \"{key}\" (valid keys: {})", .path.display(), file_keys().join(", "))]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {}: key \"{key}\": {message}", .path.display())]
    FileValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("cannot read {what} file {}: {err}", .path.display())]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("{what} file {} is empty", .path.display())]
    EmptySecretFile { what: &'static str, path: PathBuf },
    /// A problem with how options combine, or with a value taken from the environment.
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    /// Whether this is clap's error (it prints its own usage and exits 2, or 0 for help/version).
    pub fn is_usage(&self) -> bool {
        matches!(self, ConfigError::Usage(_))
    }

    /// Print the error and exit: clap errors the clap way (usage, exit 2; `--help` and
    /// `--version` exit 0), everything else as `spyglass: <error>` with exit status 1.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Usage(err) => err.exit(),
            other => {
                eprintln!("spyglass: {other}");
                std::process::exit(1)
            }
        }
    }
}
