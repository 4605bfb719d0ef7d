//! What ICE did for one peer connection, and the callbacks that watch it: [`Watch`] stands
//! between webrtc and the connection's own event handler. It
//!
//! - drives the connection's [`Pace`] (how often its driver wakes up, see [`super::runtime`]);
//! - records in a [`Connectivity`] which candidate types were tried on each side and which pair
//!   ICE selected, so that a session that never connects can say what was tried (webrtc's agent
//!   forgets every candidate when it fails: `rtc-ice-0.21.1/src/agent/mod.rs`,
//!   `Agent::update_connection_state`);
//! - ends local candidate gathering after [`GATHERING_DEADLINE`] if webrtc has not: with a TURN
//!   server that does not answer, webrtc 0.21 never completes gathering (the allocation's
//!   timeout carries the first request's transaction id, which `RTCTurnRelayer::poll_event` in
//!   `webrtc-0.21.1/src/peer_connection/transport/turn_relayer.rs` compares with the retried
//!   request's id, so `gather_finished` is never set), and the viewer would never get its
//!   end-of-candidates.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::debug;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::transport::IceTransport;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidate, RTCIceConnectionState,
    RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSignalingState,
};

use super::runtime::Pace;

/// Local candidate gathering is declared complete this long after it started, if webrtc has not
/// said so. Host and server-reflexive candidates take milliseconds; a TURN allocation a round
/// trip or two.
pub const GATHERING_DEADLINE: Duration = Duration::from_secs(5);

/// While ICE checks, the candidates it knows are read this often (a viewer's trickled and
/// peer-reflexive candidates reach the agent without a callback).
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(500);

/// A candidate's kind as a log shows it: `host/udp`, `srflx/udp`, `relay/udp`...
fn kind(c: &RTCIceCandidate) -> String {
    format!("{}/{}", c.typ, c.protocol)
}

#[derive(Debug, Default)]
struct Tried {
    local: BTreeSet<String>,
    remote: BTreeSet<String>,
    selected: Option<(String, String)>,
}

/// The candidate types one connection tried and the pair it selected.
#[derive(Debug, Default)]
pub struct Connectivity {
    tried: Mutex<Tried>,
    /// Whether this side was given a TURN server.
    turn_configured: bool,
}

impl Connectivity {
    pub fn new(turn_configured: bool) -> Self {
        Connectivity {
            tried: Mutex::new(Tried::default()),
            turn_configured,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tried) -> T) -> T {
        let mut tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut tried)
    }

    fn note_local(&self, c: &RTCIceCandidate) {
        self.with(|t| t.local.insert(kind(c)));
    }

    fn note(&self, local: &[RTCIceCandidate], remote: &[RTCIceCandidate]) {
        self.with(|t| {
            t.local.extend(local.iter().map(kind));
            t.remote.extend(remote.iter().map(kind));
        });
    }

    fn select(&self, local: &RTCIceCandidate, remote: &RTCIceCandidate) {
        self.with(|t| t.selected = Some((kind(local), kind(remote))));
    }

    /// The selected pair as `local=relay/udp remote=srflx/udp`, once ICE has selected one.
    pub fn selected_pair(&self) -> Option<String> {
        self.with(|t| {
            t.selected
                .as_ref()
                .map(|(l, r)| format!("local={l} remote={r}"))
        })
    }

    /// The selected pair's two candidate types (`("relay/udp", "prflx/udp")`).
    pub fn selected_kinds(&self) -> Option<(String, String)> {
        self.with(|t| t.selected.clone())
    }

    /// Candidate types tried: `(local, remote)`.
    pub fn tried(&self) -> (Vec<String>, Vec<String>) {
        self.with(|t| {
            (
                t.local.iter().cloned().collect(),
                t.remote.iter().cloned().collect(),
            )
        })
    }

    /// Why no connection came about, for the log and the viewer: the candidate types tried on
    /// each side and, when neither side had a relay, that a TURN server is what is missing.
    pub fn failure(&self) -> String {
        if let Some(pair) = self.selected_pair() {
            return format!(
                "ICE found a path ({pair}) but the secure connection (DTLS) was not made over it"
            );
        }
        let (local, remote) = self.tried();
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let relay = |v: &[String]| v.iter().any(|k| k.starts_with("relay/"));
        let mut text = format!(
            "no working path between the device and the viewer; candidates tried: device {}; viewer {}",
            list(&local),
            list(&remote)
        );
        if !relay(&local) && !relay(&remote) {
            text.push_str(
                ". Neither side had a TURN relay candidate: when both are behind NATs that give each \
                 destination its own port (symmetric NAT, common on mobile networks), only a TURN \
                 server connects them",
            );
            if self.turn_configured {
                text.push_str(
                    " (the device has --turn, but its TURN server gave no relay candidate: see the \
                     TURN check in the device's log)",
                );
            } else {
                text.push_str(" (give the device --turn, or the viewer a TURN server)");
            }
        } else if remote.is_empty() {
            let _ = write!(text, ". The viewer sent no usable candidate");
        }
        text
    }
}

