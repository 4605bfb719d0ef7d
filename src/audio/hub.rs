//! The audio hub: one capture and one Opus encoder, shared by every viewer that takes audio.
//!
//! It is the on-demand [`pipeline`](crate::pipeline), as video's hub is: capture runs only while
//! at least one [`AudioSubscription`] exists, packets fan out through a bounded broadcast channel
//! that drops the oldest for a viewer that lags, and a source that fails or stalls is reopened
//! every second while viewers remain. A source that fails (a USB microphone unplugged) never
//! touches the video: the hub says so through [`AudioHub::running`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::encode::{AudioPacket, OpusEncoder};
use super::{AudioChunk, AudioError, AudioPlan, AudioSource};
use crate::pipeline::{self, Media, Pipeline, Policy, Run, RunError};

const POLICY: Policy = Policy {
    name: "audio capture",
    item: "sound",
    threads: ("audio-hub", "audio-capture"),
    // How many packets (20 ms each) a viewer may lag behind before it loses the oldest.
    fanout_depth: 16,
    // 200 ms of sound may wait for the encoder before the oldest is dropped.
    queue_depth: 10,
    reopen_delay: (Duration::from_secs(1), Duration::from_secs(1)),
    stall_after: Duration::from_secs(2),
};

/// Opens the source each time capture starts.
pub type AudioOpener = Box<dyn Fn() -> Result<Box<dyn AudioSource>, AudioError> + Send + Sync>;

/// Why the audio pipeline stopped delivering.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] AudioError),
    #[error("Opus encoder: {0}")]
    Encode(#[from] opus::Error),
}

/// Audio's half of the pipeline.
pub struct Audio {
    opener: AudioOpener,
    channels: u16,
    /// `false` while the source has failed and is being reopened.
    running: watch::Sender<bool>,
    /// Capture → encoded, smoothed, plus the encoder's look-ahead, in microseconds.
    latency_us: AtomicU64,
}

impl Media for Audio {
    type Raw = AudioChunk;
    type Out = AudioPacket;
    type Error = PipelineError;
    type Encoder = OpusEncoder;

    const POLICY: Policy = POLICY;

    fn start(&self) -> Result<Run<Self>, PipelineError> {
        let mut source = (self.opener)()?;
        let encoder = OpusEncoder::new(self.channels)?;
        Ok(Run {
            description: source.description().to_string(),
            capture: Box::new(move || Ok(source.next_chunk()?)),
            encoder,
            startup: Duration::ZERO,
        })
    }

    fn encode(
        &self,
        encoder: &mut OpusEncoder,
        chunk: AudioChunk,
    ) -> Result<Option<AudioPacket>, PipelineError> {
        let packet = encoder.encode(&chunk)?;
        let ready = (chunk.instant.elapsed() + encoder.lookahead()).as_micros() as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let smoothed = if old == 0 {
            ready
        } else {
            (old * 15 + ready) / 16
        };
        self.latency_us.store(smoothed, Ordering::Relaxed);
        Ok(Some(packet))
    }

    fn started(&self) {
        if !*self.running.borrow() {
            info!("audio is back");
        }
        self.running.send_replace(true);
    }

    fn lost(&self, error: &RunError<PipelineError>, retry_in: Duration) {
        warn!("audio lost, video goes on; retrying every {retry_in:?}: {error}");
        self.running.send_replace(false);
    }
}

/// Handle to the shared audio pipeline. Cloning is cheap.
#[derive(Clone)]
pub struct AudioHub {
    pipeline: Pipeline<Audio>,
}

impl AudioHub {
    /// A hub over the source the plan names.
    pub fn new(plan: AudioPlan) -> std::io::Result<AudioHub> {
        let AudioPlan { source, channels } = plan;
        AudioHub::with_opener(Box::new(move || source.open(channels)), channels)
    }

    pub fn with_opener(opener: AudioOpener, channels: u16) -> std::io::Result<AudioHub> {
        let pipeline = Pipeline::start(Audio {
            opener,
            channels,
            running: watch::channel(true).0,
            latency_us: AtomicU64::new(0),
        })?;
        Ok(AudioHub { pipeline })
    }

    pub fn channels(&self) -> u16 {
        self.pipeline.media().channels
    }

    /// Start listening: capture runs while any subscription exists.
    pub fn subscribe(&self) -> AudioSubscription {
        AudioSubscription {
            feed: self.pipeline.subscribe(),
        }
    }

    /// `false` while the source has failed and is being reopened.
    pub fn running(&self) -> watch::Receiver<bool> {
        self.pipeline.media().running.subscribe()
    }

    /// How long after capture a packet is ready to send (smoothed), plus the encoder's
    /// look-ahead (which a decoder's output lags by). Video is held back by the difference, so
    /// that both reach the viewer as long after capture: see `peer::session`.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.pipeline.media().latency_us.load(Ordering::Relaxed))
    }

    pub fn pipeline_starts(&self) -> u64 {
        self.pipeline.counters().starts.load(Ordering::Relaxed)
    }

    pub fn packets_encoded(&self) -> u64 {
        self.pipeline.counters().produced.load(Ordering::Relaxed)
    }

    /// Stop the hub thread (at process exit).
    pub fn shutdown(&self) {
        self.pipeline.shutdown();
    }
}

/// One viewer's feed of Opus packets.
pub struct AudioSubscription {
    feed: pipeline::Subscription<Audio>,
}

impl AudioSubscription {
    /// The next packet; packets lost to lag are skipped (the next one's capture time shows the
    /// gap). `None` when the hub has shut down.
    pub async fn recv(&mut self) -> Option<Arc<AudioPacket>> {
        loop {
            if let Ok(packet) = self.feed.recv().await? {
                return Some(packet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    use crate::audio::CHUNK_DURATION;
    use crate::audio::tone::Tone;

    #[tokio::test]
    async fn one_encoder_serves_two_listeners_only_while_they_listen() {
        let hub = AudioHub::with_opener(Box::new(|| Ok(Box::new(Tone::new(1)))), 1).unwrap();
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
        )
        .unwrap();
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
