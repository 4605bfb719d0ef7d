//! Choosing a capture format from what a V4L2 device advertises.
//!
//! Pure code: [`negotiate`] takes the device's formats, sizes and frame intervals (as
//! [`Offered`]) and the wanted size and rate, and returns a [`Choice`]. The device side
//! (`v4l2.rs`) only fills in the model and applies the choice, so the rules are tested here
//! against recorded capability lists, without a camera.
//!
//! Rules, in order:
//! 1. Size: the exact requested size if any usable format has it. Otherwise the "closest" size:
//!    the smallest (by pixel count) that is at least as wide and as tall as requested, so the
//!    picture is never upscaled; if no size is that large, the largest size there is.
//! 2. Format at that size: a raw format (YU12, then NV12, then YUYV: cheapest to convert first)
//!    if it reaches the requested rate; else MJPEG if it reaches the rate; else whichever format
//!    has the highest rate. USB 2.0 webcams offer YUYV 1280x720 only at 10 fps or less, because
//!    raw 720p30 does not fit the bus, while MJPEG does 30: this is the rule that picks MJPEG there.
//! 3. Rate: the slowest offered rate that still reaches the requested one, else the fastest.
//!
//! A rate "reaches" the request if it is within 1% of it, so 29.97 fps satisfies 30.

use std::fmt;

/// Pixel formats, by V4L2 fourcc. Only the first four can be converted to I420.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FourCc {
    /// Packed 4:2:2, `Y0 U Y1 V`.
    Yuyv,
    /// Motion JPEG: one JPEG per frame.
    Mjpeg,
    /// Y plane, then one interleaved UV plane at half size.
    Nv12,
    /// I420: Y, U, V planes (V4L2 calls it YU12).
    Yu12,
    /// H.264 (with start codes): not converted but passed through, when the encoder choice
    /// allows it (`--encoder auto`).
    H264,
    Other([u8; 4]),
}

impl FourCc {
    pub fn from_bytes(code: [u8; 4]) -> Self {
        match &code {
            b"YUYV" => FourCc::Yuyv,
            b"MJPG" => FourCc::Mjpeg,
            b"NV12" => FourCc::Nv12,
            b"YU12" => FourCc::Yu12,
            b"H264" => FourCc::H264,
            _ => FourCc::Other(code),
        }
    }

    pub fn to_bytes(self) -> [u8; 4] {
        match self {
            FourCc::Yuyv => *b"YUYV",
            FourCc::Mjpeg => *b"MJPG",
            FourCc::Nv12 => *b"NV12",
            FourCc::Yu12 => *b"YU12",
            FourCc::H264 => *b"H264",
            FourCc::Other(code) => code,
        }
    }

    /// A format spyglass converts, by its code in any case (`--pixel-format nv12`).
    pub fn parse_supported(code: &str) -> Result<FourCc, String> {
        let fourcc = match <[u8; 4]>::try_from(code.to_ascii_uppercase().as_bytes()) {
            Ok(bytes) => FourCc::from_bytes(bytes),
            Err(_) => FourCc::Other(*b"????"),
        };
        if fourcc.is_supported() || fourcc == FourCc::H264 {
            Ok(fourcc)
        } else {
            Err(format!(
                "expected YUYV, NV12, YU12, MJPG or H264, got {code:?}"
            ))
        }
    }

    /// Whether this source can convert the format to I420.
    pub fn is_supported(self) -> bool {
        !matches!(self, FourCc::Other(_) | FourCc::H264)
    }

    /// Uncompressed formats, preferred when fast enough (no JPEG decoding).
    pub fn is_raw(self) -> bool {
        matches!(self, FourCc::Yuyv | FourCc::Nv12 | FourCc::Yu12)
    }