/// The ICE transport behind a connection, through its first transceiver (or its data channel
/// transport), if it has one yet.
pub async fn ice_transport(pc: &dyn PeerConnection) -> Option<Arc<dyn IceTransport>> {
    for transceiver in pc.get_transceivers().await {
        if let Ok(Some(sender)) = transceiver.sender().await
            && let Ok(Some(dtls)) = sender.transport().await
        {
            return Some(dtls.ice_transport());
        }
        if let Ok(Some(receiver)) = transceiver.receiver().await
            && let Ok(Some(dtls)) = receiver.transport().await
        {
            return Some(dtls.ice_transport());
        }
    }
    let sctp = pc.sctp().await?;
    Some(sctp.transport().ice_transport())
}

/// The selected pair's candidate kinds from the connection's stats (`"?"` for a candidate that
/// has no stats entry).
async fn selected_from_stats(pc: &dyn PeerConnection) -> Option<(String, String)> {
    use webrtc::peer_connection::{RTCStatsReportEntry, StatsSelector};
    let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
    let pair_id = report.transport()?.selected_candidate_pair_id.clone();
    let pair = report.candidate_pairs().find(|p| p.stats.id == pair_id)?;
    let kind = |prefix: &str, id: &str| {
        [id.to_string(), format!("{prefix}{id}")]
            .iter()
            .find_map(|key| match report.get(key) {
                Some(
                    RTCStatsReportEntry::LocalCandidate(c)
                    | RTCStatsReportEntry::RemoteCandidate(c),
                ) => Some(format!("{}/{}", c.candidate_type, c.protocol)),
                _ => None,
            })
            .unwrap_or_else(|| "?".to_string())
    };
    Some((
        kind("RTCLocalIceCandidate_", &pair.local_candidate_id),
        kind("RTCRemoteIceCandidate_", &pair.remote_candidate_id),
    ))
}

/// Read the candidates the agent knows into `record`.
async fn snapshot(pc: &dyn PeerConnection, record: &Connectivity) {
    if let Some(ice) = ice_transport(pc).await {
        let local = ice.get_local_candidates().await.unwrap_or_default();
        let remote = ice.get_remote_candidates().await.unwrap_or_default();
        record.note(&local, &remote);
    }
}

/// The event handler webrtc calls for a connection built by [`super::PeerFactory`]: it keeps
/// the connection's [`Pace`] and [`Connectivity`] up to date, then hands every event on.
pub struct Watch {
    inner: Arc<dyn PeerConnectionEventHandler>,
    pace: Arc<Pace>,
    record: Arc<Connectivity>,
    /// The connection itself, set once it exists (for reading its ICE transport).
    pc: OnceLock<Weak<dyn PeerConnection>>,
    /// Set when the connection is up (DTLS done): an ICE "connected" after that is a restart.
    up: AtomicBool,
    /// Set while ICE is checking: the snapshot task runs.
    checking: Arc<AtomicBool>,
    /// Gathering of the current generation has been reported complete (by webrtc or by the
    /// deadline), and whether the deadline did it.
    gathering: Arc<Gathering>,
}

