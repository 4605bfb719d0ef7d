//! Video: where pictures come from ([`VideoSource`]), how they are encoded ([`encode`]), and the
//! hub that shares one source and one encoder among every viewer ([`hub`]).
//!
//! Every source yields [`Frame`]s in I420 at the size and rate it negotiated. Each kind of source
//! lives in a file of its own and has one row in [`SOURCES`]: the `--video` values it takes, and
//! how it opens. A `--video` value is parsed once, into a [`Source`], by that table.
//!
//! To add a source: a file with a type that implements [`VideoSource`], its picture controls if
//! it has any ([`controls::PictureControls`]), and a `static BACKEND: Backend`; then that row in
//! [`SOURCES`], before any row that would claim its values.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use controls::Controls;

pub mod controls;
pub mod convert;
pub mod encode;
pub mod exec;
pub mod fault_injection;
pub mod h264;
pub mod hub;
pub mod m2m;
pub mod negotiate;
pub mod snapshot;
pub mod test_pattern;
pub mod v4l2;

/// One kind of video source: which `--video` values it takes and how it opens.
pub struct Backend {
    /// How `--video` names it, for errors (`` `test` ``); `None` for sources only tests use.
    pub usage: Option<&'static str>,
    /// Whether this kind takes the `--video` value.
    pub claims: fn(&str) -> bool,
    /// Its frames carry the test pattern's code (docs/TEST_PATTERN.md).
    pub stamped: bool,
    /// The source's picture controls, and how to open it (each time the pipeline starts).
    pub prepare: fn(&VideoSpec) -> (Controls, SourceOpener),
}

/// Every kind of video source; the first row that claims a `--video` value gets it.
pub static SOURCES: [&Backend; 4] = [
    &test_pattern::BACKEND,
    &fault_injection::BACKEND,
    &exec::BACKEND,
    &v4l2::BACKEND,
];

/// The source when `--video` is not given: the first camera.
pub const DEFAULT_SOURCE: &str = "/dev/video0";

/// Opens the source each time the pipeline starts.
pub type SourceOpener = Box<dyn Fn() -> Result<Box<dyn VideoSource>, VideoError> + Send + Sync>;

/// A `--video` value, parsed: the row of [`SOURCES`] that takes it, and the value itself.
#[derive(Clone)]
pub struct Source {
    backend: &'static Backend,
    value: String,
}

impl Source {
    /// The kind of source.
    pub fn backend(&self) -> &'static Backend {
        self.backend
    }

    /// Whether this is a source of the kind `backend`.
    pub fn is(&self, backend: &Backend) -> bool {
        std::ptr::eq(self.backend, backend)
    }

    /// The value as given, e.g. `/dev/video0`.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(value: &str) -> Result<Source, String> {
        if let Some(backend) = SOURCES.iter().copied().find(|b| (b.claims)(value)) {
            return Ok(Source {
                backend,
                value: value.to_string(),
            });
        }
        let usages: Vec<&str> = SOURCES.iter().filter_map(|b| b.usage).collect();
        let expected = match usages.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => "a video source".to_string(),
        };
        Err(format!("expected {expected}, got {value:?}"))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.value, f)
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        self.is(other.backend) && self.value == other.value
    }
}

impl Eq for Source {}

/// A source equals the text that names it.
impl PartialEq<&str> for Source {
    fn eq(&self, other: &&str) -> bool {
        self.value == *other
    }
}

impl Default for Source {
    fn default() -> Source {
        Source {
            backend: &v4l2::BACKEND,
            value: DEFAULT_SOURCE.to_string(),
        }
    }
}

/// What the user asked for: a source, the wanted size and rate, and how to encode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoSpec {
    pub source: Source,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `--encoder`: which encoder turns raw pictures into H.264 (sources that deliver H.264
    /// pass it through whatever this says, unless it names an encoder).
    pub encoder: encode::EncoderChoice,
    /// `--exec-format`: what a process source (`exec:COMMAND`) writes.
    pub exec_format: exec::ExecFormat,
}

impl Default for VideoSpec {
    /// The first camera at 1280x720, 30 fps, the encoder chosen automatically.
    fn default() -> VideoSpec {
        VideoSpec {
            source: Source::default(),
            width: 1280,
            height: 720,
            fps: 30,
            encoder: encode::EncoderChoice::default(),
            exec_format: exec::ExecFormat::default(),
        }
    }
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

/// One H.264 access unit from a source that encodes by itself (a camera that delivers H.264, a
/// process that writes it): Annex B, start codes included, as the source made it.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    pub data: Bytes,
    /// When its first bytes arrived.
    pub captured_at: SystemTime,
    pub instant: Instant,
}

