//! Audio sources: where raw sound comes from before the shared Opus encoder.
//!
//! Every source yields [`AudioChunk`]s of exactly 20 ms at 48 kHz, interleaved signed 16-bit, with
//! the channel count it was opened with. `--audio tone` picks the built-in test signal, anything
//! else is an ALSA PCM name; [`open`] is the one place that makes that choice, and [`resolve`]
//! turns the `--audio` setting (with `auto` and `none`) into what the daemon runs.

use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

pub mod alsa;
pub mod hub;
pub mod tone;

/// The one sample rate of the audio path (Opus's native rate).
pub const SAMPLE_RATE: u32 = 48_000;
/// Frames (samples per channel) in one chunk: 20 ms, one Opus packet.
pub const CHUNK_FRAMES: usize = 960;
/// Duration of one chunk.
pub const CHUNK_DURATION: Duration = Duration::from_millis(20);

/// Power of `freq` Hz in mono `samples` at [`SAMPLE_RATE`] (Goertzel filter), normalised by the
/// length: for checking which tone a recording holds.
pub fn tone_power(samples: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / samples.len().max(1) as f64
}

/// One 20 ms piece of sound.
#[derive(Debug, Clone)]
pub struct AudioChunk {
    /// `CHUNK_FRAMES * channels` interleaved samples.
    pub samples: Vec<i16>,
    pub channels: u16,
    /// Monotonic capture time of the first sample: the same clock as video frames' `instant`.
    pub instant: Instant,
    /// Wall-clock capture time of the first sample.
    pub captured_at: SystemTime,
}

/// Why a source could not be opened or stopped delivering. Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("audio device {device}: cannot open it ({message}); capture devices found: {found}")]
    Open {
        device: String,
        message: String,
        found: String,
    },
    #[error("audio device {device}: {message}")]
    Failed { device: String, message: String },
}

/// A source of raw sound. `next_chunk` blocks until the next 20 ms are captured, paced by the
/// source (the sound card's clock, or the tone's timer).
pub trait AudioSource: Send {
    fn channels(&self) -> u16;
    fn description(&self) -> &str;
    fn next_chunk(&mut self) -> Result<AudioChunk, AudioError>;
}

/// Open the source named `source` (`tone`, or an ALSA PCM name) delivering `channels` channels.
pub fn open(source: &str, channels: u16) -> Result<Box<dyn AudioSource>, AudioError> {
    match source {
        "tone" => Ok(Box::new(tone::Tone::new(channels))),
        name => Ok(Box::new(alsa::AlsaSource::open(name, channels)?)),
    }
}

/// What the daemon streams: a source name and its channel count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPlan {
    pub source: String,
    pub channels: u16,
}

/// Turn the `--audio` setting into a plan. `none` gives `None`; `auto` gives the default ALSA
/// capture device when it opens, else `None` with one warning; `tone` the test signal; any other
/// name must open, or the error names it and lists the capture devices found.
pub fn resolve(setting: &str) -> Result<Option<AudioPlan>, AudioError> {
    match setting {
        "none" => Ok(None),
        "tone" => Ok(Some(AudioPlan {
            source: "tone".into(),
            channels: tone::CHANNELS,
        })),
        "auto" => match alsa::probe("default") {
            Ok(channels) => Ok(Some(AudioPlan {
                source: "default".into(),
                channels,
            })),
            Err(err) => {
                warn!("no audio capture device ({err}); streaming video only");
                Ok(None)
            }
        },
        name => {
            let channels = alsa::probe(name)?;
            Ok(Some(AudioPlan {
                source: name.to_string(),
                channels,
            }))
        }
    }
}

/// The capture devices, as lines for `spyglass devices`.
pub fn list_devices() -> String {
    let devices = alsa::capture_devices();
    let mut out = String::from("Audio capture devices (ALSA):\n");
    if devices.is_empty() {
        out.push_str("  none found\n");
    }
    for (name, description) in devices {
        if description.is_empty() {
            out.push_str(&format!("  {name}\n"));
        } else {
            out.push_str(&format!("  {name}: {description}\n"));
        }
    }
    out
}
