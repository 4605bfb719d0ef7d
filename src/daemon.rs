//! The daemon: wires the MQTT transport, the signaling state machine, the WebRTC sessions and the
//! shared video hub together, and carries out what the state machine decides.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{info, warn};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCIceServer};

use crate::VERSION;
use crate::audio::hub::AudioHub;
use crate::config::DaemonConfig;
use crate::mqtt::{self, Mqtt, MqttEvent, MqttSettings};
use crate::peer::bitrate::{self, BitrateRange, RateControl};
use crate::peer::candidates::RemotePolicy;
use crate::peer::session::{self, AnswerError, SessionEvent, SessionHandle};
use crate::peer::{PeerFactory, PeerSettings};
use crate::signaling::protocol::{
    AudioStatus, ErrorCode, IceCandidateMsg, MediaState, Status, Topics, VIDEO_CODEC_H264,
    VideoStatus, offline_status_json,
};
use crate::signaling::sessions::{Action, Limits, PeerEvent, SessionKey, Signaling};
use crate::turn_rest::{IceServerGrant, TurnSecret};
use crate::video::hub::{Hub, VideoState};
use crate::web::{self, WebSettings};

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
    // The device's TURN servers are tried now and, while they fail, again and again; new
    // sessions get only those that work.
    let relay_servers = factory.clone();
    let _relay_watch = AbortOnDrop(tokio::spawn(crate::peer::relay::watch(
        move || relay_servers.settings().ice_servers_now(),
        cfg.rtc_bind.first().copied(),
        std::sync::Arc::clone(factory.relays()),
    )));
    let hub = Hub::new(cfg.video.clone(), cfg.bitrate_kbps)?;
    // Every viewer's bandwidth estimate → one target for the shared encoder.
    let rate = RateControl::new(bitrate_range(&cfg));
    let _rate_task = tokio::spawn(follow_rate(rate.clone(), hub.clone()));
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
    let grant = ice_server_grant(&cfg);
    let mut status = Status::online(VERSION, video, 0, cfg.max_viewers);
    status.audio = audio_status.clone();
    status.ice_servers = !grant.is_empty();
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
                stun: cfg.stun.clone(),
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
        rate,
        session_tx,
        sessions: HashMap::new(),
        grant,
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
                            AnswerError::Internal(m) => {
                                // The viewer only learns that it failed; the log says why.
                                warn!(cid = %key.cid, "answering `internal`: {m}");
                                (ErrorCode::Internal, m)
                            }
                        };
                        PeerEvent::Failed { code, message }
                    }
                    SessionEvent::LocalCandidate(c) => PeerEvent::LocalCandidate(c.map(|init| IceCandidateMsg {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_mline_index: init.sdp_mline_index,
                        username_fragment: None,
                    })),
                    SessionEvent::Connected => PeerEvent::Connected,
                    SessionEvent::Unreachable(message) => {
                        exec.sessions.remove(&key);
                        PeerEvent::Failed { code: ErrorCode::Unreachable, message }
                    }
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
                // A session whose task died (a panic) never says so: count it out here.
                for (key, handle) in session::take_unreported(&mut exec.sessions) {
                    let fault = handle.fault().await;
                    warn!(cid = %key.cid, "session task {fault}; counting the viewer out");
                    let actions = core.on_peer_event(Instant::now(), &key, PeerEvent::Closed);
                    exec.run(actions).await;
                }
                let now = std::time::SystemTime::now();
                if let Err(err) = exec.factory.certificates().renew_if_due(now) {
                    warn!("renewing the DTLS certificate: {err}");
                }
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
    // A session whose task already died will not report its close: do not wait for it.
    drop(session::take_unreported(&mut exec.sessions));
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
    // With a TURN REST secret the credentials are made for each new peer connection
    // (PeerSettings::turn_rest); without one they are the configured long-term ones.
    if !cfg.turn.is_empty() {
        ice_servers.push(RTCIceServer {
            urls: cfg.turn.clone(),
            username: cfg.turn_username.clone().unwrap_or_default(),
            credential: cfg.turn_password.as_deref().unwrap_or_default().to_owned(),
        });
    }
    PeerSettings {
        bind: cfg.rtc_bind.clone(),
        mdns: cfg.mdns,
        ice_servers,
        remote: RemotePolicy {
            allow_loopback: cfg.rtc_allow_loopback,
        },
        connect_timeout: cfg.peer_timeout,
        check_interval: Some(crate::peer::ICE_CHECK_INTERVAL),
        turn_rest: cfg
            .turn_secret
            .as_deref()
            .and_then(TurnSecret::new)
            .map(|secret| crate::peer::TurnRest {
                secret,
                name: crate::turn_rest::user_name(&cfg.id),
                lifetime: Duration::from_secs(cfg.turn_credential_lifetime.into()),
            }),
        regather_on_ice_restart: false,
        rate: bitrate_range(cfg),
    }
}

fn bitrate_range(cfg: &DaemonConfig) -> BitrateRange {
    BitrateRange {
        start_bps: u64::from(cfg.bitrate_kbps) * 1000,
        min_bps: u64::from(cfg.min_bitrate_kbps) * 1000,
        max_bps: u64::from(cfg.max_bitrate_kbps) * 1000,
    }
}

/// Re-evaluate the shared encoder's target from the viewers' estimates, and hand it on.
async fn follow_rate(rate: RateControl, hub: Hub) {
    let mut tick = tokio::time::interval(bitrate::UPDATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(bps) = rate.update(Instant::now()) {
            hub.set_target_bitrate(bps);
        }
    }
}

/// Aborts a background task when the daemon returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What viewers that ask for ICE servers get: the device's STUN servers, and the viewers' TURN
/// servers with credentials made from the secret (none without one).
fn ice_server_grant(cfg: &DaemonConfig) -> IceServerGrant {
    IceServerGrant::new(
        cfg.stun.clone(),
        cfg.viewer_turn.clone(),
        cfg.turn_secret.as_deref().and_then(TurnSecret::new),
        Duration::from_secs(cfg.turn_credential_lifetime.into()),
    )
}

/// Carries out the state machine's actions.
struct Executor {
    mqtt: Mqtt,
    factory: PeerFactory,
    hub: Hub,
    audio: Option<AudioHub>,
    rate: RateControl,
    session_tx: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
    sessions: HashMap<SessionKey, SessionHandle>,
    grant: IceServerGrant,
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
                        self.rate.clone(),
                        key.clone(),
                        offer_sdp,
                        self.session_tx.clone(),
                    );
                    self.sessions.insert(key, handle);
                }
                Action::Renegotiate { key, offer_sdp } => {
                    if let Some(handle) = self.sessions.get(&key) {
                        handle.renegotiate(offer_sdp);
                    }
                }
                Action::GrantIceServers { cid, topic } => {
                    let reply = self.grant.grant(&cid, SystemTime::now());
                    self.mqtt.publish(topic, reply.to_json(), false).await;
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
