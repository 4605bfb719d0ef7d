//! The daemon: wires the MQTT transport, the WHEP endpoint, the signaling state machine, the
//! WebRTC sessions and the shared video hub together, and carries out what the state machine
//! decides.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCIceServer};

use crate::VERSION;
use crate::audio::hub::AudioHub;
use crate::config::DaemonConfig;
use crate::homeassistant::{self, HomeAssistant};
use crate::mqtt::{self, Mqtt, MqttEvent, MqttSettings};
use crate::peer::bitrate::{self, BitrateRange, RateControl};
use crate::peer::candidates::RemotePolicy;
use crate::peer::session::{self, AnswerError, SessionEvent, SessionHandle};
use crate::peer::{PeerFactory, PeerSettings};
use crate::signaling::protocol::{
    AudioStatus, ErrorCode, IceCandidateMsg, MediaState, Status, Topics, VIDEO_CODEC_H264,
    VideoStatus, WhipStatus, offline_status_json,
};
use crate::signaling::sessions::{Action, Limits, PeerEvent, SessionKey, Signaling};
use crate::signaling::whep::{WhepError, ice_server_link};
use crate::turn_rest::{IceServerGrant, TurnSecret};
use crate::video::hub::{Hub, StreamInfo, VideoState};
use crate::web::{self, WebSettings};
use crate::whep::{self as whep_http, WhepSettings};
use crate::whip::{self, Publisher, WhipSettings};

/// Threads the async runtime may start for blocking work (file reads for the viewer page,
/// viewers' snapshot and control requests, which also wait for the hub's request workers);
/// more work waits for one. Keeps the thread count well under the unit's `TasksMax=128`.
pub const MAX_BLOCKING_THREADS: usize = 32;

/// On SIGTERM, how long to wait for the sessions to close before going offline anyway.
const SHUTDOWN_SESSION_WAIT: Duration = Duration::from_millis(800);

/// Run until SIGINT or SIGTERM.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    let mut daemon = Daemon::start(cfg).await?;
    daemon.serve().await;
    daemon.stop().await;
    Ok(())
}

/// Whether the event loop goes on after an event.
enum Flow {
    Go,
    Stop,
}

