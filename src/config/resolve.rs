//! From the command line, the config file and the environment to one [`Command`]: flags win over
//! the file, the file over the defaults; then what several options decide together (the device
//! id, the MQTT login and TLS files, the TURN login, the video spec, the web root).

use std::ffi::OsString;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::audio::AudioSetting;
use crate::mqtt::{BrokerUrl, MqttTls};
use crate::secret::Secret;
use crate::signaling::protocol::validate_uid;
use crate::video::VideoSpec;

use super::args::{Cli, DaemonOptions, SelftestArgs, Sub, ViewArgs};
use super::credentials::{self, TlsOption, mqtt_password, mqtt_tls, read_secret};
use super::file::{self, FileValues};
use super::{
    ConfigError, DEFAULT_MIN_BITRATE_KBPS, DEFAULT_WEB_ROOT, MIN_WHEP_TOKEN_LEN, PASSWORD_ENV,
};

/// What to do, fully resolved and validated.
// Two variants hold a `DaemonConfig`, so none is much larger than all the others (clippy's
// `large_enum_variant` compares the largest with the second); made once per process anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No subcommand: run the daemon.
    Daemon(DaemonConfig),
    /// `spyglass devices`: list cameras and exit.
    Devices,
    /// `spyglass view`: headless viewer.
    View(ViewConfig),
    /// `spyglass selftest`: capture, encode, packetize, depacketize, decode, check, report.
    Selftest(SelftestConfig),
    /// `spyglass homeassistant --remove`: delete the device's Home Assistant discovery entries
    /// (and its retained snapshot) from the broker the daemon's options name, and exit.
    HomeAssistantRemove(DaemonConfig),
}

/// Everything the daemon needs: every option as the user chose it ([`DaemonOptions`], read
/// through `Deref`: `cfg.max_viewers`), and below, what some of them resolve to. `Debug` shows
/// no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub options: DaemonOptions,
    /// Device id used in topics: `--id`, else the host name (validated with [`validate_uid`]).
    pub id: String,
    pub username: Option<String>,
    /// From `--mqtt-password-file`, else the environment (`SPYGLASS_MQTT_PASSWORD`).
    pub password: Option<Secret>,
    /// CA and client certificate files for `mqtts://` and `wss://` brokers, checked.
    pub tls: MqttTls,
    pub video: VideoSpec,
    /// Where the shared encoder's bitrate starts (`--bitrate`, clamped into the range below),
    /// kbit/s.
    pub bitrate_kbps: u32,
    /// The range rate control keeps the shared encoder's bitrate in (`--min-bitrate`,
    /// `--max-bitrate`), kbit/s.
    pub min_bitrate_kbps: u32,
    pub max_bitrate_kbps: u32,
    /// Set (with `turn_password`) whenever `turn` is not empty.
    pub turn_username: Option<String>,
    pub turn_password: Option<Secret>,
    /// The WHEP endpoint's bearer token (`--whep-token-file`); `None`: no WHEP endpoint.
    pub whep_token: Option<Secret>,
    /// The bearer token for `--whip` (`--whip-token-file`).
    pub whip_token: Option<Secret>,
    /// coturn's `static-auth-secret` (`--turn-secret-file`): the device makes time-limited
    /// credentials from it for its own TURN servers and for viewers (src/turn_rest.rs). Never
    /// set together with `turn_username`/`turn_password`.
    pub turn_secret: Option<Secret>,
    /// TURN URLs handed to viewers that ask, with credentials made from `turn_secret`
    /// (`--viewer-turn`, else the device's own `turn` when there is a secret; empty without one).
    pub viewer_turn: Vec<String>,
    /// Directory with the built viewer page: `--web-root` (which must exist), else the one built
    /// with spyglass.
    pub web_root: PathBuf,
    /// The config file the values came from, if any.
    pub config_file: Option<PathBuf>,
    /// Files holding secrets (passwords, private keys), named by what they hold; checked at start
    /// for modes that let other users read them ([`DaemonConfig::exposed_secrets`]).
    pub secret_files: Vec<(&'static str, PathBuf)>,
}

impl DaemonConfig {
    /// Warnings for secret files that users other than the owner may read (mode bits for
    /// "others"): `chmod 600` them, or hand them to the service with `LoadCredential=`.
    pub fn exposed_secrets(&self) -> Vec<String> {
        credentials::exposed(&self.secret_files)
    }
}

impl Deref for DaemonConfig {
    type Target = DaemonOptions;

    fn deref(&self) -> &DaemonOptions {
        &self.options
    }
}

