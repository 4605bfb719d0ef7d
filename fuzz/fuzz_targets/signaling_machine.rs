//! The signaling state machine fed arbitrary sequences of messages (any topic, any payload), peer
//! events for its sessions (answers, failures, candidates, connects, closes) and clock ticks.
//! Nothing may panic, and it must keep its promises: never more connected viewers than allowed,
//! never a session started for a bad client id, candidates only for sessions it started, closes
//! only for sessions it started or that a peer event named.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use spyglass::signaling::protocol::{
    ErrorCode, IceCandidateMsg, MediaState, SessionDescriptionMsg, Status, Topics, VideoStatus,
    validate_cid,
};
use spyglass::signaling::sessions::{Action, Limits, PeerEvent, SessionKey, Signaling};

const UID: &str = "fuzz/cam";
const CIDS: [&str; 4] = ["alice", "bob", "carol-1", "d_2"];
const OFFER: &str =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n";

#[derive(Debug, Arbitrary)]
enum Payload {
    Offer,
    Candidate(String),
    EndOfCandidates,
    Raw(Vec<u8>),
    Huge(u16),
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// A message on `{uid}/{kind}/{cid}` for a known CID.
    Message {
        kind: u8,
        cid: u8,
        payload: Payload,
    },
    /// A message on any topic at all.
    RawTopic {
        topic: String,
        payload: Vec<u8>,
    },
    /// A session of a known CID reports something (for its current or a stale generation).
    Peer {
        cid: u8,
        stale: bool,
        event: u8,
        text: String,
    },
    Tick {
        ms: u16,
    },
    Video(u8),
    Status,
}

fuzz_target!(|ops: Vec<Op>| {
    let topics = Topics::new(UID).unwrap();
    let video = VideoStatus {
        state: MediaState::Idle,
        codec: "H264".into(),
        width: 320,
        height: 240,
        fps: 30,
    };
    let limits = Limits {
        max_viewers: 2,
        ..Limits::default()
    };
    let max = limits.max_viewers;
    let mut core = Signaling::new(topics.clone(), limits, Status::online("0", video, 0, 2));
    let mut now = Instant::now();
    // The sessions the machine started, by CID: the latest generation.
    let mut started: HashMap<String, u64> = HashMap::new();
    for op in ops.into_iter().take(256) {
        // The key a peer event came with: the machine may close that session (a stale one that
        // still answers or connects) even though it never started it under that key.
        let mut event_key = None;
        let actions = match op {
            Op::Message { kind, cid, payload } => {
                let cid = CIDS[cid as usize % CIDS.len()];
                let topic = match kind % 5 {
                    0 => topics.offer(cid),
                    1 => topics.ice(cid),
                    2 => topics.answer(cid),
                    3 => topics.ice_servers(cid),
                    _ => topics.error(cid),
                };
                let payload = match payload {
                    Payload::Offer => SessionDescriptionMsg::offer(OFFER).to_json(),
                    Payload::Candidate(c) => IceCandidateMsg {
                        candidate: format!("candidate:{c}"),
                        sdp_mid: Some("0".into()),
                        sdp_mline_index: Some(0),
                        username_fragment: None,
                    }
                    .to_json(),
                    Payload::EndOfCandidates => IceCandidateMsg::end_of_candidates().to_json(),
                    Payload::Raw(bytes) => bytes,
                    Payload::Huge(n) => {
                        let sdp = "a".repeat(64 * 1024 + usize::from(n));
                        SessionDescriptionMsg::offer(sdp).to_json()
                    }
                };
                core.on_message(now, &topic, &payload)
            }
            Op::RawTopic { topic, payload } => core.on_message(now, &topic, &payload),
            Op::Peer {
                cid,
                stale,
                event,
                text,
            } => {
                let cid = CIDS[cid as usize % CIDS.len()];
                let generation = started.get(cid).copied().unwrap_or(0);
                let key = SessionKey {
                    cid: cid.to_string(),
                    generation: if stale {
                        generation.wrapping_sub(1)
                    } else {
                        generation
                    },
                };
                let event = match event % 6 {
                    0 => PeerEvent::Answered(text),
                    1 => PeerEvent::Failed {
                        code: ErrorCode::Internal,
                        message: text,
                    },
                    2 => PeerEvent::LocalCandidate(Some(IceCandidateMsg {
                        candidate: format!("candidate:{text}"),
                        sdp_mid: None,
                        sdp_mline_index: None,
                        username_fragment: None,
                    })),
                    3 => PeerEvent::LocalCandidate(None),
                    4 => PeerEvent::Connected,
                    _ => PeerEvent::Closed,
                };
                let actions = core.on_peer_event(now, &key, event);
                event_key = Some(key);
                actions
            }
            Op::Tick { ms } => {
                now += Duration::from_millis(u64::from(ms));
                core.on_tick(now)
            }
            Op::Video(s) => core.set_video_state(match s % 3 {
                0 => MediaState::Idle,
                1 => MediaState::Live,
                _ => MediaState::Lost,
            }),
            Op::Status => vec![core.status_action()],
        };
        for action in actions {
            match action {
                Action::Start { key, .. } => {
                    assert!(
                        validate_cid(&key.cid).is_ok(),
                        "started a session for {:?}",
                        key.cid
                    );
                    let previous = started.insert(key.cid.clone(), key.generation);
                    assert!(
                        previous.is_none_or(|g| g < key.generation),
                        "generations go up"
                    );
                }
                Action::Candidate { key, .. } => {
                    assert!(
                        started.get(&key.cid).is_some_and(|&g| g >= key.generation),
                        "candidate for a session never started: {key:?}"
                    );
                }
                Action::Renegotiate { key, .. } => {
                    assert_eq!(
                        started.get(&key.cid),
                        Some(&key.generation),
                        "renegotiated a session that is not the CID's current one: {key:?}"
                    );
                }
                Action::GrantIceServers { cid, topic } => {
                    assert!(validate_cid(&cid).is_ok(), "granted to {cid:?}");
                    assert_eq!(topic, topics.ice_servers(&cid));
                }
                Action::Close { key } => {
                    assert!(
                        started.get(&key.cid).is_some_and(|&g| g >= key.generation)
                            || event_key.as_ref() == Some(&key),
                        "close for a session never started nor reported: {key:?}"
                    );
                }
                Action::Publish { topic, .. } => {
                    assert!(
                        topic.starts_with(UID),
                        "published outside the device: {topic}"
                    );
                }
            }
        }
        assert!(
            core.viewers() <= max,
            "{} viewers, at most {max}",
            core.viewers()
        );
    }
});
