//! What we need to know about an offer before answering it: does it carry H.264 that we can
//! send (packetization-mode 1, a baseline-family profile for our encoders; for H.264 passed
//! through from the source, a profile whose decoder takes the stream's: [`passthrough_codec`])?

use crate::video::h264::ProfileLevel;

/// The result of looking at an offer's video sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferVideo {
    /// At least one payload type we can serve.
    H264 { payload_types: Vec<u8> },
    /// Video is offered, but not in a form we can send; the text says what was offered.
    Unsupported(String),
    /// The offer has no video m-line.
    NoVideo,
}

/// Look at the video m-lines of an SDP offer.
pub fn offer_video(sdp: &str) -> OfferVideo {
    let mut in_video = false;
    let mut saw_video = false;
    let mut h264: Vec<u8> = Vec::new();
    let mut fmtp: Vec<(u8, String)> = Vec::new();
    let mut offered: Vec<String> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            in_video = m.starts_with("video ");
            saw_video |= in_video;
            continue;
        }
        if !in_video {
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let mut it = rest.splitn(2, ' ');
            let (Some(pt), Some(codec)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(pt) = pt.parse::<u8>() else { continue };
            let name = codec.split('/').next().unwrap_or("");
            if !offered.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                offered.push(name.to_string());
            }
            if name.eq_ignore_ascii_case("H264") {
                h264.push(pt);
            }
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            let mut it = rest.splitn(2, ' ');
            if let (Some(Ok(pt)), Some(params)) = (it.next().map(str::parse::<u8>), it.next()) {
                fmtp.push((pt, params.to_string()));
            }
        }
    }
    if !saw_video {
        return OfferVideo::NoVideo;
    }
    let usable: Vec<u8> = h264
        .iter()
        .copied()
        .filter(|pt| {
            let params = fmtp
                .iter()
                .find(|(p, _)| p == pt)
                .map(|(_, s)| s.as_str())
                .unwrap_or("");
            let param = |key: &str| {
                params.split(';').map(str::trim).find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case(key)
                        .then(|| v.trim().to_ascii_lowercase())
                })
            };
            let mode_1 = param("packetization-mode").as_deref() == Some("1");
            // No profile-level-id means 42000a (baseline) by RFC 6184.
            let baseline = param("profile-level-id").is_none_or(|p| p.starts_with("42"));
            mode_1 && baseline
        })
        .collect();
    if usable.is_empty() {
        let what = if offered.is_empty() {
            "no codecs".to_string()
        } else {
            offered.join(", ")
        };
        let detail = if h264.is_empty() {
            "no H.264".to_string()
        } else {
            "H.264 without packetization-mode=1 in a baseline profile".to_string()
        };
        OfferVideo::Unsupported(format!("offer has {detail} (video codecs offered: {what})"))
    } else {
        OfferVideo::H264 {
            payload_types: usable,
        }
    }
}

/// One H.264 payload type of an offer's video m-lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedH264 {
    pub payload_type: u8,
    pub packetization_mode_1: bool,
    /// `profile-level-id`, or baseline level 1 (`42000a`) when the offer gives none (RFC 6184).
    pub profile_level: ProfileLevel,
}

/// The H.264 payload types of the offer's video m-lines, in the offer's order.
pub fn offered_h264(sdp: &str) -> Vec<OfferedH264> {
    let mut in_video = false;
    let mut pts: Vec<u8> = Vec::new();
    let mut fmtp: Vec<(u8, String)> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            in_video = m.starts_with("video ");
            continue;
        }
        if !in_video {
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            let mut it = rest.splitn(2, ' ');
            if let (Some(Ok(pt)), Some(codec)) = (it.next().map(str::parse::<u8>), it.next())
                && codec
                    .split('/')
                    .next()
                    .is_some_and(|name| name.eq_ignore_ascii_case("H264"))
            {
                pts.push(pt);
            }
        } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
            let mut it = rest.splitn(2, ' ');
            if let (Some(Ok(pt)), Some(params)) = (it.next().map(str::parse::<u8>), it.next()) {
                fmtp.push((pt, params.to_string()));
            }
        }
    }
    pts.into_iter()
        .map(|pt| {
            let params = fmtp
                .iter()
                .find(|(p, _)| *p == pt)
                .map(|(_, s)| s.as_str())
                .unwrap_or("");
            let param = |key: &str| {
                params.split(';').map(str::trim).find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
                })
            };
            OfferedH264 {
                payload_type: pt,
                packetization_mode_1: param("packetization-mode") == Some("1"),
                profile_level: param("profile-level-id")
                    .and_then(ProfileLevel::parse)
                    .unwrap_or(ProfileLevel([0x42, 0x00, 0x0a])),
            }
        })
        .collect()
}