/// Everything the headless viewer needs. `Debug` shows no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewConfig {
    pub mqtt: BrokerUrl,
    /// Device id of the camera to watch.
    pub id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// CA and client certificate files for `mqtts://` and `wss://` brokers.
    pub tls: MqttTls,
    /// Frames to receive and decode before exiting successfully.
    pub frames: u32,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
    /// Client id used in topics (validated with [`crate::signaling::protocol::validate_cid`]).
    pub cid: String,
    /// Addresses WebRTC binds its UDP sockets to; empty means every interface.
    pub rtc_bind: Vec<std::net::IpAddr>,
    pub mdns: bool,
    /// The viewer's own STUN servers.
    pub stun: Vec<String>,
    /// The viewer's own TURN servers (over UDP); when non-empty, `turn_username` and
    /// `turn_password` are set. Servers the device hands out come on top.
    pub turn: Vec<String>,
    pub turn_username: Option<String>,
    pub turn_password: Option<Secret>,
    /// Print the report as JSON.
    pub json: bool,
}

/// Everything `spyglass selftest` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestConfig {
    pub video: VideoSpec,
    /// Negotiate only this V4L2 pixel format (`--pixel-format`); `None` lets negotiation choose.
    pub pixel_format: Option<crate::video::negotiate::FourCc>,
    /// Audio source: `none`, `tone`, or an ALSA PCM name.
    pub audio: AudioSetting,
    /// The audio must carry this frequency (Hz): 1000 for `tone`, `--expect-tone` for a device.
    pub expect_tone_hz: Option<u32>,
    pub seconds: u32,
    pub bitrate_kbps: u32,
    /// Print the report as JSON.
    pub json: bool,
    /// Drive a memory-to-memory encoder of this codec (`FWHT`: the kernel's vicodec) instead of
    /// the H.264 path; for the emulated board's tests.
    pub m2m_codec: Option<[u8; 4]>,
}

/// What the process environment contributes; a parameter so tests need not touch the real one.
#[derive(Debug, Clone, Default)]
pub(super) struct Env {
    pub mqtt_password: Option<OsString>,
    pub hostname: OsString,
}

impl Env {
    fn from_process() -> Self {
        Env {
            mqtt_password: std::env::var_os(PASSWORD_ENV),
            hostname: gethostname::gethostname(),
        }
    }
}

/// Parse the command line (including the program name as first item), read the config file if one
/// is named, and return the validated command. On [`ConfigError::Usage`] call
/// [`ConfigError::exit`] to get clap's usual output and exit status.
pub fn load<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    load_with(args, &Env::from_process())
}

pub(super) fn load_with<I, T>(args: I, env: &Env) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cli = Cli::command();
    let mut matches = cli
        .try_get_matches_from_mut(args)
        .map_err(ConfigError::Usage)?;
    let parsed =
        Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Usage(e.format(&mut cli)))?;
    match parsed.command {
        None => daemon_config(&mut cli, &mut matches, parsed.daemon, env).map(Command::Daemon),
        Some(Sub::Devices) => Ok(Command::Devices),
        Some(Sub::View(args)) => resolve_view(args, env).map(Command::View),
        Some(Sub::Selftest(args)) => Ok(Command::Selftest(resolve_selftest(args))),
        Some(Sub::HomeAssistant(args)) => {
            debug_assert!(args.remove);
            // The subcommand's own command and matches: the file's keys replace its defaults.
            let (Some(sub), Some((_, mut sub_matches))) = (
                cli.find_subcommand_mut("homeassistant"),
                matches.remove_subcommand(),
            ) else {
                return Err(ConfigError::Invalid("homeassistant: no subcommand".into()));
            };
            daemon_config(sub, &mut sub_matches, args.daemon, env).map(Command::HomeAssistantRemove)
        }
    }
}

/// The daemon's configuration from [`DaemonOptions`] as clap parsed them, with the config file
/// they name. `cli` and `matches` are those of the (sub)command that flattens the options.
fn daemon_config(
    cli: &mut clap::Command,
    matches: &mut ArgMatches,
    options: DaemonOptions,
    env: &Env,
) -> Result<DaemonConfig, ConfigError> {
    let (mut options, origins) = match options.config.clone() {
        None => (options, Origins::default()),
        Some(path) => {
            let file = file::read(&path)?;
            merge(cli, matches, &path, file).map_err(|e| ConfigError::Usage(e.format(cli)))?
        }
    };
    let config_file = options.config.take();
    resolve_daemon(options, &origins, config_file, env)
}

/// Which options the config file gave, to name them in errors.
#[derive(Debug, Default)]
struct Origins {
    file: Option<PathBuf>,
    from_file: Vec<String>,
}

