//! WebRTC peers: how every peer connection in spyglass is set up (codecs, interceptors, the DTLS
//! certificate, renewed before it expires in [`certificate`], bind addresses, mDNS, ICE timing,
//! its [`runtime`] with the sockets' [`nomination`] shim, and the [`connectivity`] watch), the
//! device's per-viewer [`session`], the offer checks in [`sdp`], which remote candidates reach the
//! ICE agent ([`candidates`]), and the device's TURN servers ([`relay`]). The device's
//! connections run our own interceptor [`chain`] (bandwidth [`estimate`], [`pacer`],
//! [`retransmit`]), which reports on each viewer's [`link`]; [`bitrate`] turns every viewer's
//! estimate into one target for the shared encoder.

pub mod bitrate;
pub mod candidates;
pub mod certificate;
pub mod chain;
pub mod connectivity;
pub mod datachannel;
pub mod estimate;
pub mod keyframes;
pub mod link;
pub mod nomination;
pub mod pacer;
pub mod packetize;
pub mod relay;
pub mod retransmit;
pub mod rtcp;
pub mod runtime;
pub mod sdp;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::network_type::NetworkType;
use rtc::interceptor::Slot;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceServer, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

/// No consent (STUN) from a connected peer for this long: the connection is "disconnected".
pub const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(4);
/// Disconnected for this much longer: the viewer has vanished and its session ends (enforced by
/// the session: webrtc's own "failed" timeout also bounds the wait for a first connection, which
/// is `--peer-timeout`).
pub const ICE_VANISHED_AFTER: Duration = Duration::from_secs(6);
/// webrtc's "failed" timeout when the caller gives no connect timeout.
const ICE_FAILED_DEFAULT: Duration = Duration::from_secs(26);

/// Network settings shared by every peer connection.
#[derive(Debug, Clone, Default)]
pub struct PeerSettings {
    /// Local addresses to bind and offer as host candidates; empty means every interface.
    pub bind: Vec<IpAddr>,
    /// Resolve remote `.local` candidates over multicast DNS.
    pub mdns: bool,
    pub ice_servers: Vec<RTCIceServer>,
    /// Bitrates a device connection's bandwidth estimate starts at and stays within.
    pub rate: crate::peer::bitrate::BitrateRange,
    /// Which remote candidates a device session accepts (see [`candidates`]).
    pub remote: candidates::RemotePolicy,
    /// How long a connection may take to connect before ICE gives up (`--peer-timeout`; zero:
    /// 30 s).
    pub connect_timeout: Duration,
    /// ICE check pacing while connecting; `None` is webrtc's default, 200 ms (RFC 8445-like
    /// for the few pairs a session has). A controlling agent (`spyglass view`) also nominates only
    /// on these ticks when a better pair is still being checked, so the viewer uses
    /// [`VIEWER_CHECK_INTERVAL`].
    pub check_interval: Option<Duration>,
    /// Make the TURN servers' credentials from coturn's shared secret, fresh for each peer
    /// connection, instead of using the ones in `ice_servers`.
    pub turn_rest: Option<TurnRest>,
    /// At an ICE restart this side starts (a viewer whose network changed), bind new sockets and
    /// gather candidates afresh, including new TURN allocations: the old addresses may be gone.
    /// The device keeps its own (a viewer's restart does not move the device).
    pub regather_on_ice_restart: bool,
}

/// TURN REST API credentials for the device's own TURN servers.
#[derive(Debug, Clone)]
pub struct TurnRest {
    pub secret: crate::turn_rest::TurnSecret,
    /// The user name's part after `EXPIRY:`.
    pub name: String,
    pub lifetime: std::time::Duration,
}

impl PeerSettings {
    /// The ICE servers for a peer connection made now: TURN servers get a fresh time-limited
    /// credential when there is a TURN REST secret.
    pub fn ice_servers_now(&self) -> Vec<RTCIceServer> {
        let Some(rest) = &self.turn_rest else {
            return self.ice_servers.clone();
        };
        let credential =
            rest.secret
                .credential(&rest.name, std::time::SystemTime::now(), rest.lifetime);
        self.ice_servers
            .iter()
            .map(|server| {
                if server.urls.iter().any(|u| u.starts_with("turn")) {
                    RTCIceServer {
                        urls: server.urls.clone(),
                        username: credential.username.clone(),
                        credential: credential.password.clone(),
                    }
                } else {
                    server.clone()
                }
            })
            .collect()
    }
}

impl PeerSettings {
    /// STUN and TURN URLs configured: each may add local candidates to pair with.
    pub fn stun_and_turn_urls(&self) -> (usize, usize) {
        let urls = || self.ice_servers.iter().flat_map(|s| s.urls.iter());
        let stun = urls().filter(|u| u.starts_with("stun")).count();
        let turn = urls().filter(|u| u.starts_with("turn")).count();
        (stun, turn)
    }
}

