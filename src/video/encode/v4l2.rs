//! The V4L2 memory-to-memory H.264 encoder: the hardware encoder of the Raspberry Pi 3, 4 and
//! Zero 2 W (bcm2835-codec, `/dev/video11`), or any stateful encoder that takes I420 (YU12).
//!
//! It is opened with the stream's size, rate and bitrate, constrained baseline (which every
//! browser decodes) and SPS/PPS before every IDR; a keyframe request sets the
//! force-key-frame control before the picture is queued, and [`Encoder::set_bitrate`] the bitrate
//! control while it streams. Opening encodes one grey picture, so `--encoder auto` takes the
//! device only when it really encodes; anything else falls back to openh264. What comes out is
//! passed through [`Passthrough`]'s parameter-set cache, so an IDR the driver sends without them
//! gets them. The queue handling is [`crate::video::m2m`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};
use v4l::v4l_sys::{
    V4L2_CID_MPEG_VIDEO_BITRATE, V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME,
    V4L2_CID_MPEG_VIDEO_H264_I_PERIOD, V4L2_CID_MPEG_VIDEO_H264_LEVEL,
    V4L2_CID_MPEG_VIDEO_H264_PROFILE, V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER,
};

use super::passthrough::Passthrough;
use super::{Backend, EncodeError, EncodedFrame, Encoder, EncoderSettings, check_size};
use crate::video::m2m::{self, M2mConfig, M2mDevice, M2mError, M2mSession};
use crate::video::{AccessUnit, Frame};

/// What the status and the log call this encoder.
pub const NAME: &str = "v4l2";

/// The row in [`super::ENCODERS`].
pub static BACKEND: Backend = Backend {
    name: NAME,
    open: |settings| Ok(Box::new(M2mEncoder::open(None, settings)?)),
};

/// `V4L2_MPEG_VIDEO_H264_PROFILE_CONSTRAINED_BASELINE`.
const PROFILE_CONSTRAINED_BASELINE: i32 = 1;
/// `V4L2_MPEG_VIDEO_H264_LEVEL_4_0`: up to 1920x1080 at 30 fps.
const LEVEL_4_0: i32 = 11;
/// `V4L2_MPEG_VIDEO_H264_LEVEL_3_1`: up to 1280x720 at 30 fps.
const LEVEL_3_1: i32 = 9;
/// How long a picture may take to come out of the encoder before the next is queued.
const ENCODE_WAIT: Duration = Duration::from_millis(200);

fn failed(err: impl std::fmt::Display) -> EncodeError {
    EncodeError::Failed {
        encoder: NAME,
        message: err.to_string(),
    }
}

/// The first memory-to-memory device that encodes I420 (YU12) to H.264.
pub fn find_encoder() -> Option<String> {
    m2m::find(m2m::fourcc(b"YU12"), m2m::fourcc(b"H264"))
        .into_iter()
        .next()
        .map(|(path, _, _)| path)
}

/// The text of `spyglass devices` about hardware encoders.
pub fn list_encoders() -> String {
    let found = m2m::find(m2m::fourcc(b"YU12"), m2m::fourcc(b"H264"));
    if found.is_empty() {
        return "no V4L2 H.264 encoder (--encoder auto uses openh264, in software)\n".to_string();
    }
    let mut text = String::from("V4L2 H.264 encoders (--encoder auto uses the first):\n");
    for (path, card, driver) in found {
        text.push_str(&format!(
            "{path}: {card} (driver {driver}): I420 to H.264\n"
        ));
    }
    text
}

