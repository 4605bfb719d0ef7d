//! Command line and config file: turns `argv`, an optional TOML file (`--config FILE`) and the
//! environment into one validated [`Command`].
//!
//! This module owns every option's name, default, help text and validation. Each daemon option is
//! also a key of the TOML file (the long flag name without `--`); flags override the file, and both
//! go through the same validators. Secrets never come from flags: the MQTT password comes from
//! `--mqtt-password-file` or `SPYGLASS_MQTT_PASSWORD`, the TURN password from
//! `--turn-password-file`, and the config types redact them in their `Debug` output.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::audio::AudioSetting;
use crate::signaling::protocol::{validate_cid, validate_uid};
use crate::video::{self, VideoSpec};

pub const DEFAULT_MQTT_HOST: &str = "127.0.0.1";
pub const DEFAULT_MQTT_PORT: u16 = 1883;
pub const DEFAULT_VIDEO: &str = video::DEFAULT_SOURCE;
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 720;
pub const DEFAULT_FPS: u32 = 30;
pub const DEFAULT_BITRATE_KBPS: u32 = 2000;
pub const DEFAULT_MAX_VIEWERS: u32 = 4;
pub const DEFAULT_PEER_TIMEOUT_SECS: u32 = 30;
pub const DEFAULT_MAX_CONNECTING: u32 = 8;
pub const DEFAULT_HTTP_MAX_CONNECTIONS: u32 = 64;
pub const DEFAULT_VIEW_FRAMES: u32 = 30;
pub const DEFAULT_VIEW_TIMEOUT_SECS: u32 = 20;
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

/// Keys accepted in the config file: the daemon's long flag names (a test keeps them in step).
pub const FILE_KEYS: &[&str] = &[
    "id",
    "mqtt",
    "mqtt-username",
    "mqtt-password-file",
    "mqtt-ca",
    "mqtt-cert",
    "mqtt-key",
    "mqtt-client-id",
    "video",
    "size",
    "fps",
    "bitrate",
    "max-viewers",
    "peer-timeout",
    "max-connecting",
    "stun",
    "turn",
    "turn-username",
    "turn-password-file",
    "rtc-bind",
    "mdns",
    "http",
    "http-max-connections",
    "web-broker-url",
    "web-root",
    "log",
    "audio",
];

// ---------------------------------------------------------------------------------------------
// Resolved configuration

/// What to do, fully resolved and validated.
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
}

/// Everything the daemon needs. `Debug` redacts the passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Device id used in topics (validated with [`validate_uid`]).
    pub id: String,
    pub mqtt: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA and client certificate files for `mqtts://` and `wss://` brokers.
    pub tls: MqttTls,
    /// `--mqtt-client-id`: a fixed MQTT client id; `None` is a random one per connection.
    pub mqtt_client_id: Option<String>,
    pub video: VideoSpec,
    /// `--audio`: `auto`, `none`, `tone`, or an ALSA PCM name (resolved by `audio::resolve`).
    pub audio: AudioSetting,
    pub bitrate_kbps: u32,
    pub max_viewers: u32,
    pub peer_timeout: Duration,
    /// Sessions still connecting at once; beyond, the one connecting longest gives way.
    pub max_connecting: u32,
    /// `stun:` URLs.
    pub stun: Vec<String>,
    /// `turn:` / `turns:` URLs; when non-empty, `turn_username` and `turn_password` are set.
    pub turn: Vec<String>,
    pub turn_username: Option<String>,
    pub turn_password: Option<String>,
    /// Addresses WebRTC binds its UDP sockets to; empty means every interface.
    pub rtc_bind: Vec<IpAddr>,
    pub mdns: bool,
    /// Where the viewer page's HTTP server listens; `None` is `--http off`.
    pub http: Option<SocketAddr>,
    /// Open HTTP connections at most; beyond, the oldest idle one is closed.
    pub http_max_connections: u32,
    /// The broker's WebSocket URL for browsers (`ws://` or `wss://`); `None` lets the page use its
    /// own host name with [`crate::web::DEFAULT_BROKER_WS_PORT`].
    pub web_broker_url: Option<String>,
    /// Directory with the built viewer page.
    pub web_root: PathBuf,
    /// A tracing `EnvFilter` directive from `--log`; `None` means use `RUST_LOG` or a default.
    pub log: Option<String>,
    /// The config file the values came from, if any.
    pub config_file: Option<PathBuf>,
    /// Files holding secrets (passwords, private keys), named by what they hold; checked at start
    /// for modes that let other users read them ([`DaemonConfig::exposed_secrets`]).
    pub secret_files: Vec<(&'static str, PathBuf)>,
}

/// Everything the headless viewer needs. `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ViewConfig {
    pub mqtt: BrokerUrl,
    /// Device id of the camera to watch.
    pub id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// CA and client certificate files for `mqtts://` and `wss://` brokers.
    pub tls: MqttTls,
    /// Frames to receive and decode before exiting successfully.
    pub frames: u32,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
    /// Client id used in topics (validated with [`validate_cid`]).
    pub cid: String,
    /// Addresses WebRTC binds its UDP sockets to; empty means every interface.
    pub rtc_bind: Vec<IpAddr>,
    pub mdns: bool,
    /// Print the report as JSON.
    pub json: bool,
}

fn redact(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("id", &self.id)
            .field("mqtt", &self.mqtt)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("tls", &self.tls)
            .field("mqtt_client_id", &self.mqtt_client_id)
            .field("video", &self.video)
            .field("bitrate_kbps", &self.bitrate_kbps)
            .field("max_viewers", &self.max_viewers)
            .field("peer_timeout", &self.peer_timeout)
            .field("max_connecting", &self.max_connecting)
            .field("stun", &self.stun)
            .field("turn", &self.turn)
            .field("turn_username", &self.turn_username)
            .field("turn_password", &redact(&self.turn_password))
            .field("rtc_bind", &self.rtc_bind)
            .field("mdns", &self.mdns)
            .field("http", &self.http)
            .field("http_max_connections", &self.http_max_connections)
            .field("web_broker_url", &self.web_broker_url)
            .field("web_root", &self.web_root)
            .field("log", &self.log)
            .field("config_file", &self.config_file)
            .field("audio", &self.audio)
            .field("secret_files", &self.secret_files)
            .finish()
    }
}

impl fmt::Debug for ViewConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewConfig")
            .field("mqtt", &self.mqtt)
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("tls", &self.tls)
            .field("frames", &self.frames)
            .field("timeout", &self.timeout)
            .field("cid", &self.cid)
            .finish()
    }
}

/// Scheme of a [`BrokerUrl`]: it alone chooses the transport (TLS or not, WebSocket or not),
/// never the port number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum BrokerScheme {
    /// `mqtt://`: MQTT over plain TCP.
    #[default]
    Mqtt,
    /// `mqtts://`: MQTT over TLS.
    Mqtts,
    /// `ws://`: MQTT over a WebSocket.
    Ws,
    /// `wss://`: MQTT over a WebSocket over TLS.
    Wss,
}

/// The path a `ws://` or `wss://` URL without one gets: what AWS IoT, EMQX and HiveMQ serve MQTT
/// on. Mosquitto accepts any path.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

impl BrokerScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerScheme::Mqtt => "mqtt",
            BrokerScheme::Mqtts => "mqtts",
            BrokerScheme::Ws => "ws",
            BrokerScheme::Wss => "wss",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            BrokerScheme::Mqtt => DEFAULT_MQTT_PORT,
            BrokerScheme::Mqtts => 8883,
            BrokerScheme::Ws => 80,
            BrokerScheme::Wss => 443,
        }
    }

    /// Whether the connection is encrypted (and the `--mqtt-ca/cert/key` options apply).
    pub fn is_tls(self) -> bool {
        matches!(self, BrokerScheme::Mqtts | BrokerScheme::Wss)
    }

    /// Whether MQTT travels in WebSocket frames (and the URL may have a path).
    pub fn is_websocket(self) -> bool {
        matches!(self, BrokerScheme::Ws | BrokerScheme::Wss)
    }
}

/// A parsed broker address, `SCHEME://HOST[:PORT][/PATH]` with SCHEME one of `mqtt`, `mqtts`,
/// `ws`, `wss` (a path only for the WebSocket ones). IPv6 hosts are written in brackets and stored
/// without them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    pub scheme: BrokerScheme,
    pub host: String,
    pub port: u16,
    /// The WebSocket path, starting with `/` (default [`DEFAULT_WS_PATH`]); empty for `mqtt://`
    /// and `mqtts://`.
    pub path: String,
}

impl BrokerUrl {
    /// `mqtt://host:port`.
    pub fn mqtt(host: impl Into<String>, port: u16) -> Self {
        BrokerUrl {
            scheme: BrokerScheme::Mqtt,
            host: host.into(),
            port,
            path: String::new(),
        }
    }
}

/// Files for a TLS connection to the broker (`mqtts://`, `wss://`), each PEM. Checked when the
/// configuration is loaded; the key's contents are never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTls {
    /// CA certificate(s) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate (chain), for brokers that authenticate devices by certificate.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
}

impl Default for BrokerUrl {
    /// `mqtt://127.0.0.1:1883`.
    fn default() -> Self {
        BrokerUrl::mqtt(DEFAULT_MQTT_HOST, DEFAULT_MQTT_PORT)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }?;
        f.write_str(&self.path)
    }
}

