//! ALSA capture: opens a PCM by name (`default`, `hw:1,0`, `plughw:CARD=…`), asks for 48 kHz
//! signed 16-bit interleaved, and cuts what it reads into 20 ms chunks.
//!
//! A device that cannot run at 48 kHz is reopened through ALSA's `plug` layer, which converts the
//! rate and format. Overruns are recovered with `snd_pcm_recover` and capture goes on at once, so
//! the only gap is the overrun itself; a device that is gone makes `next_chunk` fail, and the
//! hub retries.

use std::time::{Duration, Instant, SystemTime};

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use tracing::{debug, info, warn};

use super::{AudioChunk, AudioError, AudioSource, Backend, CHUNK_FRAMES, SAMPLE_RATE, remix};

/// The row in [`super::SOURCES`]: any other `--audio` value is an ALSA PCM name.
pub static BACKEND: Backend = Backend {
    usage: "an ALSA PCM name such as hw:1,0",
    claims: |name| !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control()),
    probe,
    open: |name, channels| Ok(Box::new(AlsaSource::open(name, channels)?)),
    tone_hz: None,
};

pub struct AlsaSource {
    pcm: PCM,
    name: String,
    description: String,
    /// Channels the device delivers.
    device_channels: usize,
    /// Channels we hand on.
    channels: u16,
    /// Interleaved samples read but not yet handed on, at the device's channel count.
    pending: Vec<i16>,
    read_buf: Vec<i16>,
    overruns: u64,
}

fn failed(device: &str, what: &str, err: impl std::fmt::Display) -> AudioError {
    AudioError::Failed {
        device: device.to_string(),
        message: format!("{what}: {err}"),
    }
}

fn open_error(device: &str, err: impl std::fmt::Display) -> AudioError {
    let found = capture_devices()
        .into_iter()
        .map(|(name, _)| name)
        .collect::<Vec<_>>();
    AudioError::Open {
        device: device.to_string(),
        message: err.to_string(),
        found: if found.is_empty() {
            "none".into()
        } else {
            found.join(", ")
        },
    }
}

/// While alive, libasound's own error prints on this thread go to a buffer (logged at debug
/// level) instead of stderr: our errors already say what failed, in one line.
struct QuietLibasound(Option<std::rc::Rc<std::cell::RefCell<alsa::Output>>>);

impl QuietLibasound {
    fn new() -> Self {
        QuietLibasound(alsa::Output::local_error_handler().ok())
    }
}

impl Drop for QuietLibasound {
    fn drop(&mut self) {
        if let Some(out) = &self.0 {
            let text = out.borrow().to_string();
            if !text.trim().is_empty() {
                debug!("libasound: {}", text.trim().replace('\n', "; "));
            }
        }
    }
}

/// The channel count we capture from `name`: stereo when the device only does two or more
/// channels, mono otherwise (a `plug` device converts either way, and mono is what a camera
/// microphone has). Opens the device briefly.
pub fn probe(name: &str) -> Result<u16, AudioError> {
    let _quiet = QuietLibasound::new();
    let pcm = PCM::new(name, Direction::Capture, true).map_err(|e| open_error(name, e))?;
    let hwp = HwParams::any(&pcm).map_err(|e| open_error(name, e))?;
    let min = hwp.get_channels_min().map_err(|e| open_error(name, e))?;
    Ok(if min >= 2 { 2 } else { 1 })
}

/// Capture PCMs from ALSA's device hints: `(name, description)`.
pub fn capture_devices() -> Vec<(String, String)> {
    let Ok(hints) = alsa::device_name::HintIter::new_str(None, "pcm") else {
        return Vec::new();
    };
    hints
        .filter(|h| h.direction.is_none_or(|d| d == Direction::Capture))
        .filter_map(|h| {
            let name = h.name?;
            (name != "null").then(|| {
                let desc = h.desc.unwrap_or_default().replace('\n', " ");
                (name, desc)
            })
        })
        .collect()
}

/// Configure `pcm` for 48 kHz S16 interleaved capture; returns the device's channel count.
fn configure(pcm: &PCM, name: &str, channels: u16) -> Result<(usize, u32), AudioError> {
    let hwp = HwParams::any(pcm).map_err(|e| failed(name, "hardware parameters", e))?;
    hwp.set_access(Access::RWInterleaved)
        .map_err(|e| failed(name, "interleaved access", e))?;
    hwp.set_format(Format::s16())
        .map_err(|e| failed(name, "16-bit samples", e))?;
    if hwp.set_channels(u32::from(channels)).is_err() {
        let min = hwp.get_channels_min().unwrap_or(1);
        hwp.set_channels(min)
            .map_err(|e| failed(name, "channel count", e))?;
    }
    hwp.set_rate(SAMPLE_RATE, ValueOr::Nearest)
        .map_err(|e| failed(name, "sample rate", e))?;
    let rate = hwp.get_rate().map_err(|e| failed(name, "sample rate", e))?;
    // Small periods keep latency low; a buffer of several periods rides out scheduling hiccups.
    let _ = hwp.set_period_size_near((CHUNK_FRAMES / 2) as alsa::pcm::Frames, ValueOr::Nearest);
    let _ = hwp.set_buffer_size_near((CHUNK_FRAMES * 8) as alsa::pcm::Frames);
    pcm.hw_params(&hwp)
        .map_err(|e| failed(name, "applying hardware parameters", e))?;
    let device_channels = hwp
        .get_channels()
        .map_err(|e| failed(name, "channel count", e))? as usize;
    Ok((device_channels, rate))
}

