//! One viewer's WebRTC session on the device: answers the viewer's offer with a sendonly H.264
//! track (and a sendonly Opus track when the offer has audio and the device has audio; an audio
//! m-line is answered inactive otherwise), trickles candidates both ways, and, once connected,
//! streams the hubs' shared encoded media and turns the viewer's PLI/FIR into keyframe requests.
//! When the offer has a data (SCTP) m-line, the answer accepts it: a channel the viewer labels
//! `spyglass` is served by [`super::control`]; channels with other labels are accepted and ignored.
//!
//! A/V sync: both tracks' RTP timestamps advance by capture-instant differences on the one
//! monotonic clock, and the RTCP sender reports of `webrtc` map RTP time to the time a packet
//! was *sent*. So that a viewer's lip-sync (which trusts those reports) lines the tracks up, video
//! is sent as long after its capture as audio is (audio waits for its 20 ms packet to fill).
//!
//! A session runs as its own task. It reports to the signaling loop through [`SessionEvent`]s
//! tagged with its [`SessionKey`], and takes commands through its [`SessionHandle`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rtc::media::Sample;
use rtc::peer_connection::transport::RTCDtlsTransportState;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::transport::DtlsTransport;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
};

use super::control::{self, ControlContext, SessionCounters};
use super::sdp::{OfferVideo, offer_has_audio, offer_video};
use super::{PeerFactory, h264_codecs, opus_codec};
use crate::audio::CHUNK_DURATION;
use crate::audio::hub::{AudioHub, AudioSubscription};
use crate::signaling::SessionKey;
use crate::video::hub::{Hub, KeyframeReason, Subscription};

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
    /// The answer SDP, to send to the viewer.
    Answered(String),
    /// The offer could not be answered; the session has ended.
    Failed(AnswerError),
    /// A local ICE candidate to trickle to the viewer; `None` is the end of candidates.
    LocalCandidate(Option<RTCIceCandidateInit>),
    /// Media flows.
    Connected,
    /// The session has ended (closed, failed, or told to close).
    Closed(String),
}

enum Command {
    AddCandidate(Option<RTCIceCandidateInit>),
    Close,
}

/// Commands to a running session. Dropping the handle closes the session.
pub struct SessionHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl SessionHandle {
    /// A remote candidate from the viewer (`None`: end of candidates).
    pub fn add_candidate(&self, candidate: Option<RTCIceCandidateInit>) {
        let _ = self.commands.send(Command::AddCandidate(candidate));
    }

    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// How often a connected session checks whether the viewer closed DTLS.
const DTLS_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// A viewer that connects starts with the frames buffered since its answer (no wait for a new
/// keyframe) when their keyframe is at most this old; an older backlog would only add delay.
const MAX_BACKLOG_AGE: Duration = Duration::from_millis(100);

/// Start a session that answers `offer_sdp`. Events go to `events`.
pub fn start(
    factory: PeerFactory,
    hub: Hub,
    audio: Option<AudioHub>,
    key: SessionKey,
    offer_sdp: String,
    events: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
) -> SessionHandle {
    let (commands, command_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(factory, hub, audio, key, offer_sdp, events, command_rx));
    SessionHandle { commands }
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

struct Answered {
    pc: Arc<dyn PeerConnection>,
    /// Watched for the viewer's DTLS close_notify: a viewer that closes its peer connection ends
    /// the session at once, instead of when ICE consent lapses.
    dtls: Option<Arc<dyn DtlsTransport>>,
    track: Arc<TrackLocalStaticSample>,
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

fn sendonly() -> Option<RTCRtpTransceiverInit> {
    Some(RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        ..Default::default()
    })
}

async fn answer(
    factory: &PeerFactory,
    with_audio: bool,
    offer_sdp: String,
    news: mpsc::UnboundedSender<PeerNews>,
) -> Result<(Answered, String), AnswerError> {
    let video = offer_video(&offer_sdp);
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
    let internal =
        |what: &str, e: &dyn std::fmt::Display| AnswerError::Internal(format!("{what}: {e}"));
    let pc = factory
        .build(Arc::new(Forwarder(news)))
        .await
        .map_err(|e| internal("peer connection", &e))?;
    let ssrc: u32 = rand::random();
    let codec = h264_codecs().remove(0).rtp_codec;
    let track = Arc::new(
        TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "spyglass".to_string(),
                "video".to_string(),
                "camera".to_string(),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            ),
        )
        .map_err(|e| internal("video track", &e))?,
    );
    let audio_ssrc: u32 = rand::random();
    let audio_track = if with_audio {
        Some(Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    "spyglass".to_string(),
                    "audio".to_string(),
                    "microphone".to_string(),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(audio_ssrc),
                            ..Default::default()
                        },
                        codec: opus_codec().rtp_codec,
                        ..Default::default()
                    }],
                ),
            )
            .map_err(|e| internal("audio track", &e))?,
        ))
    } else {
        None
    };
    let result = async {
        let transceiver = pc
            .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal>, sendonly())
            .await
            .map_err(|e| internal("video transceiver", &e))?;
        let audio_transceiver = match &audio_track {
            Some(t) => Some(
                pc.add_transceiver_from_track(Arc::clone(t) as Arc<dyn TrackLocal>, sendonly())
                    .await
                    .map_err(|e| internal("audio transceiver", &e))?,
            ),
            None => None,
        };
        pc.set_remote_description(offer)
            .await
            .map_err(|e| AnswerError::BadOffer(format!("offer rejected: {e}")))?;
        // Every m-line we do not send on (audio when the device has none) is answered inactive.
        let ours: Vec<_> = std::iter::once(transceiver.id())
            .chain(audio_transceiver.as_ref().map(|t| t.id()))
            .collect();
        for other in pc.get_transceivers().await {
            if !ours.contains(&other.id()) {
                other
                    .set_direction(RTCRtpTransceiverDirection::Inactive)
                    .await
                    .map_err(|e| internal("declining an m-line", &e))?;
            }
        }
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| AnswerError::BadOffer(format!("cannot answer: {e}")))?;
        pc.set_local_description(answer)
            .await
            .map_err(|e| internal("local description", &e))?;
        let sender = transceiver
            .sender()
            .await
            .map_err(|e| internal("video sender", &e))?
            .ok_or_else(|| AnswerError::Internal("video sender missing".into()))?;
        let params = sender
            .get_parameters()
            .await
            .map_err(|e| internal("sender parameters", &e))?;
        let payload_type = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or_else(|| {
                AnswerError::Unsupported("no H.264 variant of the offer matched".into())
            })?;
        let mid = transceiver
            .mid()
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "0".to_string());
        let dtls = sender.transport().await.ok().flatten();
        // The audio payload type, when the offer's Opus matched.
        let mut audio_pt = None;
        if let Some(transceiver) = &audio_transceiver
            && let Ok(Some(sender)) = transceiver.sender().await
            && let Ok(params) = sender.get_parameters().await
        {
            audio_pt = params.rtp_parameters.codecs.first().map(|c| c.payload_type);
        }
        let local = pc.local_description().await.ok_or_else(|| {
            AnswerError::Internal("answer missing after set_local_description".into())
        })?;
        Ok((payload_type, mid, dtls, audio_pt, local.sdp))
    }
    .await;
    match result {
        Ok((payload_type, mid, dtls, audio_pt, sdp)) => Ok((
            Answered {
                pc,
                dtls,
                track,
                ssrc,
                mid,
                payload_type,
                audio: audio_track
                    .zip(audio_pt)
                    .map(|(track, payload_type)| AudioSend {
                        track,
                        ssrc: audio_ssrc,
                        payload_type,
                    }),
            },
            sdp,
        )),
        Err(err) => {
            let _ = pc.close().await;
            Err(err)
        }
    }
}

