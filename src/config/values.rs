//! The kinds of values options take, each checked the same way from a flag and from a config
//! file key. A field names its kind twice, once per derive: `value_parser = Fps::parse` for clap
//! and `deserialize_with = "Fps::file"` for serde. Errors read "expected …, got …".

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::audio::AudioSetting;
use crate::mqtt::url::{BrokerUrl, UrlError};
use crate::signaling::protocol::{validate_cid, validate_uid};
use crate::video;
use crate::video::negotiate::FourCc;

use super::PASSWORD_ENV;

/// What values one option takes.
pub trait Kind {
    type Value;

    /// What a config file key of this kind holds, for "expected …, got 1" when it holds a TOML
    /// value of the wrong type (a number where a string belongs, say).
    fn expected() -> Cow<'static, str>;

    /// The value from a flag's text (or a config file's string).
    fn parse(text: &str) -> Result<Self::Value, String>;

    /// The value from a config file key's TOML value: a string goes through [`Kind::parse`].
    fn from_toml(value: toml::Value) -> Result<Self::Value, String> {
        match value {
            toml::Value::String(text) => Self::parse(&text),
            other => Err(wrong_type(&Self::expected(), &other)),
        }
    }

    /// serde's `deserialize_with` for a field of this kind: one value, perhaps one
    /// (`Option`), or a list (`Vec`; an array, or one value for a list of one).
    fn file<'de, D, F>(deserializer: D) -> Result<F, D::Error>
    where
        D: Deserializer<'de>,
        F: Field<Self::Value>,
    {
        let value = toml::Value::deserialize(deserializer)?;
        F::read(value, Self::from_toml).map_err(serde::de::Error::custom)
    }
}

/// How a field holds the values of its kind.
pub trait Field<V>: Sized {
    /// The field's value from a key's TOML value, `one` reading each of the kind's values.
    fn read(value: toml::Value, one: fn(toml::Value) -> Result<V, String>) -> Result<Self, String>;
}

impl<V> Field<V> for V {
    fn read(value: toml::Value, one: fn(toml::Value) -> Result<V, String>) -> Result<V, String> {
        one(value)
    }
}

impl<V> Field<V> for Option<V> {
    fn read(
        value: toml::Value,
        one: fn(toml::Value) -> Result<V, String>,
    ) -> Result<Option<V>, String> {
        one(value).map(Some)
    }
}

impl<V> Field<V> for Vec<V> {
    fn read(
        value: toml::Value,
        one: fn(toml::Value) -> Result<V, String>,
    ) -> Result<Vec<V>, String> {
        match value {
            toml::Value::Array(items) => items.into_iter().map(one).collect(),
            value => Ok(vec![one(value)?]),
        }
    }
}

/// "expected …, got …" for a TOML value of the wrong type.
fn wrong_type(expected: &str, value: &toml::Value) -> String {
    let got = match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => format!("a date ({d})"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
    };
    format!("expected {expected}, got {got}")
}

/// An integer from `LO` to `HI` (no upper bound when `HI` is `u32::MAX`); a config file may
/// write it as a TOML integer or a string.
pub struct Int<const LO: u32, const HI: u32 = { u32::MAX }>;

pub type Fps = Int<1, 120>;
pub type Kbps = Int<50, 50_000>;
pub type AtLeast1 = Int<1>;
pub type MaxConnecting = Int<1, 256>;
pub type HttpMaxConnections = Int<4, 4096>;
pub type ToneHz = Int<50, 20_000>;
pub type SelftestSeconds = Int<1, 600>;
/// Seconds a TURN REST credential is valid: a minute to a week.
pub type CredentialLifetime = Int<60, 604_800>;

impl<const LO: u32, const HI: u32> Int<LO, HI> {
    fn check(n: i64) -> Result<u32, String> {
        match u32::try_from(n) {
            Ok(n) if (LO..=HI).contains(&n) => Ok(n),
            _ => Err(format!("expected {}, got {n}", Self::expected())),
        }
    }
}

impl<const LO: u32, const HI: u32> Kind for Int<LO, HI> {
    type Value = u32;

