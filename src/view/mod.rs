//! The headless viewer (`spyglass view`): connects to a device exactly as a browser would
//! (MQTT 5 signaling, ICE servers from the device when it hands them out, a recvonly WebRTC
//! offer, trickle ICE), decodes the H.264 it receives, reads the test pattern's frame counter and
//! capture time from the pixels, and reports what it got. When its connection is lost (its
//! network changed), it restarts ICE on the same peer connection and CID, as a browser page does.

pub mod assemble;
pub mod audio;
pub mod data;
pub mod ice_servers;

use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::RTCRtpTransceiverDirection;
use rtc::rtp_transceiver::RTCRtpTransceiverInit;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription,
};

use crate::mqtt::{self, MqttEvent, MqttSettings};
use crate::pattern;
use crate::peer::connectivity::Connectivity;
use crate::peer::{PeerFactory, PeerSettings};
use crate::secret::Secret;
use crate::signaling::protocol::{
    ErrorMsg, IceCandidateMsg, IceServer, SessionDescriptionMsg, TopicKind, Topics, parse_answer,
    parse_error, parse_ice_servers, parse_status,
};

/// How to watch.
#[derive(Debug, Clone)]
pub struct ViewOptions {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TCP, TLS or WebSocket (from the broker URL's scheme) and the TLS files.
    pub transport: mqtt::MqttTransport,
    pub id: String,
    pub cid: String,
    /// Stop after this many decoded frames.
    pub frames: u64,
    pub timeout: Duration,
    pub bind: Vec<IpAddr>,
    pub mdns: bool,
    /// The viewer's own STUN and TURN servers (the device's come on top when it hands them out).
    pub own_servers: ice_servers::OwnServers,
    /// Stop early (successfully) when this is notified. For programs that watch until told.
    pub stop: Option<Arc<tokio::sync::Notify>>,
    /// Open a `spyglass` data channel in the offer and hand it here, for requests to the device.
    pub data_channel: Option<mpsc::UnboundedSender<data::DataLink>>,
}

impl ViewOptions {
    pub fn from_config(cfg: &crate::config::ViewConfig) -> Self {
        ViewOptions {
            host: cfg.mqtt.host.clone(),
            port: cfg.mqtt.port,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            transport: mqtt::MqttTransport::new(&cfg.mqtt, &cfg.tls),
            id: cfg.id.clone(),
            cid: cfg.cid.clone(),
            frames: u64::from(cfg.frames),
            timeout: cfg.timeout,
            bind: cfg.rtc_bind.clone(),
            mdns: cfg.mdns,
            own_servers: ice_servers::OwnServers {
                stun: cfg.stun.clone(),
                turn: cfg.turn.clone(),
                username: cfg.turn_username.clone(),
                password: cfg.turn_password.clone(),
            },
            stop: None,
            data_channel: None,
        }
    }
}

/// Median latency at the start and at the end of a session. The window is one minute, or a
/// third of the session when that is shorter (sessions under 3 s get none).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyDrift {
    pub window_s: f64,
    pub first_median_ms: f64,
    pub last_median_ms: f64,
    /// `last_median_ms - first_median_ms`.
    pub drift_ms: f64,
}

impl LatencyDrift {
    /// `samples`: (seconds since the first frame, latency ms), in order.
    pub fn of(samples: &[(f64, f64)]) -> Option<LatencyDrift> {
        let end = samples.last()?.0;
        let window = (end / 3.0).min(60.0);
        if window < 1.0 {
            return None;
        }
        let first: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 < window)
            .map(|s| s.1)
            .collect();
        let last: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 > end - window)
            .map(|s| s.1)
            .collect();
        let first = Spread::of(&first)?.median;
        let last = Spread::of(&last)?.median;
        Some(LatencyDrift {
            window_s: window,
            first_median_ms: first,
            last_median_ms: last,
            drift_ms: last - first,
        })
    }
}

/// Summary of a distribution of milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub p95: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(Spread {
            min: v[0],
            median: at(0.5),
            p95: at(0.95),
            max: v[v.len() - 1],
        })
    }
}

