//! H.264 encoding: one openh264 encoder per stream, constrained baseline, Annex-B access units.
//!
//! The output is what WebRTC's H.264 payloader takes as one sample: SPS+PPS+IDR together for a
//! keyframe (`[7, 8, 5]`), a single slice NAL otherwise.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, UsageType,
};
use openh264::formats::YUVSlices;

use crate::video::Frame;

/// One encoded picture, shared by every viewer.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Annex-B access unit (start codes included).
    pub data: Bytes,
    pub keyframe: bool,
    /// Counts encoded frames since the pipeline started.
    pub seq: u64,
    pub captured_at: SystemTime,
    pub instant: Instant,
    /// The frame's temporal layer (0: the base layer, which every viewer gets). Always 0 while
    /// the encoder makes a single layer.
    pub temporal_id: u8,
    /// The frame's RTP payloads, made once for every viewer by the first one that sends it
    /// (`peer::packetize`).
    pub rtp_payloads: std::sync::OnceLock<Vec<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("H.264 encoder: {0}")]
    Openh264(#[from] openh264::Error),
    #[error("H.264 encoder: frame is {got_w}x{got_h}, encoder was set up for {want_w}x{want_h}")]
    SizeMismatch {
        got_w: u32,
        got_h: u32,
        want_w: u32,
        want_h: u32,
    },
}

/// Encoder settings for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

pub struct H264Encoder {
    encoder: Encoder,
    settings: EncoderSettings,
    seq: u64,
    /// The bitrate the encoder aims at now, bits/s, and a new one to apply after the next frame
    /// (openh264 takes options only once it is initialised, at its first frame).
    bitrate_bps: u32,
    pending_bitrate: Option<u32>,
}

impl H264Encoder {
    pub fn new(settings: EncoderSettings) -> Result<Self, EncodeError> {
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            .bitrate(BitRate::from_bps(
                settings.bitrate_kbps.saturating_mul(1000),
            ))
            .max_frame_rate(FrameRate::from_hz(settings.fps as f32))
            .rate_control_mode(RateControlMode::Bitrate)
            // Periodic IDRs every 4 s only as a safety net: joins and PLIs force keyframes.
            .intra_frame_period(IntraFramePeriod::from_num_frames(
                settings.fps.saturating_mul(4),
            ))
            .skip_frames(false)
            .num_threads(1);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)?;
        Ok(H264Encoder {
            encoder,
            settings,
            seq: 0,
            bitrate_bps: settings.bitrate_kbps.saturating_mul(1000),
            pending_bitrate: None,
        })
    }

    /// Aim at `bps` from the next frame on (rate control).
    pub fn set_bitrate(&mut self, bps: u32) {
        if bps != self.bitrate_bps {
            self.pending_bitrate = Some(bps);
        }
    }

    /// The bitrate the encoder aims at, bits/s.
    pub fn bitrate(&self) -> u32 {
        self.bitrate_bps
    }

    /// Apply a pending bitrate through openh264's own options (the crate has no setter):
    /// `ENCODER_OPTION_MAX_BITRATE` on spatial layer 0 (the crate set the maximum to the initial
    /// bitrate, and openh264 refuses a target above it) and `ENCODER_OPTION_BITRATE`, in the
    /// order that keeps the target at or below the maximum.
    fn apply_bitrate(&mut self) {
        use openh264_sys2::{
            ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE, SBitrateInfo, SPATIAL_LAYER_0,
            SPATIAL_LAYER_ALL,
        };
        let Some(bps) = self.pending_bitrate.take() else {
            return;
        };
        let value = bps.min(i32::MAX as u32) as i32;
        let mut max = SBitrateInfo {
            iLayer: SPATIAL_LAYER_0,
            iBitrate: value,
        };
        let mut target = SBitrateInfo {
            iLayer: SPATIAL_LAYER_ALL,
            iBitrate: value,
        };
        let raising = bps > self.bitrate_bps;
        // SAFETY: the encoder is initialised (this runs after a frame was encoded), and both
        // option structs outlive the calls, which only read them.
        let (first, second) = unsafe {
            let raw = self.encoder.raw_api();
            let max = (&raw mut max).cast();
            let target = (&raw mut target).cast();
            if raising {
                (
                    raw.set_option(ENCODER_OPTION_MAX_BITRATE, max),
                    raw.set_option(ENCODER_OPTION_BITRATE, target),
                )
            } else {
                (
                    raw.set_option(ENCODER_OPTION_BITRATE, target),
                    raw.set_option(ENCODER_OPTION_MAX_BITRATE, max),
                )
            }
        };
        if first == 0 && second == 0 {
            self.bitrate_bps = bps;
        } else {
            tracing::warn!(bps, first, second, "openh264 refused a new bitrate");
        }
    }

    pub fn settings(&self) -> EncoderSettings {
        self.settings
    }

    /// Encode one I420 frame. Returns `None` when the encoder produced nothing for it.
    pub fn encode(
        &mut self,
        frame: &Frame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        let s = self.settings;
        if frame.width != s.width || frame.height != s.height {
            return Err(EncodeError::SizeMismatch {
                got_w: frame.width,
                got_h: frame.height,
                want_w: s.width,
                want_h: s.height,
            });
        }
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let (w, h) = (s.width as usize, s.height as usize);
        let (y, u, v) = frame.planes();
        let yuv = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let bitstream = self.encoder.encode(&yuv)?;
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR | FrameType::I);
        let mut data = Vec::new();
        bitstream.write_vec(&mut data);
        self.apply_bitrate();
        if data.is_empty() {
            return Ok(None);
        }
        let seq = self.seq;
        self.seq += 1;
        Ok(Some(EncodedFrame {
            data: Bytes::from(data),
            keyframe,
            seq,
            captured_at: frame.captured_at,
            instant: frame.instant,
            temporal_id: 0,
            rtp_payloads: std::sync::OnceLock::new(),
        }))
    }
}