    fn expected() -> Cow<'static, str> {
        if HI == u32::MAX {
            format!("an integer of at least {LO}").into()
        } else {
            format!("an integer from {LO} to {HI}").into()
        }
    }

    fn parse(text: &str) -> Result<u32, String> {
        match text.trim().parse::<i64>() {
            Ok(n) => Self::check(n),
            Err(_) => Err(format!("expected {}, got {text:?}", Self::expected())),
        }
    }

    fn from_toml(value: toml::Value) -> Result<u32, String> {
        match value {
            toml::Value::Integer(n) => Self::check(n),
            toml::Value::String(text) => Self::parse(&text),
            other => Err(wrong_type(&Self::expected(), &other)),
        }
    }
}

/// Whole seconds, at least one.
pub struct Seconds;

impl Kind for Seconds {
    type Value = std::time::Duration;

    fn expected() -> Cow<'static, str> {
        AtLeast1::expected()
    }

    fn parse(text: &str) -> Result<Self::Value, String> {
        AtLeast1::parse(text).map(|s| std::time::Duration::from_secs(s.into()))
    }

    fn from_toml(value: toml::Value) -> Result<Self::Value, String> {
        AtLeast1::from_toml(value).map(|s| std::time::Duration::from_secs(s.into()))
    }
}

/// `on` or `off`; a config file may also write `true` or `false`.
pub struct OnOff;

impl Kind for OnOff {
    type Value = bool;

    fn expected() -> Cow<'static, str> {
        "on, off, true or false".into()
    }

    fn parse(text: &str) -> Result<bool, String> {
        match text {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("expected on or off, got {text:?}")),
        }
    }

    fn from_toml(value: toml::Value) -> Result<bool, String> {
        match value {
            toml::Value::Boolean(b) => Ok(b),
            toml::Value::String(text) => Self::parse(&text),
            other => Err(wrong_type(&Self::expected(), &other)),
        }
    }
}

/// Kinds that are a string with a rule: name, value, what a file key of the kind holds, and the
/// function that checks the text.
macro_rules! text_kinds {
    ($($(#[$doc:meta])* $name:ident: $value:ty = $expected:literal, $parse:expr;)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl Kind for $name {
            type Value = $value;

            fn expected() -> Cow<'static, str> {
                $expected.into()
            }

            fn parse(text: &str) -> Result<$value, String> {
                $parse(text)
            }
        }
    )+};
}

text_kinds! {
    /// A device id (the topics' `{id}`).
    DeviceId: String = "a device id", device_id;
    /// A viewer's client id (the topics' `{cid}`).
    ViewerId: String = "a client id", viewer_id;
    /// Any text but the empty one (user names).
    NonEmpty: String = "a string", non_empty;
    /// A file's path.
    FilePath: PathBuf = "a file path", path;
    /// A directory's path.
    DirPath: PathBuf = "a directory path", path;
    /// An MQTT client id.
    MqttClientId: String = "a client id string", mqtt_client_id;
    /// The broker's URL (the MQTT transport's [`BrokerUrl`]).
    Broker: BrokerUrl = "a broker URL string", broker;
    /// A video source.
    VideoSource: video::Source = "`test`, a device path or exec:COMMAND", str::parse;
    /// What an `exec:` video command writes.
    ExecFormat: video::exec::ExecFormat = "i420 or h264", str::parse;
    /// An H.264 encoder choice.
    Encoder: video::encode::EncoderChoice = "auto, openh264, v4l2 or v4l2:PATH", str::parse;
    /// An audio setting: `auto`, `none`, `tone` or an ALSA PCM name.
    Audio: AudioSetting = "auto, none, tone or an ALSA PCM name", str::parse;
    /// An audio source the self-test can check: not `auto`.
    SelftestAudio: AudioSetting = "none, tone or an ALSA PCM name", selftest_audio;
    /// A V4L2 pixel format that negotiation knows.
    PixelFormat: FourCc = "a pixel format", FourCc::parse_supported;
    /// A picture size, `WIDTHxHEIGHT`.
    Size: PictureSize = "a string WIDTHxHEIGHT", size;
    /// A STUN server's URL (a config file key holds a list of them).
    StunUrl: String = "stun: URL strings", stun_url;
    /// A TURN server's URL (a config file key holds a list of them).
    TurnUrl: String = "turn: URL strings", turn_url;
    /// A TURN server's URL for viewers, any transport a browser can use (a config file key
    /// holds a list of them).
    ViewerTurnUrl: String = "turn: or turns: URL strings", viewer_turn_url;
    /// A TURN server's URL for `spyglass view`: TURN over UDP.
    ViewTurnUrl: String = "a turn: URL", view_turn_url;
    /// An IP address (a config file key holds a list of them).
    Ip: IpAddr = "IP address strings", ip;
    /// Where an HTTP server listens, or `off` (`None`).
    HttpBind: Option<SocketAddr> = "off or a string IP:PORT", http_bind;
    /// The broker's WebSocket URL as a browser's `WebSocket` takes it.
    WebBrokerUrl: String = "a ws:// or wss:// URL", web_broker_url;
    /// A tracing `EnvFilter` directive.
    LogFilter: String = "a log filter string", log_filter;
    /// A WHIP endpoint: an http:// or https:// URL with a host.
    WhipUrl: String = "an http:// or https:// URL", whip_url;
    /// An MQTT topic prefix (levels as in a device id).
    TopicPrefix: String = "a topic prefix", topic_prefix;
}