impl FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORM: &str = "expected mqtt://HOST[:PORT], mqtts://HOST[:PORT], ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]";
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(format!("{FORM}, got {s:?}"));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" => BrokerScheme::Mqtt,
            "mqtts" => BrokerScheme::Mqtts,
            "ws" => BrokerScheme::Ws,
            "wss" => BrokerScheme::Wss,
            "ssl" | "tls" => {
                return Err(format!(
                    "write a TLS broker as mqtts://HOST[:PORT], got {s:?}"
                ));
            }
            _ => return Err(format!("unknown scheme {scheme:?}: {FORM}, got {s:?}")),
        };
        if rest.contains(['?', '#']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "a broker URL has no query, fragment or spaces: {FORM}, got {s:?}"
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = match (scheme.is_websocket(), path) {
            (false, "" | "/") => String::new(),
            (false, _) => {
                return Err(format!(
                    "a broker URL has no path or query: {FORM}, got {s:?}"
                ));
            }
            (true, "" | "/") => DEFAULT_WS_PATH.to_owned(),
            (true, path) => path.to_owned(),
        };
        if authority.contains('@') {
            return Err(format!(
                "put the user name in --mqtt-username and the password in --mqtt-password-file or \
                 {PASSWORD_ENV}, not in the URL"
            ));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "a broker URL has no path or query: {FORM}, got {s:?}"
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(format!("unclosed `[` in {s:?}"));
            };
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!(
                    "{host:?} in brackets is not an IPv6 address, in {s:?}"
                ));
            }
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err(format!("{FORM}, got {s:?}")),
                },
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(format!(
                        "write an IPv6 host in brackets, e.g. mqtt://[::1]:1883; got {s:?}"
                    ));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let host_ok = !host.is_empty()
            && (host.contains(':')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
        if !host_ok {
            return Err(format!("missing or invalid host: {FORM}, got {s:?}"));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(format!(
                        "port must be a number from 1 to 65535, got {text:?}"
                    ));
                }
            },
        };
        Ok(BrokerUrl {
            scheme,
            host: host.to_owned(),
            port,
            path,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

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
    #[error("config file {}: unknown key \"{key}\" (valid keys: {})", .path.display(), FILE_KEYS.join(", "))]
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

// ---------------------------------------------------------------------------------------------
// Command line

const AFTER_HELP: &str = "\
Config file:
  --config FILE reads a TOML file whose keys are the long option names without `--`, e.g.
      id = \"garage/cam1\"
      mqtt = \"mqtt://192.168.1.2:1883\"
      size = \"1920x1080\"
      max-viewers = 2
      rtc-bind = [\"192.168.1.20\"]
  Options given on the command line override the file.

Environment:
  SPYGLASS_MQTT_PASSWORD  MQTT password, used when no --mqtt-password-file is given
  RUST_LOG                log filter, used when no --log is given (default: info)";

#[derive(Parser, Debug)]
#[command(
    name = "spyglass",
    version,
    about = "Live camera daemon: V4L2 capture, H.264 encode, WebRTC to browsers, signaling over MQTT 5",
    long_about = "Live camera daemon: captures video from a V4L2 camera (or a test pattern), encodes \
                  it to H.264 once, and serves it over WebRTC to every viewer whose offer arrives \
                  over MQTT 5. The protocol is described in docs/PROTOCOL.md.\n\n\
                  Without a subcommand, spyglass runs the daemon.",
    after_long_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// List the cameras (V4L2 devices) and the formats they offer, then exit.
    Devices,
    /// Headless viewer: connect to a device over MQTT and WebRTC, receive frames, exit.
    ///
    /// Exits 0 once --frames frames have been received and decoded, non-zero on an error
    /// message from the device or when --timeout passes first.
    View(ViewArgs),
    /// Self-test: capture a few seconds, encode, packetize, depacketize and decode, check the
    /// result and print one report. Needs no broker and no network.
    ///
    /// Exits 0 when every check passes, 1 when one fails (the report says which).
    Selftest(SelftestArgs),
}

#[derive(Args, Debug, Default)]
struct DaemonArgs {
    /// Read options from this TOML file (keys are the long option names without `--`);
    /// options given on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Device id used in MQTT topics ({id}/offer/{cid}, {id}/status, ...). May contain `/`;
    /// never `+` or `#`. [default: the host name]
    #[arg(long, value_name = "UID", value_parser = parse_id)]
    id: Option<String>,

    /// MQTT 5 broker: mqtt://HOST[:PORT] (TCP, port 1883), mqtts://HOST[:PORT] (TLS, 8883),
    /// ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH] (WebSocket, 80 or 443, path /mqtt).
    /// The scheme alone chooses TLS. [default: mqtt://127.0.0.1:1883]
    #[arg(long, value_name = "URL", value_parser = parse_broker, help_heading = "MQTT")]
    mqtt: Option<BrokerUrl>,

    /// User name for the broker. [default: none, connect anonymously]
    #[arg(long, value_name = "NAME", value_parser = parse_nonempty, help_heading = "MQTT")]
    mqtt_username: Option<String>,

    /// File holding the broker password (one trailing newline is ignored). Without it, the
    /// SPYGLASS_MQTT_PASSWORD environment variable is used if set. Needs --mqtt-username.
    #[arg(long, value_name = "FILE", value_parser = parse_path, help_heading = "MQTT")]
    mqtt_password_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) to trust for an mqtts:// or wss:// broker instead of the
    /// system's root certificates.
    #[arg(long, value_name = "FILE", value_parser = parse_path, help_heading = "MQTT")]
    mqtt_ca: Option<PathBuf>,

    /// Client certificate (PEM) for brokers that authenticate devices by certificate. Needs
    /// --mqtt-key and an mqtts:// or wss:// broker.
    #[arg(long, value_name = "FILE", value_parser = parse_path, help_heading = "MQTT")]
    mqtt_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1). Needs --mqtt-cert.
    #[arg(long, value_name = "FILE", value_parser = parse_path, help_heading = "MQTT")]
    mqtt_key: Option<PathBuf>,

    /// A fixed MQTT client id, for brokers that bind client ids to credentials (AWS IoT Core
    /// policies). Without it the id is `spyglass-<id>-` and 16 random hex digits, new at every
    /// connection: a broker hands a client id to its newest connection, so anyone who could
    /// guess it could knock the device off (docs/SECURITY.md). [default: random]
    #[arg(long, value_name = "ID", value_parser = parse_client_id, help_heading = "MQTT")]
    mqtt_client_id: Option<String>,

    /// Video source: `test` for the built-in test pattern, or a V4L2 device path
    /// (`test-faults:FILE` is a test pattern that fails on command, for testing).
    /// [default: /dev/video0]
    #[arg(long, value_name = "SRC", value_parser = parse_video, help_heading = "Video")]
    video: Option<video::Source>,

    /// Picture size WIDTHxHEIGHT; each even, from 16 to 4096. [default: 1280x720]
    #[arg(long, value_name = "WxH", value_parser = parse_size, help_heading = "Video")]
    size: Option<(u32, u32)>,

    /// Frames per second, 1 to 120. [default: 30]
    #[arg(long, value_name = "N", value_parser = parse_fps, help_heading = "Video")]
    fps: Option<u32>,

    /// H.264 target bitrate in kbit/s, 50 to 50000. [default: 2000]
    #[arg(long, value_name = "KBPS", value_parser = parse_bitrate, help_heading = "Video")]
    bitrate: Option<u32>,

    /// Most viewers served at once; further offers get a `busy` error. [default: 4]
    #[arg(long, value_name = "N", value_parser = parse_max_viewers, help_heading = "WebRTC")]
    max_viewers: Option<u32>,

    /// Close a viewer's session when its peer connection has been unreachable or unconnected for
    /// this many seconds. [default: 30]
    #[arg(long, value_name = "SECS", value_parser = parse_peer_timeout, help_heading = "WebRTC")]
    peer_timeout: Option<u32>,

    /// Most sessions connecting at once (offer received, not yet connected). They hold no
    /// viewer's place; beyond this many, the one that has been connecting longest is closed
    /// with `busy`. [default: 8]
    #[arg(long, value_name = "N", value_parser = parse_max_connecting, help_heading = "WebRTC")]
    max_connecting: Option<u32>,

    /// STUN server, e.g. stun:stun.example.org:3478. Repeat for more. [default: none]
    #[arg(long, value_name = "URL", value_parser = parse_stun, help_heading = "WebRTC")]
    stun: Vec<String>,

    /// TURN server, turn:HOST[:PORT] or turns:HOST[:PORT]. Repeat for more. Needs
    /// --turn-username and --turn-password-file. [default: none]
    #[arg(long, value_name = "URL", value_parser = parse_turn, help_heading = "WebRTC")]
    turn: Vec<String>,

    /// User name for the TURN servers.
    #[arg(long, value_name = "NAME", value_parser = parse_nonempty, help_heading = "WebRTC")]
    turn_username: Option<String>,

    /// File holding the TURN password (one trailing newline is ignored).
    #[arg(long, value_name = "FILE", value_parser = parse_path, help_heading = "WebRTC")]
    turn_password_file: Option<PathBuf>,

    /// IP address to bind WebRTC's UDP sockets to. Repeat for more. [default: every interface]
    #[arg(long, value_name = "ADDR", value_parser = parse_ip, help_heading = "WebRTC")]
    rtc_bind: Vec<IpAddr>,

    /// Resolve viewers' mDNS (.local) ICE candidates: on or off. [default: on]
    #[arg(long, value_name = "on|off", value_parser = parse_on_off, help_heading = "WebRTC")]
    mdns: Option<bool>,

    /// Address and port of the viewer page's HTTP server, e.g. 0.0.0.0:8080 or [::]:8080, or off.
    /// [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR|off", value_parser = parse_http, help_heading = "Web page")]
    http: Option<HttpBind>,

    /// Most open connections to the viewer page's HTTP server; beyond, the oldest idle one is
    /// closed. Idle connections are closed after 10 s in any case. [default: 64]
    #[arg(long, value_name = "N", value_parser = parse_http_max_connections, help_heading = "Web page")]
    http_max_connections: Option<u32>,

    /// The MQTT broker's WebSocket URL that browsers connect to, ws://HOST[:PORT][/PATH] or
    /// wss://... [default: the page's own host name, port 9001: ws://<host>:9001]
    #[arg(long, value_name = "URL", value_parser = parse_web_broker_url, help_heading = "Web page")]
    web_broker_url: Option<String>,

    /// Directory holding the built viewer page (index.html). [default: the page built with
    /// spyglass: /usr/share/spyglass/web when installed from the .deb, web/dist in a source tree]
    #[arg(long, value_name = "DIR", value_parser = parse_path, help_heading = "Web page")]
    web_root: Option<PathBuf>,

    /// Log filter, e.g. `info` or `spyglass=debug,webrtc=warn`. [default: RUST_LOG, else info]
    #[arg(long, value_name = "FILTER", value_parser = parse_log)]
    log: Option<String>,

    /// Audio source: `auto` (the default ALSA capture device if there is one, else video only),
    /// `none`, `tone` (a 1 kHz beep at every second, in step with the test pattern's flash), or
    /// an ALSA PCM name such as `default`, `hw:1,0` or `plughw:CARD=Device`. [default: auto]
    #[arg(long, value_name = "SRC", value_parser = parse_audio, help_heading = "Audio")]
    audio: Option<AudioSetting>,
}

#[derive(Args, Debug)]
struct ViewArgs {
    /// MQTT 5 broker: mqtt://HOST[:PORT], mqtts://HOST[:PORT], ws://HOST[:PORT][/PATH] or
    /// wss://HOST[:PORT][/PATH] (see the daemon's --mqtt).
    #[arg(long, value_name = "URL", value_parser = parse_broker)]
    mqtt: BrokerUrl,

    /// Device id of the camera to watch.
    #[arg(long, value_name = "UID", value_parser = parse_id)]
    id: String,

    /// User name for the broker. [default: none, connect anonymously]
    #[arg(long, value_name = "NAME", value_parser = parse_nonempty)]
    mqtt_username: Option<String>,