/// ICE check pacing of the device: webrtc's default, one check per 200 ms (the driver wakes up
/// at once when there is something to send, see [`runtime`], so nothing waits for a tick).
pub const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Binding requests per candidate pair at [`ICE_CHECK_INTERVAL`] (webrtc's default, 1.4 s per
/// pair): a viewer's candidates cost the device at most this many requests each.
pub const ICE_MAX_BINDING_REQUESTS: u16 = 7;

/// ICE check pacing of `spyglass view` (RFC 8445's Ta); binding requests per pair are scaled to
/// keep webrtc's 1.4 s per pair.
pub const VIEWER_CHECK_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("WebRTC: {0}")]
    Webrtc(#[from] webrtc::error::Error),
    #[error("WebRTC setup: {0}")]
    Setup(String),
}

/// Builds peer connections. Holds the DTLS certificate, renewed before it expires, and which of
/// the TURN servers work.
#[derive(Clone)]
pub struct PeerFactory {
    settings: Arc<PeerSettings>,
    certificates: Arc<certificate::CertificateStore>,
    relays: Arc<relay::RelayHealth>,
}

/// The H.264 variants we send: constrained baseline and baseline, packetization-mode 1 (both are
/// satisfied by openh264's constrained-baseline stream). Registering exactly these keeps the media
/// engine from falling back to a mime-only match that could pick packetization-mode 0.
pub fn h264_codecs() -> Vec<RTCRtpCodecParameters> {
    [("42e01f", 102u8), ("42001f", 127u8)]
        .into_iter()
        .map(|(profile, pt)| h264_codec(profile, pt))
        .collect()
}

/// The H.264 variants the headless viewer offers to receive: those of [`h264_codecs`], and Main
/// and High, which openh264's decoder takes too (a camera's H.264 passed through is often one
/// of them).
pub fn viewer_codecs() -> Vec<RTCRtpCodecParameters> {
    let mut codecs = h264_codecs();
    codecs.push(h264_codec("4d001f", 116));
    codecs.push(h264_codec("64001f", 118));
    codecs
}

/// H.264 with packetization-mode 1 and `profile_level_id` on payload type `pt`. For H.264 passed
/// through from the source, the one codec a session registers is the offer's entry that decodes
/// the stream (`sdp::passthrough_codec`): the library then matches exactly that payload type.
pub fn h264_codec(profile_level_id: &str, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile_level_id}"
            ),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

/// The Opus we send: 48 kHz, `opus/48000/2` as RFC 7587 requires whatever the channel count, 20 ms
/// packets with in-band FEC.
pub fn opus_codec() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
    }
}

/// H.264 (the variants in `video_codecs`) and Opus.
fn media_engine(video_codecs: Vec<RTCRtpCodecParameters>) -> Result<MediaEngine, PeerError> {
    let mut media = MediaEngine::default();
    for codec in video_codecs {
        media
            .register_codec(codec, RtpCodecKind::Video)
            .map_err(PeerError::Webrtc)?;
    }
    media
        .register_codec(opus_codec(), RtpCodecKind::Audio)
        .map_err(PeerError::Webrtc)?;
    Ok(media)
}

impl PeerFactory {
    pub fn new(settings: PeerSettings) -> Result<Self, PeerError> {
        let certificates = certificate::CertificateStore::new(std::time::SystemTime::now())
            .map_err(|e| PeerError::Setup(e.to_string()))?;
        Ok(PeerFactory {
            settings: Arc::new(settings),
            certificates: Arc::new(certificates),
            relays: Arc::default(),
        })
    }

    pub fn settings(&self) -> &PeerSettings {
        &self.settings
    }

    /// The DTLS certificates in use (renewed on demand).
    pub fn certificates(&self) -> &certificate::CertificateStore {
        &self.certificates
    }

    /// Which TURN servers new connections get ([`relay::watch`] keeps it up to date).
    pub fn relays(&self) -> &Arc<relay::RelayHealth> {
        &self.relays
    }

