//! The device's side of signaling as a state machine: which viewer sessions exist, what to reply
//! to each message, when an offer renegotiates a session and when it replaces it, when to give
//! up on a session. It does no I/O and reads no clock: messages, session events and the current
//! time go in, [`Action`]s come out, and the daemon carries them out (publishing over MQTT,
//! starting, renegotiating and feeding WebRTC sessions, minting ICE-server grants, replying to
//! WHEP requests).
//!
//! Viewers over MQTT and over WHEP ([`super::whep`]) are sessions of the same kind here: one
//! place admits them (`max-viewers`, `max-connecting`, the session-start budget), counts them in
//! the status and reaps those that never connect. What differs is only how their replies travel:
//! MQTT messages, or the reply to a WHEP request.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tracing::debug;

use super::protocol::{
    AudioStatus, ErrorCode, ErrorMsg, IceCandidateMsg, IceServersMsg, MediaState, OfferIdentity,
    SessionDescriptionMsg, Status, TopicKind, Topics, WhipStatus, check_offer_sdp, offer_identity,
    parse_candidate, parse_ice_servers_request, parse_offer,
};
use super::whep::{self, PendingAnswer, SdpFrag, WhepError};
use crate::rate::TokenBucket;

/// The per-CID offer limit remembers at most this many offers (the most recent); beyond, the
/// oldest are forgotten. Each offer costs one entry, removed in arrival order: O(1) per offer.
const MAX_RATE_TRACKED: usize = 4096;
/// What one held candidate costs beyond its strings (bookkeeping, allocation).
const HELD_CANDIDATE_OVERHEAD: usize = 64;

/// A session that has not connected ends itself at the peer timeout and says why (the
/// `unreachable` error, with the candidate types it tried); one that has not done so this much
/// later is closed here, with the same code.
pub const REAP_GRACE: Duration = Duration::from_secs(2);

/// Names one session: the viewer's CID and a generation that grows with every session, so that
/// late events from a replaced session are recognised and ignored. A WHEP session's "CID" is its
/// name [`whep::session_name`] (`whep:` and its resource id), which no MQTT CID can be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub cid: String,
    pub generation: u64,
}

impl SessionKey {
    /// The WHEP resource id, for a WHEP session.
    pub fn whep_id(&self) -> Option<&str> {
        whep::resource_id(&self.cid)
    }
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
        /// An error reply: it may be dropped when the connection to the broker is busy, and
        /// never delays answers, candidates or the status.
        lossy: bool,
    },
    Start {
        key: SessionKey,
        offer_sdp: String,
    },
    /// A new offer for a session that exists: apply it to the session's peer connection
    /// (an ICE restart, or a changed set of tracks) and answer it (docs/PROTOCOL.md, "Replacing
    /// a session").
    Renegotiate {
        key: SessionKey,
        offer_sdp: String,
    },
    /// Publish the ICE servers granted to viewer `cid` on `topic` (credentials are minted when
    /// this is carried out).
    GrantIceServers {
        cid: String,
        topic: String,
    },
    /// A remote candidate for a session (`None`: end of candidates).
    Candidate {
        key: SessionKey,
        candidate: Option<IceCandidateMsg>,
    },
    Close {
        key: SessionKey,
    },
    /// Reply to a WHEP offer: the answer, with every candidate the device gathered.
    WhepAnswer {
        key: SessionKey,
        sdp: String,
    },
    /// A WHEP offer could not be answered; the session has ended.
    WhepFailed {
        key: SessionKey,
        code: ErrorCode,
        message: String,
    },
}

/// Why an offer takes no session (over MQTT: an error reply; over WHEP: 503).
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    /// `max_viewers` viewers are connected.
    Busy(String),
    /// The device-wide session-start budget is spent.
    Throttled { message: String, retry_in: Duration },
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Connected viewers at most. Sessions still connecting do not count: an offer on a new CID
    /// gets `busy` exactly when this many viewers are connected (what the status shows).
    pub max_viewers: usize,
    /// Sessions still connecting (answered or not, ICE and DTLS not done) at most. An offer
    /// beyond it closes the session that has been connecting the longest.
    pub max_connecting: usize,
    /// A session that has not connected by then is closed.
    pub peer_timeout: Duration,
    /// How long candidates that arrive before their offer are held.
    pub orphan_ttl: Duration,
    /// At most this many held candidates per CID (before its offer, and while it is answered),
    /// and this many CIDs with held candidates.
    pub max_orphans: usize,
    /// At most this many held candidates in all...
    pub max_held_candidates: usize,
    /// ...taking at most this many bytes.
    pub max_held_bytes: usize,
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// At most this many offers per CID within `offer_window`; more get an error.
    pub max_offers: usize,
    pub offer_window: Duration,
    /// Sessions started (offers taken, from all CIDs together): per second and burst. Each builds
    /// a peer connection; more get an error.
    pub session_starts: (f64, u32),
    /// Error replies about messages the device cannot use (not JSON, too large, not an offer,
    /// too many offers, bad candidates): per second and burst. Beyond, no reply.
    pub noise_replies: (f64, u32),
    /// Error replies about offers the device does not serve (`busy`, `unsupported`, failures
    /// while answering): per second and burst. Beyond, no reply.
    pub refusal_replies: (f64, u32),
    /// At most this many ICE-server requests per CID within `offer_window`.
    pub max_ice_server_requests: usize,
    /// ICE-server grants from all CIDs together: per second and burst.
    pub ice_server_grants: (f64, u32),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_viewers: 4,
            max_connecting: 8,
            peer_timeout: Duration::from_secs(30),
            orphan_ttl: Duration::from_secs(5),
            max_orphans: 64,
            max_held_candidates: 1024,
            max_held_bytes: 256 * 1024,
            max_message_bytes: 64 * 1024,
            max_offers: 5,
            offer_window: Duration::from_secs(10),
            session_starts: (10.0, 20),
            noise_replies: (10.0, 20),
            refusal_replies: (20.0, 40),
            max_ice_server_requests: 5,
            ice_server_grants: (10.0, 20),
        }
    }
}

/// Which budget an error reply comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// About a message the device cannot use.
    Noise,
    /// About an offer it does not serve.
    Refusal,
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
    /// Since when this CID has been connecting without a break (a re-offer keeps it), for
    /// choosing who gives way when too many sessions are connecting.
    connecting_since: Instant,
    /// Who made the offer the session answers, and its ICE generation; `None` when the offer
    /// had no `o=` line (it can then only be replaced).
    identity: Option<OfferIdentity>,
    /// A renegotiating offer is being applied: candidates wait for its answer, like before the
    /// first one.
    renegotiating: bool,
    local_pending: Vec<Option<IceCandidateMsg>>,
    remote_pending: Vec<Option<IceCandidateMsg>>,
    /// What a WHEP session has beyond an MQTT one; `None` for MQTT.
    whep: Option<Box<WhepSlot>>,
    /// Candidates of another ICE generation (ufrag) than the session's: those of an ICE restart
    /// whose offer has not arrived yet (MQTT does not order topics). Applied when that offer
    /// renegotiates the session, dropped after the early-candidate hold time.
    next_generation: Vec<(Instant, String, IceCandidateMsg)>,
}

/// A WHEP session's own state.
#[derive(Debug)]
struct WhepSlot {
    /// The viewer's ICE username fragment from its offer: a `PATCH` naming another one is an
    /// ICE restart.
    remote_ufrag: Option<String>,
    /// `PATCH` requests allowed.
    patches: TokenBucket,
    /// Remote candidates taken so far.
    candidates: usize,
    /// The answer, while it waits for the device's candidates (it must carry all of them).
    answer: Option<(Instant, PendingAnswer)>,
}

impl Slot {
    /// Whether a candidate belongs to another ICE generation than the session's current one.
    fn other_generation<'c>(&self, candidate: &'c IceCandidateMsg) -> Option<&'c str> {
        let ufrag = candidate.ufrag()?;
        let current = self.identity.as_ref()?;
        (ufrag != current.ufrag).then_some(ufrag)
    }
}

/// A per-CID limit on events within a time window (offers, ICE-server requests). Remembers at
/// most [`MAX_RATE_TRACKED`] events, forgotten oldest first: O(1) per event.
#[derive(Debug)]
struct PerCidWindow {
    log: VecDeque<(Instant, String)>,
    counts: HashMap<String, usize>,
}

impl PerCidWindow {
    fn new() -> Self {
        PerCidWindow {
            log: VecDeque::new(),
            counts: HashMap::new(),
        }
    }

