//! One viewer's WebRTC session on the device: answers the viewer's offer with a sendonly H.264
//! track (and a sendonly Opus track when the offer has audio and the device has audio; an audio
//! m-line is answered inactive otherwise), trickles candidates both ways, and, once connected,
//! streams the hubs' shared encoded media and turns the viewer's PLI/FIR into keyframe requests.
//! When the offer has a data (SCTP) m-line, the answer accepts it: a channel the viewer labels
//! `spyglass` is served by [`super::control`]; channels with other labels are accepted and ignored.
//!
//! Video is packetized once for every viewer ([`super::packetize`]) and sent through the
//! device's own interceptor chain ([`super::chain`]); per viewer, the send loop decides frame by
//! frame what the viewer's link carries: temporal layers above what [`RateControl`] gives it are
//! skipped, and a viewer whose pacer backlog grows too long gets nothing until it has drained and
//! a keyframe comes. Keyframe requests go through the viewer's [`KeyframePolicy`].
//!
//! A/V sync: both tracks' RTP timestamps advance by capture-instant differences on the one
//! monotonic clock, and the RTCP sender reports of `webrtc` map RTP time to the time a packet
//! was *sent*. So that a viewer's lip-sync (which trusts those reports) lines the tracks up, video
//! is sent as long after its capture as audio is (audio waits for its 20 ms packet to fill).
//!
//! A new offer from the same viewer (an ICE restart after its network changed, or a changed set
//! of tracks; the signaling core decides, see `docs/PROTOCOL.md`, "Replacing a session") is
//! applied to the session's own peer connection: DTLS, SRTP and the data channels carry on, and
//! a keyframe is requested when the connection comes back.
//!
//! A session runs as its own task. It reports to the signaling loop through [`SessionEvent`]s
//! tagged with its [`SessionKey`], and takes commands through its [`SessionHandle`], which also
//! tells its owner when the task ended without its final event (a panic). The viewer's remote
//! candidates reach webrtc only through the session's [`CandidateGate`].
//!
//! The same session also publishes to an SFU over WHIP ([`start_offer`]): then the device makes
//! the offer (sendonly video, and audio when it has a microphone) and is given the answer; the
//! media, the rate control, the keyframe requests and the end of the connection are handled as
//! for a viewer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::peer_connection::transport::RTCDtlsTransportState;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::transport::DtlsTransport;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::{RtpSender, RtpTransceiver};

use super::bitrate::{RateControl, ViewerRate};
use super::candidates::{self, CandidateGate, LocalAddresses};
use super::connectivity::Connectivity;
use super::datachannel::{self, ChannelContext, SessionCounters};
use super::keyframes::{Cause, KeyframePolicy};
use super::link::Link;
use super::packetize::{self, RtpStream};
use super::sdp::{OfferVideo, offer_has_audio, offer_video, offered_h264, passthrough_codec};
use super::{ICE_VANISHED_AFTER, PeerFactory, h264_codec, h264_codecs, opus_codec};
use crate::audio::CHUNK_DURATION;
use crate::audio::hub::{AudioHub, AudioSubscription};
use crate::signaling::SessionKey;
use crate::video::encode::passthrough;
use crate::video::h264::ProfileLevel;
use crate::video::hub::{Hub, KeyframeReason, StreamInfo, Subscription};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;

/// Why an offer could not be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// The SDP could not be parsed or applied.
    BadOffer(String),
    /// The offer has no H.264 we can send.
    Unsupported(String),
    /// Something failed on our side.
    Internal(String),
}

/// What a session tells the signaling loop.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The answer SDP, to send to the viewer (again after each renegotiation).
    Answered(String),
    /// The offer SDP (a session started with [`start_offer`]); its answer goes to
    /// [`SessionHandle::set_answer`].
    Offered(String),
    /// The offer (or a renegotiating one) could not be answered; the session has ended.
    Failed(AnswerError),
    /// A local ICE candidate to trickle to the viewer; `None` is the end of candidates.
    LocalCandidate(Option<RTCIceCandidateInit>),
    /// Media flows.
    Connected,
    /// No connection came about within the connect timeout (or ICE failed before it): the
    /// session has ended. The text says which candidate types were tried.
    Unreachable(String),
    /// The session has ended (closed, failed, or told to close).
    Closed(String),
}

enum Command {
    AddCandidate(Option<RTCIceCandidateInit>),
    Renegotiate(String),
    RemoteAnswer(String),
    Close,
}

/// Remote candidates waiting for the session to take them; more are dropped (a viewer that
/// floods its session with candidates gets no more than [`candidates::MAX_REMOTE_CANDIDATES`]
/// of them used anyway).
pub const MAX_QUEUED_CANDIDATES: usize = 64;

/// Commands to a running session. Dropping the handle closes the session.
pub struct SessionHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// Candidates sent to the session and not yet taken by it.
    queued: Arc<AtomicUsize>,
    /// Dropping candidates (logged once per run of drops).
    dropping: AtomicBool,
    task: JoinHandle<()>,
    /// Set when the session has sent its final event (`Failed` or `Closed`).
    reported: Arc<AtomicBool>,
}

impl SessionHandle {
    /// A remote candidate from the viewer (`None`: end of candidates).
    pub fn add_candidate(&self, candidate: Option<RTCIceCandidateInit>) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_CANDIDATES {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if !self.dropping.swap(true, Ordering::Relaxed) {
                debug!(
                    "remote candidates dropped: {MAX_QUEUED_CANDIDATES} already wait for the session"
                );
            }
            return;
        }
        self.dropping.store(false, Ordering::Relaxed);
        let _ = self.commands.send(Command::AddCandidate(candidate));
    }

    /// A new offer from the same viewer, to apply to this session's peer connection.
    pub fn renegotiate(&self, offer_sdp: String) {
        let _ = self.commands.send(Command::Renegotiate(offer_sdp));
    }

    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// The remote answer to this session's offer ([`start_offer`]).
    pub fn set_answer(&self, sdp: String) {
        let _ = self.commands.send(Command::RemoteAnswer(sdp));
    }

    /// The session's task is over without having sent its final event: it panicked (or was
    /// cancelled). Nothing more will come from it; its owner must count it out.
    pub fn ended_unreported(&self) -> bool {
        self.task.is_finished() && !self.reported.load(Ordering::Acquire)
    }

    /// Why the task ended, for the log (once [`Self::ended_unreported`] says it did).
    pub async fn fault(self) -> String {
        match self.task.await {
            Ok(()) => "ended without a final event".to_string(),
            Err(err) if err.is_panic() => {
                let panic = err.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-text payload".to_string());
                format!("panicked: {message}")
            }
            Err(err) => format!("cancelled: {err}"),
        }
    }
}

