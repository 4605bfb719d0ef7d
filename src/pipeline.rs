//! The on-demand pipeline: one source and one encoder, run while anyone watches, their output
//! shared by every viewer. The video hub (`video::hub`) and the audio hub
//! (`audio::hub`) are both this pipeline; each says through [`Media`] how a run opens
//! and how it encodes what it captures.
//!
//! A supervisor thread waits for the first [`Subscription`], opens the source and the encoder,
//! and runs them until the last subscription is dropped. The source runs on a capture thread of
//! its own and hands what it captures over a short queue that drops the oldest when the encoder
//! is behind; the supervisor encodes and fans the output out through a bounded broadcast channel
//! that drops the oldest for a viewer that lags, so a slow viewer never delays the others or
//! builds up latency. A source that fails, or delivers nothing for [`Policy::stall_after`], is
//! closed and reopened after a back-off for as long as viewers remain.
//!
//! The supervisor beats a heartbeat at least every second while it waits for viewers, runs a
//! source (a stalled one included: it detects the stall) or waits to retry; only a source open or
//! an encoder that hangs stops the beats ([`Pipeline::heartbeat_age`]).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tracing::info;

/// The supervisor beats at least this often while it is healthy, idle or not.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long the supervisor waits on an empty queue before it looks up (to beat, to notice that
/// the viewers left or that the source stalled).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long the supervisor beats while it waits for the capture thread to end a run (beyond it,
/// a capture that does not return stops the beats, as a hang should).
const JOIN_BEATING: Duration = Duration::from_secs(15);

/// What a pipeline is doing, for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Nobody watches: nothing is captured.
    Idle,
    /// Output flows.
    Live,
    /// The source or the encoder failed; retrying. The text says why.
    Lost(String),
}

/// The figures in which one kind of media differs from another.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// What the log calls a run: `capture started: …`, `audio capture stopped: …`.
    pub name: &'static str,
    /// What the source delivers, for the stall message: `no frame for 2 s`.
    pub item: &'static str,
    /// Names of the supervisor thread and the capture thread.
    pub threads: (&'static str, &'static str),
    /// How many outputs a viewer may lag behind before it loses the oldest.
    pub fanout_depth: usize,
    /// How many captured items wait for the encoder before the oldest is dropped.
    pub queue_depth: usize,
    /// Waits before reopening a source that failed: doubling from the first to the second, and
    /// back to the first after a run that delivered.
    pub reopen_delay: (Duration, Duration),
    /// A source that delivers nothing for this long has stalled: it is closed and reopened.
    pub stall_after: Duration,
}

/// What one kind of media plugs into a [`Pipeline`].
pub trait Media: Send + Sync + Sized + 'static {
    /// What the source captures: a raw picture, 20 ms of sound.
    type Raw: Send + 'static;
    /// What viewers receive: an H.264 access unit, an Opus packet.
    type Out: Send + Sync + 'static;
    /// Why a source or an encoder failed.
    type Error: std::error::Error + Send + 'static;
    /// What encodes, for the length of one run.
    type Encoder;

    const POLICY: Policy;

    /// Open the source and the encoder (each time the first viewer comes, and to retry).
    fn start(&self) -> Result<Run<Self>, Self::Error>;
    /// Encode one captured item; `None` when nothing came out of it.
    fn encode(
        &self,
        encoder: &mut Self::Encoder,
        raw: Self::Raw,
    ) -> Result<Option<Self::Out>, Self::Error>;
    /// A run started: the source and the encoder are open.
    fn started(&self) {}
    /// A run ended, cleanly or not: drop whatever it kept for others.
    fn stopped(&self) {}
    /// A run failed; the pipeline retries in `retry_in` while viewers remain. Say so.
    fn lost(&self, error: &RunError<Self::Error>, retry_in: Duration);
}

/// The source's side of one run: blocks until the next item, paced by the source.
pub type Capture<M> =
    Box<dyn FnMut() -> Result<<M as Media>::Raw, <M as Media>::Error> + Send + 'static>;