impl Origins {
    /// How an error names an option: `--mqtt-ca`, or `config file FILE: key "mqtt-ca"`.
    fn name(&self, key: &str) -> String {
        match &self.file {
            Some(file) if self.from_file.iter().any(|k| k == key) => {
                format!("config file {}: key \"{key}\"", file.display())
            }
            _ => format!("--{key}"),
        }
    }
}

/// The options as the user gave them: each flag, else its key in the config file, else the
/// flag's default. `matches` are the command line's (flags and clap's defaults).
fn merge(
    cli: &clap::Command,
    matches: &mut ArgMatches,
    path: &Path,
    file: FileValues,
) -> Result<(DaemonOptions, Origins), clap::Error> {
    let mut origins = Origins {
        file: Some(path.to_owned()),
        from_file: Vec::new(),
    };
    // A key in the file replaces the flag's default, not a flag given on the command line.
    for key in file.keys {
        let Some(arg) = cli
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
        else {
            continue;
        };
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            // Clearing an id the command knows cannot fail.
            let _ = matches.try_clear_id(id);
            origins.from_file.push(key);
        }
    }
    let mut options = file.options;
    options.update_from_arg_matches(matches)?;
    Ok((options, origins))
}

fn resolve_daemon(
    mut options: DaemonOptions,
    origins: &Origins,
    config_file: Option<PathBuf>,
    env: &Env,
) -> Result<DaemonConfig, ConfigError> {
    let id = match options.id.take() {
        Some(id) => id,
        None => hostname_id(&env.hostname)?,
    };
    let username = options.mqtt_username.clone();
    let mut secret_files: Vec<(&'static str, PathBuf)> = Vec::new();
    let password_file = options.mqtt_password_file.clone();
    secret_files.extend(password_file.clone().map(|p| ("MQTT password", p)));
    let password = mqtt_password(
        password_file.as_deref(),
        env.mqtt_password.as_deref(),
        username.as_deref(),
    )?;
    let tls = mqtt_tls(
        &options.mqtt,
        TlsOption::new(options.mqtt_ca.clone(), origins.name("mqtt-ca")),
        TlsOption::new(options.mqtt_cert.clone(), origins.name("mqtt-cert")),
        TlsOption::new(options.mqtt_key.clone(), origins.name("mqtt-key")),
    )?;
    let video = VideoSpec {
        source: options.video.clone(),
        width: options.size.width,
        height: options.size.height,
        fps: options.fps,
        encoder: options.encoder.clone(),
        exec_format: options.exec_format,
    };
    let turn_username = options.turn_username.clone();
    let turn_password = match &options.turn_password_file {
        Some(path) => {
            let password = read_secret(path, "TURN password")?;
            secret_files.push(("TURN password", path.clone()));
            Some(password)
        }
        None => None,
    };
    let turn_secret = match &options.turn_secret_file {
        Some(path) => {
            let secret = read_secret(path, "TURN secret")?;
            secret_files.push(("TURN secret", path.clone()));
            Some(secret)
        }
        None => None,
    };
    secret_files.extend(tls.key.clone().map(|p| ("MQTT private key", p)));
    let whep_token = match &options.whep_token_file {
        Some(path) => {
            let token = read_secret(path, "WHEP token")?;
            if token.chars().count() < MIN_WHEP_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::Invalid(format!(
                    "{} {}: the token must be at least {MIN_WHEP_TOKEN_LEN} characters without \
                     spaces (e.g. `openssl rand -hex 32`)",
                    origins.name("whep-token-file"),
                    path.display(),
                )));
            }
            secret_files.push(("WHEP token", path.clone()));
            Some(token)
        }
        None => None,
    };
    let whip_token = match &options.whip_token_file {
        Some(_) if options.whip.is_none() => {
            return Err(ConfigError::Invalid(
                "--whip-token-file needs --whip (the endpoint the token is for)".into(),
            ));
        }
        Some(path) => {
            let token = read_secret(path, "WHIP token")?;
            secret_files.push(("WHIP token", path.clone()));
            Some(token)
        }
        None => None,
    };
    if turn_secret.is_some() && (turn_username.is_some() || turn_password.is_some()) {
        return Err(ConfigError::Invalid(
            "--turn-secret-file replaces --turn-username and --turn-password-file: the device \
             makes its TURN user names and passwords from the secret; give one or the other"
                .into(),
        ));
    }
    let max_bitrate_kbps = options.max_bitrate.unwrap_or(options.bitrate);
    let min_bitrate_kbps = options
        .min_bitrate
        .unwrap_or(DEFAULT_MIN_BITRATE_KBPS.min(max_bitrate_kbps));
    if min_bitrate_kbps > max_bitrate_kbps {
        return Err(ConfigError::Invalid(format!(
            "--min-bitrate {min_bitrate_kbps} is above --max-bitrate {max_bitrate_kbps}"
        )));
    }
    let bitrate_kbps = options.bitrate.clamp(min_bitrate_kbps, max_bitrate_kbps);
    if !options.turn.is_empty()
        && turn_secret.is_none()
        && (turn_username.is_none() || turn_password.is_none())
    {
        return Err(ConfigError::Invalid(
            "--turn needs --turn-username and --turn-password-file, or --turn-secret-file (or \
             the keys turn-username and turn-password-file, or turn-secret-file, in the config \
             file)"
                .into(),
        ));
    }
    if !options.viewer_turn.is_empty() && turn_secret.is_none() {
        return Err(ConfigError::Invalid(
            "--viewer-turn needs --turn-secret-file: viewers get time-limited credentials made \
             from it (the device never hands out a long-term TURN password)"
                .into(),
        ));
    }
    let viewer_turn = match (options.viewer_turn.is_empty(), &turn_secret) {
        (true, Some(_)) => options.turn.clone(),
        _ => options.viewer_turn.clone(),
    };
    let web_root = match options.web_root.clone() {
        // A root the user named must exist; the built-in default is only warned about at start
        // (the daemon still streams without its page).
        Some(dir) if !dir.is_dir() => {
            return Err(ConfigError::Invalid(format!(
                "--web-root {}: not a directory",
                dir.display()
            )));
        }
        Some(dir) => dir,
        None => PathBuf::from(DEFAULT_WEB_ROOT),
    };
    Ok(DaemonConfig {
        options,
        id,
        username,
        password,
        tls,
        video,
        bitrate_kbps,
        min_bitrate_kbps,
        max_bitrate_kbps,
        turn_username,
        turn_password,
        whep_token,
        whip_token,
        turn_secret,
        viewer_turn,
        web_root,
        config_file,
        secret_files,
    })
}