    /// Count an event of `cid`; false (and not counted) when it already had `max` in `window`.
    fn allow(&mut self, now: Instant, cid: &str, max: usize, window: Duration) -> bool {
        self.forget_old(now, window);
        if self.counts.get(cid).copied().unwrap_or(0) >= max {
            return false;
        }
        if self.log.len() >= MAX_RATE_TRACKED {
            self.forget_oldest();
        }
        self.log.push_back((now, cid.to_string()));
        *self.counts.entry(cid.to_string()).or_default() += 1;
        true
    }

    fn forget_oldest(&mut self) {
        if let Some((_, cid)) = self.log.pop_front()
            && let Some(n) = self.counts.get_mut(&cid)
        {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&cid);
            }
        }
    }

    fn forget_old(&mut self, now: Instant, window: Duration) {
        while self
            .log
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= window)
        {
            self.forget_oldest();
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.log.len()
    }
}

/// Candidates held for CIDs that have no session yet.
#[derive(Debug, Default)]
struct Held {
    by_cid: HashMap<String, Vec<(Instant, Option<IceCandidateMsg>)>>,
    count: usize,
    bytes: usize,
    /// When the oldest held candidate expires: nothing to scan before then.
    next_expiry: Option<Instant>,
}

fn held_cost(candidate: &Option<IceCandidateMsg>) -> usize {
    HELD_CANDIDATE_OVERHEAD
        + candidate.as_ref().map_or(0, |c| {
            c.candidate.len() + c.sdp_mid.as_ref().map_or(0, String::len)
        })
}

impl Held {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        if self.next_expiry.is_none_or(|t| now < t) {
            return;
        }
        let (mut count, mut bytes, mut oldest) = (0, 0, None::<Instant>);
        self.by_cid.retain(|_, held| {
            held.retain(|(t, _)| now.saturating_duration_since(*t) <= ttl);
            for (t, c) in held.iter() {
                count += 1;
                bytes += held_cost(c);
                oldest = Some(oldest.map_or(*t, |o| o.min(*t)));
            }
            !held.is_empty()
        });
        (self.count, self.bytes) = (count, bytes);
        self.next_expiry = oldest.map(|t| t + ttl + Duration::from_millis(1));
    }

    fn take(&mut self, cid: &str) -> Vec<(Instant, Option<IceCandidateMsg>)> {
        let held = self.by_cid.remove(cid).unwrap_or_default();
        for (_, c) in &held {
            self.count -= 1;
            self.bytes -= held_cost(c);
        }
        held
    }
}

pub struct Signaling {
    topics: Topics,
    limits: Limits,
    status: Status,
    sessions: HashMap<String, Slot>,
    held: Held,
    /// Recent offers per CID (the rate limit).
    offers: PerCidWindow,
    /// Recent ICE-server requests per CID.
    ice_server_requests: PerCidWindow,
    session_starts: TokenBucket,
    ice_server_grants: TokenBucket,
    noise_replies: TokenBucket,
    refusal_replies: TokenBucket,
    /// Error replies left out by the two budgets.
    replies_suppressed: u64,
    next_generation: u64,
}

