//! V4L2 camera source (`--video /dev/videoN`), its picture controls ([`controls`]) and the
//! device listing behind `spyglass devices`.
//!
//! Opening a device reads what it offers into the [`negotiate`] model, lets [`negotiate`] choose,
//! sets format and frame interval, and checks what the driver actually took. Capture streams
//! through 4 mmap buffers; [`VideoSource::next_frame`] blocks on the next buffer and converts it
//! to I420 with [`convert`]. The caller runs it on a thread of its own.

use std::fmt;
use std::io;
use std::time::{Duration, Instant, SystemTime};

use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, Format, FourCC, Fraction};

use super::controls::Controls;
use super::convert::{self, Layout, MjpegDecoder};
use super::m2m::video_nodes;
use super::negotiate::{self, FourCc, FrameSize, Interval, Offered, OfferedSize, Rates};
use super::{
    AccessUnit, Backend, Captured, Delivers, Frame, KeyframeTrigger, SourceOpener, VideoError,
    VideoFormat, VideoSource, VideoSpec,
};

pub mod controls;

/// The row in [`super::SOURCES`]: `--video /dev/videoN`, any absolute path.
pub static BACKEND: Backend = Backend {
    usage: Some("a V4L2 device path such as /dev/video0"),
    claims: |value| value.starts_with('/') && value.len() > 1,
    stamped: false,
    prepare,
};

/// The device's own controls; each open negotiates anew.
fn prepare(spec: &VideoSpec) -> (Controls, SourceOpener) {
    let spec = spec.clone();
    let path = spec.source.to_string();
    let controls = Controls::new(std::sync::Arc::new(controls::V4l2Controls {
        path: path.clone(),
    }));
    let open: SourceOpener =
        Box::new(move || Ok(Box::new(V4l2Source::open(&path, &spec)?) as Box<dyn VideoSource>));
    (controls, open)
}

/// Buffers queued to the driver.
const BUFFERS: u32 = 4;
/// A camera that delivers nothing for this long is taken as stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive unusable frames (driver error flag, corrupt JPEG, short buffer) before giving up.
const MAX_BAD_FRAMES: u32 = 30;

// errno values that io::ErrorKind does not name.
use libc::{ENODEV, ENOTTY, ENXIO};

/// A V4L2 capture device, streaming.
pub struct V4l2Source {
    path: String,
    format: VideoFormat,
    fourcc: FourCc,
    layout: Layout,
    stream: MmapStream<'static>,
    mjpeg: MjpegDecoder,
}

impl V4l2Source {
    /// Open `path`, negotiate the format closest to `spec` and start streaming. Waits for the
    /// first frame (up to [`STALL_TIMEOUT`]), so a device that cannot stream fails here, not
    /// later.
    pub fn open(path: &str, spec: &VideoSpec) -> Result<Self, VideoError> {
        Self::open_with_format(path, spec, None)
    }