    /// File holding the broker password; without it SPYGLASS_MQTT_PASSWORD is used if set.
    #[arg(long, value_name = "FILE", value_parser = parse_path)]
    mqtt_password_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) to trust for an mqtts:// or wss:// broker instead of the
    /// system's root certificates.
    #[arg(long, value_name = "FILE", value_parser = parse_path)]
    mqtt_ca: Option<PathBuf>,

    /// Client certificate (PEM), for brokers that ask for one. Needs --mqtt-key.
    #[arg(long, value_name = "FILE", value_parser = parse_path)]
    mqtt_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM). Needs --mqtt-cert.
    #[arg(long, value_name = "FILE", value_parser = parse_path)]
    mqtt_key: Option<PathBuf>,

    /// Frames to receive and decode before exiting successfully.
    #[arg(long, value_name = "N", value_parser = parse_frames, default_value_t = DEFAULT_VIEW_FRAMES)]
    frames: u32,

    /// Seconds to wait for all frames before giving up.
    #[arg(long, value_name = "SECS", value_parser = parse_view_timeout, default_value_t = DEFAULT_VIEW_TIMEOUT_SECS)]
    timeout: u32,

    /// Client id used in the topics, A-Z a-z 0-9 _ - (1 to 64). [default: view-<random hex>]
    #[arg(long, value_name = "CID", value_parser = parse_cid)]
    cid: Option<String>,

    /// IP address to bind WebRTC's UDP sockets to. Repeat for more. [default: every interface]
    #[arg(long, value_name = "ADDR", value_parser = parse_ip)]
    rtc_bind: Vec<IpAddr>,

    /// Resolve the device's mDNS (.local) ICE candidates: on or off. [default: on]
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    mdns: Option<bool>,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

// ---------------------------------------------------------------------------------------------
// Validators, shared by flags and config file. Each returns "expected …, got …" on failure.

/// An integer option's allowed range.
#[derive(Clone, Copy)]
struct IntRange {
    lo: u32,
    hi: u32,
}

const FPS: IntRange = IntRange { lo: 1, hi: 120 };
const BITRATE: IntRange = IntRange { lo: 50, hi: 50_000 };
const AT_LEAST_1: IntRange = IntRange {
    lo: 1,
    hi: u32::MAX,
};
const MAX_CONNECTING: IntRange = IntRange { lo: 1, hi: 256 };
const HTTP_MAX_CONNECTIONS: IntRange = IntRange { lo: 4, hi: 4096 };

impl IntRange {
    fn expected(self) -> String {
        if self.hi == u32::MAX {
            format!("an integer of at least {}", self.lo)
        } else {
            format!("an integer from {} to {}", self.lo, self.hi)
        }
    }

    fn check(self, n: i64) -> Result<u32, String> {
        match u32::try_from(n) {
            Ok(n) if (self.lo..=self.hi).contains(&n) => Ok(n),
            _ => Err(format!("expected {}, got {n}", self.expected())),
        }
    }

    fn parse(self, s: &str) -> Result<u32, String> {
        match s.trim().parse::<i64>() {
            Ok(n) => self.check(n),
            Err(_) => Err(format!("expected {}, got {s:?}", self.expected())),
        }
    }
}

fn parse_fps(s: &str) -> Result<u32, String> {
    FPS.parse(s)
}
fn parse_bitrate(s: &str) -> Result<u32, String> {
    BITRATE.parse(s)
}
fn parse_max_viewers(s: &str) -> Result<u32, String> {
    AT_LEAST_1.parse(s)
}
fn parse_peer_timeout(s: &str) -> Result<u32, String> {
    AT_LEAST_1.parse(s)
}
fn parse_max_connecting(s: &str) -> Result<u32, String> {
    MAX_CONNECTING.parse(s)
}
fn parse_http_max_connections(s: &str) -> Result<u32, String> {
    HTTP_MAX_CONNECTIONS.parse(s)
}

/// An MQTT client id: 1 to 128 printable ASCII characters (MQTT allows more; brokers differ,
/// and AWS IoT Core takes at most 128).
fn parse_client_id(s: &str) -> Result<String, String> {
    if (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "expected 1 to 128 printable ASCII characters without spaces, got {s:?}"
        ))
    }
}
fn parse_frames(s: &str) -> Result<u32, String> {
    AT_LEAST_1.parse(s)
}
fn parse_view_timeout(s: &str) -> Result<u32, String> {
    AT_LEAST_1.parse(s)
}

fn parse_id(s: &str) -> Result<String, String> {
    validate_uid(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn parse_cid(s: &str) -> Result<String, String> {
    validate_cid(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn parse_broker(s: &str) -> Result<BrokerUrl, String> {
    s.parse()
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("expected a non-empty string, got \"\"".into())
    } else {
        Ok(s.to_owned())
    }
}

fn parse_path(s: &str) -> Result<PathBuf, String> {
    parse_nonempty(s).map(PathBuf::from)
}

fn parse_video(s: &str) -> Result<video::Source, String> {
    s.parse()
}

fn parse_audio(s: &str) -> Result<AudioSetting, String> {
    s.parse()
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let err = || {
        format!("expected WIDTHxHEIGHT with even numbers from 16 to 4096, e.g. 1280x720, got {s:?}")
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(err)?;
    let dim = |d: &str| match d.parse::<u32>() {
        Ok(n)
            if (16..=4096).contains(&n) && n % 2 == 0 && d.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(n)
        }
        _ => Err(err()),
    };
    Ok((dim(w)?, dim(h)?))
}

fn parse_ice_url(s: &str, schemes: &[&str]) -> Result<String, String> {
    let expected = schemes
        .iter()
        .map(|p| format!("{p}HOST[:PORT]"))
        .collect::<Vec<_>>()
        .join(" or ");
    let ok = schemes.iter().any(|scheme| {
        s.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    }) && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("expected {expected}, got {s:?}"))
    }
}

fn parse_stun(s: &str) -> Result<String, String> {
    parse_ice_url(s, &["stun:"])
}

fn parse_turn(s: &str) -> Result<String, String> {
    parse_ice_url(s, &["turn:", "turns:"])
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("expected an IP address such as 192.168.1.20 or ::1, got {s:?}"))
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

/// `--http`'s value: an address, or `None` for off. (A newtype, since clap reads a bare
/// `Option<Option<_>>` as a flag whose value may be left out.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HttpBind(Option<SocketAddr>);

fn parse_http(s: &str) -> Result<HttpBind, String> {
    if s == "off" {
        return Ok(HttpBind(None));
    }
    match s.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(HttpBind(Some(addr))),
        _ => Err(format!(
            "expected off or IP:PORT such as 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080, got {s:?}"
        )),
    }
}

