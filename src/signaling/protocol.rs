//! The signaling wire protocol: MQTT topic names and the JSON messages sent on them.
//!
//! This module owns what goes over the broker and nothing else: building and parsing topic
//! strings, validating device ids (UID) and viewer-chosen client ids (CID), and the message
//! types with their parsers. It does no I/O. `docs/PROTOCOL.md` is the public description; keep
//! the two in step.
//!
//! | topic                | direction        | payload                              |
//! |----------------------|------------------|--------------------------------------|
//! | `{uid}/offer/{cid}`  | viewer → device  | [`SessionDescriptionMsg`] (`offer`)  |
//! | `{uid}/answer/{cid}` | device → viewer  | [`SessionDescriptionMsg`] (`answer`) |
//! | `{uid}/ice/{cid}`    | both ways        | [`IceCandidateMsg`]                  |
//! | `{uid}/error/{cid}`  | device → viewer  | [`ErrorMsg`]                         |
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

    /// `{uid}/status` (retained; also the last-will topic).
    pub fn status(&self) -> String {
        format!("{}/status", self.uid)
    }

    /// What the device subscribes to (with No-Local): `{uid}/offer/+`, `{uid}/ice/+`,
    /// `{uid}/answer/+`.
    pub fn device_filters(&self) -> [String; 3] {
        [TopicKind::Offer, TopicKind::Ice, TopicKind::Answer]
            .map(|kind| format!("{}/{}/+", self.uid, kind.as_str()))
    }

    /// What a viewer with client id `cid` subscribes to: `{uid}/answer/{cid}`,
    /// `{uid}/ice/{cid}`, `{uid}/error/{cid}`.
    pub fn viewer_filters(&self, cid: &str) -> [String; 3] {
        [self.answer(cid), self.ice(cid), self.error(cid)]
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
/// other fields (such as `usernameFragment`) are ignored; on output, absent optional fields are
/// left out. An empty `candidate` means end of candidates and is never represented by this type
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
}

impl IceCandidateMsg {
    /// The end-of-candidates message: `{"candidate":""}`.
    pub fn end_of_candidates() -> Self {
        IceCandidateMsg {
            candidate: String::new(),
            sdp_mid: None,
            sdp_mline_index: None,
        }
    }

    pub fn is_end_of_candidates(&self) -> bool {
        self.candidate.is_empty()
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
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Busy => "busy",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
        }
    }

    fn from_str(s: &str) -> Option<Self> {
        [
            ErrorCode::Busy,
            ErrorCode::BadRequest,
            ErrorCode::Unsupported,
            ErrorCode::Internal,
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
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
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

fn parse_description(payload: &[u8], expected: SdpType) -> Result<String, ProtocolError> {
    let what = expected.as_str();
    let mut obj = json_object(payload, what)?;
    let kind = take_string(&mut obj, what, "type")?;
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
    let sdp = take_string(&mut obj, what, "sdp")?;
    if sdp.trim().is_empty() {
        return Err(bad_field(
            what,
            "sdp",
            "a non-empty SDP string",
            &Value::String(sdp),
        ));
    }
    Ok(sdp)
}

/// Parse an ICE payload. `Ok(None)` means end of candidates (empty `candidate`). A non-empty
/// candidate must start with `candidate:`; `sdpMid` and `sdpMLineIndex` may be absent or null.
pub fn parse_candidate(payload: &[u8]) -> Result<Option<IceCandidateMsg>, ProtocolError> {
    let what = "ICE candidate";
    let mut obj = json_object(payload, what)?;
    let candidate = take_string(&mut obj, what, "candidate")?;
    if candidate.is_empty() {
        return Ok(None);
    }
    if candidate.len() > CANDIDATE_MAX_LEN {
        return Err(ProtocolError::BadField {
            what,
            field: "candidate",
            expected: "a string of at most 512 bytes",
            got: format!("{} bytes", candidate.len()),
        });
    }
    if !candidate.starts_with("candidate:") {
        let got = Value::String(candidate);
        return Err(bad_field(
            what,
            "candidate",
            "a string starting with \"candidate:\"",
            &got,
        ));
    }
    let sdp_mid = match obj.remove("sdpMid") {
        None | Some(Value::Null) => None,
        Some(Value::String(mid)) if mid.len() <= SDP_MID_MAX_LEN => Some(mid),
        Some(Value::String(mid)) => {
            return Err(ProtocolError::BadField {
                what,
                field: "sdpMid",
                expected: "a string of at most 64 bytes",
                got: format!("{} bytes", mid.len()),
            });
        }
        Some(other) => return Err(bad_field(what, "sdpMid", "a string or null", &other)),
    };
    let sdp_mline_index = match obj.remove("sdpMLineIndex") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                return Err(bad_field(
                    what,
                    "sdpMLineIndex",
                    "an integer from 0 to 65535 or null",
                    &value,
                ));
            }
        },
    };
    Ok(Some(IceCandidateMsg {
        candidate,
        sdp_mid,
        sdp_mline_index,
    }))
}

/// Parse an error payload (what a viewer receives).
pub fn parse_error(payload: &[u8]) -> Result<ErrorMsg, ProtocolError> {
    let what = "error";
    let mut obj = json_object(payload, what)?;
    let code = take_string(&mut obj, what, "code")?;
    let code = ErrorCode::from_str(&code).ok_or_else(|| {
        bad_field(
            what,
            "code",
            "one of \"busy\", \"bad-request\", \"unsupported\", \"internal\"",
            &Value::String(code),
        )
    })?;
    let message = take_string(&mut obj, what, "message")?;
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

fn take_string(
    obj: &mut Map<String, Value>,
    what: &'static str,
    field: &'static str,
) -> Result<String, ProtocolError> {
    match obj.remove(field) {
        None => Err(ProtocolError::MissingField { what, field }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(bad_field(what, field, "a string", &other)),
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
        assert_eq!(t.status(), "garage/cam1/status");
        assert_eq!(
            t.device_filters(),
            [
                "garage/cam1/offer/+",
                "garage/cam1/ice/+",
                "garage/cam1/answer/+"
            ]
        );
        assert_eq!(
            t.viewer_filters("viewer1"),
            [
                "garage/cam1/answer/viewer1",
                "garage/cam1/ice/viewer1",
                "garage/cam1/error/viewer1"
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
                "video": {"codec": "H264", "width": 1280, "height": 720, "fps": 30, "state": "idle"},
                "audio": null,
                "viewers": 0,
                "max_viewers": 4
            })
        );
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
}