    /// A new peer connection that speaks H.264 video and Opus audio and reports to `handler`,
    /// with webrtc's default interceptors: what a viewer (`spyglass view`) uses.
    pub async fn build(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<Arc<dyn PeerConnection>, PeerError> {
        Ok(self.build_watched(handler).await?.0)
    }

    /// [`Self::build`], and the record of what its ICE agent tries and selects.
    pub async fn build_watched(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<(Arc<dyn PeerConnection>, Arc<connectivity::Connectivity>), PeerError> {
        self.build_watched_for(handler, h264_codecs()).await
    }

    /// [`Self::build_watched`], with `video_codecs` as the H.264 variants it takes.
    pub async fn build_watched_for(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
        video_codecs: Vec<RTCRtpCodecParameters>,
    ) -> Result<(Arc<dyn PeerConnection>, Arc<connectivity::Connectivity>), PeerError> {
        let mut media = media_engine(video_codecs)?;
        let registry = register_default_interceptors(Registry::new(), &mut media)
            .map_err(PeerError::Webrtc)?
            .with(
                Slot::from(14_000),
                rtcp::KeyframeRequestForwarder::default(),
            );
        self.connect(handler, media, registry).await
    }

    /// A device's peer connection to one viewer: our sender [`chain`] (congestion control,
    /// pacing, bounded retransmission, RTX). Its [`link::Link`] tells how the viewer's link fares,
    /// its [`connectivity::Connectivity`] what its ICE agent tries and selects.
    #[allow(clippy::type_complexity)]
    /// `video_codecs` are the H.264 variants it may send ([`h264_codecs`] for our encoder, one
    /// codec for H.264 passed through).
    pub async fn build_sender(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
        video_codecs: Vec<RTCRtpCodecParameters>,
    ) -> Result<
        (
            Arc<dyn PeerConnection>,
            Arc<link::Link>,
            Arc<connectivity::Connectivity>,
        ),
        PeerError,
    > {
        let mut media = media_engine(video_codecs)?;
        chain::register(&mut media).map_err(PeerError::Webrtc)?;
        let link = Arc::new(link::Link::new(self.settings.rate.start_bps));
        let registry = chain::registry(&link, &self.settings.rate);
        let (pc, connectivity) = self.connect(handler, media, registry).await?;
        Ok((pc, link, connectivity))
    }

    async fn connect(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
        media: MediaEngine,
        registry: Registry,
    ) -> Result<(Arc<dyn PeerConnection>, Arc<connectivity::Connectivity>), PeerError> {
        let mdns = if self.settings.mdns {
            rtc::ice::mdns::MulticastDnsMode::QueryOnly
        } else {
            rtc::ice::mdns::MulticastDnsMode::Disabled
        };
        // webrtc's ICE agent fails a connection that has not connected `disconnected + failed`
        // after it started checking (at the offer), and a connected one that lost consent for as
        // long: so "failed" is what is left of the connect timeout, and a connected viewer that
        // vanished is ended sooner by its session (ICE_VANISHED_AFTER).
        let failed_after = if self.settings.connect_timeout.is_zero() {
            ICE_FAILED_DEFAULT
        } else {
            self.settings
                .connect_timeout
                .saturating_sub(ICE_DISCONNECTED_AFTER)
                .max(Duration::from_secs(1))
        };
        let nominate_at_once = Some(Duration::ZERO);
        let setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(mdns)
            .with_discard_local_candidates_during_ice_restart(self.settings.regather_on_ice_restart)
            .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(failed_after), None)
            // Check pacing is webrtc's default (200 ms, 7 requests per pair) unless the settings
            // say otherwise: the driver wakes up at once when there is something to send
            // (runtime::WakeRuntime), so the handshake no longer waits for a check tick.
            //
            // A controlling agent (`spyglass view`; the device answers, so it is controlled and
            // never nominates) nominates the best pair that works as soon as it works, instead of
            // waiting 0.5 s for a server-reflexive, 1 s for a peer-reflexive and 2 s for a
            // relayed pair in case a better one comes along (webrtc's defaults).
            .with_srflx_acceptance_min_wait(nominate_at_once)
            .with_prflx_acceptance_min_wait(nominate_at_once)
            .with_relay_acceptance_min_wait(nominate_at_once)
            .with_ice_connection_attempts(
                self.settings.check_interval,
                self.settings.check_interval.map(|i| {
                    (Duration::from_millis(1400).as_millis() / i.as_millis().max(1)).clamp(1, 70)
                        as u16
                }),
            )
            // UDP only: the agent neither gathers nor pairs TCP candidates (the session's gate
            // keeps remote TCP candidates away from webrtc altogether, see `candidates`).
            .with_network_types(vec![NetworkType::Udp4, NetworkType::Udp6])
            .build();
        let certificate = self
            .certificates
            .certificate(std::time::SystemTime::now())
            .map_err(|e| PeerError::Setup(e.to_string()))?;
        let ice_servers = self.relays.usable(&self.settings.ice_servers_now());
        let turn = ice_servers
            .iter()
            .flat_map(|s| s.urls.iter())
            .any(|u| u.starts_with("turn"));
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .with_certificates(vec![certificate])
            .build();
        let udp_addrs: Vec<String> = if self.settings.bind.is_empty() {
            vec!["0.0.0.0:0".to_string()]
        } else {
            self.settings
                .bind
                .iter()
                .map(|ip| std::net::SocketAddr::new(*ip, 0).to_string())
                .collect()
        };
        let pace = Arc::new(runtime::Pace::default());
        let wake = runtime::WakeRuntime::new(Arc::clone(&pace))
            .ok_or_else(|| PeerError::Setup("webrtc has no async runtime".into()))?;
        let record = Arc::new(connectivity::Connectivity::new(turn));
        let watch = Arc::new(connectivity::Watch::new(handler, pace, Arc::clone(&record)));
        let pc = PeerConnectionBuilder::new()
            .with_setting_engine(setting_engine)
            .with_configuration(config)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::clone(&watch) as Arc<dyn PeerConnectionEventHandler>)
            .with_runtime(Arc::new(wake))
            .with_udp_addrs(udp_addrs)
            .with_data_channel_send_buffer_limit(datachannel::SEND_BUFFER_BYTES)
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        watch.attach(&pc);
        Ok((pc, record))
    }
}