/// `ws://HOST[:PORT][/PATH]` or `wss://…`, as a browser's `WebSocket` takes it. Credentials do not
/// belong in it: the page asks the user for them.
fn parse_web_broker_url(s: &str) -> Result<String, String> {
    const FORM: &str = "expected ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]";
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("{FORM}, got {s:?}"));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss") {
        return Err(format!(
            "{FORM} (browsers reach MQTT over WebSockets only), got {s:?}"
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{FORM}, without spaces, got {s:?}"));
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if rest.contains(['?', '#']) {
        return Err(format!("{FORM}, without query or fragment, got {s:?}"));
    }
    if authority.contains('@') {
        return Err(format!(
            "a user name or password does not go in the URL (the page asks for them), got {s:?}"
        ));
    }
    // The same host and port rules as the MQTT URL.
    format!("mqtt://{authority}")
        .parse::<BrokerUrl>()
        .map(|_| s.to_owned())
        .map_err(|e| format!("{FORM}: {}", e.replace("mqtt://", "ws://")))
}

fn parse_log(s: &str) -> Result<String, String> {
    match tracing_subscriber::EnvFilter::try_new(s) {
        Ok(_) if !s.trim().is_empty() => Ok(s.to_owned()),
        Ok(_) => Err("expected a log filter such as info or spyglass=debug, got \"\"".into()),
        Err(e) => Err(format!(
            "expected a log filter such as info or spyglass=debug, got {s:?} ({e})"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Config file

/// Values read from the config file; `None` where the file has no such key.
#[derive(Debug, Default)]
struct FileValues {
    id: Option<String>,
    mqtt: Option<BrokerUrl>,
    mqtt_username: Option<String>,
    mqtt_password_file: Option<PathBuf>,
    mqtt_ca: Option<PathBuf>,
    mqtt_cert: Option<PathBuf>,
    mqtt_key: Option<PathBuf>,
    mqtt_client_id: Option<String>,
    video: Option<video::Source>,
    size: Option<(u32, u32)>,
    fps: Option<u32>,
    bitrate: Option<u32>,
    max_viewers: Option<u32>,
    peer_timeout: Option<u32>,
    max_connecting: Option<u32>,
    stun: Option<Vec<String>>,
    turn: Option<Vec<String>>,
    turn_username: Option<String>,
    turn_password_file: Option<PathBuf>,
    rtc_bind: Option<Vec<IpAddr>>,
    mdns: Option<bool>,
    http: Option<HttpBind>,
    http_max_connections: Option<u32>,
    web_broker_url: Option<String>,
    web_root: Option<PathBuf>,
    log: Option<String>,
    audio: Option<AudioSetting>,
}

/// How a TOML value reads in an error message.
fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => format!("a date ({d})"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

/// A string key: the value must be a TOML string, then goes through the flag's validator.
fn file_str<T>(
    value: &toml::Value,
    expected: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, String> {
    match value {
        toml::Value::String(s) => parse(s),
        other => Err(format!("expected {expected}, got {}", describe(other))),
    }
}

/// An integer key: a TOML integer, or a string holding one.
fn file_int(value: &toml::Value, range: IntRange) -> Result<u32, String> {
    match value {
        toml::Value::Integer(n) => range.check(*n),
        toml::Value::String(s) => range.parse(s),
        other => Err(format!(
            "expected {}, got {}",
            range.expected(),
            describe(other)
        )),
    }
}

/// A repeatable key: an array of strings (or one string), each through the flag's validator.
fn file_list<T>(
    value: &toml::Value,
    expected: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let items: Vec<&toml::Value> = match value {
        toml::Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    items
        .into_iter()
        .map(|item| file_str(item, expected, parse))
        .collect()
}

fn file_on_off(value: &toml::Value) -> Result<bool, String> {
    match value {
        toml::Value::Boolean(b) => Ok(*b),
        other => file_str(other, "on, off, true or false", parse_on_off),
    }
}

fn read_config_file(path: &Path) -> Result<FileValues, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::FileRead {
        path: path.to_owned(),
        err,
    })?;
    parse_config_text(path, &text)
}

fn parse_config_text(path: &Path, text: &str) -> Result<FileValues, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let offset = e.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::FileSyntax {
            path: path.to_owned(),
            line,
            column,
            message: e.message().trim().replace('\n', "; "),
        }
    })?;

    let mut v = FileValues::default();
    for (key, value) in &table {
        let result = match key.as_str() {
            "id" => file_str(value, "a device id", parse_id).map(|x| v.id = Some(x)),
            "mqtt" => {
                file_str(value, "a broker URL string", parse_broker).map(|x| v.mqtt = Some(x))
            }
            "mqtt-username" => {
                file_str(value, "a string", parse_nonempty).map(|x| v.mqtt_username = Some(x))
            }
            "mqtt-password-file" => {
                file_str(value, "a file path", parse_path).map(|x| v.mqtt_password_file = Some(x))
            }
            "mqtt-ca" => file_str(value, "a file path", parse_path).map(|x| v.mqtt_ca = Some(x)),
            "mqtt-cert" => {
                file_str(value, "a file path", parse_path).map(|x| v.mqtt_cert = Some(x))
            }
            "mqtt-key" => file_str(value, "a file path", parse_path).map(|x| v.mqtt_key = Some(x)),
            "mqtt-client-id" => file_str(value, "a client id string", parse_client_id)
                .map(|x| v.mqtt_client_id = Some(x)),
            "video" => {
                file_str(value, "`test` or a device path", parse_video).map(|x| v.video = Some(x))
            }
            "size" => {
                file_str(value, "a string WIDTHxHEIGHT", parse_size).map(|x| v.size = Some(x))
            }
            "fps" => file_int(value, FPS).map(|x| v.fps = Some(x)),
            "bitrate" => file_int(value, BITRATE).map(|x| v.bitrate = Some(x)),
            "max-viewers" => file_int(value, AT_LEAST_1).map(|x| v.max_viewers = Some(x)),
            "peer-timeout" => file_int(value, AT_LEAST_1).map(|x| v.peer_timeout = Some(x)),
            "max-connecting" => file_int(value, MAX_CONNECTING).map(|x| v.max_connecting = Some(x)),
            "stun" => file_list(value, "stun: URL strings", parse_stun).map(|x| v.stun = Some(x)),
            "turn" => file_list(value, "turn: or turns: URL strings", parse_turn)
                .map(|x| v.turn = Some(x)),
            "turn-username" => {
                file_str(value, "a string", parse_nonempty).map(|x| v.turn_username = Some(x))
            }
            "turn-password-file" => {
                file_str(value, "a file path", parse_path).map(|x| v.turn_password_file = Some(x))
            }
            "rtc-bind" => {
                file_list(value, "IP address strings", parse_ip).map(|x| v.rtc_bind = Some(x))
            }
            "mdns" => file_on_off(value).map(|x| v.mdns = Some(x)),
            "http" => {
                file_str(value, "off or a string IP:PORT", parse_http).map(|x| v.http = Some(x))
            }
            "http-max-connections" => {
                file_int(value, HTTP_MAX_CONNECTIONS).map(|x| v.http_max_connections = Some(x))
            }
            "web-broker-url" => file_str(value, "a ws:// or wss:// URL", parse_web_broker_url)
                .map(|x| v.web_broker_url = Some(x)),
            "web-root" => {
                file_str(value, "a directory path", parse_path).map(|x| v.web_root = Some(x))
            }
            "log" => file_str(value, "a log filter string", parse_log).map(|x| v.log = Some(x)),
            "audio" => file_str(value, "auto, none, tone or an ALSA PCM name", parse_audio)
                .map(|x| v.audio = Some(x)),
            _ => {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: key.clone(),
                });
            }
        };
        result.map_err(|message| ConfigError::FileValue {
            path: path.to_owned(),
            key: key.clone(),
            message,
        })?;
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Resolution

/// What the process environment contributes; a parameter so tests need not touch the real one.
#[derive(Debug, Clone, Default)]
struct Env {
    mqtt_password: Option<OsString>,
    hostname: OsString,
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

fn load_with<I, T>(args: I, env: &Env) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(ConfigError::Usage)?;
    match cli.command {
        None => resolve_daemon(cli.daemon, env).map(Command::Daemon),
        Some(Sub::Devices) => Ok(Command::Devices),
        Some(Sub::View(args)) => resolve_view(args, env).map(Command::View),
        Some(Sub::Selftest(args)) => Ok(Command::Selftest(resolve_selftest(args))),
    }
}

fn resolve_daemon(args: DaemonArgs, env: &Env) -> Result<DaemonConfig, ConfigError> {
    let file = match &args.config {
        Some(path) => read_config_file(path)?,
        None => FileValues::default(),
    };
    let id = match args.id.or(file.id) {
        Some(id) => id,
        None => hostname_id(&env.hostname)?,
    };
    let username = args.mqtt_username.or(file.mqtt_username);
    let password_file = args.mqtt_password_file.or(file.mqtt_password_file);
    let mut secret_files: Vec<(&'static str, PathBuf)> = Vec::new();
    secret_files.extend(password_file.clone().map(|p| ("MQTT password", p)));
    let password = mqtt_password(password_file.as_deref(), env, username.as_deref())?;
    let mqtt = args.mqtt.or(file.mqtt).unwrap_or_default();
    let config = args.config.as_deref();
    let tls = mqtt_tls(
        &mqtt,
        TlsOption::pick("mqtt-ca", args.mqtt_ca, file.mqtt_ca, config),
        TlsOption::pick("mqtt-cert", args.mqtt_cert, file.mqtt_cert, config),
        TlsOption::pick("mqtt-key", args.mqtt_key, file.mqtt_key, config),
    )?;
    let (width, height) = args
        .size
        .or(file.size)
        .unwrap_or((DEFAULT_WIDTH, DEFAULT_HEIGHT));
    let video = VideoSpec {
        source: args.video.or(file.video).unwrap_or_default(),
        width,
        height,
        fps: args.fps.or(file.fps).unwrap_or(DEFAULT_FPS),
    };
    // Repeatable options: any on the command line replace the file's list.
    let stun = if args.stun.is_empty() {
        file.stun.unwrap_or_default()
    } else {
        args.stun
    };
    let turn = if args.turn.is_empty() {
        file.turn.unwrap_or_default()
    } else {
        args.turn
    };
    let rtc_bind = if args.rtc_bind.is_empty() {
        file.rtc_bind.unwrap_or_default()
    } else {
        args.rtc_bind
    };
    let turn_username = args.turn_username.or(file.turn_username);
    let turn_password = match args.turn_password_file.or(file.turn_password_file) {
        Some(path) => {
            let password = read_secret(&path, "TURN password")?;
            secret_files.push(("TURN password", path));
            Some(password)
        }
        None => None,
    };
    secret_files.extend(tls.key.clone().map(|p| ("MQTT private key", p)));
    if !turn.is_empty() && (turn_username.is_none() || turn_password.is_none()) {
        return Err(ConfigError::Invalid(
            "--turn needs --turn-username and --turn-password-file (or the keys turn-username and \
             turn-password-file in the config file)"
                .into(),
        ));
    }
    let web_root = match args.web_root.or(file.web_root) {
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
    let http = match args.http.or(file.http) {
        Some(HttpBind(http)) => http,
        None => Some(DEFAULT_HTTP.parse().expect("DEFAULT_HTTP is an address")),
    };
    let peer_timeout = args
        .peer_timeout
        .or(file.peer_timeout)
        .unwrap_or(DEFAULT_PEER_TIMEOUT_SECS);
    Ok(DaemonConfig {
        id,
        mqtt,
        username,
        password,
        tls,
        mqtt_client_id: args.mqtt_client_id.or(file.mqtt_client_id),
        video,
        audio: args.audio.or(file.audio).unwrap_or_default(),
        bitrate_kbps: args
            .bitrate
            .or(file.bitrate)
            .unwrap_or(DEFAULT_BITRATE_KBPS),
        max_viewers: args
            .max_viewers
            .or(file.max_viewers)
            .unwrap_or(DEFAULT_MAX_VIEWERS),
        peer_timeout: Duration::from_secs(peer_timeout.into()),
        max_connecting: args
            .max_connecting
            .or(file.max_connecting)
            .unwrap_or(DEFAULT_MAX_CONNECTING),
        stun,
        turn,
        turn_username,
        turn_password,
        rtc_bind,
        mdns: args.mdns.or(file.mdns).unwrap_or(true),
        http,
        http_max_connections: args
            .http_max_connections
            .or(file.http_max_connections)
            .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS),
        web_broker_url: args.web_broker_url.or(file.web_broker_url),
        web_root,
        log: args.log.or(file.log),
        config_file: args.config,
        secret_files,
    })
}

impl DaemonConfig {
    /// Warnings for secret files that users other than the owner may read (mode bits for
    /// "others"): `chmod 600` them, or hand them to the service with `LoadCredential=`.
    pub fn exposed_secrets(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        self.secret_files
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
}

fn resolve_view(args: ViewArgs, env: &Env) -> Result<ViewConfig, ConfigError> {
    let password = mqtt_password(
        args.mqtt_password_file.as_deref(),
        env,
        args.mqtt_username.as_deref(),
    )?;
    let tls = mqtt_tls(
        &args.mqtt,
        TlsOption::pick("mqtt-ca", args.mqtt_ca, None, None),
        TlsOption::pick("mqtt-cert", args.mqtt_cert, None, None),
        TlsOption::pick("mqtt-key", args.mqtt_key, None, None),
    )?;
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
        mdns: args.mdns.unwrap_or(true),
        json: args.json,
    })
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

/// The MQTT password: from the file if one is named, else from the environment (an empty value
/// counts as unset). A password needs a user name.
fn mqtt_password(
    file: Option<&Path>,
    env: &Env,
    username: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let (password, origin) = match (file, &env.mqtt_password) {
        (Some(path), _) => (
            Some(read_secret(path, "MQTT password")?),
            "--mqtt-password-file",
        ),
        (None, Some(value)) if !value.is_empty() => {
            let value = value
                .clone()
                .into_string()
                .map_err(|_| ConfigError::Invalid(format!("{PASSWORD_ENV} is not valid UTF-8")))?;
            (Some(value), PASSWORD_ENV)
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
struct TlsOption {
    path: PathBuf,
    /// `--mqtt-ca`, or `key "mqtt-ca" of config file FILE`.
    origin: String,
}

impl TlsOption {
    /// The flag's value if given, else the config file's.
    fn pick(
        key: &str,
        flag: Option<PathBuf>,
        file: Option<PathBuf>,
        config: Option<&Path>,
    ) -> Option<TlsOption> {
        match (flag, file, config) {
            (Some(path), _, _) => Some(TlsOption {
                path,
                origin: format!("--{key}"),
            }),
            (None, Some(path), Some(config)) => Some(TlsOption {
                path,
                origin: format!("config file {}: key \"{key}\"", config.display()),
            }),
            _ => None,
        }
    }
}

/// Check the TLS files: each must be readable and hold what it should (parsed, not just opened),
/// the certificate and key come together, and they need a TLS broker URL.
fn mqtt_tls(
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
    let tls = MqttTls {
        ca: check(&ca, |p| crate::mqtt::load_certs(p).map(drop))?,
        cert: check(&cert, |p| crate::mqtt::load_certs(p).map(drop))?,
        key: check(&key, |p| crate::mqtt::load_key(p).map(drop))?,
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
        _ => Ok(tls),
    }
}

/// Read a secret from a file, dropping one trailing newline (`\n` or `\r\n`).
fn read_secret(path: &Path, what: &'static str) -> Result<String, ConfigError> {
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
    Ok(text)
}

/// `view-` and 16 random hex digits.
fn random_cid() -> String {
    format!("view-{:016x}", rand::random::<u64>())
}

// ---------------------------------------------------------------------------------------------
// `spyglass selftest`

pub const DEFAULT_SELFTEST_SECONDS: u32 = 3;

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
}

#[derive(Args, Debug)]
struct SelftestArgs {
    /// Video source: `test` for the built-in test pattern, or a V4L2 device path.
    #[arg(long, value_name = "SRC", value_parser = parse_video, default_value = DEFAULT_VIDEO)]
    video: video::Source,

    /// Audio source: `none`, `tone` (the built-in 1 kHz beeps), or an ALSA PCM name such as
    /// `hw:1,0`: capture, Opus encode, packetize, depacketize, decode, check it is not silence.
    #[arg(long, value_name = "SRC", value_parser = parse_selftest_audio, default_value = "none")]
    audio: AudioSetting,

    /// Check that the captured sound carries a tone of this frequency (Hz, 50 to 20000), e.g.
    /// one played into the device's other end. [default: 1000 for `tone`, no check for a device]
    #[arg(long, value_name = "HZ", value_parser = parse_tone_hz)]
    expect_tone: Option<u32>,

    /// Picture size WIDTHxHEIGHT; each even, from 16 to 4096. [default: 1280x720]
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    size: Option<(u32, u32)>,

    /// Frames per second, 1 to 120.
    #[arg(long, value_name = "N", value_parser = parse_fps, default_value_t = DEFAULT_FPS)]
    fps: u32,

    /// H.264 target bitrate in kbit/s, 50 to 50000.
    #[arg(long, value_name = "KBPS", value_parser = parse_bitrate, default_value_t = DEFAULT_BITRATE_KBPS)]
    bitrate: u32,

    /// Seconds of video to capture: the test runs seconds × fps frames through the pipeline.
    #[arg(long, value_name = "N", value_parser = parse_selftest_seconds, default_value_t = DEFAULT_SELFTEST_SECONDS)]
    seconds: u32,

    /// V4L2 only: use this pixel format (YUYV, NV12, YU12 or MJPG) instead of letting
    /// negotiation choose. [default: negotiate]
    #[arg(long, value_name = "FOURCC", value_parser = parse_pixel_format)]
    pixel_format: Option<crate::video::negotiate::FourCc>,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_selftest_audio(s: &str) -> Result<AudioSetting, String> {
    match parse_audio(s)? {
        AudioSetting::Auto => Err(
            "the self-test needs a named audio source: none, tone or an ALSA PCM name such as hw:1,0"
                .to_owned(),
        ),
        setting => Ok(setting),
    }
}

fn parse_tone_hz(s: &str) -> Result<u32, String> {
    IntRange { lo: 50, hi: 20_000 }.parse(s)
}

fn parse_selftest_seconds(s: &str) -> Result<u32, String> {
    IntRange { lo: 1, hi: 600 }.parse(s)
}

fn parse_pixel_format(s: &str) -> Result<crate::video::negotiate::FourCc, String> {
    crate::video::negotiate::FourCc::parse_supported(s)
}

fn resolve_selftest(args: SelftestArgs) -> SelftestConfig {
    let (width, height) = args.size.unwrap_or((DEFAULT_WIDTH, DEFAULT_HEIGHT));
    SelftestConfig {
        video: VideoSpec {
            source: args.video,
            width,
            height,
            fps: args.fps,
        },
        pixel_format: args.pixel_format,
        expect_tone_hz: args.expect_tone.or(args.audio.tone_hz()),
        audio: args.audio,
        seconds: args.seconds,
        bitrate_kbps: args.bitrate,
        json: args.json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    /// A scratch directory, removed on drop: its path, and the directory.
    struct Scratch(
        PathBuf,
        #[expect(dead_code, reason = "held for its drop, which removes the directory")]
        tempfile::TempDir,
    );

    impl Scratch {
        fn new() -> Self {
            let dir = tempfile::Builder::new()
                .prefix("spyglass-config-")
                .tempdir()
                .unwrap();
            Scratch(dir.path().to_path_buf(), dir)
        }

        fn file(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    fn env() -> Env {
        Env {
            mqtt_password: None,
            hostname: "testhost".into(),
        }
    }

    fn daemon_with(args: &[&str], env: &Env) -> Result<DaemonConfig, ConfigError> {
        let argv = std::iter::once("spyglass").chain(args.iter().copied());
        match load_with(argv, env)? {
            Command::Daemon(config) => Ok(config),
            other => panic!("expected daemon, got {other:?}"),
        }
    }

    fn daemon(args: &[&str]) -> Result<DaemonConfig, ConfigError> {
        daemon_with(args, &env())
    }

    fn view_with(args: &[&str], env: &Env) -> Result<ViewConfig, ConfigError> {
        let argv = ["spyglass", "view"].into_iter().chain(args.iter().copied());
        match load_with(argv, env)? {
            Command::View(config) => Ok(config),
            other => panic!("expected view, got {other:?}"),
        }
    }

    fn usage_error(result: Result<impl fmt::Debug, ConfigError>) -> clap::Error {
        match result {
            Err(ConfigError::Usage(e)) => e,
            other => panic!("expected a clap error, got {other:?}"),
        }
    }

    fn with_file(
        contents: &str,
        args: &[&str],
    ) -> (Scratch, PathBuf, Result<DaemonConfig, ConfigError>) {
        let scratch = Scratch::new();
        let path = scratch.file("spyglass.toml", contents);
        let mut argv = vec!["--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        let result = daemon(&argv);
        (scratch, path, result)
    }

    // --- the limits of issue 12

    #[test]
    fn limit_settings_from_flags_and_file_with_defaults_and_ranges() {
        let c = daemon(&[]).unwrap();
        assert_eq!(c.max_connecting, DEFAULT_MAX_CONNECTING);
        assert_eq!(c.http_max_connections, DEFAULT_HTTP_MAX_CONNECTIONS);
        assert_eq!(c.mqtt_client_id, None);
        let c = daemon(&[
            "--max-connecting",
            "3",
            "--http-max-connections",
            "16",
            "--mqtt-client-id",
            "thing-garage",
        ])
        .unwrap();
        assert_eq!((c.max_connecting, c.http_max_connections), (3, 16));
        assert_eq!(c.mqtt_client_id.as_deref(), Some("thing-garage"));
        let (_s, _p, c) = with_file(
            "max-connecting = 2\nhttp-max-connections = 8\nmqtt-client-id = \"cam\"\n",
            &["--max-connecting", "5"],
        );
        let c = c.unwrap();
        assert_eq!((c.max_connecting, c.http_max_connections), (5, 8));
        assert_eq!(c.mqtt_client_id.as_deref(), Some("cam"));
        for (args, want) in [
            (&["--max-connecting", "0"][..], "from 1 to 256"),
            (&["--http-max-connections", "2"][..], "from 4 to 4096"),
            (&["--mqtt-client-id", "has space"][..], "printable ASCII"),
        ] {
            let e = usage_error(daemon(args)).to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn secret_files_readable_by_others_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Scratch::new();
        let password = scratch.file("password", "pw\n");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = daemon(&[
            "--mqtt-username",
            "u",
            "--mqtt-password-file",
            password.to_str().unwrap(),
        ])
        .unwrap();
        let warnings = c.exposed_secrets();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("MQTT password") && warnings[0].contains("644"));
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(c.exposed_secrets().is_empty());
    }

    // --- defaults and help

    #[test]
    fn defaults() {
        let c = daemon(&[]).unwrap();
        assert_eq!(c.id, "testhost");
        assert_eq!(c.mqtt, BrokerUrl::mqtt("127.0.0.1", 1883));
        assert_eq!((c.username, c.password), (None, None));
        assert_eq!(
            c.video,
            VideoSpec {
                source: "/dev/video0".parse().unwrap(),
                width: 1280,
                height: 720,
                fps: 30
            }
        );
        assert_eq!(c.bitrate_kbps, 2000);
        assert_eq!(c.max_viewers, 4);
        assert_eq!(c.peer_timeout, Duration::from_secs(30));
        assert!(c.stun.is_empty() && c.turn.is_empty() && c.rtc_bind.is_empty());
        assert_eq!((c.turn_username, c.turn_password), (None, None));
        assert!(c.mdns);
        assert_eq!(c.log, None);
        assert_eq!(c.config_file, None);
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_every_option_and_default() {
        let help = Cli::command().render_long_help().to_string();
        for key in FILE_KEYS.iter().chain(["config"].iter()) {
            assert!(
                help.contains(&format!("--{key}")),
                "--{key} missing from help"
            );
        }
        for default in [
            "[default: the host name]".to_owned(),
            "[default: mqtt://127.0.0.1:1883]".to_owned(),
            "[default: /dev/video0]".to_owned(),
            format!("[default: {DEFAULT_WIDTH}x{DEFAULT_HEIGHT}]"),
            format!("[default: {DEFAULT_FPS}]"),
            format!("[default: {DEFAULT_BITRATE_KBPS}]"),
            format!("[default: {DEFAULT_MAX_VIEWERS}]"),
            format!("[default: {DEFAULT_PEER_TIMEOUT_SECS}]"),
            "[default: on]".to_owned(),
            PASSWORD_ENV.to_owned(),
            "RUST_LOG".to_owned(),
        ] {
            assert!(
                help.contains(&default),
                "{default} missing from help:\n{help}"
            );
        }
        let mut cmd = Cli::command();
        let view = cmd
            .find_subcommand_mut("view")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "--mqtt",
            "--id",
            "--frames",
            "[default: 30]",
            "--timeout",
            "[default: 20]",
            "--cid",
            "view-",
        ] {
            assert!(
                view.contains(needle),
                "{needle} missing from view help:\n{view}"
            );
        }
    }

    #[test]
    fn file_keys_are_the_daemon_flags() {
        let cmd = Cli::command();
        let mut flags: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| !["config", "help", "version"].contains(l))
            .collect();
        let mut keys = FILE_KEYS.to_vec();
        flags.sort();
        keys.sort();
        assert_eq!(flags, keys);
    }

    #[test]
    fn help_and_version_are_clap_errors_that_exit_zero() {
        let e = usage_error(load_with(["spyglass", "--help"], &env()));
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
        let e = usage_error(load_with(["spyglass", "--version"], &env()));
        assert_eq!(e.kind(), ErrorKind::DisplayVersion);
        assert!(e.to_string().contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn unknown_flag_is_a_usage_error_with_exit_2() {
        let e = usage_error(daemon(&["--frobnicate"]));
        assert_eq!(e.kind(), ErrorKind::UnknownArgument);
        assert_eq!(e.exit_code(), 2);
        // Passwords are never flags.
        assert_eq!(
            usage_error(daemon(&["--mqtt-password", "x"])).kind(),
            ErrorKind::UnknownArgument
        );
    }

    // --- flags

    #[test]
    fn flags_set_every_option() {
        let scratch = Scratch::new();
        let turn_pw = scratch.file("turn.pw", "tpass\n");
        let c = daemon(&[
            "--id",
            "garage/cam1",
            "--mqtt",
            "mqtt://broker.lan:1884",
            "--mqtt-username",
            "cam",
            "--video",
            "test",
            "--size",
            "640x480",
            "--fps",
            "15",
            "--bitrate",
            "800",
            "--max-viewers",
            "2",
            "--peer-timeout",
            "10",
            "--stun",
            "stun:stun.lan:3478",
            "--stun",
            "stun:stun2.lan",
            "--turn",
            "turns:turn.lan:5349",
            "--turn-username",
            "t",
            "--turn-password-file",
            turn_pw.to_str().unwrap(),
            "--rtc-bind",
            "127.0.0.1",
            "--rtc-bind",
            "::1",
            "--mdns",
            "off",
            "--log",
            "spyglass=debug",
        ])
        .unwrap();
        assert_eq!(c.id, "garage/cam1");
        assert_eq!(c.mqtt, BrokerUrl::mqtt("broker.lan", 1884));
        assert_eq!(c.username.as_deref(), Some("cam"));
        assert_eq!(
            c.video,
            VideoSpec {
                source: "test".parse().unwrap(),
                width: 640,
                height: 480,
                fps: 15
            }
        );
        assert_eq!((c.bitrate_kbps, c.max_viewers), (800, 2));
        assert_eq!(c.peer_timeout, Duration::from_secs(10));
        assert_eq!(c.stun, ["stun:stun.lan:3478", "stun:stun2.lan"]);
        assert_eq!(c.turn, ["turns:turn.lan:5349"]);
        assert_eq!(c.turn_username.as_deref(), Some("t"));
        assert_eq!(c.turn_password.as_deref(), Some("tpass"));
        assert_eq!(
            c.rtc_bind,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(!c.mdns);
        assert_eq!(c.log.as_deref(), Some("spyglass=debug"));
    }

    #[test]
    fn bad_flag_values_are_rejected() {
        let cases: &[(&[&str], &str)] = &[
            (&["--size", "12x"], "WIDTHxHEIGHT"),
            (&["--size", "1280"], "WIDTHxHEIGHT"),
            (&["--size", "1281x720"], "even"),
            (&["--size", "8x8"], "16 to 4096"),
            (&["--size", "4098x720"], "16 to 4096"),
            (&["--size=-16x16"], "WIDTHxHEIGHT"),
            (&["--size", "+16x16"], "WIDTHxHEIGHT"),
            (&["--fps", "0"], "from 1 to 120, got 0"),
            (&["--fps", "121"], "from 1 to 120, got 121"),
            (&["--fps", "abc"], "from 1 to 120, got \"abc\""),
            (&["--bitrate", "49"], "from 50 to 50000"),
            (&["--max-viewers", "0"], "at least 1"),
            (&["--peer-timeout", "0"], "at least 1"),
            (&["--id", "cam+1"], "wildcard"),
            (&["--id", "cam/#"], "wildcard"),
            (&["--id", ""], "empty"),
            (&["--id", "/cam"], "start or end"),
            (&["--id", "a//b"], "empty level"),
            (&["--mqtt", "http://h"], "unknown scheme"),
            (&["--mqtt", "ssl://h"], "mqtts://"),
            (&["--mqtt", "mqtts://h/x"], "no path"),
            (&["--mqtt", "ws://h:8080/mqtt?x=1"], "no query"),
            (&["--mqtt", "wss://u:p@h"], "--mqtt-username"),
            (&["--mqtt", "127.0.0.1:1883"], "mqtt://HOST[:PORT]"),
            (&["--mqtt", "mqtt://"], "host"),
            (&["--mqtt", "mqtt://h:0"], "port"),
            (&["--mqtt", "mqtt://h:99999"], "port"),
            (&["--mqtt", "mqtt://u:p@h"], "--mqtt-username"),
            (&["--mqtt", "mqtt://h/topic"], "no path"),
            (&["--mqtt", "mqtt://::1"], "brackets"),
            (&["--video", "video0"], "/dev/video0"),
            (&["--stun", "stun.lan"], "stun:HOST"),
            (&["--stun", "turn:t.lan"], "stun:HOST"),
            (&["--turn", "stun:t.lan"], "turn:HOST[:PORT] or turns:"),
            (&["--rtc-bind", "eth0"], "IP address"),
            (&["--mdns", "maybe"], "on or off"),
            (&["--mqtt-username", ""], "non-empty"),
        ];
        for (args, want) in cases {
            let e = usage_error(daemon(args));
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
            let msg = e.to_string();
            assert!(msg.contains(want), "{args:?}: {msg}");
            assert!(
                msg.contains(args[0].split('=').next().unwrap()),
                "{args:?}: {msg}"
            );
        }
    }

    #[test]
    fn broker_urls_parse() {
        let cases = [
            ("mqtt://h", "h", 1883),
            ("mqtt://h:1884", "h", 1884),
            ("mqtt://h/", "h", 1883),
            ("MQTT://10.0.0.1:1", "10.0.0.1", 1),
            ("mqtt://[::1]:1885", "::1", 1885),
            ("mqtt://[fe80::1]", "fe80::1", 1883),
            ("mqtt://my-broker.local", "my-broker.local", 1883),
        ];
        for (text, host, port) in cases {
            let url: BrokerUrl = text.parse().unwrap();
            assert_eq!(url, BrokerUrl::mqtt(host, port), "{text}");
            assert_eq!(url.to_string().parse::<BrokerUrl>().unwrap(), url, "{text}");
        }
        assert_eq!(
            BrokerUrl::mqtt("::1", 1883).to_string(),
            "mqtt://[::1]:1883"
        );
        assert_eq!(BrokerUrl::default().to_string(), "mqtt://127.0.0.1:1883");
        // The scheme chooses the transport and the default port; only WebSockets have a path.
        let cases = [
            (
                "mqtts://h",
                BrokerScheme::Mqtts,
                "h",
                8883,
                "",
                "mqtts://h:8883",
            ),
            (
                "mqtts://h:1883/",
                BrokerScheme::Mqtts,
                "h",
                1883,
                "",
                "mqtts://h:1883",
            ),
            (
                "ws://h",
                BrokerScheme::Ws,
                "h",
                80,
                "/mqtt",
                "ws://h:80/mqtt",
            ),
            (
                "ws://h:9001/",
                BrokerScheme::Ws,
                "h",
                9001,
                "/mqtt",
                "ws://h:9001/mqtt",
            ),
            (
                "WSS://h/a/b",
                BrokerScheme::Wss,
                "h",
                443,
                "/a/b",
                "wss://h:443/a/b",
            ),
            (
                "wss://[::1]:8443/m",
                BrokerScheme::Wss,
                "::1",
                8443,
                "/m",
                "wss://[::1]:8443/m",
            ),
        ];
        for (text, scheme, host, port, path, shown) in cases {
            let url: BrokerUrl = text.parse().unwrap();
            assert_eq!(
                (url.scheme, url.host.as_str(), url.port, url.path.as_str()),
                (scheme, host, port, path),
                "{text}"
            );
            assert_eq!(url.to_string(), shown);
            assert_eq!(url.to_string().parse::<BrokerUrl>().unwrap(), url, "{text}");
        }
        assert!(BrokerScheme::Mqtts.is_tls() && BrokerScheme::Wss.is_tls());
        assert!(!BrokerScheme::Mqtt.is_tls() && !BrokerScheme::Ws.is_tls());
    }

    /// A self-signed certificate and its key, made with the openssl command.
    fn pem_pair(scratch: &Scratch) -> (PathBuf, PathBuf) {
        let cert = scratch.0.join("c.pem");
        let key = scratch.0.join("k.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=t", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl req failed");
        (cert, key)
    }

    #[test]
    fn tls_files_from_flags_and_file_are_checked() {
        let scratch = Scratch::new();
        let (cert, key) = pem_pair(&scratch);
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let c = daemon(&[
            "--mqtt",
            "mqtts://b.lan",
            "--mqtt-ca",
            cert,
            "--mqtt-cert",
            cert,
            "--mqtt-key",
            key,
        ])
        .unwrap();
        assert_eq!(c.mqtt.port, 8883);
        assert_eq!(c.tls.ca.as_deref(), Some(Path::new(cert)));
        assert_eq!(c.tls.cert.as_deref(), Some(Path::new(cert)));
        assert_eq!(c.tls.key.as_deref(), Some(Path::new(key)));
        let text = format!("mqtt = \"wss://b.lan/mqtt\"\nmqtt-ca = \"{cert}\"\n");
        let path = scratch.file("c.toml", &text);
        let c = daemon(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.tls.ca.as_deref(), Some(Path::new(cert)));
        assert_eq!(c.tls.cert, None);
        let v = view_with(
            &["--mqtt", "mqtts://b.lan", "--id", "cam", "--mqtt-ca", cert],
            &env(),
        )
        .unwrap();
        assert_eq!(v.tls.ca.as_deref(), Some(Path::new(cert)));

        let junk = scratch.file("junk.pem", "hello\n");
        let junk = junk.to_str().unwrap();
        let missing = scratch.0.join("nope.pem");
        let missing = missing.to_str().unwrap();
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["--mqtt-ca", cert],
                &["--mqtt-ca", cert, "mqtts:// or wss://", "mqtt://"],
            ),
            (
                &["--mqtt", "ws://b", "--mqtt-ca", cert],
                &["--mqtt-ca", "ws://b:80/mqtt"],
            ),
            (
                &["--mqtt", "mqtts://b", "--mqtt-ca", missing],
                &["--mqtt-ca", missing],
            ),
            (
                &["--mqtt", "mqtts://b", "--mqtt-ca", junk],
                &["--mqtt-ca", junk, "no PEM certificate"],
            ),
            (
                &["--mqtt", "mqtts://b", "--mqtt-ca", key],
                &["--mqtt-ca", "no PEM certificate"],
            ),
            (
                &[
                    "--mqtt",
                    "mqtts://b",
                    "--mqtt-cert",
                    cert,
                    "--mqtt-key",
                    cert,
                ],
                &["--mqtt-key", cert, "no PEM private key"],
            ),
            (
                &["--mqtt", "mqtts://b", "--mqtt-cert", cert],
                &["--mqtt-cert", "--mqtt-key"],
            ),
            (
                &["--mqtt", "mqtts://b", "--mqtt-key", key],
                &["--mqtt-key", "--mqtt-cert"],
            ),
        ];
        for (args, wants) in cases {
            let msg = daemon(args).unwrap_err().to_string();
            for want in *wants {
                assert!(msg.contains(want), "{args:?}: {msg}");
            }
            // The key's contents never appear in an error.
            assert!(!msg.contains("-----"), "{msg}");
        }
        let text = format!("mqtt = \"mqtts://b\"\nmqtt-ca = \"{junk}\"\n");
        let path = scratch.file("bad.toml", &text);
        let msg = daemon(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        for want in [path.to_str().unwrap(), "key \"mqtt-ca\"", junk] {
            assert!(msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn bad_host_name_needs_explicit_id() {
        let env = Env {
            mqtt_password: None,
            hostname: "bad+host".into(),
        };
        let err = daemon_with(&[], &env).unwrap_err().to_string();
        assert!(err.contains("--id"), "{err}");
        assert_eq!(daemon_with(&["--id", "cam"], &env).unwrap().id, "cam");
    }

    #[test]
    fn turn_needs_credentials() {
        let err = daemon(&["--turn", "turn:t.lan"]).unwrap_err();
        assert!(err.to_string().contains("--turn-username"), "{err}");
        assert!(daemon(&["--turn", "turn:t.lan", "--turn-username", "u"]).is_err());
    }

    // --- passwords

    #[test]
    fn password_from_file_drops_one_trailing_newline() {
        let scratch = Scratch::new();
        for (contents, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("a b\n\n", "a b\n"),
        ] {
            let path = scratch.file("pw", contents);
            let c = daemon(&[
                "--mqtt-username",
                "u",
                "--mqtt-password-file",
                path.to_str().unwrap(),
            ])
            .unwrap();
            assert_eq!(c.password.as_deref(), Some(want), "{contents:?}");
        }
    }

    #[test]
    fn password_from_env_and_file_wins() {
        let env = Env {
            mqtt_password: Some("fromenv".into()),
            hostname: "h".into(),
        };
        let c = daemon_with(&["--mqtt-username", "u"], &env).unwrap();
        assert_eq!(c.password.as_deref(), Some("fromenv"));
        let scratch = Scratch::new();
        let path = scratch.file("pw", "fromfile\n");
        let c = daemon_with(
            &[
                "--mqtt-username",
                "u",
                "--mqtt-password-file",
                path.to_str().unwrap(),
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.password.as_deref(), Some("fromfile"));
        // Empty counts as unset.
        let empty = Env {
            mqtt_password: Some("".into()),
            hostname: "h".into(),
        };
        assert_eq!(daemon_with(&[], &empty).unwrap().password, None);
    }

    #[test]
    fn password_needs_user_name() {
        let env = Env {
            mqtt_password: Some("pw".into()),
            hostname: "h".into(),
        };
        let err = daemon_with(&[], &env).unwrap_err().to_string();
        assert!(
            err.contains(PASSWORD_ENV) && err.contains("--mqtt-username"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_or_empty_password_file_is_named() {
        let scratch = Scratch::new();
        let missing = scratch.0.join("nope.pw");
        let err = daemon(&[
            "--mqtt-username",
            "u",
            "--mqtt-password-file",
            missing.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::SecretFile { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.pw"), "{err}");
        let empty = scratch.file("empty.pw", "\n");
        let err = daemon(&[
            "--mqtt-username",
            "u",
            "--mqtt-password-file",
            empty.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("empty.pw") && err.to_string().contains("empty"),
            "{err}"
        );
        let err = daemon(&["--turn-password-file", missing.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string().contains("TURN password") && err.to_string().contains("nope.pw"),
            "{err}"
        );
    }

    #[test]
    fn debug_redacts_passwords() {
        let scratch = Scratch::new();
        let pw = scratch.file("pw", "hunter2-mqtt");
        let tpw = scratch.file("tpw", "hunter2-turn");
        let c = daemon(&[
            "--mqtt-username",
            "u",
            "--mqtt-password-file",
            pw.to_str().unwrap(),
            "--turn",
            "turn:t",
            "--turn-username",
            "t",
            "--turn-password-file",
            tpw.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(c.password.as_deref(), Some("hunter2-mqtt"));
        let debug = format!("{c:?} {c:#?} {:?}", Command::Daemon(c.clone()));
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"));

        let env = Env {
            mqtt_password: Some("hunter2-view".into()),
            hostname: "h".into(),
        };
        let v = view_with(
            &["--mqtt", "mqtt://h", "--id", "cam", "--mqtt-username", "u"],
            &env,
        )
        .unwrap();
        assert_eq!(v.password.as_deref(), Some("hunter2-view"));
        let debug = format!("{v:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    // --- config file

    #[test]
    fn file_sets_every_key() {
        let scratch = Scratch::new();
        let pw = scratch.file("pw", "p\n");
        let tpw = scratch.file("tpw", "tp\n");
        let text = format!(
            r#"
            id = "garage/cam1"
            mqtt = "mqtt://broker.lan"
            mqtt-username = "cam"
            mqtt-password-file = "{pw}"
            video = "test"
            size = "640x360"
            fps = 25
            bitrate = "900"
            max-viewers = 8
            peer-timeout = 5
            stun = ["stun:a.lan", "stun:b.lan:3478"]
            turn = "turn:t.lan"
            turn-username = "tu"
            turn-password-file = "{tpw}"
            rtc-bind = ["127.0.0.1"]
            mdns = "off"
            log = "debug"
            "#,
            pw = pw.display(),
            tpw = tpw.display()
        );
        let path = scratch.file("c.toml", &text);
        let c = daemon(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.id, "garage/cam1");
        assert_eq!(c.mqtt, BrokerUrl::mqtt("broker.lan", 1883));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("cam"), Some("p"))
        );
        assert_eq!(
            c.video,
            VideoSpec {
                source: "test".parse().unwrap(),
                width: 640,
                height: 360,
                fps: 25
            }
        );
        assert_eq!((c.bitrate_kbps, c.max_viewers), (900, 8));
        assert_eq!(c.peer_timeout, Duration::from_secs(5));
        assert_eq!(c.stun, ["stun:a.lan", "stun:b.lan:3478"]);
        assert_eq!(c.turn, ["turn:t.lan"]);
        assert_eq!(
            (c.turn_username.as_deref(), c.turn_password.as_deref()),
            (Some("tu"), Some("tp"))
        );
        assert_eq!(c.rtc_bind, ["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(!c.mdns);
        assert_eq!(c.log.as_deref(), Some("debug"));
        assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
    }

    #[test]
    fn flags_override_file() {
        let (_s, _p, c) = with_file(
            "fps = 10\nsize = \"320x240\"\nid = \"from-file\"\nstun = [\"stun:file\"]\nmdns = false\nbitrate = 100\n",
            &[
                "--fps",
                "20",
                "--id",
                "from-flag",
                "--stun",
                "stun:flag",
                "--mdns",
                "on",
            ],
        );
        let c = c.unwrap();
        assert_eq!(c.video.fps, 20);
        assert_eq!(c.id, "from-flag");
        assert_eq!(c.stun, ["stun:flag"]);
        assert!(c.mdns);
        // Keys without a flag still come from the file.
        assert_eq!(
            (c.video.width, c.video.height, c.bitrate_kbps),
            (320, 240, 100)
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let (_s, _p, c) = with_file("# nothing here\n", &[]);
        let mut c = c.unwrap();
        assert!(c.config_file.take().is_some());
        assert_eq!(c, daemon(&[]).unwrap());
    }

    #[test]
    fn each_bad_file_value_names_key_and_file() {
        let cases = [
            (
                "fps = \"abc\"",
                "fps",
                "expected an integer from 1 to 120, got \"abc\"",
            ),
            ("fps = 0", "fps", "expected an integer from 1 to 120, got 0"),
            ("fps = 2.5", "fps", "got 2.5"),
            ("fps = -1", "fps", "got -1"),
            ("bitrate = 10", "bitrate", "from 50 to 50000, got 10"),
            ("max-viewers = 0", "max-viewers", "at least 1"),
            ("peer-timeout = true", "peer-timeout", "got true"),
            ("size = \"12x\"", "size", "WIDTHxHEIGHT"),
            ("size = \"15x720\"", "size", "even"),
            (
                "size = 1280",
                "size",
                "expected a string WIDTHxHEIGHT, got 1280",
            ),
            ("id = \"a+b\"", "id", "wildcard"),
            ("id = \"a/#\"", "id", "wildcard"),
            ("id = 5", "id", "expected a device id, got 5"),
            ("mqtt = \"tls://h\"", "mqtt", "mqtts://"),
            ("mqtt-ca = 1", "mqtt-ca", "expected a file path"),
            ("mqtt-key = \"\"", "mqtt-key", "non-empty"),
            ("mqtt = \"h:1883\"", "mqtt", "mqtt://HOST[:PORT]"),
            ("mqtt-username = \"\"", "mqtt-username", "non-empty"),
            (
                "mqtt-password-file = 1",
                "mqtt-password-file",
                "expected a file path",
            ),
            ("video = \"cam\"", "video", "/dev/video0"),
            ("stun = [\"stun:a\", \"b\"]", "stun", "got \"b\""),
            ("stun = [1]", "stun", "got 1"),
            ("turn = [\"stun:a\"]", "turn", "turns:"),
            ("turn-username = []", "turn-username", "got an array"),
            (
                "turn-password-file = \"\"",
                "turn-password-file",
                "non-empty",
            ),
            ("rtc-bind = [\"localhost\"]", "rtc-bind", "IP address"),
            ("rtc-bind = \"1.2.3\"", "rtc-bind", "IP address"),
            ("mdns = \"maybe\"", "mdns", "on or off"),
            ("mdns = 1", "mdns", "got 1"),
            ("log = \"[\"", "log", "log filter"),
            ("[mqtt]\nhost = \"h\"", "mqtt", "got a table"),
        ];
        for (text, key, want) in cases {
            let (_s, path, result) = with_file(text, &[]);
            let err = result.unwrap_err();
            assert!(
                matches!(&err, ConfigError::FileValue { key: k, .. } if k == key),
                "{text}: {err:?}"
            );
            let msg = err.to_string();
            let prefix = format!("config file {}: key \"{key}\": ", path.display());
            assert!(msg.starts_with(&prefix), "{text}: {msg}");
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn every_file_key_is_known() {
        // A value of the wrong type is a value error, never "unknown key".
        for key in FILE_KEYS {
            let (_s, _p, result) = with_file(&format!("{key} = {{}}"), &[]);
            assert!(
                matches!(result, Err(ConfigError::FileValue { .. })),
                "{key}: {result:?}"
            );
        }
    }

    #[test]
    fn unknown_key_names_file_and_lists_valid_keys() {
        for key in ["foo", "mqtt-password", "config", "Fps"] {
            let (_s, path, result) = with_file(&format!("{key} = 1"), &[]);
            let msg = result.unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!(
                    "config file {}: unknown key \"{key}\"",
                    path.display()
                )),
                "{msg}"
            );
            assert!(msg.contains("valid keys: id, mqtt, mqtt-username"), "{msg}");
        }
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let (_s, path, result) = with_file("fps = 30\nsize = 1280x720\n", &[]);
        let err = result.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ConfigError::FileSyntax { line: 2, .. }),
            "{msg}"
        );
        assert!(
            msg.starts_with(&format!("config file {}: line 2, column", path.display())),
            "{msg}"
        );
    }

    #[test]
    fn missing_config_file_is_named() {
        let scratch = Scratch::new();
        let path = scratch.0.join("absent.toml");
        let err = daemon(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(matches!(err, ConfigError::FileRead { .. }));
        assert!(
            err.to_string()
                .starts_with(&format!("config file {}: ", path.display())),
            "{err}"
        );
    }

    // --- the viewer page's options

    #[test]
    fn web_options_defaults_flags_and_file() {
        let c = daemon(&[]).unwrap();
        assert_eq!(c.http, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.web_broker_url, None);
        assert_eq!(c.web_root, PathBuf::from(DEFAULT_WEB_ROOT));

        let root = Scratch::new();
        let root_arg = root.0.to_str().unwrap();
        let c = daemon(&[
            "--http",
            "127.0.0.1:18080",
            "--web-broker-url",
            "wss://broker.lan:8884/mqtt",
            "--web-root",
            root_arg,
        ])
        .unwrap();
        assert_eq!(c.http, Some("127.0.0.1:18080".parse().unwrap()));
        assert_eq!(
            c.web_broker_url.as_deref(),
            Some("wss://broker.lan:8884/mqtt")
        );
        assert_eq!(c.web_root, root.0);
        assert_eq!(daemon(&["--http", "off"]).unwrap().http, None);
        assert_eq!(
            daemon(&["--http", "[::]:80"]).unwrap().http,
            Some("[::]:80".parse().unwrap())
        );

        let text = format!(
            "http = \"off\"\nweb-broker-url = \"ws://10.0.0.2:9001\"\nweb-root = \"{root_arg}\"\n"
        );
        let (_s, _p, c) = with_file(&text, &[]);
        let c = c.unwrap();
        assert_eq!(c.http, None);
        assert_eq!(c.web_broker_url.as_deref(), Some("ws://10.0.0.2:9001"));
        assert_eq!(c.web_root, root.0);
        // The flag wins over the file.
        let (_s, _p, c) = with_file(&text, &["--http", "127.0.0.1:9"]);
        assert_eq!(c.unwrap().http, Some("127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn bad_web_options_are_refused_with_the_reason() {
        let cases: &[(&[&str], &str)] = &[
            (&["--http", "8080"], "IP:PORT"),
            (&["--http", "localhost:8080"], "IP:PORT"),
            (&["--http", "0.0.0.0:0"], "IP:PORT"),
            (&["--http", "on"], "expected off or"),
            (&["--web-broker-url", "mqtt://h:1883"], "WebSockets only"),
            (&["--web-broker-url", "ws://"], "host"),
            (&["--web-broker-url", "ws://u:p@h:9001"], "asks for them"),
            (&["--web-broker-url", "ws://h:99999"], "port"),
            (&["--web-broker-url", "ws://h:9001/?x=1"], "query"),
            (&["--web-broker-url", "ws://h /m"], "spaces"),
            (&["--web-root", ""], "non-empty"),
        ];
        for (args, want) in cases {
            let e = usage_error(daemon(args));
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
            let msg = e.to_string();
            assert!(msg.contains(want), "{args:?}: {msg}");
            assert!(msg.contains(args[0]), "{args:?}: {msg}");
        }
        let scratch = Scratch::new();
        let missing = scratch.0.join("no-such-dir");
        let err = daemon(&["--web-root", missing.to_str().unwrap()]).unwrap_err();
        assert!(
            err.to_string().contains("no-such-dir") && err.to_string().contains("not a directory"),
            "{err}"
        );
        for (text, key, want) in [
            ("http = 8080", "http", "got 8080"),
            ("http = \"nowhere\"", "http", "IP:PORT"),
            ("web-broker-url = \"http://h\"", "web-broker-url", "ws://"),
            ("web-root = []", "web-root", "got an array"),
        ] {
            let (_s, path, result) = with_file(text, &[]);
            let msg = result.unwrap_err().to_string();
            let prefix = format!("config file {}: key \"{key}\": ", path.display());
            assert!(
                msg.starts_with(&prefix) && msg.contains(want),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn help_gives_the_web_defaults() {
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "[default: 0.0.0.0:8080]",
            "ws://<host>:9001",
            "/usr/share/spyglass/web",
            "web/dist",
        ] {
            assert!(help.contains(needle), "{needle} missing from help:\n{help}");
        }
        assert_eq!(crate::web::DEFAULT_BROKER_WS_PORT, 9001);
    }

    // --- subcommands

    #[test]
    fn devices_subcommand() {
        assert_eq!(
            load_with(["spyglass", "devices"], &env()).unwrap(),
            Command::Devices
        );
        // Daemon options do not mix with subcommands.
        assert!(
            load_with(["spyglass", "--fps", "5", "devices"], &env())
                .unwrap_err()
                .is_usage()
        );
    }

    #[test]
    fn view_args_parse_with_defaults() {
        let v = view_with(
            &["--mqtt", "mqtt://127.0.0.1:18830", "--id", "garage/cam1"],
            &env(),
        )
        .unwrap();
        assert_eq!(v.mqtt, BrokerUrl::mqtt("127.0.0.1", 18830));
        assert_eq!(v.id, "garage/cam1");
        assert_eq!((v.username, v.password), (None, None));
        assert_eq!(v.frames, DEFAULT_VIEW_FRAMES);
        assert_eq!(v.timeout, Duration::from_secs(20));
        assert!(v.cid.starts_with("view-"), "{}", v.cid);
        assert_eq!(validate_cid(&v.cid), Ok(()));
        let other = view_with(&["--mqtt", "mqtt://h", "--id", "c"], &env()).unwrap();
        assert_ne!(v.cid, other.cid);
    }

    #[test]
    fn view_args_parse_explicit() {
        let scratch = Scratch::new();
        let pw = scratch.file("pw", "vp\n");
        let v = view_with(
            &[
                "--mqtt",
                "mqtt://h",
                "--id",
                "cam",
                "--frames",
                "5",
                "--timeout",
                "3",
                "--cid",
                "viewer1",
                "--mqtt-username",
                "u",
                "--mqtt-password-file",
                pw.to_str().unwrap(),
            ],
            &env(),
        )
        .unwrap();
        assert_eq!(
            (v.frames, v.timeout, v.cid.as_str()),
            (5, Duration::from_secs(3), "viewer1")
        );
        assert_eq!(
            (v.username.as_deref(), v.password.as_deref()),
            (Some("u"), Some("vp"))
        );
    }

    #[test]
    fn view_args_are_validated() {
        let cases: &[(&[&str], ErrorKind)] = &[
            (&["--id", "cam"], ErrorKind::MissingRequiredArgument),
            (&["--mqtt", "mqtt://h"], ErrorKind::MissingRequiredArgument),
            (
                &["--mqtt", "mqtt://h", "--id", "c", "--cid", "a/b"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--mqtt", "mqtt://h", "--id", "c", "--cid", &"a".repeat(65)],
                ErrorKind::ValueValidation,
            ),
            (
                &["--mqtt", "mqtt://h", "--id", "c", "--frames", "0"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--mqtt", "mqtt://h", "--id", "c", "--timeout", "0"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--mqtt", "mqtt://h", "--id", "c+"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--mqtt", "http://h", "--id", "c"],
                ErrorKind::ValueValidation,
            ),
            (
                &["--mqtt", "mqtt://h", "--id", "c", "--fps", "3"],
                ErrorKind::UnknownArgument,
            ),
        ];
        for (args, kind) in cases {
            assert_eq!(
                usage_error(view_with(args, &env())).kind(),
                *kind,
                "{args:?}"
            );
        }
        let cid64 = "a".repeat(64);
        assert!(
            view_with(
                &["--mqtt", "mqtt://h", "--id", "c", "--cid", &cid64],
                &env()
            )
            .is_ok()
        );
    }

    #[test]
    fn audio_comes_from_the_flag_or_the_file_and_defaults_to_auto() {
        assert_eq!(daemon(&[]).unwrap().audio, "auto");
        assert_eq!(daemon(&["--audio", "hw:1,0"]).unwrap().audio, "hw:1,0");
        let (_s, _p, c) = with_file("audio = \"tone\"", &[]);
        assert_eq!(c.unwrap().audio, "tone");
        let (_s, _p, c) = with_file("audio = \"tone\"", &["--audio", "none"]);
        assert_eq!(c.unwrap().audio, "none");
        let (_s, path, c) = with_file("audio = \"\"", &[]);
        let msg = c.unwrap_err().to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("audio"),
            "{msg}"
        );
        usage_error(daemon(&["--audio", "two words"]));
    }

    // --- selftest

    fn selftest(args: &[&str]) -> Result<SelftestConfig, ConfigError> {
        let argv = ["spyglass", "selftest"]
            .into_iter()
            .chain(args.iter().copied());
        match load_with(argv, &env())? {
            Command::Selftest(config) => Ok(config),
            other => panic!("expected selftest, got {other:?}"),
        }
    }

    #[test]
    fn selftest_args_parse() {
        let c = selftest(&[]).unwrap();
        assert_eq!(c.video.source, DEFAULT_VIDEO);
        assert_eq!(
            (c.video.width, c.video.height, c.video.fps),
            (1280, 720, 30)
        );
        assert_eq!(
            (c.audio.as_str(), c.seconds, c.pixel_format),
            ("none", 3, None)
        );
        let c = selftest(&[
            "--video",
            "/dev/video2",
            "--size",
            "320x240",
            "--fps",
            "15",
            "--seconds",
            "2",
            "--pixel-format",
            "nv12",
            "--json",
        ])
        .unwrap();
        assert_eq!((c.video.width, c.video.height, c.video.fps), (320, 240, 15));
        assert_eq!(c.pixel_format, Some(crate::video::negotiate::FourCc::Nv12));
        assert!(c.json && c.seconds == 2 && c.video.source == "/dev/video2");
        let c = selftest(&["--audio", "tone"]).unwrap();
        assert_eq!((c.audio.as_str(), c.expect_tone_hz), ("tone", Some(1000)));
        let c = selftest(&["--audio", "hw:Loopback,1,0", "--expect-tone", "440"]).unwrap();
        assert_eq!(
            (c.audio.as_str(), c.expect_tone_hz),
            ("hw:Loopback,1,0", Some(440))
        );
        assert_eq!(
            selftest(&["--audio", "default"]).unwrap().expect_tone_hz,
            None
        );
        for bad in [
            &["--audio", "auto"][..],
            &["--audio", "two words"],
            &["--expect-tone", "5"],
            &["--pixel-format", "RGB3"],
            &["--seconds", "0"],
            &["--video", "cam"],
        ] {
            assert_eq!(
                usage_error(selftest(bad)).kind(),
                ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    // --- the packaged default config file

    #[test]
    fn packaged_config_file_parses_with_every_key_uncommented() {
        let text = include_str!("../debian/spyglass.toml");
        let path = Path::new("debian/spyglass.toml");
        parse_config_text(path, text).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let values = parse_config_text(path, &uncommented).unwrap();
        assert_eq!(values.fps, Some(DEFAULT_FPS));
        // Every key the daemon knows is documented in the file.
        for key in FILE_KEYS {
            assert!(
                text.contains(&format!("#{key} = ")),
                "{key} is missing from debian/spyglass.toml"
            );
        }
    }
}