/// For a stream of `stream`'s profile passed through as it is: the offer's payload type to
/// answer with and the `profile-level-id` to answer (the offered profile, whose decoder takes the
/// stream, with the stream's level). An offer of the very profile is preferred; then the first
/// that decodes it (a High stream goes to a browser's High 4:4:4 Predictive entry, a constrained
/// baseline one to any). The error says what the stream is and what was offered.
pub fn passthrough_codec(sdp: &str, stream: ProfileLevel) -> Result<(u8, ProfileLevel), String> {
    let offered: Vec<OfferedH264> = offered_h264(sdp)
        .into_iter()
        .filter(|o| o.packetization_mode_1)
        .collect();
    let Some(profile) = stream.profile() else {
        return Err(format!(
            "the camera's H.264 (profile-level-id {stream}) is a profile WebRTC does not name"
        ));
    };
    let decodes = |o: &&OfferedH264| {
        o.profile_level
            .profile()
            .is_some_and(|p| p.decodes(profile))
    };
    let exact = offered
        .iter()
        .find(|o| o.profile_level.profile() == Some(profile));
    match exact.or_else(|| offered.iter().find(decodes)) {
        Some(o) => {
            let [idc, iop, _] = o.profile_level.0;
            Ok((o.payload_type, ProfileLevel([idc, iop, stream.level_idc()])))
        }
        None => {
            let list: Vec<String> = offered
                .iter()
                .map(|o| o.profile_level.to_string())
                .collect();
            Err(format!(
                "the camera sends H.264 {profile} (profile-level-id {stream}), passed through as \
                 it is; the offer has no H.264 with packetization-mode=1 that decodes it \
                 (offered: {})",
                if list.is_empty() {
                    "none".to_string()
                } else {
                    list.join(", ")
                }
            ))
        }
    }
}

/// Does the offer have an audio m-line that is not rejected (port 0)?
pub fn offer_has_audio(sdp: &str) -> bool {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("m=audio "))
        .any(|rest| !rest.starts_with("0 "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_VIDEO: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 102 104 108\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:104 H264/90000\r\n\
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:108 H264/90000\r\n\
a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";

    #[test]
    fn finds_usable_h264_payload_types() {
        assert_eq!(
            offer_video(CHROMIUM_VIDEO),
            OfferVideo::H264 {
                payload_types: vec![102, 108]
            }
        );
    }

    #[test]
    fn vp8_only_is_unsupported_and_says_what_was_offered() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 VP9/90000\r\n";
        match offer_video(sdp) {
            OfferVideo::Unsupported(msg) => {
                assert!(
                    msg.contains("no H.264") && msg.contains("VP8, VP9"),
                    "{msg}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mode_0_or_high_profile_only_is_unsupported() {
        let sdp = "m=video 9 UDP/TLS/RTP/SAVPF 104 41\r\na=rtpmap:104 H264/90000\r\n\
a=fmtp:104 packetization-mode=0;profile-level-id=42e01f\r\na=rtpmap:41 H264/90000\r\n\
a=fmtp:41 packetization-mode=1;profile-level-id=f4001f\r\n";
        assert!(matches!(offer_video(sdp), OfferVideo::Unsupported(_)));
    }

    const CHROMIUM_ALL: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 104 108 116 39 41\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:104 H264/90000\r\na=fmtp:104 packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:108 H264/90000\r\na=fmtp:108 packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:116 H264/90000\r\na=fmtp:116 packetization-mode=1;profile-level-id=4d001f\r\n\
a=rtpmap:39 H264/90000\r\na=fmtp:39 packetization-mode=0;profile-level-id=4d001f\r\n\
a=rtpmap:41 H264/90000\r\na=fmtp:41 packetization-mode=1;profile-level-id=f4001f\r\n";

    #[test]
    fn passthrough_answers_the_offered_profile_that_decodes_the_stream() {
        let pl = |s| ProfileLevel::parse(s).unwrap();
        // Main (x264 sets constraint_set1): the offer's Main entry, with the stream's level.
        assert_eq!(
            passthrough_codec(CHROMIUM_ALL, pl("4d4028")),
            Ok((116, pl("4d0028")))
        );
        // High: no High entry; High 4:4:4 Predictive decoders take High streams.
        assert_eq!(
            passthrough_codec(CHROMIUM_ALL, pl("640028")),
            Ok((41, pl("f40028")))
        );
        // Constrained baseline: its own entry first.
        assert_eq!(
            passthrough_codec(CHROMIUM_ALL, pl("42c01f")),
            Ok((108, pl("42e01f")))
        );
        assert_eq!(
            passthrough_codec(CHROMIUM_VIDEO, pl("42c01f")),
            Ok((108, pl("42e01f")))
        );
        // An offer of baseline only cannot take Main or High.
        let err = passthrough_codec(CHROMIUM_VIDEO, pl("4d4028")).unwrap_err();
        assert!(
            err.contains("main") && err.contains("42001f, 42e01f"),
            "{err}"
        );
        // No profile-level-id means baseline.
        let bare = "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=rtpmap:97 H264/90000\r\na=fmtp:97 packetization-mode=1\r\n";
        assert_eq!(offered_h264(bare)[0].profile_level, pl("42000a"));
        assert!(passthrough_codec(bare, pl("640028")).is_err());
        assert!(passthrough_codec(CHROMIUM_ALL, pl("6e0028")).is_err());
    }

    #[test]
    fn audio_only_has_no_video() {
        let sdp = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 H264/90000\r\n";
        assert_eq!(offer_video(sdp), OfferVideo::NoVideo);
    }

    #[test]
    fn audio_m_lines_are_found_unless_rejected() {
        assert!(!offer_has_audio(CHROMIUM_VIDEO));
        assert!(offer_has_audio(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
        ));
        assert!(!offer_has_audio(
            "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\n"
        ));
    }
}
