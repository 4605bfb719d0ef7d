//! What we need to know about an offer before answering it: does it carry H.264 that we can
//! send (packetization-mode 1, a baseline-family profile)?

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
