//! Where `spyglass view` gets its ICE servers: its own `--stun` and `--turn` options, and the
//! servers the device grants over MQTT (docs/PROTOCOL.md, "ICE servers"), of which it keeps what
//! its WebRTC library (webrtc 0.21) can use: STUN, and TURN over UDP. The library skips `turns:`
//! and `?transport=tcp` servers, so they are left out here and said so, not silently ignored.

use webrtc::peer_connection::RTCIceServer;

use crate::secret::Secret;
use crate::signaling::protocol::IceServer;

/// The viewer's own servers, from its options.
#[derive(Debug, Clone, Default)]
pub struct OwnServers {
    pub stun: Vec<String>,
    /// TURN over UDP; `username` and `password` go with them.
    pub turn: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// Whether webrtc 0.21 can use this URL: STUN, or TURN over UDP.
pub fn usable(url: &str) -> bool {
    url.starts_with("stun:") || (url.starts_with("turn:") && !url.contains("transport=tcp"))
}

/// The viewer's servers and the device's, without the URLs the library cannot use; and those
/// URLs, for the log.
pub fn combine(own: &OwnServers, granted: &[IceServer]) -> (Vec<RTCIceServer>, Vec<String>) {
    let mut servers = Vec::new();
    if !own.stun.is_empty() {
        servers.push(RTCIceServer {
            urls: own.stun.clone(),
            ..Default::default()
        });
    }
    if !own.turn.is_empty() {
        servers.push(RTCIceServer {
            urls: own.turn.clone(),
            username: own.username.clone().unwrap_or_default(),
            credential: own.password.as_deref().unwrap_or_default().to_owned(),
        });
    }
    let mut left_out = Vec::new();
    for server in granted {
        let (urls, unusable): (Vec<String>, Vec<String>) =
            server.urls.iter().cloned().partition(|u| usable(u));
        left_out.extend(unusable);
        if !urls.is_empty() {
            servers.push(RTCIceServer {
                urls,
                username: server.username.clone().unwrap_or_default(),
                credential: server.credential.clone().unwrap_or_default(),
            });
        }
    }
    (servers, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_tls_turn_servers_from_the_device_are_left_out() {
        let granted = vec![
            IceServer {
                urls: vec!["stun:s:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec![
                    "turn:t:3478".into(),
                    "turn:t:3478?transport=tcp".into(),
                    "turns:t:5349".into(),
                ],
                username: Some("1:v".into()),
                credential: Some("pw".into()),
            },
        ];
        let own = OwnServers {
            stun: vec!["stun:mine".into()],
            ..Default::default()
        };
        let (servers, left_out) = combine(&own, &granted);
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[0].urls, ["stun:mine"]);
        assert_eq!(servers[2].urls, ["turn:t:3478"]);
        assert_eq!(
            (servers[2].username.as_str(), servers[2].credential.as_str()),
            ("1:v", "pw")
        );
        assert_eq!(left_out, ["turn:t:3478?transport=tcp", "turns:t:5349"]);
    }
}
