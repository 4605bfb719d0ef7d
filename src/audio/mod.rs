//! Audio: where sound comes from ([`AudioSource`]), the Opus encoder ([`encode`]), and the hub
//! that shares one source and one encoder among every viewer that takes audio ([`hub`]).
//!
//! Every source yields [`AudioChunk`]s of exactly 20 ms at 48 kHz, interleaved signed 16-bit, with
//! the channel count it was opened with. Each kind of source lives in a file of its own and has
//! one row in [`SOURCES`]: the `--audio` values it takes, how it is probed and opened. The
//! `--audio` setting is parsed once, into an [`AudioSetting`]; [`resolve`] turns it (with `auto`
//! and `none`) into what the daemon runs.
//!
//! To add a source: a file with a type that implements [`AudioSource`] and a
//! `static BACKEND: Backend`; then that row in [`SOURCES`], before any row that would claim its
//! names (ALSA, last, takes any name).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use tracing::warn;

pub mod alsa;
pub mod encode;
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

/// Convert interleaved samples from `from` channels to `to` channels (1 or 2): stereo to mono
/// averages, mono to stereo duplicates, more channels keep the first ones.
pub fn remix(samples: &[i16], from: usize, to: usize) -> Vec<i16> {
    if from == to {
        return samples.to_vec();
    }
    let frames = samples.len() / from.max(1);
    let mut out = Vec::with_capacity(frames * to);
    for frame in samples.chunks_exact(from) {
        match (from, to) {
            (1, _) => out.extend(std::iter::repeat_n(frame[0], to)),
            (_, 1) => out.push(((i32::from(frame[0]) + i32::from(frame[1])) / 2) as i16),
            _ => out.extend_from_slice(&frame[..to]),
        }
    }
    out
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

/// One kind of audio source: which `--audio` values it takes, how it is probed and opened.
pub struct Backend {
    /// How `--audio` names it, for errors (`tone`).
    pub usage: &'static str,
    /// Whether this kind takes the `--audio` value.
    pub claims: fn(&str) -> bool,
    /// The channel count to capture from the named source (a device is opened briefly), or why
    /// it cannot be opened.
    pub probe: fn(&str) -> Result<u16, AudioError>,
    /// Open the named source delivering this many channels.
    pub open: fn(&str, u16) -> Opened,
    /// The tone the source is known to carry (Hz), which the self-test checks for.
    pub tone_hz: Option<u32>,
}

/// An open source, or why it did not open.
pub type Opened = Result<Box<dyn AudioSource>, AudioError>;

/// Every kind of audio source; the first row that claims an `--audio` value gets it.
pub static SOURCES: [&Backend; 2] = [&tone::BACKEND, &alsa::BACKEND];

/// The source `--audio auto` tries: ALSA's default capture device.
const AUTO_SOURCE: &str = "default";

/// An audio source named by `--audio`, parsed: the row of [`SOURCES`] that takes it, and the
/// name.
#[derive(Clone)]
pub struct Source {
    backend: &'static Backend,
    name: String,
}

impl Source {
    /// The kind of source.
    pub fn backend(&self) -> &'static Backend {
        self.backend
    }

    /// The name as given, e.g. `hw:1,0`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The channel count to capture, or why the source cannot be opened.
    pub fn probe(&self) -> Result<u16, AudioError> {
        (self.backend.probe)(&self.name)
    }

    /// Open the source delivering `channels` channels.
    pub fn open(&self, channels: u16) -> Opened {
        (self.backend.open)(&self.name, channels)
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(name: &str) -> Result<Source, String> {
        match SOURCES.iter().copied().find(|b| (b.claims)(name)) {
            Some(backend) => Ok(Source {
                backend,
                name: name.to_string(),
            }),
            None => Err(expected(name)),
        }
    }
}

/// The error for an `--audio` value nothing takes: every value the setting knows.
fn expected(value: &str) -> String {
    let mut usages = vec!["auto", "none"];
    usages.extend(SOURCES.iter().map(|b| b.usage));
    let (last, rest) = usages.split_last().unwrap_or((&"", &[]));
    format!("expected {} or {last}, got {value:?}", rest.join(", "))
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.name, f)
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        std::ptr::eq(self.backend, other.backend) && self.name == other.name
    }
}