/// The running daemon: what [`Daemon::start`] sets up, the event loop's state, and what
/// [`Daemon::stop`] takes down.
struct Daemon {
    started: Instant,
    topics: Topics,
    hub: Hub,
    audio: Option<AudioHub>,
    audio_status: Option<AudioStatus>,
    audio_running: Option<watch::Receiver<bool>>,
    core: Signaling,
    exec: Executor,
    conn: mqtt::MqttConnection,
    /// The status that says offline: the will, and published last.
    offline: Vec<u8>,
    home_assistant: Option<HomeAssistant>,
    /// Home Assistant's snapshot request topic, and the snapshot task's queue.
    snapshot_requests: Option<(String, mpsc::Sender<()>)>,
    whep_requests: Option<mpsc::Receiver<whep_http::Request>>,
    publisher: Option<Publisher>,
    whip_status: watch::Receiver<Option<WhipStatus>>,
    session_rx: mpsc::UnboundedReceiver<(SessionKey, SessionEvent)>,
    tick: tokio::time::Interval,
    sigterm: tokio::signal::unix::Signal,
    first_online: bool,
    notifier: crate::service::Notifier,
    video_state: watch::Receiver<VideoState>,
    stream: watch::Receiver<StreamInfo>,
    // Kept alive until the daemon returns.
    _web: Option<web::WebServer>,
    _relay_watch: AbortOnDrop,
    _rate_task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    /// Set-up: the peer factory, the hubs, the signaling core, the web and WHEP endpoints, the
    /// broker connection, Home Assistant and the WHIP publisher.
    async fn start(cfg: DaemonConfig) -> anyhow::Result<Daemon> {
        let started = Instant::now();
        for warning in cfg.exposed_secrets() {
            warn!("{warning}");
        }
        let topics = Topics::new(cfg.id.clone())?;
        let factory = PeerFactory::new(peer_settings(&cfg))?;
        // The device's TURN servers are tried now and, while they fail, again and again; new
        // sessions get only those that work.
        let relay_servers = factory.clone();
        let relay_watch = AbortOnDrop(tokio::spawn(crate::peer::relay::watch(
            move || relay_servers.settings().ice_servers_now(),
            cfg.rtc_bind.first().copied(),
            std::sync::Arc::clone(factory.relays()),
        )));
        let hub = Hub::new(cfg.video.clone(), cfg.bitrate_kbps)?;
        // Every viewer's bandwidth estimate → one target for the shared encoder.
        let rate = RateControl::new(bitrate_range(&cfg));
        let rate_task = tokio::spawn(follow_rate(rate.clone(), hub.clone()));
        let video = VideoStatus {
            state: MediaState::Idle,
            codec: VIDEO_CODEC_H264.to_string(),
            width: cfg.video.width,
            height: cfg.video.height,
            fps: cfg.video.fps,
            encoder: crate::video::encode::expected(&cfg.video).to_string(),
            idr_period_ms: None,
        };
        // A named microphone that does not open is an error; `auto` without one is video only.
        let audio = crate::audio::resolve(&cfg.audio)?
            .map(AudioHub::new)
            .transpose()?;
        let audio_status = audio.as_ref().map(|a| AudioStatus {
            codec: "opus".to_string(),
            channels: u32::from(a.channels()),
        });
        let audio_running = audio.as_ref().map(AudioHub::running);
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
        let core = Signaling::new(topics.clone(), limits, status);
        // The WHEP endpoint, only with a token (docs/SECURITY.md, "WHEP").
        let (whep, whep_requests) = match (&cfg.whep_token, cfg.http) {
            (Some(token), Some(_)) => {
                let (endpoint, requests) = whep_http::Endpoint::new(WhepSettings {
                    token: token.clone(),
                    links: cfg
                        .stun
                        .iter()
                        .map(|url| ice_server_link(url, None))
                        .collect(),
                });
                (Some(endpoint), Some(requests))
            }
            _ => (None, None),
        };
        // The viewer page; kept alive until the daemon returns.
        let web = match cfg.http {
            Some(bind) => Some(
                web::start(WebSettings {
                    bind,
                    root: cfg.web_root.clone(),
                    id: cfg.id.clone(),
                    broker: cfg.web_broker_url.clone(),
                    max_connections: cfg.http_max_connections as usize,
                    whep,
                    stun: cfg.stun.clone(),
                })
                .await?,
            ),
            None => None,
        };
        let offline = offline_status_json();
        // Home Assistant discovery and snapshots, only when asked for.
        let home_assistant = cfg.homeassistant.then(|| HomeAssistant::new(&cfg));
        let mut subscriptions = topics.device_filters().to_vec();
        if let Some(ha) = &home_assistant {
            subscriptions.push(ha.request_topic());
        }
        let conn = mqtt::connect(MqttSettings {
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
            subscriptions,
            transport: mqtt::MqttTransport::new(&cfg.mqtt, &cfg.tls),
        })?;
        info!(id = %cfg.id, broker = %cfg.mqtt, video = %cfg.video.source, "spyglass {VERSION} starting");

        let snapshot_requests = home_assistant.as_ref().map(|ha| {
            let (requests, incoming) = mpsc::channel(homeassistant::REQUEST_QUEUE);
            tokio::spawn(homeassistant::snapshots(
                ha.clone(),
                hub.clone(),
                conn.client.clone(),
                incoming,
            ));
            (ha.request_topic(), requests)
        });
        // Publishing to an SFU over WHIP, when asked for.
        let (whip_status_tx, whip_status) = watch::channel(None);
        let publisher = match &cfg.whip {
            Some(endpoint) => Some(Publisher::start(
                WhipSettings {
                    endpoint: url::Url::parse(endpoint)?,
                    token: cfg.whip_token.clone(),
                },
                whip::Media {
                    factory: factory.clone(),
                    hub: hub.clone(),
                    audio: audio.clone(),
                    rate: rate.clone(),
                },
                whip_status_tx,
            )),
            None => None,
        };
        let (session_tx, session_rx) = mpsc::unbounded_channel::<(SessionKey, SessionEvent)>();
        let exec = Executor {
            mqtt: conn.client.clone(),
            factory,
            hub: hub.clone(),
            audio: audio.clone(),
            rate,
            session_tx,
            sessions: HashMap::new(),
            whep_replies: HashMap::new(),
            abandoned: Vec::new(),
            grant,
        };
        let tick = tokio::time::interval(Duration::from_millis(500));
        let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut notifier = crate::service::Notifier::from_env();
        notifier.tick(Instant::now(), hub.heartbeat_age());
        let video_state = hub.state();
        let stream = hub.stream();
        Ok(Daemon {
            started,
            topics,
            hub,
            audio,
            audio_status,
            audio_running,
            core,
            exec,
            conn,
            offline,
            home_assistant,
            snapshot_requests,
            whep_requests,
            publisher,
            whip_status,
            session_rx,
            tick,
            sigterm,
            first_online: true,
            notifier,
            video_state,
            stream,
            _web: web,
            _relay_watch: relay_watch,
            _rate_task: rate_task,
        })
    }