impl Signaling {
    /// `status` is the online status to publish; its viewer count is kept up to date here.
    pub fn new(topics: Topics, limits: Limits, status: Status) -> Self {
        Signaling {
            topics,
            session_starts: TokenBucket::new(limits.session_starts.0, limits.session_starts.1),
            ice_server_grants: TokenBucket::new(
                limits.ice_server_grants.0,
                limits.ice_server_grants.1,
            ),
            noise_replies: TokenBucket::new(limits.noise_replies.0, limits.noise_replies.1),
            refusal_replies: TokenBucket::new(limits.refusal_replies.0, limits.refusal_replies.1),
            limits,
            status,
            sessions: HashMap::new(),
            held: Held::default(),
            offers: PerCidWindow::new(),
            ice_server_requests: PerCidWindow::new(),
            replies_suppressed: 0,
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

    /// Sessions still connecting.
    pub fn connecting(&self) -> usize {
        self.sessions.len() - self.viewers()
    }

    /// Candidates held for CIDs without a session, and their bytes as counted for the limit.
    pub fn held_candidates(&self) -> (usize, usize) {
        (self.held.count, self.held.bytes)
    }

    /// Error replies left out because of the reply budgets, since start.
    pub fn replies_suppressed(&self) -> u64 {
        self.replies_suppressed
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
            lossy: false,
        }
    }

    /// The audio part of the status changed (audio lost, or back): the status to publish.
    pub fn set_audio(&mut self, audio: Option<AudioStatus>) -> Action {
        self.status.audio = audio;
        self.status_action()
    }

    /// The WHIP publication changed: the status to publish.
    pub fn set_whip(&mut self, whip: Option<WhipStatus>) -> Action {
        self.status.whip = whip;
        self.status_action()
    }

    /// Whether the budget of error replies of this kind allows one now (counted if so).
    fn reply_budget(&mut self, now: Instant, reply: Reply, cid: &str) -> bool {
        let budget = match reply {
            Reply::Noise => &mut self.noise_replies,
            Reply::Refusal => &mut self.refusal_replies,
        };
        if budget.try_take(now) {
            return true;
        }
        self.replies_suppressed += 1;
        if self.replies_suppressed.is_power_of_two() {
            debug!(
                cid,
                suppressed = self.replies_suppressed,
                "error reply left out (too many)"
            );
        }
        false
    }

    /// An error reply, if its budget allows one now.
    fn error(
        &mut self,
        now: Instant,
        reply: Reply,
        cid: &str,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Option<Action> {
        if !self.reply_budget(now, reply, cid) {
            return None;
        }
        Some(Action::Publish {
            topic: self.topics.error(cid),
            payload: ErrorMsg::new(code, message).to_json(),
            retain: false,
            lossy: true,
        })
    }

    fn ice(&self, cid: &str, candidate: &Option<IceCandidateMsg>) -> Action {
        let msg = candidate
            .clone()
            .unwrap_or_else(IceCandidateMsg::end_of_candidates);
        Action::Publish {
            topic: self.topics.ice(cid),
            payload: msg.to_json(),
            retain: false,
            lossy: false,
        }
    }

    fn busy_message(&self) -> String {
        format!(
            "the device already serves its maximum of {} viewers",
            self.limits.max_viewers
        )
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
        let cid = cid.to_string();
        if payload.len() > self.limits.max_message_bytes {
            let message = format!(
                "message of {} bytes is over the limit of {} bytes",
                payload.len(),
                self.limits.max_message_bytes
            );
            return self
                .error(now, Reply::Noise, &cid, ErrorCode::BadRequest, message)
                .into_iter()
                .collect();
        }
        match kind {
            TopicKind::Offer => self.on_offer(now, cid, payload),
            TopicKind::Ice => self.on_candidate(now, cid, payload),
            TopicKind::IceServers => self.on_ice_server_request(now, cid, payload),
            _ => {
                debug!(topic, "ignoring message the device does not act on");
                vec![]
            }
        }
    }

    /// Count an offer against its CID's budget; false when over it.
    fn offer_allowed(&mut self, now: Instant, cid: &str) -> bool {
        let (max, window) = (self.limits.max_offers, self.limits.offer_window);
        self.offers.allow(now, cid, max, window)
    }

    fn on_offer(&mut self, now: Instant, cid: String, payload: &[u8]) -> Vec<Action> {
        // Cheap checks first: an offer that cannot be answered never takes a session.
        let sdp = match parse_offer(payload).and_then(|sdp| check_offer_sdp(&sdp).map(|()| sdp)) {
            Ok(sdp) => sdp,
            Err(err) => {
                return self
                    .error(
                        now,
                        Reply::Noise,
                        &cid,
                        ErrorCode::BadRequest,
                        err.to_string(),
                    )
                    .into_iter()
                    .collect();
            }
        };
        // Only well-formed offers cost a session, so only they count against the limit.
        if !self.offer_allowed(now, &cid) {
            let (n, window) = (self.limits.max_offers, self.limits.offer_window.as_secs());
            let message = format!("too many offers: at most {n} per {window} s on one CID");
            return self
                .error(now, Reply::Noise, &cid, ErrorCode::BadRequest, message)
                .into_iter()
                .collect();
        }
        let identity = offer_identity(&sdp);
        if let Some(actions) = self.renegotiation(now, &cid, &identity, &sdp) {
            return actions;
        }
        match self.admit(now, cid.clone(), sdp, None) {
            Ok(actions) => actions,
            Err(refusal) => {
                let (code, message) = match refusal {
                    Refusal::Busy(message) => (ErrorCode::Busy, message),
                    Refusal::Throttled { message, .. } => (ErrorCode::BadRequest, message),
                };
                self.error(now, Reply::Refusal, &cid, code, message)
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Admission, for every offer that is well formed (MQTT and WHEP alike): a session for
    /// `cid`, unless `max_viewers` viewers are connected (a replacing offer is always taken) or
    /// the session-start budget is spent. Makes room among the connecting sessions.
    fn admit(
        &mut self,
        now: Instant,
        cid: String,
        sdp: String,
        whep: Option<Box<WhepSlot>>,
    ) -> Result<Vec<Action>, Refusal> {
        let identity = offer_identity(&sdp);
        let replaced = self
            .sessions
            .get(&cid)
            .map(|s| (s.generation, s.phase, s.connecting_since));
        // Connecting sessions hold no viewer's place: only connected viewers make the device busy.
        if replaced.is_none() && self.viewers() >= self.limits.max_viewers {
            return Err(Refusal::Busy(self.busy_message()));
        }
        // Every session taken builds a peer connection: a device-wide budget, so that offers on
        // ever new CIDs cannot keep it building and tearing them down.
        if !self.session_starts.try_take(now) {
            let retry_in = self.session_starts.wait(now);
            let message = format!(
                "too many offers: the device starts at most {} sessions per second; retry in {} ms",
                self.limits.session_starts.0,
                retry_in.as_millis().max(1)
            );
            return Err(Refusal::Throttled { message, retry_in });
        }
        let mut actions = Vec::new();
        let viewers_before = self.viewers();
        let mut connecting_since = now;
        if let Some((generation, phase, since)) = replaced {
            self.sessions.remove(&cid);
            if phase != Phase::Connected {
                connecting_since = since;
            }
            actions.push(Action::Close {
                key: SessionKey {
                    cid: cid.clone(),
                    generation,
                },
            });
        }
        // Room among the connecting sessions: the one connecting longest gives way.
        while self.connecting() >= self.limits.max_connecting.max(1) {
            let Some((oldest, generation)) = self
                .sessions
                .iter()
                .filter(|(_, s)| s.phase != Phase::Connected)
                .min_by_key(|(_, s)| s.connecting_since)
                .map(|(c, s)| (c.clone(), s.generation))
            else {
                break;
            };
            debug!(
                cid = oldest,
                "connecting too long while others wait: closed"
            );
            self.sessions.remove(&oldest);
            actions.push(Action::Close {
                key: SessionKey {
                    cid: oldest.clone(),
                    generation,
                },
            });
            // A WHEP viewer learns it from its connection closing (its request was answered).
            if whep::resource_id(&oldest).is_none() {
                let message = format!(
                    "{} sessions were connecting at once; this one, the oldest, gave way to a newer offer",
                    self.limits.max_connecting
                );
                actions.extend(self.error(now, Reply::Refusal, &oldest, ErrorCode::Busy, message));
            }
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let ttl = self.limits.orphan_ttl;
        let remote_pending = self
            .held
            .take(&cid)
            .into_iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= ttl)
            .map(|(_, c)| c)
            .collect();
        self.sessions.insert(
            cid.clone(),
            Slot {
                generation,
                phase: Phase::Answering,
                created: now,
                connecting_since,
                identity,
                renegotiating: false,
                local_pending: vec![],
                remote_pending,
                whep,
                next_generation: vec![],
            },
        );
        actions.push(Action::Start {
            key: SessionKey { cid, generation },
            offer_sdp: sdp,
        });
        if self.viewers() != viewers_before {
            actions.push(self.status_action());
        }
        Ok(actions)
    }

    /// An offer on a CID whose session already answered an offer from the same peer connection
    /// (same DTLS fingerprint, same `o=` session id) renegotiates that session: same peer
    /// connection, same DTLS keys, same place among the viewers. `None`: it is not one.
    fn renegotiation(
        &mut self,
        now: Instant,
        cid: &str,
        identity: &Option<OfferIdentity>,
        sdp: &str,
    ) -> Option<Vec<Action>> {
        let identity = identity.as_ref()?;
        let ttl = self.limits.orphan_ttl;
        let max_held = self.limits.max_orphans;
        let slot = self.sessions.get_mut(cid)?;
        let same = slot
            .identity
            .as_ref()
            .is_some_and(|current| current.same_peer(identity));
        // Still answering the previous offer, or another peer connection: a replacement.
        if slot.phase == Phase::Answering || slot.renegotiating || !same {
            return None;
        }
        debug!(
            cid,
            ice_restart = slot
                .identity
                .as_ref()
                .is_some_and(|c| c.ufrag != identity.ufrag),
            "offer renegotiates the session"
        );
        slot.identity = Some(identity.clone());
        slot.renegotiating = true;
        // Candidates of this offer's generation that came first wait for its answer too.
        let held = std::mem::take(&mut slot.next_generation);
        for (at, ufrag, candidate) in held {
            if ufrag == identity.ufrag
                && now.saturating_duration_since(at) <= ttl
                && slot.remote_pending.len() < max_held
            {
                slot.remote_pending.push(Some(candidate));
            }
        }
        Some(vec![Action::Renegotiate {
            key: SessionKey {
                cid: cid.to_string(),
                generation: slot.generation,
            },
            offer_sdp: sdp.to_string(),
        }])
    }

    /// A viewer asks for ICE servers (docs/PROTOCOL.md, "ICE servers"): granted within the
    /// per-CID and device-wide budgets, refused on the same topic otherwise.
    fn on_ice_server_request(&mut self, now: Instant, cid: String, payload: &[u8]) -> Vec<Action> {
        let topic = self.topics.ice_servers(&cid);
        let refuse = |this: &mut Self, reply: Reply, message: String| {
            this.reply_budget(now, reply, &cid)
                .then(|| Action::Publish {
                    topic: topic.clone(),
                    payload: IceServersMsg::refused(ErrorCode::BadRequest, message).to_json(),
                    retain: false,
                    lossy: true,
                })
                .into_iter()
                .collect()
        };
        if let Err(err) = parse_ice_servers_request(payload) {
            return refuse(self, Reply::Noise, err.to_string());
        }
        let (max, window) = (
            self.limits.max_ice_server_requests,
            self.limits.offer_window,
        );
        if !self.ice_server_requests.allow(now, &cid, max, window) {
            let message = format!(
                "too many ICE-server requests: at most {max} per {} s on one CID",
                window.as_secs()
            );
            return refuse(self, Reply::Noise, message);
        }
        if !self.ice_server_grants.try_take(now) {
            let wait = self.ice_server_grants.wait(now);
            let message = format!(
                "too many ICE-server requests: the device grants at most {} per second; retry in {} ms",
                self.limits.ice_server_grants.0,
                wait.as_millis().max(1)
            );
            return refuse(self, Reply::Refusal, message);
        }
        vec![Action::GrantIceServers { cid, topic }]
    }

    fn on_candidate(&mut self, now: Instant, cid: String, payload: &[u8]) -> Vec<Action> {
        let candidate = match parse_candidate(payload) {
            Ok(c) => c,
            Err(err) => {
                return self
                    .error(
                        now,
                        Reply::Noise,
                        &cid,
                        ErrorCode::BadRequest,
                        err.to_string(),
                    )
                    .into_iter()
                    .collect();
            }
        };
        let max_per_cid = self.limits.max_orphans;
        let ttl = self.limits.orphan_ttl;
        if let Some(slot) = self.sessions.get_mut(&cid) {
            if slot.phase == Phase::Answering || slot.renegotiating {
                if slot.remote_pending.len() < max_per_cid {
                    slot.remote_pending.push(candidate);
                } else {
                    debug!(cid, "dropping candidate: too many before the answer");
                }
                return vec![];
            }
            if let Some(c) = &candidate
                && let Some(ufrag) = slot.other_generation(c)
            {
                // Another ICE generation: held for a renegotiating offer that may follow.
                let ufrag = ufrag.to_string();
                slot.next_generation
                    .retain(|(t, _, _)| now.saturating_duration_since(*t) <= ttl);
                if slot.next_generation.len() < max_per_cid {
                    slot.next_generation.push((now, ufrag, c.clone()));
                } else {
                    debug!(
                        cid,
                        "dropping candidate of another ICE generation: too many"
                    );
                }
                return vec![];
            }
            let key = SessionKey {
                cid,
                generation: slot.generation,
            };
            return vec![Action::Candidate { key, candidate }];
        }
        // Before its offer: hold it for a while, within bounds.
        self.held.expire(now, self.limits.orphan_ttl);
        let cost = held_cost(&candidate);
        let held = &mut self.held;
        let full = held.count >= self.limits.max_held_candidates
            || held.bytes + cost > self.limits.max_held_bytes
            || (!held.by_cid.contains_key(&cid) && held.by_cid.len() >= self.limits.max_orphans)
            || held
                .by_cid
                .get(&cid)
                .is_some_and(|h| h.len() >= max_per_cid);
        if full {
            debug!(
                cid,
                "dropping early candidate: the device holds as many as it will"
            );
            return vec![];
        }
        held.by_cid.entry(cid).or_default().push((now, candidate));
        held.count += 1;
        held.bytes += cost;
        let expiry = now + self.limits.orphan_ttl + Duration::from_millis(1);
        held.next_expiry = Some(held.next_expiry.map_or(expiry, |t| t.min(expiry)));
        vec![]
    }

    /// A session reported something.
    pub fn on_peer_event(
        &mut self,
        now: Instant,
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
        let is_whep = whep::resource_id(cid).is_some();
        if is_whep
            && matches!(
                event,
                PeerEvent::Answered(_) | PeerEvent::Failed { .. } | PeerEvent::LocalCandidate(_)
            )
        {
            return self.on_whep_event(now, key, event);
        }
        match event {
            PeerEvent::Answered(sdp) => {
                let mut actions = vec![Action::Publish {
                    topic: self.topics.answer(cid),
                    payload: SessionDescriptionMsg::answer(sdp).to_json(),
                    retain: false,
                    lossy: false,
                }];
                let Some(slot) = self.sessions.get_mut(cid) else {
                    return vec![];
                };
                if slot.phase == Phase::Answering {
                    slot.phase = Phase::Answered;
                }
                slot.renegotiating = false;
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
                // A renegotiation that failed ends a session that may have been connected.
                let was_connected = self
                    .sessions
                    .remove(cid)
                    .is_some_and(|s| s.phase == Phase::Connected);
                let mut actions: Vec<Action> = self
                    .error(now, Reply::Refusal, cid, code, message)
                    .into_iter()
                    .collect();
                if was_connected {
                    actions.push(self.status_action());
                }
                actions
            }
            PeerEvent::LocalCandidate(candidate) => {
                let Some(slot) = self.sessions.get_mut(cid) else {
                    return vec![];
                };
                if slot.phase == Phase::Answering || slot.renegotiating {
                    slot.local_pending.push(candidate);
                    vec![]
                } else {
                    vec![self.ice(cid, &candidate)]
                }
            }
            PeerEvent::Connected => {
                let Some(slot) = self.sessions.get(cid) else {
                    return vec![];
                };
                if slot.phase == Phase::Connected {
                    return vec![];
                }
                if self.viewers() >= self.limits.max_viewers {
                    // Others connected first and took the last place.
                    self.sessions.remove(cid);
                    let message = self.busy_message();
                    let mut actions = vec![Action::Close { key: key.clone() }];
                    if !is_whep {
                        actions.extend(self.error(
                            now,
                            Reply::Refusal,
                            cid,
                            ErrorCode::Busy,
                            message,
                        ));
                    }
                    return actions;
                }
                if let Some(slot) = self.sessions.get_mut(cid) {
                    slot.phase = Phase::Connected;
                }
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

    /// Time passes: close sessions that did not connect in time (the peer timeout and
    /// [`REAP_GRACE`]), forget stale held candidates.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        self.held.expire(now, self.limits.orphan_ttl);
        let window = self.limits.offer_window;
        self.offers.forget_old(now, window);
        self.ice_server_requests.forget_old(now, window);
        let timeout = self.limits.peer_timeout + REAP_GRACE;
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
                let message = format!(
                    "no connection within the peer timeout ({} s)",
                    self.limits.peer_timeout.as_secs()
                );
                actions.extend(self.error(
                    now,
                    Reply::Refusal,
                    &cid,
                    ErrorCode::Unreachable,
                    message,
                ));
                actions.push(Action::Close {
                    key: SessionKey {
                        cid,
                        generation: slot.generation,
                    },
                });
            }
        }
        actions.extend(self.whep_answers_due(now));
        actions
    }
}

/// Viewers over WHEP (`crate::whep` serves the HTTP side, [`super::whep`] the format).
impl Signaling {
    /// A WHEP `POST`: a session named after resource `id` (fresh and random, chosen by the
    /// caller) for offer `sdp`, admitted like an MQTT offer. Its answer comes as
    /// [`Action::WhepAnswer`] (or [`Action::WhepFailed`]).
    pub fn whep_offer(
        &mut self,
        now: Instant,
        id: &str,
        sdp: String,
    ) -> Result<Vec<Action>, WhepError> {
        check_offer_sdp(&sdp).map_err(|e| WhepError::BadRequest(e.to_string()))?;
        let name = whep::session_name(id);
        if self.sessions.contains_key(&name) {
            return Err(WhepError::AnswerFailed {
                code: ErrorCode::Internal,
                message: "resource id already in use".into(),
            });
        }
        // Nothing to watch while the camera is being reopened; viewers already watching wait.
        if self.status.video.state == MediaState::Lost {
            return Err(WhepError::NoLiveVideo {
                retry_in: Duration::from_secs(1),
            });
        }
        let slot = WhepSlot {
            remote_ufrag: super::protocol::sdp_ufrag(&sdp).map(str::to_string),
            patches: TokenBucket::new(whep::PATCH_RATE.0, whep::PATCH_RATE.1),
            candidates: 0,
            answer: None,
        };
        self.admit(now, name, sdp, Some(Box::new(slot)))
            .map_err(|refusal| match refusal {
                Refusal::Busy(message) => WhepError::Busy(message),
                Refusal::Throttled { message, retry_in } => {
                    WhepError::Throttled { message, retry_in }
                }
            })
    }

    /// A trickle `PATCH` on WHEP session `id`: `if_match` is its `If-Match` header, `frag` its
    /// body. Candidates go to the session (held until it has answered).
    pub fn whep_patch(
        &mut self,
        now: Instant,
        id: &str,
        if_match: Option<&str>,
        frag: SdpFrag,
    ) -> Result<Vec<Action>, WhepError> {
        let name = whep::session_name(id);
        let slot = self.sessions.get_mut(&name).ok_or(WhepError::NotFound)?;
        let generation = slot.generation;
        let answering = slot.phase == Phase::Answering;
        let Some(state) = slot.whep.as_mut() else {
            return Err(WhepError::NotFound);
        };
        match if_match.map(str::trim) {
            Some("*") => return Err(WhepError::IceRestart),
            Some(tag) if tag != whep::etag(id) => return Err(WhepError::StaleEtag),
            _ => {}
        }
        if frag.ufrag.is_some() && frag.ufrag != state.remote_ufrag {
            return Err(WhepError::IceRestart);
        }
        if !state.patches.try_take(now) {
            let retry_in = state.patches.wait(now);
            return Err(WhepError::TooManyPatches { retry_in });
        }
        if state.candidates + frag.candidates.len() > whep::MAX_CANDIDATES {
            return Err(WhepError::BadRequest(format!(
                "a session takes at most {} candidates; this one has {} and the request brings {}",
                whep::MAX_CANDIDATES,
                state.candidates,
                frag.candidates.len()
            )));
        }
        state.candidates += frag.candidates.len();
        let candidates = frag
            .candidates
            .into_iter()
            .map(Some)
            .chain(frag.end_of_candidates.then_some(None));
        if answering {
            slot.remote_pending.extend(candidates);
            return Ok(vec![]);
        }
        let key = SessionKey {
            cid: name,
            generation,
        };
        Ok(candidates
            .map(|candidate| Action::Candidate {
                key: key.clone(),
                candidate,
            })
            .collect())
    }

    /// A `DELETE` of WHEP session `id` (or its viewer gone before the answer reached it): the
    /// session ends and its place is free.
    pub fn whep_delete(&mut self, id: &str) -> Result<Vec<Action>, WhepError> {
        let name = whep::session_name(id);
        if self.sessions.get(&name).is_none_or(|s| s.whep.is_none()) {
            return Err(WhepError::NotFound);
        }
        let viewers_before = self.viewers();
        let Some(slot) = self.sessions.remove(&name) else {
            return Err(WhepError::NotFound);
        };
        let mut actions = vec![Action::Close {
            key: SessionKey {
                cid: name,
                generation: slot.generation,
            },
        }];
        if self.viewers() != viewers_before {
            actions.push(self.status_action());
        }
        Ok(actions)
    }

    /// Answered, failed or gathered: what differs for a WHEP session (its reply is the answer
    /// to its request, which must carry every candidate of the device).
    fn on_whep_event(&mut self, now: Instant, key: &SessionKey, event: PeerEvent) -> Vec<Action> {
        let name = key.cid.as_str();
        if let PeerEvent::Failed { code, message } = event {
            self.sessions.remove(name);
            return vec![Action::WhepFailed {
                key: key.clone(),
                code,
                message,
            }];
        }
        let Some(slot) = self.sessions.get_mut(name) else {
            return vec![];
        };
        let mut actions = Vec::new();
        let mut complete = false;
        match event {
            PeerEvent::Answered(sdp) => {
                slot.phase = Phase::Answered;
                let mut answer = PendingAnswer::new(sdp);
                for local in std::mem::take(&mut slot.local_pending) {
                    match local {
                        Some(candidate) => answer.add(candidate),
                        None => complete = true,
                    }
                }
                if let Some(state) = slot.whep.as_mut() {
                    state.answer = Some((now, answer));
                }
                actions.extend(std::mem::take(&mut slot.remote_pending).into_iter().map(
                    |candidate| Action::Candidate {
                        key: key.clone(),
                        candidate,
                    },
                ));
            }
            PeerEvent::LocalCandidate(candidate) => {
                if slot.phase == Phase::Answering {
                    slot.local_pending.push(candidate);
                } else if let Some((_, answer)) = slot.whep.as_mut().and_then(|s| s.answer.as_mut())
                {
                    match candidate {
                        Some(candidate) => answer.add(candidate),
                        None => complete = true,
                    }
                }
            }
            _ => {}
        }
        if complete && let Some((_, answer)) = slot.whep.as_mut().and_then(|s| s.answer.take()) {
            actions.insert(
                0,
                Action::WhepAnswer {
                    key: key.clone(),
                    sdp: answer.finish(true),
                },
            );
        }
        actions
    }

    /// Answers that waited [`whep::GATHER_WAIT`] for candidates go with those they have.
    fn whep_answers_due(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (name, slot) in &mut self.sessions {
            let Some(state) = slot.whep.as_mut() else {
                continue;
            };
            if state.answer.as_ref().is_some_and(|(since, _)| {
                now.saturating_duration_since(*since) >= whep::GATHER_WAIT
            }) && let Some((_, answer)) = state.answer.take()
            {
                debug!(
                    session = name,
                    "answering before the device's gathering completed"
                );
                actions.push(Action::WhepAnswer {
                    key: SessionKey {
                        cid: name.clone(),
                        generation: slot.generation,
                    },
                    sdp: answer.finish(false),
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

    const OFFER: &[u8] = br#"{"type":"offer","sdp":"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\na=fingerprint:sha-256 00\r\n"}"#;

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
                // Most tests start sessions faster than a device would; one test checks this.
                session_starts: (1e6, 1_000_000),
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
            username_fragment: None,
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
    fn candidates_held_while_answering_are_bounded() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let key = started(&m.on_message(t0, "home/cam/offer/v1", OFFER));
        for n in 0..1000 {
            m.on_message(t0, "home/cam/ice/v1", &candidate(n));
        }
        let actions = m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()));
        let delivered = actions
            .iter()
            .filter(|a| matches!(a, Action::Candidate { .. }))
            .count();
        assert_eq!(delivered, Limits::default().max_orphans);
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
        m.on_peer_event(t0, &first, PeerEvent::Answered("v=0".into()));
        m.on_peer_event(t0, &first, PeerEvent::Connected);
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
            br#"{"type":"offer","sdp":"x"}"#,
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
        // The session ends itself at the peer timeout; this is the backstop.
        assert!(m.on_tick(t0 + Duration::from_secs(30)).is_empty());
        let actions = m.on_tick(t0 + Duration::from_secs(30) + REAP_GRACE);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert_eq!(actions[1], Action::Close { key: slow });
        let Action::Publish { topic, payload, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(topic, "home/cam/error/slow");
        let error = crate::signaling::protocol::parse_error(payload).unwrap();
        assert_eq!(error.code, ErrorCode::Unreachable);
        assert_eq!(m.sessions(), 1);
        assert_eq!(m.viewers(), 1);
    }

    fn connect(m: &mut Signaling, now: Instant, cid: &str) -> SessionKey {
        let key = started(&m.on_message(now, &format!("home/cam/offer/{cid}"), OFFER));
        m.on_peer_event(now, &key, PeerEvent::Answered("v=0".into()));
        m.on_peer_event(now, &key, PeerEvent::Connected);
        key
    }

    fn status_of(m: &mut Signaling) -> serde_json::Value {
        published(&[m.status_action()])[0].1.clone()
    }

    /// What a client reads in the status (viewers < max_viewers) is what the next offer on a
    /// new CID gets: a session, or `busy`.
    fn status_promises_a_session(m: &mut Signaling) -> bool {
        let status = status_of(m);
        status["viewers"].as_u64() < status["max_viewers"].as_u64()
    }

    #[test]
    fn connecting_sessions_hold_no_place_and_the_status_agrees_with_busy() {
        let t0 = Instant::now();
        let mut m = machine(2);
        // Four offers that never connect.
        for cid in ["g1", "g2", "g3", "g4"] {
            started(&m.on_message(t0, &format!("home/cam/offer/{cid}"), OFFER));
        }
        assert!(status_promises_a_session(&mut m));
        connect(&mut m, t0, "v1");
        assert!(status_promises_a_session(&mut m));
        connect(&mut m, t0, "v2");
        assert_eq!(status_of(&mut m)["viewers"], 2);
        assert!(!status_promises_a_session(&mut m));
        let out = published(&m.on_message(t0, "home/cam/offer/v3", OFFER));
        assert_eq!(out[0].1["code"], "busy");
        // A viewer leaves: the status says so, and the next offer is taken.
        let v1 = SessionKey {
            cid: "v2".into(),
            generation: 6,
        };
        m.on_peer_event(t0, &v1, PeerEvent::Closed);
        assert!(status_promises_a_session(&mut m));
        started(&m.on_message(t0, "home/cam/offer/v3", OFFER));
    }

    #[test]
    fn four_cids_that_reoffer_every_29_s_never_keep_a_viewer_out() {
        let t0 = Instant::now();
        let mut m = machine(4);
        // Five minutes of four ghosts re-offering every 29 s (under the 30 s peer timeout),
        // and a viewer arriving every 7 s, who is let in at once and connects.
        let mut admitted = 0;
        for second in 0..300u64 {
            let now = t0 + Duration::from_secs(second);
            m.on_tick(now);
            if second % 29 == 0 {
                for g in 1..=4 {
                    started(&m.on_message(now, &format!("home/cam/offer/ghost{g}"), OFFER));
                }
            }
            if second % 7 == 3 {
                let key = connect(&mut m, now, &format!("viewer{second}"));
                admitted += 1;
                m.on_peer_event(now, &key, PeerEvent::Closed);
            }
        }
        assert_eq!(admitted, 43);
        assert_eq!(m.viewers(), 0);
    }

    #[test]
    fn too_many_connecting_the_longest_connecting_gives_way() {
        let t0 = Instant::now();
        let mut m = machine(4);
        m.limits.max_connecting = 2;
        let a = started(&m.on_message(t0, "home/cam/offer/a", OFFER));
        let b = started(&m.on_message(t0 + Duration::from_secs(1), "home/cam/offer/b", OFFER));
        // `a` re-offers: its new session keeps a's place in the queue (connecting since t0).
        let actions = m.on_message(t0 + Duration::from_secs(2), "home/cam/offer/a", OFFER);
        assert!(actions.contains(&Action::Close { key: a.clone() }));
        let a2 = started(&actions);
        let actions = m.on_message(t0 + Duration::from_secs(3), "home/cam/offer/c", OFFER);
        assert!(actions.contains(&Action::Close { key: a2 }), "{actions:?}");
        let out = published(&actions);
        assert_eq!(out[0].0, "home/cam/error/a");
        assert_eq!(out[0].1["code"], "busy");
        started(&actions);
        assert_eq!(m.connecting(), 2);
        // Connected viewers never give way.
        m.on_peer_event(t0, &b, PeerEvent::Answered("v=0".into()));
        m.on_peer_event(t0, &b, PeerEvent::Connected);
        for cid in ["d", "e", "f"] {
            started(&m.on_message(
                t0 + Duration::from_secs(4),
                &format!("home/cam/offer/{cid}"),
                OFFER,
            ));
        }
        assert_eq!((m.viewers(), m.connecting()), (1, 2));
    }

    #[test]
    fn a_session_that_connects_after_the_last_place_went_gets_busy() {
        let t0 = Instant::now();
        let mut m = machine(1);
        let slow = started(&m.on_message(t0, "home/cam/offer/slow", OFFER));
        m.on_peer_event(t0, &slow, PeerEvent::Answered("v=0".into()));
        connect(&mut m, t0, "fast");
        let actions = m.on_peer_event(t0, &slow, PeerEvent::Connected);
        assert!(actions.contains(&Action::Close { key: slow }));
        let out = published(&actions);
        assert_eq!(out[0].0, "home/cam/error/slow");
        assert_eq!(out[0].1["code"], "busy");
        assert_eq!((m.viewers(), m.sessions()), (1, 1));
    }

    #[test]
    fn fifty_thousand_minimal_offers_take_no_session_and_a_viewer_is_answered_at_once() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let began = Instant::now();
        for i in 0..50_000u32 {
            let actions = m.on_message(
                t0,
                &format!("home/cam/offer/x{i}"),
                br#"{"type":"offer","sdp":"x"}"#,
            );
            assert!(!actions.iter().any(|a| matches!(a, Action::Start { .. })));
        }
        // Well-formed ones on distinct CIDs: each takes a connecting place, the oldest gives way.
        for i in 0..50_000u32 {
            m.on_message(t0, &format!("home/cam/offer/y{i}"), OFFER);
        }
        let spent = began.elapsed();
        eprintln!(
            "100,000 offers on distinct CIDs handled in {} ms ({:.1} µs each)",
            spent.as_millis(),
            spent.as_secs_f64() * 1e6 / 100_000.0
        );
        assert!(m.offers.tracked() <= MAX_RATE_TRACKED);
        assert_eq!(m.sessions(), Limits::default().max_connecting);
        connect(&mut m, t0, "viewer");
        assert_eq!(m.viewers(), 1);
    }

    #[test]
    fn error_replies_are_rate_limited_answers_and_status_are_not() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let mut errors = 0;
        for i in 0..1000u32 {
            let out = m.on_message(t0, &format!("home/cam/offer/bad{i}"), b"nope");
            errors += out.len();
            assert!(
                out.iter()
                    .all(|a| matches!(a, Action::Publish { lossy: true, .. }))
            );
        }
        assert_eq!(errors, 20, "the noise budget's burst");
        assert_eq!(m.replies_suppressed(), 980);
        // A second later, ten more are allowed.
        let later = t0 + Duration::from_secs(1);
        let n: usize = (0..100)
            .map(|_| m.on_message(later, "home/cam/offer/bad", b"nope").len())
            .sum();
        assert_eq!(n, 10);
        // Refusals have their own budget: a busy reply still goes out.
        let mut m1 = machine(1);
        for i in 0..1000u32 {
            m1.on_message(t0, &format!("home/cam/offer/bad{i}"), b"nope");
        }
        connect(&mut m1, t0, "v1");
        let out = published(&m1.on_message(t0, "home/cam/offer/v2", OFFER));
        assert_eq!(out[0].1["code"], "busy");
        // Answers, candidates and the status are never lossy.
        let key = started(&m.on_message(later, "home/cam/offer/v1", OFFER));
        let actions = m.on_peer_event(later, &key, PeerEvent::Answered("v=0".into()));
        assert!(matches!(&actions[0], Action::Publish { lossy: false, .. }));
        assert!(matches!(
            m.status_action(),
            Action::Publish { lossy: false, .. }
        ));
    }

    #[test]
    fn held_candidates_are_bounded_in_count_bytes_and_length() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let long = |n: u32| {
            format!(
                r#"{{"candidate":"candidate:{n} 1 udp 1 127.0.0.1 {n} typ host {}","sdpMid":"0"}}"#,
                "x".repeat(400)
            )
            .into_bytes()
        };
        for cid in 0..64u32 {
            for n in 0..64u32 {
                m.on_message(t0, &format!("home/cam/ice/c{cid}"), &long(n));
            }
        }
        let (count, bytes) = m.held_candidates();
        eprintln!(
            "held after 64 CIDs x 64 candidates of ~450 bytes: {count} candidates, {bytes} bytes"
        );
        assert!(count <= 1024 && bytes <= 256 * 1024, "{count} {bytes}");
        // A candidate over the length limit is refused with an error, not held.
        let huge = format!(r#"{{"candidate":"candidate:{}"}}"#, "1".repeat(60_000));
        let out = published(&m.on_message(
            t0 + Duration::from_secs(6),
            "home/cam/ice/new",
            huge.as_bytes(),
        ));
        assert_eq!(out[0].1["code"], "bad-request");
        // After the hold time everything is let go, and holding works again.
        m.on_tick(t0 + Duration::from_secs(6));
        assert_eq!(m.held_candidates(), (0, 0));
        m.on_message(
            t0 + Duration::from_secs(6),
            "home/cam/ice/new",
            &candidate(1),
        );
        assert_eq!(m.held_candidates().0, 1);
        // Before the answer, a session holds at most 64 too.
        let key = started(&m.on_message(t0 + Duration::from_secs(6), "home/cam/offer/v", OFFER));
        for n in 0..500 {
            m.on_message(t0 + Duration::from_secs(6), "home/cam/ice/v", &candidate(n));
        }
        let delivered = m
            .on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()))
            .iter()
            .filter(|a| matches!(a, Action::Candidate { .. }))
            .count();
        assert_eq!(delivered, 64);
    }

    const WHEP_SDP: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=ice-ufrag:wu\r\na=ice-pwd:p\r\na=fingerprint:sha-256 00\r\n";

    fn whep_started(m: &mut Signaling, now: Instant, id: &str) -> SessionKey {
        started(&m.whep_offer(now, id, WHEP_SDP.into()).expect("admitted"))
    }

    fn whep_answer(actions: &[Action]) -> Option<String> {
        actions.iter().find_map(|a| match a {
            Action::WhepAnswer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
    }

    fn local(n: u32) -> Option<IceCandidateMsg> {
        Some(IceCandidateMsg {
            candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        })
    }

    #[test]
    fn whep_and_mqtt_viewers_share_max_viewers_and_the_status() {
        let t0 = Instant::now();
        let mut m = machine(2);
        connect(&mut m, t0, "v1");
        let key = whep_started(&mut m, t0, "aa");
        assert_eq!(key.whep_id(), Some("aa"));
        m.on_peer_event(
            t0,
            &key,
            PeerEvent::Answered("v=0\r\nm=video 9 X 102\r\na=mid:0\r\n".into()),
        );
        let actions = m.on_peer_event(t0, &key, PeerEvent::Connected);
        assert_eq!(published(&actions)[0].1["viewers"], 2);
        // Full: a WHEP offer and an MQTT offer are refused alike, and nothing changes.
        assert!(matches!(
            m.whep_offer(t0, "bb", WHEP_SDP.into()),
            Err(WhepError::Busy(_))
        ));
        assert_eq!(
            published(&m.on_message(t0, "home/cam/offer/v3", OFFER))[0].1["code"],
            "busy"
        );
        assert_eq!((m.viewers(), m.sessions()), (2, 2));
        // DELETE frees the place, and the status says so.
        let actions = m.whep_delete("aa").unwrap();
        assert!(actions.contains(&Action::Close { key }));
        assert_eq!(published(&actions)[0].1["viewers"], 1);
        assert!(matches!(m.whep_delete("aa"), Err(WhepError::NotFound)));
        started(&m.on_message(t0, "home/cam/offer/v3", OFFER));
    }

    #[test]
    fn a_whep_answer_waits_for_the_devices_candidates_within_a_bound() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\n";
        // Gathering done before the answer: it goes at once, with both candidates.
        let a = whep_started(&mut m, t0, "aa");
        m.on_peer_event(t0, &a, PeerEvent::LocalCandidate(local(1)));
        m.on_peer_event(t0, &a, PeerEvent::LocalCandidate(None));
        let sdp =
            whep_answer(&m.on_peer_event(t0, &a, PeerEvent::Answered(answer.into()))).unwrap();
        assert!(sdp.contains("a=candidate:1 ") && sdp.contains("a=end-of-candidates"));
        // Candidates after the answer: it waits for the end of them...
        let b = whep_started(&mut m, t0, "bb");
        assert!(
            whep_answer(&m.on_peer_event(t0, &b, PeerEvent::Answered(answer.into()))).is_none()
        );
        assert!(
            whep_answer(&m.on_peer_event(t0, &b, PeerEvent::LocalCandidate(local(2)))).is_none()
        );
        let sdp = whep_answer(&m.on_peer_event(t0, &b, PeerEvent::LocalCandidate(None))).unwrap();
        assert!(sdp.contains("a=candidate:2 "));
        // ...or for GATHER_WAIT, then goes without an end-of-candidates. Nothing goes over MQTT.
        let c = whep_started(&mut m, t0, "cc");
        let actions = m.on_peer_event(t0, &c, PeerEvent::Answered(answer.into()));
        assert!(published(&actions).is_empty());
        assert!(whep_answer(&m.on_tick(t0 + Duration::from_secs(1))).is_none());
        let sdp = whep_answer(&m.on_tick(t0 + whep::GATHER_WAIT)).unwrap();
        assert!(!sdp.contains("a=end-of-candidates"));
        assert!(whep_answer(&m.on_tick(t0 + Duration::from_secs(5))).is_none());
    }

    #[test]
    fn whep_patches_are_checked_and_bounded() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let key = whep_started(&mut m, t0, "aa");
        let frag = |ufrag: Option<&str>, n: u32| SdpFrag {
            ufrag: ufrag.map(str::to_string),
            pwd: None,
            candidates: (0..n).filter_map(local).collect(),
            end_of_candidates: false,
        };
        // Before the answer, candidates are held; after it, handed to the session.
        assert!(
            m.whep_patch(t0, "aa", None, frag(Some("wu"), 2))
                .unwrap()
                .is_empty()
        );
        let actions = m.on_peer_event(t0, &key, PeerEvent::Answered("v=0\r\n".into()));
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::Candidate { .. }))
                .count(),
            2
        );
        let tag = whep::etag("aa");
        assert_eq!(
            m.whep_patch(t0, "aa", Some(&tag), frag(None, 1))
                .unwrap()
                .len(),
            1
        );
        // ICE restarts, stale tags, unknown sessions: refused, nothing changes.
        assert_eq!(
            m.whep_patch(t0, "aa", Some("*"), frag(None, 1)),
            Err(WhepError::IceRestart)
        );
        assert_eq!(
            m.whep_patch(t0, "aa", None, frag(Some("new"), 1)),
            Err(WhepError::IceRestart)
        );
        assert_eq!(
            m.whep_patch(t0, "aa", Some("\"x\""), frag(None, 1)),
            Err(WhepError::StaleEtag)
        );
        assert_eq!(
            m.whep_patch(t0, "zz", None, frag(None, 1)),
            Err(WhepError::NotFound)
        );
        // At most 64 candidates per session.
        for _ in 0..6 {
            m.whep_patch(t0 + Duration::from_secs(10), "aa", None, frag(None, 10))
                .unwrap();
        }
        let err = m.whep_patch(t0 + Duration::from_secs(20), "aa", None, frag(None, 10));
        assert!(
            matches!(err, Err(WhepError::BadRequest(ref e)) if e.contains("at most 64")),
            "{err:?}"
        );
        // PATCH rate: the burst, then refusals with a time to wait.
        let t1 = t0 + Duration::from_secs(30);
        let mut m = machine(4);
        whep_started(&mut m, t1, "bb");
        let allowed = (0..30)
            .filter(|_| m.whep_patch(t1, "bb", None, frag(None, 0)).is_ok())
            .count();
        assert_eq!(allowed, whep::PATCH_RATE.1 as usize);
        assert!(matches!(
            m.whep_patch(t1, "bb", None, frag(None, 0)),
            Err(WhepError::TooManyPatches { retry_in }) if retry_in > Duration::ZERO
        ));
        // A MQTT CID's session is not a WHEP session.
        connect(&mut m, t1, "v1");
        assert_eq!(m.whep_delete("v1"), Err(WhepError::NotFound));
    }

    #[test]
    fn whep_offers_are_refused_for_bad_sdp_a_lost_camera_and_the_start_budget() {
        let t0 = Instant::now();
        let mut m = machine(4);
        assert!(matches!(
            m.whep_offer(t0, "aa", "hello".into()),
            Err(WhepError::BadRequest(_))
        ));
        m.set_video_state(MediaState::Lost);
        assert!(matches!(
            m.whep_offer(t0, "aa", WHEP_SDP.into()),
            Err(WhepError::NoLiveVideo { .. })
        ));
        m.set_video_state(MediaState::Idle);
        m.session_starts = TokenBucket::new(10.0, 1);
        whep_started(&mut m, t0, "aa");
        assert!(matches!(
            m.whep_offer(t0, "bb", WHEP_SDP.into()),
            Err(WhepError::Throttled { .. })
        ));
        assert_eq!(m.sessions(), 1);
        // A failed answer ends the session and goes back to the request, not over MQTT.
        let mut m = machine(4);
        let key = whep_started(&mut m, t0, "cc");
        let actions = m.on_peer_event(
            t0,
            &key,
            PeerEvent::Failed {
                code: ErrorCode::Unsupported,
                message: "no H.264".into(),
            },
        );
        assert!(matches!(
            &actions[..],
            [Action::WhepFailed {
                code: ErrorCode::Unsupported,
                ..
            }]
        ));
        assert_eq!(m.sessions(), 0);
    }

    #[test]
    fn a_whep_session_gives_way_among_connecting_ones_without_an_mqtt_error() {
        let t0 = Instant::now();
        let mut m = machine(4);
        m.limits.max_connecting = 1;
        let key = whep_started(&mut m, t0, "aa");
        let actions = m.on_message(t0 + Duration::from_secs(1), "home/cam/offer/v1", OFFER);
        assert!(actions.contains(&Action::Close { key }));
        assert!(published(&actions).is_empty(), "{actions:?}");
        started(&actions);
    }

    #[test]
    fn session_starts_are_limited_device_wide() {
        let t0 = Instant::now();
        let mut m = machine(4);
        m.limits.session_starts = Limits::default().session_starts;
        m.session_starts = TokenBucket::new(10.0, 20);
        let mut started_now = 0;
        for i in 0..40 {
            let actions = m.on_message(t0, &format!("home/cam/offer/c{i}"), OFFER);
            if actions.iter().any(|a| matches!(a, Action::Start { .. })) {
                started_now += 1;
            } else {
                let out = published(&actions);
                assert_eq!(out[0].1["code"], "bad-request");
                let message = out[0].1["message"].as_str().unwrap();
                assert!(
                    message.contains("at most 10 sessions per second"),
                    "{message}"
                );
            }
        }
        assert_eq!(started_now, 20);
        let later = t0 + Duration::from_secs(1);
        let more = (40..80)
            .filter(|i| {
                m.on_message(later, &format!("home/cam/offer/c{i}"), OFFER)
                    .iter()
                    .any(|a| matches!(a, Action::Start { .. }))
            })
            .count();
        assert_eq!(more, 10);
    }

    /// An offer as a peer connection makes it: `o=` session id, DTLS fingerprint, ICE ufrag.
    fn offer_from(session_id: &str, fingerprint: &str, ufrag: &str) -> Vec<u8> {
        let sdp = format!(
            "v=0\r\no=- {session_id} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             a=fingerprint:sha-256 {fingerprint}\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
             a=ice-ufrag:{ufrag}\r\na=ice-pwd:pppppppppppppppppppppp\r\n"
        );
        SessionDescriptionMsg::offer(sdp).to_json()
    }

    fn candidate_of(n: u32, ufrag: &str) -> Vec<u8> {
        format!(
            r#"{{"candidate":"candidate:{n} 1 udp 1 10.0.0.{n} 5000 typ host generation 0 ufrag {ufrag}","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"{ufrag}"}}"#
        )
        .into_bytes()
    }

    fn delivered(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Candidate {
                    candidate: Some(c), ..
                } => Some(c.candidate.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_offer_from_the_same_peer_connection_renegotiates_the_session_in_place() {
        let t0 = Instant::now();
        let mut m = machine(1);
        let key = started(&m.on_message(t0, "home/cam/offer/v1", &offer_from("42", "AA:BB", "u1")));
        m.on_peer_event(t0, &key, PeerEvent::Answered("v=0 first".into()));
        m.on_peer_event(t0, &key, PeerEvent::Connected);
        assert_eq!(m.viewers(), 1);
        // restartIce(): same session id and key, new ufrag. The session keeps its key, its place
        // (even though max_viewers is reached) and is not closed.
        let t1 = t0 + Duration::from_secs(60);
        let actions = m.on_message(t1, "home/cam/offer/v1", &offer_from("42", "aa:bb", "u2"));
        assert_eq!(actions.len(), 1, "{actions:?}");
        let Action::Renegotiate {
            key: again,
            offer_sdp,
        } = &actions[0]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(again, &key);
        assert!(offer_sdp.contains("a=ice-ufrag:u2"));
        assert_eq!((m.viewers(), m.sessions()), (1, 1));
        // While it is being answered, candidates (of the new generation, or without a ufrag)
        // wait for the answer, which is published before them.
        assert!(
            m.on_message(t1, "home/cam/ice/v1", &candidate_of(1, "u2"))
                .is_empty()
        );
        assert!(
            m.on_message(t1, "home/cam/ice/v1", &candidate(7))
                .is_empty()
        );
        let actions = m.on_peer_event(t1, &key, PeerEvent::Answered("v=0 second".into()));
        let out = published(&actions);
        assert_eq!(out[0].0, "home/cam/answer/v1");
        assert_eq!(out[0].1["sdp"], "v=0 second");
        assert_eq!(delivered(&actions).len(), 2);
        // Still the one connected viewer: no status change, no busy.
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Publish { topic, .. } if topic.ends_with("/status")))
        );
        assert_eq!(m.viewers(), 1);
        let later = m.on_message(t1, "home/cam/ice/v1", &candidate_of(2, "u2"));
        assert_eq!(delivered(&later).len(), 1);
    }

