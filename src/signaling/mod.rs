//! Signaling: how viewers and the device find each other over MQTT.
//!
//! [`protocol`] owns the wire format (topics and JSON messages, see `docs/PROTOCOL.md`); it does
//! no I/O. Session bookkeeping (which CID has which peer, timeouts) lives beside it, for viewers
//! over MQTT and over WHEP alike; [`whep`] owns WHEP's side of the format.

pub mod protocol;
pub mod sessions;
pub mod whep;

pub use sessions::SessionKey;

pub use protocol::{
    AudioStatus, CID_MAX_LEN, EARLY_CANDIDATE_HOLD, ErrorCode, ErrorMsg, IceCandidateMsg,
    MediaState, ProtocolError, SdpType, SessionDescriptionMsg, Status, TopicKind, Topics,
    VIDEO_CODEC_H264, VideoStatus, check_offer_sdp, offline_status_json, parse_answer,
    parse_candidate, parse_error, parse_offer, parse_status, parse_topic, validate_cid,
    validate_uid,
};
