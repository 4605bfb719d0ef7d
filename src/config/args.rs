//! The command line: every option's flag, help text, default and kind of value, and (for the
//! daemon's options) its config file key. [`DaemonOptions`] is derived twice from one list of
//! fields: by clap for the flags and by serde for the config file, whose keys are the long flag
//! names. The module doc of `config` says how to add an option.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use serde::Deserialize;

use crate::audio::AudioSetting;
use crate::mqtt::BrokerUrl;
use crate::video::{self, negotiate::FourCc};

use super::values::{
    AtLeast1, Audio, Broker, CredentialLifetime, DeviceId, DirPath, Encoder, ExecFormat, FilePath,
    Fps, HttpBind, HttpMaxConnections, Ip, Kbps, Kind, LogFilter, MaxConnecting, MqttClientId,
    NonEmpty, OnOff, PictureSize, PixelFormat, Seconds, SelftestAudio, SelftestSeconds, Size,
    SnapshotInterval, StunUrl, ToneHz, TopicPrefix, TurnUrl, VideoSource, ViewTurnUrl, ViewerId,
    ViewerTurnUrl, WebBrokerUrl, WhipUrl,
};
use super::{
    DEFAULT_BITRATE_KBPS, DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_HOMEASSISTANT_INTERVAL_SECS,
    DEFAULT_HOMEASSISTANT_PREFIX, DEFAULT_HTTP, DEFAULT_HTTP_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTING, DEFAULT_MAX_VIEWERS, DEFAULT_PEER_TIMEOUT_SECS,
    DEFAULT_SELFTEST_SECONDS, DEFAULT_TURN_CREDENTIAL_LIFETIME_SECS, DEFAULT_VIDEO,
    DEFAULT_VIEW_FRAMES, DEFAULT_VIEW_TIMEOUT_SECS, DEFAULT_WIDTH,
};

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

const DEFAULT_SIZE: PictureSize = PictureSize {
    width: DEFAULT_WIDTH,
    height: DEFAULT_HEIGHT,
};

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
pub(super) struct Cli {
    #[command(subcommand)]
    pub command: Option<Sub>,

    #[command(flatten)]
    pub daemon: DaemonOptions,
}

#[derive(Subcommand, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process and matched by value; boxing would only add noise"
)]
pub(super) enum Sub {
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
    /// Home Assistant: `spyglass homeassistant --remove` deletes this device's discovery
    /// entries and retained snapshot from the broker (it takes the daemon's options, --config
    /// included), so that Home Assistant forgets the camera. The package runs it on removal.
    #[command(name = "homeassistant")]
    HomeAssistant(Box<HomeAssistantArgs>),
}

#[derive(Args, Debug)]
pub(super) struct HomeAssistantArgs {
    /// Delete the discovery entries and the retained snapshot, then exit.
    #[arg(long, required = true)]
    pub remove: bool,

    #[command(flatten)]
    pub daemon: DaemonOptions,
}