impl Eq for Source {}

/// The `--audio` setting, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AudioSetting {
    /// No audio.
    None,
    /// ALSA's default capture device when it opens, else no audio.
    #[default]
    Auto,
    /// This source, which must open.
    Source(Source),
}

impl AudioSetting {
    /// The setting as `--audio` names it.
    pub fn as_str(&self) -> &str {
        match self {
            AudioSetting::None => "none",
            AudioSetting::Auto => "auto",
            AudioSetting::Source(source) => source.as_str(),
        }
    }

    /// The tone this setting's source is known to carry (Hz): the self-test's default check.
    pub fn tone_hz(&self) -> Option<u32> {
        match self {
            AudioSetting::Source(source) => source.backend.tone_hz,
            _ => None,
        }
    }
}

impl FromStr for AudioSetting {
    type Err = String;

    fn from_str(value: &str) -> Result<AudioSetting, String> {
        match value {
            "none" => Ok(AudioSetting::None),
            "auto" => Ok(AudioSetting::Auto),
            name => Ok(AudioSetting::Source(name.parse()?)),
        }
    }
}

impl fmt::Display for AudioSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A setting equals the text that names it.
impl PartialEq<&str> for AudioSetting {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What the daemon streams: a source and its channel count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPlan {
    pub source: Source,
    pub channels: u16,
}

/// Turn the `--audio` setting into a plan. `none` gives `None`; `auto` gives the default ALSA
/// capture device when it opens, else `None` with one warning; a named source must open, or the
/// error names it (and, for ALSA, lists the capture devices found).
pub fn resolve(setting: &AudioSetting) -> Result<Option<AudioPlan>, AudioError> {
    let plan = |source: &Source| {
        source.probe().map(|channels| AudioPlan {
            source: source.clone(),
            channels,
        })
    };
    match setting {
        AudioSetting::None => Ok(None),
        AudioSetting::Auto => {
            let default = Source {
                backend: &alsa::BACKEND,
                name: AUTO_SOURCE.to_string(),
            };
            match plan(&default) {
                Ok(plan) => Ok(Some(plan)),
                Err(err) => {
                    warn!("no audio capture device ({err}); streaming video only");
                    Ok(None)
                }
            }
        }
        AudioSetting::Source(source) => plan(source).map(Some),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remix_between_mono_and_stereo() {
        assert_eq!(remix(&[1, 3, -4, 8], 2, 1), vec![2, 2]);
        assert_eq!(remix(&[5, -6], 1, 2), vec![5, 5, -6, -6]);
        assert_eq!(remix(&[1, 2, 3, 4, 5, 6], 3, 2), vec![1, 2, 4, 5]);
        assert_eq!(remix(&[7, 8], 2, 2), vec![7, 8]);
    }

    #[test]
    fn audio_settings_are_parsed_by_the_table() {
        let parse = |value: &str| value.parse::<AudioSetting>();
        assert_eq!(parse("none"), Ok(AudioSetting::None));
        assert_eq!(parse("auto"), Ok(AudioSetting::Auto));
        let beep = parse("tone").unwrap();
        assert!(
            matches!(&beep, AudioSetting::Source(s) if std::ptr::eq(s.backend(), &tone::BACKEND))
        );
        assert_eq!(beep.tone_hz(), Some(1000));
        let device = parse("plughw:CARD=Device").unwrap();
        assert!(
            matches!(&device, AudioSetting::Source(s) if std::ptr::eq(s.backend(), &alsa::BACKEND))
        );
        assert_eq!(
            (device.as_str(), device.tone_hz()),
            ("plughw:CARD=Device", None)
        );
        assert_eq!(device, "plughw:CARD=Device");
        for bad in ["", "two words", "tab\t"] {
            assert_eq!(
                parse(bad),
                Err(format!(
                    "expected auto, none, tone or an ALSA PCM name such as hw:1,0, got {bad:?}"
                ))
            );
        }
    }
}