async fn run(
    factory: PeerFactory,
    hub: Hub,
    audio: Option<AudioHub>,
    key: SessionKey,
    offer_sdp: String,
    events: mpsc::UnboundedSender<(SessionKey, SessionEvent)>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let emit = |event: SessionEvent| {
        let _ = events.send((key.clone(), event));
    };
    let (news_tx, mut news) = mpsc::unbounded_channel();
    let started = Instant::now();
    let (session, answer_sdp) = match answer(&factory, audio.is_some(), offer_sdp, news_tx).await {
        Ok(ok) => ok,
        Err(err) => {
            emit(SessionEvent::Failed(err));
            return;
        }
    };
    debug!(cid = %key.cid, ms = started.elapsed().as_millis() as u64, "answer ready");
    emit(SessionEvent::Answered(answer_sdp));
    // Start the video pipeline now, while ICE and DTLS run, so that a cold start (opening the
    // source, creating the encoder, the first frame) is over by the time the viewer connects.
    // Held until the viewer's own feed exists; an unconnected session ends at --peer-timeout.
    let mut warm_up = Some(hub.subscribe());
    // The same for audio when this viewer gets it: Chromium holds video back until it can play
    // audio in sync, so a cold audio start would delay the first picture too.
    let mut audio_warm_up = audio
        .as_ref()
        .filter(|_| session.audio.is_some())
        .map(AudioHub::subscribe);

    let mut media: Vec<JoinHandle<()>> = Vec::new();
    let mut channels: Vec<JoinHandle<()>> = Vec::new();
    let counters = Arc::new(SessionCounters::default());
    let budget = Arc::new(control::ViewerBudget::default());
    let mut check = tokio::time::interval(DTLS_CHECK_INTERVAL);
    let reason = loop {
        tokio::select! {
            _ = check.tick(), if !media.is_empty() => {
                if let Some(dtls) = &session.dtls {
                    let state = dtls.state().await;
                    if matches!(state, Ok(RTCDtlsTransportState::Closed | RTCDtlsTransportState::Failed)) {
                        break "the viewer closed the connection".to_string();
                    }
                }
            }
            command = commands.recv() => match command {
                Some(Command::AddCandidate(candidate)) => {
                    let init = candidate.unwrap_or_else(|| RTCIceCandidateInit {
                        candidate: String::new(),
                        ..Default::default()
                    });
                    if let Err(err) = session.pc.add_ice_candidate(init).await {
                        debug!(cid = %key.cid, "remote candidate not added: {err}");
                    }
                }
                Some(Command::Close) | None => break "closed by the device".to_string(),
            },
            item = news.recv() => match item {
                Some(PeerNews::Candidate(mut init)) => {
                    init.sdp_mid = Some(session.mid.clone());
                    init.sdp_mline_index = Some(0);
                    emit(SessionEvent::LocalCandidate(Some(init)));
                }
                Some(PeerNews::GatheringComplete) => emit(SessionEvent::LocalCandidate(None)),
                Some(PeerNews::DataChannel(channel)) => {
                    let label = channel.label().await.unwrap_or_default();
                    debug!(cid = %key.cid, label, "data channel opened by the viewer");
                    channels.retain(|task| !task.is_finished());
                    if channels.len() >= control::MAX_CHANNELS {
                        debug!(cid = %key.cid, label, "data channel refused: too many open");
                        let _ = channel.close().await;
                        continue;
                    }
                    channels.push(if label == control::LABEL {
                        tokio::spawn(control::serve(channel, ControlContext {
                            hub: hub.clone(),
                            counters: Arc::clone(&counters),
                            pc: Arc::clone(&session.pc),
                            budget: Arc::clone(&budget),
                        }))
                    } else {
                        tokio::spawn(control::ignore(channel))
                    });
                }
                Some(PeerNews::State(RTCPeerConnectionState::Connected)) => {
                    if media.is_empty() {
                        info!(cid = %key.cid, ms = started.elapsed().as_millis() as u64, "viewer connected");
                        emit(SessionEvent::Connected);
                        // Video waits for audio only when this viewer gets both.
                        let sync = audio.clone().filter(|_| session.audio.is_some());
                        // The warm-up subscription has buffered the stream since the answer:
                        // its keyframe, if recent, is this viewer's first picture.
                        let feed = match warm_up.take() {
                            Some(warm) => warm.resume(MAX_BACKLOG_AGE),
                            None => hub.subscribe(),
                        };
                        media.push(tokio::spawn(stream_video(
                            feed,
                            Arc::clone(&session.track),
                            session.ssrc,
                            session.payload_type,
                            sync,
                            Arc::clone(&counters),
                        )));
                        if let (Some(hub), Some(send)) = (&audio, &session.audio) {
                            let feed = hub.subscribe();
                            drop(audio_warm_up.take());
                            media.push(tokio::spawn(stream_audio(
                                feed,
                                Arc::clone(&send.track),
                                send.ssrc,
                                send.payload_type,
                            )));
                        }
                        media.push(tokio::spawn(forward_keyframe_requests(
                            hub.clone(),
                            Arc::clone(&session.track),
                        )));
                    }
                }
                Some(PeerNews::State(state @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed))) => {
                    break format!("connection {state}");
                }
                Some(PeerNews::State(state)) => debug!(cid = %key.cid, "connection {state}"),
                None => break "peer connection gone".to_string(),
            },
        }
    };
    for task in media.into_iter().chain(channels) {
        task.abort();
    }
    if let Err(err) = session.pc.close().await {
        debug!(cid = %key.cid, "closing peer connection: {err}");
    }
    info!(cid = %key.cid, "session ended: {reason}");
    emit(SessionEvent::Closed(reason));
}