/// The sessions whose tasks ended without reporting, taken out of `sessions`.
pub fn take_unreported<K: Clone + Eq + std::hash::Hash>(
    sessions: &mut std::collections::HashMap<K, SessionHandle>,
) -> Vec<(K, SessionHandle)> {
    let dead: Vec<K> = sessions
        .iter()
        .filter(|(_, handle)| handle.ended_unreported())
        .map(|(key, _)| key.clone())
        .collect();
    dead.into_iter()
        .filter_map(|key| sessions.remove(&key).map(|handle| (key, handle)))
        .collect()
}

/// An ICE restart that has not connected again after this long ends the session.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a connected session checks whether the viewer closed DTLS.
const DTLS_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// A viewer that connects starts with the frames buffered since its answer (no wait for a new
/// keyframe) when their keyframe is at most this old; an older backlog would only add delay.
const MAX_BACKLOG_AGE: Duration = Duration::from_millis(100);
/// A viewer whose pacer needs longer than this to send what it holds gets no frames above the
/// base layer until it has caught up.
pub const SOFT_BACKLOG: Duration = Duration::from_millis(150);
/// A viewer whose pacer needs longer than this gets no frames at all: its picture stops, and
/// starts again at a keyframe once the backlog is below [`SOFT_BACKLOG`]. Without this the pacer
/// would hold seconds of stale video for a viewer whose link collapsed.
pub const HARD_BACKLOG: Duration = Duration::from_millis(400);
/// INFO lines about one viewer's trouble (stalls, keyframe requests) at most this often.
const TROUBLE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Start a session that answers `offer_sdp`. Events go to `events`.
pub fn start(
    factory: PeerFactory,
    hub: Hub,
    audio: Option<AudioHub>,
    rate: RateControl,
    key: SessionKey,
    offer_sdp: String,
    events: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
) -> SessionHandle {
    spawn_session(
        factory,
        Media { hub, audio, rate },
        key,
        Role::Answer(offer_sdp),
        events,
    )
}

/// Start a session that makes the offer (publishing to an SFU): events go to `events`, the
/// first being [`SessionEvent::Offered`].
pub fn start_offer(
    factory: PeerFactory,
    hub: Hub,
    audio: Option<AudioHub>,
    rate: RateControl,
    key: SessionKey,
    events: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
) -> SessionHandle {
    spawn_session(
        factory,
        Media { hub, audio, rate },
        key,
        Role::Offer,
        events,
    )
}

/// Which side of the offer/answer a session takes.
enum Role {
    /// Answer a viewer's offer.
    Answer(String),
    /// Offer, and be given the answer.
    Offer,
}

fn spawn_session(
    factory: PeerFactory,
    media: Media,
    key: SessionKey,
    role: Role,
    events: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
) -> SessionHandle {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let session = run(
        factory,
        media,
        key.clone(),
        role,
        events.clone(),
        command_rx,
        Arc::clone(&queued),
    );
    let (task, reported) = spawn_supervised(key, events, session);
    SessionHandle {
        commands,
        queued,
        dropping: AtomicBool::new(false),
        task,
        reported,
    }
}

/// Run a session's future as a task that sends the final event the future returns and then marks
/// it sent; a task that ends otherwise (a panic) leaves the mark unset, which its owner sees
/// through [`SessionHandle::ended_unreported`].
fn spawn_supervised(
    key: SessionKey,
    events: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
    session: impl std::future::Future<Output = SessionEvent> + Send + 'static,
) -> (JoinHandle<()>, Arc<AtomicBool>) {
    let reported = Arc::new(AtomicBool::new(false));
    let mark = Arc::clone(&reported);
    let task = tokio::spawn(async move {
        let last = session.await;
        mark.store(true, Ordering::Release);
        let _ = events.send((key, last));
    });
    (task, reported)
}

/// Peer connection callbacks, forwarded into the session task.
enum PeerNews {
    Candidate(RTCIceCandidateInit),
    GatheringComplete,
    State(RTCPeerConnectionState),
    DataChannel(Arc<dyn DataChannel>),
}

struct Forwarder(mpsc::UnboundedSender<PeerNews>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Forwarder {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.0.send(PeerNews::Candidate(init));
            }
            Err(err) => debug!("local candidate not serialisable: {err}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.send(PeerNews::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.0.send(PeerNews::State(state));
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.0.send(PeerNews::DataChannel(channel));
    }
}

/// What a session streams from, shared by every session.
struct Media {
    hub: Hub,
    audio: Option<AudioHub>,
    rate: RateControl,
}

struct Answered {
    pc: Arc<dyn PeerConnection>,
    /// How the viewer's link fares, from the interceptors.
    link: Arc<Link>,
    /// What ICE tried and selected.
    connectivity: Arc<Connectivity>,
    /// The transceivers we send on; every other m-line is answered inactive (again at each
    /// renegotiation, which may add m-lines).
    ours: Vec<RTCRtpTransceiverId>,
    /// Watched for the viewer's DTLS close_notify: a viewer that closes its peer connection ends
    /// the session at once, instead of when ICE consent lapses.
    dtls: Option<Arc<dyn DtlsTransport>>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    mid: String,
    payload_type: u8,
    audio: Option<AudioSend>,
}

/// The audio half of a session, when the offer has audio and the device sends it.
struct AudioSend {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    payload_type: u8,
}

/// The camera's track, stream `spyglass` (clients such as picamera.js need a stream id), SSRC
/// `ssrc`. Packets come ready-made from the packetizer shared by every viewer (`packetize`); RTX,
/// when the peer negotiates it, goes out on its own SSRC (`retransmit`).
fn video_track(ssrc: u32, codec: RTCRtpCodec) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "spyglass".to_string(),
        "video".to_string(),
        "camera".to_string(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                rtx: Some(RTCRtpRtxParameters {
                    ssrc: ssrc.wrapping_add(1),
                }),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )))
}

/// The microphone's track, in the same stream as the camera's.
fn audio_track(ssrc: u32) -> Result<Arc<TrackLocalStaticSample>, webrtc::error::Error> {
    Ok(Arc::new(TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            "spyglass".to_string(),
            "audio".to_string(),
            "microphone".to_string(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus_codec().rtp_codec,
                ..Default::default()
            }],
        ),
    )?))
}

