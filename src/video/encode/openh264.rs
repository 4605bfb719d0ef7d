//! The openh264 encoder (software, Cisco's openh264 built from source): constrained baseline,
//! one thread, rate-controlled to a bitrate that rate control changes while it runs
//! ([`Encoder::set_bitrate`]), with [`TEMPORAL_LAYERS`] temporal layers so that a viewer whose
//! link cannot carry the whole stream can be sent fewer frames of it.
//!
//! openh264 0.9's safe API hard-codes one temporal layer and no runtime bitrate; both are reached
//! through the crate's `raw_api()` and openh264's own options (`openh264-sys2`): after the encoder
//! is initialised (by a first, discarded frame), `ENCODER_OPTION_SVC_ENCODE_PARAM_EXT` with
//! `iTemporalLayerNum = 3` (openh264 then makes the L1T3 pattern T0 T2 T1 T2 T0..., upper-layer
//! frames not referenced by lower ones, no prefix NALs: constrained baseline stays as it was), and
//! `ENCODER_OPTION_BITRATE` / `ENCODER_OPTION_MAX_BITRATE` for the rate. Each frame's temporal id
//! is openh264's `uiTemporalId`. (Measured in /work/wave/notes/r2-rtp-congestion.md §5: Chromium
//! decodes the base layer alone, or base + T1, without a freeze.)
//!
//! Its output is what WebRTC's H.264 payloader takes as one sample: SPS+PPS+IDR together for a
//! keyframe (`[7, 8, 5]`), a single slice NAL otherwise.

use bytes::Bytes;
use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Encoder as Openh264, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, UsageType,
};
use openh264::formats::YUVSlices;
use openh264_sys2::{
    ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE, ENCODER_OPTION_SVC_ENCODE_PARAM_EXT,
    SBitrateInfo, SEncParamExt, SPATIAL_LAYER_0, SPATIAL_LAYER_ALL,
};

use super::{Backend, EncodeError, EncodedFrame, Encoder, EncoderSettings, check_size};
use crate::video::Frame;

/// The row in [`super::ENCODERS`].
pub static BACKEND: Backend = Backend {
    name: "openh264",
    open: |settings| Ok(Box::new(H264Encoder::new(settings)?)),
};

fn failed(err: openh264::Error) -> EncodeError {
    EncodeError::Failed {
        encoder: BACKEND.name,
        message: err.to_string(),
    }
}

/// Temporal layers the encoder makes (L1T3). Their shares of the bits, measured on a camera-like
/// picture: T0 about 47 %, T1 24 %, T2 29 %; rate control measures them on the real stream.
pub const TEMPORAL_LAYERS: i32 = 3;

pub struct H264Encoder {
    encoder: Openh264,
    settings: EncoderSettings,
    seq: u64,
    /// The bitrate the encoder aims at now, bits/s.
    bitrate_bps: u32,
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
            // Without frame skipping openh264's rate control cannot hold a low target (R2: a
            // busy scene at a 400 kbit/s target came out at 2.5 Mbit/s); with it, it drops
            // frames instead, for everyone, when the target is below what the picture needs.
            .skip_frames(true)
            .num_threads(1);
        let mut encoder =
            Openh264::with_api_config(OpenH264API::from_source(), config).map_err(failed)?;
        // openh264 takes options only once initialised, which the crate does at the first
        // frame: encode a blank one, discarded (the next frame is an IDR with the new SPS).
        let blank = vec![128u8; Frame::i420_len(settings.width, settings.height)];
        let (w, h) = (settings.width as usize, settings.height as usize);
        let (y, uv) = blank.split_at(w * h);
        let (u, v) = uv.split_at(w * h / 4);
        encoder
            .encode(&YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2)))
            .map_err(failed)?;
        let mut params = SEncParamExt::default();
        // SAFETY: the encoder is initialised (it encoded a frame); `params` outlives both calls,
        // which read and write it as the struct openh264 declares.
        let rc = unsafe {
            let raw = encoder.raw_api();
            let p: *mut SEncParamExt = &raw mut params;
            match raw.get_option(ENCODER_OPTION_SVC_ENCODE_PARAM_EXT, p.cast()) {
                0 => {
                    (*p).iTemporalLayerNum = TEMPORAL_LAYERS;
                    raw.set_option(ENCODER_OPTION_SVC_ENCODE_PARAM_EXT, p.cast())
                }
                rc => rc,
            }
        };
        if rc != 0 {
            return Err(EncodeError::Failed {
                encoder: BACKEND.name,
                message: format!("{TEMPORAL_LAYERS} temporal layers refused (code {rc})"),
            });
        }
        encoder.force_intra_frame();
        Ok(H264Encoder {
            encoder,
            settings,
            seq: 0,
            bitrate_bps: settings.bitrate_kbps.saturating_mul(1000),
        })
    }

    pub fn settings(&self) -> EncoderSettings {
        self.settings
    }
}