/// Seconds between snapshots: 0 (none but those asked for), or 10 to 86400.
pub struct SnapshotInterval;

impl SnapshotInterval {
    fn check(n: i64) -> Result<u32, String> {
        match u32::try_from(n) {
            Ok(n) if n == 0 || (10..=86_400).contains(&n) => Ok(n),
            _ => Err(format!("expected {}, got {n}", Self::expected())),
        }
    }
}

impl Kind for SnapshotInterval {
    type Value = u32;

    fn expected() -> Cow<'static, str> {
        "0 or an integer from 10 to 86400".into()
    }

    fn parse(text: &str) -> Result<u32, String> {
        match text.trim().parse::<i64>() {
            Ok(n) => Self::check(n),
            Err(_) => Err(format!("expected {}, got {text:?}", Self::expected())),
        }
    }

    fn from_toml(value: toml::Value) -> Result<u32, String> {
        match value {
            toml::Value::Integer(n) => Self::check(n),
            toml::Value::String(text) => Self::parse(&text),
            other => Err(wrong_type(&Self::expected(), &other)),
        }
    }
}

fn whip_url(s: &str) -> Result<String, String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_owned()),
        _ => Err(format!(
            "expected an http:// or https:// URL of a WHIP endpoint, got {s:?}"
        )),
    }
}

fn topic_prefix(s: &str) -> Result<String, String> {
    validate_uid(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn device_id(s: &str) -> Result<String, String> {
    validate_uid(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn viewer_id(s: &str) -> Result<String, String> {
    validate_cid(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("expected a non-empty string, got \"\"".into())
    } else {
        Ok(s.to_owned())
    }
}

fn path(s: &str) -> Result<PathBuf, String> {
    non_empty(s).map(PathBuf::from)
}

/// 1 to 128 printable ASCII characters (MQTT allows more; brokers differ, and AWS IoT Core takes
/// at most 128).
fn mqtt_client_id(s: &str) -> Result<String, String> {
    if (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "expected 1 to 128 printable ASCII characters without spaces, got {s:?}"
        ))
    }
}

fn broker(s: &str) -> Result<BrokerUrl, String> {
    s.parse().map_err(|e| match e {
        UrlError::Credentials => format!(
            "put the user name in --mqtt-username and the password in --mqtt-password-file or \
             {PASSWORD_ENV}, not in the URL"
        ),
        e => e.to_string(),
    })
}

fn selftest_audio(s: &str) -> Result<AudioSetting, String> {
    match s.parse::<AudioSetting>()? {
        AudioSetting::Auto => Err(
            "the self-test needs a named audio source: none, tone or an ALSA PCM name such as hw:1,0"
                .to_owned(),
        ),
        setting => Ok(setting),
    }
}

/// Each even, from 16 to 4096.
fn size(s: &str) -> Result<PictureSize, String> {
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
    Ok(PictureSize {
        width: dim(w)?,
        height: dim(h)?,
    })
}

fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("expected an IP address such as 192.168.1.20 or ::1, got {s:?}"))
}

fn http_bind(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    match s.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(Some(addr)),
        _ => Err(format!(
            "expected off or IP:PORT such as 0.0.0.0:8080, 127.0.0.1:8080 or [::]:8080, got {s:?}"
        )),
    }
}

fn log_filter(s: &str) -> Result<String, String> {
    match tracing_subscriber::EnvFilter::try_new(s) {
        Ok(_) if !s.trim().is_empty() => Ok(s.to_owned()),
        Ok(_) => Err("expected a log filter such as info or spyglass=debug, got \"\"".into()),
        Err(e) => Err(format!(
            "expected a log filter such as info or spyglass=debug, got {s:?} ({e})"
        )),
    }
}