/// Our transceivers for a viewer's offer start sendrecv: the offer's m-lines are matched to
/// transceivers whose direction fits theirs (webrtc 0.21 `set_remote_description`: a recvonly
/// m-line takes sendonly or sendrecv, a sendrecv one recvonly or sendrecv), and clients such as
/// picamera.js offer audio sendrecv (their microphone). Set to sendonly before the answer.
fn matches_any_offer() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendrecv,
        ..Default::default()
    })
}

fn sendonly() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        ..Default::default()
    })
}

/// Refusals logged one by one per session; the rest are only counted (a flood stays out of the log).
const LOGGED_REFUSALS: usize = 5;

/// Hand one remote candidate to webrtc if the session's gate admits it.
async fn hand_in(
    pc: &Arc<dyn PeerConnection>,
    gate: &mut CandidateGate,
    cid: &str,
    candidate: RTCIceCandidateInit,
) {
    if !candidate.candidate.is_empty() {
        match gate.admit(&candidate.candidate) {
            Ok(true) => {}
            Ok(false) => return,
            Err(refusal) => {
                if gate.refused() <= LOGGED_REFUSALS {
                    let shown: String = candidate.candidate.chars().take(120).collect();
                    debug!(cid, candidate = %shown, "remote candidate refused: {refusal}");
                }
                return;
            }
        }
    }
    if let Err(err) = pc.add_ice_candidate(candidate).await {
        debug!(cid, "remote candidate not added: {err}");
    }
}

/// How long an offer waits for a source that passes its own H.264 through to show its SPS (its
/// profile goes into the answer): a process that starts a camera first (10 s), and a margin.
const STREAM_PROFILE_WAIT: Duration = Duration::from_secs(12);

/// What the session sends: our encoder's constrained baseline, or the source's own H.264 of
/// this profile, passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoPlan {
    Encoded,
    Passthrough(ProfileLevel),
}

/// Find out what the hub sends. Only a source that may deliver H.264 needs the pipeline running
/// for that (its SPS tells the profile): then the pipeline is started here, and its subscription
/// returned to be the session's warm-up. An offer without any usable H.264 is left for
/// [`answer`] to refuse, without starting anything.
async fn video_plan(
    hub: &Hub,
    offer_sdp: &str,
) -> Result<(VideoPlan, Option<Subscription>), AnswerError> {
    if !hub.may_pass_through()
        || !offered_h264(offer_sdp)
            .iter()
            .any(|o| o.packetization_mode_1)
    {
        return Ok((VideoPlan::Encoded, None));
    }
    stream_plan(hub).await
}

/// What a hub that may pass H.264 through sends: its pipeline is started (the subscription is
/// returned as the session's warm-up) and its first access unit tells.
async fn stream_plan(hub: &Hub) -> Result<(VideoPlan, Option<Subscription>), AnswerError> {
    let warm = hub.subscribe();
    let mut stream = hub.stream();
    let deadline = tokio::time::Instant::now() + STREAM_PROFILE_WAIT;
    loop {
        {
            let info: StreamInfo = stream.borrow_and_update().clone();
            match (info.encoder, info.profile) {
                (Some(name), _) if name != passthrough::NAME => {
                    return Ok((VideoPlan::Encoded, Some(warm)));
                }
                (Some(_), Some(profile)) => {
                    return Ok((VideoPlan::Passthrough(profile), Some(warm)));
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline, stream.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                let state = hub.state().borrow().clone();
                return Err(AnswerError::Internal(format!(
                    "the camera's H.264 stream showed no SPS within {} s ({state:?})",
                    STREAM_PROFILE_WAIT.as_secs()
                )));
            }
        }
    }
}

/// An error on our side while building the session.
fn internal(what: &str, e: &dyn std::fmt::Display) -> AnswerError {
    AnswerError::Internal(format!("{what}: {e}"))
}

/// A session's tracks before they are bound to a peer connection: the camera's and, when the
/// session sends audio, the microphone's, each with its own random SSRC.
struct Tracks {
    video: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    audio: Option<(Arc<TrackLocalStaticSample>, u32)>,
}

impl Tracks {
    fn new(codec: RTCRtpCodec, with_audio: bool) -> Result<Tracks, AnswerError> {
        let ssrc: u32 = rand::random();
        let audio = if with_audio {
            let audio_ssrc: u32 = rand::random();
            let track = audio_track(audio_ssrc).map_err(|e| internal("audio track", &e))?;
            Some((track, audio_ssrc))
        } else {
            None
        };
        Ok(Tracks {
            video: video_track(ssrc, codec),
            ssrc,
            audio,
        })
    }

    /// Add our transceivers to `pc`, video first, each starting as `init` says.
    async fn add_to(
        &self,
        pc: &Arc<dyn PeerConnection>,
        init: fn() -> Option<RTCRtpTransceiverInit>,
    ) -> Result<Transceivers, AnswerError> {
        let video = pc
            .add_transceiver_from_track(Arc::clone(&self.video) as Arc<dyn TrackLocal>, init())
            .await
            .map_err(|e| internal("video transceiver", &e))?;
        let audio = match &self.audio {
            Some((track, _)) => Some(
                pc.add_transceiver_from_track(Arc::clone(track) as Arc<dyn TrackLocal>, init())
                    .await
                    .map_err(|e| internal("audio transceiver", &e))?,
            ),
            None => None,
        };
        Ok(Transceivers { video, audio })
    }

    /// The session's state, once the local description is set. `audio_payload_type`: the one
    /// negotiated for the microphone's track (none: the session sends no audio).
    fn into_session(
        self,
        (pc, link, connectivity): (Arc<dyn PeerConnection>, Arc<Link>, Arc<Connectivity>),
        ours: Vec<RTCRtpTransceiverId>,
        sender: VideoSender,
        payload_type: u8,
        audio_payload_type: Option<u8>,
    ) -> Answered {
        Answered {
            pc,
            link,
            connectivity,
            ours,
            dtls: sender.dtls,
            track: self.video,
            ssrc: self.ssrc,
            mid: sender.mid,
            payload_type,
            audio: self
                .audio
                .zip(audio_payload_type)
                .map(|((track, ssrc), payload_type)| AudioSend {
                    track,
                    ssrc,
                    payload_type,
                }),
        }
    }
}

/// Our transceivers on a session's peer connection.
struct Transceivers {
    video: Arc<dyn RtpTransceiver>,
    audio: Option<Arc<dyn RtpTransceiver>>,
}

impl Transceivers {
    fn all(&self) -> impl Iterator<Item = &Arc<dyn RtpTransceiver>> {
        std::iter::once(&self.video).chain(self.audio.as_ref())
    }

    fn ids(&self) -> Vec<RTCRtpTransceiverId> {
        self.all().map(|t| t.id()).collect()
    }
}

/// The video sender as the local description bound it.
struct VideoSender {
    sender: Arc<dyn RtpSender>,
    mid: String,
    dtls: Option<Arc<dyn DtlsTransport>>,
}

/// Read back the video transceiver's sender, its mid and its DTLS transport.
async fn video_sender(transceiver: &Arc<dyn RtpTransceiver>) -> Result<VideoSender, AnswerError> {
    let sender = transceiver
        .sender()
        .await
        .map_err(|e| internal("video sender", &e))?
        .ok_or_else(|| AnswerError::Internal("video sender missing".into()))?;
    let dtls = sender.transport().await.ok().flatten();
    let mid = transceiver
        .mid()
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "0".to_string());
    Ok(VideoSender { sender, mid, dtls })
}