/// NAL unit types in an Annex-B access unit, in order (handy for checks and logs).
pub fn nal_types(annexb: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < annexb.len() {
        if annexb[i] == 0 && annexb[i + 1] == 0 && annexb[i + 2] == 1 {
            types.push(annexb[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey_frame(w: u32, h: u32, shade: u8) -> Frame {
        Frame {
            width: w,
            height: h,
            data: vec![shade; Frame::i420_len(w, h)],
            captured_at: SystemTime::now(),
            instant: Instant::now(),
        }
    }

    #[test]
    fn first_frame_is_a_keyframe_with_parameter_sets_and_forcing_works() {
        let mut enc = H264Encoder::new(EncoderSettings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 500,
        })
        .unwrap();
        let first = enc
            .encode(&grey_frame(320, 240, 100), false)
            .unwrap()
            .unwrap();
        assert!(first.keyframe);
        assert_eq!(nal_types(&first.data), vec![7, 8, 5]);
        let second = enc
            .encode(&grey_frame(320, 240, 110), false)
            .unwrap()
            .unwrap();
        assert!(!second.keyframe);
        assert_eq!(nal_types(&second.data), vec![1]);
        let forced = enc
            .encode(&grey_frame(320, 240, 120), true)
            .unwrap()
            .unwrap();
        assert!(forced.keyframe);
        assert_eq!(nal_types(&forced.data), vec![7, 8, 5]);
        // Constrained baseline: profile_idc 66, constraint_set0+1.
        let sps = &forced.data[forced
            .data
            .windows(4)
            .position(|w| w == [0, 0, 1, 0x67])
            .unwrap()
            + 3..];
        assert_eq!(&sps[1..3], &[0x42, 0xc0]);
        assert_eq!((first.seq, second.seq, forced.seq), (0, 1, 2));
    }

    #[test]
    fn wrong_size_is_an_error() {
        let mut enc = H264Encoder::new(EncoderSettings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 500,
        })
        .unwrap();
        let err = enc.encode(&grey_frame(160, 120, 0), false).unwrap_err();
        assert!(err.to_string().contains("160x120"), "{err}");
    }
}
