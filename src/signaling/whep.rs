//! WHEP's side of signaling, without I/O (draft-ietf-wish-whep, built on WHIP, RFC 9725): the
//! names of WHEP sessions in the signaling core, the bodies of trickle `PATCH` requests
//! (`application/trickle-ice-sdpfrag`, RFC 8840), the session's entity tag, ICE servers as `Link`
//! header values, completing an answer with the candidates gathered after it (a WHEP session
//! cannot trickle its own), and why a request is refused ([`WhepError`]). The HTTP resource that
//! serves these is `crate::whep`; `docs/PROTOCOL.md` ("WHEP") is the contract.

use std::time::Duration;

use super::protocol::{CANDIDATE_MAX_LEN, ErrorCode, IceCandidateMsg, SDP_MID_MAX_LEN};

/// A WHEP session's name in the signaling core: this prefix and its resource id. No MQTT CID
/// contains `:` (`[A-Za-z0-9_-]`), so the two kinds of sessions never share a name.
pub const SESSION_PREFIX: &str = "whep:";
/// Largest offer body accepted (the same as an MQTT message).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Largest `PATCH` body accepted: 64 candidates of the longest size fit in it.
pub const MAX_PATCH_BYTES: usize = 40 * 1024;
/// Remote candidates one WHEP session takes over all its `PATCH` requests.
pub const MAX_CANDIDATES: usize = 64;
/// `PATCH` requests per session: per second, and at once.
pub const PATCH_RATE: (f64, u32) = (5.0, 10);
/// How long an answer waits for the device's candidates to be gathered (they must all be in it);
/// after that it goes with those it has.
pub const GATHER_WAIT: Duration = Duration::from_secs(2);
/// Most ICE username-fragment or password bytes taken from a `PATCH`.
const MAX_ICE_CREDENTIAL_LEN: usize = 256;
/// Most device candidates kept for one answer.
const MAX_LOCAL_CANDIDATES: usize = 32;

/// The core's name of WHEP session `id`.
pub fn session_name(id: &str) -> String {
    format!("{SESSION_PREFIX}{id}")
}

/// The resource id of a session name, when it names a WHEP session.
pub fn resource_id(name: &str) -> Option<&str> {
    name.strip_prefix(SESSION_PREFIX)
}

/// The strong entity tag of session `id`'s ICE session (RFC 9110 §8.8.3). A session keeps one
/// ICE session (no ICE restarts), so it keeps one tag.
pub fn etag(id: &str) -> String {
    format!("\"{id}\"")
}

/// Why a WHEP request changes nothing. `crate::whep` turns each into an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub enum WhepError {
    /// The body is not a WebRTC offer, or not a well-formed SDP fragment (400).
    BadRequest(String),
    /// `max-viewers` viewers are connected (503).
    Busy(String),
    /// The device starts no more sessions for now (the session-start budget); room in
    /// `retry_in` (503 with `Retry-After`).
    Throttled { message: String, retry_in: Duration },
    /// The camera is lost and being reopened: no live video to watch now (409 with
    /// `Retry-After`, as the WHEP draft says for an endpoint without a live stream).
    NoLiveVideo { retry_in: Duration },
    /// No such session (404).
    NotFound,
    /// `If-Match` names another ICE session (412).
    StaleEtag,
    /// An ICE restart (`If-Match: *`, or new ICE credentials): not supported (422).
    IceRestart,
    /// More `PATCH` requests than [`PATCH_RATE`] allows (429 with `Retry-After`).
    TooManyPatches { retry_in: Duration },
    /// The offer was taken but could not be answered; the session has ended.
    AnswerFailed { code: ErrorCode, message: String },
}

impl std::fmt::Display for WhepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WhepError::BadRequest(m) | WhepError::Busy(m) => f.write_str(m),
            WhepError::Throttled { message, .. } => f.write_str(message),
            WhepError::NoLiveVideo { .. } => {
                f.write_str("the camera is lost and being reopened: no live video to watch now")
            }
            WhepError::NotFound => f.write_str("no such WHEP session"),
            WhepError::StaleEtag => {
                f.write_str("If-Match does not name this session's ICE session")
            }
            WhepError::IceRestart => f.write_str(
                "ICE restarts are not supported: end the session (DELETE) and start a new one",
            ),
            WhepError::TooManyPatches { .. } => f.write_str(&format!(
                "too many PATCH requests: at most {} per second on one session",
                PATCH_RATE.0
            )),
            WhepError::AnswerFailed { message, .. } => f.write_str(message),
        }
    }
}

