//! Connecting, and failing to connect, through real networks (issue 14): the daemon and
//! `spyglass view` run inside the namespaces of a netlab network (NAT routers, Mosquitto and
//! coturn in the "internet"), or real webrtc peers on loopback.
//!
//! - No STUN/TURN and a symmetric NAT on both sides: the viewer gets the `unreachable` error and
//!   the device logs once which candidate types were tried and that TURN is needed.
//! - A wrong TURN password is found at start (one clear line); sessions go on without that
//!   server and log no error each.
//! - A healthy session through a cone NAT and a coturn that denies private peers logs nothing
//!   above INFO.
//! - A connected viewer whose network vanishes ends its session ~10 s later (not at the peer
//!   timeout); candidates that come 12 s late, within the peer timeout, still connect.
//! - The device's TURN URLs must be TURN over UDP; a TURN server that never answers cannot keep
//!   a session from ending its candidates.
//!
//! Needs root, iproute2, nftables, coturn, mosquitto (`make deps`).

mod support;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::netlab::Netlab;
use support::{Broker, Daemon, TestClient, spyglass_bin, temp_dir};
use tokio::sync::mpsc;

/// The daemon inside a netlab host's namespace, logging to a file.
struct FieldDaemon {
    id: String,
    child: Option<Child>,
    log: PathBuf,
    dir: PathBuf,
}