    /// Preference among formats of the same class; lower is better. YU12 is a plain copy, NV12
    /// a de-interleave of chroma, YUYV a full repack.
    fn conversion_cost(self) -> u8 {
        match self {
            FourCc::Yu12 => 0,
            FourCc::Nv12 => 1,
            FourCc::Yuyv => 2,
            FourCc::Mjpeg => 3,
            FourCc::H264 | FourCc::Other(_) => 4,
        }
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.to_bytes();
        for b in code {
            // Fourccs are ASCII; show anything else as '?' rather than garbage.
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// A frame interval in seconds (`numerator / denominator`), as V4L2 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub numerator: u32,
    pub denominator: u32,
}

impl Interval {
    pub const fn new(numerator: u32, denominator: u32) -> Self {
        Interval {
            numerator,
            denominator,
        }
    }

    /// The interval of a whole frame rate.
    pub const fn from_fps(fps: u32) -> Self {
        Interval {
            numerator: 1,
            denominator: fps,
        }
    }

    /// Frames per second; 0 for a nonsensical interval.
    pub fn fps(self) -> f64 {
        if self.numerator == 0 || self.denominator == 0 {
            0.0
        } else {
            f64::from(self.denominator) / f64::from(self.numerator)
        }
    }

    /// Frames per second rounded to a whole number (29.97 -> 30), at least 1.
    pub fn fps_rounded(self) -> u32 {
        (self.fps().round() as u32).max(1)
    }
}

/// The frame sizes a format offers: one size, or a range (V4L2's stepwise and continuous, the
/// latter being a stepwise range with step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    Discrete {
        width: u32,
        height: u32,
    },
    Stepwise {
        min_width: u32,
        max_width: u32,
        step_width: u32,
        min_height: u32,
        max_height: u32,
        step_height: u32,
    },
}

impl FrameSize {
    /// The size in this entry nearest to `width`x`height`: the size itself for a discrete entry;
    /// for a range each dimension is clamped into the range and rounded up to the next step (so as
    /// not to shrink below the request), then moved to an even value inside the range.
    pub fn nearest_to(&self, width: u32, height: u32) -> (u32, u32) {
        match *self {
            FrameSize::Discrete { width, height } => (width, height),
            FrameSize::Stepwise {
                min_width,
                max_width,
                step_width,
                min_height,
                max_height,
                step_height,
            } => (
                snap(width, min_width, max_width, step_width),
                snap(height, min_height, max_height, step_height),
            ),
        }
    }

    /// The largest size in this entry.
    pub fn largest(&self) -> (u32, u32) {
        self.nearest_to(u32::MAX, u32::MAX)
    }
}

/// Clamp `v` into `[min, max]`, snap it to `min + k*step`, and keep the result even (I420 needs
/// even dimensions) while staying inside the range.
fn snap(v: u32, min: u32, max: u32, step: u32) -> u32 {
    let (min, max) = (min.min(max), max.max(min));
    let step = step.max(1);
    let v = v.clamp(min, max);
    let k = (v - min).div_ceil(step);
    let mut s = min.saturating_add(k.saturating_mul(step));
    if s > max {
        s = min + ((max - min) / step) * step;
    }
    if s % 2 == 1 {
        // Try the neighbours on the grid, or just the next even number for a fine grid.
        let up = if step % 2 == 1 { s + step } else { s + 1 };
        let down = if step % 2 == 1 {
            s.saturating_sub(step)
        } else {
            s.saturating_sub(1)
        };
        if up <= max {
            s = up;
        } else if down >= min {
            s = down;
        }
    }
    s
}

/// The frame rates a format offers at one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rates {
    Discrete(Vec<Interval>),
    /// Any interval from `min` (fastest) to `max` (slowest) in steps of `step`.
    Stepwise {
        min: Interval,
        max: Interval,
        step: Interval,
    },
    /// The driver does not enumerate intervals (e.g. vivid's TV inputs); its rate is whatever it
    /// runs at. Treated as reaching any requested rate; the rate actually set is read back.
    Unknown,
}

impl Rates {
    /// The fastest rate offered, in fps (`None` when unknown).
    fn max_fps(&self) -> Option<f64> {
        match self {
            Rates::Discrete(list) => list
                .iter()
                .map(|i| i.fps())
                .fold(None, |m, f| Some(m.map_or(f, |m: f64| m.max(f)))),
            Rates::Stepwise { min, .. } => Some(min.fps()),
            Rates::Unknown => None,
        }
    }