/// What the viewer got.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ViewReport {
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    /// Offer published → answer received.
    pub answer_ms: Option<f64>,
    /// Offer published → peer connection connected.
    pub connected_ms: Option<f64>,
    /// Offer published → first decoded frame.
    pub first_frame_ms: Option<f64>,
    /// The candidate pair ICE selected, e.g. `local=host/udp remote=relay/udp` (this viewer's
    /// candidate first).
    pub pair: Option<String>,
    /// The ICE server URLs the device handed out (without credentials); empty when it hands out
    /// none or was not asked.
    pub device_ice_servers: Vec<String>,
    /// ICE restarts made after the connection was lost (its network changed).
    pub ice_restarts: u32,
    /// The last ICE restart's offer → connected again.
    pub reconnect_ms: Option<f64>,
    /// Frames decoded after the last ICE restart.
    pub frames_after_restart: u64,
    /// The longest time between two decoded frames (what a network change cost).
    pub longest_frame_gap_ms: Option<f64>,
    /// Capture (from the test pattern) → decoded here, per frame.
    pub latency_ms: Option<Spread>,
    /// Latency creep over the session: median of the first window against the last.
    pub latency_drift: Option<LatencyDrift>,
    /// Frames whose test-pattern code was read.
    pub stamped_frames: u64,
    pub first_counter: Option<u32>,
    pub last_counter: Option<u32>,
    /// Frames missing between consecutive counters, after the first second.
    pub counter_gaps: u64,
    pub lost_packets: u64,
    pub keyframe_requests: u64,
    /// Times the frame counter went backwards: the device's source restarted.
    pub counter_resets: u64,
    /// Error reply from the device, if any: code and message.
    pub error: Option<ErrorMsg>,
    /// Opus packets received and decoded (0 when the device sent no audio).
    pub audio_packets: u64,
    /// Level of the decoded audio, dB relative to full scale.
    pub audio_level_dbfs: Option<f64>,
    /// Test tone: beep onset (decoded) after its wall-clock second, ms.
    pub beep_latency_ms: Option<Spread>,
    /// Test pattern: first flash frame (decoded) after its capture, ms.
    pub flash_latency_ms: Option<Spread>,
    /// Audio later than video (positive) or earlier, from beeps and flashes of the same
    /// seconds: the median of (beep latency - flash latency), ms.
    pub av_offset_ms: Option<f64>,
    /// The decoded audio, 48 kHz mono (not printed).
    #[serde(skip)]
    pub audio_pcm: Vec<i16>,
    /// When each frame was decoded and its mean luma (not printed).
    #[serde(skip)]
    pub luma: Vec<(Instant, f64)>,
}

impl std::fmt::Display for ViewReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<f64>| {
            v.map(|v| format!("{v:.0} ms"))
                .unwrap_or_else(|| "-".into())
        };
        writeln!(
            f,
            "frames decoded:   {} ({}x{})",
            self.frames, self.width, self.height
        )?;
        writeln!(f, "answer after:     {}", ms(self.answer_ms))?;
        writeln!(f, "connected after:  {}", ms(self.connected_ms))?;
        writeln!(f, "first frame after: {}", ms(self.first_frame_ms))?;
        if let Some(pair) = &self.pair {
            writeln!(f, "candidate pair:   {pair}")?;
        }
        if !self.device_ice_servers.is_empty() {
            writeln!(
                f,
                "ICE servers from the device: {}",
                self.device_ice_servers.join(" ")
            )?;
        }
        if self.ice_restarts > 0 {
            writeln!(
                f,
                "ICE restarts:     {} (the last connected again after {}; {} frames since)",
                self.ice_restarts,
                ms(self.reconnect_ms),
                self.frames_after_restart
            )?;
        }
        if let Some(gap) = self.longest_frame_gap_ms {
            writeln!(f, "longest frame gap: {gap:.0} ms")?;
        }
        match &self.latency_ms {
            Some(l) => writeln!(
                f,
                "latency (test pattern): median {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms",
                l.median, l.p95, l.min, l.max
            )?,
            None => writeln!(
                f,
                "latency (test pattern): - (no test pattern in the picture)"
            )?,
        }
        if let Some(d) = &self.latency_drift {
            writeln!(
                f,
                "latency drift: {:+.0} ms (median {:.0} ms in the first {:.0} s, {:.0} ms in the last)",
                d.drift_ms, d.first_median_ms, d.window_s, d.last_median_ms
            )?;
        }
        if let (Some(a), Some(b)) = (self.first_counter, self.last_counter) {
            writeln!(
                f,
                "frame counter:    {a} -> {b}, {} missing at steady state",
                self.counter_gaps
            )?;
        }
        writeln!(
            f,
            "packets lost:     {}, keyframe requests: {}",
            self.lost_packets, self.keyframe_requests
        )?;
        if self.audio_packets > 0 {
            writeln!(
                f,
                "audio packets:    {}, level {:.1} dBFS",
                self.audio_packets,
                self.audio_level_dbfs.unwrap_or(f64::NEG_INFINITY)
            )?;
        }
        if let Some(offset) = self.av_offset_ms {
            writeln!(
                f,
                "A/V offset:       {offset:+.1} ms (audio later when positive; flash and beep)"
            )?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "device error:     {} ({})", e.message, e.code)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{0}")]
    Setup(String),
}