/// A picture's size; shown as `WIDTHxHEIGHT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PictureSize {
    pub width: u32,
    pub height: u32,
}

impl std::fmt::Display for PictureSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

fn stun_url(s: &str) -> Result<String, String> {
    ice_url(s, &["stun:"])
}

/// A TURN URL the device can use: TURN over UDP (`turns:` and `?transport=tcp` are refused with
/// the reason, see [`crate::peer::relay`]).
fn turn_url(s: &str) -> Result<String, String> {
    let url = if s.starts_with("turns:") {
        s.to_owned()
    } else {
        ice_url(s, &["turn:"])?
    };
    crate::peer::relay::check_url(&url).map_err(|e| e.to_string())?;
    Ok(url)
}

/// A TURN URL for viewers: `turn:HOST[:PORT]`, `turn:HOST[:PORT]?transport=udp|tcp` or
/// `turns:HOST[:PORT][?transport=tcp]`.
fn viewer_turn_url(s: &str) -> Result<String, String> {
    const FORM: &str =
        "expected turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT][?transport=tcp]";
    ice_url(s, &["turn:", "turns:"]).map_err(|_| format!("{FORM}, got {s:?}"))?;
    match s.split_once('?') {
        None => Ok(s.to_owned()),
        Some((_, "transport=udp")) if s.starts_with("turn:") => Ok(s.to_owned()),
        Some((_, "transport=tcp")) => Ok(s.to_owned()),
        Some(_) => Err(format!("{FORM}, got {s:?}")),
    }
}

/// A TURN URL for `spyglass view`: TURN over UDP only. webrtc 0.21, which the viewer uses, skips
/// `turns:` and `?transport=tcp` servers ("Skipping unsupported non-UDP TURN url").
fn view_turn_url(s: &str) -> Result<String, String> {
    let url = viewer_turn_url(s)?;
    if url.starts_with("turns:") || url.ends_with("?transport=tcp") {
        return Err(format!(
            "spyglass view relays over UDP only (its WebRTC library cannot use TURN over TCP or \
             TLS): expected turn:HOST[:PORT], got {s:?}"
        ));
    }
    Ok(url)
}

fn ice_url(s: &str, schemes: &[&str]) -> Result<String, String> {
    let ok = schemes.iter().any(|scheme| {
        s.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    }) && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(s.to_owned())
    } else {
        let expected = schemes
            .iter()
            .map(|p| format!("{p}HOST[:PORT]"))
            .collect::<Vec<_>>()
            .join(" or ");
        Err(format!("expected {expected}, got {s:?}"))
    }
}

fn web_broker_url(s: &str) -> Result<String, String> {
    const FORM: &str = "expected ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]";
    let Some((scheme, _)) = s.split_once("://") else {
        return Err(format!("{FORM}, got {s:?}"));
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss") {
        return Err(format!(
            "{FORM} (browsers reach MQTT over WebSockets only), got {s:?}"
        ));
    }
    // The same rules as the broker's own URL, in the words of this option.
    s.parse::<BrokerUrl>().map_err(|e| match e {
        UrlError::QueryOrSpace(_) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            format!("{FORM}, without spaces, got {s:?}")
        }
        UrlError::QueryOrSpace(_) => format!("{FORM}, without query or fragment, got {s:?}"),
        UrlError::Credentials => format!(
            "a user name or password does not go in the URL (the page asks for them), got {s:?}"
        ),
        UrlError::Ipv6Brackets(_) => {
            format!("{FORM}: write an IPv6 host in brackets, e.g. ws://[::1]:9001; got {s:?}")
        }
        UrlError::Host(_) => format!("{FORM}: missing or invalid host, got {s:?}"),
        UrlError::Form(_) | UrlError::UnknownScheme { .. } | UrlError::TlsScheme(_) => {
            format!("{FORM}, got {s:?}")
        }
        e @ (UrlError::Unclosed(_) | UrlError::NotIpv6 { .. } | UrlError::Port(_)) => {
            format!("{FORM}: {e}")
        }
        // Only the `mqtt` schemes refuse a path.
        e @ UrlError::Path(_) => e.to_string(),
    })?;
    Ok(s.to_owned())
}
