//! The hub: one capture and one encoder per stream, shared by every viewer.
//!
//! Capture and encoding run only while at least one [`Subscription`] exists. A capture thread
//! drops the oldest raw frame when the encoder is behind (a one-slot mailbox), and encoded frames
//! fan out through a bounded broadcast channel that drops the oldest for a viewer that lags, so a
//! slow viewer never delays the others or builds up latency. Keyframe requests from any viewer go
//! through a [`KeyframeGate`] that coalesces bursts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::{debug, info, warn};

pub use crate::video::SourceOpener;
use crate::video::controls::Controls;
use crate::video::encode::{self, EncodedFrame};
use crate::video::{Frame, VideoError, VideoSource, VideoSpec};

/// How many encoded frames a viewer may lag behind before it loses the oldest.
const FANOUT_DEPTH: usize = 8;
/// Requests from viewers that lost pictures are served at most this often.
const MIN_LOSS_KEYFRAME_INTERVAL: Duration = Duration::from_millis(250);
/// Waits before reopening a source that failed: doubling from the first to the last.
const REOPEN_DELAY_MIN: Duration = Duration::from_millis(250);
const REOPEN_DELAY_MAX: Duration = Duration::from_secs(1);
/// A source that delivers nothing for this long has stalled: it is closed and reopened.
const STALL_AFTER: Duration = Duration::from_secs(2);
/// The hub thread beats at least this often while it is healthy, idle or not (see [`Hub::heartbeat_age`]).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// What the video pipeline is doing, for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoState {
    /// Nobody watches: nothing is captured.
    Idle,
    /// Frames flow.
    Live,
    /// Capture failed; retrying. The text says why.
    Lost(String),
}

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

/// Figures about the shared pipeline, for status, tests and benchmarks.
#[derive(Debug, Default)]
pub struct HubCounters {
    pub pipeline_starts: AtomicU64,
    pub frames_captured: AtomicU64,
    pub frames_encoded: AtomicU64,
    pub keyframes: AtomicU64,
    pub raw_frames_dropped: AtomicU64,
}

struct Inner {
    opener: SourceOpener,
    bitrate_kbps: u32,
    viewers: Mutex<Control>,
    wake: Condvar,
    frames: broadcast::Sender<Arc<EncodedFrame>>,
    keyframes: Mutex<KeyframeGate>,
    counters: HubCounters,
    state: tokio::sync::watch::Sender<VideoState>,
    /// The source's picture controls.
    controls: Controls,
    /// The newest raw frame that was encoded, for snapshots; `None` while idle.
    latest: Mutex<Option<Arc<Frame>>>,
    /// When the hub thread last showed it is alive: milliseconds since `epoch`.
    heartbeat_ms: AtomicU64,
    epoch: Instant,
}

impl Inner {
    fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Control {
    viewers: usize,
    shutdown: bool,
}

/// Handle to the shared pipeline. Cloning is cheap.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub over the source that `spec` names.
    pub fn new(spec: VideoSpec, bitrate_kbps: u32) -> Hub {
        let (controls, opener) = spec.prepare();
        Hub::with_controls(opener, bitrate_kbps, controls)
    }

    pub fn with_opener(opener: SourceOpener, bitrate_kbps: u32) -> Hub {
        Hub::with_controls(opener, bitrate_kbps, Controls::none())
    }

