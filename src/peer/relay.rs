//! The device's own TURN servers: which URLs webrtc 0.21 can use ([`check_url`]), a test
//! allocation with rtc's TURN client ([`allocate`]), and which servers new sessions get
//! ([`RelayHealth`], kept up to date by [`watch`]).
//!
//! - webrtc 0.21 relays only over UDP: `RTCTurnRelayer::gather`
//!   (`webrtc-0.21.1/src/peer_connection/transport/turn_relayer.rs`) skips `turns:` and
//!   `?transport=tcp` URLs at every offer with a warning. So they are refused when spyglass starts,
//!   with the reason. (The viewer's own TURN servers may use TCP or TLS: only the device's side
//!   is limited.)
//! - A wrong password, or a server that does not answer, would otherwise show up only as an
//!   ERROR line at each offer (and with a server that does not answer, webrtc never completes
//!   gathering: see [`super::connectivity::GATHERING_DEADLINE`]). So each TURN server is tried
//!   once at start: a server that fails is logged once with the reason and left out of new
//!   sessions (viewers that can be reached directly still connect), then tried again every
//!   [`RECHECK_INTERVAL`]; when it works again, that is logged and sessions get it again.
//!   spyglass keeps running either way: a camera that stops because its TURN server is down
//!   would lose its LAN viewers too.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::ice::url::{ProtoType, SchemeType, Url};
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};
use rtc::turn::client::{Client, ClientConfig, Event};
use tracing::{info, warn};
use webrtc::peer_connection::RTCIceServer;

/// How long a test allocation may take.
pub const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// A TURN server that failed its test is tried again this often.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Why a TURN URL or server cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error(
        "{url}: the device can use TURN over UDP only (turn:HOST[:PORT] or ?transport=udp); \
         webrtc 0.21 cannot reach a TURN server over TCP or TLS. Viewers may still use TURN over \
         TCP or TLS with their own ICE servers"
    )]
    NotUdp { url: String },
    #[error("{url}: not a TURN URL ({why})")]
    Invalid { url: String, why: String },
    #[error("{url}: cannot resolve {host}: {why}")]
    Resolve {
        url: String,
        host: String,
        why: String,
    },
    #[error("{url}: {why}")]
    Socket { url: String, why: String },
    #[error(
        "{url}: the TURN server refused the allocation: {response}{hint}",
        hint = refusal_hint(response)
    )]
    Refused { url: String, response: String },
    #[error(
        "{url}: no answer from the TURN server within {secs} s (wrong host or port, a firewall, or the server is down)",
        secs = ALLOCATE_TIMEOUT.as_secs()
    )]
    NoAnswer { url: String },
}

fn refusal_hint(response: &str) -> &'static str {
    if response.contains("401") {
        " (check --turn-username and --turn-password-file)"
    } else if response.contains("403") {
        " (the server forbids this user or address)"
    } else if response.contains("486") || response.contains("508") {
        " (the server has no allocation left for this user)"
    } else {
        ""
    }
}

/// Check a `--turn` URL: a TURN URL that webrtc 0.21 can use (TURN over UDP).
pub fn check_url(raw: &str) -> Result<(), RelayError> {
    let url = Url::parse_url(raw).map_err(|e| RelayError::Invalid {
        url: raw.to_owned(),
        why: e.to_string(),
    })?;
    match url.scheme {
        SchemeType::Turn if url.proto == ProtoType::Udp => Ok(()),
        SchemeType::Turn | SchemeType::Turns => Err(RelayError::NotUdp {
            url: raw.to_owned(),
        }),
        _ => Err(RelayError::Invalid {
            url: raw.to_owned(),
            why: "expected turn:HOST[:PORT]".to_owned(),
        }),
    }
}

/// Which TURN URLs failed their last test; new sessions are built without them.
#[derive(Debug, Default)]
pub struct RelayHealth {
    failing: Mutex<HashSet<String>>,
}