enum News {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
}

struct Forwarder(mpsc::UnboundedSender<News>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Forwarder {
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

/// One decoded picture's facts.
struct Decoded {
    width: u32,
    height: u32,
    stamp: Option<pattern::Stamp>,
    /// The A/V sync flash as read from the pixels.
    flash: Option<bool>,
    at: SystemTime,
    /// Mean of the luma plane.
    mean_luma: f64,
}

/// Watch until `frames` frames are decoded, the device refuses, or the timeout passes.
pub async fn run(opts: ViewOptions) -> Result<ViewReport, ViewError> {
    let (mut viewer, mut news, mut decoded) = Viewer::start(opts).await?;
    let outcome = viewer.watch(&mut news, &mut decoded).await;
    Ok(viewer.finish(outcome).await)
}

/// How a viewing ended: `Err` says why it stopped short (the report is returned either way).
type Outcome = Result<(), String>;

/// What the event loop does after one event.
type Next = ControlFlow<Outcome>;

/// One viewing: its broker connection, its peer connection, and what it has seen so far.
struct Viewer {
    opts: ViewOptions,
    topics: Topics,
    /// To connect again after an ICE restart.
    broker: MqttSettings,
    conn: mqtt::MqttConnection,
    deadline: tokio::time::Instant,
    report: ViewReport,
    pc: Arc<dyn PeerConnection>,
    connectivity: Arc<Connectivity>,
    offered_at: Instant,
    /// Whether the current offer has its answer: remote candidates wait in `early_remote` until then.
    answered: bool,
    early_remote: Vec<RTCIceCandidateInit>,
    /// Set while an ICE restart waits for the connection to come back: its offer's time.
    restarting: Option<Instant>,
    decoded_tx: mpsc::UnboundedSender<Decoded>,
    media_task: Option<tokio::task::JoinHandle<(u64, u64)>>,
    audio_task: Option<tokio::task::JoinHandle<()>>,
    heard: Arc<std::sync::Mutex<audio::Received>>,
    frames: FrameTimes,
}

/// What the decoded frames told so far, beyond the report's counters.
#[derive(Default)]
struct FrameTimes {
    latencies: Vec<f64>,
    /// (seconds since the first frame, latency): for the drift.
    latencies_at: Vec<(f64, f64)>,
    /// Per wall-clock second: the first flash frame's latency.
    flashes: std::collections::BTreeMap<u64, f64>,
    previous_counter: Option<u32>,
    first_frame_at: Option<Instant>,
    last_frame_at: Option<Instant>,
}

/// Frame counter gaps count only after this long since the first frame.
const STEADY_AFTER: Duration = Duration::from_secs(1);

impl Viewer {
    /// Connect to the broker, fetch the device's ICE servers, build the peer connection and
    /// publish the offer. Returns the viewer and its peer connection's and decoder's channels.
    async fn start(
        opts: ViewOptions,
    ) -> Result<
        (
            Viewer,
            mpsc::UnboundedReceiver<News>,
            mpsc::UnboundedReceiver<Decoded>,
        ),
        ViewError,
    > {
        let topics = Topics::new(opts.id.clone()).map_err(|e| ViewError::Setup(e.to_string()))?;
        let broker = MqttSettings {
            host: opts.host.clone(),
            port: opts.port,
            client_id: mqtt::ClientId::Fixed(opts.cid.clone()),
            username: opts.username.clone(),
            password: opts.password.clone(),
            will: None,
            subscriptions: topics
                .viewer_filters(&opts.cid)
                .into_iter()
                .chain([topics.status()])
                .collect(),
            transport: opts.transport.clone(),
        };
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let mut conn = connect_broker(&opts, &broker, deadline).await?;
        let mut report = ViewReport::default();

        // ICE servers: the viewer's own, and the device's when its status says it hands them out.
        let granted = device_ice_servers(&mut conn, &topics, &opts.cid, deadline).await;
        report.device_ice_servers = granted.iter().flat_map(|s| s.urls.clone()).collect();
        let (servers, left_out) = ice_servers::combine(&opts.own_servers, &granted);
        if !left_out.is_empty() {
            info!(
                "TURN servers from the device left out (this viewer relays over UDP only): {}",
                left_out.join(" ")
            );
        }
        let factory = PeerFactory::new(PeerSettings {
            bind: opts.bind.clone(),
            mdns: opts.mdns,
            ice_servers: servers,
            // The viewer trusts the device it asked for: no policy on the device's candidates.
            remote: Default::default(),
            connect_timeout: opts.timeout,
            check_interval: Some(crate::peer::VIEWER_CHECK_INTERVAL),
            turn_rest: None,
            regather_on_ice_restart: true,
            ..Default::default()
        })
        .map_err(|e| ViewError::Setup(e.to_string()))?;
        let (news_tx, news) = mpsc::unbounded_channel();
        let (pc, connectivity) = factory
            .build_watched_for(Arc::new(Forwarder(news_tx)), crate::peer::viewer_codecs())
            .await
            .map_err(|e| ViewError::Setup(e.to_string()))?;
        let offer = match make_offer(&pc, opts.data_channel.as_ref()).await {
            Ok(Some(offer)) => offer,
            Ok(None) => return Err(ViewError::Setup("no local offer".into())),
            Err(err) => return Err(ViewError::Setup(format!("creating the offer: {err}"))),
        };
        conn.client
            .publish(
                topics.offer(&opts.cid),
                SessionDescriptionMsg::offer(offer.sdp).to_json(),
                false,
            )
            .await;
        let offered_at = Instant::now();
        let (decoded_tx, decoded) = mpsc::unbounded_channel::<Decoded>();
        let viewer = Viewer {
            opts,
            topics,
            broker,
            conn,
            deadline,
            report,
            pc,
            connectivity,
            offered_at,
            answered: false,
            early_remote: Vec::new(),
            restarting: None,
            decoded_tx,
            media_task: None,
            audio_task: None,
            heard: Arc::new(std::sync::Mutex::new(audio::Received::default())),
            frames: FrameTimes::default(),
        };
        Ok((viewer, news, decoded))
    }

    fn ms_since_offer(&self) -> f64 {
        self.offered_at.elapsed().as_secs_f64() * 1000.0
    }

    /// The event loop: until told to stop, the deadline, enough frames, or an end.
    async fn watch(
        &mut self,
        news: &mut mpsc::UnboundedReceiver<News>,
        decoded: &mut mpsc::UnboundedReceiver<Decoded>,
    ) -> Outcome {
        loop {
            let next = tokio::select! {
                _ = async { match &self.opts.stop { Some(n) => n.notified().await, None => std::future::pending().await } } => Next::Break(Ok(())),
                _ = tokio::time::sleep_until(self.deadline) => Next::Break(Err(format!(
                    "timed out after {:?} with {} of {} frames", self.opts.timeout, self.report.frames, self.opts.frames))),
                event = self.conn.events.recv() => self.on_broker(event).await,
                item = news.recv() => self.on_peer(item).await,
                Some(d) = decoded.recv() => self.on_frame(d),
            };
            if let Next::Break(outcome) = next {
                return outcome;
            }
        }
    }

    async fn on_broker(&mut self, event: Option<MqttEvent>) -> Next {
        match event {
            Some(MqttEvent::Message { topic, payload }) => {
                let Some((kind, Some(cid))) = self.topics.parse(&topic) else {
                    return Next::Continue(());
                };
                if cid != self.opts.cid {
                    return Next::Continue(());
                }
                match kind {
                    TopicKind::Answer => self.on_answer(&payload).await,
                    TopicKind::Ice => self.on_remote_candidate(&payload).await,
                    TopicKind::Error => match parse_error(&payload) {
                        Ok(e) => {
                            let text =
                                format!("device refused: {} ({})", e.message, e.code.as_str());
                            self.report.error = Some(e);
                            Next::Break(Err(text))
                        }
                        Err(err) => Next::Break(Err(format!("unreadable error reply: {err}"))),
                    },
                    _ => Next::Continue(()),
                }
            }
            Some(MqttEvent::Disconnected(why)) => {
                warn!("broker: {why}");
                Next::Continue(())
            }
            Some(MqttEvent::Connected) => Next::Continue(()),
            None => Next::Break(Err("broker connection ended".into())),
        }
    }

    async fn on_answer(&mut self, payload: &[u8]) -> Next {
        let sdp = match parse_answer(payload) {
            Ok(sdp) => sdp,
            Err(err) => return Next::Break(Err(format!("bad answer message: {err}"))),
        };
        let answer = match RTCSessionDescription::answer(sdp) {
            Ok(a) => a,
            Err(err) => return Next::Break(Err(format!("bad answer SDP: {err}"))),
        };
        if let Err(err) = self.pc.set_remote_description(answer).await {
            return Next::Break(Err(format!("answer rejected: {err}")));
        }
        self.report.answer_ms = Some(self.ms_since_offer());
        self.answered = true;
        for c in self.early_remote.drain(..) {
            let _ = self.pc.add_ice_candidate(c).await;
        }
        Next::Continue(())
    }

    async fn on_remote_candidate(&mut self, payload: &[u8]) -> Next {
        let Ok(msg) = serde_json::from_slice::<IceCandidateMsg>(payload) else {
            return Next::Continue(());
        };
        let init = RTCIceCandidateInit {
            candidate: msg.candidate,
            sdp_mid: msg.sdp_mid,
            sdp_mline_index: msg.sdp_mline_index,
            ..Default::default()
        };
        if self.answered {
            if let Err(err) = self.pc.add_ice_candidate(init).await {
                debug!("remote candidate: {err}");
            }
        } else {
            self.early_remote.push(init);
        }
        Next::Continue(())
    }

    async fn on_peer(&mut self, item: Option<News>) -> Next {
        match item {
            Some(News::Candidate(mut init)) => {
                init.sdp_mid = Some("0".into());
                init.sdp_mline_index = Some(0);
                let msg = IceCandidateMsg {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                    username_fragment: init.username_fragment.filter(|u| !u.is_empty()),
                };
                self.conn
                    .client
                    .publish(self.topics.ice(&self.opts.cid), msg.to_json(), false)
                    .await;
            }
            Some(News::State(RTCPeerConnectionState::Connected)) => {
                match self.restarting.take() {
                    Some(at) => {
                        let ms = at.elapsed().as_secs_f64() * 1000.0;
                        self.report.reconnect_ms = Some(ms);
                        self.report.frames_after_restart = 0;
                        info!(ms, "connected again after the ICE restart");
                    }
                    None => self.report.connected_ms = Some(self.ms_since_offer()),
                }
                self.report.pair = self.connectivity.selected_pair();
            }
            // The connection was lost after it worked (the network changed, or went away for
            // a while): restart ICE on the same peer connection and CID (docs/PROTOCOL.md,
            // "Replacing a session"), once per loss.
            Some(News::State(
                state @ (RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed),
            )) if self.report.connected_ms.is_some()
                && self.restarting.is_none()
                && self.report.ice_restarts < MAX_ICE_RESTARTS =>
            {
                return self.restart(state).await;
            }
            Some(News::State(
                state @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed),
            )) => {
                return Next::Break(Err(format!("connection {state}")));
            }
            Some(News::State(_)) => {}
            Some(News::Track(track)) if track.kind().await == RtpCodecKind::Audio => {
                if self.audio_task.is_none() {
                    self.audio_task =
                        Some(tokio::spawn(audio::receive(track, Arc::clone(&self.heard))));
                }
            }
            Some(News::Track(track)) => {
                if self.media_task.is_none() {
                    self.media_task = Some(tokio::spawn(receive(track, self.decoded_tx.clone())));
                }
            }
            None => return Next::Break(Err("peer connection gone".into())),
        }
        Next::Continue(())
    }

    /// Restart ICE after the connection was lost, on a new broker connection.
    async fn restart(&mut self, state: RTCPeerConnectionState) -> Next {
        info!("connection {state}: restarting ICE");
        // The network may have changed under us, and then the broker connection is
        // dead too, which its keepalive would tell only much later: a new one.
        match reconnect_broker(&self.broker, self.deadline).await {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.conn, fresh);
                tokio::spawn(old.close(None));
            }
            Err(err) => return Next::Break(Err(err)),
        }
        match restart_ice(&self.pc).await {
            Ok(sdp) => {
                self.conn
                    .client
                    .publish(
                        self.topics.offer(&self.opts.cid),
                        SessionDescriptionMsg::offer(sdp).to_json(),
                        false,
                    )
                    .await;
                self.restarting = Some(Instant::now());
                self.report.ice_restarts += 1;
                self.answered = false;
                Next::Continue(())
            }
            Err(err) => Next::Break(Err(format!("ICE restart: {err}"))),
        }
    }

    fn on_frame(&mut self, d: Decoded) -> Next {
        let report = &mut self.report;
        let seen = &mut self.frames;
        report.frames += 1;
        report.frames_after_restart += 1;
        if let Some(last) = seen.last_frame_at {
            let gap = last.elapsed().as_secs_f64() * 1000.0;
            if report.longest_frame_gap_ms.is_none_or(|g| gap > g) {
                report.longest_frame_gap_ms = Some(gap);
            }
        }
        seen.last_frame_at = Some(Instant::now());
        report.luma.push((Instant::now(), d.mean_luma));
        report.width = d.width;
        report.height = d.height;
        let now = Instant::now();
        if seen.first_frame_at.is_none() {
            seen.first_frame_at = Some(now);
            report.first_frame_ms = Some(self.offered_at.elapsed().as_secs_f64() * 1000.0);
            info!(ms = report.first_frame_ms, "first frame decoded");
        }
        if let Some(stamp) = d.stamp {
            report.stamped_frames += 1;
            let decoded_ms =
                d.at.duration_since(UNIX_EPOCH)
                    .map(|t| t.as_millis() as u64)
                    .unwrap_or(0);
            let captured = stamp.captured_ms;
            let low = decoded_ms & pattern::CAPTURED_MS_MASK;
            let latency = low.wrapping_sub(captured) as i64 as f64;
            seen.latencies.push(latency);
            if let Some(first) = seen.first_frame_at {
                seen.latencies_at
                    .push((now.duration_since(first).as_secs_f64(), latency));
            }
            if d.flash == Some(true) {
                seen.flashes.entry(captured / 1000).or_insert(latency);
            }
            if report.first_counter.is_none() {
                report.first_counter = Some(stamp.frame);
            }
            if let Some(prev) = seen.previous_counter {
                let steady = seen
                    .first_frame_at
                    .is_some_and(|t| now.duration_since(t) >= STEADY_AFTER);
                if steady && stamp.frame > prev + 1 {
                    report.counter_gaps += u64::from(stamp.frame - prev - 1);
                }
                if stamp.frame < prev {
                    report.counter_resets += 1;
                }
            }
            seen.previous_counter = Some(stamp.frame);
            report.last_counter = Some(stamp.frame);
        }
        if report.frames >= self.opts.frames {
            return Next::Break(Ok(()));
        }
        Next::Continue(())
    }

    /// Close everything and complete the report: latency, audio, A/V offset, lost packets.
    async fn finish(mut self, outcome: Outcome) -> ViewReport {
        let mut report = std::mem::take(&mut self.report);
        let seen = &self.frames;
        report.latency_ms = Spread::of(&seen.latencies);
        report.latency_drift = LatencyDrift::of(&seen.latencies_at);
        let _ = self.pc.close().await;
        if let Some(task) = self.audio_task.take() {
            task.abort();
            let _ = task.await;
        }
        {
            let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
            report.audio_packets = heard.packets;
            report.audio_level_dbfs = heard.rms_dbfs();
            let beeps = heard.beep_latencies();
            let flashes = &seen.flashes;
            // The first flash and beep may be cut by the start of the stream: use whole ones.
            let first = beeps
                .keys()
                .next()
                .copied()
                .max(flashes.keys().next().copied());
            let offsets: Vec<f64> = beeps
                .iter()
                .filter(|(s, _)| Some(**s) > first)
                .filter_map(|(s, a)| flashes.get(s).map(|v| a - v))
                .collect();
            report.beep_latency_ms = Spread::of(&beeps.values().copied().collect::<Vec<_>>());
            report.flash_latency_ms = Spread::of(&flashes.values().copied().collect::<Vec<_>>());
            report.av_offset_ms = Spread::of(&offsets).map(|s| s.median);
            report.audio_pcm = heard.pcm.clone();
        }
        if let Some(task) = self.media_task.take() {
            task.abort();
            if let Ok((lost, requests)) = task.await {
                report.lost_packets = lost;
                report.keyframe_requests = requests;
            }
        }
        self.conn.close(None).await;
        if let Err(why) = outcome {
            warn!("{why}");
        }
        report
    }
}

