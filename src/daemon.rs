//! The daemon: wires the MQTT transport, the signaling state machine, the WebRTC sessions and the
//! shared video hub together, and carries out what the state machine decides.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{info, warn};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCIceServer};

use crate::audio::hub::AudioHub;
use crate::config::DaemonConfig;
use crate::mqtt::{self, Mqtt, MqttEvent, MqttSettings};
use crate::peer::session::{self, AnswerError, SessionEvent, SessionHandle};
use crate::peer::{PeerFactory, PeerSettings};
use crate::signaling::protocol::{
    AudioStatus, ErrorCode, IceCandidateMsg, MediaState, Status, Topics, VIDEO_CODEC_H264,
    VideoStatus, offline_status_json,
};
use crate::signaling::sessions::{Action, Limits, PeerEvent, SessionKey, Signaling};
use crate::video::hub::{Hub, VideoState};
use crate::web::{self, WebSettings};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Threads the async runtime may start for blocking work (file reads for the viewer page,
/// viewers' snapshot and control requests, which also wait for the hub's request workers);
/// more work waits for one. Keeps the thread count well under the unit's `TasksMax=128`.
pub const MAX_BLOCKING_THREADS: usize = 32;

/// On SIGTERM, how long to wait for the sessions to close before going offline anyway.
const SHUTDOWN_SESSION_WAIT: Duration = Duration::from_millis(800);

/// Run until SIGINT or SIGTERM.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    for warning in cfg.exposed_secrets() {
        warn!("{warning}");
    }
    let topics = Topics::new(cfg.id.clone())?;
    let factory = PeerFactory::new(peer_settings(&cfg))?;
    let hub = Hub::new(cfg.video.clone(), cfg.bitrate_kbps)?;
    let video = VideoStatus {
        state: MediaState::Idle,
        codec: VIDEO_CODEC_H264.to_string(),
        width: cfg.video.width,
        height: cfg.video.height,
        fps: cfg.video.fps,
    };
    // A named microphone that does not open is an error; `auto` without one is video only.
    let audio = crate::audio::resolve(&cfg.audio)?
        .map(AudioHub::new)
        .transpose()?;
    let audio_status = audio.as_ref().map(|a| AudioStatus {
        codec: "opus".to_string(),
        channels: u32::from(a.channels()),
    });
    let mut audio_running = audio.as_ref().map(AudioHub::running);
    let mut status = Status::online(VERSION, video, 0, cfg.max_viewers);
    status.audio = audio_status.clone();
    let limits = Limits {
        max_viewers: cfg.max_viewers as usize,
        max_connecting: cfg.max_connecting as usize,
        peer_timeout: cfg.peer_timeout,
        ..Limits::default()
    };
    let mut core = Signaling::new(topics.clone(), limits, status);
    // The viewer page; kept alive until the daemon returns.
    let _web = match cfg.http {
        Some(bind) => Some(
            web::start(WebSettings {
                bind,
                root: cfg.web_root.clone(),
                id: cfg.id.clone(),
                broker: cfg.web_broker_url.clone(),
                max_connections: cfg.http_max_connections as usize,
            })
            .await?,
        ),
        None => None,
    };
    let offline = offline_status_json();
    let mut conn = mqtt::connect(MqttSettings {
        host: cfg.mqtt.host.clone(),
        port: cfg.mqtt.port,
        client_id: match &cfg.mqtt_client_id {
            Some(id) => mqtt::ClientId::Fixed(id.clone()),
            None => mqtt::ClientId::Random {
                prefix: format!("spyglass-{}", cfg.id.replace('/', "-")),
            },
        },
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        will: Some((topics.status(), offline.clone())),
        subscriptions: topics.device_filters().to_vec(),
        transport: mqtt::MqttTransport::new(&cfg.mqtt, &cfg.tls),
    })?;
    info!(id = %cfg.id, broker = %cfg.mqtt, video = %cfg.video.source, "spyglass {VERSION} starting");

    let (session_tx, mut session_rx) = mpsc::unbounded_channel::<(SessionKey, SessionEvent)>();
    let mut exec = Executor {
        mqtt: conn.client.clone(),
        factory,
        hub: hub.clone(),
        audio: audio.clone(),
        session_tx,
        sessions: HashMap::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut first_online = true;
    let mut notifier = crate::service::Notifier::from_env();
    notifier.tick(Instant::now(), hub.heartbeat_age());
    let mut video_state = hub.state();
    loop {
        tokio::select! {
            event = conn.events.recv() => match event {
                Some(MqttEvent::Connected) => {
                    if first_online {
                        info!(ms = started.elapsed().as_millis() as u64, "online");
                        first_online = false;
                    } else {
                        info!("reconnected to the broker");
                    }
                    let action = core.status_action();
                    exec.run(vec![action]).await;
                    notifier.ready();
                    notifier.status("online");
                }
                Some(MqttEvent::Disconnected(why)) => {
                    warn!("broker connection lost: {why}");
                    if !first_online {
                        notifier.status("broker connection lost; reconnecting");
                    }
                }
                Some(MqttEvent::Message { topic, payload }) => {
                    let actions = core.on_message(Instant::now(), &topic, &payload);
                    exec.run(actions).await;
                }
                None => break,
            },
            Some((key, event)) = session_rx.recv() => {
                let event = match event {
                    SessionEvent::Answered(sdp) => PeerEvent::Answered(sdp),
                    SessionEvent::Failed(err) => {
                        exec.sessions.remove(&key);
                        let (code, message) = match err {
                            AnswerError::BadOffer(m) => (ErrorCode::BadRequest, m),
                            AnswerError::Unsupported(m) => (ErrorCode::Unsupported, m),
                            AnswerError::Internal(m) => (ErrorCode::Internal, m),
                        };
                        PeerEvent::Failed { code, message }
                    }
                    SessionEvent::LocalCandidate(c) => PeerEvent::LocalCandidate(c.map(|init| IceCandidateMsg {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_mline_index: init.sdp_mline_index,
                    })),
                    SessionEvent::Connected => PeerEvent::Connected,
                    SessionEvent::Closed(_) => {
                        exec.sessions.remove(&key);
                        PeerEvent::Closed
                    }
                };
                let actions = core.on_peer_event(Instant::now(), &key, event);
                exec.run(actions).await;
            },
            Ok(()) = video_state.changed() => {
                let state = match &*video_state.borrow_and_update() {
                    VideoState::Idle => MediaState::Idle,
                    VideoState::Live => MediaState::Live,
                    VideoState::Lost(_) => MediaState::Lost,
                };
                let actions = core.set_video_state(state);
                exec.run(actions).await;
            }
            Some(running) = async {
                match audio_running.as_mut() {
                    Some(rx) => rx.changed().await.ok().map(|_| *rx.borrow()),
                    None => std::future::pending().await,
                }
            } => {
                // Audio lost (the microphone went away) or back: video goes on either way.
                let action = core.set_audio(audio_status.clone().filter(|_| running));
                exec.run(vec![action]).await;
            }
            _ = tick.tick() => {
                let actions = core.on_tick(Instant::now());
                exec.run(actions).await;
                notifier.tick(Instant::now(), hub.heartbeat_age());
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("stopping");
    notifier.stopping();
    for handle in exec.sessions.values() {
        handle.close();
    }
    // Let the sessions close their peer connections (ICE and DTLS shut down), but
    // never for long: SIGTERM must end the process within 2 s.
    let closing = exec.sessions.len();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_SESSION_WAIT;
    while !exec.sessions.is_empty() {
        match tokio::time::timeout_at(deadline, session_rx.recv()).await {
            Ok(Some((key, SessionEvent::Closed(_) | SessionEvent::Failed(_)))) => {
                exec.sessions.remove(&key);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if closing > 0 {
        info!(
            closed = closing - exec.sessions.len(),
            of = closing,
            "sessions closed"
        );
    }
    hub.shutdown();
    if let Some(audio) = &audio {
        audio.shutdown();
    }
    conn.close(Some((topics.status(), offline))).await;
    Ok(())
}

fn peer_settings(cfg: &DaemonConfig) -> PeerSettings {
    let mut ice_servers = Vec::new();
    if !cfg.stun.is_empty() {
        ice_servers.push(RTCIceServer {
            urls: cfg.stun.clone(),
            ..Default::default()
        });
    }
    if !cfg.turn.is_empty() {
        ice_servers.push(RTCIceServer {
            urls: cfg.turn.clone(),
            username: cfg.turn_username.clone().unwrap_or_default(),
            credential: cfg.turn_password.clone().unwrap_or_default(),
        });
    }
    PeerSettings {
        bind: cfg.rtc_bind.clone(),
        mdns: cfg.mdns,
        ice_servers,
    }
}

/// Carries out the state machine's actions.
struct Executor {
    mqtt: Mqtt,
    factory: PeerFactory,
    hub: Hub,
    audio: Option<AudioHub>,
    session_tx: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
    sessions: HashMap<SessionKey, SessionHandle>,
}

impl Executor {
    async fn run(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Publish {
                    topic,
                    payload,
                    lossy: true,
                    ..
                } => self.mqtt.publish_lossy(topic, payload),
                Action::Publish {
                    topic,
                    payload,
                    retain,
                    lossy: false,
                } => self.mqtt.publish(topic, payload, retain).await,
                Action::Start { key, offer_sdp } => {
                    let handle = session::start(
                        self.factory.clone(),
                        self.hub.clone(),
                        self.audio.clone(),
                        key.clone(),
                        offer_sdp,
                        self.session_tx.clone(),
                    );
                    self.sessions.insert(key, handle);
                }
                Action::Candidate { key, candidate } => {
                    if let Some(handle) = self.sessions.get(&key) {
                        handle.add_candidate(candidate.map(|c| RTCIceCandidateInit {
                            candidate: c.candidate,
                            sdp_mid: c.sdp_mid,
                            sdp_mline_index: c.sdp_mline_index,
                            ..Default::default()
                        }));
                    }
                }
                Action::Close { key } => {
                    if let Some(handle) = self.sessions.remove(&key) {
                        handle.close();
                    }
                }
            }
        }
    }
}