impl RelayHealth {
    fn set(&self, url: &str, ok: bool) -> bool {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failing.remove(url)
        } else {
            failing.insert(url.to_owned())
        }
    }

    fn is_failing(&self, url: &str) -> bool {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(url)
    }

    fn failing_count(&self) -> usize {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `servers` without the TURN URLs that are failing (a server left with no URL is dropped).
    pub fn usable(&self, servers: &[RTCIceServer]) -> Vec<RTCIceServer> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        servers
            .iter()
            .filter_map(|server| {
                let urls: Vec<String> = server
                    .urls
                    .iter()
                    .filter(|u| !failing.contains(*u))
                    .cloned()
                    .collect();
                (!urls.is_empty()).then(|| RTCIceServer {
                    urls,
                    ..server.clone()
                })
            })
            .collect()
    }

    /// Whether any TURN URL is usable now.
    pub fn any_turn(&self, servers: &[RTCIceServer]) -> bool {
        self.usable(servers)
            .iter()
            .flat_map(|s| s.urls.iter())
            .any(|u| u.starts_with("turn"))
    }
}

/// Test every TURN server that `servers` gives (called before each round, so that credentials
/// made per use stay fresh) from `bind` (the first `--rtc-bind` address, or any), then keep
/// testing the ones that fail, until the task is dropped. Results go to `health` and to the log
/// (once per change).
pub async fn watch(
    servers: impl Fn() -> Vec<RTCIceServer>,
    bind: Option<IpAddr>,
    health: Arc<RelayHealth>,
) {
    let turn = || -> Vec<(String, String, String)> {
        servers()
            .iter()
            .flat_map(|s| {
                s.urls
                    .iter()
                    .filter(|u| u.starts_with("turn"))
                    .map(|u| (u.clone(), s.username.clone(), s.credential.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    if turn().is_empty() {
        return;
    }
    let mut first = true;
    loop {
        for (url, username, password) in &turn() {
            if !first && !health.is_failing(url) {
                continue;
            }
            let result = allocate(url, username, password, bind).await;
            let ok = result.is_ok();
            let changed = health.set(url, ok);
            match result {
                Ok(relayed) if first || changed => {
                    info!(url, %relayed, "TURN server works: test allocation granted")
                }
                Err(err) if first || changed => warn!(
                    "TURN server not usable, left out of new sessions (viewers that need a relay \
                     will not connect) and tried again every {} s: {err}",
                    RECHECK_INTERVAL.as_secs()
                ),
                _ => {}
            }
        }
        first = false;
        if health.failing_count() == 0 {
            // All work: nothing to re-test until the process restarts.
            return;
        }
        tokio::time::sleep(RECHECK_INTERVAL).await;
    }
}

/// Make a test allocation on the TURN server at `url` with rtc's TURN client over a UDP socket
/// bound to `bind`, then release it. Returns the relayed address.
pub async fn allocate(
    url: &str,
    username: &str,
    password: &str,
    bind: Option<IpAddr>,
) -> Result<SocketAddr, RelayError> {
    let parsed = Url::parse_url(url).map_err(|e| RelayError::Invalid {
        url: url.to_owned(),
        why: e.to_string(),
    })?;
    let want_v6 = bind.is_some_and(|ip| ip.is_ipv6());
    let host = format!(
        "{}:{}",
        if parsed.host.contains(':') {
            format!("[{}]", parsed.host)
        } else {
            parsed.host.clone()
        },
        parsed.port
    );
    let resolve_error = |why: String| RelayError::Resolve {
        url: url.to_owned(),
        host: host.clone(),
        why,
    };
    let server = tokio::net::lookup_host(&host)
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .find(|a| a.is_ipv6() == want_v6)
        .ok_or_else(|| resolve_error("no address of the socket's family".to_owned()))?;
    let socket_error = |why: String| RelayError::Socket {
        url: url.to_owned(),
        why,
    };
    let local_ip = bind.unwrap_or(if want_v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .await
        .map_err(|e| socket_error(format!("binding a UDP socket on {local_ip}: {e}")))?;
    let local = socket
        .local_addr()
        .map_err(|e| socket_error(e.to_string()))?;
    let crypto = rtc::crypto::default_provider().map_err(|e| socket_error(e.to_string()))?;
    let mut client = Client::new(
        ClientConfig {
            turn_serv_addr: server.to_string(),
            local_addr: local,
            transport_protocol: TransportProtocol::UDP,
            username: username.to_owned(),
            password: password.to_owned(),
            software: format!("spyglass {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        },
        crypto,
    )
    .map_err(|e| socket_error(format!("TURN client: {e}")))?;
    client
        .allocate(Instant::now())
        .map_err(|e| socket_error(format!("TURN allocate: {e}")))?;

    let deadline = tokio::time::Instant::now() + ALLOCATE_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    let outcome = loop {
        flush(&mut client, &socket).await;
        if let Some(event) = client.poll_event() {
            match event {
                Event::AllocateResponse(_, relayed) => break Ok(relayed),
                Event::AllocateError(_, err) => {
                    break Err(RelayError::Refused {
                        url: url.to_owned(),
                        response: err.to_string(),
                    });
                }
                Event::TransactionTimeout(_) => {
                    break Err(RelayError::NoAnswer {
                        url: url.to_owned(),
                    });
                }
                _ => continue,
            }
        }
        let wake = client
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or(deadline)
            .min(deadline);
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = received {
                    let _ = client.handle_read(TransportMessage {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: local,
                            peer_addr: from,
                            transport_protocol: TransportProtocol::UDP,
                            ecn: None,
                        },
                        message: BytesMut::from(&buf[..n]),
                    });
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    break Err(RelayError::NoAnswer { url: url.to_owned() });
                }
                let _ = client.handle_timeout(Instant::now());
            }
        }
    };
    if let Ok(relayed) = outcome {
        // Release it now rather than when its lifetime runs out (best effort).
        if let Ok(mut relay) = client.relay(relayed) {
            let _ = relay.close(Instant::now());
        }
        flush(&mut client, &socket).await;
    }
    outcome
}

async fn flush(client: &mut Client, socket: &tokio::net::UdpSocket) {
    while let Some(out) = client.poll_write() {
        let _ = socket.send_to(&out.message, out.transport.peer_addr).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_turn_over_udp_is_accepted() {
        for ok in [
            "turn:turn.lan",
            "turn:turn.lan:3478",
            "turn:turn.lan:3478?transport=udp",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for not_udp in [
            "turn:turn.lan:3478?transport=tcp",
            "turns:turn.lan",
            "turns:turn.lan:5349?transport=tcp",
        ] {
            let err = check_url(not_udp).unwrap_err();
            assert!(matches!(err, RelayError::NotUdp { .. }), "{not_udp}: {err}");
            assert!(err.to_string().contains("over UDP only"), "{err}");
        }
        for bad in [
            "turn:",
            "stun:stun.lan",
            "turn:t.lan?transport=sctp",
            "turn://t.lan",
        ] {
            assert!(
                matches!(check_url(bad), Err(RelayError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn failing_servers_are_left_out() {
        let servers = vec![
            RTCIceServer {
                urls: vec!["stun:s.lan".into()],
                ..Default::default()
            },
            RTCIceServer {
                urls: vec!["turn:a.lan".into(), "turn:b.lan".into()],
                username: "u".into(),
                credential: "p".into(),
            },
        ];
        let health = RelayHealth::default();
        assert_eq!(health.usable(&servers).len(), 2);
        assert!(health.set("turn:a.lan", false));
        assert!(!health.set("turn:a.lan", false), "no change");
        let usable = health.usable(&servers);
        assert_eq!(usable[1].urls, ["turn:b.lan"]);
        assert_eq!(usable[1].username, "u");
        health.set("turn:b.lan", false);
        assert_eq!(health.usable(&servers).len(), 1, "the STUN server stays");
        assert!(!health.any_turn(&servers));
        assert!(health.set("turn:a.lan", true));
        assert!(health.any_turn(&servers));
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_is_reported() {
        // A UDP socket that reads and never answers, on loopback.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let url = format!("turn:{}", silent.local_addr().unwrap());
        let err = allocate(&url, "u", "p", Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .await
            .unwrap_err();
        assert!(matches!(err, RelayError::NoAnswer { .. }), "{err}");
    }
}
