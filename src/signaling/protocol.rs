//! The signaling wire protocol: MQTT topic names and the JSON messages sent on them.
//!
//! This module owns what goes over the broker and nothing else: building and parsing topic
//! strings, validating device ids (UID) and viewer-chosen client ids (CID), and the message
//! types with their parsers (each message read into a serde-derived struct of [`Field`]s, then
//! checked field by field so that every refusal has the text docs/PROTOCOL.md shows). It does no
//! I/O. `docs/PROTOCOL.md` is the public description; keep
//! the two in step.
//!
//! | topic                | direction        | payload                              |
//! |----------------------|------------------|--------------------------------------|
//! | `{uid}/offer/{cid}`  | viewer → device  | [`SessionDescriptionMsg`] (`offer`)  |
//! | `{uid}/answer/{cid}` | device → viewer  | [`SessionDescriptionMsg`] (`answer`) |
//! | `{uid}/ice/{cid}`    | both ways        | [`IceCandidateMsg`]                  |
//! | `{uid}/error/{cid}`  | device → viewer  | [`ErrorMsg`]                         |
//! | `{uid}/ice-servers/{cid}` | both ways   | request: any JSON object; reply: [`IceServersMsg`] |
//! | `{uid}/status`       | device, retained | [`Status`] or [`offline_status_json`]|

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest client id a viewer may choose.
pub const CID_MAX_LEN: usize = 64;

/// How long the device holds ICE candidates that arrive on a CID before its offer.
pub const EARLY_CANDIDATE_HOLD: Duration = Duration::from_secs(5);

/// Longest `candidate` string accepted (bytes). Real candidates are under 200 bytes (an IPv6
/// server-reflexive one with every extension); this bounds what the device holds for a viewer.
pub const CANDIDATE_MAX_LEN: usize = 512;
/// Longest `sdpMid` accepted (bytes).
pub const SDP_MID_MAX_LEN: usize = 64;

/// Longest ICE-server request accepted (bytes): the request carries nothing.
pub const ICE_SERVERS_REQUEST_MAX_LEN: usize = 1024;
/// Longest `usernameFragment` accepted (bytes; RFC 8839 allows 256 characters).
pub const UFRAG_MAX_LEN: usize = 256;

/// Codec named in [`VideoStatus::codec`].
pub const VIDEO_CODEC_H264: &str = "H264";