/// What a trickle `PATCH` carries: the ICE credentials it names, its candidates (with the mid of
/// the m-line they follow), and whether it ends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdpFrag {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    pub candidates: Vec<IceCandidateMsg>,
    pub end_of_candidates: bool,
}

/// Parse an `application/trickle-ice-sdpfrag` body (RFC 8840 §9: SDP lines, `a=ice-ufrag`,
/// `a=ice-pwd`, `m=` lines with `a=mid`, `a=candidate`, `a=end-of-candidates`). Other `a=` lines
/// (`ice-options`, `group`, `ice-lite`) are allowed and ignored; a line that is not SDP, a
/// candidate over 512 bytes and more than [`MAX_CANDIDATES`] candidates are errors.
pub fn parse_sdpfrag(body: &str) -> Result<SdpFrag, String> {
    let mut frag = SdpFrag::default();
    let mut mid: Option<String> = None;
    let mut mline: Option<u16> = None;
    for (n, raw) in body.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() < 2 || !bytes[0].is_ascii_lowercase() || bytes[1] != b'=' {
            return Err(format!(
                "line {} is not an SDP line: {:?}",
                n + 1,
                clip(line)
            ));
        }
        if line.starts_with("m=") {
            mid = None;
            mline = Some(mline.map_or(0, |i| i.saturating_add(1)));
            continue;
        }
        let Some(attribute) = line.strip_prefix("a=") else {
            continue;
        };
        if let Some(value) = attribute.strip_prefix("mid:") {
            if value.len() > SDP_MID_MAX_LEN {
                return Err(format!("a=mid over {SDP_MID_MAX_LEN} bytes"));
            }
            mid = Some(value.to_string());
        } else if let Some(value) = attribute.strip_prefix("ice-ufrag:") {
            frag.ufrag = Some(credential(value, "a=ice-ufrag")?);
        } else if let Some(value) = attribute.strip_prefix("ice-pwd:") {
            frag.pwd = Some(credential(value, "a=ice-pwd")?);
        } else if attribute.starts_with("candidate:") {
            if attribute.len() > CANDIDATE_MAX_LEN {
                return Err(format!(
                    "a candidate of {} bytes (at most {CANDIDATE_MAX_LEN})",
                    attribute.len()
                ));
            }
            if frag.candidates.len() >= MAX_CANDIDATES {
                return Err(format!("more than {MAX_CANDIDATES} candidates"));
            }
            frag.candidates.push(IceCandidateMsg {
                candidate: attribute.to_string(),
                sdp_mid: mid.clone(),
                sdp_mline_index: if mid.is_some() { None } else { mline },
                username_fragment: None,
            });
        } else if attribute == "end-of-candidates" {
            frag.end_of_candidates = true;
        }
    }
    Ok(frag)
}

fn credential(value: &str, what: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_ICE_CREDENTIAL_LEN {
        return Err(format!(
            "{what} must be 1 to {MAX_ICE_CREDENTIAL_LEN} bytes"
        ));
    }
    Ok(value.to_string())
}

fn clip(line: &str) -> &str {
    let mut end = line.len().min(40);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// A STUN or TURN server as a `Link` header value (RFC 9725 §4.6, RFC 8288):
/// `<stun:host:3478>; rel="ice-server"`, with the credentials of a TURN server.
pub fn ice_server_link(url: &str, credentials: Option<(&str, &str)>) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut link = format!("<{url}>; rel=\"ice-server\"");
    if let Some((username, credential)) = credentials {
        link.push_str(&format!(
            "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
            quote(username),
            quote(credential)
        ));
    }
    link
}

/// An answer waiting for the device's candidates.
#[derive(Debug, Clone)]
pub struct PendingAnswer {
    pub sdp: String,
    pub candidates: Vec<IceCandidateMsg>,
}

impl PendingAnswer {
    pub fn new(sdp: String) -> Self {
        PendingAnswer {
            sdp,
            candidates: Vec::new(),
        }
    }

    /// A candidate gathered after the answer was made; beyond a bound they are dropped.
    pub fn add(&mut self, candidate: IceCandidateMsg) {
        if self.candidates.len() < MAX_LOCAL_CANDIDATES {
            self.candidates.push(candidate);
        }
    }

    /// The answer with every candidate in it, and `a=end-of-candidates` when `complete`.
    pub fn finish(self, complete: bool) -> String {
        with_candidates(&self.sdp, &self.candidates, complete)
    }
}