    /// [`open`](Self::open), but negotiating only among sizes and rates of pixel format `only`
    /// when it is given (`spyglass selftest --pixel-format`, to test each format a device offers).
    pub fn open_with_format(
        path: &str,
        spec: &VideoSpec,
        only: Option<FourCc>,
    ) -> Result<Self, VideoError> {
        let device = Device::with_path(path).map_err(|e| io_error(path, "cannot open", e))?;
        let caps = check_capture_device(path, &device)?;

        let mut offered = enumerate(&device, Some((spec.width, spec.height)))
            .map_err(|e| io_error(path, "cannot list formats", e))?;
        if let Some(fourcc) = only {
            let all = negotiate::describe(&offered);
            offered.retain(|o| o.fourcc == fourcc);
            if offered.is_empty() {
                return Err(VideoError::NoFittingFormat {
                    device: path.to_string(),
                    wanted: format!("{fourcc} {}x{}@{}", spec.width, spec.height, spec.fps),
                    offered: all,
                });
            }
        }
        // H.264 is passed through when the encoder choice allows it, or when asked for by name.
        let h264 = spec.encoder.allows_passthrough() || only == Some(FourCc::H264);
        let choice = negotiate::negotiate_with(&offered, spec.width, spec.height, spec.fps, h264)
            .map_err(|no_fit| VideoError::NoFittingFormat {
            device: path.to_string(),
            wanted: format!("{}x{}@{}", spec.width, spec.height, spec.fps),
            offered: no_fit.offered,
        })?;

        let wanted = Format::new(
            choice.width,
            choice.height,
            FourCC::new(&choice.fourcc.to_bytes()),
        );
        let actual = device
            .set_format(&wanted)
            .map_err(|e| io_error(path, &format!("cannot set format {choice}"), e))?;
        let fourcc = FourCc::from_bytes(actual.fourcc.repr);
        if fourcc != choice.fourcc {
            return Err(failed(
                path,
                format!("asked the driver for {choice}, it set {fourcc} instead"),
            ));
        }
        if actual.width != choice.width || actual.height != choice.height {
            if actual.width % 2 == 1
                || actual.height % 2 == 1
                || actual.width == 0
                || actual.height == 0
            {
                return Err(failed(
                    path,
                    format!(
                        "asked the driver for {choice}, it set {}x{}, which I420 cannot hold",
                        actual.width, actual.height
                    ),
                ));
            }
            tracing::warn!(
                device = path,
                "asked for {choice}, the driver set {}x{}",
                actual.width,
                actual.height
            );
        }
        let (width, height) = (actual.width, actual.height);

        // Not every driver lets the rate be set (or read); then it runs at its own.
        let interval = match device.set_params(&Parameters::new(Fraction::new(
            choice.interval.numerator,
            choice.interval.denominator,
        ))) {
            Ok(params) if params.interval.numerator > 0 && params.interval.denominator > 0 => {
                Interval::new(params.interval.numerator, params.interval.denominator)
            }
            Ok(_) => choice.interval,
            Err(e) => {
                tracing::warn!(device = path, "cannot set frame interval: {e}");
                match device.params() {
                    Ok(p) if p.interval.numerator > 0 && p.interval.denominator > 0 => {
                        Interval::new(p.interval.numerator, p.interval.denominator)
                    }
                    _ => choice.interval,
                }
            }
        };
        let fps = interval.fps_rounded();

        let layout = raw_layout(fourcc, &actual);
        let mut stream = MmapStream::with_buffers(&device, Type::VideoCapture, BUFFERS)
            .map_err(|e| io_error(path, "cannot allocate capture buffers", e))?;
        stream.set_timeout(STALL_TIMEOUT);

        let description = format!(
            "{path} {fourcc} {width}x{height}@{}",
            negotiate::fps_text(interval.fps())
        );
        tracing::info!(
            device = path,
            card = caps.card,
            driver = caps.driver,
            "capturing {description}"
        );
        let mut source = V4l2Source {
            path: path.to_string(),
            format: VideoFormat {
                width,
                height,
                fps,
                description,
            },
            fourcc,
            layout,
            stream,
            mjpeg: MjpegDecoder::new(),
        };
        // Starts streaming (the first `next` queues every buffer and turns the stream on). The
        // frame itself is dropped; webcams' first frame is often incomplete anyway.
        source.stream.next().map_err(|e| stream_error(path, e))?;
        Ok(source)
    }
}

impl VideoSource for V4l2Source {
    fn format(&self) -> &VideoFormat {
        &self.format
    }

    fn delivers(&self) -> Delivers {
        if self.fourcc == FourCc::H264 {
            Delivers::H264
        } else {
            Delivers::I420
        }
    }

    fn next_captured(&mut self) -> Result<Captured, VideoError> {
        if self.fourcc != FourCc::H264 {
            return self.next_frame().map(Captured::Raw);
        }
        let mut bad = 0;
        loop {
            let (buffer, meta) = match self.stream.next() {
                Ok(next) => next,
                Err(e) if is_retryable(&e) => {
                    self.finish_interrupted_dequeue()?;
                    continue;
                }
                Err(e) => return Err(stream_error(&self.path, e)),
            };
            let captured_at = SystemTime::now();
            let instant = Instant::now();
            let used = (meta.bytesused as usize).min(buffer.len());
            if !meta.flags.contains(BufferFlags::ERROR) && used > 0 {
                return Ok(Captured::H264(AccessUnit {
                    data: bytes::Bytes::copy_from_slice(&buffer[..used]),
                    captured_at,
                    instant,
                }));
            }
            bad += 1;
            if bad >= MAX_BAD_FRAMES {
                return Err(failed(
                    &self.path,
                    format!("{bad} unusable H.264 buffers in a row"),
                ));
            }
        }
    }