    #[test]
    fn an_offer_from_another_peer_connection_or_before_the_answer_replaces_the_session() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let first = started(&m.on_message(t0, "home/cam/offer/v1", &offer_from("42", "AA", "u1")));
        // Before the device answered: a replacement, whoever sent it.
        let actions = m.on_message(t0, "home/cam/offer/v1", &offer_from("42", "AA", "u1"));
        assert!(actions.contains(&Action::Close { key: first.clone() }));
        let second = started(&actions);
        m.on_peer_event(t0, &second, PeerEvent::Answered("v=0".into()));
        m.on_peer_event(t0, &second, PeerEvent::Connected);
        // Another DTLS key (a new peer connection), or another session id: a replacement.
        for offer in [offer_from("42", "CC", "u3"), offer_from("43", "AA", "u3")] {
            let current = SessionKey {
                cid: "v1".into(),
                generation: m.sessions["v1"].generation,
            };
            m.on_peer_event(t0, &current, PeerEvent::Answered("v=0".into()));
            let actions = m.on_message(t0, "home/cam/offer/v1", &offer);
            assert!(
                actions.contains(&Action::Close { key: current }),
                "{actions:?}"
            );
            started(&actions);
        }
        // An offer without an o= line cannot renegotiate.
        let current = SessionKey {
            cid: "v1".into(),
            generation: m.sessions["v1"].generation,
        };
        m.on_peer_event(t0, &current, PeerEvent::Answered("v=0".into()));
        started(&m.on_message(t0 + Duration::from_secs(20), "home/cam/offer/v1", OFFER));
    }

    #[test]
    fn candidates_of_an_ice_restart_that_come_before_its_offer_are_kept_for_it() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let key = started(&m.on_message(t0, "home/cam/offer/v1", &offer_from("42", "AA", "u1")));
        m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()));
        m.on_peer_event(t0, &key, PeerEvent::Connected);
        // Current generation: straight through.
        assert_eq!(
            delivered(&m.on_message(t0, "home/cam/ice/v1", &candidate_of(1, "u1"))).len(),
            1
        );
        // The restart's candidates overtake its offer: held, not handed to the old generation.
        assert!(
            m.on_message(t0, "home/cam/ice/v1", &candidate_of(2, "u2"))
                .is_empty()
        );
        assert!(
            m.on_message(t0, "home/cam/ice/v1", &candidate_of(3, "u2"))
                .is_empty()
        );
        // A stale generation's candidate is held too, and never applied.
        assert!(
            m.on_message(t0, "home/cam/ice/v1", &candidate_of(4, "u0"))
                .is_empty()
        );
        let actions = m.on_message(t0, "home/cam/offer/v1", &offer_from("42", "AA", "u2"));
        assert!(matches!(actions[0], Action::Renegotiate { .. }));
        let after = m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()));
        let got = delivered(&after);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|c| c.ends_with("ufrag u2")));
        // Held ones expire with the early-candidate hold time, and are bounded.
        for n in 0..200 {
            m.on_message(t0, "home/cam/ice/v1", &candidate_of(n, "u9"));
        }
        assert!(m.sessions["v1"].next_generation.len() <= Limits::default().max_orphans);
        let late = t0 + Duration::from_secs(6);
        m.on_message(late, "home/cam/ice/v1", &candidate_of(1, "u8"));
        assert_eq!(m.sessions["v1"].next_generation.len(), 1);
        let actions = m.on_message(late, "home/cam/offer/v1", &offer_from("42", "AA", "u9"));
        assert!(matches!(actions[0], Action::Renegotiate { .. }));
        assert!(
            delivered(&m.on_peer_event(late, &key, PeerEvent::Answered("v=0".into()))).is_empty()
        );
    }

    #[test]
    fn a_renegotiation_that_fails_ends_the_session_and_frees_its_place() {
        let t0 = Instant::now();
        let mut m = machine(1);
        let key = started(&m.on_message(t0, "home/cam/offer/v1", &offer_from("42", "AA", "u1")));
        m.on_peer_event(t0, &key, PeerEvent::Answered("v=0".into()));
        m.on_peer_event(t0, &key, PeerEvent::Connected);
        m.on_message(t0, "home/cam/offer/v1", &offer_from("42", "AA", "u2"));
        let actions = m.on_peer_event(
            t0,
            &key,
            PeerEvent::Failed {
                code: ErrorCode::BadRequest,
                message: "renegotiating offer rejected".into(),
            },
        );
        let out = published(&actions);
        assert_eq!(out[0].0, "home/cam/error/v1");
        assert_eq!(out[1].0, "home/cam/status");
        assert_eq!(out[1].1["viewers"], 0);
        assert_eq!(m.sessions(), 0);
    }

    #[test]
    fn ice_server_requests_are_granted_within_bounds() {
        let t0 = Instant::now();
        let mut m = machine(4);
        assert_eq!(
            m.on_message(t0, "home/cam/ice-servers/v1", b"{}"),
            vec![Action::GrantIceServers {
                cid: "v1".into(),
                topic: "home/cam/ice-servers/v1".into()
            }]
        );
        // Per CID: 5 per 10 s, then refused on the same topic (lossy, from the error budget).
        for _ in 1..5 {
            assert!(matches!(
                m.on_message(t0, "home/cam/ice-servers/v1", b"{}")[0],
                Action::GrantIceServers { .. }
            ));
        }
        let actions = m.on_message(t0, "home/cam/ice-servers/v1", b"{}");
        assert!(matches!(&actions[0], Action::Publish { lossy: true, .. }));
        let out = published(&actions);
        assert_eq!(out[0].0, "home/cam/ice-servers/v1");
        assert_eq!(out[0].1["iceServers"], serde_json::json!([]));
        assert_eq!(out[0].1["error"]["code"], "bad-request");
        assert!(
            out[0].1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("at most 5 per 10 s")
        );
        let after = t0 + Duration::from_secs(10);
        assert!(matches!(
            m.on_message(after, "home/cam/ice-servers/v1", b"{}")[0],
            Action::GrantIceServers { .. }
        ));
        // Bad requests: refused with the reason, nothing else changes.
        for bad in [&b"nope"[..], b"[1]", &[b' '; 2000]] {
            let out = published(&m.on_message(after, "home/cam/ice-servers/v2", bad));
            assert_eq!(out[0].1["error"]["code"], "bad-request", "{out:?}");
        }
        assert_eq!(m.sessions(), 0);
    }

    #[test]
    fn ice_server_grants_are_limited_device_wide() {
        let t0 = Instant::now();
        let mut m = machine(4);
        let granted = (0..100)
            .filter(|i| {
                matches!(
                    m.on_message(t0, &format!("home/cam/ice-servers/c{i}"), b"{}")[..],
                    [Action::GrantIceServers { .. }]
                )
            })
            .count();
        assert_eq!(granted, 20, "the burst");
        let later = t0 + Duration::from_secs(1);
        let more = (100..200)
            .filter(|i| {
                matches!(
                    m.on_message(later, &format!("home/cam/ice-servers/c{i}"), b"{}")[..],
                    [Action::GrantIceServers { .. }]
                )
            })
            .count();
        assert_eq!(more, 10);
    }
}