fn resolve_view(args: ViewArgs, env: &Env) -> Result<ViewConfig, ConfigError> {
    let password = mqtt_password(
        args.mqtt_password_file.as_deref(),
        env.mqtt_password.as_deref(),
        args.mqtt_username.as_deref(),
    )?;
    let tls = mqtt_tls(
        &args.mqtt,
        TlsOption::new(args.mqtt_ca, "--mqtt-ca".into()),
        TlsOption::new(args.mqtt_cert, "--mqtt-cert".into()),
        TlsOption::new(args.mqtt_key, "--mqtt-key".into()),
    )?;
    let turn_password = match &args.turn_password_file {
        Some(path) => Some(read_secret(path, "TURN password")?),
        None => None,
    };
    if !args.turn.is_empty() && (args.turn_username.is_none() || turn_password.is_none()) {
        return Err(ConfigError::Invalid(
            "--turn needs --turn-username and --turn-password-file".into(),
        ));
    }
    Ok(ViewConfig {
        mqtt: args.mqtt,
        id: args.id,
        username: args.mqtt_username,
        password,
        tls,
        frames: args.frames,
        timeout: Duration::from_secs(args.timeout.into()),
        cid: args.cid.unwrap_or_else(random_cid),
        rtc_bind: args.rtc_bind,
        mdns: args.mdns,
        stun: args.stun,
        turn: args.turn,
        turn_username: args.turn_username,
        turn_password,
        json: args.json,
    })
}

fn resolve_selftest(args: SelftestArgs) -> SelftestConfig {
    SelftestConfig {
        video: VideoSpec {
            source: args.video,
            width: args.size.width,
            height: args.size.height,
            fps: args.fps,
            encoder: args.encoder,
            exec_format: args.exec_format,
        },
        pixel_format: args.pixel_format,
        expect_tone_hz: args.expect_tone.or(args.audio.tone_hz()),
        audio: args.audio,
        seconds: args.seconds,
        bitrate_kbps: args.bitrate,
        json: args.json,
        m2m_codec: args.m2m_codec,
    }
}

fn hostname_id(hostname: &OsString) -> Result<String, ConfigError> {
    let name = hostname.to_string_lossy();
    validate_uid(&name).map_err(|e| {
        ConfigError::Invalid(format!(
            "the host name is not usable as device id ({e}); set one with --id"
        ))
    })?;
    Ok(name.into_owned())
}

/// `view-` and 16 random hex digits.
fn random_cid() -> String {
    format!("view-{:016x}", rand::random::<u64>())
}