#[derive(Debug, Default)]
struct Gathering {
    /// Bumped at every offer: a deadline armed for an older one does nothing.
    generation: std::sync::atomic::AtomicU64,
    complete: AtomicBool,
    ended_by_deadline: AtomicBool,
}

impl Watch {
    pub fn new(
        inner: Arc<dyn PeerConnectionEventHandler>,
        pace: Arc<Pace>,
        record: Arc<Connectivity>,
    ) -> Self {
        Watch {
            inner,
            pace,
            record,
            pc: OnceLock::new(),
            up: AtomicBool::new(false),
            checking: Arc::new(AtomicBool::new(false)),
            gathering: Arc::default(),
        }
    }

    /// Tell the watch which connection it watches (once it is built).
    pub fn attach(&self, pc: &Arc<dyn PeerConnection>) {
        let _ = self.pc.set(Arc::downgrade(pc));
    }

    fn pc(&self) -> Option<Arc<dyn PeerConnection>> {
        self.pc.get().and_then(Weak::upgrade)
    }

    /// While ICE checks, read the candidates it knows now and then (and once more at the end).
    fn start_snapshots(&self) {
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (Some(weak), record, checking) = (
            self.pc.get().cloned(),
            Arc::clone(&self.record),
            Arc::clone(&self.checking),
        ) else {
            return;
        };
        tokio::spawn(async move {
            while checking.load(Ordering::Acquire) {
                let Some(pc) = weak.upgrade() else { return };
                snapshot(pc.as_ref(), &record).await;
                drop(pc);
                tokio::time::sleep(SNAPSHOT_INTERVAL).await;
            }
        });
    }

    /// Read the selected pair into the record and the pace. The callbacks run on the driver
    /// with no lock held, so reading the agent from them is safe.
    async fn read_selected_pair(&self) {
        let Some(pc) = self.pc() else { return };
        snapshot(pc.as_ref(), &self.record).await;
        match ice_transport(pc.as_ref()).await {
            Some(ice) => match ice.get_selected_candidate_pair().await {
                Ok(Some(pair)) => {
                    self.record.select(pair.local(), pair.remote());
                    self.pace.relayed(
                        pair.local().typ == webrtc::peer_connection::RTCIceCandidateType::Relay,
                    );
                }
                other => debug!("selected candidate pair not readable: {other:?}"),
            },
            // A receive-only connection (`spyglass view`) has no transport handle to read through:
            // the stats have the pair, and the types of its candidates when registered there
            // (webrtc registers no stats for the remote candidates of an SDP).
            None => {
                if let Some((local, remote)) = selected_from_stats(pc.as_ref()).await {
                    self.record
                        .with(|t| t.selected = Some((local.clone(), remote)));
                    self.pace.relayed(local.starts_with("relay/"));
                }
            }
        }
    }

