//! The Opus encoder of the audio path: 20 ms packets, in-band FEC, one per stream, shared by
//! every viewer (the daemon's hub and `spyglass selftest` use the same settings).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::{AudioChunk, CHUNK_FRAMES, SAMPLE_RATE, remix};

/// Opus bitrate per channel.
const BITRATE_PER_CHANNEL: i32 = 32_000;
/// Expected loss that in-band FEC is tuned for.
const FEC_LOSS_PERCENT: i32 = 10;
/// Room for one packet: Opus's own maximum for 20 ms is far below.
const MAX_PACKET: usize = 4000;

/// One Opus packet: 20 ms of sound.
#[derive(Debug, Clone)]
pub struct AudioPacket {
    pub data: Bytes,
    /// Monotonic capture time of the first sample: the clock video frames use too.
    pub instant: Instant,
    pub captured_at: SystemTime,
}

/// An Opus encoder for `channels` channels (1 or 2).
pub struct OpusEncoder {
    encoder: opus::Encoder,
    channels: u16,
    lookahead: Duration,
    out: Vec<u8>,
}

impl OpusEncoder {
    pub fn new(channels: u16) -> Result<OpusEncoder, opus::Error> {
        let channels = channels.clamp(1, 2);
        let opus_channels = match channels {
            1 => opus::Channels::Mono,
            _ => opus::Channels::Stereo,
        };
        let mut encoder = opus::Encoder::new(SAMPLE_RATE, opus_channels, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(
            BITRATE_PER_CHANNEL * i32::from(channels),
        ))?;
        encoder.set_inband_fec(true)?;
        encoder.set_packet_loss_perc(FEC_LOSS_PERCENT)?;
        let lookahead_us =
            encoder.get_lookahead()?.max(0) as u64 * 1_000_000 / u64::from(SAMPLE_RATE);
        Ok(OpusEncoder {
            encoder,
            channels,
            lookahead: Duration::from_micros(lookahead_us),
            out: vec![0; MAX_PACKET],
        })
    }

    /// The encoder's look-ahead: a decoder's output lags its input by this much.
    pub fn lookahead(&self) -> Duration {
        self.lookahead
    }

    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// The bitrate the encoder runs at, in kbit/s.
    pub fn bitrate_kbps(&mut self) -> Result<u32, opus::Error> {
        Ok(match self.encoder.get_bitrate()? {
            opus::Bitrate::Bits(b) => (b / 1000) as u32,
            _ => 0,
        })
    }

    /// Encode one chunk, remixed to the encoder's channel count first when it has another.
    pub fn encode(&mut self, chunk: &AudioChunk) -> Result<AudioPacket, opus::Error> {
        let want = usize::from(self.channels);
        let remixed;
        let samples = if usize::from(chunk.channels) == want {
            &chunk.samples
        } else {
            remixed = remix(&chunk.samples, usize::from(chunk.channels), want);
            &remixed
        };
        debug_assert_eq!(samples.len(), CHUNK_FRAMES * want);
        let len = self.encoder.encode(samples, &mut self.out)?;
        Ok(AudioPacket {
            data: Bytes::copy_from_slice(&self.out[..len]),
            instant: chunk.instant,
            captured_at: chunk.captured_at,
        })
    }
}
