//! Secrets and TLS files: the MQTT password (a file, else the environment), the TURN password (a
//! file), the broker's TLS files (checked by loading them), and the warning for secret files other
//! users can read.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::mqtt::{BrokerUrl, MqttTls, tls};
use crate::secret::Secret;

use super::{ConfigError, PASSWORD_ENV};

/// The MQTT password: from the file if one is named, else from the environment (an empty value
/// counts as unset). A password needs a user name.
pub(super) fn mqtt_password(
    file: Option<&Path>,
    env_password: Option<&OsStr>,
    username: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    let (password, origin) = match (file, env_password) {
        (Some(path), _) => (
            Some(read_secret(path, "MQTT password")?),
            "--mqtt-password-file",
        ),
        (None, Some(value)) if !value.is_empty() => {
            let value = value
                .to_os_string()
                .into_string()
                .map_err(|_| ConfigError::Invalid(format!("{PASSWORD_ENV} is not valid UTF-8")))?;
            (Some(Secret::new(value)), PASSWORD_ENV)
        }
        (None, _) => (None, ""),
    };
    if password.is_some() && username.is_none() {
        return Err(ConfigError::Invalid(format!(
            "an MQTT password is set (from {origin}) but no user name; add --mqtt-username"
        )));
    }
    Ok(password)
}

/// A TLS file option and where it came from, for error messages.
pub(super) struct TlsOption {
    path: PathBuf,
    /// `--mqtt-ca`, or `config file FILE: key "mqtt-ca"`.
    origin: String,
}

impl TlsOption {
    pub fn new(path: Option<PathBuf>, origin: String) -> Option<TlsOption> {
        path.map(|path| TlsOption { path, origin })
    }
}

/// Check the TLS files: each must be readable and hold what it should (parsed, not just opened),
/// the certificate and key come together, and they need a TLS broker URL.
pub(super) fn mqtt_tls(
    url: &BrokerUrl,
    ca: Option<TlsOption>,
    cert: Option<TlsOption>,
    key: Option<TlsOption>,
) -> Result<MqttTls, ConfigError> {
    for option in [&ca, &cert, &key].into_iter().flatten() {
        if !url.scheme.is_tls() {
            return Err(ConfigError::Invalid(format!(
                "{} {}: TLS files need an mqtts:// or wss:// broker, but the broker is {url}",
                option.origin,
                option.path.display()
            )));
        }
    }
    let check = |option: &Option<TlsOption>,
                 load: fn(&Path) -> Result<(), String>|
     -> Result<Option<PathBuf>, ConfigError> {
        match option {
            None => Ok(None),
            Some(o) => match load(&o.path) {
                Ok(()) => Ok(Some(o.path.clone())),
                Err(e) => Err(ConfigError::Invalid(format!("{}: {e}", o.origin))),
            },
        }
    };
    let files = MqttTls {
        ca: check(&ca, |p| tls::load_certs(p).map(drop))?,
        cert: check(&cert, |p| tls::load_certs(p).map(drop))?,
        key: check(&key, |p| tls::load_key(p).map(drop))?,
    };
    match (&cert, &key) {
        (Some(o), None) => Err(ConfigError::Invalid(format!(
            "{} needs a private key: add --mqtt-key (or the key mqtt-key)",
            o.origin
        ))),
        (None, Some(o)) => Err(ConfigError::Invalid(format!(
            "{} needs its certificate: add --mqtt-cert (or the key mqtt-cert)",
            o.origin
        ))),
        _ => Ok(files),
    }
}

/// Read a secret from a file, dropping one trailing newline (`\n` or `\r\n`).
pub(super) fn read_secret(path: &Path, what: &'static str) -> Result<Secret, ConfigError> {
    let mut text = std::fs::read_to_string(path).map_err(|err| ConfigError::SecretFile {
        what,
        path: path.to_owned(),
        err,
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(ConfigError::EmptySecretFile {
            what,
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(text))
}

/// Warnings for secret files that users other than the owner may read (mode bits for
/// "others"): `chmod 600` them, or hand them to the service with `LoadCredential=`.
pub(super) fn exposed(secret_files: &[(&'static str, PathBuf)]) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    secret_files
        .iter()
        .filter_map(|(what, path)| {
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            (mode & 0o004 != 0).then(|| {
                format!(
                    "the {what} file {} is readable by every user (mode {:03o}): \
                     chmod 600 it, or hand it over with systemd's LoadCredential=",
                    path.display(),
                    mode & 0o777
                )
            })
        })
        .collect()
}