impl Encoder for H264Encoder {
    fn name(&self) -> &'static str {
        BACKEND.name
    }

    /// openh264 refuses a target above its maximum (which the crate sets to the initial
    /// bitrate), so the maximum (spatial layer 0) moves with the target, in the order that keeps
    /// the target at or below it.
    fn set_bitrate(&mut self, bps: u32) {
        if bps == self.bitrate_bps || bps == 0 {
            return;
        }
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
        // SAFETY: the encoder was initialised in `new`; both option structs outlive the calls,
        // which only read them.
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

    fn bitrate(&self) -> u32 {
        self.bitrate_bps
    }

    /// Encode one I420 frame. Returns `None` when the encoder produced nothing for it.
    fn encode(
        &mut self,
        frame: &Frame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        check_size(&self.settings, frame)?;
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let (w, h) = (self.settings.width as usize, self.settings.height as usize);
        let (y, u, v) = frame.planes();
        let yuv = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let bitstream = self.encoder.encode(&yuv).map_err(failed)?;
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR | FrameType::I);
        let temporal_id = match bitstream.num_layers() {
            0 => 0,
            n => bitstream
                .layer(n - 1)
                .map_or(0, |layer| layer.raw_info().uiTemporalId),
        };
        let mut data = Vec::new();
        bitstream.write_vec(&mut data);
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
            temporal_id,
            rtp_payloads: Default::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::video::h264::{nal_types, profile_level};

    fn grey_frame(w: u32, h: u32, shade: u8) -> Frame {
        Frame {
            width: w,
            height: h,
            data: vec![shade; Frame::i420_len(w, h)],
            captured_at: SystemTime::now(),
            instant: Instant::now(),
        }
    }

    fn encoder_320x240() -> H264Encoder {
        H264Encoder::new(EncoderSettings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 500,
        })
        .unwrap()
    }

    #[test]
    fn first_frame_is_a_keyframe_with_parameter_sets_and_forcing_works() {
        let mut enc = encoder_320x240();
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
        let [profile, constraints, _level] = profile_level(&forced.data).unwrap();
        assert_eq!([profile, constraints], [0x42, 0xc0]);
        assert_eq!((first.seq, second.seq, forced.seq), (0, 1, 2));
    }

    /// A picture that changes every frame (so that every frame costs bits): a moving gradient
    /// with noise.
    fn busy_frame(w: u32, h: u32, n: u32) -> Frame {
        let mut data = vec![128u8; Frame::i420_len(w, h)];
        let mut seed = n.wrapping_mul(2_654_435_761);
        for y in 0..h {
            for x in 0..w {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let noise = (seed >> 27) as u8;
                data[(y * w + x) as usize] = ((x + y + 4 * n) % 200) as u8 + noise;
            }
        }
        Frame {
            width: w,
            height: h,
            data,
            captured_at: SystemTime::now(),
            instant: Instant::now(),
        }
    }

    #[test]
    fn frames_come_in_three_temporal_layers() {
        let mut enc = encoder_320x240();
        let tids: Vec<u8> = (0..9)
            .map(|n| {
                enc.encode(&grey_frame(320, 240, 100 + n as u8), false)
                    .unwrap()
                    .expect("a frame (a grey picture is never skipped)")
                    .temporal_id
            })
            .collect();
        // The keyframe, then the L1T3 pattern.
        assert_eq!(tids, vec![0, 2, 1, 2, 0, 2, 1, 2, 0]);
    }

    #[test]
    fn the_bitrate_follows_set_bitrate() {
        let mut enc = H264Encoder::new(EncoderSettings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 1500,
        })
        .unwrap();
        let bytes = |enc: &mut H264Encoder, from: u32| -> usize {
            (from..from + 60)
                .filter_map(|n| enc.encode(&busy_frame(320, 240, n), false).unwrap())
                .filter(|f| !f.keyframe)
                .map(|f| f.data.len())
                .sum()
        };
        let high = bytes(&mut enc, 0);
        enc.set_bitrate(150_000);
        assert_eq!(enc.bitrate(), 150_000);
        let _settle = bytes(&mut enc, 60);
        let low = bytes(&mut enc, 120);
        assert!(
            low * 3 < high,
            "150 kbit/s: {low} bytes, 1500 kbit/s: {high} bytes"
        );
        enc.set_bitrate(2_500_000);
        assert_eq!(enc.bitrate(), 2_500_000, "raised above the initial bitrate");
    }

    #[test]
    fn wrong_size_is_an_error() {
        let mut enc = encoder_320x240();
        let err = enc.encode(&grey_frame(160, 120, 0), false).unwrap_err();
        assert!(err.to_string().contains("160x120"), "{err}");
    }
}
