//! WebRTC peers: how every peer connection in spyglass is set up (codecs, interceptors, the DTLS
//! certificate made once, bind addresses, mDNS), the device's per-viewer [`session`], and the
//! offer checks in [`sdp`].

pub mod control;
pub mod rtcp;
pub mod sdp;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;

use rtc::crypto::SignatureScheme;
use rtc::interceptor::Slot;
use rtc::peer_connection::certificate::CertificateParams;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCCertificate,
    RTCConfigurationBuilder, RTCIceServer, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

/// No traffic from the peer for this long: the connection is "disconnected".
pub const ICE_DISCONNECTED_AFTER: std::time::Duration = std::time::Duration::from_secs(4);
/// Disconnected for this much longer: "failed", and the session ends.
pub const ICE_FAILED_AFTER: std::time::Duration = std::time::Duration::from_secs(6);
/// ICE check pacing while connecting (webrtc's default is 200 ms). It also bounds how long the
/// DTLS ClientHello waits: webrtc 0.21 queues it when ICE selects a pair and sends it on the
/// next timer tick, so at 200 ms the handshake started ~150 ms late (docs/PERFORMANCE.md).
pub const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Binding requests per candidate pair before it fails: 70 x 20 ms keeps webrtc's default
/// window of 1.4 s (7 x 200 ms), so slow networks connect as before.
pub const ICE_MAX_BINDING_REQUESTS: u16 = 70;

/// Network settings shared by every peer connection.
#[derive(Debug, Clone, Default)]
pub struct PeerSettings {
    /// Local addresses to bind and offer as host candidates; empty means every interface.
    pub bind: Vec<IpAddr>,
    /// Resolve remote `.local` candidates over multicast DNS.
    pub mdns: bool,
    pub ice_servers: Vec<RTCIceServer>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("WebRTC: {0}")]
    Webrtc(#[from] webrtc::error::Error),
    #[error("WebRTC setup: {0}")]
    Setup(String),
}

/// Builds peer connections. Holds the DTLS certificate, made once at start.
#[derive(Clone)]
pub struct PeerFactory {
    settings: Arc<PeerSettings>,
    certificate: RTCCertificate,
}

/// The H.264 variants we send: constrained baseline and baseline, packetization-mode 1 (both are
/// satisfied by openh264's constrained-baseline stream). Registering exactly these keeps the media
/// engine from falling back to a mime-only match that could pick packetization-mode 0.
pub fn h264_codecs() -> Vec<RTCRtpCodecParameters> {
    [("42e01f", 102u8), ("42001f", 127u8)]
        .into_iter()
        .map(|(profile, pt)| RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_H264.to_owned(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: format!(
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"
                ),
                rtcp_feedback: vec![],
            },
            payload_type: pt,
            ..Default::default()
        })
        .collect()
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

impl PeerFactory {
    pub fn new(settings: PeerSettings) -> Result<Self, PeerError> {
        let provider = rtc::crypto::default_provider()
            .map_err(|e| PeerError::Setup(format!("crypto provider: {e}")))?;
        let params = CertificateParams::new(vec!["spyglass".to_owned()])
            .map_err(|e| PeerError::Setup(format!("certificate parameters: {e}")))?;
        let certificate =
            RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
                .map_err(|e| PeerError::Setup(format!("DTLS certificate: {e}")))?;
        Ok(PeerFactory {
            settings: Arc::new(settings),
            certificate,
        })
    }

    pub fn settings(&self) -> &PeerSettings {
        &self.settings
    }

    /// A new peer connection that speaks H.264 video and Opus audio and reports to `handler`.
    pub async fn build(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<Arc<dyn PeerConnection>, PeerError> {
        let mut media = MediaEngine::default();
        for codec in h264_codecs() {
            media
                .register_codec(codec, RtpCodecKind::Video)
                .map_err(PeerError::Webrtc)?;
        }
        media
            .register_codec(opus_codec(), RtpCodecKind::Audio)
            .map_err(PeerError::Webrtc)?;
        let registry = register_default_interceptors(Registry::new(), &mut media)
            .map_err(PeerError::Webrtc)?
            .with(
                Slot::from(14_000),
                rtcp::KeyframeRequestForwarder::default(),
            );
        let mdns = if self.settings.mdns {
            rtc::ice::mdns::MulticastDnsMode::QueryOnly
        } else {
            rtc::ice::mdns::MulticastDnsMode::Disabled
        };
        let setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(mdns)
            // A viewer that vanishes (tab closed, network gone) frees its place after ~10 s
            // instead of the default 30 s: 4 s without consent is "disconnected", 6 s more "failed".
            .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), None)
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(self.settings.ice_servers.clone())
            .with_certificates(vec![self.certificate.clone()])
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
        let pc = PeerConnectionBuilder::new()
            .with_setting_engine(setting_engine)
            .with_configuration(config)
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(udp_addrs)
            .with_data_channel_send_buffer_limit(control::SEND_BUFFER_BYTES)
            .build()
            .await?;
        Ok(Arc::new(pc))
    }
}