/// What a source delivers, each time: a raw picture for an encoder, or H.264 to pass through.
#[derive(Debug, Clone)]
pub enum Captured {
    Raw(Frame),
    H264(AccessUnit),
}

/// What kind of pictures an open source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivers {
    /// Raw I420 [`Frame`]s, which an encoder turns into H.264.
    I420,
    /// H.264 [`AccessUnit`]s, passed through to the viewers as they are.
    H264,
}

/// Asks a source that encodes by itself for an IDR soon (V4L2's force-key-frame control). Called
/// from the encoder's thread while the source captures on its own.
pub type KeyframeTrigger = Arc<dyn Fn() -> Result<(), VideoError> + Send + Sync>;

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

/// A source of pictures. `next_frame` blocks until the next picture is ready, paced by the
/// source (a camera's clock, or the test pattern's timer).
///
/// Most sources deliver raw pictures and implement only `format` and `next_frame`. A source that
/// delivers H.264 says so in [`delivers`](Self::delivers) and implements
/// [`next_captured`](Self::next_captured) (its `next_frame` is an error), and
/// [`keyframe_trigger`](Self::keyframe_trigger) when it can be asked for an IDR.
pub trait VideoSource: Send {
    fn format(&self) -> &VideoFormat;
    fn next_frame(&mut self) -> Result<Frame, VideoError>;

    /// What [`next_captured`](Self::next_captured) gives.
    fn delivers(&self) -> Delivers {
        Delivers::I420
    }

    /// The next picture, raw or H.264.
    fn next_captured(&mut self) -> Result<Captured, VideoError> {
        self.next_frame().map(Captured::Raw)
    }

    /// How to ask this source for an IDR; `None` when it cannot be asked (it makes them at its
    /// own period) or makes no H.264.
    fn keyframe_trigger(&self) -> Option<KeyframeTrigger> {
        None
    }

    /// How long the first picture may take after the source opened, beyond the pipeline's stall
    /// limit (a process that first starts a camera).
    fn startup(&self) -> Duration {
        Duration::ZERO
    }
}

impl VideoSpec {
    /// Whether the source may deliver H.264, which is then passed through: a process that writes
    /// H.264, or a V4L2 camera when the encoder is chosen automatically (it may offer H.264).
    pub fn may_pass_through(&self) -> bool {
        if self.source.is(&exec::BACKEND) {
            self.exec_format == exec::ExecFormat::H264
        } else {
            self.source.is(&v4l2::BACKEND) && self.encoder.allows_passthrough()
        }
    }

    /// The source's picture controls, and how to open it: what its row in [`SOURCES`] gives.
    pub fn prepare(&self) -> (Controls, SourceOpener) {
        (self.source.backend.prepare)(self)
    }
}

/// Open the source `spec` names, once.
pub fn open(spec: &VideoSpec) -> Result<Box<dyn VideoSource>, VideoError> {
    let (_controls, open) = spec.prepare();
    open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_values_are_parsed_by_the_table() {
        let parse = |value: &str| value.parse::<Source>();
        assert!(parse("test").unwrap().is(&test_pattern::BACKEND));
        assert!(
            parse("test-faults:/tmp/x")
                .unwrap()
                .is(&fault_injection::BACKEND)
        );
        let command = parse("exec:rpicam-vid -o -").unwrap();
        assert!(command.is(&exec::BACKEND));
        assert_eq!(command.as_str(), "exec:rpicam-vid -o -");
        let camera = parse("/dev/video2").unwrap();
        assert!(camera.is(&v4l2::BACKEND));
        assert_eq!(camera.to_string(), "/dev/video2");
        assert_eq!(camera, parse("/dev/video2").unwrap());
        assert_ne!(camera, parse("/dev/video3").unwrap());
        for bad in [
            "",
            "/",
            "video0",
            "test-faults:",
            "Test",
            "exec:",
            "exec:  ",
        ] {
            assert_eq!(
                parse(bad).unwrap_err(),
                format!(
                    "expected `test`, `exec:COMMAND` or a V4L2 device path such as /dev/video0, got {bad:?}"
                )
            );
        }
    }
}