    /// An offer was made or taken, so candidates are (re)gathered: make sure that ends. (webrtc
    /// reports no "gathering" state change, so the signaling state marks the start.)
    fn arm_gathering_deadline(&self) {
        let gathering = Arc::clone(&self.gathering);
        let generation = gathering.generation.fetch_add(1, Ordering::AcqRel) + 1;
        gathering.complete.store(false, Ordering::Release);
        gathering.ended_by_deadline.store(false, Ordering::Release);
        let inner = Arc::clone(&self.inner);
        let weak = self.pc.get().cloned();
        tokio::spawn(async move {
            tokio::time::sleep(GATHERING_DEADLINE).await;
            let alive = weak.as_ref().and_then(Weak::upgrade).is_some();
            if alive
                && gathering.generation.load(Ordering::Acquire) == generation
                && !gathering.complete.swap(true, Ordering::AcqRel)
            {
                gathering.ended_by_deadline.store(true, Ordering::Release);
                debug!(
                    "local candidate gathering not complete after {GATHERING_DEADLINE:?} (a TURN server \
                     that does not answer?): ending it"
                );
                inner
                    .on_ice_gathering_state_change(RTCIceGatheringState::Complete)
                    .await;
            }
        });
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Watch {
    async fn on_negotiation_needed(&self) {
        self.inner.on_negotiation_needed().await;
    }

    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        self.record.note_local(&event.candidate);
        if self.gathering.ended_by_deadline.load(Ordering::Acquire) {
            debug!(
                candidate = %kind(&event.candidate),
                "local candidate after the gathering deadline: not sent"
            );
            return;
        }
        self.inner.on_ice_candidate(event).await;
    }

    async fn on_ice_candidate_error(
        &self,
        event: webrtc::peer_connection::RTCPeerConnectionIceErrorEvent,
    ) {
        self.inner.on_ice_candidate_error(event).await;
    }

    async fn on_signaling_state_change(&self, state: RTCSignalingState) {
        if matches!(
            state,
            RTCSignalingState::HaveRemoteOffer | RTCSignalingState::HaveLocalOffer
        ) {
            self.arm_gathering_deadline();
        }
        self.inner.on_signaling_state_change(state).await;
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        let now = Instant::now();
        match state {
            RTCIceConnectionState::Checking => {
                self.pace.checking(now);
                self.start_snapshots();
            }
            RTCIceConnectionState::Connected => {
                self.pace
                    .ice_connected(now, self.up.load(Ordering::Acquire));
                self.checking.store(false, Ordering::Release);
                self.read_selected_pair().await;
            }
            RTCIceConnectionState::Failed | RTCIceConnectionState::Closed => {
                self.checking.store(false, Ordering::Release);
                self.pace.ended();
            }
            _ => {}
        }
        self.inner.on_ice_connection_state_change(state).await;
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && self.gathering.complete.swap(true, Ordering::AcqRel)
        {
            // Already reported (by the deadline).
            return;
        }
        self.inner.on_ice_gathering_state_change(state).await;
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        match state {
            RTCPeerConnectionState::Connected => {
                self.up.store(true, Ordering::Release);
                self.pace.connected(Instant::now());
                if self.record.selected_kinds().is_none() {
                    // A receive-only connection has no transport to read through until its
                    // first track is negotiated in full.
                    self.read_selected_pair().await;
                }
            }
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                self.checking.store(false, Ordering::Release);
                self.pace.ended();
            }
            _ => {}
        }
        self.inner.on_connection_state_change(state).await;
    }

    async fn on_data_channel(&self, data_channel: Arc<dyn DataChannel>) {
        self.inner.on_data_channel(data_channel).await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.inner.on_track(track).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::peer_connection::{RTCIceCandidateType, RTCIceProtocol};

    fn candidate(typ: RTCIceCandidateType) -> RTCIceCandidate {
        RTCIceCandidate {
            typ,
            protocol: RTCIceProtocol::Udp,
            ..Default::default()
        }
    }

    #[test]
    fn a_failure_without_relays_says_turn_is_needed() {
        let record = Connectivity::new(false);
        record.note(
            &[
                candidate(RTCIceCandidateType::Host),
                candidate(RTCIceCandidateType::Srflx),
            ],
            &[candidate(RTCIceCandidateType::Host)],
        );
        let text = record.failure();
        assert!(
            text.contains("device host/udp, srflx/udp; viewer host/udp"),
            "{text}"
        );
        assert!(text.contains("only a TURN server connects them"), "{text}");
        assert!(text.contains("give the device --turn"), "{text}");

        let configured = Connectivity::new(true);
        configured.note(&[candidate(RTCIceCandidateType::Host)], &[]);
        let text = configured.failure();
        assert!(text.contains("viewer none"), "{text}");
        assert!(text.contains("gave no relay candidate"), "{text}");
    }

    #[test]
    fn a_failure_with_a_relay_does_not_blame_turn() {
        let record = Connectivity::new(true);
        record.note(
            &[candidate(RTCIceCandidateType::Relay)],
            &[candidate(RTCIceCandidateType::Host)],
        );
        assert!(!record.failure().contains("TURN"), "{}", record.failure());
        assert!(record.failure().contains("candidates tried"));
        record.select(
            &candidate(RTCIceCandidateType::Relay),
            &candidate(RTCIceCandidateType::Prflx),
        );
        assert_eq!(
            record.selected_pair().as_deref(),
            Some("local=relay/udp remote=prflx/udp")
        );
        assert!(record.failure().contains("DTLS"), "{}", record.failure());
    }
}