impl AlsaSource {
    pub fn open(name: &str, channels: u16) -> Result<AlsaSource, AudioError> {
        let _quiet = QuietLibasound::new();
        let pcm = PCM::new(name, Direction::Capture, false).map_err(|e| open_error(name, e))?;
        let (mut device_channels, rate) = configure(&pcm, name, channels)?;
        let mut pcm = pcm;
        let mut description = format!("ALSA {name}");
        if rate != SAMPLE_RATE {
            // Let ALSA's plug layer convert the rate.
            let plug = format!("plug:\"{}\"", name.replace('"', "\\\""));
            info!("{name} runs at {rate} Hz, not {SAMPLE_RATE}: capturing through {plug}");
            drop(pcm);
            pcm = PCM::new(&plug, Direction::Capture, false).map_err(|e| open_error(&plug, e))?;
            let (dc, rate) = configure(&pcm, &plug, channels)?;
            if rate != SAMPLE_RATE {
                return Err(failed(
                    name,
                    "sample rate",
                    format!("{rate} Hz even through plug"),
                ));
            }
            device_channels = dc;
            description = format!("ALSA {name} via plug ({rate} Hz converted)");
        }
        pcm.start().ok();
        description.push_str(&format!(", {SAMPLE_RATE} Hz, {channels} channel(s)"));
        Ok(AlsaSource {
            pcm,
            name: name.to_string(),
            description,
            device_channels,
            channels,
            pending: Vec::new(),
            read_buf: vec![0; CHUNK_FRAMES * device_channels],
            overruns: 0,
        })
    }

    /// Read what the device has into `pending`, recovering from overruns.
    fn fill(&mut self) -> Result<(), AudioError> {
        let io = self
            .pcm
            .io_i16()
            .map_err(|e| failed(&self.name, "sample format", e))?;
        match io.readi(&mut self.read_buf) {
            Ok(frames) => {
                self.pending
                    .extend_from_slice(&self.read_buf[..frames * self.device_channels]);
                Ok(())
            }
            Err(err) => {
                // An overrun (EPIPE) or a suspend (ESTRPIPE) is recovered and capture goes on;
                // anything else (the device was unplugged: ENODEV) is not.
                self.pcm
                    .recover(err.errno(), true)
                    .map_err(|_| failed(&self.name, "capture stopped", err))?;
                self.overruns += 1;
                if self.overruns.is_power_of_two() {
                    warn!(device = %self.name, overruns = self.overruns, "audio overrun, recovered");
                } else {
                    debug!(device = %self.name, "audio overrun, recovered");
                }
                // What was read before the overrun is older than what follows: drop it, so
                // the chunk's capture time stays true.
                self.pending.clear();
                self.pcm.start().ok();
                Ok(())
            }
        }
    }
}

impl AudioSource for AlsaSource {
    fn channels(&self) -> u16 {
        self.channels
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn next_chunk(&mut self) -> Result<AudioChunk, AudioError> {
        let want = CHUNK_FRAMES * self.device_channels;
        while self.pending.len() < want {
            self.fill()?;
        }
        // The chunk's first sample was captured before the frames still in the device's buffer,
        // those we hold after this chunk, and the chunk itself.
        let buffered = self.pcm.delay().unwrap_or(0).max(0) as usize;
        let held = (self.pending.len() - want) / self.device_channels;
        let age = Duration::from_secs_f64(
            (buffered + held + CHUNK_FRAMES) as f64 / f64::from(SAMPLE_RATE),
        );
        let (now, wall) = (Instant::now(), SystemTime::now());
        let device: Vec<i16> = self.pending.drain(..want).collect();
        let samples = remix(&device, self.device_channels, usize::from(self.channels));
        Ok(AudioChunk {
            samples,
            channels: self.channels,
            instant: now.checked_sub(age).unwrap_or(now),
            captured_at: wall.checked_sub(age).unwrap_or(wall),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_named_with_the_devices_found() {
        let err = probe("hw:CARD=NoSuchCard").unwrap_err().to_string();
        assert!(err.contains("hw:CARD=NoSuchCard"), "{err}");
        assert!(err.contains("capture devices found"), "{err}");
    }
}