/// A connection to the broker, waited for until subscribed, so that no reply can be missed.
async fn connect_broker(
    opts: &ViewOptions,
    broker: &MqttSettings,
    deadline: tokio::time::Instant,
) -> Result<mqtt::MqttConnection, ViewError> {
    let mut conn = mqtt::connect(broker.clone()).map_err(|e| ViewError::Setup(format!("{e:#}")))?;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, conn.events.recv()).await {
            Ok(Some(MqttEvent::Connected)) => return Ok(conn),
            Ok(Some(MqttEvent::Disconnected(why))) => {
                debug!("broker: {why}");
                last_error = Some(why);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                conn.close(None).await;
                return Err(ViewError::Setup(format!(
                    "could not connect to the broker at {}:{} ({}){}",
                    opts.host,
                    opts.port,
                    opts.transport.scheme.as_str(),
                    last_error.map(|e| format!(": {e}")).unwrap_or_default()
                )));
            }
        }
    }
}

/// Add the recvonly video and audio transceivers (and the data channel when asked), then make
/// and set the offer.
async fn make_offer(
    pc: &Arc<dyn PeerConnection>,
    data_channel: Option<&mpsc::UnboundedSender<data::DataLink>>,
) -> Result<Option<RTCSessionDescription>, webrtc::error::Error> {
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await?;
    }
    if let Some(links) = data_channel {
        let channel = pc
            .create_data_channel(crate::peer::datachannel::LABEL, None)
            .await?;
        let _ = links.send(data::DataLink {
            channel,
            pc: Arc::clone(pc),
        });
    }
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    Ok(pc.local_description().await)
}

