//! The video hub: one source and one H.264 encoder per stream, shared by every viewer.
//!
//! It is the on-demand [`pipeline`](crate::pipeline) (capture only while someone watches, a slow
//! viewer never delays the others, a failed or stalled source reopened with back-off, a
//! heartbeat for the watchdog) with what video adds: keyframes when a viewer joins or loses
//! pictures, coalesced by a [`KeyframeGate`]; the newest raw frame, for snapshots; the source's
//! picture controls. A viewer's [`Subscription`] starts at a keyframe and skips to the next one
//! after it lagged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, warn};

pub use super::SourceOpener;
use super::controls::Controls;
use super::encode::{self, EncodeError, EncodedFrame, Encoder, EncoderChoice};
use super::h264::ProfileLevel;
use super::{Captured, Frame, VideoError, VideoSpec};
use crate::pipeline::{self, Media, Pipeline, Policy, Run, RunError};

/// What the video pipeline is doing, for the status.
pub use crate::pipeline::State as VideoState;

/// Requests from viewers that lost pictures are served at most this often.
const MIN_LOSS_KEYFRAME_INTERVAL: Duration = Duration::from_millis(250);
/// Keyframes viewers ask for on the data channel, from all viewers together: per second, and
/// at once after a pause. Each costs every viewer a burst of bitrate.
const ON_DEMAND_KEYFRAMES: (f64, u32) = (1.0, 2);
/// Viewers' blocking requests served at once on the whole device (snapshot encodes, each with a
/// frame-sized buffer; control listings and changes, V4L2 ioctls); more wait for a turn.
pub const REQUEST_WORKERS: usize = 2;

const POLICY: Policy = Policy {
    name: "capture",
    item: "frame",
    threads: ("hub", "capture"),
    // How many encoded frames a viewer may lag behind before it loses the oldest.
    fanout_depth: 8,
    // A new raw frame replaces one the encoder has not taken yet.
    queue_depth: 1,
    reopen_delay: (Duration::from_millis(250), Duration::from_secs(1)),
    stall_after: Duration::from_secs(2),
};

/// Why a keyframe is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeReason {
    /// A viewer just started watching: served at the next frame.
    Join,
    /// A viewer lost pictures (PLI/FIR, or it lagged): coalesced.
    Loss,
}

/// Decides, frame by frame, whether the next frame must be a keyframe. Time is passed in.
#[derive(Debug, Default)]
pub struct KeyframeGate {
    join_pending: bool,
    loss_pending: bool,
    last_keyframe: Option<Instant>,
    /// Requests received (for stats and tests).
    pub requests: u64,
}

impl KeyframeGate {
    pub fn request(&mut self, reason: KeyframeReason) {
        self.requests += 1;
        match reason {
            KeyframeReason::Join => self.join_pending = true,
            KeyframeReason::Loss => self.loss_pending = true,
        }
    }

    /// Called before encoding each frame: true when this frame must be forced to a keyframe.
    pub fn should_force(&mut self, now: Instant) -> bool {
        let loss_due = self.loss_pending
            && self
                .last_keyframe
                .is_none_or(|t| now.saturating_duration_since(t) >= MIN_LOSS_KEYFRAME_INTERVAL);
        if self.join_pending || loss_due {
            self.join_pending = false;
            self.loss_pending = false;
            true
        } else {
            false
        }
    }

    /// Called after encoding with what the encoder produced (it also makes periodic keyframes).
    pub fn encoded(&mut self, now: Instant, keyframe: bool) {
        if keyframe {
            self.last_keyframe = Some(now);
            // Any keyframe answers a pending loss request.
            self.loss_pending = false;
        }
    }
}

/// Why the video pipeline stopped delivering.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// What the stream is, as far as the pipeline's runs have shown it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// The newest run's encoder (`openh264`, `v4l2`, `passthrough`); `None` before the first.
    pub encoder: Option<&'static str>,
    /// The `profile-level-id` of the newest SPS; `None` before the first keyframe of a run of
    /// this encoder.
    pub profile: Option<ProfileLevel>,
    /// For a source that makes its own keyframes and cannot be asked for one: the time between
    /// its last IDRs (to 10 ms), which is how long a joining viewer may wait for its first picture.
    pub idr_period: Option<Duration>,
}

/// A new IDR period is told when it differs from the last by more than this share.
const IDR_PERIOD_CHANGE: f64 = 0.1;

