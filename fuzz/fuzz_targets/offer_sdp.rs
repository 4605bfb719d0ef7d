//! The offer-to-answer path up to the sockets: the codec check (`offer_video`, `offer_has_audio`)
//! and the WebRTC stack's SDP parser, on the same text the daemon hands them. The input is
//! either a raw SDP or a signaling offer message (`{"type":"offer","sdp":…}`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spyglass::peer::sdp::{OfferVideo, offer_has_audio, offer_video};
use spyglass::signaling::protocol::parse_offer;
use webrtc::peer_connection::RTCSessionDescription;

fuzz_target!(|data: &[u8]| {
    let sdp = match parse_offer(data) {
        Ok(sdp) => sdp,
        Err(_) => match std::str::from_utf8(data) {
            Ok(s) => s.to_string(),
            Err(_) => return,
        },
    };
    match offer_video(&sdp) {
        OfferVideo::H264 { payload_types } => assert!(!payload_types.is_empty()),
        OfferVideo::Unsupported(_) | OfferVideo::NoVideo => {}
    }
    let _ = offer_has_audio(&sdp);
    if let Ok(offer) = RTCSessionDescription::offer(sdp) {
        let _ = offer.unmarshal();
    }
});