/// Why a topic, id or payload was refused. Everything here is the sender's fault, so every
/// variant maps to [`ErrorCode::BadRequest`] (see [`ProtocolError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid device id {uid:?}: {reason}")]
    InvalidUid { uid: String, reason: &'static str },
    #[error("invalid client id {cid:?}: {reason}")]
    InvalidCid { cid: String, reason: &'static str },
    #[error("{what} payload is not UTF-8 (bad byte at offset {offset})")]
    NotUtf8 { what: &'static str, offset: usize },
    #[error("{what} payload is not valid JSON: {detail}")]
    NotJson { what: &'static str, detail: String },
    #[error("{what} payload must be a JSON object, got {got}")]
    NotObject {
        what: &'static str,
        got: &'static str,
    },
    #[error("{what}: field \"{field}\" is missing")]
    MissingField {
        what: &'static str,
        field: &'static str,
    },
    #[error("offer SDP is not a WebRTC offer: {0}")]
    NotWebrtcOffer(&'static str),
    #[error("{what}: field \"{field}\" must be {expected}, got {got}")]
    BadField {
        what: &'static str,
        field: &'static str,
        expected: &'static str,
        got: String,
    },
}

impl ProtocolError {
    /// The code to send back on `{uid}/error/{cid}`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }

    /// The message to send back on `{uid}/error/{cid}`.
    pub fn to_error_msg(&self) -> ErrorMsg {
        ErrorMsg::new(self.code(), self.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Ids

/// Check a device id: one or more non-empty topic levels separated by `/`, without the MQTT
/// wildcards `+` and `#`, control characters (NUL included), or a leading `$` (reserved for the
/// broker's own topics).
pub fn validate_uid(uid: &str) -> Result<(), ProtocolError> {
    let reason = if uid.is_empty() {
        Some("must not be empty")
    } else if uid.contains('+') || uid.contains('#') {
        Some("must not contain the MQTT wildcards `+` or `#`")
    } else if uid.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if uid.starts_with('/') || uid.ends_with('/') {
        Some("must not start or end with `/`")
    } else if uid.split('/').any(str::is_empty) {
        Some("must not contain an empty level (`//`)")
    } else if uid.starts_with('$') {
        Some("must not start with `$` (reserved for broker topics)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ProtocolError::InvalidUid {
            uid: uid.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Check a client id: 1 to [`CID_MAX_LEN`] characters from `A-Z a-z 0-9 _ -`.
pub fn validate_cid(cid: &str) -> Result<(), ProtocolError> {
    let reason = if cid.is_empty() {
        Some("must not be empty")
    } else if cid.len() > CID_MAX_LEN {
        Some("must be at most 64 characters")
    } else if !cid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Some("may only contain A-Z, a-z, 0-9, `_` and `-`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ProtocolError::InvalidCid {
            cid: cid.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Topics

/// The last-but-one topic level, or `status`: what a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Offer,
    Answer,
    Ice,
    Error,
    /// `{uid}/ice-servers/{cid}`: a viewer's request for ICE servers, and the device's reply.
    IceServers,
    Status,
}

impl TopicKind {
    /// The topic level naming this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Offer => "offer",
            TopicKind::Answer => "answer",
            TopicKind::Ice => "ice",
            TopicKind::Error => "error",
            TopicKind::IceServers => "ice-servers",
            TopicKind::Status => "status",
        }
    }

    /// Whether messages of this kind are published with the retain flag (only `status`).
    pub fn retained(self) -> bool {
        self == TopicKind::Status
    }
}

/// Topic names for one device. Every method returns a concrete topic (no wildcards) except the
/// `*_filters` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    uid: String,
}

impl Topics {
    /// Topics for device `uid`; fails if the uid is not valid (see [`validate_uid`]).
    pub fn new(uid: impl Into<String>) -> Result<Self, ProtocolError> {
        let uid = uid.into();
        validate_uid(&uid)?;
        Ok(Topics { uid })
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    fn per_viewer(&self, kind: TopicKind, cid: &str) -> String {
        debug_assert!(
            validate_cid(cid).is_ok(),
            "topic built with invalid cid {cid:?}"
        );
        format!("{}/{}/{}", self.uid, kind.as_str(), cid)
    }

    /// `{uid}/offer/{cid}`. `cid` must be valid (see [`validate_cid`]).
    pub fn offer(&self, cid: &str) -> String {
        self.per_viewer(TopicKind::Offer, cid)
    }

    /// `{uid}/answer/{cid}`.
    pub fn answer(&self, cid: &str) -> String {
        self.per_viewer(TopicKind::Answer, cid)
    }

    /// `{uid}/ice/{cid}`.
    pub fn ice(&self, cid: &str) -> String {
        self.per_viewer(TopicKind::Ice, cid)
    }

    /// `{uid}/error/{cid}`.
    pub fn error(&self, cid: &str) -> String {
        self.per_viewer(TopicKind::Error, cid)
    }

    /// `{uid}/ice-servers/{cid}`: ICE-server requests (viewer → device) and replies.
    pub fn ice_servers(&self, cid: &str) -> String {
        self.per_viewer(TopicKind::IceServers, cid)
    }

    /// `{uid}/status` (retained; also the last-will topic).
    pub fn status(&self) -> String {
        format!("{}/status", self.uid)
    }

    /// What the device subscribes to (with No-Local): `{uid}/offer/+`, `{uid}/ice/+`,
    /// `{uid}/answer/+`, `{uid}/ice-servers/+`.
    pub fn device_filters(&self) -> [String; 4] {
        [
            TopicKind::Offer,
            TopicKind::Ice,
            TopicKind::Answer,
            TopicKind::IceServers,
        ]
        .map(|kind| format!("{}/{}/+", self.uid, kind.as_str()))
    }

    /// What a viewer with client id `cid` subscribes to: `{uid}/answer/{cid}`,
    /// `{uid}/ice/{cid}`, `{uid}/error/{cid}`, `{uid}/ice-servers/{cid}`.
    pub fn viewer_filters(&self, cid: &str) -> [String; 4] {
        [
            self.answer(cid),
            self.ice(cid),
            self.error(cid),
            self.ice_servers(cid),
        ]
    }

    /// [`parse_topic`] for this device.
    pub fn parse<'t>(&self, topic: &'t str) -> Option<(TopicKind, Option<&'t str>)> {
        parse_topic(&self.uid, topic)
    }
}

/// Split a topic of device `uid` into its kind and client id. Returns `None` for topics of other
/// devices, unknown kinds, extra levels and invalid client ids. The client id is `None` only for
/// [`TopicKind::Status`].
pub fn parse_topic<'t>(uid: &str, topic: &'t str) -> Option<(TopicKind, Option<&'t str>)> {
    let rest = topic.strip_prefix(uid)?.strip_prefix('/')?;
    if rest == "status" {
        return Some((TopicKind::Status, None));
    }
    let (kind, cid) = rest.split_once('/')?;
    let kind = match kind {
        "offer" => TopicKind::Offer,
        "answer" => TopicKind::Answer,
        "ice" => TopicKind::Ice,
        "error" => TopicKind::Error,
        "ice-servers" => TopicKind::IceServers,
        _ => return None,
    };
    validate_cid(cid).ok()?;
    Some((kind, Some(cid)))
}

// ---------------------------------------------------------------------------------------------
// Messages

/// `"type"` of a [`SessionDescriptionMsg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
}

impl SdpType {
    pub fn as_str(self) -> &'static str {
        match self {
            SdpType::Offer => "offer",
            SdpType::Answer => "answer",
        }
    }
}

/// `{"type":"offer"|"answer","sdp":"…"}` on the offer and answer topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescriptionMsg {
    #[serde(rename = "type")]
    pub kind: SdpType,
    pub sdp: String,
}

impl SessionDescriptionMsg {
    pub fn offer(sdp: impl Into<String>) -> Self {
        SessionDescriptionMsg {
            kind: SdpType::Offer,
            sdp: sdp.into(),
        }
    }

    pub fn answer(sdp: impl Into<String>) -> Self {
        SessionDescriptionMsg {
            kind: SdpType::Answer,
            sdp: sdp.into(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// `{"candidate":"candidate:…","sdpMid":"0","sdpMLineIndex":0}` on the ice topic. On input,
/// other fields are ignored; on output, absent optional fields are left out. An empty `candidate` means end of candidates and is never represented by this type
/// after [`parse_candidate`]; use [`IceCandidateMsg::end_of_candidates`] to send one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidateMsg {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    /// The ICE username fragment (generation) the candidate belongs to, as browsers send it.
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

impl IceCandidateMsg {
    /// The end-of-candidates message: `{"candidate":""}`.
    pub fn end_of_candidates() -> Self {
        IceCandidateMsg {
            candidate: String::new(),
            sdp_mid: None,
            sdp_mline_index: None,
            username_fragment: None,
        }
    }

    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.is_empty()
    }

    /// The ICE username fragment this candidate belongs to: `usernameFragment`, else the
    /// `ufrag` extension of the candidate string (Chromium writes both), else `None`.
    pub fn ufrag(&self) -> Option<&str> {
        if let Some(u) = self.username_fragment.as_deref().filter(|u| !u.is_empty()) {
            return Some(u);
        }
        let mut words = self.candidate.split_ascii_whitespace();
        // The extensions follow `typ TYPE` (and raddr/rport) as name-value pairs; `ufrag`
        // is not a word of the fixed part.
        while let Some(word) = words.next() {
            if word == "ufrag" {
                return words.next();
            }
        }
        None
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// `code` of an [`ErrorMsg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The device already serves `max-viewers` sessions.
    Busy,
    /// The message could not be parsed or broke the protocol.
    BadRequest,
    /// The offer was understood but cannot be served (e.g. no H.264 the device can send).
    Unsupported,
    /// Something failed inside the device.
    Internal,
    /// No connection came about within the device's peer timeout: ICE found no working path
    /// between the viewer and the device (typically both behind NATs that need a TURN relay).
    /// The message lists the candidate types tried.
    Unreachable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Busy => "busy",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
            ErrorCode::Unreachable => "unreachable",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        [
            ErrorCode::Busy,
            ErrorCode::BadRequest,
            ErrorCode::Unsupported,
            ErrorCode::Internal,
            ErrorCode::Unreachable,
        ]
        .into_iter()
        .find(|code| code.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code":"busy","message":"…"}` on the error topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorMsg {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMsg {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// The video part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoStatus {
    /// Always [`VIDEO_CODEC_H264`] for now.
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// What capture is doing: `idle` (nobody watches), `live`, or `lost` (the camera failed;
    /// the device retries).
    #[serde(default)]
    pub state: MediaState,
    /// What makes the H.264: `openh264`, `v4l2` (the hardware encoder) or `passthrough` (the
    /// source's own H.264).
    #[serde(default)]
    pub encoder: String,
    /// Passthrough from a source that cannot be asked for a keyframe: the time between its IDRs
    /// in milliseconds, which a joining viewer may wait for its first picture; `null` otherwise.
    #[serde(default)]
    pub idr_period_ms: Option<u64>,
}

/// State of a media source in [`Status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaState {
    #[default]
    Idle,
    Live,
    Lost,
}

/// The audio part of [`Status`] (`{"codec":"opus","channels":N}`); `null` while there is no audio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioStatus {
    pub codec: String,
    pub channels: u32,
}

/// The retained online status on `{uid}/status`. The offline form (the last will) is the bare
/// object from [`offline_status_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub online: bool,
    pub version: String,
    pub video: VideoStatus,
    pub audio: Option<AudioStatus>,
    pub viewers: u32,
    pub max_viewers: u32,
    /// The publication to an SFU over WHIP (`--whip`); absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whip: Option<WhipStatus>,
    /// The device answers ICE-server requests with servers (STUN, TURN with time-limited
    /// credentials): a viewer should ask before it makes its offer.
    #[serde(default)]
    pub ice_servers: bool,
}

/// The WHIP part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhipStatus {
    pub state: WhipState,
    /// Sessions started after the first (each reconnection starts one).
    pub reconnects: u32,
    /// Why the last session ended or could not start; `null` before any did.
    pub error: Option<String>,
}

/// What the WHIP publication is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhipState {
    /// Offer sent, or waiting for the connection to the SFU.
    Connecting,
    /// Media flows to the SFU.
    Live,
    /// The last session ended or failed; the next starts after a back-off.
    Retrying,
}

impl Status {
    /// An online status with no audio.
    pub fn online(
        version: impl Into<String>,
        video: VideoStatus,
        viewers: u32,
        max_viewers: u32,
    ) -> Self {
        Status {
            online: true,
            version: version.into(),
            video,
            audio: None,
            viewers,
            max_viewers,
            whip: None,
            ice_servers: false,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// One ICE server as a browser's `RTCIceServer` takes it: `{"urls":[…]}` for STUN,
/// `{"urls":[…],"username":…,"credential":…}` for TURN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The device's reply on `{uid}/ice-servers/{cid}`: `{"iceServers":[…],"ttl":3600}` (the
/// servers, usable for `ttl` seconds), or `{"iceServers":[],"ttl":0,"error":{…}}` when the
/// request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServersMsg {
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    pub ttl: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorMsg>,
}

impl IceServersMsg {
    pub fn granted(ice_servers: Vec<IceServer>, ttl: u64) -> Self {
        IceServersMsg {
            ice_servers,
            ttl,
            error: None,
        }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        IceServersMsg {
            ice_servers: vec![],
            ttl: 0,
            error: Some(ErrorMsg::new(code, message)),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// Who made an offer, as far as renegotiation is concerned: the DTLS fingerprint (the peer's
/// key), the `o=` line's session id (one per peer connection: RFC 8829 keeps it across
/// renegotiations) and the ICE username fragment (new at an ICE restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferIdentity {
    /// The first `a=fingerprint:` value, e.g. `sha-256 8A:3F:…`, hash name lower case and
    /// digest upper case.
    pub fingerprint: String,
    /// The second field of the `o=` line.
    pub session_id: String,
    /// The first `a=ice-ufrag:` value.
    pub ufrag: String,
}

impl OfferIdentity {
    /// An offer from the same peer connection with the same DTLS key: what may renegotiate a
    /// session instead of replacing it.
    pub fn same_peer(&self, other: &OfferIdentity) -> bool {
        self.fingerprint == other.fingerprint && self.session_id == other.session_id
    }
}

/// The identity of an offer that passed [`check_offer_sdp`]; `None` when it has no `o=` line
/// or an empty value (such an offer can only replace a session).
pub fn offer_identity(sdp: &str) -> Option<OfferIdentity> {
    let value = |prefix: &str| {
        sdp.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let session_id = value("o=")?.split_ascii_whitespace().nth(1)?.to_string();
    let mut fingerprint = value("a=fingerprint:")?.split_ascii_whitespace();
    let hash = fingerprint.next()?.to_ascii_lowercase();
    let digest = fingerprint.next()?.to_ascii_uppercase();
    let ufrag = value("a=ice-ufrag:")?.to_string();
    Some(OfferIdentity {
        fingerprint: format!("{hash} {digest}"),
        session_id,
        ufrag,
    })
}

/// The first `a=ice-ufrag` of an SDP (its ICE session: a new one after an ICE restart).
pub fn sdp_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}

/// The offline status, used as the retained last will: exactly `{"online":false}`.
pub fn offline_status_json() -> Vec<u8> {
    br#"{"online":false}"#.to_vec()
}

fn to_json<T: Serialize>(msg: &T) -> Vec<u8> {
    // These types hold only strings, integers, booleans and options: serializing cannot fail.
    serde_json::to_vec(msg).expect("signaling messages always serialize")
}

// ---------------------------------------------------------------------------------------------
// Parsing what arrives

/// Parse an offer payload and return its SDP. Rejects non-UTF-8, non-JSON, a `type` other than
/// `"offer"`, and a missing or empty `sdp`.
pub fn parse_offer(payload: &[u8]) -> Result<String, ProtocolError> {
    parse_description(payload, SdpType::Offer)
}

/// A cheap look at an offer's SDP before it costs a session: every offer a WebRTC stack makes
/// starts with `v=0` and carries an m-line, ICE credentials and a DTLS fingerprint. Whether the
/// rest parses, and whether it has H.264 we can send, the session finds out.
pub fn check_offer_sdp(sdp: &str) -> Result<(), ProtocolError> {
    if !sdp.trim_start().starts_with("v=0") {
        return Err(ProtocolError::NotWebrtcOffer("it does not start with v=0"));
    }
    let has = |prefix: &str| sdp.lines().any(|l| l.trim_start().starts_with(prefix));
    for (prefix, missing) in [
        ("m=", "it has no m-line"),
        ("a=ice-ufrag:", "it has no a=ice-ufrag"),
        ("a=ice-pwd:", "it has no a=ice-pwd"),
        ("a=fingerprint:", "it has no a=fingerprint"),
    ] {
        if !has(prefix) {
            return Err(ProtocolError::NotWebrtcOffer(missing));
        }
    }
    Ok(())
}

/// Parse an answer payload (what a viewer receives) and return its SDP.
pub fn parse_answer(payload: &[u8]) -> Result<String, ProtocolError> {
    parse_description(payload, SdpType::Answer)
}

/// An offer or answer as it arrives (`SessionDescriptionMsg`, each field as [`Field`]).
#[derive(Deserialize)]
struct DescriptionWire {
    #[serde(rename = "type", default)]
    kind: Field<String>,
    #[serde(default)]
    sdp: Field<String>,
}

fn parse_description(payload: &[u8], expected: SdpType) -> Result<String, ProtocolError> {
    let what = expected.as_str();
    let wire: DescriptionWire = json_message(payload, what)?;
    let kind = wire.kind.required(what, "type", "a string")?;
    if kind != expected.as_str() {
        let expected = match expected {
            SdpType::Offer => "\"offer\"",
            SdpType::Answer => "\"answer\"",
        };
        return Err(ProtocolError::BadField {
            what,
            field: "type",
            expected,
            got: quote(&kind),
        });
    }
    let sdp = wire.sdp.required(what, "sdp", "a string")?;
    if sdp.trim().is_empty() {
        return Err(ProtocolError::BadField {
            what,
            field: "sdp",
            expected: "a non-empty SDP string",
            got: quote(&sdp),
        });
    }
    Ok(sdp)
}

/// A candidate as it arrives ([`IceCandidateMsg`], each field as [`Field`]).
#[derive(Deserialize)]
struct CandidateWire {
    #[serde(default)]
    candidate: Field<String>,
    #[serde(rename = "sdpMid", default)]
    sdp_mid: Field<Option<String>>,
    #[serde(rename = "sdpMLineIndex", default)]
    sdp_mline_index: Field<Option<u16>>,
    #[serde(rename = "usernameFragment", default)]
    username_fragment: Field<Option<String>>,
}

/// Parse an ICE payload. `Ok(None)` means end of candidates (empty `candidate`). A non-empty
/// candidate must start with `candidate:`; `sdpMid` and `sdpMLineIndex` may be absent or null.
pub fn parse_candidate(payload: &[u8]) -> Result<Option<IceCandidateMsg>, ProtocolError> {
    let what = "ICE candidate";
    let wire: CandidateWire = json_message(payload, what)?;
    let candidate = wire.candidate.required(what, "candidate", "a string")?;
    if candidate.is_empty() {
        return Ok(None);
    }
    let at_most = |field: &'static str, expected: &'static str, max: usize, value: &str| {
        if value.len() > max {
            Err(ProtocolError::BadField {
                what,
                field,
                expected,
                got: format!("{} bytes", value.len()),
            })
        } else {
            Ok(())
        }
    };
    at_most(
        "candidate",
        "a string of at most 512 bytes",
        CANDIDATE_MAX_LEN,
        &candidate,
    )?;
    if !candidate.starts_with("candidate:") {
        return Err(ProtocolError::BadField {
            what,
            field: "candidate",
            expected: "a string starting with \"candidate:\"",
            got: quote(&candidate),
        });
    }
    let sdp_mid = wire.sdp_mid.optional(what, "sdpMid", "a string or null")?;
    if let Some(mid) = &sdp_mid {
        at_most(
            "sdpMid",
            "a string of at most 64 bytes",
            SDP_MID_MAX_LEN,
            mid,
        )?;
    }
    let sdp_mline_index = wire.sdp_mline_index.optional(
        what,
        "sdpMLineIndex",
        "an integer from 0 to 65535 or null",
    )?;
    let username_fragment =
        wire.username_fragment
            .optional(what, "usernameFragment", "a string or null")?;
    if let Some(ufrag) = &username_fragment {
        at_most(
            "usernameFragment",
            "a string of at most 256 bytes",
            UFRAG_MAX_LEN,
            ufrag,
        )?;
    }
    Ok(Some(IceCandidateMsg {
        candidate,
        sdp_mid,
        sdp_mline_index,
        username_fragment,
    }))
}

/// Check an ICE-server request (viewer → device): a JSON object of at most
/// [`ICE_SERVERS_REQUEST_MAX_LEN`] bytes. Its fields are ignored.
pub fn parse_ice_servers_request(payload: &[u8]) -> Result<(), ProtocolError> {
    let what = "ICE-server request";
    if payload.len() > ICE_SERVERS_REQUEST_MAX_LEN {
        return Err(ProtocolError::BadField {
            what,
            field: "(payload)",
            expected: "a JSON object of at most 1024 bytes",
            got: format!("{} bytes", payload.len()),
        });
    }
    json_object(payload, what).map(drop)
}

/// Parse the device's reply to an ICE-server request (what a viewer receives). A viewer's own
/// request, echoed by a broker to a viewer that does not use No-Local, has no `iceServers` and
/// is `Ok(None)`.
pub fn parse_ice_servers(payload: &[u8]) -> Result<Option<IceServersMsg>, ProtocolError> {
    let what = "ICE servers";
    let obj = json_object(payload, what)?;
    if !obj.contains_key("iceServers") {
        return Ok(None);
    }
    serde_json::from_value(Value::Object(obj))
        .map(Some)
        .map_err(|e| ProtocolError::NotJson {
            what,
            detail: e.to_string(),
        })
}

/// An error as it arrives ([`ErrorMsg`], each field as [`Field`]).
#[derive(Deserialize)]
struct ErrorWire {
    #[serde(default)]
    code: Field<String>,
    #[serde(default)]
    message: Field<String>,
}

/// Parse an error payload (what a viewer receives).
pub fn parse_error(payload: &[u8]) -> Result<ErrorMsg, ProtocolError> {
    let what = "error";
    let wire: ErrorWire = json_message(payload, what)?;
    let code = wire.code.required(what, "code", "a string")?;
    let code = ErrorCode::from_str(&code).ok_or_else(|| ProtocolError::BadField {
        what,
        field: "code",
        expected: "one of \"busy\", \"bad-request\", \"unsupported\", \"internal\", \"unreachable\"",
        got: quote(&code),
    })?;
    let message = wire.message.required(what, "message", "a string")?;
    Ok(ErrorMsg { code, message })
}

/// Parse a status payload. `Ok(None)` means the device is offline (`{"online":false}`).
pub fn parse_status(payload: &[u8]) -> Result<Option<Status>, ProtocolError> {
    let what = "status";
    let obj = json_object(payload, what)?;
    match obj.get("online") {
        None => {
            return Err(ProtocolError::MissingField {
                what,
                field: "online",
            });
        }
        Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => {}
        Some(other) => return Err(bad_field(what, "online", "true or false", other)),
    }
    serde_json::from_value(Value::Object(obj))
        .map(Some)
        .map_err(|e| ProtocolError::NotJson {
            what,
            detail: e.to_string(),
        })
}

fn json_object(payload: &[u8], what: &'static str) -> Result<Map<String, Value>, ProtocolError> {
    let text = std::str::from_utf8(payload).map_err(|e| ProtocolError::NotUtf8 {
        what,
        offset: e.valid_up_to(),
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| ProtocolError::NotJson {
        what,
        detail: e.to_string(),
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(ProtocolError::NotObject {
            what,
            got: json_type(&other),
        }),
    }
}

/// A payload that must be a JSON object, read into `T` (whose fields are all [`Field`]s, so
/// that reading it cannot fail: each field's check comes after, with the contract's text).
fn json_message<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    what: &'static str,
) -> Result<T, ProtocolError> {
    let object = json_object(payload, what)?;
    serde_json::from_value(Value::Object(object)).map_err(|e| ProtocolError::NotJson {
        what,
        detail: e.to_string(),
    })
}

/// One field of a message as it arrived: absent, of the wanted type `T`, or something else
/// (kept for the error message). With `T = Option<…>`, `null` is `Given(None)`.
#[derive(Debug, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    Given(T),
    Wrong(Value),
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(match T::deserialize(&value) {
            Ok(given) => Field::Given(given),
            Err(_) => Field::Wrong(value),
        })
    }
}

impl<T> Field<T> {
    /// The value; a missing field or one of another type is refused, naming `field`.
    fn required(
        self,
        what: &'static str,
        field: &'static str,
        expected: &'static str,
    ) -> Result<T, ProtocolError> {
        match self {
            Field::Absent => Err(ProtocolError::MissingField { what, field }),
            Field::Given(value) => Ok(value),
            Field::Wrong(got) => Err(bad_field(what, field, expected, &got)),
        }
    }
}

impl<T> Field<Option<T>> {
    /// The value, `None` when absent or null; one of another type is refused, naming `field`.
    fn optional(
        self,
        what: &'static str,
        field: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, ProtocolError> {
        match self {
            Field::Absent => Ok(None),
            Field::Given(value) => Ok(value),
            Field::Wrong(got) => Err(bad_field(what, field, expected, &got)),
        }
    }
}

fn bad_field(
    what: &'static str,
    field: &'static str,
    expected: &'static str,
    got: &Value,
) -> ProtocolError {
    let got = match got {
        Value::String(s) => quote(s),
        Value::Null | Value::Bool(_) | Value::Number(_) => got.to_string(),
        Value::Array(_) | Value::Object(_) => json_type(got).to_owned(),
    };
    ProtocolError::BadField {
        what,
        field,
        expected,
        got,
    }
}

/// A string for an error message: quoted, and cut short so a huge payload cannot flood a log.
fn quote(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("garage/cam1").unwrap()
    }

    // --- ids

    #[test]
    fn uid_accepts_plain_and_multi_level() {
        for uid in [
            "cam",
            "garage/cam1",
            "a/b/c/d",
            "host.local",
            "my cam",
            "ümlaut",
        ] {
            assert_eq!(validate_uid(uid), Ok(()), "{uid}");
        }
    }

    #[test]
    fn uid_rejects_wildcards_empty_levels_and_control_chars() {
        for uid in [
            "", "a+b", "+", "a/#", "#", "/cam", "cam/", "a//b", "/", "a\0b", "a\nb", "a\u{7f}",
            "$SYS/cam",
        ] {
            let err = validate_uid(uid).unwrap_err();
            assert!(
                matches!(err, ProtocolError::InvalidUid { .. }),
                "{uid:?}: {err}"
            );
        }
        let msg = validate_uid("a+b").unwrap_err().to_string();
        assert!(msg.contains("a+b") && msg.contains("wildcard"), "{msg}");
    }

    #[test]
    fn cid_edge_cases() {
        let max = "a".repeat(64);
        let over = "a".repeat(65);
        for ok in ["viewer1", "A-Z_09", "-", "_", max.as_str()] {
            assert_eq!(validate_cid(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            over.as_str(),
            "+",
            "#",
            "a/b",
            "/",
            "a b",
            "é",
            "a.b",
            "a\0",
        ] {
            assert!(validate_cid(bad).is_err(), "{bad:?}");
        }
        assert!(validate_cid(&over).unwrap_err().to_string().contains("64"));
    }

    // --- topics

    #[test]
    fn topics_are_built_from_uid_and_cid() {
        let t = topics();
        assert_eq!(t.uid(), "garage/cam1");
        assert_eq!(t.offer("viewer1"), "garage/cam1/offer/viewer1");
        assert_eq!(t.answer("viewer1"), "garage/cam1/answer/viewer1");
        assert_eq!(t.ice("viewer1"), "garage/cam1/ice/viewer1");
        assert_eq!(t.error("viewer1"), "garage/cam1/error/viewer1");
        assert_eq!(t.ice_servers("viewer1"), "garage/cam1/ice-servers/viewer1");
        assert_eq!(t.status(), "garage/cam1/status");
        assert_eq!(
            t.device_filters(),
            [
                "garage/cam1/offer/+",
                "garage/cam1/ice/+",
                "garage/cam1/answer/+",
                "garage/cam1/ice-servers/+"
            ]
        );
        assert_eq!(
            t.viewer_filters("viewer1"),
            [
                "garage/cam1/answer/viewer1",
                "garage/cam1/ice/viewer1",
                "garage/cam1/error/viewer1",
                "garage/cam1/ice-servers/viewer1"
            ]
        );
    }

    #[test]
    fn topics_new_rejects_bad_uid() {
        assert!(Topics::new("a/+").is_err());
        assert!(Topics::new("").is_err());
    }

    #[test]
    fn built_topics_are_wildcard_free() {
        let t = topics();
        let concrete = [
            t.offer("v"),
            t.answer("v"),
            t.ice("v"),
            t.error("v"),
            t.status(),
        ];
        for topic in concrete.iter().chain(t.viewer_filters("v").iter()) {
            assert!(!topic.contains('+') && !topic.contains('#'), "{topic}");
        }
        for filter in t.device_filters() {
            assert!(
                filter.ends_with("/+") && filter.matches('+').count() == 1,
                "{filter}"
            );
            assert!(!filter.contains('#'), "{filter}");
        }
    }

    #[test]
    fn parse_topic_round_trips_with_multi_level_uid() {
        let t = topics();
        assert_eq!(
            t.parse(&t.offer("viewer1")),
            Some((TopicKind::Offer, Some("viewer1")))
        );
        assert_eq!(
            t.parse(&t.answer("v-2")),
            Some((TopicKind::Answer, Some("v-2")))
        );
        assert_eq!(t.parse(&t.ice("v_3")), Some((TopicKind::Ice, Some("v_3"))));
        assert_eq!(t.parse(&t.error("x")), Some((TopicKind::Error, Some("x"))));
        assert_eq!(
            t.parse(&t.ice_servers("x")),
            Some((TopicKind::IceServers, Some("x")))
        );
        assert_eq!(t.parse(&t.status()), Some((TopicKind::Status, None)));
        assert_eq!(
            parse_topic("a/b/c", "a/b/c/offer/z"),
            Some((TopicKind::Offer, Some("z")))
        );
    }

    #[test]
    fn parse_topic_rejects_foreign_and_malformed_topics() {
        let long = format!("garage/cam1/offer/{}", "a".repeat(65));
        for topic in [
            "garage/cam2/offer/v",       // another device
            "garage/cam1x/offer/v",      // uid is only a string prefix
            "garage/offer/v",            // parent level
            "other/garage/cam1/offer/v", // uid not at the start
            "garage/cam1/offer/",        // empty cid
            "garage/cam1/offer",         // no cid
            "garage/cam1/offer/a/b",     // extra level
            "garage/cam1/offer/+",       // wildcard as cid
            "garage/cam1/offer/#",
            "garage/cam1/candidate/v", // unknown kind
            "garage/cam1/status/v",    // status has no cid
            "garage/cam1",
            long.as_str(),
        ] {
            assert_eq!(parse_topic("garage/cam1", topic), None, "{topic}");
        }
        let max = format!("garage/cam1/ice/{}", "b".repeat(64));
        assert!(parse_topic("garage/cam1", &max).is_some());
    }

    #[test]
    fn only_status_is_retained() {
        for kind in [
            TopicKind::Offer,
            TopicKind::Answer,
            TopicKind::Ice,
            TopicKind::Error,
        ] {
            assert!(!kind.retained());
        }
        assert!(TopicKind::Status.retained());
    }

    // --- offers and answers

    const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn offer_parses() {
        let payload = serde_json::json!({"type": "offer", "sdp": SDP}).to_string();
        assert_eq!(parse_offer(payload.as_bytes()).unwrap(), SDP);
        // Extra fields are ignored.
        let payload = serde_json::json!({"type": "offer", "sdp": SDP, "x": 1}).to_string();
        assert_eq!(parse_offer(payload.as_bytes()).unwrap(), SDP);
    }

    #[test]
    fn offer_rejects_bad_payloads_with_helpful_messages() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xff\xfe", "not UTF-8"),
            (b"v=0", "not valid JSON"),
            (b"", "not valid JSON"),
            (b"[1]", "must be a JSON object, got an array"),
            (br#"{"sdp":"v=0"}"#, "field \"type\" is missing"),
            (
                br#"{"type":"answer","sdp":"v=0"}"#,
                "field \"type\" must be \"offer\", got \"answer\"",
            ),
            (
                br#"{"type":7,"sdp":"v=0"}"#,
                "field \"type\" must be a string, got 7",
            ),
            (br#"{"type":"offer"}"#, "field \"sdp\" is missing"),
            (
                br#"{"type":"offer","sdp":""}"#,
                "field \"sdp\" must be a non-empty SDP string",
            ),
            (
                br#"{"type":"offer","sdp":null}"#,
                "field \"sdp\" must be a string, got null",
            ),
        ];
        for (payload, want) in cases {
            let err = parse_offer(payload).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("offer"), "{msg}");
            assert!(
                msg.contains(want),
                "{:?}: {msg}",
                String::from_utf8_lossy(payload)
            );
            assert_eq!(err.code(), ErrorCode::BadRequest);
            assert_eq!(err.to_error_msg().code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let payload = serde_json::json!({"type": "x".repeat(10_000), "sdp": SDP}).to_string();
        let msg = parse_offer(payload.as_bytes()).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn answer_serializes_and_parses() {
        let json = SessionDescriptionMsg::answer(SDP).to_json();
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value, serde_json::json!({"type": "answer", "sdp": SDP}));
        assert_eq!(parse_answer(&json).unwrap(), SDP);
        assert!(parse_offer(&json).is_err());
        let offer = SessionDescriptionMsg::offer(SDP).to_json();
        assert_eq!(parse_offer(&offer).unwrap(), SDP);
        let back: SessionDescriptionMsg = serde_json::from_slice(&offer).unwrap();
        assert_eq!(back, SessionDescriptionMsg::offer(SDP));
    }

    // --- candidates

    const CAND: &str = "candidate:1 1 udp 2130706431 192.168.1.20 50000 typ host";

    #[test]
    fn candidate_parses_browser_form() {
        let payload = serde_json::json!({
            "candidate": CAND, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"
        })
        .to_string();
        let c = parse_candidate(payload.as_bytes()).unwrap().unwrap();
        assert_eq!(c.candidate, CAND);
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.sdp_mline_index, Some(0));
        assert_eq!(c.ufrag(), Some("abcd"));
    }

    #[test]
    fn a_candidates_ufrag_comes_from_the_field_or_the_candidate_string() {
        let chromium = "candidate:2547613475 1 udp 2113937151 10.200.2.10 54400 typ host \
                        generation 0 ufrag Yd3c network-cost 999";
        let c = parse_candidate(
            serde_json::json!({ "candidate": chromium })
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.ufrag(), Some("Yd3c"));
        let plain = parse_candidate(
            serde_json::json!({ "candidate": CAND })
                .to_string()
                .as_bytes(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(plain.ufrag(), None);
        // Bounded like the other strings; what is sent keeps the field only when present.
        let long = serde_json::json!({"candidate": CAND, "usernameFragment": "u".repeat(300)});
        assert!(parse_candidate(long.to_string().as_bytes()).is_err());
        let bad = serde_json::json!({"candidate": CAND, "usernameFragment": 7});
        assert!(parse_candidate(bad.to_string().as_bytes()).is_err());
        assert!(
            !String::from_utf8(plain.to_json())
                .unwrap()
                .contains("usernameFragment")
        );
    }

    // --- ICE servers

    #[test]
    fn ice_server_requests_are_small_json_objects() {
        assert_eq!(parse_ice_servers_request(b"{}"), Ok(()));
        assert_eq!(parse_ice_servers_request(br#"{"anything":[1,2]}"#), Ok(()));
        for bad in [&b"[]"[..], b"nope", b"\xff"] {
            assert!(parse_ice_servers_request(bad).is_err());
        }
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(2000));
        let err = parse_ice_servers_request(big.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("at most 1024 bytes"), "{err}");
    }

    #[test]
    fn ice_servers_replies_serialize_in_the_browsers_form_and_parse() {
        let msg = IceServersMsg::granted(
            vec![
                IceServer {
                    urls: vec!["stun:s:3478".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec!["turn:t:3478".into()],
                    username: Some("1:v".into()),
                    credential: Some("pw".into()),
                },
            ],
            3600,
        );
        let value: Value = serde_json::from_slice(&msg.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"iceServers": [
                {"urls": ["stun:s:3478"]},
                {"urls": ["turn:t:3478"], "username": "1:v", "credential": "pw"}
            ], "ttl": 3600})
        );
        assert_eq!(parse_ice_servers(&msg.to_json()).unwrap(), Some(msg));
        let refused = IceServersMsg::refused(ErrorCode::BadRequest, "too many");
        let back = parse_ice_servers(&refused.to_json()).unwrap().unwrap();
        assert_eq!(back.error.unwrap().code, ErrorCode::BadRequest);
        // A request echoed back is not a reply.
        assert_eq!(parse_ice_servers(b"{}").unwrap(), None);
        assert!(parse_ice_servers(br#"{"iceServers":7}"#).is_err());
    }

    // --- offer identity

    #[test]
    fn an_offers_identity_is_its_fingerprint_session_id_and_ufrag() {
        let sdp = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                   a=fingerprint:SHA-256 8a:3f:5c\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                   a=ice-ufrag:Yd3c\r\na=ice-pwd:jV1v5mNPfk4kS7q2cOu0lB3X\r\n";
        let id = offer_identity(sdp).unwrap();
        assert_eq!(id.fingerprint, "sha-256 8A:3F:5C");
        assert_eq!(id.session_id, "4611731400430051336");
        assert_eq!(id.ufrag, "Yd3c");
        // After restartIce(): same peer connection, new ufrag, higher session version.
        let restarted = sdp
            .replace("a=ice-ufrag:Yd3c", "a=ice-ufrag:Zz9q")
            .replace(" 2 IN IP4", " 3 IN IP4");
        let again = offer_identity(&restarted).unwrap();
        assert!(id.same_peer(&again));
        assert_ne!(id.ufrag, again.ufrag);
        // A new peer connection: new key, new session id.
        let other = sdp.replace("8a:3f:5c", "11:22:33");
        assert!(!id.same_peer(&offer_identity(&other).unwrap()));
        let other = sdp.replace("4611731400430051336", "1");
        assert!(!id.same_peer(&offer_identity(&other).unwrap()));
        assert_eq!(offer_identity("v=0\r\nm=video 9 x\r\n"), None);
    }

    #[test]
    fn candidate_optional_fields_may_be_absent_or_null() {
        let payload = serde_json::json!({"candidate": CAND, "sdpMid": null, "sdpMLineIndex": null});
        let c = parse_candidate(payload.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!((c.sdp_mid, c.sdp_mline_index), (None, None));
        let payload = serde_json::json!({"candidate": CAND});
        let c = parse_candidate(payload.to_string().as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!((c.sdp_mid, c.sdp_mline_index), (None, None));
    }

    #[test]
    fn empty_candidate_is_end_of_candidates() {
        assert_eq!(parse_candidate(br#"{"candidate":""}"#).unwrap(), None);
        assert_eq!(
            parse_candidate(br#"{"candidate":"","sdpMid":"0","sdpMLineIndex":0}"#).unwrap(),
            None
        );
        let end = IceCandidateMsg::end_of_candidates();
        assert!(end.is_end_of_candidates());
        assert_eq!(end.to_json(), br#"{"candidate":""}"#);
        assert_eq!(parse_candidate(&end.to_json()).unwrap(), None);
    }

    #[test]
    fn candidate_serializes_with_browser_field_names() {
        let c = IceCandidateMsg {
            candidate: CAND.into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        };
        let value: Value = serde_json::from_slice(&c.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"candidate": CAND, "sdpMid": "0", "sdpMLineIndex": 0})
        );
        assert_eq!(parse_candidate(&c.to_json()).unwrap(), Some(c));
    }

    #[test]
    fn candidate_rejects_bad_payloads() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xc3", "not UTF-8"),
            (b"null", "must be a JSON object, got null"),
            (b"{", "not valid JSON"),
            (b"{}", "field \"candidate\" is missing"),
            (
                br#"{"candidate":5}"#,
                "field \"candidate\" must be a string",
            ),
            (
                br#"{"candidate":"1 1 udp 1 1.2.3.4 5 typ host"}"#,
                "starting with \"candidate:\"",
            ),
            (
                br#"{"candidate":"candidate:x","sdpMid":0}"#,
                "field \"sdpMid\" must be a string or null, got 0",
            ),
            (
                br#"{"candidate":"candidate:x","sdpMLineIndex":-1}"#,
                "\"sdpMLineIndex\" must be an integer",
            ),
            (
                br#"{"candidate":"candidate:x","sdpMLineIndex":65536}"#,
                "got 65536",
            ),
            (
                br#"{"candidate":"candidate:x","sdpMLineIndex":"0"}"#,
                "got \"0\"",
            ),
        ];
        let long = format!(r#"{{"candidate":"candidate:{}"}}"#, "1".repeat(600));
        let long_mid = format!(
            r#"{{"candidate":"candidate:x","sdpMid":"{}"}}"#,
            "m".repeat(65)
        );
        let cases = [
            cases,
            &[
                (long.as_bytes(), "at most 512 bytes, got 610 bytes"),
                (long_mid.as_bytes(), "at most 64 bytes, got 65 bytes"),
            ],
        ]
        .concat();
        for (payload, want) in &cases {
            let err = parse_candidate(payload).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("ICE candidate"), "{msg}");
            assert!(
                msg.contains(want),
                "{:?}: {msg}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn offers_without_what_webrtc_needs_are_refused_cheaply() {
        let good = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=ice-ufrag:a\r\n\
                    a=ice-pwd:b\r\na=fingerprint:sha-256 00\r\n";
        assert_eq!(check_offer_sdp(good), Ok(()));
        for (sdp, want) in [
            ("x", "does not start with v=0"),
            ("v=0\r\na=ice-ufrag:a\r\n", "no m-line"),
            (&good.replace("a=ice-pwd:b", ""), "no a=ice-pwd"),
            (&good.replace("a=fingerprint", "a=fp"), "no a=fingerprint"),
        ] {
            let err = check_offer_sdp(sdp).unwrap_err().to_string();
            assert!(
                err.starts_with("offer SDP is not a WebRTC offer: "),
                "{err}"
            );
            assert!(err.contains(want), "{sdp:?}: {err}");
        }
    }

    // --- errors

    #[test]
    fn error_codes_have_wire_names() {
        let codes = [
            (ErrorCode::Busy, "busy"),
            (ErrorCode::BadRequest, "bad-request"),
            (ErrorCode::Unsupported, "unsupported"),
            (ErrorCode::Internal, "internal"),
            (ErrorCode::Unreachable, "unreachable"),
        ];
        for (code, name) in codes {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.to_string(), name);
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::String(name.into())
            );
        }
    }

    #[test]
    fn error_msg_round_trips() {
        let msg = ErrorMsg::new(ErrorCode::Busy, "4 viewers already");
        let json = msg.to_json();
        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"code": "busy", "message": "4 viewers already"})
        );
        assert_eq!(parse_error(&json).unwrap(), msg);
    }

    #[test]
    fn error_msg_rejects_bad_payloads() {
        assert!(
            parse_error(br#"{"code":"nope","message":"x"}"#)
                .unwrap_err()
                .to_string()
                .contains("\"nope\"")
        );
        assert!(
            parse_error(br#"{"code":"busy"}"#)
                .unwrap_err()
                .to_string()
                .contains("\"message\" is missing")
        );
        assert!(parse_error(b"busy").is_err());
    }

    // --- the public description

    /// Every `topic` line followed by a JSON line in the example exchange of docs/PROTOCOL.md
    /// parses with this module, so the document cannot drift from the code unnoticed.
    #[test]
    fn protocol_md_examples_parse() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let lines: Vec<&str> = doc.lines().collect();
        let mut checked = 0;
        for pair in lines.windows(2) {
            let (topic, payload) = (pair[0].trim(), pair[1].trim().as_bytes());
            let Some((kind, _cid)) = parse_topic("garage/cam1", topic) else {
                continue;
            };
            let result = match kind {
                TopicKind::Offer => parse_offer(payload).map(drop),
                TopicKind::Answer => parse_answer(payload).map(drop),
                TopicKind::Ice => parse_candidate(payload).map(drop),
                TopicKind::Error => parse_error(payload).map(drop),
                TopicKind::Status => parse_status(payload).map(drop),
                // Requests and replies share the topic: a request is any object.
                TopicKind::IceServers => parse_ice_servers(payload).map(drop),
            };
            assert_eq!(result, Ok(()), "{topic}: {}", pair[1]);
            checked += 1;
        }
        assert!(checked >= 9, "only {checked} examples found");
    }

    // --- status

    fn status() -> Status {
        let video = VideoStatus {
            state: MediaState::Idle,
            codec: VIDEO_CODEC_H264.into(),
            width: 1280,
            height: 720,
            fps: 30,
            encoder: "openh264".into(),
            idr_period_ms: None,
        };
        Status::online("0.1.0", video, 0, 4)
    }

    #[test]
    fn status_serializes_in_documented_form() {
        let value: Value = serde_json::from_slice(&status().to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "online": true,
                "version": "0.1.0",
                "video": {"codec": "H264", "width": 1280, "height": 720, "fps": 30, "state": "idle",
                          "encoder": "openh264", "idr_period_ms": null},
                "audio": null,
                "viewers": 0,
                "max_viewers": 4,
                "ice_servers": false
            })
        );
        // A status without the field (an older device) says no ICE servers.
        let old = br#"{"online":true,"version":"0.1.0","video":{"codec":"H264","width":1,"height":1,"fps":1},"audio":null,"viewers":0,"max_viewers":4}"#;
        assert!(!parse_status(old).unwrap().unwrap().ice_servers);
    }

    #[test]
    fn offline_status_is_exactly_online_false() {
        assert_eq!(offline_status_json(), br#"{"online":false}"#);
        assert_eq!(parse_status(&offline_status_json()).unwrap(), None);
    }

    #[test]
    fn status_parses() {
        assert_eq!(parse_status(&status().to_json()).unwrap(), Some(status()));
        assert!(
            parse_status(b"{}")
                .unwrap_err()
                .to_string()
                .contains("\"online\" is missing")
        );
        assert!(parse_status(br#"{"online":"yes"}"#).is_err());
        assert!(parse_status(br#"{"online":true}"#).is_err());
    }

    /// Every refusal a parser makes, with its exact text: the message is what a viewer gets on
    /// `{uid}/error/{cid}` (code `bad-request`), so it is part of docs/PROTOCOL.md's contract.
    #[test]
    fn refusals_have_exact_texts() {
        type Parser = fn(&[u8]) -> Result<(), ProtocolError>;
        let offer: Parser = |p| parse_offer(p).map(drop);
        let answer: Parser = |p| parse_answer(p).map(drop);
        let candidate: Parser = |p| parse_candidate(p).map(drop);
        let request: Parser = parse_ice_servers_request;
        let error: Parser = |p| parse_error(p).map(drop);
        let status: Parser = |p| parse_status(p).map(drop);
        let long_candidate = format!(r#"{{"candidate":"candidate:{}"}}"#, "1".repeat(600));
        let long_unprefixed = format!(r#"{{"candidate":"{}"}}"#, "1".repeat(600));
        let long_mid = format!(
            r#"{{"candidate":"candidate:x","sdpMid":"{}"}}"#,
            "m".repeat(65)
        );
        let long_ufrag = format!(
            r#"{{"candidate":"candidate:x","usernameFragment":"{}"}}"#,
            "u".repeat(257)
        );
        let long_type = format!(r#"{{"type":"{}","sdp":"v=0"}}"#, "x".repeat(50));
        let big_request = format!(r#"{{"x":"{}"}}"#, "r".repeat(1020));
        let cases: Vec<(Parser, &[u8], &str)> = vec![
            (
                offer,
                b"\xff\xfe",
                "offer payload is not UTF-8 (bad byte at offset 0)",
            ),
            (
                offer,
                b"v=0",
                "offer payload is not valid JSON: expected value at line 1 column 1",
            ),
            (
                offer,
                b"",
                "offer payload is not valid JSON: EOF while parsing a value at line 1 column 0",
            ),
            (
                offer,
                b"[1]",
                "offer payload must be a JSON object, got an array",
            ),
            (
                offer,
                b"\"offer\"",
                "offer payload must be a JSON object, got a string",
            ),
            (
                offer,
                br#"{"sdp":"v=0"}"#,
                r#"offer: field "type" is missing"#,
            ),
            (
                offer,
                br#"{"type":"answer"}"#,
                r#"offer: field "type" must be "offer", got "answer""#,
            ),
            (
                offer,
                br#"{"type":7,"sdp":"v=0"}"#,
                r#"offer: field "type" must be a string, got 7"#,
            ),
            (
                offer,
                br#"{"type":true}"#,
                r#"offer: field "type" must be a string, got true"#,
            ),
            (
                offer,
                br#"{"type":null}"#,
                r#"offer: field "type" must be a string, got null"#,
            ),
            (
                offer,
                br#"{"type":[1]}"#,
                r#"offer: field "type" must be a string, got an array"#,
            ),
            (
                offer,
                br#"{"type":{"a":1}}"#,
                r#"offer: field "type" must be a string, got an object"#,
            ),
            (
                offer,
                long_type.as_bytes(),
                r#"offer: field "type" must be "offer", got "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"…"#,
            ),
            (
                offer,
                br#"{"type":"offer"}"#,
                r#"offer: field "sdp" is missing"#,
            ),
            (
                offer,
                br#"{"type":"offer","sdp":""}"#,
                r#"offer: field "sdp" must be a non-empty SDP string, got """#,
            ),
            (
                offer,
                br#"{"type":"offer","sdp":" \r\n"}"#,
                r#"offer: field "sdp" must be a non-empty SDP string, got " \r\n""#,
            ),
            (
                offer,
                br#"{"type":"offer","sdp":null}"#,
                r#"offer: field "sdp" must be a string, got null"#,
            ),
            (
                offer,
                br#"{"type":"offer","sdp":1.5}"#,
                r#"offer: field "sdp" must be a string, got 1.5"#,
            ),
            (
                answer,
                br#"{"type":"offer","sdp":"v=0"}"#,
                r#"answer: field "type" must be "answer", got "offer""#,
            ),
            (
                answer,
                b"{",
                "answer payload is not valid JSON: EOF while parsing an object at line 1 column 1",
            ),
            (
                candidate,
                b"\xc3",
                "ICE candidate payload is not UTF-8 (bad byte at offset 0)",
            ),
            (
                candidate,
                b"null",
                "ICE candidate payload must be a JSON object, got null",
            ),
            (
                candidate,
                b"5",
                "ICE candidate payload must be a JSON object, got a number",
            ),
            (
                candidate,
                b"{",
                "ICE candidate payload is not valid JSON: EOF while parsing an object at line 1 column 1",
            ),
            (
                candidate,
                b"{}",
                r#"ICE candidate: field "candidate" is missing"#,
            ),
            (
                candidate,
                br#"{"candidate":5}"#,
                r#"ICE candidate: field "candidate" must be a string, got 5"#,
            ),
            (
                candidate,
                br#"{"candidate":null}"#,
                r#"ICE candidate: field "candidate" must be a string, got null"#,
            ),
            (
                candidate,
                br#"{"candidate":"1 1 udp 1 1.2.3.4 5 typ host"}"#,
                r#"ICE candidate: field "candidate" must be a string starting with "candidate:", got "1 1 udp 1 1.2.3.4 5 typ host""#,
            ),
            (
                candidate,
                long_candidate.as_bytes(),
                r#"ICE candidate: field "candidate" must be a string of at most 512 bytes, got 610 bytes"#,
            ),
            (
                candidate,
                long_unprefixed.as_bytes(),
                r#"ICE candidate: field "candidate" must be a string of at most 512 bytes, got 600 bytes"#,
            ),
            (
                candidate,
                br#"{"candidate":"candidate:x","sdpMid":0}"#,
                r#"ICE candidate: field "sdpMid" must be a string or null, got 0"#,
            ),
            (
                candidate,
                br#"{"candidate":"candidate:x","sdpMid":[],"sdpMLineIndex":-1}"#,
                r#"ICE candidate: field "sdpMid" must be a string or null, got an array"#,
            ),
            (
                candidate,
                long_mid.as_bytes(),
                r#"ICE candidate: field "sdpMid" must be a string of at most 64 bytes, got 65 bytes"#,
            ),
            (
                candidate,
                br#"{"candidate":"candidate:x","sdpMLineIndex":-1}"#,
                r#"ICE candidate: field "sdpMLineIndex" must be an integer from 0 to 65535 or null, got -1"#,
            ),
            (
                candidate,
                br#"{"candidate":"candidate:x","sdpMLineIndex":65536}"#,
                r#"ICE candidate: field "sdpMLineIndex" must be an integer from 0 to 65535 or null, got 65536"#,
            ),
            (
                candidate,
                br#"{"candidate":"candidate:x","sdpMLineIndex":1.0}"#,
                r#"ICE candidate: field "sdpMLineIndex" must be an integer from 0 to 65535 or null, got 1.0"#,
            ),
            (
                candidate,
                br#"{"candidate":"candidate:x","sdpMLineIndex":"0"}"#,
                r#"ICE candidate: field "sdpMLineIndex" must be an integer from 0 to 65535 or null, got "0""#,
            ),
            (
                candidate,
                br#"{"candidate":"candidate:x","sdpMLineIndex":0,"usernameFragment":5}"#,
                r#"ICE candidate: field "usernameFragment" must be a string or null, got 5"#,
            ),
            (
                candidate,
                long_ufrag.as_bytes(),
                r#"ICE candidate: field "usernameFragment" must be a string of at most 256 bytes, got 257 bytes"#,
            ),
            (
                request,
                big_request.as_bytes(),
                r#"ICE-server request: field "(payload)" must be a JSON object of at most 1024 bytes, got 1028 bytes"#,
            ),
            (
                request,
                b"[]",
                "ICE-server request payload must be a JSON object, got an array",
            ),
            (
                request,
                b"",
                "ICE-server request payload is not valid JSON: EOF while parsing a value at line 1 column 0",
            ),
            (
                error,
                br#"{"code":"nope","message":"x"}"#,
                r#"error: field "code" must be one of "busy", "bad-request", "unsupported", "internal", "unreachable", got "nope""#,
            ),
            (
                error,
                br#"{"message":"x"}"#,
                r#"error: field "code" is missing"#,
            ),
            (
                error,
                br#"{"code":"busy"}"#,
                r#"error: field "message" is missing"#,
            ),
            (
                error,
                br#"{"code":"busy","message":5}"#,
                r#"error: field "message" must be a string, got 5"#,
            ),
            (status, b"{}", r#"status: field "online" is missing"#),
            (
                status,
                br#"{"online":"yes"}"#,
                r#"status: field "online" must be true or false, got "yes""#,
            ),
            (
                status,
                br#"{"online":1}"#,
                r#"status: field "online" must be true or false, got 1"#,
            ),
            (
                status,
                br#"{"online":true}"#,
                "status payload is not valid JSON: missing field `version`",
            ),
        ];
        for (parse, payload, want) in cases {
            let err = parse(payload).unwrap_err();
            assert_eq!(
                err.to_error_msg(),
                ErrorMsg::new(ErrorCode::BadRequest, want),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
        // What is not refused: end of candidates wins over the other fields; unknown fields
        // and null optional fields are ignored.
        assert_eq!(parse_candidate(br#"{"candidate":"","sdpMid":5}"#), Ok(None));
        assert!(parse_offer(br#"{"type":"offer","sdp":"v=0","x":[1]}"#).is_ok());
        assert_eq!(
            parse_candidate(br#"{"candidate":"candidate:x","sdpMid":null,"sdpMLineIndex":null,"usernameFragment":null,"y":1}"#),
            Ok(Some(IceCandidateMsg {
                candidate: "candidate:x".into(),
                sdp_mid: None,
                sdp_mline_index: None,
                username_fragment: None,
            }))
        );
        assert_eq!(parse_status(br#"{"online":false,"x":1}"#), Ok(None));
        assert_eq!(parse_ice_servers(br#"{"ttl":5}"#), Ok(None));
        assert_eq!(parse_ice_servers_request(br#"{"any":[1,2]}"#), Ok(()));
    }
}
