//! Video encoders: what turns the source's pictures into the H.264 access units that every
//! viewer shares. One [`Encoder`] trait, one file per encoder, one row per encoder in
//! [`ENCODERS`]; [`open`] is the one place that picks the encoder for a stream, so the hub never
//! knows which one runs.
//!
//! The table has the encoders of raw pictures: openh264 (software, constrained baseline) and the
//! V4L2 memory-to-memory hardware encoder ([`v4l2`], the Raspberry Pi's `/dev/video11`). Sources
//! that deliver H.264 already go through [`passthrough`], which hands their access units on as
//! they are; it is no row of the table, since nothing else can take such a source.
//!
//! To add an encoder: a file with a type that implements [`Encoder`] and a
//! `static BACKEND: Backend`, that row in [`ENCODERS`], and the choice among the rows in [`open`]
//! (`--encoder`, [`EncoderChoice`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tracing::{info, warn};

use super::{AccessUnit, Captured, Delivers, Frame, VideoSource};

pub mod openh264;
pub mod passthrough;
pub mod v4l2;

/// One encoded picture, shared by every viewer.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Annex-B access unit (start codes included): SPS and PPS before every IDR, so that a
    /// viewer can start at any keyframe.
    pub data: Bytes,
    pub keyframe: bool,
    /// Counts encoded frames since the pipeline started.
    pub seq: u64,
    pub captured_at: SystemTime,
    pub instant: Instant,
    /// The frame's temporal layer (0: the base layer, which every viewer gets; higher layers are
    /// never referenced by lower ones, so a viewer can be sent layers `0..=n` only). 0 from an
    /// encoder that makes one layer.
    pub temporal_id: u8,
    /// The frame's RTP payloads, made once for every viewer by the first one that sends it
    /// (`peer::packetize`).
    pub rtp_payloads: std::sync::OnceLock<Vec<Bytes>>,
}

/// Why an encoder could not be set up or could not encode a picture.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("H.264 encoder {encoder}: {message}")]
    Failed {
        encoder: &'static str,
        message: String,
    },
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

impl EncodedFrame {
    /// An encoded picture; `keyframe` when it holds an IDR with its parameter sets.
    pub fn new(
        data: Bytes,
        keyframe: bool,
        seq: u64,
        captured_at: SystemTime,
        instant: Instant,
    ) -> Self {
        EncodedFrame {
            data,
            keyframe,
            seq,
            captured_at,
            instant,
            // Passthrough and the M2M encoder make no temporal layers.
            temporal_id: 0,
            rtp_payloads: Default::default(),
        }
    }
}

/// An H.264 encoder for one stream, at the settings it was opened with.
pub trait Encoder: Send {
    /// The encoder's name, as its row in [`ENCODERS`] gives it (`passthrough` for that one).
    fn name(&self) -> &'static str;
    /// Encode one picture; a keyframe (IDR with SPS and PPS) when `force_keyframe`. `None` when
    /// nothing came out for it.
    fn encode(
        &mut self,
        frame: &Frame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError>;

    /// Hand on an access unit that the source encoded itself; only [`passthrough`] takes them.
    /// `force_keyframe` asks the source for an IDR where it can be asked.
    fn pass(
        &mut self,
        au: &AccessUnit,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        let _ = (au, force_keyframe);
        Err(EncodeError::Failed {
            encoder: self.name(),
            message: "takes raw pictures, not H.264".into(),
        })
    }

    /// Whether a keyframe asked for comes at once; false for passthrough from a source that
    /// makes keyframes only at its own period.
    fn keyframes_on_request(&self) -> bool {
        true
    }

    /// Aim at `bps` from now on (rate control, from the viewers' bandwidth estimates), where the
    /// encoder can. One that cannot (passthrough: the source sets its own rate) keeps the rate
    /// it was opened with.
    fn set_bitrate(&mut self, _bps: u32) {}
    /// The bitrate the encoder aims at, bits/s.
    fn bitrate(&self) -> u32 {
        0
    }
}

impl dyn Encoder {
    /// Encode a raw picture or pass an access unit on, whichever the source captured.
    pub fn take(
        &mut self,
        captured: &Captured,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        match captured {
            Captured::Raw(frame) => self.encode(frame, force_keyframe),
            Captured::H264(au) => self.pass(au, force_keyframe),
        }
    }
}

/// One kind of encoder of raw pictures: its name and how it opens.
pub struct Backend {
    pub name: &'static str,
    pub open: fn(EncoderSettings) -> Result<Box<dyn Encoder>, EncodeError>,
}

/// Every encoder of raw pictures spyglass has, in the order `--encoder auto` prefers them: the
/// hardware encoder where there is one, else openh264.
pub static ENCODERS: [&Backend; 2] = [&v4l2::BACKEND, &openh264::BACKEND];

/// `--encoder`: which encoder turns raw pictures into H.264.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EncoderChoice {
    /// The V4L2 hardware encoder when there is one and it works, else openh264. A source that
    /// delivers H.264 is passed through.
    #[default]
    Auto,
    /// Always openh264 (a V4L2 camera is then not asked for H.264).
    Openh264,
    /// The V4L2 memory-to-memory encoder: the first that takes I420 and makes H.264, or the one
    /// at the path given (`v4l2:/dev/video11`); no fallback.
    V4l2(Option<String>),
}

