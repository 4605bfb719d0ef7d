//! Broker addresses: `SCHEME://HOST[:PORT][/PATH]`, where the scheme alone chooses the transport
//! (TLS or not, WebSocket or not), never the port number. Parsed with the `url` crate; this module
//! adds what MQTT wants of a URL (one of four schemes, a host, no user name or password in it, a
//! path only for WebSockets) and says which of those a text misses.

use std::fmt;
use std::str::FromStr;

/// The broker a device connects to when no `--mqtt` is given.
pub const DEFAULT_MQTT_HOST: &str = "127.0.0.1";
pub const DEFAULT_MQTT_PORT: u16 = 1883;

/// The path a `ws://` or `wss://` URL without one gets: what AWS IoT, EMQX and HiveMQ serve MQTT
/// on. Mosquitto accepts any path.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// How a broker URL is written, for error messages.
pub const FORM: &str = "expected mqtt://HOST[:PORT], mqtts://HOST[:PORT], ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]";

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

    /// Whether the connection is encrypted (and the TLS files apply).
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

    /// The WebSocket URL rumqttc connects to: `ws://` (or `wss://` for [`BrokerScheme::Wss`]),
    /// host, port and path ([`DEFAULT_WS_PATH`] when there is none).
    pub fn websocket_url(&self) -> String {
        let scheme = if self.scheme == BrokerScheme::Wss {
            "wss"
        } else {
            "ws"
        };
        let path = if self.path.is_empty() {
            DEFAULT_WS_PATH
        } else {
            &self.path
        };
        format!("{scheme}://{}:{}{path}", self.bracketed_host(), self.port)
    }

    /// The host as a URL writes it: an IPv6 address in brackets.
    fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl Default for BrokerUrl {
    /// `mqtt://127.0.0.1:1883`.
    fn default() -> Self {
        BrokerUrl::mqtt(DEFAULT_MQTT_HOST, DEFAULT_MQTT_PORT)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}{}",
            self.scheme.as_str(),
            self.bracketed_host(),
            self.port,
            self.path
        )
    }
}

/// Why a text is no broker URL. Each message quotes the text, except [`UrlError::Credentials`]
/// (it would quote the password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{FORM}, got {0:?}")]
    Form(String),
    #[error("unknown scheme {scheme:?}: {FORM}, got {url:?}")]
    UnknownScheme { scheme: String, url: String },
    #[error("write a TLS broker as mqtts://HOST[:PORT], got {0:?}")]
    TlsScheme(String),
    #[error("a broker URL has no query, fragment or spaces: {FORM}, got {0:?}")]
    QueryOrSpace(String),
    #[error("a broker URL has no path or query: {FORM}, got {0:?}")]
    Path(String),
    #[error("a broker URL has no user name or password in it")]
    Credentials,
    #[error("write an IPv6 host in brackets, e.g. mqtt://[::1]:1883; got {0:?}")]
    Ipv6Brackets(String),
    #[error("unclosed `[` in {0:?}")]
    Unclosed(String),
    #[error("{host:?} in brackets is not an IPv6 address, in {url:?}")]
    NotIpv6 { host: String, url: String },
    #[error("missing or invalid host: {FORM}, got {0:?}")]
    Host(String),
    #[error("port must be a number from 1 to 65535, got {0:?}")]
    Port(String),
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let form = || UrlError::Form(s.to_owned());
        let (scheme, rest) = s.split_once("://").ok_or_else(form)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" => BrokerScheme::Mqtt,
            "mqtts" => BrokerScheme::Mqtts,
            "ws" => BrokerScheme::Ws,
            "wss" => BrokerScheme::Wss,
            "ssl" | "tls" => return Err(UrlError::TlsScheme(s.to_owned())),
            _ => {
                return Err(UrlError::UnknownScheme {
                    scheme: scheme.to_owned(),
                    url: s.to_owned(),
                });
            }
        };
        if rest.contains(['?', '#']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::QueryOrSpace(s.to_owned()));
        }
        // What the `url` crate would read differently or name less precisely: credentials, and
        // an IPv6 address without brackets.
        let authority = rest.split('/').next().unwrap_or(rest);
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        if !authority.starts_with('[') && authority.matches(':').count() > 1 {
            return Err(UrlError::Ipv6Brackets(s.to_owned()));
        }
        let url = url::Url::parse(s).map_err(|e| match e {
            url::ParseError::InvalidPort => port_error(s, authority),
            url::ParseError::InvalidIpv6Address => match authority
                .strip_prefix('[')
                .and_then(|inside| inside.split_once(']'))
            {
                // Something other than a port after the brackets.
                Some((host, _)) if host.parse::<std::net::Ipv6Addr>().is_ok() => {
                    UrlError::Form(s.to_owned())
                }
                Some((host, _)) => UrlError::NotIpv6 {
                    host: host.to_owned(),
                    url: s.to_owned(),
                },
                None => UrlError::Unclosed(s.to_owned()),
            },
            _ => UrlError::Host(s.to_owned()),
        })?;
        let host = match url.host() {
            Some(url::Host::Ipv6(address)) => address.to_string(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            // A host name: what DNS and the brokers take (an opaque host of the `mqtt` schemes
            // is only checked by us).
            Some(url::Host::Domain(name))
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
            {
                name.to_owned()
            }
            _ => return Err(UrlError::Host(s.to_owned())),
        };
        let port = match url.port() {
            Some(0) => return Err(port_error(s, authority)),
            Some(port) => port,
            None => scheme.default_port(),
        };
        let path = match (scheme.is_websocket(), url.path()) {
            (false, "" | "/") => String::new(),
            (false, _) => return Err(UrlError::Path(s.to_owned())),
            (true, "" | "/") => DEFAULT_WS_PATH.to_owned(),
            (true, path) => path.to_owned(),
        };
        Ok(BrokerUrl {
            scheme,
            host,
            port,
            path,
        })
    }
}

/// The port's text in `authority` (after the host and its `:`), for the error.
fn port_error(url: &str, authority: &str) -> UrlError {
    match authority.strip_prefix('[') {
        Some(inside) => match inside
            .split_once(']')
            .and_then(|(_, after)| after.strip_prefix(':'))
        {
            Some(port) => UrlError::Port(port.to_owned()),
            None => UrlError::Form(url.to_owned()),
        },
        None => UrlError::Port(authority.split_once(':').map_or("", |(_, p)| p).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
