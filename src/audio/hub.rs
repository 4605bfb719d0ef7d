//! The audio hub: one capture and one Opus encoder, shared by every viewer that takes audio.
//!
//! Like the video hub, capture runs only while at least one [`AudioSubscription`] exists, and
//! encoded packets fan out through a bounded broadcast channel that drops the oldest for a viewer
//! that lags. A source that fails (a USB microphone unplugged) never touches the video: the hub
//! says so through [`AudioHub::running`] and reopens the source every second while viewers remain.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::{AudioError, AudioPlan, AudioSource, CHUNK_FRAMES, SAMPLE_RATE};

/// How many packets (20 ms each) a viewer may lag behind before it loses the oldest.
const FANOUT_DEPTH: usize = 16;
/// Wait before reopening a source that failed.
const REOPEN_DELAY: Duration = Duration::from_secs(1);
/// Opus bitrate per channel.
const BITRATE_PER_CHANNEL: i32 = 32_000;
/// Expected loss that in-band FEC is tuned for.
const FEC_LOSS_PERCENT: i32 = 10;

/// One Opus packet: 20 ms of sound.
#[derive(Debug, Clone)]
pub struct AudioPacket {
    pub data: Bytes,
    /// Monotonic capture time of the first sample: the clock video frames use too.
    pub instant: Instant,
    pub captured_at: SystemTime,
}