impl FieldDaemon {
    /// Start on `host` with the broker of `lab`, the test pattern and `extra` arguments. With
    /// `log` `None` the daemon's default log filter applies (no `--log`, no `RUST_LOG`).
    fn start(lab: &Netlab, host: &str, extra: &[&str], log: Option<&str>) -> FieldDaemon {
        let id = format!("field/cam-{}", rand::random::<u32>());
        let dir = temp_dir("field");
        let log_path = dir.join("spyglass.log");
        let broker = lab.info["broker"]["url"].as_str().unwrap().to_string();
        let ip = lab.ip(host);
        let mut command = lab.command(host, spyglass_bin());
        command
            .args(["--id", &id, "--mqtt", &broker, "--video", "test"])
            .args(["--size", "320x240", "--bitrate", "400", "--rtc-bind", &ip])
            .args(["--mdns", "off", "--http", "off", "--audio", "none"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap());
        if let Some(filter) = log {
            command.args(["--log", filter]);
        }
        let child = command.spawn().expect("starting spyglass in the namespace");
        let daemon = FieldDaemon {
            id,
            child: Some(child),
            log: log_path,
            dir,
        };
        daemon.wait_log("online", Duration::from_secs(20));
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log has a line containing `text`; returns the log.
    fn wait_log(&self, text: &str, within: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.lines().any(|l| l.contains(text)) {
                return log;
            }
            assert!(
                start.elapsed() < within,
                "no log line with {text:?} within {within:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FieldDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- spyglass log ---\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `spyglass view --json` on `host` against `daemon`; its report.
fn view(lab: &Netlab, host: &str, daemon: &FieldDaemon, frames: u32, timeout_s: u32) -> Value {
    let broker = lab.info["broker"]["url"].as_str().unwrap().to_string();
    let out = lab
        .command(host, spyglass_bin())
        .args(["view", "--mqtt", &broker, "--id", &daemon.id, "--json"])
        .args(["--frames", &frames.to_string()])
        .args(["--timeout", &timeout_s.to_string()])
        .args(["--rtc-bind", &lab.ip(host), "--mdns", "off"])
        .stdin(Stdio::null())
        .output()
        .expect("running spyglass view in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "spyglass view printed no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A secret file as the daemon wants it: readable by its owner only.
fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn up(spec: Value) -> Netlab {
    Netlab::up_with(spec, "basic").unwrap_or_else(|e| panic!("netlab up: {e}"))
}

fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(text)).collect()
}

/// WARN and ERROR lines (the fmt layer writes the level after the timestamp).
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[test]
fn without_a_relay_between_two_symmetric_nats_the_viewer_is_told_why() {
    let lab = up(json!({
        "sites": [{"name": "dev", "nat": "symmetric"}, {"name": "v1", "nat": "symmetric"}],
        "turn": false
    }));
    let daemon = FieldDaemon::start(&lab, "dev", &["--peer-timeout", "6"], None);
    let report = view(&lab, "v1", &daemon, 10, 40);
    assert_eq!(report["frames"], 0, "{report}");
    assert_eq!(report["error"]["code"], "unreachable", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(message.contains("device host/udp"), "{message}");
    assert!(message.contains("TURN"), "{message}");

    let log = daemon.wait_log("session failed", Duration::from_secs(5));
    let failed = lines_with(&log, "session failed");
    assert_eq!(failed.len(), 1, "logged once: {log}");
    assert!(failed[0].contains(" WARN "), "{}", failed[0]);
    assert!(
        failed[0].contains("candidates tried: device host/udp; viewer host/udp"),
        "{}",
        failed[0]
    );
    assert!(
        failed[0].contains("only a TURN server connects them"),
        "{}",
        failed[0]
    );
}

#[test]
fn a_wrong_turn_password_is_found_at_start_and_sessions_go_on_without_it() {
    let lab = up(json!({
        "sites": [{"name": "dev", "nat": "cone"}, {"name": "v1", "nat": "cone"}],
        "turn": {"auth": "lt"}
    }));
    let turn = &lab.info["turn"];
    let dir = temp_dir("turnpw");
    let password = dir.join("turn-password");
    write_secret(&password, "not-the-password\n");
    let daemon = FieldDaemon::start(
        &lab,
        "dev",
        &[
            "--stun",
            turn["stun_url"].as_str().unwrap(),
            "--turn",
            turn["urls"]["udp"].as_str().unwrap(),
            "--turn-username",
            turn["username"].as_str().unwrap(),
            "--turn-password-file",
            password.to_str().unwrap(),
        ],
        None,
    );
    let log = daemon.wait_log("TURN server not usable", Duration::from_secs(20));
    let line = lines_with(&log, "TURN server not usable")[0].to_string();
    assert!(line.contains("401"), "{line}");
    assert!(line.contains("--turn-password-file"), "{line}");

    // Viewers that need no relay still connect, and no session logs a TURN error of its own.
    for _ in 0..2 {
        let report = view(&lab, "v1", &daemon, 5, 30);
        assert_eq!(report["frames"], 5, "{report}");
    }
    let log = daemon.wait_log("session ended", Duration::from_secs(10));
    assert_eq!(
        warnings(&log),
        vec![line.as_str()],
        "the start-up line only:\n{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_healthy_session_through_nat_and_turn_logs_nothing_above_info() {
    let lab = up(json!({
        "sites": [{"name": "dev", "nat": "cone"}, {"name": "v1", "nat": "cone"}],
        "turn": {"auth": "lt", "deny_private": true}
    }));
    let turn = &lab.info["turn"];
    let dir = temp_dir("turnpw");
    let password = dir.join("turn-password");
    write_secret(&password, turn["password"].as_str().unwrap());
    let daemon = FieldDaemon::start(
        &lab,
        "dev",
        &[
            "--stun",
            turn["stun_url"].as_str().unwrap(),
            "--turn",
            turn["urls"]["udp"].as_str().unwrap(),
            "--turn-username",
            turn["username"].as_str().unwrap(),
            "--turn-password-file",
            password.to_str().unwrap(),
        ],
        None,
    );
    daemon.wait_log("TURN server works", Duration::from_secs(20));
    // Two seconds of frames: the device's relay candidate is gathered and paired with the
    // viewer's private address while the session runs, whichever pair ICE nominates first.
    let report = view(&lab, "v1", &daemon, 60, 30);
    assert_eq!(report["frames"], 60, "{report}");
    let log = daemon.wait_log("session ended", Duration::from_secs(10));
    assert!(log.contains("viewer connected, selected pair"), "{log}");
    assert_eq!(warnings(&log), Vec::<&str>::new(), "{log}");
    // The noise was there to keep out: coturn refused the device's relay a permission for the
    // viewer's private address (the test would prove nothing otherwise).
    let viewer_lan = format!("peer IP {} denied", lab.ip("v1"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let coturn = loop {
        let coturn = std::fs::read_to_string(turn["log"].as_str().unwrap()).unwrap_or_default();
        if coturn.contains(&viewer_lan) || std::time::Instant::now() > deadline {
            break coturn;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        coturn.contains(&viewer_lan),
        "coturn refused no permission: {coturn}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_viewer_whose_network_vanishes_is_let_go_before_the_peer_timeout() {
    // The device on the internet side, the viewer behind a NAT: a direct path.
    let lab = up(json!({
        "sites": [{"name": "dev", "nat": "none"}, {"name": "v1", "nat": "cone"}],
        "turn": false
    }));
    let daemon = FieldDaemon::start(
        &lab,
        "dev",
        &["--peer-timeout", "60"],
        Some("spyglass=debug,info"),
    );
    let broker = lab.info["broker"]["url"].as_str().unwrap().to_string();
    let mut viewer = lab
        .command("v1", spyglass_bin())
        .args(["view", "--mqtt", &broker, "--id", &daemon.id, "--json"])
        .args(["--frames", "100000", "--timeout", "120"])
        .args(["--rtc-bind", &lab.ip("v1"), "--mdns", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    daemon.wait_log("viewer connected", Duration::from_secs(20));
    lab.cut("v1");
    let log = daemon.wait_log("session ended", Duration::from_secs(40));
    let _ = viewer.kill();
    let _ = viewer.wait();
    let ended = lines_with(&log, "session ended")[0];
    assert!(ended.contains("the viewer vanished"), "{ended}");
}

/// Candidates held back 12 s by a real webrtc peer on loopback, within a 20 s peer timeout
/// (webrtc's own ICE timeouts alone would have failed the session at 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_that_come_late_within_the_peer_timeout_still_connect() {
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
    use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
    use spyglass::signaling::protocol::{IceCandidateMsg, SessionDescriptionMsg, Topics};
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{
        PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
        RTCPeerConnectionState, RTCSessionDescription,
    };

    enum News {
        Candidate(RTCIceCandidateInit),
        State(RTCPeerConnectionState),
        Track(Arc<dyn TrackRemote>),
    }
    struct Handler(mpsc::UnboundedSender<News>);
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
            if let Ok(init) = event.candidate.to_json() {
                let _ = self.0.send(News::Candidate(init));
            }
        }
        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            let _ = self.0.send(News::State(state));
        }
        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let _ = self.0.send(News::Track(track));
        }
    }
    let strip = |sdp: &str| {
        sdp.split("\r\n")
            .filter(|l| !l.starts_with("a=candidate") && !l.starts_with("a=end-of-candidates"))
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let candidates_of = |sdp: &str| -> Vec<String> {
        sdp.split("\r\n")
            .filter_map(|l| l.strip_prefix("a="))
            .filter(|l| l.starts_with("candidate"))
            .map(str::to_string)
            .collect()
    };

    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--peer-timeout", "20"]);
    support::wait_online(&broker, &daemon).await;
    let topics = Topics::new(daemon.id.clone()).unwrap();
    let cid = format!("late-{}", rand::random::<u32>());
    let mut signaling = TestClient::connect(&broker, &topics.viewer_filters(&cid)).await;

    let factory = spyglass::peer::PeerFactory::new(spyglass::peer::PeerSettings {
        bind: vec!["127.0.0.1".parse().unwrap()],
        ..Default::default()
    })
    .unwrap();
    let (news_tx, mut news) = mpsc::unbounded_channel();
    let pc = factory.build(Arc::new(Handler(news_tx))).await.unwrap();
    pc.add_transceiver_from_kind(
        RtpCodecKind::Video,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let offer_sdp = pc.local_description().await.unwrap().sdp;
    let mut held_local: Vec<RTCIceCandidateInit> = candidates_of(&offer_sdp)
        .into_iter()
        .map(|candidate| RTCIceCandidateInit {
            candidate,
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            ..Default::default()
        })
        .collect();
    signaling
        .publish(
            &topics.offer(&cid),
            SessionDescriptionMsg::offer(strip(&offer_sdp)).to_json(),
        )
        .await;
    let offered = Instant::now();
    let late = offered + Duration::from_secs(12);
    let mut held_remote: Vec<RTCIceCandidateInit> = Vec::new();
    let mut released = false;
    let mut connected_after = None;
    let mut connected_while_held = false;
    let mut packets = 0;
    let (rtp_tx, mut rtp_rx) = mpsc::unbounded_channel::<()>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while packets == 0 {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => panic!(
                "no media within 40 s (connected after {connected_after:?})\n{}", daemon.log()),
            _ = tokio::time::sleep_until(late.into()), if !released => {
                released = true;
                for c in held_remote.drain(..) {
                    pc.add_ice_candidate(c).await.unwrap();
                }
                for c in held_local.drain(..) {
                    let msg = IceCandidateMsg {
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid,
                        sdp_mline_index: c.sdp_mline_index,
                        username_fragment: None,
                    };
                    signaling.publish(&topics.ice(&cid), msg.to_json()).await;
                }
            }
            Some((topic, payload, _)) = signaling.messages.recv() => {
                if topic == topics.answer(&cid) {
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    let sdp = v["sdp"].as_str().unwrap();
                    held_remote.extend(candidates_of(sdp).into_iter().map(|candidate| {
                        RTCIceCandidateInit {
                            candidate,
                            sdp_mid: Some("0".into()),
                            sdp_mline_index: Some(0),
                            ..Default::default()
                        }
                    }));
                    pc.set_remote_description(RTCSessionDescription::answer(strip(sdp)).unwrap())
                        .await
                        .unwrap();
                } else if topic == topics.ice(&cid) {
                    let msg: IceCandidateMsg = serde_json::from_slice(&payload).unwrap();
                    if !msg.candidate.is_empty() {
                        let init = RTCIceCandidateInit {
                            candidate: msg.candidate,
                            sdp_mid: msg.sdp_mid,
                            sdp_mline_index: msg.sdp_mline_index,
                            ..Default::default()
                        };
                        if released {
                            pc.add_ice_candidate(init).await.unwrap();
                        } else {
                            held_remote.push(init);
                        }
                    }
                } else if topic == topics.error(&cid) {
                    panic!("device error: {}", String::from_utf8_lossy(&payload));
                }
            }
            Some(item) = news.recv() => match item {
                News::Candidate(c) => {
                    if released {
                        let msg = IceCandidateMsg {
                            candidate: c.candidate,
                            sdp_mid: Some("0".into()),
                            sdp_mline_index: Some(0),
                            username_fragment: None,
                        };
                        signaling.publish(&topics.ice(&cid), msg.to_json()).await;
                    } else {
                        held_local.push(c);
                    }
                }
                News::State(RTCPeerConnectionState::Connected) => {
                    connected_after = Some(offered.elapsed());
                    connected_while_held |= !released;
                }
                News::State(RTCPeerConnectionState::Failed) => {
                    panic!("viewer's connection failed\n{}", daemon.log())
                }
                News::State(_) => {}
                News::Track(track) => {
                    let tx = rtp_tx.clone();
                    tokio::spawn(async move {
                        while let Some(event) = track.poll().await {
                            if let TrackRemoteEvent::OnRtpPacket(_) = event {
                                let _ = tx.send(());
                            }
                        }
                    });
                }
            },
            Some(()) = rtp_rx.recv() => packets += 1,
        }
    }
    let _ = pc.close().await;
    // It connected, and only once the candidates were given: after the 10 s at which webrtc's own
    // timeouts used to end the session.
    assert!(connected_after.is_some(), "media without a connection?");
    assert!(
        released && !connected_while_held,
        "connected before the candidates were released"
    );
    assert!(
        daemon.log().contains("viewer connected"),
        "{}",
        daemon.log()
    );
}

/// A TURN server that never answers: webrtc 0.21 alone never completes gathering then (so no
/// end-of-candidates); the connection still reports gathering complete.
#[tokio::test]
async fn gathering_ends_even_with_a_turn_server_that_never_answers() {
    use webrtc::peer_connection::{PeerConnectionEventHandler, RTCIceGatheringState, RTCIceServer};
    struct Handler(mpsc::UnboundedSender<RTCIceGatheringState>);
    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            let _ = self.0.send(state);
        }
    }
    // Reads and never answers, on loopback.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let factory = spyglass::peer::PeerFactory::new(spyglass::peer::PeerSettings {
        bind: vec!["127.0.0.1".parse().unwrap()],
        ice_servers: vec![RTCIceServer {
            urls: vec![format!("turn:{}", silent.local_addr().unwrap())],
            username: "u".into(),
            credential: "p".into(),
        }],
        ..Default::default()
    })
    .unwrap();
    let (tx, mut states) = mpsc::unbounded_channel();
    let pc = factory.build(Arc::new(Handler(tx))).await.unwrap();
    pc.create_data_channel("probe", None).await.unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let complete = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(state) = states.recv().await {
            if state == RTCIceGatheringState::Complete {
                return true;
            }
        }
        false
    })
    .await;
    let _ = pc.close().await;
    assert_eq!(complete, Ok(true), "gathering never completed");
}

#[test]
fn turn_over_tcp_or_tls_is_refused_at_start_with_the_reason() {
    for url in ["turns:turn.lan", "turn:turn.lan:3478?transport=tcp"] {
        let out = std::process::Command::new(spyglass_bin())
            .args(["--id", "x", "--turn", url, "--turn-username", "u"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("TURN over UDP only"), "{stderr}");
        assert!(
            stderr.contains("cannot reach a TURN server over TCP or TLS"),
            "{stderr}"
        );
    }
}