/// Hand the candidates that came inside a remote description to webrtc, through the gate, on
/// the m-line `mid`.
async fn hand_in_offered(
    pc: &Arc<dyn PeerConnection>,
    gate: &mut CandidateGate,
    cid: &str,
    mid: &str,
    offered: Vec<String>,
) {
    for candidate in offered {
        let init = RTCIceCandidateInit {
            candidate,
            sdp_mid: Some(mid.to_string()),
            sdp_mline_index: Some(0),
            ..Default::default()
        };
        hand_in(pc, gate, cid, init).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    factory: &PeerFactory,
    with_audio: bool,
    offer_sdp: String,
    plan: VideoPlan,
    news: mpsc::UnboundedSender<PeerNews>,
    gate: &mut CandidateGate,
    cid: &str,
) -> Result<(Answered, String), AnswerError> {
    // The offer's candidates go in after the answer exists, through the gate like trickled ones.
    let (offer_sdp, offered) = candidates::split_offer(&offer_sdp);
    let video = match plan {
        VideoPlan::Encoded => offer_video(&offer_sdp),
        VideoPlan::Passthrough(_) => OfferVideo::H264 {
            payload_types: vec![],
        },
    };
    let codecs = match plan {
        VideoPlan::Encoded => h264_codecs(),
        VideoPlan::Passthrough(stream) => {
            let (pt, profile_level) =
                passthrough_codec(&offer_sdp, stream).map_err(AnswerError::Unsupported)?;
            vec![h264_codec(&profile_level.to_string(), pt)]
        }
    };
    let codec = codecs
        .first()
        .map(|c| c.rtp_codec.clone())
        .ok_or_else(|| AnswerError::Internal("no video codec".into()))?;
    let with_audio = with_audio && offer_has_audio(&offer_sdp);
    let offer = RTCSessionDescription::offer(offer_sdp)
        .map_err(|e| AnswerError::BadOffer(format!("offer SDP: {e}")))?;
    offer
        .unmarshal()
        .map_err(|e| AnswerError::BadOffer(format!("offer SDP does not parse: {e}")))?;
    match video {
        OfferVideo::H264 { .. } => {}
        OfferVideo::NoVideo => {
            return Err(AnswerError::Unsupported("offer has no video m-line".into()));
        }
        OfferVideo::Unsupported(msg) => return Err(AnswerError::Unsupported(msg)),
    }
    let (pc, link, connectivity) = factory
        .build_sender(Arc::new(Forwarder(news)), codecs)
        .await
        .map_err(|e| internal("peer connection", &e))?;
    let tracks = Tracks::new(codec, with_audio)?;
    let result = async {
        let transceivers = tracks.add_to(&pc, matches_any_offer).await?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| AnswerError::BadOffer(format!("offer rejected: {e}")))?;
        // We only send; every m-line we do not send on (audio when the device has none) is
        // answered inactive.
        for t in transceivers.all() {
            t.set_direction(RTCRtpTransceiverDirection::Sendonly)
                .await
                .map_err(|e| internal("sendonly", &e))?;
        }
        let ours = transceivers.ids();
        decline_others(&pc, &ours).await?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| AnswerError::BadOffer(format!("cannot answer: {e}")))?;
        pc.set_local_description(answer)
            .await
            .map_err(|e| internal("local description", &e))?;
        let sender = video_sender(&transceivers.video).await?;
        let params = sender
            .sender
            .get_parameters()
            .await
            .map_err(|e| internal("sender parameters", &e))?;
        // The payload type the interceptors bound the stream with (the offer's variant that
        // matches our track's codec): RTX repairs are tied to it (`apt`), so media sent with
        // another of the offer's H.264 types could not be repaired (Chromium: 59 PLIs and 9 s
        // frozen in 15 s, R2 §4.2). The first negotiated codec only as a fallback.
        let payload_type = link
            .video_payload_type()
            .or_else(|| params.rtp_parameters.codecs.first().map(|c| c.payload_type))
            .ok_or_else(|| {
                AnswerError::Unsupported("no H.264 variant of the offer matched".into())
            })?;
        // The audio payload type, when the offer's Opus matched.
        let mut audio_pt = None;
        if let Some(transceiver) = &transceivers.audio
            && let Ok(Some(sender)) = transceiver.sender().await
            && let Ok(params) = sender.get_parameters().await
        {
            audio_pt = params.rtp_parameters.codecs.first().map(|c| c.payload_type);
        }
        let local = pc.local_description().await.ok_or_else(|| {
            AnswerError::Internal("answer missing after set_local_description".into())
        })?;
        gate.note_local_sdp(&local.sdp);
        hand_in_offered(&pc, gate, cid, &sender.mid, offered).await;
        Ok((ours, sender, payload_type, audio_pt, local.sdp))
    }
    .await;
    match result {
        Ok((ours, sender, payload_type, audio_pt, sdp)) => Ok((
            tracks.into_session(
                (pc, link, connectivity),
                ours,
                sender,
                payload_type,
                audio_pt,
            ),
            sdp,
        )),
        Err(err) => {
            let _ = pc.close().await;
            Err(err)
        }
    }
}