/// Opens the source each time capture starts.
pub type AudioOpener = Box<dyn Fn() -> Result<Box<dyn AudioSource>, AudioError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
enum PipelineError {
    #[error(transparent)]
    Source(#[from] AudioError),
    #[error("Opus encoder: {0}")]
    Encode(#[from] opus::Error),
}

#[derive(Default)]
struct Control {
    viewers: usize,
    shutdown: bool,
}

struct Inner {
    opener: AudioOpener,
    channels: u16,
    control: Mutex<Control>,
    wake: Condvar,
    packets: broadcast::Sender<Arc<AudioPacket>>,
    running: watch::Sender<bool>,
    /// Capture → encoded, smoothed, in microseconds.
    latency_us: AtomicU64,
    pipeline_starts: AtomicU64,
    packets_encoded: AtomicU64,
    stop: AtomicBool,
}

/// Handle to the shared audio pipeline. Cloning is cheap.
#[derive(Clone)]
pub struct AudioHub {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AudioHub {
    /// A hub over the source the plan names.
    pub fn new(plan: AudioPlan) -> AudioHub {
        let AudioPlan { source, channels } = plan;
        AudioHub::with_opener(Box::new(move || source.open(channels)), channels)
    }

    pub fn with_opener(opener: AudioOpener, channels: u16) -> AudioHub {
        let (packets, _) = broadcast::channel(FANOUT_DEPTH);
        let (running, _) = watch::channel(true);
        let inner = Arc::new(Inner {
            opener,
            channels,
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            packets,
            running,
            latency_us: AtomicU64::new(0),
            pipeline_starts: AtomicU64::new(0),
            packets_encoded: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let worker = Arc::clone(&inner);
        thread::Builder::new()
            .name("audio-hub".into())
            .spawn(move || supervise(&worker))
            .expect("spawning the audio hub thread");
        AudioHub { inner }
    }

    pub fn channels(&self) -> u16 {
        self.inner.channels
    }

    /// Start listening: capture runs while any subscription exists.
    pub fn subscribe(&self) -> AudioSubscription {
        let rx = self.inner.packets.subscribe();
        lock(&self.inner.control).viewers += 1;
        self.inner.wake.notify_all();
        AudioSubscription {
            rx,
            inner: Arc::clone(&self.inner),
        }
    }

    /// `false` while the source has failed and is being reopened.
    pub fn running(&self) -> watch::Receiver<bool> {
        self.inner.running.subscribe()
    }

    /// How long after capture a packet is ready to send (smoothed), plus the encoder's
    /// look-ahead (which a decoder's output lags by). Video is held back by the difference, so
    /// that both reach the viewer as long after capture: see `peer::session`.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.inner.latency_us.load(Ordering::Relaxed))
    }

    pub fn pipeline_starts(&self) -> u64 {
        self.inner.pipeline_starts.load(Ordering::Relaxed)
    }

    pub fn packets_encoded(&self) -> u64 {
        self.inner.packets_encoded.load(Ordering::Relaxed)
    }

    /// Stop the hub thread (at process exit).
    pub fn shutdown(&self) {
        lock(&self.inner.control).shutdown = true;
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.wake.notify_all();
    }
}

/// One viewer's feed of Opus packets.
pub struct AudioSubscription {
    rx: broadcast::Receiver<Arc<AudioPacket>>,
    inner: Arc<Inner>,
}

impl AudioSubscription {
    /// The next packet; packets lost to lag are skipped (the next one's capture time shows the
    /// gap). `None` when the hub has shut down.
    pub async fn recv(&mut self) -> Option<Arc<AudioPacket>> {
        loop {
            match self.rx.recv().await {
                Ok(packet) => return Some(packet),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for AudioSubscription {
    fn drop(&mut self) {
        let mut c = lock(&self.inner.control);
        c.viewers = c.viewers.saturating_sub(1);
        drop(c);
        self.inner.wake.notify_all();
    }
}

fn wanted(inner: &Inner) -> bool {
    let c = lock(&inner.control);
    c.viewers > 0 && !c.shutdown
}

fn supervise(inner: &Inner) {
    loop {
        {
            let mut c = lock(&inner.control);
            while c.viewers == 0 && !c.shutdown {
                c = inner.wake.wait(c).unwrap_or_else(|p| p.into_inner());
            }
            if c.shutdown {
                return;
            }
        }
        match run_pipeline(inner) {
            Ok(()) => {}
            Err(err) => {
                warn!("audio lost, video goes on; retrying every {REOPEN_DELAY:?}: {err}");
                inner.running.send_replace(false);
                let c = lock(&inner.control);
                let _ = inner
                    .wake
                    .wait_timeout_while(c, REOPEN_DELAY, |c| c.viewers > 0 && !c.shutdown);
            }
        }
    }
}

/// The Opus encoder the hub uses (20 ms packets, in-band FEC), and its look-ahead in
/// microseconds (a decoder's output lags the input by that much). Also used by `selftest`.
pub fn new_encoder(channels: u16) -> Result<(opus::Encoder, u64), opus::Error> {
    let opus_channels = match channels {
        1 => opus::Channels::Mono,
        _ => opus::Channels::Stereo,
    };
    let mut encoder = opus::Encoder::new(SAMPLE_RATE, opus_channels, opus::Application::Voip)?;
    encoder.set_bitrate(opus::Bitrate::Bits(
        BITRATE_PER_CHANNEL * i32::from(channels.clamp(1, 2)),
    ))?;
    encoder.set_inband_fec(true)?;
    encoder.set_packet_loss_perc(FEC_LOSS_PERCENT)?;
    // The encoder's look-ahead delays the sound a decoder plays by this much more.
    let lookahead = encoder.get_lookahead()?.max(0) as u64 * 1_000_000 / u64::from(SAMPLE_RATE);
    Ok((encoder, lookahead))
}

/// Capture and encode until no viewer is left, or the source fails.
fn run_pipeline(inner: &Inner) -> Result<(), PipelineError> {
    let mut source = (inner.opener)()?;
    let (mut encoder, lookahead) = new_encoder(inner.channels)?;
    info!("audio capture started: {}", source.description());
    if !*inner.running.borrow() {
        info!("audio is back");
    }
    inner.running.send_replace(true);
    inner.pipeline_starts.fetch_add(1, Ordering::Relaxed);
    let mut out = vec![0u8; 4000];
    let want = usize::from(inner.channels);
    let result = loop {
        if !wanted(inner) || inner.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let chunk = match source.next_chunk() {
            Ok(chunk) => chunk,
            Err(err) => break Err(err.into()),
        };
        let samples = if usize::from(chunk.channels) == want {
            chunk.samples
        } else {
            super::alsa::remix(&chunk.samples, usize::from(chunk.channels), want)
        };
        debug_assert_eq!(samples.len(), CHUNK_FRAMES * want);
        let len = match encoder.encode(&samples, &mut out) {
            Ok(len) => len,
            Err(err) => break Err(err.into()),
        };
        let ready = chunk.instant.elapsed().as_micros() as u64 + lookahead;
        let old = inner.latency_us.load(Ordering::Relaxed);
        let smoothed = if old == 0 {
            ready
        } else {
            (old * 15 + ready) / 16
        };
        inner.latency_us.store(smoothed, Ordering::Relaxed);
        inner.packets_encoded.fetch_add(1, Ordering::Relaxed);
        // No receivers is fine: viewers may be between joining and leaving.
        let _ = inner.packets.send(Arc::new(AudioPacket {
            data: Bytes::copy_from_slice(&out[..len]),
            instant: chunk.instant,
            captured_at: chunk.captured_at,
        }));
    };
    info!("audio capture stopped: {}", source.description());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::CHUNK_DURATION;
    use crate::audio::tone::Tone;

    #[tokio::test]
    async fn one_encoder_serves_two_listeners_only_while_they_listen() {
        let hub = AudioHub::with_opener(Box::new(|| Ok(Box::new(Tone::new(1)))), 1);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        let pa = a.recv().await.unwrap();
        let pb = b.recv().await.unwrap();
        assert!(!pa.data.is_empty());
        assert!(pb.instant >= pa.instant);
        assert_eq!(hub.pipeline_starts(), 1);
        assert!(hub.latency() >= CHUNK_DURATION, "{:?}", hub.latency());
        drop((a, b));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let encoded = hub.packets_encoded();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            hub.packets_encoded(),
            encoded,
            "capture stops with no listener"
        );
        hub.shutdown();
    }

    #[tokio::test]
    async fn a_failing_source_is_reported_and_retried() {
        let tries = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&tries);
        let hub = AudioHub::with_opener(
            Box::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                Err(AudioError::Failed {
                    device: "hw:9".into(),
                    message: "gone".into(),
                })
            }),
            1,
        );
        let mut running = hub.running();
        let _listener = hub.subscribe();
        tokio::time::timeout(Duration::from_secs(5), running.wait_for(|r| !*r))
            .await
            .expect("status turns lost")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(
            tries.load(Ordering::Relaxed) >= 2,
            "reopened after the delay"
        );
        hub.shutdown();
    }
}
