//! The built-in test signal (`--audio tone`): a 1 kHz beep of 100 ms at every wall-clock second,
//! silence in between. The beeps start at the instants the test pattern's A/V sync flash turns
//! white (`captured_ms % 1000 == 0`, docs/TEST_PATTERN.md), so a viewer can measure A/V offset from
//! the decoded media alone.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{
    AudioChunk, AudioError, AudioSource, Backend, CHUNK_DURATION, CHUNK_FRAMES, SAMPLE_RATE,
};

/// The row in [`super::SOURCES`]: `--audio tone`.
pub static BACKEND: Backend = Backend {
    usage: "tone",
    claims: |name| name == "tone",
    probe: |_| Ok(CHANNELS),
    open: |_, channels| Ok(Box::new(Tone::new(channels))),
    tone_hz: Some(BEEP_HZ as u32),
};

/// The tone is mono.
pub const CHANNELS: u16 = 1;
/// Beep pitch.
pub const BEEP_HZ: f64 = 1000.0;
/// Beep length, the same as the test pattern's flash.
pub const BEEP_MS: f64 = 100.0;
/// Beep amplitude (half of full scale).
pub const BEEP_AMPLITUDE: f64 = 16384.0;

/// The sample at wall-clock time `wall_ms` (milliseconds since the Unix epoch).
pub fn sample_at(wall_ms: f64) -> i16 {
    let in_second = wall_ms.rem_euclid(1000.0);
    if in_second < BEEP_MS {
        let phase = 2.0 * std::f64::consts::PI * BEEP_HZ * in_second / 1000.0;
        (BEEP_AMPLITUDE * phase.sin()).round() as i16
    } else {
        0
    }
}

pub struct Tone {
    channels: u16,
    description: String,
    /// Sample 0 is at this instant and this wall-clock time.
    start: Instant,
    start_wall_ms: f64,
    /// Frames produced so far.
    produced: u64,
}

impl Tone {
    pub fn new(channels: u16) -> Tone {
        let start_wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        Tone {
            channels: channels.max(1),
            description: "test tone (1 kHz beep at every second)".into(),
            start: Instant::now(),
            start_wall_ms,
            produced: 0,
        }
    }
}

impl AudioSource for Tone {
    fn channels(&self) -> u16 {
        self.channels
    }

    fn description(&self) -> &str {
        &self.description
    }

    /// Waits until the chunk's last sample is due, as a sound card would.
    fn next_chunk(&mut self) -> Result<AudioChunk, AudioError> {
        let offset = std::time::Duration::from_secs_f64(self.produced as f64 / SAMPLE_RATE as f64);
        let instant = self.start + offset;
        let due = instant + CHUNK_DURATION;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let first_ms = self.start_wall_ms + offset.as_secs_f64() * 1000.0;
        let mut samples = Vec::with_capacity(CHUNK_FRAMES * self.channels as usize);
        for i in 0..CHUNK_FRAMES {
            let s = sample_at(first_ms + i as f64 * 1000.0 / SAMPLE_RATE as f64);
            for _ in 0..self.channels {
                samples.push(s);
            }
        }
        self.produced += CHUNK_FRAMES as u64;
        Ok(AudioChunk {
            samples,
            channels: self.channels,
            instant,
            captured_at: UNIX_EPOCH + std::time::Duration::from_secs_f64(first_ms / 1000.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beeps_in_the_first_100_ms_of_each_second_only() {
        assert_eq!(sample_at(5_000.0), 0, "zero phase at the second");
        assert!(
            sample_at(5_000.25).abs() > 16000,
            "peak a quarter period in"
        );
        assert!(sample_at(5_099.75).abs() > 16000);
        for ms in [5_100.0, 5_100.25, 5_500.25, 5_999.75] {
            assert_eq!(sample_at(ms), 0, "{ms}");
        }
    }

    #[test]
    fn chunks_are_20_ms_and_follow_each_other() {
        let mut tone = Tone::new(2);
        let a = tone.next_chunk().unwrap();
        let b = tone.next_chunk().unwrap();
        assert_eq!(a.samples.len(), CHUNK_FRAMES * 2);
        assert_eq!(b.instant - a.instant, CHUNK_DURATION);
        assert!(Instant::now() >= b.instant + CHUNK_DURATION);
    }
}