/// The daemon's options, each a flag and a config file key (the flag's long name; `--config`
/// itself is no key). After [`super::load`], every field holds what the user chose: the flag,
/// else the file's key, else the default. A subcommand that works from the daemon's options
/// flattens this struct too (`resolve::daemon_config`).
///
/// `pub` fields are read as they are (`cfg.max_viewers`, through [`super::DaemonConfig`]'s
/// `Deref`); `pub(super)` fields are inputs that `resolve` turns into something else (the device
/// id, credentials, TLS files, the video spec, the web root).
#[derive(Args, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
// Keys the file leaves out keep `Default` values here until `resolve::merge` gives them the
// flag's default.
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DaemonOptions {
    /// Read options from this TOML file (keys are the long option names without `--`);
    /// options given on the command line override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub(super) config: Option<PathBuf>,

    /// Device id used in MQTT topics ({id}/offer/{cid}, {id}/status, ...). May contain `/`;
    /// never `+` or `#`. [default: the host name]
    #[arg(long, value_name = "UID", value_parser = DeviceId::parse)]
    #[serde(deserialize_with = "DeviceId::file")]
    pub(super) id: Option<String>,

    /// MQTT 5 broker: mqtt://HOST[:PORT] (TCP, port 1883), mqtts://HOST[:PORT] (TLS, 8883),
    /// ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH] (WebSocket, 80 or 443, path /mqtt).
    /// The scheme alone chooses TLS.
    #[arg(long, value_name = "URL", value_parser = Broker::parse, default_value_t = BrokerUrl::default(), help_heading = "MQTT")]
    #[serde(deserialize_with = "Broker::file")]
    pub mqtt: BrokerUrl,

    /// User name for the broker. [default: none, connect anonymously]
    #[arg(long, value_name = "NAME", value_parser = NonEmpty::parse, help_heading = "MQTT")]
    #[serde(deserialize_with = "NonEmpty::file")]
    pub(super) mqtt_username: Option<String>,

    /// File holding the broker password (one trailing newline is ignored). Without it, the
    /// SPYGLASS_MQTT_PASSWORD environment variable is used if set. Needs --mqtt-username.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "MQTT")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) mqtt_password_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) to trust for an mqtts:// or wss:// broker instead of the
    /// system's root certificates.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "MQTT")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) mqtt_ca: Option<PathBuf>,

    /// Client certificate (PEM) for brokers that authenticate devices by certificate. Needs
    /// --mqtt-key and an mqtts:// or wss:// broker.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "MQTT")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) mqtt_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1). Needs --mqtt-cert.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "MQTT")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) mqtt_key: Option<PathBuf>,

    /// A fixed MQTT client id, for brokers that bind client ids to credentials (AWS IoT Core
    /// policies). Without it the id is `spyglass-<id>-` and 16 random hex digits, new at every
    /// connection: a broker hands a client id to its newest connection, so anyone who could
    /// guess it could knock the device off (docs/SECURITY.md). [default: random]
    #[arg(long, value_name = "ID", value_parser = MqttClientId::parse, help_heading = "MQTT")]
    #[serde(deserialize_with = "MqttClientId::file")]
    pub mqtt_client_id: Option<String>,

    /// Video source: `test` for the built-in test pattern, a V4L2 device path, or
    /// `exec:COMMAND`, a command (run by `sh -c`) that writes pictures to its standard output,
    /// e.g. `exec:rpicam-vid -t 0 -n --codec yuv420 --width 1280 --height 720 -o -`
    /// (`test-faults:FILE` is a test pattern that fails on command, for testing).
    #[arg(long, value_name = "SRC", value_parser = VideoSource::parse, default_value = DEFAULT_VIDEO, help_heading = "Video")]
    #[serde(deserialize_with = "VideoSource::file")]
    pub(super) video: video::Source,

    /// What an `exec:` command writes: `i420` (raw pictures at --size) or `h264` (Annex B,
    /// passed through to the viewers without re-encoding).
    #[arg(long, value_name = "i420|h264", value_parser = ExecFormat::parse, default_value = "i420", help_heading = "Video")]
    #[serde(deserialize_with = "ExecFormat::file")]
    pub(super) exec_format: video::exec::ExecFormat,

    /// H.264 encoder for raw pictures: `auto` (the V4L2 hardware encoder when there is one,
    /// else openh264; a camera that offers H.264 is passed through), `openh264`, `v4l2` or
    /// `v4l2:/dev/videoN`.
    #[arg(long, value_name = "ENC", value_parser = Encoder::parse, default_value = "auto", help_heading = "Video")]
    #[serde(deserialize_with = "Encoder::file")]
    pub(super) encoder: video::encode::EncoderChoice,

    /// Picture size WIDTHxHEIGHT; each even, from 16 to 4096.
    #[arg(long, value_name = "WxH", value_parser = Size::parse, default_value_t = DEFAULT_SIZE, help_heading = "Video")]
    #[serde(deserialize_with = "Size::file")]
    pub(super) size: PictureSize,

    /// Frames per second, 1 to 120.
    #[arg(long, value_name = "N", value_parser = Fps::parse, default_value_t = DEFAULT_FPS, help_heading = "Video")]
    #[serde(deserialize_with = "Fps::file")]
    pub(super) fps: u32,

    /// H.264 bitrate in kbit/s where rate control starts, 50 to 50000 (kept within
    /// --min-bitrate..=--max-bitrate). The shared encoder's bitrate then follows what the
    /// viewers' links carry.
    #[arg(long, value_name = "KBPS", value_parser = Kbps::parse, default_value_t = DEFAULT_BITRATE_KBPS, help_heading = "Video")]
    #[serde(deserialize_with = "Kbps::file")]
    pub(super) bitrate: u32,

    /// The lowest bitrate rate control takes the shared encoder to when viewers' links are
    /// poor, kbit/s, 50 to 50000. [default: 150, or --max-bitrate if lower]
    #[arg(long, value_name = "KBPS", value_parser = Kbps::parse, help_heading = "Video")]
    #[serde(deserialize_with = "Kbps::file")]
    pub(super) min_bitrate: Option<u32>,

    /// The highest bitrate rate control gives the shared encoder when every viewer's link
    /// carries it, kbit/s, 50 to 50000. [default: --bitrate]
    #[arg(long, value_name = "KBPS", value_parser = Kbps::parse, help_heading = "Video")]
    #[serde(deserialize_with = "Kbps::file")]
    pub(super) max_bitrate: Option<u32>,

    /// Most viewers served at once; further offers get a `busy` error.
    #[arg(long, value_name = "N", value_parser = AtLeast1::parse, default_value_t = DEFAULT_MAX_VIEWERS, help_heading = "WebRTC")]
    #[serde(deserialize_with = "AtLeast1::file")]
    pub max_viewers: u32,

    /// Close a viewer's session when its peer connection has been unreachable or unconnected for
    /// this many seconds.
    #[arg(long, value_name = "SECS", value_parser = Seconds::parse, default_value = DEFAULT_PEER_TIMEOUT_SECS, help_heading = "WebRTC")]
    #[serde(deserialize_with = "Seconds::file")]
    pub peer_timeout: Duration,

    /// Most sessions connecting at once (offer received, not yet connected). They hold no
    /// viewer's place; beyond this many, the one that has been connecting longest is closed
    /// with `busy`.
    #[arg(long, value_name = "N", value_parser = MaxConnecting::parse, default_value_t = DEFAULT_MAX_CONNECTING, help_heading = "WebRTC")]
    #[serde(deserialize_with = "MaxConnecting::file")]
    pub max_connecting: u32,

    /// STUN server, e.g. stun:stun.example.org:3478. Repeat for more. [default: none]
    #[arg(long, value_name = "URL", value_parser = StunUrl::parse, help_heading = "WebRTC")]
    #[serde(deserialize_with = "StunUrl::file")]
    pub stun: Vec<String>,

    /// TURN server, turn:HOST[:PORT] (TURN over UDP: the device cannot use TURN over TCP or TLS;
    /// viewers can, see --viewer-turn). Repeat for more. Needs --turn-username and
    /// --turn-password-file, or --turn-secret-file. Each is tested at start; one that fails is
    /// logged and left out until it works. [default: none]
    #[arg(long, value_name = "URL", value_parser = TurnUrl::parse, help_heading = "WebRTC")]
    #[serde(deserialize_with = "TurnUrl::file")]
    pub turn: Vec<String>,

    /// User name for the TURN servers.
    #[arg(long, value_name = "NAME", value_parser = NonEmpty::parse, help_heading = "WebRTC")]
    #[serde(deserialize_with = "NonEmpty::file")]
    pub(super) turn_username: Option<String>,

    /// File holding the TURN password (one trailing newline is ignored).
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "WebRTC")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) turn_password_file: Option<PathBuf>,

    /// File holding the TURN server's shared secret (coturn's static-auth-secret, with
    /// use-auth-secret): the device makes time-limited credentials from it for its own --turn
    /// servers and for viewers that ask (the TURN REST API; the secret never leaves the device).
    /// Instead of --turn-username and --turn-password-file.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "WebRTC")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) turn_secret_file: Option<PathBuf>,

    /// TURN server handed to viewers that ask for ICE servers, with a time-limited credential
    /// made from --turn-secret-file: turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]
    /// (browsers can relay over TCP and TLS). Repeat for more. Needs --turn-secret-file.
    /// [default: the --turn servers, when there is a secret]
    #[arg(long, value_name = "URL", value_parser = ViewerTurnUrl::parse, help_heading = "WebRTC")]
    #[serde(deserialize_with = "ViewerTurnUrl::file")]
    pub(super) viewer_turn: Vec<String>,

    /// Seconds the credentials made from --turn-secret-file are valid, 60 to 604800.
    #[arg(long, value_name = "SECS", value_parser = CredentialLifetime::parse, default_value_t = DEFAULT_TURN_CREDENTIAL_LIFETIME_SECS, help_heading = "WebRTC")]
    #[serde(deserialize_with = "CredentialLifetime::file")]
    pub turn_credential_lifetime: u32,

    /// IP address to bind WebRTC's UDP sockets to. Repeat for more. [default: every interface]
    #[arg(long, value_name = "ADDR", value_parser = Ip::parse, help_heading = "WebRTC")]
    #[serde(deserialize_with = "Ip::file")]
    pub rtc_bind: Vec<IpAddr>,

    /// Use viewers' ICE candidates that name loopback (127.0.0.0/8, ::1) or this device's own
    /// addresses: for tests on 127.0.0.1. Off, the device never sends to itself on a viewer's
    /// word (a viewer on the device still connects). TCP, multicast, broadcast, link-local and
    /// unspecified candidates and ports below 1024 are always refused (docs/SECURITY.md).
    #[arg(long, value_name = "on|off", value_parser = OnOff::parse, action = ArgAction::Set, default_value = "off", help_heading = "WebRTC")]
    #[serde(deserialize_with = "OnOff::file")]
    pub rtc_allow_loopback: bool,

    /// Resolve viewers' mDNS (.local) ICE candidates: on or off.
    #[arg(long, value_name = "on|off", value_parser = OnOff::parse, action = ArgAction::Set, default_value = "on", help_heading = "WebRTC")]
    #[serde(deserialize_with = "OnOff::file")]
    pub mdns: bool,

    /// Address and port of the viewer page's HTTP server, e.g. 0.0.0.0:8080 or [::]:8080, or off.
    #[arg(long, value_name = "ADDR|off", value_parser = HttpBind::parse, default_value = DEFAULT_HTTP, help_heading = "Web page")]
    #[serde(deserialize_with = "HttpBind::file")]
    pub http: std::option::Option<SocketAddr>,

    /// Most open connections to the viewer page's HTTP server; beyond, the oldest idle one is
    /// closed. Idle connections are closed after 10 s in any case.
    #[arg(long, value_name = "N", value_parser = HttpMaxConnections::parse, default_value_t = DEFAULT_HTTP_MAX_CONNECTIONS, help_heading = "Web page")]
    #[serde(deserialize_with = "HttpMaxConnections::file")]
    pub http_max_connections: u32,

    /// The MQTT broker's WebSocket URL that browsers connect to, ws://HOST[:PORT][/PATH] or
    /// wss://... [default: the page's own host name, port 9001: ws://<host>:9001]
    #[arg(long, value_name = "URL", value_parser = WebBrokerUrl::parse, help_heading = "Web page")]
    #[serde(deserialize_with = "WebBrokerUrl::file")]
    pub web_broker_url: Option<String>,

    /// Directory holding the built viewer page (index.html). [default: the page built with
    /// spyglass: /usr/share/spyglass/web when installed from the .deb, web/dist in a source tree]
    #[arg(long, value_name = "DIR", value_parser = DirPath::parse, help_heading = "Web page")]
    #[serde(deserialize_with = "DirPath::file")]
    pub(super) web_root: Option<PathBuf>,

    /// Log filter, e.g. `info` or `spyglass=debug,webrtc=warn`. Known noise of the WebRTC stack
    /// (warnings of rtc_ice::agent, rtc_dtls::config, rtc_sctp::endpoint and
    /// webrtc::peer_connection::driver; TURN CreatePermission 403s) stays out unless the filter
    /// names its target. [default: RUST_LOG, else info]
    #[arg(long, value_name = "FILTER", value_parser = LogFilter::parse)]
    #[serde(deserialize_with = "LogFilter::file")]
    pub log: Option<String>,

    /// Audio source: `auto` (the default ALSA capture device if there is one, else video only),
    /// `none`, `tone` (a 1 kHz beep at every second, in step with the test pattern's flash), or
    /// an ALSA PCM name such as `default`, `hw:1,0` or `plughw:CARD=Device`.
    #[arg(long, value_name = "SRC", value_parser = Audio::parse, default_value_t = AudioSetting::default(), help_heading = "Audio")]
    #[serde(deserialize_with = "Audio::file")]
    pub audio: AudioSetting,

    /// File holding the WHEP endpoint's bearer token (at least 16 characters, no spaces; one
    /// trailing newline is ignored). With it the HTTP server serves WHEP at /whep
    /// (docs/PROTOCOL.md, "WHEP"); without it there is no WHEP endpoint. [default: none]
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "Standards")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) whep_token_file: Option<PathBuf>,

    /// Publish the stream to this WHIP endpoint (http:// or https://), e.g. an SFU's, and keep
    /// it published (docs/SCALING.md). [default: none]
    #[arg(long, value_name = "URL", value_parser = WhipUrl::parse, help_heading = "Standards")]
    #[serde(deserialize_with = "WhipUrl::file")]
    pub whip: Option<String>,

    /// File holding the bearer token for --whip, when the endpoint wants one.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse, help_heading = "Standards")]
    #[serde(deserialize_with = "FilePath::file")]
    pub(super) whip_token_file: Option<PathBuf>,

    /// Home Assistant MQTT discovery: a camera entity fed with JPEG snapshots, a snapshot
    /// button and sensors (README, "Home Assistant"): on or off.
    #[arg(long, value_name = "on|off", value_parser = OnOff::parse, action = ArgAction::Set, default_value = "off", help_heading = "Standards")]
    #[serde(deserialize_with = "OnOff::file")]
    pub homeassistant: bool,

    /// Home Assistant's discovery prefix.
    #[arg(long, value_name = "PREFIX", value_parser = TopicPrefix::parse, default_value = DEFAULT_HOMEASSISTANT_PREFIX, help_heading = "Standards")]
    #[serde(deserialize_with = "TopicPrefix::file")]
    pub homeassistant_prefix: String,

    /// Seconds between the snapshots published for Home Assistant, 10 to 86400, or 0 for
    /// snapshots on request only. A snapshot while nobody watches starts the camera briefly.
    #[arg(long, value_name = "SECS", value_parser = SnapshotInterval::parse, default_value_t = DEFAULT_HOMEASSISTANT_INTERVAL_SECS, help_heading = "Standards")]
    #[serde(deserialize_with = "SnapshotInterval::file")]
    pub homeassistant_interval: u32,
}