    /// The force-key-frame control, set through a handle of its own (the capture thread holds
    /// the stream).
    fn keyframe_trigger(&self) -> Option<KeyframeTrigger> {
        if self.fourcc != FourCc::H264 {
            return None;
        }
        let path = self.path.clone();
        Some(std::sync::Arc::new(move || {
            crate::video::m2m::set_control_at(
                &path,
                v4l::v4l_sys::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME,
                1,
            )
            .map_err(|e| failed(&path, e.to_string()))
        }))
    }

    fn next_frame(&mut self) -> Result<Frame, VideoError> {
        let (width, height) = (self.format.width, self.format.height);
        let mut bad = 0;
        loop {
            let (buffer, meta) = match self.stream.next() {
                Ok(next) => next,
                // A signal interrupted the wait. `next` had already given the previous buffer
                // back, so finish the dequeue by hand (that frame is dropped) and carry on.
                Err(e) if is_retryable(&e) => {
                    self.finish_interrupted_dequeue()?;
                    continue;
                }
                Err(e) => return Err(stream_error(&self.path, e)),
            };
            let captured_at = SystemTime::now();
            let instant = Instant::now();

            let problem = if meta.flags.contains(BufferFlags::ERROR) {
                "the driver flagged the buffer as corrupt".to_string()
            } else {
                // MJPEG frames vary in size: only `bytesused` bytes are the picture. Some drivers
                // leave `bytesused` at 0 for raw formats; then the whole buffer counts.
                let used = match meta.bytesused as usize {
                    0 => buffer.len(),
                    n => n.min(buffer.len()),
                };
                let data = &buffer[..used];
                let mut out = Vec::with_capacity(Frame::i420_len(width, height));
                let converted = match self.fourcc {
                    FourCc::Yuyv => convert::yuyv_to_i420(data, &self.layout, &mut out),
                    FourCc::Nv12 => convert::nv12_to_i420(data, &self.layout, &mut out),
                    FourCc::Yu12 => convert::yu12_to_i420(data, &self.layout, &mut out),
                    FourCc::Mjpeg => self.mjpeg.decode(data, width, height, &mut out),
                    // Negotiation picks only formats it can convert (H.264 is passed through, in
                    // `next_captured`); a driver that switched formats is refused at open.
                    FourCc::H264 | FourCc::Other(_) => {
                        return Err(failed(
                            &self.path,
                            format!("spyglass cannot convert {}", self.fourcc),
                        ));
                    }
                };
                match converted {
                    Ok(()) => {
                        return Ok(Frame {
                            width,
                            height,
                            data: out,
                            captured_at,
                            instant,
                        });
                    }
                    Err(e) => e.to_string(),
                }
            };
            bad += 1;
            tracing::debug!(device = self.path, "dropping frame: {problem}");
            if bad >= MAX_BAD_FRAMES {
                return Err(failed(
                    &self.path,
                    format!("{bad} unusable frames in a row, the last: {problem}"),
                ));
            }
        }
    }
}

impl V4l2Source {
    fn finish_interrupted_dequeue(&mut self) -> Result<(), VideoError> {
        for _ in 0..10 {
            match CaptureStream::dequeue(&mut self.stream) {
                Ok(_) => return Ok(()),
                Err(e) if is_retryable(&e) => continue,
                Err(e) => return Err(stream_error(&self.path, e)),
            }
        }
        Err(failed(
            &self.path,
            "capture keeps being interrupted".to_string(),
        ))
    }
}

fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// Where the planes of a raw format lie in a buffer, from the format the driver set.
fn raw_layout(fourcc: FourCc, format: &Format) -> Layout {
    let bytes_per_pixel = if fourcc == FourCc::Yuyv { 2 } else { 1 };
    let natural = format.width as usize * bytes_per_pixel;
    let stride = (format.stride as usize).max(natural);
    let mut layout = Layout::new(format.width, format.height, stride);
    // Planar formats: some drivers (bcm2835-v4l2) allocate planes of a height rounded up to 16
    // lines, which shows in `sizeimage`; otherwise the planes follow each other directly.
    if matches!(fourcc, FourCc::Nv12 | FourCc::Yu12) && stride > 0 {
        let rows = (format.size as usize * 2 / 3) / stride;
        let h = format.height as usize;
        if rows > h && (rows == h.next_multiple_of(16) || rows == h.next_multiple_of(32)) {
            layout.plane_rows = rows as u32;
        }
    }
    layout
}

/// Query the device's capabilities and refuse nodes that cannot capture video.
fn check_capture_device(path: &str, device: &Device) -> Result<v4l::Capabilities, VideoError> {
    let caps = device.query_caps().map_err(|e| match e.raw_os_error() {
        Some(ENOTTY) => failed(path, "not a V4L2 device".to_string()),
        _ => io_error(path, "cannot query capabilities", e),
    })?;
    let flags = caps.capabilities;
    if !flags.contains(CapFlags::VIDEO_CAPTURE) {
        let what = if flags.contains(CapFlags::VIDEO_CAPTURE_MPLANE) {
            "a multi-planar capture device, which spyglass does not support"
        } else if flags.contains(CapFlags::META_CAPTURE) {
            "a metadata node, not a video capture device (the camera is usually the node before it)"
        } else {
            "not a video capture device"
        };
        return Err(failed(
            path,
            format!(
                "{} ({}, driver {}) is {what}",
                caps.card, caps.bus, caps.driver
            ),
        ));
    }
    if !flags.contains(CapFlags::STREAMING) {
        return Err(failed(
            path,
            format!(
                "{} (driver {}) cannot stream with mmap buffers",
                caps.card, caps.driver
            ),
        ));
    }
    Ok(caps)
}

/// Read every format, size and rate the device offers into the negotiation model. For size
/// ranges, rates are asked at the size nearest to `target` (or the largest size without one),
/// since V4L2 enumerates intervals per size.
fn enumerate(device: &Device, target: Option<(u32, u32)>) -> io::Result<Vec<Offered>> {
    let mut offered = Vec::new();
    for description in device.enum_formats()? {
        let fourcc = FourCc::from_bytes(description.fourcc.repr);
        let mut sizes = Vec::new();
        match device.enum_framesizes(description.fourcc) {
            Ok(list) => {
                for entry in list {
                    let size = match entry.size {
                        FrameSizeEnum::Discrete(d) => FrameSize::Discrete {
                            width: d.width,
                            height: d.height,
                        },
                        FrameSizeEnum::Stepwise(s) => FrameSize::Stepwise {
                            min_width: s.min_width,
                            max_width: s.max_width,
                            step_width: s.step_width,
                            min_height: s.min_height,
                            max_height: s.max_height,
                            step_height: s.step_height,
                        },
                    };
                    let (w, h) = match target {
                        Some((w, h)) => size.nearest_to(w, h),
                        None => size.largest(),
                    };
                    sizes.push(OfferedSize {
                        size,
                        rates: rates_at(device, description.fourcc, w, h),
                    });
                }
            }
            // The driver does not enumerate sizes (vivid's TV inputs, some capture cards): offer
            // any size and let S_FMT adjust it; the size set is read back.
            Err(_) => sizes.push(OfferedSize {
                size: FrameSize::Stepwise {
                    min_width: 2,
                    max_width: 8192,
                    step_width: 2,
                    min_height: 2,
                    max_height: 8192,
                    step_height: 2,
                },
                rates: Rates::Unknown,
            }),
        }
        offered.push(Offered { fourcc, sizes });
    }
    Ok(offered)
}

fn rates_at(device: &Device, fourcc: FourCC, width: u32, height: u32) -> Rates {
    let Ok(list) = device.enum_frameintervals(fourcc, width, height) else {
        return Rates::Unknown;
    };
    let mut discrete = Vec::new();
    for entry in list {
        match entry.interval {
            FrameIntervalEnum::Discrete(f) => {
                discrete.push(Interval::new(f.numerator, f.denominator))
            }
            FrameIntervalEnum::Stepwise(s) => {
                return Rates::Stepwise {
                    min: Interval::new(s.min.numerator, s.min.denominator),
                    max: Interval::new(s.max.numerator, s.max.denominator),
                    step: Interval::new(s.step.numerator, s.step.denominator),
                };
            }
        }
    }
    if discrete.is_empty() {
        Rates::Unknown
    } else {
        Rates::Discrete(discrete)
    }
}

