//! Video encoders: what turns the source's pictures into the H.264 access units that every
//! viewer shares. One [`Encoder`] trait, one file per encoder, one row per encoder in
//! [`ENCODERS`]; [`open`] is the one place that picks the encoder for a stream, so the hub never
//! knows which one runs.
//!
//! Today the table has one row, openh264 (software, constrained baseline). The encoders to come
//! fit the same trait: a V4L2 memory-to-memory hardware encoder, and passthrough for sources that
//! deliver H.264 already (it hands their access units on as they are).
//!
//! To add an encoder: a file with a type that implements [`Encoder`] and a
//! `static BACKEND: Backend`, that row in [`ENCODERS`], and the choice among the rows in [`open`].

use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::{Frame, VideoFormat};

pub mod openh264;

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

/// An H.264 encoder for one stream, at the settings it was opened with.
pub trait Encoder: Send {
    /// The encoder's name, as its row in [`ENCODERS`] gives it.
    fn name(&self) -> &'static str;
    /// Encode one picture; a keyframe (IDR with SPS and PPS) when `force_keyframe`. `None` when
    /// nothing came out for it.
    fn encode(
        &mut self,
        frame: &Frame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError>;
}

/// One kind of encoder: its name and how it opens.
pub struct Backend {
    pub name: &'static str,
    pub open: fn(EncoderSettings) -> Result<Box<dyn Encoder>, EncodeError>,
}

/// Every encoder spyglass has, in the order [`open`] prefers them.
pub static ENCODERS: [&Backend; 1] = [&openh264::BACKEND];

/// The encoder for a stream of `format` at `bitrate_kbps`: the one place that chooses.
pub fn open(format: &VideoFormat, bitrate_kbps: u32) -> Result<Box<dyn Encoder>, EncodeError> {
    let settings = EncoderSettings {
        width: format.width,
        height: format.height,
        fps: format.fps.max(1),
        bitrate_kbps,
    };
    (ENCODERS[0].open)(settings)
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