#[derive(Args, Debug)]
pub(super) struct ViewArgs {
    /// MQTT 5 broker: mqtt://HOST[:PORT], mqtts://HOST[:PORT], ws://HOST[:PORT][/PATH] or
    /// wss://HOST[:PORT][/PATH] (see the daemon's --mqtt).
    #[arg(long, value_name = "URL", value_parser = Broker::parse)]
    pub mqtt: BrokerUrl,

    /// Device id of the camera to watch.
    #[arg(long, value_name = "UID", value_parser = DeviceId::parse)]
    pub id: String,

    /// User name for the broker. [default: none, connect anonymously]
    #[arg(long, value_name = "NAME", value_parser = NonEmpty::parse)]
    pub mqtt_username: Option<String>,

    /// File holding the broker password; without it SPYGLASS_MQTT_PASSWORD is used if set.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse)]
    pub mqtt_password_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) to trust for an mqtts:// or wss:// broker instead of the
    /// system's root certificates.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse)]
    pub mqtt_ca: Option<PathBuf>,

    /// Client certificate (PEM), for brokers that ask for one. Needs --mqtt-key.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse)]
    pub mqtt_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM). Needs --mqtt-cert.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse)]
    pub mqtt_key: Option<PathBuf>,

    /// Frames to receive and decode before exiting successfully.
    #[arg(long, value_name = "N", value_parser = AtLeast1::parse, default_value_t = DEFAULT_VIEW_FRAMES)]
    pub frames: u32,

    /// Seconds to wait for all frames before giving up.
    #[arg(long, value_name = "SECS", value_parser = AtLeast1::parse, default_value_t = DEFAULT_VIEW_TIMEOUT_SECS)]
    pub timeout: u32,

    /// Client id used in the topics, A-Z a-z 0-9 _ - (1 to 64). [default: view-<random hex>]
    #[arg(long, value_name = "CID", value_parser = ViewerId::parse)]
    pub cid: Option<String>,

    /// IP address to bind WebRTC's UDP sockets to. Repeat for more. [default: every interface]
    #[arg(long, value_name = "ADDR", value_parser = Ip::parse)]
    pub rtc_bind: Vec<IpAddr>,

    /// Resolve the device's mDNS (.local) ICE candidates: on or off.
    #[arg(long, value_name = "on|off", value_parser = OnOff::parse, action = ArgAction::Set, default_value = "on")]
    pub mdns: bool,

    /// STUN server of the viewer's own, e.g. stun:stun.example.org:3478. Repeat for more. The
    /// servers the device hands out (its status says whether it does) are used as well.
    /// [default: none]
    #[arg(long, value_name = "URL", value_parser = StunUrl::parse)]
    pub stun: Vec<String>,

    /// TURN server of the viewer's own, turn:HOST[:PORT] (TURN over UDP: the WebRTC library
    /// cannot relay over TCP or TLS). Repeat for more. Needs --turn-username and
    /// --turn-password-file. [default: none]
    #[arg(long, value_name = "URL", value_parser = ViewTurnUrl::parse)]
    pub turn: Vec<String>,

    /// User name for the viewer's TURN servers.
    #[arg(long, value_name = "NAME", value_parser = NonEmpty::parse)]
    pub turn_username: Option<String>,

    /// File holding the password for the viewer's TURN servers.
    #[arg(long, value_name = "FILE", value_parser = FilePath::parse)]
    pub turn_password_file: Option<PathBuf>,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Four characters, a V4L2 pixel format code.