fn failed(path: &str, message: String) -> VideoError {
    VideoError::Failed {
        device: path.to_string(),
        message,
    }
}

/// Map an error from opening or configuring the device.
fn io_error(path: &str, what: &str, e: io::Error) -> VideoError {
    let device = path.to_string();
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) | (_, Some(ENODEV | ENXIO)) => VideoError::NotFound { device },
        (io::ErrorKind::PermissionDenied, _) => VideoError::PermissionDenied { device },
        (io::ErrorKind::ResourceBusy, _) => VideoError::Busy { device },
        _ => VideoError::Failed {
            device,
            message: format!("{what}: {e}"),
        },
    }
}

/// Map an error from dequeuing a frame.
fn stream_error(path: &str, e: io::Error) -> VideoError {
    let message = match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::TimedOut, _) => format!(
            "no frame for {} s, the camera stalled",
            STALL_TIMEOUT.as_secs()
        ),
        (_, Some(ENODEV)) => "the device went away (unplugged?)".to_string(),
        (io::ErrorKind::ResourceBusy, _) => {
            return VideoError::Busy {
                device: path.to_string(),
            };
        }
        _ => format!("capture failed: {e}"),
    };
    failed(path, message)
}

/// One V4L2 capture device as `spyglass devices` shows it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub path: String,
    pub card: String,
    pub driver: String,
    pub bus: String,
    pub formats: Vec<Offered>,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} (driver {}, {})",
            self.path, self.card, self.driver, self.bus
        )?;
        if self.formats.is_empty() {
            writeln!(f, "  no formats")?;
        }
        for format in &self.formats {
            let note = if format.fourcc.is_supported() {
                ""
            } else if format.fourcc == FourCc::H264 {
                " (passed through with --encoder auto)"
            } else {
                " (not usable by spyglass)"
            };
            let sizes: Vec<String> = format.sizes.iter().map(negotiate::describe_size).collect();
            writeln!(f, "  {}{note}: {}", format.fourcc, sizes.join("  "))?;
        }
        Ok(())
    }
}

/// Every V4L2 capture device: its description, or why it could not be read. Nodes that are not
/// video capture devices (metadata nodes, encoders, outputs) are left out.
pub fn probe_devices() -> Vec<Result<DeviceInfo, VideoError>> {
    let mut found = Vec::new();
    for path in video_nodes() {
        let device = match Device::with_path(&path) {
            Ok(d) => d,
            Err(e) => {
                found.push(Err(io_error(&path, "cannot open", e)));
                continue;
            }
        };
        let Ok(caps) = device.query_caps() else {
            continue;
        };
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
            continue;
        }
        found.push(match enumerate(&device, None) {
            Ok(formats) => Ok(DeviceInfo {
                path,
                card: caps.card,
                driver: caps.driver,
                bus: caps.bus,
                formats,
            }),
            Err(e) => Err(io_error(&path, "cannot list formats", e)),
        });
    }
    found
}

