//! The headless viewer's audio side: receives the Opus track, decodes it to 48 kHz mono, and
//! finds the test tone's beeps, so A/V offset can be measured against the test pattern's flash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::debug;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Decoded samples per second.
pub const RATE: u32 = 48_000;
/// A beep starts where the signal first exceeds this after [`QUIET_BEFORE_BEEP`] of quiet
/// (the tone's beeps peak at 16384).
const BEEP_THRESHOLD: i16 = 4000;
const QUIET_BEFORE_BEEP: usize = (RATE as usize) * 3 / 10;

/// What was received so far; shared with the receiving task so that nothing is lost when the
/// task is aborted.
#[derive(Debug, Default)]
pub struct Received {
    pub packets: u64,
    pub lost: u64,
    /// Decoded mono samples, 48 kHz, with silence where packets were lost.
    pub pcm: Vec<i16>,
    /// For each packet: where its samples start in `pcm`, and when it arrived.
    marks: Vec<(usize, SystemTime)>,
}

impl Received {
    /// Wall-clock arrival time of sample `index` (its packet's arrival plus its place in it).
    fn time_of(&self, index: usize) -> Option<SystemTime> {
        let at = self.marks.partition_point(|(start, _)| *start <= index);
        let (start, arrived) = *self.marks.get(at.checked_sub(1)?)?;
        Some(arrived + std::time::Duration::from_secs_f64((index - start) as f64 / RATE as f64))
    }

    /// Level of all decoded sound, in dB relative to full scale.
    pub fn rms_dbfs(&self) -> Option<f64> {
        if self.pcm.is_empty() {
            return None;
        }
        let sum: f64 = self.pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        let rms = (sum / self.pcm.len() as f64).sqrt() / 32768.0;
        Some(20.0 * rms.max(1e-9).log10())
    }

    /// Beep onsets: for each wall-clock second in which one arrived, how long after the
    /// second's start it arrived (ms). The tone beeps at every second (`audio::tone`).
    pub fn beep_latencies(&self) -> BTreeMap<u64, f64> {
        let mut out = BTreeMap::new();
        let mut quiet = 0usize;
        for (i, &s) in self.pcm.iter().enumerate() {
            if s.unsigned_abs() < BEEP_THRESHOLD as u16 {
                quiet += 1;
                continue;
            }
            if quiet >= QUIET_BEFORE_BEEP
                && let Some(t) = self.time_of(i)
            {
                let ms = t
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
                    * 1000.0;
                let second = (ms / 1000.0).floor();
                out.insert(second as u64, ms - second * 1000.0);
            }
            quiet = 0;
        }
        out
    }
}

/// Receive and decode until the track ends.
pub async fn receive(track: Arc<dyn TrackRemote>, into: Arc<Mutex<Received>>) {
    let mut decoder = match opus::Decoder::new(RATE, opus::Channels::Mono) {
        Ok(d) => d,
        Err(err) => {
            debug!("Opus decoder: {err}");
            return;
        }
    };
    let mut out = vec![0i16; RATE as usize / 10];
    let mut next_seq: Option<u16> = None;
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let arrived = SystemTime::now();
        let seq = packet.header.sequence_number;
        let mut r = into.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expected) = next_seq {
            let missing = seq.wrapping_sub(expected);
            if missing > 0 && missing < 50 {
                r.lost += u64::from(missing);
                let len = r.pcm.len();
                r.pcm.resize(len + 960 * missing as usize, 0);
            } else if missing > u16::MAX / 2 {
                continue; // late or duplicate
            }
        }
        next_seq = Some(seq.wrapping_add(1));
        match decoder.decode(&packet.payload, &mut out, false) {
            Ok(n) => {
                let start = r.pcm.len();
                r.marks.push((start, arrived));
                r.pcm.extend_from_slice(&out[..n]);
                r.packets += 1;
            }
            Err(err) => debug!("Opus decode: {err}"),
        }
    }
}
