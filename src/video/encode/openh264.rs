//! The openh264 encoder (software, Cisco's openh264 built from source): constrained baseline,
//! one thread, rate-controlled to the configured bitrate.
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

pub struct H264Encoder {
    encoder: Openh264,
    settings: EncoderSettings,
    seq: u64,
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
        let encoder =
            Openh264::with_api_config(OpenH264API::from_source(), config).map_err(failed)?;
        Ok(H264Encoder {
            encoder,
            settings,
            seq: 0,
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

    #[test]
    fn wrong_size_is_an_error() {
        let mut enc = encoder_320x240();
        let err = enc.encode(&grey_frame(160, 120, 0), false).unwrap_err();
        assert!(err.to_string().contains("160x120"), "{err}");
    }
}