    /// The interval to ask for: the slowest offered rate that reaches `fps`, else the fastest.
    fn pick(&self, fps: u32) -> Interval {
        match self {
            Rates::Discrete(list) => {
                let reaching = list
                    .iter()
                    .filter(|i| reaches(i.fps(), fps))
                    .min_by(|a, b| a.fps().total_cmp(&b.fps()));
                let fastest = list.iter().max_by(|a, b| a.fps().total_cmp(&b.fps()));
                reaching
                    .or(fastest)
                    .copied()
                    .unwrap_or(Interval::from_fps(fps))
            }
            Rates::Stepwise { min, max, .. } => {
                let wanted = fps.max(1) as f64;
                if wanted >= min.fps() {
                    *min
                } else if wanted <= max.fps() {
                    *max
                } else {
                    Interval::from_fps(fps)
                }
            }
            Rates::Unknown => Interval::from_fps(fps.max(1)),
        }
    }
}

/// Whether `offered` fps satisfies a request for `wanted` fps (1% tolerance: 29.97 reaches 30).
fn reaches(offered: f64, wanted: u32) -> bool {
    offered * 1.01 >= f64::from(wanted)
}

/// One size entry of a format, with the rates offered at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedSize {
    pub size: FrameSize,
    pub rates: Rates,
}

/// One pixel format a device offers, with its sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    pub fourcc: FourCc,
    pub sizes: Vec<OfferedSize>,
}

/// What to configure on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    pub interval: Interval,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{}@{}",
            self.fourcc,
            self.width,
            self.height,
            fps_text(self.interval.fps())
        )
    }
}

/// Nothing the device offers can be captured; `offered` lists what it has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no usable format (YUYV, MJPG, NV12 or YU12); the device offers: {offered}")]
pub struct NoFit {
    /// One line, e.g. `YUYV 640x480@30,15; MJPG 1280x720@30`.
    pub offered: String,
}

/// Choose format, size and rate for a request of `width`x`height` at `fps`. See the module
/// documentation for the rules.
pub fn negotiate(offered: &[Offered], width: u32, height: u32, fps: u32) -> Result<Choice, NoFit> {
    negotiate_with(offered, width, height, fps, false)
}