/// Video's half of the pipeline.
pub struct Video {
    opener: SourceOpener,
    bitrate_kbps: u32,
    encoder_choice: EncoderChoice,
    stream: watch::Sender<StreamInfo>,
    /// When the source's last keyframe came (for its IDR period).
    last_keyframe: Mutex<Option<Instant>>,
    /// The bitrate rate control wants from the encoder, bits/s (0: none yet, keep `bitrate_kbps`).
    target_bps: AtomicU64,
    keyframes: Mutex<KeyframeGate>,
    /// Keyframes encoded, periodic ones included.
    keyframes_encoded: AtomicU64,
    /// The source's picture controls.
    controls: Controls,
    /// The newest raw frame that was encoded, for snapshots; `None` while idle.
    latest: Mutex<Option<Arc<Frame>>>,
    /// Keyframes asked for on the data channel, by everyone.
    on_demand: Mutex<crate::rate::TokenBucket>,
    /// Turns for viewers' blocking requests.
    request_workers: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Video {
    /// After each output: the stream's profile from a keyframe's SPS, and the IDR period of a
    /// source that cannot be asked for keyframes.
    fn observe(&self, encoder: &dyn Encoder, encoded: &EncodedFrame) {
        if !encoded.keyframe {
            return;
        }
        let now = Instant::now();
        let period = lock(&self.last_keyframe)
            .replace(now)
            .map(|last| now - last)
            .filter(|_| !encoder.keyframes_on_request())
            .map(|p| Duration::from_millis((p.as_millis() as u64).div_ceil(10) * 10));
        let profile = ProfileLevel::of_access_unit(&encoded.data);
        self.stream.send_if_modified(|info| {
            let mut changed = false;
            if profile.is_some() && info.profile != profile {
                info.profile = profile;
                changed = true;
            }
            if let Some(period) = period {
                let differs = info.idr_period.is_none_or(|old| {
                    (period.as_secs_f64() - old.as_secs_f64()).abs()
                        > old.as_secs_f64() * IDR_PERIOD_CHANGE
                });
                if differs {
                    info.idr_period = Some(period);
                    changed = true;
                }
            }
            changed
        });
    }
}

impl Media for Video {
    type Raw = Captured;
    type Out = EncodedFrame;
    type Error = PipelineError;
    type Encoder = Box<dyn Encoder>;

    const POLICY: Policy = POLICY;

    fn start(&self) -> Result<Run<Self>, PipelineError> {
        let mut source = (self.opener)()?;
        let format = source.format().clone();
        let encoder = encode::open(&*source, &self.encoder_choice, self.bitrate_kbps)?;
        debug!(encoder = encoder.name(), "encoder open");
        let name = encoder.name();
        self.stream.send_if_modified(|info| {
            if info.encoder == Some(name) {
                return false;
            }
            *info = StreamInfo {
                encoder: Some(name),
                ..StreamInfo::default()
            };
            true
        });
        lock(&self.last_keyframe).take();
        Ok(Run {
            description: format!("{} → {name}", format.description),
            startup: source.startup(),
            capture: Box::new(move || Ok(source.next_captured()?)),
            encoder,
        })
    }

    fn encode(
        &self,
        encoder: &mut Box<dyn Encoder>,
        captured: Captured,
    ) -> Result<Option<EncodedFrame>, PipelineError> {
        let target = self.target_bps.load(Ordering::Relaxed);
        if target > 0 {
            encoder.set_bitrate(target.min(u64::from(u32::MAX)) as u32);
        }
        let force = lock(&self.keyframes).should_force(Instant::now());
        let encoded = encoder.take(&captured, force)?;
        if let Some(encoded) = &encoded {
            lock(&self.keyframes).encoded(Instant::now(), encoded.keyframe);
            if encoded.keyframe {
                self.keyframes_encoded.fetch_add(1, Ordering::Relaxed);
            }
            self.observe(&**encoder, encoded);
        }
        if let Captured::Raw(frame) = captured {
            *lock(&self.latest) = Some(Arc::new(frame));
        }
        Ok(encoded)
    }

    fn stopped(&self) {
        lock(&self.latest).take();
    }