/// One run of a pipeline, as [`Media::start`] opens it.
pub struct Run<M: Media> {
    /// What runs, for the log: `/dev/video0 MJPG 1280x720@30`.
    pub description: String,
    /// Runs on the capture thread.
    pub capture: Capture<M>,
    /// Runs on the supervisor thread.
    pub encoder: M::Encoder,
    /// How much longer than [`Policy::stall_after`] the first item may take (a source that
    /// starts a process, which first starts a camera).
    pub startup: Duration,
}

/// Why a run ended before the viewers left.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    #[error(transparent)]
    Media(E),
    #[error("{description}: no {item} for {secs} s, the source stalled")]
    Stalled {
        description: String,
        item: &'static str,
        secs: u64,
    },
    #[error("{description}: cannot start the capture thread: {error}")]
    Thread {
        description: String,
        error: io::Error,
    },
}

/// Figures about one pipeline, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Runs started (sources opened).
    pub starts: AtomicU64,
    /// Items the encoder took from the source.
    pub captured: AtomicU64,
    /// Outputs sent to the viewers.
    pub produced: AtomicU64,
    /// Captured items dropped because the encoder was behind.
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Demand {
    viewers: usize,
    shutdown: bool,
}

struct Shared<M: Media> {
    media: M,
    demand: Mutex<Demand>,
    wake: Condvar,
    /// Taken at shutdown, which ends every subscription.
    out: Mutex<Option<broadcast::Sender<Arc<M::Out>>>>,
    state: watch::Sender<State>,
    counters: Counters,
    /// When the supervisor last showed it is alive: milliseconds since `epoch`.
    heartbeat_ms: AtomicU64,
    epoch: Instant,
}

/// Handle to one shared pipeline. Cloning is cheap.
pub struct Pipeline<M: Media> {
    shared: Arc<Shared<M>>,
}