/// Send the hub's frames to this viewer until the task is aborted. With `sync`, each frame is
/// held until it is as old as the audio hub's packets are when they are sent.
async fn stream_video(
    mut feed: Subscription,
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    payload_type: u8,
    sync: Option<AudioHub>,
    counters: Arc<SessionCounters>,
) {
    let mut previous: Option<Instant> = None;
    while let Some(frame) = feed.recv().await {
        if let Some(audio) = &sync {
            let due = frame.instant + audio.latency();
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        // The packetizer advances the RTP clock by each sample's duration: use the capture
        // interval, so RTP time follows the capture clock.
        let duration = previous
            .map(|p| frame.instant.saturating_duration_since(p))
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_millis(33));
        previous = Some(frame.instant);
        let sample = Sample {
            data: frame.data.clone(),
            duration,
            ..Sample::new(frame.instant)
        };
        if let Err(err) = track
            .sample_writer(ssrc, payload_type)
            .write_sample(&sample)
            .await
        {
            warn!("sending a frame: {err}");
        } else {
            counters.frames.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
            if frame.keyframe {
                counters.keyframes.fetch_add(1, Ordering::Relaxed);
            }
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

/// Turn the viewer's PLI/FIR into keyframe requests.
async fn forward_keyframe_requests(hub: Hub, track: Arc<TrackLocalStaticSample>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(_) = event {
            hub.request_keyframe(KeyframeReason::Loss);
        }
    }
}