    fn lost(&self, error: &RunError<PipelineError>, retry_in: Duration) {
        warn!(
            "video lost: {error}; retrying in {} ms",
            retry_in.as_millis()
        );
    }
}

/// Handle to the shared video pipeline. Cloning is cheap.
#[derive(Clone)]
pub struct Hub {
    pipeline: Pipeline<Video>,
    /// The source may deliver H.264, which is passed through (see [`Hub::may_pass_through`]).
    may_pass_through: bool,
}

impl Hub {
    /// A hub over the source that `spec` names, encoded as `spec.encoder` says.
    pub fn new(spec: VideoSpec, bitrate_kbps: u32) -> std::io::Result<Hub> {
        let (controls, opener) = spec.prepare();
        let mut hub = Hub::build(opener, bitrate_kbps, controls, spec.encoder.clone())?;
        hub.may_pass_through = spec.may_pass_through();
        Ok(hub)
    }

    /// A hub over the sources `opener` opens, without picture controls.
    pub fn with_opener(opener: SourceOpener, bitrate_kbps: u32) -> std::io::Result<Hub> {
        Hub::with_controls(opener, bitrate_kbps, Controls::none())
    }

    /// A hub whose source follows `controls` (the opener must give them to the source).
    pub fn with_controls(
        opener: SourceOpener,
        bitrate_kbps: u32,
        controls: Controls,
    ) -> std::io::Result<Hub> {
        Hub::build(opener, bitrate_kbps, controls, EncoderChoice::default())
    }

    fn build(
        opener: SourceOpener,
        bitrate_kbps: u32,
        controls: Controls,
        encoder_choice: EncoderChoice,
    ) -> std::io::Result<Hub> {
        let pipeline = Pipeline::start(Video {
            opener,
            bitrate_kbps,
            encoder_choice,
            stream: watch::channel(StreamInfo::default()).0,
            last_keyframe: Mutex::new(None),
            target_bps: AtomicU64::new(0),
            keyframes: Mutex::new(KeyframeGate::default()),
            keyframes_encoded: AtomicU64::new(0),
            controls,
            latest: Mutex::new(None),
            on_demand: Mutex::new(crate::rate::TokenBucket::new(
                ON_DEMAND_KEYFRAMES.0,
                ON_DEMAND_KEYFRAMES.1,
            )),
            request_workers: Arc::new(tokio::sync::Semaphore::new(REQUEST_WORKERS)),
        })?;
        Ok(Hub {
            pipeline,
            may_pass_through: false,
        })
    }

    /// Whether the source may deliver H.264 that is passed through as it is (a process that
    /// writes H.264; a V4L2 camera, which may offer it): then the stream's profile is known only
    /// from its SPS, once the pipeline runs ([`Hub::stream`]).
    pub fn may_pass_through(&self) -> bool {
        self.may_pass_through
    }

    /// Follows what the stream is: its encoder, profile and IDR period.
    pub fn stream(&self) -> watch::Receiver<StreamInfo> {
        self.pipeline.media().stream.subscribe()
    }

    /// Start watching: the pipeline runs while any subscription exists, and the next frame
    /// is a keyframe.
    pub fn subscribe(&self) -> Subscription {
        let feed = self.pipeline.subscribe();
        self.request_keyframe(KeyframeReason::Join);
        Subscription {
            feed,
            waiting_for_keyframe: true,
            max_backlog_age: None,
        }
    }

    /// The bitrate the shared encoder aims at from its next frame on (rate control, from the
    /// viewers' bandwidth estimates; [`crate::peer::bitrate`]).
    pub fn set_target_bitrate(&self, bps: u64) {
        self.pipeline
            .media()
            .target_bps
            .store(bps, Ordering::Relaxed);
    }

    pub fn request_keyframe(&self, reason: KeyframeReason) {
        lock(&self.pipeline.media().keyframes).request(reason);
    }

    /// A keyframe a viewer asked for on the data channel: requested (coalesced like a loss) if
    /// the device-wide budget allows, else how long until it would.
    pub fn request_keyframe_on_demand(&self, now: Instant) -> Result<(), Duration> {
        let mut budget = lock(&self.pipeline.media().on_demand);
        if budget.try_take(now) {
            drop(budget);
            self.request_keyframe(KeyframeReason::Loss);
            Ok(())
        } else {
            Err(budget.wait(now))
        }
    }

    /// Turns for viewers' blocking requests (snapshots, controls), shared by every viewer
    /// ([`REQUEST_WORKERS`]).
    pub fn request_workers(&self) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(&self.pipeline.media().request_workers)
    }

