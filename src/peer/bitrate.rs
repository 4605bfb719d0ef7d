//! One target bitrate for the shared encoder from every viewer's bandwidth estimate, and, per
//! viewer, the highest temporal layer its link carries.
//!
//! spyglass encodes once for everyone, so one number has to serve viewers on very different
//! links. The rule (docs/PERFORMANCE.md, "Rate control"):
//!
//! - **the best viewer sets the rate**: `R = HEADROOM × max(estimates)`, within
//!   `--min-bitrate ..= --max-bitrate` ([`HEADROOM`] leaves room for audio, retransmissions and
//!   keyframes);
//! - **capped so that the worst viewer still fits the base layer**: `R ≤ HEADROOM ×
//!   min(estimates) / s0`, where `s0` is the share of the stream's bits in temporal layer 0
//!   (measured on the frames sent; 1 when the encoder makes one layer, so then the worst viewer
//!   sets the rate);
//! - **each viewer gets the layers its estimate carries**: the highest layer `l` whose
//!   cumulative share × R fits in `HEADROOM ×` its estimate. A viewer drops a layer as soon as
//!   it no longer fits, and takes one more only after it has fitted for [`LAYER_UP_AFTER`], so
//!   that a viewer near the edge does not flap.
//!
//! Taking the maximum alone would let one good viewer push the stream past what a poor one can
//! take even at its lowest layer, and the poor one would freeze; taking the minimum alone would
//! give everyone the quality of the worst link. With temporal layers the poor viewer receives
//! fewer frames of the same stream, and the good ones keep the full rate.
//!
//! The state is driven by [`RateControl::update`] with the time passed in; the daemon calls it a
//! few times a second and hands the result to the encoder.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tracing::info;

use super::link::Link;

/// Temporal layers the encoder may make, at most (L1T3).
pub const MAX_LAYERS: usize = 3;
/// Video takes at most this share of a viewer's estimate (the rest is room for audio,
/// retransmissions and keyframes, which are several times an ordinary frame).
pub const HEADROOM: f64 = 0.9;
/// A viewer is given one more layer only after it has fitted for this long.
pub const LAYER_UP_AFTER: Duration = Duration::from_secs(2);
/// How often the daemon re-evaluates the target.
pub const UPDATE_EVERY: Duration = Duration::from_millis(250);
/// The encoder is told a new target when it moved by more than this fraction (or a second
/// passed), so that small wobbles of the estimates do not reconfigure it four times a second.
const RETARGET_STEP: f64 = 0.05;
/// Changes of the target are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Weight of each new frame in the measured layer shares.
const SHARE_WEIGHT: f64 = 1.0 / 64.0;

/// The bitrates the shared encoder may use, bits/s: from `--bitrate` (where it starts),
/// `--min-bitrate` and `--max-bitrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitrateRange {
    pub start_bps: u64,
    pub min_bps: u64,
    pub max_bps: u64,
}

impl Default for BitrateRange {
    fn default() -> Self {
        BitrateRange {
            start_bps: 2_000_000,
            min_bps: 150_000,
            max_bps: 2_000_000,
        }
    }
}

impl BitrateRange {
    fn clamp(&self, bps: f64) -> f64 {
        bps.clamp(self.min_bps as f64, self.max_bps as f64)
    }
}

/// One viewer, as rate control sees it: its link, the layers it is sent, and what its send loop
/// did not send it.
#[derive(Debug)]
pub struct ViewerRate {
    link: Arc<Link>,
    /// The viewer's client id, for the log.
    cid: String,
    /// Counted in the shared target only once media flows to it.
    active: AtomicBool,
    /// The highest temporal layer this viewer is sent.
    layer: AtomicU8,
    /// Frames not sent because their temporal layer is above what the viewer gets.
    pub frames_skipped: AtomicU64,
    /// Frames held back because the viewer's pacer backlog was too long.
    pub frames_held_back: AtomicU64,
    /// Times the viewer's picture stopped until a keyframe (frames held back).
    pub stalls: AtomicU64,
    /// Keyframes this viewer asked the shared encoder for (after its [`crate::peer::keyframes`]
    /// policy).
    pub keyframes_requested: AtomicU64,
    layering: Mutex<Layering>,
}

