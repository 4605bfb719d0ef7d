//! The device's side of signaling as a state machine: which viewer sessions exist, what to reply
//! to each message, when to give up on a session. It does no I/O and reads no clock: messages,
//! session events and the current time go in, [`Action`]s come out, and the daemon carries them
//! out (publishing over MQTT, starting and feeding WebRTC sessions).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::debug;

use super::protocol::{
    ErrorCode, ErrorMsg, IceCandidateMsg, SessionDescriptionMsg, Status, TopicKind, Topics,
    parse_candidate, parse_offer,
};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_viewers: 4,
            peer_timeout: Duration::from_secs(30),
            orphan_ttl: Duration::from_secs(5),
            max_orphans: 64,
            max_message_bytes: 64 * 1024,
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

    /// The retained status message as it stands now.
    pub fn status_action(&mut self) -> Action {
        self.status.viewers = self.viewers() as u32;
        Action::Publish {
            topic: self.topics.status(),
            payload: self.status.to_json(),
            retain: true,
        }
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

    fn on_offer(&mut self, now: Instant, cid: String, payload: &[u8]) -> Vec<Action> {
        let sdp = match parse_offer(payload) {
            Ok(sdp) => sdp,
            Err(err) => return vec![self.error(&cid, ErrorCode::BadRequest, err.to_string())],
        };
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