    /// Follows the pipeline's state.
    pub fn state(&self) -> tokio::sync::watch::Receiver<VideoState> {
        self.pipeline.state()
    }

    /// Frames captured and encoded, runs started, raw frames dropped.
    pub fn counters(&self) -> &pipeline::Counters {
        self.pipeline.counters()
    }

    /// Keyframes encoded so far, periodic ones included.
    pub fn keyframes(&self) -> u64 {
        self.pipeline
            .media()
            .keyframes_encoded
            .load(Ordering::Relaxed)
    }

    /// The source's picture controls (changes apply to every viewer).
    pub fn controls(&self) -> &Controls {
        &self.pipeline.media().controls
    }

    /// The newest frame that was encoded, while the pipeline runs.
    pub fn latest_frame(&self) -> Option<Arc<Frame>> {
        lock(&self.pipeline.media().latest).clone()
    }

    pub fn subscribers(&self) -> usize {
        self.pipeline.viewers()
    }

    /// How long ago the hub's supervisor thread last showed it is alive. It beats at least every
    /// second while it waits for viewers, runs the pipeline (including a stalled source, which it
    /// detects and reopens) or waits to retry; an encoder or source open that hangs stops the
    /// beats. The daemon feeds the systemd watchdog only while this is fresh.
    pub fn heartbeat_age(&self) -> Duration {
        self.pipeline.heartbeat_age()
    }

    /// Stop the pipeline thread (at process exit).
    pub fn shutdown(&self) {
        self.pipeline.shutdown();
    }
}

/// One viewer's feed of encoded frames.
pub struct Subscription {
    feed: pipeline::Subscription<Video>,
    waiting_for_keyframe: bool,
    /// See [`Subscription::resume`].
    max_backlog_age: Option<Duration>,
}

impl Subscription {
    /// Start from the frames this subscription has buffered since it was made (its first
    /// keyframe and those after it), so that a viewer gets its first picture without waiting for
    /// a new keyframe to be captured and encoded; unless that keyframe is older than `max_age`,
    /// in which case a fresh one is requested and the backlog skipped.
    pub fn resume(mut self, max_age: Duration) -> Self {
        self.max_backlog_age = Some(max_age);
        self
    }

    /// The next frame this viewer can decode. Frames before the first keyframe, and after a lag
    /// until the next keyframe, are skipped (a keyframe is requested at once). `None` when the
    /// hub has shut down.
    pub async fn recv(&mut self) -> Option<Arc<EncodedFrame>> {
        loop {
            match self.feed.recv().await? {
                Ok(frame) => {
                    if self.waiting_for_keyframe && !frame.keyframe {
                        continue;
                    }
                    if let Some(max_age) = self.max_backlog_age.take()
                        && frame.instant.elapsed() > max_age
                    {
                        debug!(
                            age_ms = frame.instant.elapsed().as_millis() as u64,
                            "backlog too old; waiting for a fresh keyframe"
                        );
                        self.waiting_for_keyframe = true;
                        self.request_keyframe(KeyframeReason::Join);
                        continue;
                    }
                    self.waiting_for_keyframe = false;
                    return Some(frame);
                }
                Err(skipped) => {
                    debug!(skipped, "viewer lagged; waiting for a keyframe");
                    self.waiting_for_keyframe = true;
                    self.request_keyframe(KeyframeReason::Loss);
                }
            }
        }
    }