    /// The event loop, until the broker connection ends, SIGINT or SIGTERM.
    async fn serve(&mut self) {
        loop {
            let flow = tokio::select! {
                event = self.conn.events.recv() => self.on_broker(event).await,
                Some((key, event)) = self.session_rx.recv() => {
                    self.on_session(key, event).await;
                    Flow::Go
                },
                Some(request) = async {
                    match self.whep_requests.as_mut() {
                        Some(requests) => requests.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.exec.on_whep_request(&mut self.core, request).await;
                    Flow::Go
                }
                Ok(()) = self.whip_status.changed() => {
                    let report = self.whip_status.borrow_and_update().clone();
                    let action = self.core.set_whip(report);
                    self.exec.run(vec![action]).await;
                    Flow::Go
                }
                Ok(()) = self.video_state.changed() => {
                    let state = match &*self.video_state.borrow_and_update() {
                        VideoState::Idle => MediaState::Idle,
                        VideoState::Live => MediaState::Live,
                        VideoState::Lost(_) => MediaState::Lost,
                    };
                    let actions = self.core.set_video_state(state);
                    self.exec.run(actions).await;
                    Flow::Go
                }
                Ok(()) = self.stream.changed() => {
                    let info = self.stream.borrow_and_update().clone();
                    if let Some(encoder) = info.encoder {
                        let period = info.idr_period.map(|p| p.as_millis() as u64);
                        let actions = self.core.set_video_stream(encoder, period);
                        self.exec.run(actions).await;
                    }
                    Flow::Go
                }
                Some(running) = async {
                    match self.audio_running.as_mut() {
                        Some(rx) => rx.changed().await.ok().map(|_| *rx.borrow()),
                        None => std::future::pending().await,
                    }
                } => {
                    // Audio lost (the microphone went away) or back: video goes on either way.
                    let action = self.core.set_audio(self.audio_status.clone().filter(|_| running));
                    self.exec.run(vec![action]).await;
                    Flow::Go
                }
                _ = self.tick.tick() => {
                    self.on_tick().await;
                    Flow::Go
                }
                _ = tokio::signal::ctrl_c() => Flow::Stop,
                _ = self.sigterm.recv() => Flow::Stop,
            };
            if let Flow::Stop = flow {
                return;
            }
        }
    }

    async fn on_broker(&mut self, event: Option<MqttEvent>) -> Flow {
        match event {
            Some(MqttEvent::Connected) => {
                if self.first_online {
                    info!(ms = self.started.elapsed().as_millis() as u64, "online");
                    self.first_online = false;
                } else {
                    info!("reconnected to the broker");
                }
                let action = self.core.status_action();
                self.exec.run(vec![action]).await;
                if let Some(ha) = &self.home_assistant {
                    for (topic, payload) in ha.discovery() {
                        self.exec.mqtt.publish(topic, payload, true).await;
                    }
                }
                self.notifier.ready();
                self.notifier.status("online");
            }
            Some(MqttEvent::Disconnected(why)) => {
                warn!("broker connection lost: {why}");
                if !self.first_online {
                    self.notifier.status("broker connection lost; reconnecting");
                }
            }
            Some(MqttEvent::Message { topic, payload }) => {
                if let Some((request_topic, requests)) = &self.snapshot_requests
                    && topic == *request_topic
                {
                    // A full queue means snapshots are under way: this one is not needed.
                    let _ = requests.try_send(());
                    return Flow::Go;
                }
                let actions = self.core.on_message(Instant::now(), &topic, &payload);
                self.exec.run(actions).await;
            }
            None => return Flow::Stop,
        }
        Flow::Go
    }

    async fn on_session(&mut self, key: SessionKey, event: SessionEvent) {
        // Only the WHIP publisher's session offers; it reports to the publisher.
        let Some(event) = self.exec.peer_event(&key, event) else {
            return;
        };
        let actions = self.core.on_peer_event(Instant::now(), &key, event);
        self.exec.run(actions).await;
        self.exec.end_abandoned(&mut self.core).await;
    }

    async fn on_tick(&mut self) {
        let actions = self.core.on_tick(Instant::now());
        self.exec.run(actions).await;
        self.exec.end_abandoned(&mut self.core).await;
        // A session whose task died (a panic) never says so: count it out here.
        for (key, handle) in session::take_unreported(&mut self.exec.sessions) {
            let fault = handle.fault().await;
            warn!(cid = %key.cid, "session task {fault}; counting the viewer out");
            let actions = self
                .core
                .on_peer_event(Instant::now(), &key, PeerEvent::Closed);
            self.exec.run(actions).await;
        }
        let now = std::time::SystemTime::now();
        if let Err(err) = self.exec.factory.certificates().renew_if_due(now) {
            warn!("renewing the DTLS certificate: {err}");
        }
        self.notifier.tick(Instant::now(), self.hub.heartbeat_age());
    }

    /// Tear-down: the sessions and the WHIP publisher, the hubs, then offline on the broker.
    async fn stop(mut self) {
        info!("stopping");
        self.notifier.stopping();
        self.exec
            .shut_down(self.publisher.take(), &mut self.session_rx)
            .await;
        self.hub.shutdown();
        if let Some(audio) = &self.audio {
            audio.shutdown();
        }
        self.conn
            .close(Some((self.topics.status(), self.offline)))
            .await;
    }
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
    /// WHEP requests waiting for their session's answer, by session name.
    whep_replies: HashMap<String, oneshot::Sender<Result<String, WhepError>>>,
    /// WHEP resources whose viewer left before the answer reached it.
    abandoned: Vec<String>,
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
                    self.whep_replies.remove(&key.cid);
                }
                Action::WhepAnswer { key, sdp } => {
                    let delivered = self
                        .whep_replies
                        .remove(&key.cid)
                        .is_some_and(|reply| reply.send(Ok(sdp)).is_ok());
                    if !delivered && let Some(id) = key.whep_id() {
                        self.abandoned.push(id.to_string());
                    }
                }
                Action::WhepFailed { key, code, message } => {
                    if let Some(reply) = self.whep_replies.remove(&key.cid) {
                        let _ = reply.send(Err(WhepError::AnswerFailed { code, message }));
                    }
                }
            }
        }
    }

    /// A request from the WHEP endpoint: the signaling core decides, the reply goes back (an
    /// offer's answer later, as [`Action::WhepAnswer`]).
    /// What a session reported, as the signaling core takes it; a session that ended leaves
    /// the table here. `None` for the WHIP publisher's offer, which goes to the publisher.
    fn peer_event(&mut self, key: &SessionKey, event: SessionEvent) -> Option<PeerEvent> {
        Some(match event {
            SessionEvent::Answered(sdp) => PeerEvent::Answered(sdp),
            SessionEvent::Offered(_) => return None,
            SessionEvent::Failed(err) => {
                self.sessions.remove(key);
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
            SessionEvent::LocalCandidate(c) => {
                PeerEvent::LocalCandidate(c.map(|init| IceCandidateMsg {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                    username_fragment: None,
                }))
            }
            SessionEvent::Connected => PeerEvent::Connected,
            SessionEvent::Unreachable(message) => {
                self.sessions.remove(key);
                PeerEvent::Failed {
                    code: ErrorCode::Unreachable,
                    message,
                }
            }
            SessionEvent::Closed(_) => {
                self.sessions.remove(key);
                // A WHEP request still waiting for this session's answer gets 503.
                self.whep_replies.remove(&key.cid);
                PeerEvent::Closed
            }
        })
    }

    /// Tear-down: stop publishing to the SFU and close every session, waiting for them at
    /// most [`SHUTDOWN_SESSION_WAIT`].
    async fn shut_down(
        &mut self,
        publisher: Option<Publisher>,
        session_rx: &mut mpsc::UnboundedReceiver<(SessionKey, SessionEvent)>,
    ) {
        // The SFU's resource is deleted while the viewers' sessions close.
        let unpublished = tokio::spawn(async move {
            if let Some(publisher) = publisher {
                publisher.stop().await;
            }
        });
        for handle in self.sessions.values() {
            handle.close();
        }
        // Let the sessions close their peer connections (ICE and DTLS shut down), but
        // never for long: SIGTERM must end the process within 2 s.
        // A session whose task already died will not report its close: do not wait for it.
        drop(session::take_unreported(&mut self.sessions));
        let closing = self.sessions.len();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_SESSION_WAIT;
        while !self.sessions.is_empty() {
            match tokio::time::timeout_at(deadline, session_rx.recv()).await {
                Ok(Some((key, SessionEvent::Closed(_) | SessionEvent::Failed(_)))) => {
                    self.sessions.remove(&key);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if closing > 0 {
            info!(
                closed = closing - self.sessions.len(),
                of = closing,
                "sessions closed"
            );
        }
        let _ = unpublished.await;
    }

    async fn on_whep_request(&mut self, core: &mut Signaling, request: whep_http::Request) {
        let now = Instant::now();
        match request {
            whep_http::Request::Offer { id, sdp, reply } => match core.whep_offer(now, &id, sdp) {
                Ok(actions) => {
                    self.whep_replies
                        .insert(crate::signaling::whep::session_name(&id), reply);
                    self.run(actions).await;
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            whep_http::Request::Patch {
                id,
                if_match,
                frag,
                reply,
            } => {
                let result = core.whep_patch(now, &id, if_match.as_deref(), frag);
                let _ = reply.send(match result {
                    Ok(actions) => {
                        self.run(actions).await;
                        Ok(())
                    }
                    Err(error) => Err(error),
                });
            }
            whep_http::Request::Delete { id, reply } => {
                let _ = reply.send(match core.whep_delete(&id) {
                    Ok(actions) => {
                        self.run(actions).await;
                        Ok(())
                    }
                    Err(error) => Err(error),
                });
            }
        }
    }

    /// End the WHEP sessions whose viewer went away before its answer arrived (its request
    /// timed out or its connection closed): they would hold a connecting place for nothing.
    async fn end_abandoned(&mut self, core: &mut Signaling) {
        for id in std::mem::take(&mut self.abandoned) {
            if let Ok(actions) = core.whep_delete(&id) {
                tracing::debug!(id, "WHEP viewer left before its answer: session ended");
                self.run(actions).await;
            }
        }
    }
}