/// The controls an H.264 session starts with: bitrate, constrained baseline, a level for the
/// size, an IDR every 4 s as a safety net (joins and losses force keyframes), and SPS/PPS before
/// every IDR.
pub fn h264_controls(settings: &EncoderSettings) -> Vec<(u32, i32)> {
    let level = if u64::from(settings.width) * u64::from(settings.height) <= 1280 * 720 {
        LEVEL_3_1
    } else {
        LEVEL_4_0
    };
    vec![
        (
            V4L2_CID_MPEG_VIDEO_BITRATE,
            settings
                .bitrate_kbps
                .saturating_mul(1000)
                .min(i32::MAX as u32) as i32,
        ),
        (
            V4L2_CID_MPEG_VIDEO_H264_PROFILE,
            PROFILE_CONSTRAINED_BASELINE,
        ),
        (V4L2_CID_MPEG_VIDEO_H264_LEVEL, level),
        (
            V4L2_CID_MPEG_VIDEO_H264_I_PERIOD,
            settings.fps.saturating_mul(4).min(i32::MAX as u32) as i32,
        ),
        (V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER, 1),
    ]
}

pub struct M2mEncoder {
    session: M2mSession,
    settings: EncoderSettings,
    /// Keeps SPS/PPS and puts them before an IDR that lacks them.
    headers: Passthrough,
    pending: std::collections::VecDeque<EncodedFrame>,
}

impl M2mEncoder {
    /// Open the encoder at `path`, or the first one found, for `settings`; one grey picture is
    /// encoded to prove it works.
    pub fn open(path: Option<&str>, settings: EncoderSettings) -> Result<Self, EncodeError> {
        let path = match path {
            Some(path) => path.to_string(),
            None => find_encoder().ok_or_else(|| failed("no V4L2 H.264 encoder found"))?,
        };
        let device = M2mDevice::open(&path).map_err(failed)?;
        let config = M2mConfig {
            width: settings.width,
            height: settings.height,
            fps: settings.fps,
            raw: m2m::fourcc(b"YU12"),
            coded: m2m::fourcc(b"H264"),
            coded_size: (Frame::i420_len(settings.width, settings.height) / 2).max(512 * 1024)
                as u32,
        };
        let card = device.card.clone();
        let (session, refused) = device
            .start(&config, &h264_controls(&settings))
            .map_err(failed)?;
        for (id, error) in refused {
            warn!("{path}: the encoder refused control {id:#x}: {error}");
        }
        let mut encoder = M2mEncoder {
            session,
            settings,
            headers: Passthrough::new(None),
            pending: Default::default(),
        };
        let grey = Frame {
            width: settings.width,
            height: settings.height,
            data: vec![128; Frame::i420_len(settings.width, settings.height)],
            captured_at: std::time::SystemTime::now(),
            instant: Instant::now(),
        };
        let started = Instant::now();
        let mut out = None;
        for _ in 0..3 {
            out = encoder.encode(&grey, true)?;
            if out.is_some() {
                break;
            }
        }
        if out.is_none() {
            return Err(failed(format!(
                "{path}: no H.264 came out for a test picture"
            )));
        }
        encoder.pending.clear();
        info!(
            "{path}: hardware H.264 encoder {card}, {}x{}@{}, {} kbit/s (test picture in {} ms)",
            settings.width,
            settings.height,
            settings.fps,
            settings.bitrate_kbps,
            started.elapsed().as_millis()
        );
        Ok(encoder)
    }
}

impl Encoder for M2mEncoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn encode(
        &mut self,
        frame: &Frame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        check_size(&self.settings, frame)?;
        if force_keyframe
            && let Err(err) = self
                .session
                .set_control(V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME, 1)
        {
            warn!("cannot force a keyframe: {err}");
        }
        let coded = self
            .session
            .process(&frame.data, ENCODE_WAIT)
            .map_err(|e: M2mError| failed(e))?;
        for c in coded {
            let au = AccessUnit {
                data: Bytes::from(c.data),
                captured_at: frame.captured_at,
                instant: frame.instant,
            };
            if let Some(out) = self.headers.pass(&au, false)? {
                self.pending.push_back(out);
            }
        }
        // One frame out per call; a burst (after a held-back picture) drains over the next calls.
        Ok(self.pending.pop_front())
    }

    fn set_bitrate(&mut self, bps: u32) {
        let value = bps.min(i32::MAX as u32) as i32;
        if let Err(err) = self.session.set_control(V4L2_CID_MPEG_VIDEO_BITRATE, value) {
            warn!("the encoder refused bitrate {bps}: {err}");
        }
    }
}