    /// A hub whose source follows `controls` (the opener must give them to the source).
    pub fn with_controls(opener: SourceOpener, bitrate_kbps: u32, controls: Controls) -> Hub {
        let (frames, _) = broadcast::channel(FANOUT_DEPTH);
        let inner = Arc::new(Inner {
            opener,
            bitrate_kbps,
            viewers: Mutex::new(Control::default()),
            wake: Condvar::new(),
            frames,
            keyframes: Mutex::new(KeyframeGate::default()),
            counters: HubCounters::default(),
            state: tokio::sync::watch::channel(VideoState::Idle).0,
            controls,
            latest: Mutex::new(None),
            heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let worker = Arc::clone(&inner);
        thread::Builder::new()
            .name("hub".into())
            .spawn(move || supervise(&worker))
            .expect("spawning the hub thread");
        Hub { inner }
    }

    /// Start watching: the pipeline runs while any subscription exists, and the next frame
    /// is a keyframe.
    pub fn subscribe(&self) -> Subscription {
        let rx = self.inner.frames.subscribe();
        {
            let mut c = lock(&self.inner.viewers);
            c.viewers += 1;
        }
        self.inner.wake.notify_all();
        self.request_keyframe(KeyframeReason::Join);
        Subscription {
            rx,
            inner: Arc::clone(&self.inner),
            waiting_for_keyframe: true,
            max_backlog_age: None,
        }
    }

    pub fn request_keyframe(&self, reason: KeyframeReason) {
        lock(&self.inner.keyframes).request(reason);
    }

    /// Follows the pipeline's state.
    pub fn state(&self) -> tokio::sync::watch::Receiver<VideoState> {
        self.inner.state.subscribe()
    }

    pub fn counters(&self) -> &HubCounters {
        &self.inner.counters
    }

    /// The source's picture controls (changes apply to every viewer).
    pub fn controls(&self) -> &Controls {
        &self.inner.controls
    }

    /// The newest frame that was encoded, while the pipeline runs.
    pub fn latest_frame(&self) -> Option<Arc<Frame>> {
        lock(&self.inner.latest).clone()
    }

    pub fn subscribers(&self) -> usize {
        lock(&self.inner.viewers).viewers
    }

    /// How long ago the hub thread last showed it is alive. It beats at least every second
    /// while it waits for viewers, runs the pipeline (including a stalled source, which it
    /// detects and reopens) or waits to retry; an encoder or source open that hangs stops the
    /// beats. The daemon feeds the systemd watchdog only while this is fresh.
    pub fn heartbeat_age(&self) -> Duration {
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.inner.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// Stop the pipeline thread (at process exit).
    pub fn shutdown(&self) {
        lock(&self.inner.viewers).shutdown = true;
        self.inner.wake.notify_all();
    }
}

/// One viewer's feed of encoded frames.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<EncodedFrame>>,
    inner: Arc<Inner>,
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
            match self.rx.recv().await {
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
                        lock(&self.inner.keyframes).request(KeyframeReason::Join);
                        continue;
                    }
                    self.waiting_for_keyframe = false;
                    return Some(frame);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(skipped = n, "viewer lagged; waiting for a keyframe");
                    self.waiting_for_keyframe = true;
                    lock(&self.inner.keyframes).request(KeyframeReason::Loss);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut c = lock(&self.inner.viewers);
        c.viewers = c.viewers.saturating_sub(1);
        drop(c);
        self.inner.wake.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The hub thread: waits for viewers, runs the pipeline while there are any.
fn supervise(inner: &Inner) {
    let mut delay = REOPEN_DELAY_MIN;
    loop {
        inner.beat();
        {
            let mut c = lock(&inner.viewers);
            while c.viewers == 0 && !c.shutdown {
                c = inner
                    .wake
                    .wait_timeout(c, HEARTBEAT_EVERY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                inner.beat();
            }
            if c.shutdown {
                return;
            }
        }
        match run_pipeline(inner) {
            Ok(()) => {
                delay = REOPEN_DELAY_MIN;
                inner.state.send_replace(VideoState::Idle);
            }
            Err((err, delivered)) => {
                warn!("video lost: {err}; retrying in {} ms", delay.as_millis());
                inner.state.send_replace(VideoState::Lost(err.to_string()));
                if delivered {
                    delay = REOPEN_DELAY_MIN;
                }
                // Wait before retrying, but wake early if everyone left or we are shutting down.
                // (The delay is at most REOPEN_DELAY_MAX, one heartbeat interval.)
                inner.beat();
                let c = lock(&inner.viewers);
                let (c, _) = inner
                    .wake
                    .wait_timeout_while(c, delay, |c| c.viewers > 0 && !c.shutdown)
                    .unwrap_or_else(|p| p.into_inner());
                if c.viewers == 0 {
                    inner.state.send_replace(VideoState::Idle);
                }
                delay = (delay * 2).min(REOPEN_DELAY_MAX);
            }
        }
    }
}

fn wanted(inner: &Inner) -> bool {
    let c = lock(&inner.viewers);
    c.viewers > 0 && !c.shutdown
}

#[derive(Debug, thiserror::Error)]
enum PipelineError {
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Encode(#[from] crate::video::encode::EncodeError),
    #[error("{0}: no frame for {secs} s, the source stalled", secs = STALL_AFTER.as_secs())]
    Stalled(String),
}

/// Capture and encode until no viewer is left. Returns an error when the source or encoder
/// fails, with whether any frame was delivered before it did.
fn run_pipeline(inner: &Inner) -> Result<(), (PipelineError, bool)> {
    let source = (inner.opener)().map_err(|e| (e.into(), false))?;
    let format = source.format().clone();
    info!("capture started: {}", format.description);
    inner
        .counters
        .pipeline_starts
        .fetch_add(1, Ordering::Relaxed);
    let mut encoder = encode::open(&format, inner.bitrate_kbps).map_err(|e| (e.into(), false))?;

    let mailbox = Arc::new(Mailbox::default());
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let mailbox = Arc::clone(&mailbox);
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("capture".into())
            .spawn(move || capture_loop(source, &mailbox, &stop))
            .expect("spawning the capture thread")
    };

    let mut delivered = false;
    let mut last_frame = Instant::now();
    let result = (|| {
        while wanted(inner) {
            inner.beat();
            let Some(item) = mailbox.take(Duration::from_millis(100)) else {
                if last_frame.elapsed() >= STALL_AFTER {
                    return Err(PipelineError::Stalled(format.description.clone()));
                }
                continue;
            };
            let frame = item?;
            last_frame = Instant::now();
            if !delivered {
                delivered = true;
                inner.state.send_replace(VideoState::Live);
            }
            inner
                .counters
                .frames_captured
                .fetch_add(1, Ordering::Relaxed);
            let force = lock(&inner.keyframes).should_force(Instant::now());
            if let Some(encoded) = encoder.encode(&frame, force)? {
                lock(&inner.keyframes).encoded(Instant::now(), encoded.keyframe);
                inner
                    .counters
                    .frames_encoded
                    .fetch_add(1, Ordering::Relaxed);
                if encoded.keyframe {
                    inner.counters.keyframes.fetch_add(1, Ordering::Relaxed);
                }
                // No receivers is fine: viewers may be between frames of joining and leaving.
                let _ = inner.frames.send(Arc::new(encoded));
            }
            *lock(&inner.latest) = Some(Arc::new(frame));
        }
        Ok(())
    })();

    stop.store(true, Ordering::Relaxed);
    if matches!(result, Err(PipelineError::Stalled(_))) {
        // The capture thread is stuck in the source; it ends (and closes the source) when the
        // read returns. Waiting for it here would stall the retry.
        drop(capture);
    } else {
        let _ = capture.join();
    }
    inner
        .counters
        .raw_frames_dropped
        .fetch_add(mailbox.dropped(), Ordering::Relaxed);
    info!("capture stopped: {}", format.description);
    lock(&inner.latest).take();
    drop(encoder);
    release_freed_memory();
    result.map_err(|e| (e, delivered))
}

/// Hand memory freed by a stopped pipeline (encoder buffers, frames) back to the system.
/// glibc keeps freed memory in per-thread arenas; without this an idle daemon stays as large as
/// its busiest moment.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn capture_loop(mut source: Box<dyn VideoSource>, mailbox: &Mailbox, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let item = source.next_frame();
        let failed = item.is_err();
        mailbox.put(item);
        if failed {
            return;
        }
    }
}

/// A one-slot queue between capture and encoder: a new frame replaces an unread one.
#[derive(Default)]
struct Mailbox {
    slot: Mutex<(Option<Result<Frame, VideoError>>, u64)>,
    ready: Condvar,
}

impl Mailbox {
    fn put(&self, item: Result<Frame, VideoError>) {
        let mut slot = lock(&self.slot);
        if matches!(slot.0, Some(Ok(_))) {
            slot.1 += 1;
        }
        // An error is never overwritten by a later frame.
        if !matches!(slot.0, Some(Err(_))) {
            slot.0 = Some(item);
        }
        drop(slot);
        self.ready.notify_one();
    }

    fn take(&self, timeout: Duration) -> Option<Result<Frame, VideoError>> {
        let slot = lock(&self.slot);
        let (mut slot, _) = self
            .ready
            .wait_timeout_while(slot, timeout, |s| s.0.is_none())
            .unwrap_or_else(|p| p.into_inner());
        slot.0.take()
    }

    fn dropped(&self) -> u64 {
        lock(&self.slot).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        );
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
            },
            500,
        )
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
        while hub.counters().keyframes.load(Ordering::Relaxed) == 0 {
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
        assert_eq!(hub.counters().keyframes.load(Ordering::Relaxed), 1);
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
        assert_eq!(hub.counters().keyframes.load(Ordering::Relaxed), 2);
        hub.shutdown();
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

    #[test]
    fn mailbox_keeps_only_the_newest_frame() {
        let mb = Mailbox::default();
        let frame = |w| Frame {
            width: w,
            height: 2,
            data: vec![0; Frame::i420_len(w, 2)],
            captured_at: std::time::SystemTime::now(),
            instant: Instant::now(),
        };
        mb.put(Ok(frame(2)));
        mb.put(Ok(frame(4)));
        mb.put(Ok(frame(6)));
        let got = mb.take(Duration::from_millis(1)).unwrap().unwrap();
        assert_eq!(got.width, 6);
        assert_eq!(mb.dropped(), 2);
        assert!(mb.take(Duration::from_millis(1)).is_none());
    }
}