/// ICE restarts at most per run.
const MAX_ICE_RESTARTS: u32 = 5;
/// How long to wait for the device's retained status before offering without its ICE servers.
const STATUS_WAIT: Duration = Duration::from_secs(2);
/// How long to wait for the device's ICE servers once asked.
const ICE_SERVERS_WAIT: Duration = Duration::from_secs(3);

/// The device's ICE servers (docs/PROTOCOL.md, "ICE servers"): read its retained status, and if
/// it hands servers out, ask on this CID's topic and wait for the reply. Nothing when the device
/// does not (or does not say so in time): the viewer then uses its own servers only.
async fn device_ice_servers(
    conn: &mut mqtt::MqttConnection,
    topics: &Topics,
    cid: &str,
    deadline: tokio::time::Instant,
) -> Vec<IceServer> {
    let wait = |d: Duration| deadline.min(tokio::time::Instant::now() + d);
    let status_by = wait(STATUS_WAIT);
    let offers = loop {
        match tokio::time::timeout_at(status_by, conn.events.recv()).await {
            Ok(Some(MqttEvent::Message { topic, payload })) if topic == topics.status() => {
                match parse_status(&payload) {
                    Ok(Some(status)) => break status.ice_servers,
                    Ok(None) => {
                        debug!("the device's status says it is offline");
                        break false;
                    }
                    Err(err) => {
                        debug!("unreadable status: {err}");
                        break false;
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                debug!("no status from the device: offering without its ICE servers");
                break false;
            }
        }
    };
    if !offers {
        return vec![];
    }
    conn.client
        .publish(topics.ice_servers(cid), b"{}".to_vec(), false)
        .await;
    let reply_by = wait(ICE_SERVERS_WAIT);
    loop {
        match tokio::time::timeout_at(reply_by, conn.events.recv()).await {
            Ok(Some(MqttEvent::Message { topic, payload })) if topic == topics.ice_servers(cid) => {
                match parse_ice_servers(&payload) {
                    Ok(Some(reply)) => {
                        if let Some(err) = reply.error {
                            warn!(
                                "the device refused ICE servers: {} ({})",
                                err.message, err.code
                            );
                        }
                        return reply.ice_servers;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        warn!("unreadable ICE servers from the device: {err}");
                        return vec![];
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                warn!("the device did not hand out ICE servers in time: offering without them");
                return vec![];
            }
        }
    }
}

/// A new connection to the broker, subscribed, to replace one that may be dead.
async fn reconnect_broker(
    settings: &MqttSettings,
    deadline: tokio::time::Instant,
) -> Result<mqtt::MqttConnection, String> {
    let mut conn = mqtt::connect(settings.clone()).map_err(|e| format!("{e:#}"))?;
    loop {
        match tokio::time::timeout_at(deadline, conn.events.recv()).await {
            Ok(Some(MqttEvent::Connected)) => return Ok(conn),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err("no broker connection after the ICE restart".into()),
        }
    }
}

/// Restart ICE (new credentials, new local candidates) and make the offer that carries it.
async fn restart_ice(
    pc: &Arc<dyn webrtc::peer_connection::PeerConnection>,
) -> Result<String, webrtc::error::Error> {
    pc.restart_ice().await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    Ok(pc
        .local_description()
        .await
        .map(|d| d.sdp)
        .unwrap_or_default())
}

/// Receive RTP, assemble access units, decode on a blocking thread. Returns (lost packets,
/// keyframe requests sent) when the track ends.
async fn receive(
    track: Arc<dyn TrackRemote>,
    decoded: mpsc::UnboundedSender<Decoded>,
) -> (u64, u64) {
    let (au_tx, au_rx) = std::sync::mpsc::channel::<Bytes>();
    let decoder_thread = tokio::task::spawn_blocking(move || decode_loop(au_rx, decoded));
    let mut assembler = assemble::Assembler::new();
    let mut requests = 0u64;
    let mut last_request: Option<Instant> = None;
    let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let pushed = assembler.push(
            packet.header.sequence_number,
            packet.header.timestamp,
            packet.header.marker,
            &packet.payload,
        );
        if let Some(au) = pushed.access_unit
            && au_tx.send(au).is_err()
        {
            break;
        }
        let due = last_request.is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
        if pushed.request_keyframe && due {
            last_request = Some(Instant::now());
            requests += 1;
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: packet.header.ssrc.max(media_ssrc),
            };
            if let Err(err) = track.write_rtcp(vec![Box::new(pli)]).await {
                debug!("sending PLI: {err}");
            }
        }
    }
    drop(au_tx);
    let _ = decoder_thread.await;
    (assembler.lost_packets, requests)
}

fn decode_loop(
    access_units: std::sync::mpsc::Receiver<Bytes>,
    decoded: mpsc::UnboundedSender<Decoded>,
) {
    let mut decoder = match Decoder::new() {
        Ok(d) => d,
        Err(err) => {
            warn!("H.264 decoder: {err}");
            return;
        }
    };
    while let Ok(au) = access_units.recv() {
        match decoder.decode(&au) {
            Ok(Some(yuv)) => {
                let at = SystemTime::now();
                let (w, h) = yuv.dimensions();
                let (stride, _, _) = yuv.strides();
                let stamp = pattern::read(yuv.y(), w as u32, h as u32, stride);
                let flash = pattern::read_flash(yuv.y(), w as u32, h as u32, stride);
                let sum: u64 = yuv
                    .y()
                    .chunks(stride)
                    .take(h)
                    .flat_map(|row| &row[..w.min(row.len())])
                    .map(|&v| u64::from(v))
                    .sum();
                let mean_luma = sum as f64 / (w * h).max(1) as f64;
                let item = Decoded {
                    mean_luma,
                    width: w as u32,
                    height: h as u32,
                    stamp,
                    flash,
                    at,
                };
                if decoded.send(item).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(err) => debug!("decode error: {err}"),
        }
    }
}

#[cfg(test)]
mod drift_tests {
    use super::LatencyDrift;

    #[test]
    fn drift_compares_the_first_and_last_window() {
        // 10 minutes at 10 samples a second; latency creeps from 50 to 80 ms.
        let samples: Vec<(f64, f64)> = (0..6000)
            .map(|i| (f64::from(i) / 10.0, 50.0 + 30.0 * f64::from(i) / 6000.0))
            .collect();
        let d = LatencyDrift::of(&samples).unwrap();
        assert_eq!(d.window_s, 60.0);
        assert!((d.first_median_ms - 51.5).abs() < 0.1, "{d:?}");
        assert!((d.last_median_ms - 78.5).abs() < 0.1, "{d:?}");
        assert!((d.drift_ms - 27.0).abs() < 0.1, "{d:?}");
        // Short sessions: a third of the session; under 3 s none.
        assert_eq!(
            LatencyDrift::of(&samples[..300]).unwrap().window_s,
            29.9 / 3.0
        );
        assert!(LatencyDrift::of(&samples[..20]).is_none());
        assert!(LatencyDrift::of(&[]).is_none());
    }
}