/// [`negotiate`], and with `h264` H.264 too, which then comes first when it reaches the rate
/// (passed through, it costs nothing to convert or encode).
pub fn negotiate_with(
    offered: &[Offered],
    width: u32,
    height: u32,
    fps: u32,
    h264: bool,
) -> Result<Choice, NoFit> {
    // Every (format, concrete size, rates) the request could use.
    let mut candidates: Vec<(FourCc, u32, u32, &Rates)> = Vec::new();
    let usable = |o: &&Offered| o.fourcc.is_supported() || (h264 && o.fourcc == FourCc::H264);
    for format in offered.iter().filter(usable) {
        for entry in &format.sizes {
            let (w, h) = entry.size.nearest_to(width, height);
            if w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1 {
                continue; // I420 needs even dimensions
            }
            candidates.push((format.fourcc, w, h, &entry.rates));
        }
    }
    let no_fit = || NoFit {
        offered: describe(offered),
    };

    // 1. Size.
    let (w, h) = if candidates
        .iter()
        .any(|&(_, w, h, _)| (w, h) == (width, height))
    {
        (width, height)
    } else {
        let area = |&(_, w, h, _): &(FourCc, u32, u32, &Rates)| u64::from(w) * u64::from(h);
        let covering = candidates
            .iter()
            .filter(|&&(_, w, h, _)| w >= width && h >= height)
            .min_by_key(|c| area(c));
        let largest = || candidates.iter().max_by_key(|c| area(c));
        let &(_, w, h, _) = covering.or_else(largest).ok_or_else(no_fit)?;
        (w, h)
    };

    // 2. Format at that size. A format may list the same size more than once (a discrete entry
    // and a range); all of its entries at this size count.
    let at_size = candidates
        .iter()
        .filter(|&&(_, cw, ch, _)| (cw, ch) == (w, h));
    // Rank: 0 raw reaching the rate, 1 MJPEG reaching the rate, 2 neither (then by fps).
    let rank = |fourcc: FourCc, max_fps: Option<f64>| -> (u8, f64, u8) {
        let fast_enough = max_fps.is_none_or(|f| reaches(f, fps));
        let class = match (fast_enough, fourcc.is_raw()) {
            (true, _) if fourcc == FourCc::H264 => 0,
            (true, true) => 1,
            (true, false) => 2,
            (false, _) => 3,
        };
        // Within class 3 the higher rate wins; elsewhere the rate does not matter.
        let speed = if class == 3 {
            -max_fps.unwrap_or(0.0)
        } else {
            0.0
        };
        (class, speed, fourcc.conversion_cost())
    };
    let (fourcc, rates) = at_size
        .map(|&(fourcc, _, _, rates)| (fourcc, rates))
        .min_by(|a, b| {
            let (ra, rb) = (rank(a.0, a.1.max_fps()), rank(b.0, b.1.max_fps()));
            ra.0.cmp(&rb.0)
                .then(ra.1.total_cmp(&rb.1))
                .then(ra.2.cmp(&rb.2))
        })
        .ok_or_else(no_fit)?;

    // 3. Rate.
    Ok(Choice {
        fourcc,
        width: w,
        height: h,
        interval: rates.pick(fps),
    })
}