/// The text of `spyglass devices`.
pub fn list_devices() -> String {
    let found = probe_devices();
    if found.is_empty() {
        return "no V4L2 capture devices found\n".to_string();
    }
    let mut text = String::new();
    for entry in found {
        match entry {
            Ok(info) => text.push_str(&info.to_string()),
            Err(e) => text.push_str(&format!("{e}\n")),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pix(fourcc: &[u8; 4], width: u32, height: u32, stride: u32, size: u32) -> Format {
        let mut f = Format::new(width, height, FourCC::new(fourcc));
        f.stride = stride;
        f.size = size;
        f
    }

    #[test]
    fn raw_layout_from_the_driver_format() {
        let l = raw_layout(FourCc::Yuyv, &pix(b"YUYV", 640, 480, 1280, 614400));
        assert_eq!((l.stride, l.plane_rows), (1280, 480));
        // bytesperline 0 (some drivers): the natural line length.
        assert_eq!(
            raw_layout(FourCc::Yuyv, &pix(b"YUYV", 640, 480, 0, 0)).stride,
            1280
        );
        // bcm2835-v4l2 style: 1920x1080 YU12 with planes of 1088 lines.
        let l = raw_layout(
            FourCc::Yu12,
            &pix(b"YU12", 1920, 1080, 1920, 1920 * 1088 * 3 / 2),
        );
        assert_eq!((l.stride, l.plane_rows), (1920, 1088));
        // Page-rounded sizeimage does not move the planes.
        let l = raw_layout(FourCc::Nv12, &pix(b"NV12", 640, 480, 640, 462848));
        assert_eq!(l.plane_rows, 480);
    }

    #[test]
    fn open_errors_name_the_device() {
        let spec = VideoSpec {
            source: "/dev/video-nonexistent".parse().unwrap(),
            width: 640,
            height: 480,
            fps: 30,
            ..Default::default()
        };
        let err = V4l2Source::open("/dev/video-nonexistent", &spec)
            .err()
            .expect("no such device");
        assert!(matches!(err, VideoError::NotFound { .. }), "{err}");
        assert_eq!(err.to_string(), "/dev/video-nonexistent: no such device");
        // A file that is not a V4L2 device.
        let err = V4l2Source::open("/dev/null", &spec)
            .err()
            .expect("not a camera");
        assert_eq!(err.to_string(), "/dev/null: not a V4L2 device");
    }

    #[test]
    fn errno_mapping() {
        let p = "/dev/video0";
        let e = |code| io::Error::from_raw_os_error(code);
        assert!(matches!(
            io_error(p, "x", e(2)),
            VideoError::NotFound { .. }
        ));
        assert!(matches!(
            io_error(p, "x", e(ENODEV)),
            VideoError::NotFound { .. }
        ));
        assert!(matches!(io_error(p, "x", e(16)), VideoError::Busy { .. }));
        assert!(matches!(
            io_error(p, "x", e(13)),
            VideoError::PermissionDenied { .. }
        ));
        assert!(matches!(
            io_error(p, "x", e(1)),
            VideoError::PermissionDenied { .. }
        ));
        assert_eq!(
            io_error(p, "cannot set format", e(22)).to_string(),
            "/dev/video0: cannot set format: Invalid argument (os error 22)"
        );
        let stalled = stream_error(p, io::Error::new(io::ErrorKind::TimedOut, "VIDIOC_DQBUF"));
        assert_eq!(
            stalled.to_string(),
            "/dev/video0: no frame for 2 s, the camera stalled"
        );
    }

    #[test]
    fn listing_without_cameras() {
        // This machine may or may not have cameras; the text is well-formed either way.
        let text = list_devices();
        if video_nodes().is_empty() {
            assert_eq!(text, "no V4L2 capture devices found\n");
        } else {
            assert!(text.ends_with('\n'));
        }
    }

    #[test]
    fn device_info_display() {
        let info = DeviceInfo {
            path: "/dev/video0".into(),
            card: "HD Pro Webcam C920".into(),
            driver: "uvcvideo".into(),
            bus: "usb-0000:01:00.0-1.3".into(),
            formats: vec![
                Offered {
                    fourcc: FourCc::Yuyv,
                    sizes: vec![OfferedSize {
                        size: FrameSize::Discrete {
                            width: 640,
                            height: 480,
                        },
                        rates: Rates::Discrete(vec![
                            Interval::from_fps(30),
                            Interval::from_fps(15),
                        ]),
                    }],
                },
                Offered {
                    fourcc: FourCc::H264,
                    sizes: vec![OfferedSize {
                        size: FrameSize::Discrete {
                            width: 1920,
                            height: 1080,
                        },
                        rates: Rates::Discrete(vec![Interval::from_fps(30)]),
                    }],
                },
            ],
        };
        assert_eq!(
            info.to_string(),
            "/dev/video0: HD Pro Webcam C920 (driver uvcvideo, usb-0000:01:00.0-1.3)\n  YUYV: 640x480@30,15\n  H264 (passed through with --encoder auto): 1920x1080@30\n"
        );
    }
}
