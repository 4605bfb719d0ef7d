//! The device's side of signaling as a state machine: which viewer sessions exist, what to reply
//! to each message, when to give up on a session. It does no I/O and reads no clock: messages,
//! session events and the current time go in, [`Action`]s come out, and the daemon carries them
//! out (publishing over MQTT, starting and feeding WebRTC sessions).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tracing::debug;

use super::protocol::{
    AudioStatus, ErrorCode, ErrorMsg, IceCandidateMsg, MediaState, SessionDescriptionMsg, Status,
    TopicKind, Topics, parse_candidate, parse_offer,
};

/// The rate limit remembers at most this many CIDs; beyond, CIDs with no recent offer are forgotten.
const MAX_RATE_TRACKED: usize = 4096;

/// Names one session: the viewer's CID and a generation that grows with every session, so that
/// late events from a replaced session are recognised and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub cid: String,
    pub generation: u64,
}

/// What a WebRTC session reports.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    Answered(String),
    Failed {
        code: ErrorCode,
        message: String,
    },
    /// `None` is the end of candidates.
    LocalCandidate(Option<IceCandidateMsg>),
    Connected,
    Closed,
}

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
    Start {
        key: SessionKey,
        offer_sdp: String,
    },
    /// A remote candidate for a session (`None`: end of candidates).
    Candidate {
        key: SessionKey,
        candidate: Option<IceCandidateMsg>,
    },
    Close {
        key: SessionKey,
    },
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_viewers: usize,
    /// A session that has not connected by then is closed.
    pub peer_timeout: Duration,
    /// How long candidates that arrive before their offer are held.
    pub orphan_ttl: Duration,
    /// At most this many held candidates per CID, and this many CIDs with held candidates.
    pub max_orphans: usize,
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// At most this many offers per CID within `offer_window`; more get an error.
    pub max_offers: usize,
    pub offer_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_viewers: 4,
            peer_timeout: Duration::from_secs(30),
            orphan_ttl: Duration::from_secs(5),
            max_orphans: 64,
            max_message_bytes: 64 * 1024,
            max_offers: 5,
            offer_window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Answering,
    Answered,
    Connected,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    phase: Phase,
    created: Instant,
    local_pending: Vec<Option<IceCandidateMsg>>,
    remote_pending: Vec<Option<IceCandidateMsg>>,
}

pub struct Signaling {
    topics: Topics,
    limits: Limits,
    status: Status,
    sessions: HashMap<String, Slot>,
    orphans: HashMap<String, Vec<(Instant, Option<IceCandidateMsg>)>>,
    /// When each CID made its recent offers (for the rate limit).
    recent_offers: HashMap<String, VecDeque<Instant>>,
    next_generation: u64,
}

impl Signaling {
    /// `status` is the online status to publish; its viewer count is kept up to date here.
    pub fn new(topics: Topics, limits: Limits, status: Status) -> Self {
        Signaling {
            topics,
            limits,
            status,
            sessions: HashMap::new(),
            orphans: HashMap::new(),
            recent_offers: HashMap::new(),
            next_generation: 1,
        }
    }

