//! Video sources: where raw pictures come from before they are encoded.
//!
//! Every source yields [`Frame`]s in I420 at the size and rate it negotiated. `--video test` picks
//! the built-in test pattern, anything else is taken as a V4L2 device path; [`open`] is the one
//! place that makes that choice.

use std::time::{Instant, SystemTime};

pub mod controls;
pub mod convert;
pub mod fault_injection;
pub mod negotiate;
pub mod snapshot;
pub mod test_pattern;
pub mod v4l2;

/// What the user asked for: a source name and the wanted size and rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoSpec {
    /// `test`, or a V4L2 device path such as `/dev/video0`.
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// What a source actually delivers once opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFormat {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Human-readable origin, e.g. `test pattern` or `/dev/video0 MJPG 1280x720@30`.
    pub description: String,
}

/// One picture in I420: the Y plane (`width*height` bytes), then U, then V (each
/// `(width/2)*(height/2)` bytes). Width and height are even.
#[derive(Debug, Clone)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// Wall-clock capture time (the test pattern writes this into the picture).
    pub captured_at: SystemTime,
    /// Monotonic capture time, used for RTP timestamps and latency inside the process.
    pub instant: Instant,
}

impl Frame {
    /// Byte length of an I420 picture of this size.
    pub fn i420_len(width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        w * h + 2 * (w / 2) * (h / 2)
    }

    /// The three planes (Y, U, V).
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let y_len = (self.width * self.height) as usize;
        let c_len = y_len / 4;
        let (y, rest) = self.data.split_at(y_len);
        let (u, v) = rest.split_at(c_len);
        (y, u, &v[..c_len])
    }
}

/// Why a source could not be opened or stopped delivering. Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("{device}: no such device")]
    NotFound { device: String },
    #[error("{device}: device is busy (another program is using it)")]
    Busy { device: String },
    #[error("{device}: permission denied (add the user to the `video` group)")]
    PermissionDenied { device: String },
    #[error("{device}: no format fits {wanted}; the device offers: {offered}")]
    NoFittingFormat {
        device: String,
        wanted: String,
        offered: String,
    },
    #[error("{device}: {message}")]
    Failed { device: String, message: String },
}

/// A source of raw pictures. `next_frame` blocks until the next picture is ready, paced by the
/// source (a camera's clock, or the test pattern's timer).
pub trait VideoSource: Send {
    fn format(&self) -> &VideoFormat;
    fn next_frame(&mut self) -> Result<Frame, VideoError>;
}

/// Open the source named by `spec.source`.
pub fn open(spec: &VideoSpec) -> Result<Box<dyn VideoSource>, VideoError> {
    open_with(spec, &controls::Controls::for_spec(spec))
}

/// Open the source named by `spec.source`; the test pattern follows `controls` (a V4L2 camera
/// keeps its controls in the device).
pub fn open_with(
    spec: &VideoSpec,
    controls: &controls::Controls,
) -> Result<Box<dyn VideoSource>, VideoError> {
    match spec.source.as_str() {
        "test" => Ok(Box::new(match controls {
            controls::Controls::Pattern(c) => {
                test_pattern::TestPattern::with_controls(spec, std::sync::Arc::clone(c))
            }
            _ => test_pattern::TestPattern::new(spec),
        })),
        s if s.starts_with(fault_injection::PREFIX) => Ok(Box::new(
            fault_injection::FaultInjection::open(&s[fault_injection::PREFIX.len()..], spec)?,
        )),
        path => Ok(Box::new(v4l2::V4l2Source::open(path, spec)?)),
    }
}