/// `sdp` with `candidates` added to the m-sections they belong to (by `sdpMid`, else the first),
/// leaving out those it already has, and `a=end-of-candidates` in each m-section that has
/// candidates when `complete`.
pub fn with_candidates(sdp: &str, candidates: &[IceCandidateMsg], complete: bool) -> String {
    let newline = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    // Session part, then one entry per m-section.
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in sdp.lines() {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(line);
        }
    }
    let mid_of = |section: &[&str]| {
        section
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .map(str::to_string)
    };
    let present = |line: &str| sdp.lines().any(|l| l == line);
    let mut out = String::with_capacity(sdp.len() + candidates.len() * 120);
    for (index, section) in sections.iter().enumerate() {
        for line in section {
            if *line == "a=end-of-candidates" && complete {
                continue;
            }
            out.push_str(line);
            out.push_str(newline);
        }
        if index == 0 {
            continue;
        }
        let mid = mid_of(section);
        let mut has = section.iter().any(|l| l.starts_with("a=candidate:"));
        for candidate in candidates {
            let belongs = match (&candidate.sdp_mid, &mid) {
                (Some(c), Some(m)) if !c.is_empty() => c == m,
                _ => index == 1,
            };
            let line = format!("a={}", candidate.candidate);
            if belongs && !present(&line) {
                out.push_str(&line);
                out.push_str(newline);
                has = true;
            }
        }
        if complete && has {
            out.push_str("a=end-of-candidates");
            out.push_str(newline);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whip_whep_client_patch_parses() {
        // What the whip-whep npm client sends (whep.js, patch()).
        let body = "a=ice-ufrag:Yd3c\r\na=ice-pwd:jV1v5mNPfk4kS7q2cOu0lB3X\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:2547613475 1 udp 2113937151 4b1c1f0e.local 54400 typ host generation 0 ufrag Yd3c network-cost 999\r\na=end-of-candidates\r\n";
        let frag = parse_sdpfrag(body).unwrap();
        assert_eq!(frag.ufrag.as_deref(), Some("Yd3c"));
        assert_eq!(frag.candidates.len(), 1);
        assert_eq!(frag.candidates[0].sdp_mid.as_deref(), Some("0"));
        assert!(
            frag.candidates[0]
                .candidate
                .starts_with("candidate:2547613475 ")
        );
        assert!(frag.end_of_candidates);
    }

    #[test]
    fn bad_fragments_are_refused() {
        assert!(
            parse_sdpfrag("hello")
                .unwrap_err()
                .contains("not an SDP line")
        );
        let long = format!("a=candidate:{}\r\n", "1".repeat(600));
        assert!(parse_sdpfrag(&long).unwrap_err().contains("610 bytes"));
        let many = "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n".repeat(65);
        assert!(parse_sdpfrag(&many).unwrap_err().contains("more than 64"));
        assert!(parse_sdpfrag("a=ice-ufrag:\r\n").is_err());
        // Lines it does not need are fine.
        let ok = parse_sdpfrag("a=ice-options:trickle ice2\r\na=group:BUNDLE 0 1\r\n").unwrap();
        assert_eq!(ok, SdpFrag::default());
    }

    #[test]
    fn an_answer_gets_the_candidates_it_lacks_once() {
        let sdp = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n";
        let c = |s: &str, mid: &str| IceCandidateMsg {
            candidate: s.into(),
            sdp_mid: Some(mid.into()),
            sdp_mline_index: None,
            username_fragment: None,
        };
        let out = with_candidates(
            sdp,
            &[
                c("candidate:1 1 udp 1 127.0.0.1 5000 typ host", "0"),
                c("candidate:2 1 udp 1 127.0.0.1 5002 typ srflx", "0"),
            ],
            true,
        );
        assert_eq!(out.matches("a=candidate:1 ").count(), 1);
        assert_eq!(out.matches("a=candidate:2 ").count(), 1);
        let video = &out[..out.find("m=audio").unwrap()];
        assert!(video.contains("a=candidate:2 ") && video.ends_with("a=end-of-candidates\r\n"));
        // The audio section had none and gets none (BUNDLE: the first carries them).
        assert!(!out[out.find("m=audio").unwrap()..].contains("a=candidate"));
    }

    #[test]
    fn links_and_names() {
        assert_eq!(
            ice_server_link("stun:stun.example.org:3478", None),
            "<stun:stun.example.org:3478>; rel=\"ice-server\""
        );
        assert!(
            ice_server_link("turn:t.example.org", Some(("u", "p\"w")))
                .ends_with("credential=\"p\\\"w\"; credential-type=\"password\"")
        );
        assert_eq!(resource_id(&session_name("ab12")), Some("ab12"));
        assert_eq!(resource_id("viewer1"), None);
        assert_eq!(etag("ab12"), "\"ab12\"");
        assert_eq!(
            crate::signaling::protocol::sdp_ufrag("v=0\r\na=ice-ufrag:abc\r\n"),
            Some("abc")
        );
    }
}