fn parse_fourcc(s: &str) -> Result<[u8; 4], String> {
    <[u8; 4]>::try_from(s.as_bytes()).map_err(|_| format!("expected four characters, got {s:?}"))
}

#[derive(Args, Debug)]
pub(super) struct SelftestArgs {
    /// Video source: `test` for the built-in test pattern, a V4L2 device path, or
    /// `exec:COMMAND` (see `--exec-format`).
    #[arg(long, value_name = "SRC", value_parser = VideoSource::parse, default_value = DEFAULT_VIDEO)]
    pub video: video::Source,

    /// What an `exec:` command writes: `i420` (raw pictures at --size) or `h264` (passed
    /// through, and checked by decoding it).
    #[arg(long, value_name = "i420|h264", value_parser = ExecFormat::parse, default_value = "i420")]
    pub exec_format: video::exec::ExecFormat,

    /// H.264 encoder for raw pictures: `auto`, `openh264`, `v4l2` or `v4l2:/dev/videoN`.
    #[arg(long, value_name = "ENC", value_parser = Encoder::parse, default_value = "auto")]
    pub encoder: video::encode::EncoderChoice,

    /// Audio source: `none`, `tone` (the built-in 1 kHz beeps), or an ALSA PCM name such as
    /// `hw:1,0`: capture, Opus encode, packetize, depacketize, decode, check it is not silence.
    #[arg(long, value_name = "SRC", value_parser = SelftestAudio::parse, default_value = "none")]
    pub audio: AudioSetting,