/// The publishing side: a peer connection with a sendonly video track (and audio with
/// `with_audio`), its offer made and set. The payload types are those of the offer (the
/// answerer keeps them); they are read again when the answer is set.
async fn offer(
    factory: &PeerFactory,
    with_audio: bool,
    news: mpsc::UnboundedSender<PeerNews>,
) -> Result<(Answered, String), AnswerError> {
    let (pc, link, connectivity) = factory
        .build_sender(Arc::new(Forwarder(news)), h264_codecs())
        .await
        .map_err(|e| internal("peer connection", &e))?;
    let result = async {
        let tracks = Tracks::new(h264_codecs().remove(0).rtp_codec, with_audio)?;
        let transceivers = tracks.add_to(&pc, sendonly).await?;
        let offer = pc
            .create_offer(None)
            .await
            .map_err(|e| internal("offer", &e))?;
        pc.set_local_description(offer)
            .await
            .map_err(|e| internal("local description", &e))?;
        let sender = video_sender(&transceivers.video).await?;
        let local = pc.local_description().await.ok_or_else(|| {
            AnswerError::Internal("offer missing after set_local_description".into())
        })?;
        let session = tracks.into_session(
            (Arc::clone(&pc), link, connectivity),
            transceivers.ids(),
            sender,
            h264_codecs()[0].payload_type,
            Some(opus_codec().payload_type),
        );
        Ok((session, local.sdp))
    }
    .await;
    if result.is_err() {
        let _ = pc.close().await;
    }
    result
}

/// The answer to our offer: set it (its candidates through the gate, like a viewer's), and take
/// the payload types it settled on.
async fn take_answer(
    session: &mut Answered,
    sdp: String,
    gate: &mut CandidateGate,
    cid: &str,
) -> Result<(), String> {
    let (sdp, offered) = candidates::split_offer(&sdp);
    let answer = RTCSessionDescription::answer(sdp).map_err(|e| format!("answer SDP: {e}"))?;
    session
        .pc
        .set_remote_description(answer)
        .await
        .map_err(|e| format!("answer rejected: {e}"))?;
    for transceiver in session.pc.get_transceivers().await {
        let Ok(Some(sender)) = transceiver.sender().await else {
            continue;
        };
        let Ok(params) = sender.get_parameters().await else {
            continue;
        };
        let Some(codec) = params.rtp_parameters.codecs.first() else {
            continue;
        };
        if codec
            .rtp_codec
            .mime_type
            .eq_ignore_ascii_case(MIME_TYPE_H264)
        {
            session.payload_type = session
                .link
                .video_payload_type()
                .unwrap_or(codec.payload_type);
        } else if let Some(audio) = session.audio.as_mut() {
            audio.payload_type = codec.payload_type;
        }
    }
    if let Some(local) = session.pc.local_description().await {
        gate.note_local_sdp(&local.sdp);
    }
    hand_in_offered(&session.pc, gate, cid, &session.mid, offered).await;
    Ok(())
}

/// Answer every m-line but `ours` inactive.
async fn decline_others(
    pc: &Arc<dyn PeerConnection>,
    ours: &[RTCRtpTransceiverId],
) -> Result<(), AnswerError> {
    for other in pc.get_transceivers().await {
        if !ours.contains(&other.id()) {
            other
                .set_direction(RTCRtpTransceiverDirection::Inactive)
                .await
                .map_err(|e| AnswerError::Internal(format!("declining an m-line: {e}")))?;
        }
    }
    Ok(())
}

/// Apply a renegotiating offer to the session's peer connection and answer it. An offer with
/// new ICE credentials restarts ICE (webrtc keeps the local candidates, which are in the
/// answer); DTLS and SRTP carry on. The offer's candidates go in through the gate, after the
/// answer, like those of the first offer; an ICE restart starts the gate's counts afresh (the
/// agent forgets the old remote candidates).
async fn renegotiate(
    session: &Answered,
    offer_sdp: String,
    ice_restart: bool,
    gate: &mut CandidateGate,
    cid: &str,
) -> Result<String, AnswerError> {
    let (offer_sdp, offered) = candidates::split_offer(&offer_sdp);
    let offer = RTCSessionDescription::offer(offer_sdp)
        .map_err(|e| AnswerError::BadOffer(format!("offer SDP: {e}")))?;
    offer
        .unmarshal()
        .map_err(|e| AnswerError::BadOffer(format!("offer SDP does not parse: {e}")))?;
    let pc = &session.pc;
    pc.set_remote_description(offer)
        .await
        .map_err(|e| AnswerError::BadOffer(format!("renegotiating offer rejected: {e}")))?;
    decline_others(pc, &session.ours).await?;
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| AnswerError::BadOffer(format!("cannot answer: {e}")))?;
    pc.set_local_description(answer)
        .await
        .map_err(|e| AnswerError::Internal(format!("local description: {e}")))?;
    let local = pc.local_description().await.ok_or_else(|| {
        AnswerError::Internal("answer missing after set_local_description".into())
    })?;
    if ice_restart {
        gate.restart();
    }
    gate.note_local_sdp(&local.sdp);
    hand_in_offered(pc, gate, cid, &session.mid, offered).await;
    Ok(local.sdp)
}

/// The `a=ice-ufrag` of an SDP.
fn ice_ufrag(sdp: &str) -> Option<String> {
    crate::signaling::protocol::sdp_ufrag(sdp).map(str::to_owned)
}