impl<M: Media> Clone for Pipeline<M> {
    fn clone(&self) -> Self {
        Pipeline {
            shared: Arc::clone(&self.shared),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<M: Media> Pipeline<M> {
    /// Start the supervisor thread; nothing is opened until the first subscription.
    pub fn start(media: M) -> io::Result<Self> {
        let (out, _) = broadcast::channel(M::POLICY.fanout_depth);
        let shared = Arc::new(Shared {
            media,
            demand: Mutex::new(Demand::default()),
            wake: Condvar::new(),
            out: Mutex::new(Some(out)),
            state: watch::channel(State::Idle).0,
            counters: Counters::default(),
            heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let worker = Arc::clone(&shared);
        thread::Builder::new()
            .name(M::POLICY.threads.0.into())
            .spawn(move || supervise(&worker))?;
        Ok(Pipeline { shared })
    }

    /// Start watching: the pipeline runs while any subscription exists.
    pub fn subscribe(&self) -> Subscription<M> {
        let rx = match &*lock(&self.shared.out) {
            Some(out) => out.subscribe(),
            // Shut down: a feed that has ended.
            None => broadcast::channel(1).1,
        };
        lock(&self.shared.demand).viewers += 1;
        self.shared.wake.notify_all();
        Subscription {
            rx,
            shared: Arc::clone(&self.shared),
        }
    }

    /// The media's own half.
    pub fn media(&self) -> &M {
        &self.shared.media
    }

    /// Follows the pipeline's state.
    pub fn state(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Subscriptions that exist now.
    pub fn viewers(&self) -> usize {
        lock(&self.shared.demand).viewers
    }

    /// How long ago the supervisor last showed it is alive (see the module's comment).
    pub fn heartbeat_age(&self) -> Duration {
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let then = self.shared.heartbeat_ms.load(Ordering::Relaxed);
        Duration::from_millis(now.saturating_sub(then))
    }

    /// Stop the supervisor (at process exit) and end every subscription's feed.
    pub fn shutdown(&self) {
        lock(&self.shared.demand).shutdown = true;
        lock(&self.shared.out).take();
        self.shared.wake.notify_all();
    }
}

/// One viewer's feed. The pipeline runs while any exists.
pub struct Subscription<M: Media> {
    rx: broadcast::Receiver<Arc<M::Out>>,
    shared: Arc<Shared<M>>,
}

impl<M: Media> Subscription<M> {
    /// The next output, or `Err(n)` when this viewer lagged and lost the `n` oldest. `None`
    /// once the pipeline has shut down.
    pub async fn recv(&mut self) -> Option<Result<Arc<M::Out>, u64>> {
        match self.rx.recv().await {
            Ok(out) => Some(Ok(out)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The media's own half.
    pub fn media(&self) -> &M {
        &self.shared.media
    }
}

impl<M: Media> Drop for Subscription<M> {
    fn drop(&mut self) {
        let mut demand = lock(&self.shared.demand);
        demand.viewers = demand.viewers.saturating_sub(1);
        drop(demand);
        self.shared.wake.notify_all();
    }
}

impl<M: Media> Shared<M> {
    fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    fn wanted(&self) -> bool {
        let demand = lock(&self.demand);
        demand.viewers > 0 && !demand.shutdown
    }

    /// Wait, beating, until someone watches. False at shutdown.
    fn wait_for_viewers(&self) -> bool {
        self.beat();
        let mut demand = lock(&self.demand);
        while demand.viewers == 0 && !demand.shutdown {
            demand = self
                .wake
                .wait_timeout(demand, HEARTBEAT_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            self.beat();
        }
        !demand.shutdown
    }

    /// Wait `delay` before a retry, but wake early when everyone left or at shutdown. True
    /// when viewers remain.
    fn wait_to_retry(&self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        let mut demand = lock(&self.demand);
        loop {
            self.beat();
            let now = Instant::now();
            if demand.viewers == 0 || demand.shutdown || now >= deadline {
                return demand.viewers > 0;
            }
            let wait = (deadline - now).min(HEARTBEAT_EVERY);
            demand = self
                .wake
                .wait_timeout(demand, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn send(&self, out: M::Out) {
        if let Some(sender) = &*lock(&self.out) {
            // No receivers is fine: viewers may be between joining and leaving.
            let _ = sender.send(Arc::new(out));
        }
    }
}

/// The supervisor thread: waits for viewers, runs the pipeline while there are any, retries
/// after a failure.
fn supervise<M: Media>(shared: &Shared<M>) {
    let (first_delay, last_delay) = M::POLICY.reopen_delay;
    let mut delay = first_delay;
    while shared.wait_for_viewers() {
        match run(shared) {
            Ok(()) => {
                delay = first_delay;
                shared.state.send_replace(State::Idle);
            }
            Err((err, delivered)) => {
                if delivered {
                    delay = first_delay;
                }
                shared.media.lost(&err, delay);
                shared.state.send_replace(State::Lost(err.to_string()));
                if !shared.wait_to_retry(delay) {
                    shared.state.send_replace(State::Idle);
                }
                delay = (delay * 2).min(last_delay);
            }
        }
    }
}

/// Capture and encode until no viewer is left. Returns an error when the source or the encoder
/// fails, with whether anything was delivered before it did.
fn run<M: Media>(shared: &Shared<M>) -> Result<(), (RunError<M::Error>, bool)> {
    let policy = M::POLICY;
    let Run {
        description,
        mut capture,
        mut encoder,
        startup,
    } = shared
        .media
        .start()
        .map_err(|e| (RunError::Media(e), false))?;
    info!("{} started: {description}", policy.name);
    shared.counters.starts.fetch_add(1, Ordering::Relaxed);
    shared.media.started();

    let queue = Arc::new(Queue::new(policy.queue_depth));
    let stop = Arc::new(AtomicBool::new(false));
    let capture_thread = {
        let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
        thread::Builder::new()
            .name(policy.threads.1.into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let item = capture();
                    let failed = item.is_err();
                    queue.put(item);
                    if failed {
                        return;
                    }
                }
            })
    };

    let mut delivered = false;
    let result = match capture_thread {
        Err(error) => Err(RunError::Thread {
            description: description.clone(),
            error,
        }),
        Ok(handle) => {
            let result = pump(
                shared,
                &queue,
                &description,
                &mut encoder,
                &mut delivered,
                startup,
            );
            stop.store(true, Ordering::Relaxed);
            if matches!(result, Err(RunError::Stalled { .. })) {
                // The capture thread is stuck in the source; it ends (and closes the source)
                // when the read returns. Waiting for it here would stall the retry.
                drop(handle);
            } else {
                // The source's read in progress returns within its own timeout (a camera's
                // stall limit, a process's start-up); beat meanwhile, up to a bound.
                let until = Instant::now() + JOIN_BEATING;
                while !handle.is_finished() && Instant::now() < until {
                    shared.beat();
                    thread::sleep(Duration::from_millis(5));
                }
                let _ = handle.join();
            }
            result
        }
    };
    shared
        .counters
        .dropped
        .fetch_add(queue.dropped(), Ordering::Relaxed);
    info!("{} stopped: {description}", policy.name);
    shared.media.stopped();
    drop(encoder);
    release_freed_memory();
    result.map_err(|e| (e, delivered))
}

/// Take what the source captured, encode it and send it on, until no viewer is left or the
/// source fails, stalls, or the encoder fails. Sets `delivered` at the first captured item.
fn pump<M: Media>(
    shared: &Shared<M>,
    queue: &Queue<M::Raw, M::Error>,
    description: &str,
    encoder: &mut M::Encoder,
    delivered: &mut bool,
    startup: Duration,
) -> Result<(), RunError<M::Error>> {
    let policy = M::POLICY;
    let mut last_item = Instant::now();
    // The first item may take `startup` longer.
    let mut stall_after = policy.stall_after + startup;
    while shared.wanted() {
        shared.beat();
        let Some(item) = queue.take(POLL_EVERY) else {
            if last_item.elapsed() >= stall_after {
                return Err(RunError::Stalled {
                    description: description.to_string(),
                    item: policy.item,
                    secs: stall_after.as_secs(),
                });
            }
            continue;
        };
        let raw = item.map_err(RunError::Media)?;
        last_item = Instant::now();
        stall_after = policy.stall_after;
        if !*delivered {
            *delivered = true;
            shared.state.send_replace(State::Live);
        }
        shared.counters.captured.fetch_add(1, Ordering::Relaxed);
        if let Some(out) = shared.media.encode(encoder, raw).map_err(RunError::Media)? {
            shared.counters.produced.fetch_add(1, Ordering::Relaxed);
            shared.send(out);
        }
    }
    Ok(())
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

/// The queue between the capture thread and the encoder: at most `depth` items, a new one
/// pushing out the oldest. An error ends the capture, so it is never pushed out.
struct Queue<T, E> {
    items: Mutex<(VecDeque<Result<T, E>>, u64)>,
    ready: Condvar,
    depth: usize,
}

impl<T, E> Queue<T, E> {
    fn new(depth: usize) -> Self {
        Queue {
            items: Mutex::new((VecDeque::with_capacity(depth), 0)),
            ready: Condvar::new(),
            depth: depth.max(1),
        }
    }

    fn put(&self, item: Result<T, E>) {
        let mut items = lock(&self.items);
        if matches!(items.0.back(), Some(Err(_))) {
            return;
        }
        if items.0.len() >= self.depth {
            items.0.pop_front();
            items.1 += 1;
        }
        items.0.push_back(item);
        drop(items);
        self.ready.notify_one();
    }

    fn take(&self, timeout: Duration) -> Option<Result<T, E>> {
        let items = lock(&self.items);
        let (mut items, _) = self
            .ready
            .wait_timeout_while(items, timeout, |i| i.0.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        items.0.pop_front()
    }

    /// Items pushed out so far.
    fn dropped(&self) -> u64 {
        lock(&self.items).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_of_one_keeps_only_the_newest() {
        let queue: Queue<u32, ()> = Queue::new(1);
        queue.put(Ok(2));
        queue.put(Ok(4));
        queue.put(Ok(6));
        assert_eq!(queue.take(Duration::from_millis(1)), Some(Ok(6)));
        assert_eq!(queue.dropped(), 2);
        assert!(queue.take(Duration::from_millis(1)).is_none());
    }

    #[test]
    fn a_deeper_queue_keeps_order_and_an_error_stays_last() {
        let queue: Queue<u32, &str> = Queue::new(3);
        for n in 1..=4 {
            queue.put(Ok(n));
        }
        queue.put(Err("gone"));
        queue.put(Ok(9));
        let taken: Vec<_> = std::iter::from_fn(|| queue.take(Duration::from_millis(1))).collect();
        assert_eq!(taken, [Ok(3), Ok(4), Err("gone")]);
        assert_eq!(queue.dropped(), 2);
    }
}