    /// Check that the captured sound carries a tone of this frequency (Hz, 50 to 20000), e.g.
    /// one played into the device's other end. [default: 1000 for `tone`, no check for a device]
    #[arg(long, value_name = "HZ", value_parser = ToneHz::parse)]
    pub expect_tone: Option<u32>,

    /// Picture size WIDTHxHEIGHT; each even, from 16 to 4096.
    #[arg(long, value_name = "WxH", value_parser = Size::parse, default_value_t = DEFAULT_SIZE)]
    pub size: PictureSize,

    /// Frames per second, 1 to 120.
    #[arg(long, value_name = "N", value_parser = Fps::parse, default_value_t = DEFAULT_FPS)]
    pub fps: u32,

    /// H.264 target bitrate in kbit/s, 50 to 50000.
    #[arg(long, value_name = "KBPS", value_parser = Kbps::parse, default_value_t = DEFAULT_BITRATE_KBPS)]
    pub bitrate: u32,

    /// Seconds of video to capture: the test runs seconds × fps frames through the pipeline.
    #[arg(long, value_name = "N", value_parser = SelftestSeconds::parse, default_value_t = DEFAULT_SELFTEST_SECONDS)]
    pub seconds: u32,

    /// V4L2 only: use this pixel format (YUYV, NV12, YU12 or MJPG) instead of letting
    /// negotiation choose. [default: negotiate]
    #[arg(long, value_name = "FOURCC", value_parser = PixelFormat::parse)]
    pub pixel_format: Option<FourCc>,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Tests only: encode through a V4L2 memory-to-memory device making this fourcc (e.g. FWHT,
    /// the kernel's vicodec) and check its frames, instead of H.264.
    #[arg(long, value_name = "FOURCC", value_parser = parse_fourcc, hide = true)]
    pub m2m_codec: Option<[u8; 4]>,
}