/// The session, from offer to end; returns its final event (`Failed` or `Closed`), which
/// [`spawn_supervised`] sends.
#[allow(clippy::too_many_arguments)]
async fn run(
    factory: PeerFactory,
    media: Media,
    key: SessionKey,
    role: Role,
    events: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    queued: Arc<AtomicUsize>,
) -> SessionEvent {
    let Media { hub, audio, rate } = media;
    let emit = |event: SessionEvent| {
        let _ = events.send((key.clone(), event));
    };
    let (stun, turn) = factory.settings().stun_and_turn_urls();
    let mut gate = CandidateGate::new(
        factory.settings().remote,
        LocalAddresses::of_this_host(),
        stun,
        turn,
    );
    let (news_tx, mut news) = mpsc::unbounded_channel();
    let started = Instant::now();
    let (offering, mut remote_ufrag) = match &role {
        Role::Answer(offer_sdp) => (false, ice_ufrag(offer_sdp)),
        Role::Offer => (true, None),
    };
    // A source that passes its H.264 through decides the codec of the answer (its profile); its
    // pipeline is then running already, and its subscription is this session's warm-up.
    let (plan, early) = match &role {
        Role::Answer(offer_sdp) => match video_plan(&hub, offer_sdp).await {
            Ok(ok) => ok,
            Err(err) => return SessionEvent::Failed(err),
        },
        // Publishing sends our encoder's constrained baseline; a stream passed through as the
        // camera made it (Main or High, its own rate) is not published, with the reason in the
        // status rather than a mislabelled stream.
        Role::Offer if hub.may_pass_through() => match stream_plan(&hub).await {
            Ok((VideoPlan::Passthrough(profile), _)) => {
                return SessionEvent::Failed(AnswerError::Unsupported(format!(
                    "the camera's own H.264 ({profile}) is passed through, and publishing over \
                     WHIP sends only spyglass's encoded stream: use --exec-format i420 or \
                     --encoder openh264 to publish"
                )));
            }
            Ok(plan) => plan,
            Err(err) => return SessionEvent::Failed(err),
        },
        Role::Offer => (VideoPlan::Encoded, None),
    };
    let made = match role {
        Role::Answer(offer_sdp) => {
            answer(
                &factory,
                audio.is_some(),
                offer_sdp,
                plan,
                news_tx,
                &mut gate,
                &key.cid,
            )
            .await
        }
        Role::Offer => offer(&factory, audio.is_some(), news_tx).await,
    };
    let (mut session, local_sdp) = match made {
        Ok(ok) => ok,
        Err(err) => return SessionEvent::Failed(err),
    };
    debug!(
        cid = %key.cid,
        ms = started.elapsed().as_millis() as u64,
        payload_type = session.payload_type,
        rtx = ?session.link.rtx_payload_type(),
        "{} ready",
        if offering { "offer" } else { "answer" }
    );
    emit(if offering {
        SessionEvent::Offered(local_sdp)
    } else {
        SessionEvent::Answered(local_sdp)
    });
    // Counted in the shared encoder's target once media flows (see below).
    let viewer = rate.join(Arc::clone(&session.link), &key.cid);
    let policy = Arc::new(Mutex::new(KeyframePolicy::default()));
    // Start the video pipeline now, while ICE and DTLS run, so that a cold start (opening the
    // source, creating the encoder, the first frame) is over by the time the viewer connects.
    // Held until the viewer's own feed exists; an unconnected session ends at --peer-timeout.
    let mut warm_up = Some(early.unwrap_or_else(|| hub.subscribe()));
    // The same for audio when this viewer gets it: Chromium holds video back until it can play
    // audio in sync, so a cold audio start would delay the first picture too.
    let mut audio_warm_up = audio
        .as_ref()
        .filter(|_| session.audio.is_some())
        .map(AudioHub::subscribe);

    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut channels: Vec<JoinHandle<()>> = Vec::new();
    let counters = Arc::new(SessionCounters::default());
    let budget = Arc::new(datachannel::ViewerBudget::default());
    let mut check = tokio::time::interval(DTLS_CHECK_INTERVAL);
    // Until it connects, the session lives for the connect timeout (--peer-timeout), whatever
    // ICE does meanwhile: candidates that arrive late within it still connect.
    let connect_deadline = tokio::time::Instant::from_std(started + connect_timeout(&factory));
    // Set while a connected viewer is unreachable (ICE consent lost): when it passes, the
    // viewer has vanished.
    let mut vanish_deadline: Option<tokio::time::Instant> = None;
    let mut unreachable = false;
    // Set while an ICE restart waits for the connection to come back: when.
    let mut restart: Option<Instant> = None;
    let mut failure: Option<AnswerError> = None;
    let reason = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(connect_deadline), if tasks.is_empty() => {
                unreachable = true;
                break format!("no connection within {:?}", connect_timeout(&factory));
            }
            _ = async { match vanish_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => {
                break format!(
                    "the viewer vanished (unreachable for {} s)",
                    (super::ICE_DISCONNECTED_AFTER + ICE_VANISHED_AFTER).as_secs()
                );
            }
            _ = async { match restart {
                Some(at) => tokio::time::sleep_until((at + RESTART_TIMEOUT).into()).await,
                None => std::future::pending().await,
            } } => {
                break format!("no connection within {} s of the ICE restart", RESTART_TIMEOUT.as_secs());
            }
            _ = check.tick(), if !tasks.is_empty() => {
                if let Some(dtls) = &session.dtls {
                    let state = dtls.state().await;
                    if matches!(state, Ok(RTCDtlsTransportState::Closed | RTCDtlsTransportState::Failed)) {
                        break "the viewer closed the connection".to_string();
                    }
                }
            }
            command = commands.recv() => match command {
                Some(Command::AddCandidate(candidate)) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    let init = candidate.unwrap_or_else(|| RTCIceCandidateInit {
                        candidate: String::new(),
                        ..Default::default()
                    });
                    hand_in(&session.pc, &mut gate, &key.cid, init).await;
                }
                Some(Command::Renegotiate(offer_sdp)) => {
                    let ufrag = ice_ufrag(&offer_sdp);
                    let ice_restart = ufrag != remote_ufrag;
                    match renegotiate(&session, offer_sdp, ice_restart, &mut gate, &key.cid).await {
                        Ok(answer_sdp) => {
                            info!(cid = %key.cid, ice_restart, "session renegotiated in place");
                            remote_ufrag = ufrag;
                            if ice_restart {
                                // The restart's own timeout bounds the wait from here.
                                restart = Some(Instant::now());
                                vanish_deadline = None;
                            }
                            emit(SessionEvent::Answered(answer_sdp));
                        }
                        Err(err) => {
                            failure = Some(err);
                            break "the renegotiating offer could not be answered".to_string();
                        }
                    }
                }
                Some(Command::RemoteAnswer(sdp)) => {
                    if let Err(err) = take_answer(&mut session, sdp, &mut gate, &key.cid).await {
                        break err;
                    }
                    remote_ufrag = session
                        .pc
                        .remote_description()
                        .await
                        .and_then(|d| ice_ufrag(&d.sdp));
                }
                Some(Command::Close) | None => break "closed by the device".to_string(),
            },
            item = news.recv() => match item {
                Some(PeerNews::Candidate(mut init)) => {
                    gate.note_local(&init.candidate);
                    init.sdp_mid = Some(session.mid.clone());
                    init.sdp_mline_index = Some(0);
                    emit(SessionEvent::LocalCandidate(Some(init)));
                }
                Some(PeerNews::GatheringComplete) => emit(SessionEvent::LocalCandidate(None)),
                Some(PeerNews::DataChannel(channel)) => {
                    let label = channel.label().await.unwrap_or_default();
                    debug!(cid = %key.cid, label, "data channel opened by the viewer");
                    channels.retain(|task| !task.is_finished());
                    if channels.len() >= datachannel::MAX_CHANNELS {
                        debug!(cid = %key.cid, label, "data channel refused: too many open");
                        let _ = channel.close().await;
                        continue;
                    }
                    channels.push(if label == datachannel::LABEL {
                        tokio::spawn(datachannel::serve(channel, ChannelContext {
                            hub: hub.clone(),
                            counters: Arc::clone(&counters),
                            pc: Arc::clone(&session.pc),
                            viewer: Some((Arc::clone(&viewer), rate.clone())),
                            budget: Arc::clone(&budget),
                        }))
                    } else {
                        tokio::spawn(datachannel::ignore(channel))
                    });
                }
                Some(PeerNews::State(RTCPeerConnectionState::Connected)) => {
                    vanish_deadline = None;
                    let restarted = restart.take();
                    if let Some(at) = restarted && !tasks.is_empty() {
                        // Media sent while ICE had no pair was dropped: start the picture afresh.
                        hub.request_keyframe(KeyframeReason::Join);
                        info!(cid = %key.cid, ms = at.elapsed().as_millis() as u64, "viewer reconnected after an ICE restart");
                    }
                    if tasks.is_empty() {
                        let pair = session.connectivity.selected_pair().unwrap_or_default();
                        info!(cid = %key.cid, ms = started.elapsed().as_millis() as u64, "viewer connected, selected pair {pair}");
                        emit(SessionEvent::Connected);
                        viewer.activate();
                        // Video waits for audio only when this viewer gets both.
                        let sync = audio.clone().filter(|_| session.audio.is_some());
                        // The warm-up subscription has buffered the stream since the answer:
                        // its keyframe, if recent, is this viewer's first picture.
                        let feed = match warm_up.take() {
                            Some(warm) => warm.resume(MAX_BACKLOG_AGE),
                            None => hub.subscribe(),
                        };
                        let send = VideoSend {
                            track: Arc::clone(&session.track),
                            stream: RtpStream::new(session.ssrc, session.payload_type),
                            viewer: Arc::clone(&viewer),
                            rate: rate.clone(),
                            policy: Arc::clone(&policy),
                            hub: hub.clone(),
                            counters: Arc::clone(&counters),
                        };
                        tasks.push(tokio::spawn(stream_video(feed, send, sync)));
                        if let (Some(hub), Some(send)) = (&audio, &session.audio) {
                            let feed = hub.subscribe();
                            drop(audio_warm_up.take());
                            tasks.push(tokio::spawn(stream_audio(
                                feed,
                                Arc::clone(&send.track),
                                send.ssrc,
                                send.payload_type,
                            )));
                        }
                        tasks.push(tokio::spawn(keyframe_requests(
                            hub.clone(),
                            Arc::clone(&session.track),
                            Arc::clone(&viewer),
                            Arc::clone(&policy),
                        )));
                    } else if restarted.is_none() {
                        // Consent came back by itself (a link cut for a few seconds).
                        info!(cid = %key.cid, "viewer connected again");
                    }
                }
                Some(PeerNews::State(state @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed))) => {
                    unreachable = tasks.is_empty() && state == RTCPeerConnectionState::Failed;
                    break format!("connection {state}");
                }
                Some(PeerNews::State(state @ RTCPeerConnectionState::Disconnected)) if !tasks.is_empty() => {
                    // ICE consent lapsed (a cut link): media keeps going, the session waits for
                    // the link to come back, at most ICE_VANISHED_AFTER.
                    info!(cid = %key.cid, "connection {state}");
                    vanish_deadline.get_or_insert(tokio::time::Instant::now() + ICE_VANISHED_AFTER);
                }
                Some(PeerNews::State(state)) => debug!(cid = %key.cid, "connection {state}"),
                None => break "peer connection gone".to_string(),
            },
        }
    };
    for task in tasks.into_iter().chain(channels) {
        task.abort();
    }
    if let Err(err) = session.pc.close().await {
        debug!(cid = %key.cid, "closing peer connection: {err}");
    }
    let link = &session.link;
    if gate.refused() > 0 {
        info!(
            cid = %key.cid,
            admitted = gate.admitted(),
            refused = gate.refused(),
            "remote candidates: {} handed to ICE (at most {} pairs), {} refused",
            gate.admitted(),
            gate.max_pairs(),
            gate.refused()
        );
    }
    if unreachable {
        let why = session.connectivity.failure();
        warn!(cid = %key.cid, "session failed: {reason}: {why}");
        return SessionEvent::Unreachable(why);
    }
    info!(
        cid = %key.cid,
        nacked = link.nacked_packets.load(Ordering::Relaxed),
        retransmitted = link.retransmitted_packets.load(Ordering::Relaxed),
        unrepairable = link.unrepairable.load(Ordering::Relaxed),
        keyframes_requested = viewer.keyframes_requested.load(Ordering::Relaxed),
        stalls = viewer.stalls.load(Ordering::Relaxed),
        frames_skipped = viewer.frames_skipped.load(Ordering::Relaxed),
        "session ended: {reason}"
    );
    match failure {
        Some(err) => SessionEvent::Failed(err),
        None => SessionEvent::Closed(reason),
    }
}