    fn request_keyframe(&self, reason: KeyframeReason) {
        lock(&self.feed.media().keyframes).request(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// The heartbeat that feeds the systemd watchdog: it keeps coming while the hub thread
    /// waits for viewers, and stops when the pipeline hangs (here: a source open that never
    /// returns, like a wedged camera driver).
    #[test]
    fn the_heartbeat_stops_when_the_pipeline_hangs() {
        let (release, hang) = std::sync::mpsc::channel::<()>();
        let hang = Mutex::new(hang);
        let hub = Hub::with_opener(
            Box::new(move || {
                let _ = lock(&hang).recv();
                Err(VideoError::NotFound {
                    device: "released".into(),
                })
            }),
            500,
        )
        .unwrap();
        // Idle: the beat keeps coming (at least once a second) long after the hub started.
        thread::sleep(Duration::from_millis(2500));
        let idle_age = hub.heartbeat_age();
        assert!(
            idle_age < crate::service::HEARTBEAT_STALE,
            "idle heartbeat age {idle_age:?}"
        );

        let subscription = hub.subscribe();
        let start = Instant::now();
        while hub.heartbeat_age() < Duration::from_secs(3) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the heartbeat never stopped"
            );
            thread::sleep(Duration::from_millis(100));
        }
        // The source comes back (fails, here): the thread beats again.
        release.send(()).unwrap();
        drop(subscription);
        let start = Instant::now();
        while hub.heartbeat_age() >= Duration::from_secs(3) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the heartbeat never resumed"
            );
            thread::sleep(Duration::from_millis(50));
        }
        hub.shutdown();
    }

    fn pattern_hub() -> Hub {
        Hub::new(
            VideoSpec {
                source: "test".parse().unwrap(),
                width: 320,
                height: 240,
                fps: 30,
                ..Default::default()
            },
            500,
        )
        .unwrap()
    }

    fn recv(subscription: &mut Subscription) -> Arc<EncodedFrame> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), subscription.recv()).await
            })
            .expect("a frame within 10 s")
            .expect("the hub is running")
    }

    /// Subscribe, wait for the first keyframe and then `wait`, and resume with `max_age`: the
    /// hub, the first frame the resumed subscription gives (a keyframe) and the hand-over time.
    fn resume_after(wait: Duration, max_age: Duration) -> (Hub, Arc<EncodedFrame>, Instant) {
        let hub = pattern_hub();
        let warm = hub.subscribe();
        while hub.keyframes() == 0 {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(wait);
        let handed_over = Instant::now();
        let mut feed = warm.resume(max_age);
        let first = recv(&mut feed);
        assert!(first.keyframe);
        (hub, first, handed_over)
    }

    /// A subscription held since the answer hands its buffered keyframe to the viewer at once.
    #[test]
    fn a_resumed_subscription_starts_with_its_buffered_keyframe() {
        let (hub, first, handed_over) = resume_after(Duration::ZERO, Duration::from_secs(5));
        assert!(
            first.instant < handed_over,
            "the buffered keyframe, not a new one"
        );
        assert_eq!(hub.keyframes(), 1);
        hub.shutdown();
    }

    /// An old backlog is skipped: the viewer starts at a fresh keyframe instead.
    #[test]
    fn a_resumed_subscription_skips_an_old_backlog() {
        let (hub, first, handed_over) =
            resume_after(Duration::from_millis(150), Duration::from_millis(50));
        assert!(
            first.instant > handed_over,
            "a keyframe captured after the hand-over"
        );
        assert_eq!(hub.keyframes(), 2);
        hub.shutdown();
    }

    /// At shutdown every feed ends, and a subscription made after it ends at once.
    #[test]
    fn shutdown_ends_the_feeds() {
        let hub = pattern_hub();
        let mut feed = hub.subscribe();
        recv(&mut feed);
        hub.shutdown();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ended = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                while feed.recv().await.is_some() {}
                hub.subscribe().recv().await.is_none()
            })
            .await
        });
        assert_eq!(ended, Ok(true));
    }

    #[test]
    fn join_requests_are_served_at_the_next_frame() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        gate.encoded(t0, true);
        gate.request(KeyframeReason::Join);
        assert!(gate.should_force(t0 + Duration::from_millis(1)));
        assert!(!gate.should_force(t0 + Duration::from_millis(2)));
    }

    #[test]
    fn bursts_of_loss_requests_make_one_keyframe() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        for _ in 0..10 {
            gate.request(KeyframeReason::Loss);
        }
        assert!(gate.should_force(t0));
        gate.encoded(t0, true);
        // More requests right after the keyframe wait for the interval.
        gate.request(KeyframeReason::Loss);
        gate.request(KeyframeReason::Loss);
        assert!(!gate.should_force(t0 + Duration::from_millis(33)));
        assert!(!gate.should_force(t0 + Duration::from_millis(200)));
        assert!(gate.should_force(t0 + Duration::from_millis(260)));
        assert!(!gate.should_force(t0 + Duration::from_millis(300)));
        assert_eq!(gate.requests, 12);
    }

    #[test]
    fn a_periodic_keyframe_answers_a_pending_loss_request() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::default();
        gate.encoded(t0, true);
        gate.request(KeyframeReason::Loss);
        assert!(!gate.should_force(t0 + Duration::from_millis(100)));
        gate.encoded(t0 + Duration::from_millis(100), true);
        assert!(!gate.should_force(t0 + Duration::from_millis(400)));
    }
}