/// One-line summary of what a device offers, for error messages:
/// `YUYV 640x480@30,15 1280x720@10; MJPG 1280x720@30`.
pub fn describe(offered: &[Offered]) -> String {
    if offered.is_empty() {
        return "no formats".to_string();
    }
    offered
        .iter()
        .map(|format| {
            let sizes: Vec<String> = format.sizes.iter().map(describe_size).collect();
            if sizes.is_empty() {
                format!("{} (no sizes)", format.fourcc)
            } else {
                format!("{} {}", format.fourcc, sizes.join(" "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `640x480@30,15`, `16x16-1920x1080/2x2@30`, `1280x720@1-60`, `320x240@?`.
pub fn describe_size(entry: &OfferedSize) -> String {
    let size = match entry.size {
        FrameSize::Discrete { width, height } => format!("{width}x{height}"),
        FrameSize::Stepwise {
            min_width,
            max_width,
            step_width,
            min_height,
            max_height,
            step_height,
        } => {
            let step = if step_width <= 1 && step_height <= 1 {
                String::new()
            } else {
                format!("/{step_width}x{step_height}")
            };
            format!("{min_width}x{min_height}-{max_width}x{max_height}{step}")
        }
    };
    let rates = match &entry.rates {
        Rates::Discrete(list) if !list.is_empty() => {
            let mut fps: Vec<f64> = list.iter().map(|i| i.fps()).collect();
            fps.sort_by(|a, b| b.total_cmp(a));
            fps.dedup();
            fps.into_iter().map(fps_text).collect::<Vec<_>>().join(",")
        }
        Rates::Stepwise { min, max, .. } => {
            format!("{}-{}", fps_text(max.fps()), fps_text(min.fps()))
        }
        Rates::Discrete(_) | Rates::Unknown => "?".to_string(),
    };
    format!("{size}@{rates}")
}

/// `30`, `29.97`, `7.5`.
pub fn fps_text(fps: f64) -> String {
    if (fps - fps.round()).abs() < 0.005 {
        format!("{}", fps.round() as u64)
    } else {
        let s = format!("{fps:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discrete(width: u32, height: u32, fps: &[u32]) -> OfferedSize {
        OfferedSize {
            size: FrameSize::Discrete { width, height },
            rates: Rates::Discrete(fps.iter().map(|&f| Interval::from_fps(f)).collect()),
        }
    }

    fn format(fourcc: FourCc, sizes: Vec<OfferedSize>) -> Offered {
        Offered { fourcc, sizes }
    }

    /// Logitech C920 (uvcvideo, USB 2.0), as `v4l2-ctl --list-formats-ext` reports it (H264 is
    /// on a separate node on newer firmware; shown here as an unsupported format).
    fn c920() -> Vec<Offered> {
        let all = [30, 24, 20, 15, 10, 7, 5];
        vec![
            format(
                FourCc::Yuyv,
                vec![
                    discrete(640, 480, &all),
                    discrete(160, 90, &all),
                    discrete(160, 120, &all),
                    discrete(320, 240, &all),
                    discrete(640, 360, &all),
                    discrete(800, 600, &[24, 20, 15, 10, 7, 5]),
                    discrete(960, 720, &[15, 10, 7, 5]),
                    discrete(1280, 720, &[10, 7, 5]),
                    discrete(1600, 896, &[7, 5]),
                    discrete(1920, 1080, &[5]),
                    discrete(2304, 1536, &[2]),
                ],
            ),
            format(FourCc::H264, vec![discrete(1920, 1080, &all)]),
            format(
                FourCc::Mjpeg,
                vec![
                    discrete(640, 480, &all),
                    discrete(320, 240, &all),
                    discrete(800, 600, &all),
                    discrete(960, 720, &all),
                    discrete(1280, 720, &all),
                    discrete(1600, 896, &all),
                    discrete(1920, 1080, &all),
                ],
            ),
        ]
    }

    /// A cheap UVC camera: MJPEG up to 1080p30, YUYV only at small sizes and slowly.
    fn cheap_uvc() -> Vec<Offered> {
        vec![
            format(
                FourCc::Mjpeg,
                vec![
                    discrete(1920, 1080, &[30]),
                    discrete(1280, 720, &[30]),
                    discrete(800, 600, &[30]),
                    discrete(640, 480, &[30]),
                ],
            ),
            format(
                FourCc::Yuyv,
                vec![discrete(640, 480, &[15]), discrete(320, 240, &[30])],
            ),
        ]
    }

    /// vivid (virtual video test driver) on a TV input: continuous sizes, no interval
    /// enumeration, raw formats only; plus the webcam input's discrete list.
    fn vivid_tv() -> Vec<Offered> {
        let range = |rates: Rates| OfferedSize {
            size: FrameSize::Stepwise {
                min_width: 16,
                max_width: 1920,
                step_width: 1,
                min_height: 16,
                max_height: 1080,
                step_height: 1,
            },
            rates,
        };
        vec![
            format(FourCc::Yuyv, vec![range(Rates::Unknown)]),
            format(FourCc::Other(*b"UYVY"), vec![range(Rates::Unknown)]),
            format(FourCc::Other(*b"RGBP"), vec![range(Rates::Unknown)]),
            format(FourCc::Nv12, vec![range(Rates::Unknown)]),
            format(FourCc::Yu12, vec![range(Rates::Unknown)]),
        ]
    }

    fn vivid_webcam() -> Vec<Offered> {
        let sizes = |max_fps: &[u32]| {
            vec![
                discrete(320, 180, max_fps),
                discrete(640, 360, max_fps),
                discrete(640, 480, max_fps),
                discrete(1280, 720, &[25, 15, 10, 5, 1]),
                discrete(1920, 1080, &[15, 10, 5, 1]),
            ]
        };
        let fps = [60, 50, 40, 30, 25, 15, 10, 5, 1];
        vec![
            format(FourCc::Yuyv, sizes(&fps)),
            format(FourCc::Nv12, sizes(&fps)),
            format(FourCc::Yu12, sizes(&fps)),
        ]
    }

    /// Raspberry Pi camera through bcm2835-v4l2 (legacy stack): stepwise sizes to 2592x1944 in
    /// steps of 2x2 with a continuous 1..90 fps range; plus formats spyglass cannot use.
    fn pi_camera() -> Vec<Offered> {
        let range = || OfferedSize {
            size: FrameSize::Stepwise {
                min_width: 32,
                max_width: 2592,
                step_width: 2,
                min_height: 32,
                max_height: 1944,
                step_height: 2,
            },
            rates: Rates::Stepwise {
                min: Interval::new(1, 90),
                max: Interval::new(1, 1),
                step: Interval::new(1, 1),
            },
        };
        vec![
            format(FourCc::Yu12, vec![range()]),
            format(FourCc::Yuyv, vec![range()]),
            format(FourCc::Other(*b"RGB3"), vec![range()]),
            format(FourCc::Mjpeg, vec![range()]),
            format(FourCc::H264, vec![range()]),
            format(FourCc::Nv12, vec![range()]),
        ]
    }

    fn pick(offered: &[Offered], w: u32, h: u32, fps: u32) -> String {
        negotiate(offered, w, h, fps).expect("a choice").to_string()
    }

    #[test]
    fn c920_mjpeg_wins_at_720p30_because_yuyv_only_does_10() {
        assert_eq!(pick(&c920(), 1280, 720, 30), "MJPG 1280x720@30");
    }

    #[test]
    fn c920_yuyv_wins_at_480p30() {
        assert_eq!(pick(&c920(), 640, 480, 30), "YUYV 640x480@30");
    }

    #[test]
    fn raw_preferred_when_it_reaches_a_lower_rate() {
        // YUYV 1280x720 does 10 fps: enough for a 10 fps request, and the slowest reaching rate
        // is chosen.
        assert_eq!(pick(&c920(), 1280, 720, 10), "YUYV 1280x720@10");
        assert_eq!(pick(&c920(), 640, 480, 15), "YUYV 640x480@15");
    }

    #[test]
    fn cheap_cam_mjpeg_when_raw_too_slow() {
        assert_eq!(pick(&cheap_uvc(), 640, 480, 30), "MJPG 640x480@30");
        assert_eq!(pick(&cheap_uvc(), 320, 240, 30), "YUYV 320x240@30");
    }

    #[test]
    fn nobody_reaches_the_rate_then_the_fastest_wins() {
        // Only YUYV has 2304x1536, at 2 fps.
        assert_eq!(pick(&c920(), 2304, 1536, 30), "YUYV 2304x1536@2");
        // vivid webcam at 1080p: everything does 15; YU12 is the cheapest to convert.
        assert_eq!(pick(&vivid_webcam(), 1920, 1080, 30), "YU12 1920x1080@15");
    }

    #[test]
    fn nearest_size_is_the_smallest_that_covers_the_request() {
        // 1024x768 is not offered; 1280x720 is not tall enough, 1600x896 covers it.
        assert_eq!(pick(&c920(), 1024, 768, 30), "MJPG 1600x896@30");
        // 700x500: 800x600 is the smallest that covers; YUYV does 24 there, MJPEG 30.
        assert_eq!(pick(&c920(), 700, 500, 30), "MJPG 800x600@30");
        assert_eq!(pick(&c920(), 700, 500, 20), "YUYV 800x600@20");
    }

    #[test]
    fn nearest_size_falls_back_to_the_largest_below() {
        assert_eq!(pick(&cheap_uvc(), 3840, 2160, 30), "MJPG 1920x1080@30");
    }

    #[test]
    fn vivid_continuous_sizes_give_the_exact_request() {
        assert_eq!(pick(&vivid_tv(), 1280, 720, 30), "YU12 1280x720@30");
        assert_eq!(pick(&vivid_tv(), 4000, 3000, 30), "YU12 1920x1080@30");
        // Odd requests are snapped to even sizes inside the range.
        assert_eq!(pick(&vivid_tv(), 641, 481, 30), "YU12 642x482@30");
        assert_eq!(pick(&vivid_webcam(), 640, 480, 30), "YU12 640x480@30");
        assert_eq!(pick(&vivid_webcam(), 1280, 720, 30), "YU12 1280x720@25");
    }

    #[test]
    fn pi_camera_stepwise_sizes_and_rate_range() {
        assert_eq!(pick(&pi_camera(), 1280, 720, 30), "YU12 1280x720@30");
        assert_eq!(pick(&pi_camera(), 1920, 1080, 30), "YU12 1920x1080@30");
        assert_eq!(pick(&pi_camera(), 4000, 3000, 120), "YU12 2592x1944@90");
    }

    #[test]
    fn fractional_rates_reach_whole_requests() {
        let ntsc = vec![format(
            FourCc::Yuyv,
            vec![OfferedSize {
                size: FrameSize::Discrete {
                    width: 720,
                    height: 480,
                },
                rates: Rates::Discrete(vec![Interval::new(1001, 30000)]),
            }],
        )];
        let choice = negotiate(&ntsc, 720, 480, 30).unwrap();
        assert_eq!(choice.interval, Interval::new(1001, 30000));
        assert_eq!(choice.to_string(), "YUYV 720x480@29.97");
        assert_eq!(choice.interval.fps_rounded(), 30);
    }

    #[test]
    fn only_unsupported_formats_is_no_fit_with_a_listing() {
        let offered = vec![
            format(FourCc::H264, vec![discrete(1920, 1080, &[30, 15])]),
            format(FourCc::Other(*b"RGB3"), vec![discrete(640, 480, &[30])]),
        ];
        let err = negotiate(&offered, 1280, 720, 30).unwrap_err();
        assert_eq!(err.offered, "H264 1920x1080@30,15; RGB3 640x480@30");
        assert!(
            err.to_string()
                .contains("the device offers: H264 1920x1080@30,15; RGB3 640x480@30")
        );
        assert!(negotiate(&[], 640, 480, 30).is_err());
    }

    #[test]
    fn listing_shows_ranges() {
        assert_eq!(describe(&pi_camera()[..1]), "YU12 32x32-2592x1944/2x2@1-90");
        assert_eq!(describe(&vivid_tv()[..1]), "YUYV 16x16-1920x1080@?");
        assert_eq!(describe(&cheap_uvc()[1..]), "YUYV 640x480@15 320x240@30");
    }

    #[test]
    fn snapping_into_ranges() {
        let r = FrameSize::Stepwise {
            min_width: 16,
            max_width: 1920,
            step_width: 8,
            min_height: 16,
            max_height: 1080,
            step_height: 8,
        };
        assert_eq!(r.nearest_to(1280, 720), (1280, 720));
        assert_eq!(r.nearest_to(1281, 719), (1288, 720));
        assert_eq!(r.nearest_to(1, 1), (16, 16));
        assert_eq!(r.largest(), (1920, 1080));
        let odd = FrameSize::Stepwise {
            min_width: 1,
            max_width: 9,
            step_width: 3,
            min_height: 2,
            max_height: 2,
            step_height: 1,
        };
        // Grid 1,4,7: 5 snaps up to 7 (odd), then to the even neighbour 4.
        assert_eq!(odd.nearest_to(5, 2), (4, 2));
    }

    #[test]
    fn fourcc_round_trip_and_display() {
        for code in [*b"YUYV", *b"MJPG", *b"NV12", *b"YU12", *b"H264"] {
            assert_eq!(FourCc::from_bytes(code).to_bytes(), code);
        }
        assert_eq!(FourCc::Other([b'A', 0, 1, b'B']).to_string(), "A??B");
        assert_eq!(fps_text(7.5), "7.5");
        assert_eq!(fps_text(30000.0 / 1001.0), "29.97");
    }

    #[test]
    fn h264_comes_first_when_passthrough_is_allowed() {
        assert_eq!(pick(&c920(), 1920, 1080, 30), "MJPG 1920x1080@30");
        let choice = negotiate_with(&c920(), 1920, 1080, 30, true).unwrap();
        assert_eq!(choice.to_string(), "H264 1920x1080@30");
        assert_eq!(FourCc::parse_supported("h264"), Ok(FourCc::H264));
    }
}