/// How long a session may take to connect.
fn connect_timeout(factory: &PeerFactory) -> Duration {
    match factory.settings().connect_timeout {
        d if d.is_zero() => Duration::from_secs(30),
        d => d,
    }
}

/// What one viewer's video task needs.
struct VideoSend {
    track: Arc<TrackLocalStaticRTP>,
    stream: RtpStream,
    viewer: Arc<ViewerRate>,
    rate: RateControl,
    policy: Arc<Mutex<KeyframePolicy>>,
    hub: Hub,
    counters: Arc<SessionCounters>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Send the hub's frames to this viewer until the task is aborted: the frames its link carries
/// (see the module doc), packetized once for everyone. With `sync`, each frame is held until it
/// is as old as the audio hub's packets are when they are sent.
async fn stream_video(mut feed: Subscription, mut send: VideoSend, sync: Option<AudioHub>) {
    let link = Arc::clone(send.viewer.link());
    let viewer = &send.viewer;
    // Frames are held back until a keyframe (the viewer's link could not carry the stream).
    let mut stalled = false;
    let mut logged: Option<Instant> = None;
    while let Some(frame) = feed.recv().await {
        if let Some(audio) = &sync {
            let due = frame.instant + audio.latency();
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        send.rate
            .observe(frame.seq, frame.temporal_id, frame.data.len());
        let now = Instant::now();
        let backlog = link.pacer_backlog();
        if stalled && !frame.keyframe {
            viewer.frames_held_back.fetch_add(1, Ordering::Relaxed);
            // Once the pacer has drained, a keyframe starts the picture again.
            if backlog < SOFT_BACKLOG
                && lock(&send.policy).allow(Cause::Congestion, now, link.rtt())
            {
                viewer.keyframes_requested.fetch_add(1, Ordering::Relaxed);
                send.hub.request_keyframe(KeyframeReason::Loss);
            }
            continue;
        }
        if backlog > HARD_BACKLOG {
            viewer.frames_held_back.fetch_add(1, Ordering::Relaxed);
            if !stalled {
                stalled = true;
                viewer.stalls.fetch_add(1, Ordering::Relaxed);
                if logged.is_none_or(|t| now.saturating_duration_since(t) >= TROUBLE_LOG_EVERY) {
                    logged = Some(now);
                    info!(
                        cid = viewer.cid(),
                        backlog_ms = backlog.as_millis() as u64,
                        estimate_kbps = link.estimate_bps() / 1000,
                        stalls = viewer.stalls.load(Ordering::Relaxed),
                        "viewer's link cannot carry the stream: frames held back until a keyframe"
                    );
                }
            }
            continue;
        }
        stalled = false;
        if frame.temporal_id > 0 && (backlog > SOFT_BACKLOG || !viewer.wants(frame.temporal_id)) {
            viewer.frames_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let payloads = packetize::payloads(&frame);
        let timestamp = send.stream.timestamp(frame.instant);
        let mut failed = None;
        for (i, payload) in payloads.iter().enumerate() {
            let packet = send
                .stream
                .packet(payload, timestamp, i + 1 == payloads.len());
            if let Err(err) = send.track.write_rtp(packet).await {
                failed = Some(err);
            }
        }
        if let Some(err) = failed {
            warn!("sending a frame: {err}");
            continue;
        }
        let counters = &send.counters;
        counters.frames.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
        if frame.keyframe {
            counters.keyframes.fetch_add(1, Ordering::Relaxed);
            lock(&send.policy).keyframe_sent(now);
        }
    }
}

/// Send the audio hub's Opus packets to this viewer until the task is aborted. Each packet
/// advances the RTP clock by 20 ms; a gap in capture (an overrun, or packets this viewer lost to
/// lag) advances it by the gap as well, so RTP time keeps following the capture clock.
async fn stream_audio(
    mut feed: AudioSubscription,
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    payload_type: u8,
) {
    let mut previous: Option<Instant> = None;
    while let Some(packet) = feed.recv().await {
        let gap = previous
            .map(|p| packet.instant.saturating_duration_since(p + CHUNK_DURATION))
            .filter(|g| *g >= CHUNK_DURATION / 2)
            .unwrap_or_default();
        previous = Some(packet.instant);
        let sample = Sample {
            data: packet.data.clone(),
            duration: CHUNK_DURATION + gap,
            ..Sample::new(packet.instant)
        };
        if let Err(err) = track
            .sample_writer(ssrc, payload_type)
            .write_sample(&sample)
            .await
        {
            warn!("sending audio: {err}");
        }
    }
}

/// Turn the viewer's PLI/FIR, and losses retransmission cannot repair, into keyframe requests,
/// as far as the viewer's [`KeyframePolicy`] lets them through.
async fn keyframe_requests(
    hub: Hub,
    track: Arc<TrackLocalStaticRTP>,
    viewer: Arc<ViewerRate>,
    policy: Arc<Mutex<KeyframePolicy>>,
) {
    let link = Arc::clone(viewer.link());
    let mut logged: Option<Instant> = None;
    loop {
        let cause = tokio::select! {
            event = track.poll() => match event {
                Some(TrackLocalEvent::OnRtcpPacket(_)) => Cause::PictureLoss,
                Some(_) => continue,
                None => return,
            },
            _ = link.unrepairable_loss() => Cause::Unrepairable,
        };
        let now = Instant::now();
        let (allowed, passed, refused) = {
            let mut policy = lock(&policy);
            let allowed = policy.allow(cause, now, link.rtt());
            (allowed, policy.passed, policy.refused)
        };
        if !allowed {
            continue;
        }
        viewer.keyframes_requested.fetch_add(1, Ordering::Relaxed);
        hub.request_keyframe(KeyframeReason::Loss);
        if cause == Cause::Unrepairable
            && logged.is_none_or(|t| now.saturating_duration_since(t) >= TROUBLE_LOG_EVERY)
        {
            logged = Some(now);
            info!(
                cid = viewer.cid(),
                unrepairable = link.unrepairable.load(Ordering::Relaxed),
                retransmitted = link.retransmitted_packets.load(Ordering::Relaxed),
                keyframes_requested = passed,
                refused,
                "viewer's losses cannot all be repaired by retransmission: keyframe requested"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn key(generation: u64) -> SessionKey {
        SessionKey {
            cid: "v1".into(),
            generation,
        }
    }

    fn handle(
        events: &mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
        generation: u64,
        session: impl std::future::Future<Output = SessionEvent> + Send + 'static,
    ) -> SessionHandle {
        let (commands, _) = mpsc::unbounded_channel();
        let (task, reported) = spawn_supervised(key(generation), events.clone(), session);
        SessionHandle {
            commands,
            queued: Arc::new(AtomicUsize::new(0)),
            dropping: AtomicBool::new(false),
            task,
            reported,
        }
    }

    #[tokio::test]
    async fn a_session_task_that_panics_is_reported_dead() {
        let (events, mut rx) = mpsc::unbounded_channel();
        let mut sessions = HashMap::new();
        sessions.insert(
            key(1),
            handle(&events, 1, async { panic!("a bug in a session") }),
        );
        sessions.insert(
            key(2),
            handle(&events, 2, async { SessionEvent::Closed("bye".into()) }),
        );
        sessions.insert(key(3), handle(&events, 3, std::future::pending()));
        while !(sessions[&key(1)].task.is_finished() && sessions[&key(2)].task.is_finished()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Only the one that died without its final event is taken out; the one that closed
        // reported it, and the running one is left alone.
        let mut dead = take_unreported(&mut sessions);
        assert_eq!(dead.len(), 1);
        let (dead_key, dead_handle) = dead.remove(0);
        assert_eq!(dead_key, key(1));
        assert_eq!(dead_handle.fault().await, "panicked: a bug in a session");
        assert!(matches!(rx.recv().await, Some((k, SessionEvent::Closed(_))) if k == key(2)));
        assert_eq!(sessions.len(), 2);
        assert!(take_unreported(&mut sessions).is_empty());
    }
}