impl EncoderChoice {
    /// Whether a source may deliver H.264 for passthrough (a V4L2 camera that offers it).
    pub fn allows_passthrough(&self) -> bool {
        *self == EncoderChoice::Auto
    }
}

impl FromStr for EncoderChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<EncoderChoice, String> {
        match value {
            "auto" => Ok(EncoderChoice::Auto),
            "openh264" => Ok(EncoderChoice::Openh264),
            "v4l2" => Ok(EncoderChoice::V4l2(None)),
            _ => match value.strip_prefix("v4l2:") {
                Some(path) if path.starts_with('/') && path.len() > 1 => {
                    Ok(EncoderChoice::V4l2(Some(path.to_string())))
                }
                _ => Err(format!(
                    "expected auto, openh264, v4l2 or v4l2:/dev/videoN, got {value:?}"
                )),
            },
        }
    }
}

impl fmt::Display for EncoderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncoderChoice::Auto => f.write_str("auto"),
            EncoderChoice::Openh264 => f.write_str("openh264"),
            EncoderChoice::V4l2(None) => f.write_str("v4l2"),
            EncoderChoice::V4l2(Some(path)) => write!(f, "v4l2:{path}"),
        }
    }
}

/// The encoder a stream of `spec` is expected to get, for the status before the pipeline first
/// runs (a camera that offers H.264 is passed through, which shows once it ran).
pub fn expected(spec: &super::VideoSpec) -> &'static str {
    if spec.source.is(&super::exec::BACKEND) && spec.exec_format == super::exec::ExecFormat::H264 {
        return passthrough::NAME;
    }
    match &spec.encoder {
        EncoderChoice::Openh264 => openh264::BACKEND.name,
        EncoderChoice::V4l2(_) => v4l2::NAME,
        EncoderChoice::Auto if v4l2::find_encoder().is_some() => v4l2::NAME,
        EncoderChoice::Auto => openh264::BACKEND.name,
    }
}

/// The encoder for the stream `source` delivers, at `bitrate_kbps`: the one place that chooses.
/// H.264 from the source is passed through; raw pictures go to the encoder `choice` names, and
/// with `auto` to the first row of [`ENCODERS`] that opens (a log line says when the hardware
/// encoder was passed over).
pub fn open(
    source: &dyn VideoSource,
    choice: &EncoderChoice,
    bitrate_kbps: u32,
) -> Result<Box<dyn Encoder>, EncodeError> {
    let format = source.format();
    if source.delivers() == Delivers::H264 {
        return Ok(Box::new(passthrough::Passthrough::new(
            source.keyframe_trigger(),
        )));
    }
    let settings = EncoderSettings {
        width: format.width,
        height: format.height,
        fps: format.fps.max(1),
        bitrate_kbps,
    };
    match choice {
        EncoderChoice::Openh264 => (openh264::BACKEND.open)(settings),
        EncoderChoice::V4l2(path) => {
            Ok(Box::new(v4l2::M2mEncoder::open(path.as_deref(), settings)?))
        }
        EncoderChoice::Auto => {
            let mut passed_over = Vec::new();
            for backend in ENCODERS {
                match (backend.open)(settings) {
                    Ok(encoder) => {
                        if !passed_over.is_empty() {
                            info!("encoding with {}: {}", backend.name, passed_over.join("; "));
                        }
                        return Ok(encoder);
                    }
                    Err(err) => {
                        passed_over.push(err.to_string());
                    }
                }
            }
            let message = passed_over.join("; ");
            warn!("no encoder opened: {message}");
            Err(EncodeError::Failed {
                encoder: "auto",
                message,
            })
        }
    }
}

/// Check that `frame` has the size `settings` were made for.
pub fn check_size(settings: &EncoderSettings, frame: &Frame) -> Result<(), EncodeError> {
    if frame.width != settings.width || frame.height != settings.height {
        return Err(EncodeError::SizeMismatch {
            got_w: frame.width,
            got_h: frame.height,
            want_w: settings.width,
            want_h: settings.height,
        });
    }
    Ok(())
}