    /// Connected viewers.
    pub fn viewers(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.phase == Phase::Connected)
            .count()
    }

    /// Sessions in any phase.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The video pipeline changed state: returns the status to publish when that changes it.
    pub fn set_video_state(&mut self, state: MediaState) -> Vec<Action> {
        if self.status.video.state == state {
            return vec![];
        }
        self.status.video.state = state;
        vec![self.status_action()]
    }

    /// The stream's encoder or IDR period changed: returns the status to publish when that
    /// changes it.
    pub fn set_video_stream(&mut self, encoder: &str, idr_period_ms: Option<u64>) -> Vec<Action> {
        let video = &mut self.status.video;
        if video.encoder == encoder && video.idr_period_ms == idr_period_ms {
            return vec![];
        }
        video.encoder = encoder.to_string();
        video.idr_period_ms = idr_period_ms;
        vec![self.status_action()]
    }

    /// The retained status message as it stands now.
    pub fn status_action(&mut self) -> Action {
        self.status.viewers = self.viewers() as u32;
        Action::Publish {
            topic: self.topics.status(),
            payload: self.status.to_json(),
            retain: true,
        }
    }

    /// The audio part of the status changed (audio lost, or back): the status to publish.
    pub fn set_audio(&mut self, audio: Option<AudioStatus>) -> Action {
        self.status.audio = audio;
        self.status_action()
    }

    fn error(&self, cid: &str, code: ErrorCode, message: impl Into<String>) -> Action {
        Action::Publish {
            topic: self.topics.error(cid),
            payload: ErrorMsg::new(code, message).to_json(),
            retain: false,
        }
    }

    fn ice(&self, cid: &str, candidate: &Option<IceCandidateMsg>) -> Action {
        let msg = candidate
            .clone()
            .unwrap_or_else(IceCandidateMsg::end_of_candidates);
        Action::Publish {
            topic: self.topics.ice(cid),
            payload: msg.to_json(),
            retain: false,
        }
    }

    /// A message arrived on one of the device's subscriptions.
    pub fn on_message(&mut self, now: Instant, topic: &str, payload: &[u8]) -> Vec<Action> {
        let Some((kind, Some(cid))) = self.topics.parse(topic) else {
            debug!(
                topic,
                "ignoring message on a topic that is not ours or has a bad CID"
            );
            return vec![];
        };
        if payload.len() > self.limits.max_message_bytes {
            return vec![self.error(
                &cid,
                ErrorCode::BadRequest,
                format!(
                    "message of {} bytes is over the limit of {} bytes",
                    payload.len(),
                    self.limits.max_message_bytes
                ),
            )];
        }
        let cid = cid.to_string();
        match kind {
            TopicKind::Offer => self.on_offer(now, cid, payload),
            TopicKind::Ice => self.on_candidate(now, cid, payload),
            _ => {
                debug!(topic, "ignoring message the device does not act on");
                vec![]
            }
        }
    }

    /// Count an offer against its CID's budget; false when over it.
    fn offer_allowed(&mut self, now: Instant, cid: &str) -> bool {
        let window = self.limits.offer_window;
        if !self.recent_offers.contains_key(cid) && self.recent_offers.len() >= MAX_RATE_TRACKED {
            self.forget_old_offers(now);
        }
        let recent = self.recent_offers.entry(cid.to_string()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            recent.pop_front();
        }
        if recent.len() >= self.limits.max_offers {
            return false;
        }
        recent.push_back(now);
        true
    }

    fn forget_old_offers(&mut self, now: Instant) {
        let window = self.limits.offer_window;
        self.recent_offers.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < window)
        });
    }

    fn on_offer(&mut self, now: Instant, cid: String, payload: &[u8]) -> Vec<Action> {
        let sdp = match parse_offer(payload) {
            Ok(sdp) => sdp,
            Err(err) => return vec![self.error(&cid, ErrorCode::BadRequest, err.to_string())],
        };
        // Only well-formed offers cost a session, so only they count against the limit.
        if !self.offer_allowed(now, &cid) {
            let (n, window) = (self.limits.max_offers, self.limits.offer_window.as_secs());
            return vec![self.error(
                &cid,
                ErrorCode::BadRequest,
                format!("too many offers: at most {n} per {window} s on one CID"),
            )];
        }
        let others = self.sessions.keys().filter(|c| **c != cid).count();
        if others >= self.limits.max_viewers {
            return vec![self.error(
                &cid,
                ErrorCode::Busy,
                format!(
                    "the device already serves its maximum of {} viewers",
                    self.limits.max_viewers
                ),
            )];
        }
        let mut actions = Vec::new();
        let viewers_before = self.viewers();
        if let Some(old) = self.sessions.remove(&cid) {
            actions.push(Action::Close {
                key: SessionKey {
                    cid: cid.clone(),
                    generation: old.generation,
                },
            });
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let remote_pending = self
            .orphans
            .remove(&cid)
            .unwrap_or_default()
            .into_iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= self.limits.orphan_ttl)
            .map(|(_, c)| c)
            .collect();
        self.sessions.insert(
            cid.clone(),
            Slot {
                generation,
                phase: Phase::Answering,
                created: now,
                local_pending: vec![],
                remote_pending,
            },
        );
        actions.push(Action::Start {
            key: SessionKey { cid, generation },
            offer_sdp: sdp,
        });
        if self.viewers() != viewers_before {
            actions.push(self.status_action());
        }
        actions
    }

    fn on_candidate(&mut self, now: Instant, cid: String, payload: &[u8]) -> Vec<Action> {
        let candidate = match parse_candidate(payload) {
            Ok(c) => c,
            Err(err) => return vec![self.error(&cid, ErrorCode::BadRequest, err.to_string())],
        };
        if let Some(slot) = self.sessions.get_mut(&cid) {
            if slot.phase == Phase::Answering {
                slot.remote_pending.push(candidate);
                return vec![];
            }
            let key = SessionKey {
                cid,
                generation: slot.generation,
            };
            return vec![Action::Candidate { key, candidate }];
        }
        // Before its offer: hold it for a while, within bounds.
        self.expire_orphans(now);
        if !self.orphans.contains_key(&cid) && self.orphans.len() >= self.limits.max_orphans {
            debug!(
                cid,
                "dropping early candidate: too many CIDs with held candidates"
            );
            return vec![];
        }
        let held = self.orphans.entry(cid).or_default();
        if held.len() < self.limits.max_orphans {
            held.push((now, candidate));
        }
        vec![]
    }

    fn expire_orphans(&mut self, now: Instant) {
        let ttl = self.limits.orphan_ttl;
        self.orphans.retain(|_, held| {
            held.retain(|(t, _)| now.saturating_duration_since(*t) <= ttl);
            !held.is_empty()
        });
    }

    /// A session reported something.
    pub fn on_peer_event(
        &mut self,
        _now: Instant,
        key: &SessionKey,
        event: PeerEvent,
    ) -> Vec<Action> {
        let current = self
            .sessions
            .get(&key.cid)
            .is_some_and(|s| s.generation == key.generation);
        if !current {
            // A replaced or reaped session: make sure it is gone.
            return match event {
                PeerEvent::Answered(_) | PeerEvent::Connected => {
                    vec![Action::Close { key: key.clone() }]
                }
                _ => vec![],
            };
        }
        let cid = key.cid.as_str();
        match event {
            PeerEvent::Answered(sdp) => {
                let mut actions = vec![Action::Publish {
                    topic: self.topics.answer(cid),
                    payload: SessionDescriptionMsg::answer(sdp).to_json(),
                    retain: false,
                }];
                let slot = self.sessions.get_mut(cid).expect("checked above");
                slot.phase = Phase::Answered;
                let local = std::mem::take(&mut slot.local_pending);
                let remote = std::mem::take(&mut slot.remote_pending);
                actions.extend(local.iter().map(|c| self.ice(cid, c)));
                actions.extend(remote.into_iter().map(|candidate| Action::Candidate {
                    key: key.clone(),
                    candidate,
                }));
                actions
            }
            PeerEvent::Failed { code, message } => {
                self.sessions.remove(cid);
                vec![self.error(cid, code, message)]
            }
            PeerEvent::LocalCandidate(candidate) => {
                let slot = self.sessions.get_mut(cid).expect("checked above");
                if slot.phase == Phase::Answering {
                    slot.local_pending.push(candidate);
                    vec![]
                } else {
                    vec![self.ice(cid, &candidate)]
                }
            }
            PeerEvent::Connected => {
                let slot = self.sessions.get_mut(cid).expect("checked above");
                if slot.phase == Phase::Connected {
                    return vec![];
                }
                slot.phase = Phase::Connected;
                vec![self.status_action()]
            }
            PeerEvent::Closed => {
                let was_connected = self
                    .sessions
                    .remove(cid)
                    .is_some_and(|s| s.phase == Phase::Connected);
                if was_connected {
                    vec![self.status_action()]
                } else {
                    vec![]
                }
            }
        }
    }

    /// Time passes: close sessions that did not connect in time, forget stale held candidates.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        self.expire_orphans(now);
        self.forget_old_offers(now);
        let timeout = self.limits.peer_timeout;
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.phase != Phase::Connected && now.saturating_duration_since(s.created) >= timeout
            })
            .map(|(cid, _)| cid.clone())
            .collect();
        let mut actions = Vec::new();
        for cid in expired {
            if let Some(slot) = self.sessions.remove(&cid) {
                debug!(cid, "session did not connect within the peer timeout");
                actions.push(Action::Close {
                    key: SessionKey {
                        cid,
                        generation: slot.generation,
                    },
                });
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::protocol::{MediaState, VideoStatus};

    const OFFER: &[u8] = br#"{"type":"offer","sdp":"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n"}"#;

    fn machine(max_viewers: usize) -> Signaling {
        let video = VideoStatus {
            state: MediaState::Idle,
            codec: "H264".into(),
            width: 320,
            height: 240,
            fps: 30,
            encoder: "openh264".into(),
            idr_period_ms: None,
        };
        Signaling::new(
            Topics::new("home/cam").unwrap(),
            Limits {
                max_viewers,
                peer_timeout: Duration::from_secs(30),
                ..Limits::default()
            },
            Status::online("1.0", video, 0, max_viewers as u32),
        )
    }

    fn started(actions: &[Action]) -> SessionKey {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Start { key, .. } => Some(key.clone()),
                _ => None,
            })
            .expect("a session starts")
    }

    fn published(actions: &[Action]) -> Vec<(String, serde_json::Value)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish { topic, payload, .. } => {
                    Some((topic.clone(), serde_json::from_slice(payload).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    fn candidate(n: u32) -> Vec<u8> {
        format!(r#"{{"candidate":"candidate:{n} 1 udp 1 127.0.0.1 {n} typ host","sdpMid":"0","sdpMLineIndex":0}}"#)
            .into_bytes()
    }

    #[test]
    fn an_offer_starts_a_session_and_its_answer_is_published_before_its_candidates() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let key = started(&m.on_message(t0, "home/cam/offer/v1", OFFER));
        assert_eq!(key.cid, "v1");
        // A local candidate fires before the answer is ready: held.
        let c = IceCandidateMsg {
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        };
        assert!(
            m.on_peer_event(t0, &key, PeerEvent::LocalCandidate(Some(c.clone())))
                .is_empty()
        );
        let out = published(&m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into())));
        assert_eq!(out[0].0, "home/cam/answer/v1");
        assert_eq!(out[0].1, serde_json::json!({"type":"answer","sdp":"v=0"}));
        assert_eq!(out[1].0, "home/cam/ice/v1");
        assert_eq!(out[1].1["candidate"], c.candidate);
        // Later candidates go straight out; end of candidates is an empty candidate.
        let out = published(&m.on_peer_event(t0, &key, PeerEvent::LocalCandidate(None)));
        assert_eq!(out[0].1, serde_json::json!({"candidate":""}));
    }

    #[test]
    fn status_counts_connected_viewers() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let key = started(&m.on_message(t0, "home/cam/offer/v1", OFFER));
        m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()));
        let out = published(&m.on_peer_event(t0, &key, PeerEvent::Connected));
        assert_eq!(out[0].0, "home/cam/status");
        assert_eq!(out[0].1["viewers"], 1);
        let out = published(&m.on_peer_event(t0, &key, PeerEvent::Closed));
        assert_eq!(out[0].1["viewers"], 0);
        assert_eq!(m.sessions(), 0);
    }

    #[test]
    fn candidates_before_the_offer_are_held_and_delivered_after_the_answer() {
        let t0 = Instant::now();
        let mut m = machine(4);
        assert!(
            m.on_message(t0, "home/cam/ice/v1", &candidate(1))
                .is_empty()
        );
        assert!(
            m.on_message(t0, "home/cam/ice/v1", br#"{"candidate":""}"#)
                .is_empty()
        );
        let key = started(&m.on_message(t0 + Duration::from_secs(1), "home/cam/offer/v1", OFFER));
        // While answering, more candidates are held too.
        assert!(
            m.on_message(t0, "home/cam/ice/v1", &candidate(2))
                .is_empty()
        );
        let actions = m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()));
        let delivered: Vec<Option<String>> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Candidate { candidate, .. } => {
                    Some(candidate.as_ref().map(|c| c.candidate.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(delivered.len(), 3);
        assert!(delivered[0].as_ref().unwrap().starts_with("candidate:1 "));
        assert_eq!(delivered[1], None);
        assert!(delivered[2].as_ref().unwrap().starts_with("candidate:2 "));
        // After the answer, candidates go straight to the session.
        let actions = m.on_message(t0, "home/cam/ice/v1", &candidate(3));
        assert!(
            matches!(&actions[..], [Action::Candidate { key: k, candidate: Some(_) }] if *k == key)
        );
    }

    #[test]
    fn held_candidates_expire() {
        let t0 = Instant::now();
        let mut m = machine(4);
        m.on_message(t0, "home/cam/ice/v1", &candidate(1));
        let key = started(&m.on_message(t0 + Duration::from_secs(6), "home/cam/offer/v1", OFFER));
        let actions = m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()));
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Candidate { .. }))
        );
    }

    #[test]
    fn a_viewer_beyond_the_limit_is_busy_but_a_repeat_offer_replaces_its_session() {
        let t0 = Instant::now();
        let mut m = machine(1);
        let first = started(&m.on_message(t0, "home/cam/offer/v1", OFFER));
        let out = published(&m.on_message(t0, "home/cam/offer/v2", OFFER));
        assert_eq!(out[0].0, "home/cam/error/v2");
        assert_eq!(out[0].1["code"], "busy");
        // The same viewer offering again replaces its own session.
        let actions = m.on_message(t0, "home/cam/offer/v1", OFFER);
        assert!(actions.contains(&Action::Close { key: first.clone() }));
        let second = started(&actions);
        assert_ne!(second.generation, first.generation);
        // Late news from the replaced session changes nothing, and an answer from it closes it.
        assert_eq!(
            m.on_peer_event(t0, &first, PeerEvent::Answered("x".into())),
            vec![Action::Close { key: first.clone() }]
        );
        assert!(m.on_peer_event(t0, &first, PeerEvent::Closed).is_empty());
        assert_eq!(m.sessions(), 1);
    }

    #[test]
    fn bad_messages_get_error_replies_and_change_nothing() {
        let t0 = Instant::now();
        let mut m = machine(4);
        for payload in [
            &b"nope"[..],
            br#"{"type":"answer","sdp":"x"}"#,
            br#"{"type":"offer","sdp":""}"#,
        ] {
            let out = published(&m.on_message(t0, "home/cam/offer/v1", payload));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, "home/cam/error/v1");
            assert_eq!(out[0].1["code"], "bad-request");
        }
        let out = published(&m.on_message(t0, "home/cam/ice/v1", br#"{"candidate":42}"#));
        assert_eq!(out[0].1["code"], "bad-request");
        let big = vec![b' '; 70 * 1024];
        let out = published(&m.on_message(t0, "home/cam/offer/v1", &big));
        assert!(
            out[0].1["message"]
                .as_str()
                .unwrap()
                .contains("over the limit")
        );
        // Invalid CIDs, other devices' topics and answers are ignored.
        assert!(m.on_message(t0, "home/cam/offer/bad+cid", OFFER).is_empty());
        assert!(m.on_message(t0, "other/cam/offer/v1", OFFER).is_empty());
        assert!(m.on_message(t0, "home/cam/answer/v1", OFFER).is_empty());
        assert_eq!(m.sessions(), 0);
    }

    #[test]
    fn a_failed_answer_is_reported_to_the_viewer() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let key = started(&m.on_message(t0, "home/cam/offer/v1", OFFER));
        let out = published(&m.on_peer_event(
            t0,
            &key,
            PeerEvent::Failed {
                code: ErrorCode::Unsupported,
                message: "no H.264".into(),
            },
        ));
        assert_eq!(
            out[0].1,
            serde_json::json!({"code":"unsupported","message":"no H.264"})
        );
        assert_eq!(m.sessions(), 0);
    }

    #[test]
    fn offers_per_cid_are_rate_limited() {
        let t0 = Instant::now();
        let mut m = machine(4);
        for i in 0..5 {
            let actions = m.on_message(t0 + Duration::from_millis(i), "home/cam/offer/v1", OFFER);
            started(&actions);
        }
        let out = published(&m.on_message(t0 + Duration::from_secs(1), "home/cam/offer/v1", OFFER));
        assert_eq!(out[0].0, "home/cam/error/v1");
        assert!(
            out[0].1["message"]
                .as_str()
                .unwrap()
                .contains("too many offers")
        );
        // Another CID is not affected, and the first recovers after the window.
        started(&m.on_message(t0 + Duration::from_secs(1), "home/cam/offer/v2", OFFER));
        started(&m.on_message(t0 + Duration::from_secs(11), "home/cam/offer/v1", OFFER));
    }

    #[test]
    fn sessions_that_do_not_connect_in_time_are_closed() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let slow = started(&m.on_message(t0, "home/cam/offer/slow", OFFER));
        let fast = started(&m.on_message(t0, "home/cam/offer/fast", OFFER));
        m.on_peer_event(t0, &fast, PeerEvent::Answered("v=0".into()));
        m.on_peer_event(t0, &fast, PeerEvent::Connected);
        assert!(m.on_tick(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(
            m.on_tick(t0 + Duration::from_secs(30)),
            vec![Action::Close { key: slow }]
        );
        assert_eq!(m.sessions(), 1);
        assert_eq!(m.viewers(), 1);
    }
}