/// Since when one more layer has fitted, and when a layer change was last logged.
#[derive(Debug, Default)]
struct Layering {
    fits_up_since: Option<Instant>,
    logged: Option<Instant>,
}

impl ViewerRate {
    /// Media flows to this viewer: its estimate now counts.
    pub fn activate(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    pub fn cid(&self) -> &str {
        &self.cid
    }

    /// The viewer's transport figures.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The highest temporal layer this viewer is sent (0: the base layer only; `MAX_LAYERS - 1`
    /// also means "every layer the encoder makes").
    pub fn layer(&self) -> u8 {
        self.layer.load(Ordering::Relaxed)
    }

    /// Whether a frame of temporal layer `temporal_id` goes to this viewer.
    pub fn wants(&self, temporal_id: u8) -> bool {
        temporal_id <= self.layer()
    }
}

#[derive(Debug)]
struct State {
    viewers: Vec<Weak<ViewerRate>>,
    /// Bytes per temporal layer, smoothed (the shares are these ÷ their sum).
    layer_bytes: [f64; MAX_LAYERS],
    /// Layers the encoder makes (1 until a frame with a higher temporal id is seen).
    layers: usize,
    /// The newest frame folded into the shares (each frame is seen by every viewer's loop).
    last_frame: Option<u64>,
    target: f64,
    announced: Option<(f64, Instant)>,
    logged: Option<Instant>,
}

/// Shared by the daemon and every session. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct RateControl {
    range: BitrateRange,
    state: Arc<Mutex<State>>,
    target_bps: Arc<AtomicU64>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RateControl {
    pub fn new(range: BitrateRange) -> Self {
        let start = range.clamp(range.start_bps as f64);
        RateControl {
            range,
            state: Arc::new(Mutex::new(State {
                viewers: Vec::new(),
                layer_bytes: [0.0; MAX_LAYERS],
                layers: 1,
                last_frame: None,
                target: start,
                announced: None,
                logged: None,
            })),
            target_bps: Arc::new(AtomicU64::new(start as u64)),
        }
    }

    pub fn range(&self) -> BitrateRange {
        self.range
    }

    /// A viewer joins with its link; it counts once [`ViewerRate::activate`]d, until the
    /// returned handle is dropped.
    pub fn join(&self, link: Arc<Link>, cid: &str) -> Arc<ViewerRate> {
        let mut state = lock(&self.state);
        let viewer = Arc::new(ViewerRate {
            link,
            cid: cid.to_owned(),
            active: AtomicBool::new(false),
            // Everything, until its link says otherwise.
            layer: AtomicU8::new((MAX_LAYERS - 1) as u8),
            frames_skipped: AtomicU64::new(0),
            frames_held_back: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            keyframes_requested: AtomicU64::new(0),
            layering: Mutex::new(Layering::default()),
        });
        state.viewers.push(Arc::downgrade(&viewer));
        viewer
    }

    /// The encoder's current target, bits/s.
    pub fn target_bps(&self) -> u64 {
        self.target_bps.load(Ordering::Relaxed)
    }

    /// Layers the encoder makes, as seen on its frames.
    pub fn layers(&self) -> usize {
        lock(&self.state).layers
    }

    /// Fold one encoded frame into the measured layer shares. Every viewer's send loop calls
    /// this for every frame it sees; each frame counts once.
    pub fn observe(&self, frame_seq: u64, temporal_id: u8, bytes: usize) {
        let mut state = lock(&self.state);
        if state.last_frame.is_some_and(|s| frame_seq <= s) {
            return;
        }
        state.last_frame = Some(frame_seq);
        let tid = usize::from(temporal_id).min(MAX_LAYERS - 1);
        state.layers = state.layers.max(tid + 1);
        // Every layer's average decays per frame; the frame's own layer gains its bytes.
        for (i, b) in state.layer_bytes.iter_mut().enumerate() {
            let sample = if i == tid { bytes as f64 } else { 0.0 };
            *b += SHARE_WEIGHT * (sample - *b);
        }
    }

    /// Cumulative share of the stream's bits in layers `0..=l`, for each `l` the encoder makes.
    fn cumulative_shares(state: &State) -> Vec<f64> {
        let total: f64 = state.layer_bytes[..state.layers].iter().sum();
        let mut cumulative = 0.0;
        (0..state.layers)
            .map(|l| {
                if l + 1 == state.layers || total <= 0.0 {
                    // The top layer is the whole stream; without measurements, assume the
                    // layers are equal.
                    return if l + 1 == state.layers {
                        1.0
                    } else {
                        (l + 1) as f64 / state.layers as f64
                    };
                }
                cumulative += state.layer_bytes[l] / total;
                cumulative
            })
            .collect()
    }

    /// Re-evaluate: the shared target from every viewer's estimate, and each viewer's layer.
    /// Returns the new target when the encoder should be told (it moved enough, or a second
    /// passed since it was last told).
    pub fn update(&self, now: Instant) -> Option<u64> {
        let mut state = lock(&self.state);
        state.viewers.retain(|v| v.strong_count() > 0);
        let viewers: Vec<Arc<ViewerRate>> = state
            .viewers
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|v| v.active.load(Ordering::Relaxed))
            .collect();
        if viewers.is_empty() {
            return None;
        }
        let shares = Self::cumulative_shares(&state);
        let estimates: Vec<f64> = viewers
            .iter()
            .map(|v| v.link.estimate_bps() as f64)
            .collect();
        let best = estimates.iter().copied().fold(0.0, f64::max);
        let worst = estimates.iter().copied().fold(f64::INFINITY, f64::min);
        let base_share = shares[0].max(0.05);
        let target = self
            .range
            .clamp(HEADROOM * best.min(worst / base_share))
            .max(self.range.min_bps as f64);
        state.target = target;
        self.target_bps.store(target as u64, Ordering::Relaxed);

        for (viewer, estimate) in viewers.iter().zip(&estimates) {
            let current = usize::from(viewer.layer()).min(shares.len() - 1);
            // (The best viewer's whole stream fits exactly: allow for rounding.)
            let fits = |l: usize| shares[l] * target <= HEADROOM * estimate * 1.0001;
            let mut layering = viewer.layering.lock().unwrap_or_else(|p| p.into_inner());
            let mut layer = current;
            while layer > 0 && !fits(layer) {
                layer -= 1;
            }
            if layer == current && layer + 1 < shares.len() && fits(layer + 1) {
                let since = *layering.fits_up_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= LAYER_UP_AFTER {
                    layer += 1;
                    layering.fits_up_since = None;
                }
            } else {
                layering.fits_up_since = None;
            }
            if layer != current
                && layering
                    .logged
                    .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
            {
                layering.logged = Some(now);
                info!(
                    cid = %viewer.cid,
                    estimate_kbps = (estimate / 1000.0) as u64,
                    target_kbps = (target / 1000.0) as u64,
                    "viewer's link carries temporal layers 0..={layer} of {}",
                    shares.len()
                );
            }
            // The top layer is kept as "every layer", whatever the encoder makes now (it may
            // make more later: a new viewer sees one layer until frames have been observed).
            let stored = if layer + 1 == shares.len() {
                MAX_LAYERS - 1
            } else {
                layer
            };
            viewer.layer.store(stored as u8, Ordering::Relaxed);
        }

        let due = match state.announced {
            None => true,
            Some((told, at)) => {
                (target - told).abs() > RETARGET_STEP * told
                    || now.saturating_duration_since(at) >= Duration::from_secs(1)
            }
        };
        if !due {
            return None;
        }
        let moved = state
            .announced
            .is_none_or(|(told, _)| (target - told).abs() > RETARGET_STEP * told);
        state.announced = Some((target, now));
        if moved
            && state
                .logged
                .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
        {
            state.logged = Some(now);
            info!(
                target_kbps = (target / 1000.0) as u64,
                best_kbps = (best / 1000.0) as u64,
                worst_kbps = (worst / 1000.0) as u64,
                viewers = viewers.len(),
                "shared encoder target"
            );
        }
        Some(target as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RateControl {
        fn join_active(&self, link: Arc<Link>) -> Arc<ViewerRate> {
            let viewer = self.join(link, "test");
            viewer.activate();
            viewer
        }
    }

    const RANGE: BitrateRange = BitrateRange {
        start_bps: 1_000_000,
        min_bps: 150_000,
        max_bps: 2_500_000,
    };

    fn link(estimate: u64) -> Arc<Link> {
        let link = Arc::new(Link::new(estimate));
        link.set_estimate(estimate, estimate);
        link
    }

    #[test]
    fn one_layer_the_worst_viewer_sets_the_rate() {
        let rate = RateControl::new(RANGE);
        let _good = rate.join_active(link(2_000_000));
        let _poor = rate.join_active(link(500_000));
        assert_eq!(rate.update(Instant::now()), Some(450_000));
    }

    #[test]
    fn with_layers_the_best_sets_it_capped_by_the_base_layer_of_the_worst() {
        let rate = RateControl::new(RANGE);
        // Three layers, the base carrying half of the bits.
        for seq in 0..400u64 {
            let tid = [0u8, 2, 1, 2][(seq % 4) as usize];
            let bytes = [2000, 500, 1000, 500][(seq % 4) as usize];
            rate.observe(seq, tid, bytes);
        }
        assert_eq!(rate.layers(), 3);
        let good = rate.join_active(link(2_000_000));
        let poor = rate.join_active(link(500_000));
        let t0 = Instant::now();
        let target = rate.update(t0).unwrap() as f64;
        // 90 % of the poor viewer's 500 kbit/s carries the base layer (half) of a 900 kbit/s
        // stream.
        assert!((800_000.0..=1_000_000.0).contains(&target), "{target}");
        assert_eq!(good.layer(), 2);
        assert_eq!(poor.layer(), 0);
        assert!(poor.wants(0) && !poor.wants(1));
        // The poor viewer's link gets better: one more layer, but only after it has fitted for
        // a while.
        poor.link().set_estimate(1_600_000, 1_600_000);
        rate.update(t0 + Duration::from_millis(250));
        assert_eq!(poor.layer(), 0);
        rate.update(t0 + Duration::from_millis(1000));
        assert_eq!(poor.layer(), 0);
        rate.update(t0 + Duration::from_millis(2300));
        assert_eq!(poor.layer(), 1);
        // Alone, the good viewer gets 90 % of its estimate, every layer.
        drop(poor);
        let target = rate.update(t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(target, 1_800_000);
        assert_eq!(good.layer(), 2);
    }

    #[test]
    fn a_viewer_that_joins_before_the_layers_are_known_keeps_every_frame() {
        let rate = RateControl::new(RANGE);
        let v = rate.join_active(link(1_000_000));
        // One layer seen so far.
        rate.observe(0, 0, 5000);
        let t0 = Instant::now();
        rate.update(t0);
        assert!(v.wants(2));
        // Then the encoder's three layers show.
        for seq in 1..100u64 {
            rate.observe(seq, [0u8, 2, 1, 2][(seq % 4) as usize], 1000);
        }
        rate.update(t0 + Duration::from_millis(250));
        assert!(v.wants(2), "the only viewer gets every layer at once");
    }

    #[test]
    fn the_target_stays_within_the_range() {
        let rate = RateControl::new(RANGE);
        let v = rate.join_active(link(50_000));
        assert_eq!(rate.update(Instant::now()), Some(150_000));
        v.link().set_estimate(9_000_000, 9_000_000);
        assert_eq!(
            rate.update(Instant::now() + Duration::from_secs(2)),
            Some(2_500_000)
        );
    }

    #[test]
    fn small_changes_are_not_announced_at_once() {
        let rate = RateControl::new(RANGE);
        let v = rate.join_active(link(1_000_000));
        let t0 = Instant::now();
        assert_eq!(rate.update(t0), Some(900_000));
        v.link().set_estimate(1_020_000, 1_020_000);
        assert_eq!(rate.update(t0 + Duration::from_millis(250)), None);
        assert_eq!(rate.target_bps(), 918_000);
        assert_eq!(rate.update(t0 + Duration::from_millis(1100)), Some(918_000));
    }
}
