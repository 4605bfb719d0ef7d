//! The interceptor chain of the device's peer connections, built by hand instead of with
//! `register_default_interceptors`, and what it needs registered on the media engine.
//!
//! Wire-most first (the order the library's `Registry` sorts slots in):
//!
//! | slot | interceptor | why |
//! |---|---|---|
//! | 1 000 | `CongestionControlInterceptor` over [`LinkEstimator`] | send history + transport-cc feedback → the viewer's bandwidth estimate (the library's GCC, corrected) |
//! | 2 000 | `TwccSenderInterceptor` | the transport-wide sequence number on every packet of a stream that negotiated it; without it Chromium sends no transport-cc feedback (the default chain only has the receiver half) |
//! | 3 000 | [`LinkPacer`] | the library pacer at 2.5 × the estimate, backlog published |
//! | 4 000 | [`Retransmitter`] | our NACK responder: bounded, paced, RTX when negotiated (replaces the library's, which resends without limit) |
//! | 11 000 | `SenderReportInterceptor` | RTCP sender reports (lip sync, round-trip times) |
//! | 14 000 | [`KeyframeRequestForwarder`] | PLI/FIR to the application |
//!
//! Left out on purpose: the NACK generator, the TWCC receiver and the receiver-report
//! interceptor act on *inbound* RTP, and a device session receives none.

use std::sync::Arc;

use rtc::interceptor::{
    CongestionControlBuilder, Registry, SenderReportBuilder, Slot, TwccSenderBuilder,
};
use rtc::peer_connection::configuration::interceptor_registry::configure_simulcast_extension_headers;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_RTX;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::peer_connection::MediaEngine;

use super::bitrate::BitrateRange;
use super::estimate::LinkEstimator;
use super::link::Link;
use super::pacer::LinkPacer;
use super::retransmit::Retransmitter;
use super::rtcp::KeyframeRequestForwarder;

/// The RTX payload type we offer for each of our H.264 payload types (`apt`).
pub const RTX_PAYLOAD_TYPES: [(u8, u8); 2] = [(102, 103), (127, 121)];

/// Register what the sender chain needs the answer to carry: `nack`, `nack pli`, `transport-cc`
/// and its header extension (video and audio: every packet on the wire is counted), the mid/rid
/// extensions the default registers, and `video/rtx` for each H.264 payload type.
pub fn register(media: &mut MediaEngine) -> Result<(), webrtc::error::Error> {
    for (typ, parameter) in [("nack", ""), ("nack", "pli"), ("transport-cc", "")] {
        media.register_feedback(
            RTCPFeedback {
                typ: typ.to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    media.register_feedback(
        RTCPFeedback {
            typ: "transport-cc".to_owned(),
            parameter: String::new(),
        },
        RtpCodecKind::Audio,
    );
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
            },
            kind,
            None,
        )?;
    }
    configure_simulcast_extension_headers(media)?;
    for (apt, payload_type) in RTX_PAYLOAD_TYPES {
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_RTX.to_owned(),
                    clock_rate: 90000,
                    channels: 0,
                    sdp_fmtp_line: format!("apt={apt}"),
                    rtcp_feedback: vec![],
                },
                payload_type,
            },
            RtpCodecKind::Video,
        )?;
    }
    Ok(())
}

/// The chain for one device peer connection, reporting to `link`.
pub fn registry(link: &Arc<Link>, range: &BitrateRange) -> Registry {
    let start = range.start_bps as f64;
    let estimator = LinkEstimator::new(
        Arc::clone(link),
        start,
        range.min_bps as f64,
        range.max_bps as f64,
    );
    Registry::new()
        .with(
            Slot::CongestionControl,
            CongestionControlBuilder::new(estimator).build(),
        )
        .with(Slot::TwccSender, TwccSenderBuilder::new().build())
        .with(Slot::Pacer, LinkPacer::new(Arc::clone(link), start))
        .with(Slot::NackResponder, Retransmitter::new(Arc::clone(link)))
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        .with(Slot::from(14_000), KeyframeRequestForwarder::default())
}
