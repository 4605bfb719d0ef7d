//! The built-in test pattern source (`--video test`): scrolling colour bars and gradients with a
//! bouncing box, so consecutive frames differ and the encoder has realistic work, and the
//! [`crate::pattern`] code (frame counter, capture time, A/V sync flash) stamped on every frame.
//!
//! Frames are paced on deadlines (`start + n/fps`), so there is no drift; a source that falls more
//! than a frame behind skips its schedule ahead instead of bursting.
//!
//! The background is drawn once into a tile twice the frame width (one period repeated); each
//! frame copies rows out of it at a scrolling offset, then fills the box, so a frame costs a
//! memcpy of the picture and no per-pixel arithmetic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::controls::{Control, ControlError, Controls, PictureControls};
use super::{Backend, Frame, SourceOpener, VideoError, VideoFormat, VideoSource, VideoSpec};
use crate::pattern::{self, Stamp};

/// The row in [`super::SOURCES`]: `--video test`.
pub static BACKEND: Backend = Backend {
    usage: Some("`test`"),
    claims: |value| value == "test",
    stamped: true,
    prepare,
};

/// The pattern's controls, shared by the hub and every pattern the pipeline opens.
fn prepare(spec: &VideoSpec) -> (Controls, SourceOpener) {
    let controls = Arc::new(PatternControls::default());
    let (spec, theirs) = (spec.clone(), Arc::clone(&controls));
    let open: SourceOpener = Box::new(move || {
        let pattern = TestPattern::with_controls(&spec, Arc::clone(&theirs));
        Ok(Box::new(pattern) as Box<dyn VideoSource>)
    });
    (Controls::new(controls), open)
}

/// Sizes outside this range are clamped (and made even) so a frame can always be allocated.
const MIN_SIDE: u32 = 16;
const MAX_SIDE: u32 = 4096;

/// 75% colour bars in video-range YUV (BT.601): white, yellow, cyan, green, magenta, red, blue.
const BARS: [(u8, u8, u8); 7] = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
];

/// Colours the box cycles through, one per second at 30 fps: orange, teal, purple, lime.
const BOX_COLOURS: [(u8, u8, u8); 4] = [
    (150, 60, 190),
    (120, 150, 70),
    (70, 170, 160),
    (190, 40, 110),
];

pub struct TestPattern {
    format: VideoFormat,
    /// Background luma, `2 * width` wide (the pattern is periodic in `width`), `height` rows.
    tile_y: Vec<u8>,
    /// Background chroma, `width` wide (two periods of `width / 2`), `height / 2` rows.
    tile_u: Vec<u8>,
    tile_v: Vec<u8>,
    /// When frame slot 0 was due; set by the first `next_frame`.
    start: Option<Instant>,
    /// The schedule slot of the next frame.
    slot: u64,
    /// Frames delivered so far; the next frame's counter.
    delivered: u32,
    /// Brightness and contrast, set by viewers while the pattern runs.
    controls: Arc<PatternControls>,
}

impl TestPattern {
    pub fn new(spec: &VideoSpec) -> Self {
        let side = |n: u32| n.clamp(MIN_SIDE, MAX_SIDE) & !1;
        let (width, height) = (side(spec.width), side(spec.height));
        let (tile_y, tile_u, tile_v) = draw_tile(width as usize, height as usize);
        TestPattern {
            format: VideoFormat {
                width,
                height,
                fps: spec.fps.max(1),
                description: format!("test pattern {width}x{height}@{}", spec.fps.max(1)),
            },
            tile_y,
            tile_u,
            tile_v,
            start: None,
            slot: 0,
            delivered: 0,
            controls: Arc::default(),
        }
    }

    /// A pattern whose picture follows `controls`.
    pub fn with_controls(spec: &VideoSpec, controls: Arc<PatternControls>) -> Self {
        TestPattern {
            controls,
            ..TestPattern::new(spec)
        }
    }

    /// The background and the box for picture number `index` (no code, no pacing).
    pub(crate) fn draw(&self, index: u64) -> Vec<u8> {
        let (w, h) = (self.format.width as usize, self.format.height as usize);
        let (cw, ch) = (w / 2, h / 2);
        // Scroll left by an even number of pixels per frame, so chroma moves by whole samples.
        let step = (w / 160).max(1) * 2;
        let offset = (index as usize % w) * step % w;
        // Built row by row from the tiles, without zeroing the buffer first.
        let mut data = Vec::with_capacity(Frame::i420_len(self.format.width, self.format.height));
        for row in 0..h {
            data.extend_from_slice(&self.tile_y[row * 2 * w + offset..][..w]);
        }
        for tile in [&self.tile_u, &self.tile_v] {
            for row in 0..ch {
                data.extend_from_slice(&tile[row * w + offset / 2..][..cw]);
            }
        }
        let (y, chroma) = data.split_at_mut(w * h);
        let (u, v) = chroma.split_at_mut(cw * ch);

        // A box bouncing off the edges, changing colour every 30 pictures, with a darker core.
        let size = (w.min(h) / 5).max(4) & !1;
        let bx = bounce(index * (w as u64 / 100).max(1), (w - size) as u64) as usize & !1;
        let by = bounce(index * (h as u64 / 90).max(1), (h - size) as u64) as usize & !1;
        let colour = BOX_COLOURS[(index / 30) as usize % BOX_COLOURS.len()];
        fill_rect(y, u, v, w, (bx, by, size, size), colour);
        let core = (size / 2) & !1;
        let inset = ((size - core) / 2) & !1;
        let dark = (colour.0 / 2, colour.1, colour.2);
        fill_rect(y, u, v, w, (bx + inset, by + inset, core, core), dark);
        data
    }

    /// Sleep until the next slot is due, or skip the schedule ahead if more than a frame late.
    fn wait_for_slot(&mut self) {
        let now = Instant::now();
        let start = *self.start.get_or_insert(now);
        let fps = u64::from(self.format.fps);
        let period = slot_offset(1, fps);
        let mut due = start + slot_offset(self.slot, fps);
        if now > due + period {
            // Behind: continue from the latest slot that is already due.
            let elapsed = (now - start).as_nanos();
            self.slot =
                u64::try_from(elapsed * u128::from(fps) / 1_000_000_000).unwrap_or(u64::MAX);
            due = start + slot_offset(self.slot, fps);
        }
        if due > now {
            thread::sleep(due - now);
        }
        self.slot = self.slot.saturating_add(1);
    }
}

impl VideoSource for TestPattern {
    fn format(&self) -> &VideoFormat {
        &self.format
    }

    fn next_frame(&mut self) -> Result<Frame, VideoError> {
        let index = u64::from(self.delivered);
        let mut data = self.draw(index);
        self.wait_for_slot();

        let (width, height) = (self.format.width, self.format.height);
        let captured_at = SystemTime::now();
        let instant = Instant::now();
        let stamp = Stamp::new(self.delivered, captured_at);
        let y_len = (width * height) as usize;
        let (y, chroma) = data.split_at_mut(y_len);
        let (u, v) = chroma.split_at_mut(y_len / 4);
        // The controls change the picture, not the code drawn over it.
        self.controls.apply(y);
        // Frames too small for the code (below about 124x24) go out without it.
        pattern::write(y, u, v, width, height, &stamp);
        self.delivered = self.delivered.wrapping_add(1);
        Ok(Frame {
            width,
            height,
            data,
            captured_at,
            instant,
        })
    }
}

/// Neutral value of the test pattern's brightness and contrast (as on most UVC cameras).
pub const PATTERN_NEUTRAL: i64 = 128;

/// The test pattern's controls, applied to the picture's luma (the frame code is drawn after, so
/// it stays readable): `brightness` adds `value - 128` to every luma sample, `contrast` scales
/// luma around mid-grey by `value / 128`.
#[derive(Debug)]
pub struct PatternControls {
    brightness: AtomicI64,
    contrast: AtomicI64,
}

impl Default for PatternControls {
    fn default() -> Self {
        PatternControls {
            brightness: AtomicI64::new(PATTERN_NEUTRAL),
            contrast: AtomicI64::new(PATTERN_NEUTRAL),
        }
    }
}

impl PatternControls {
    fn controls(&self) -> Vec<Control> {
        let control = |name: &str, value: &AtomicI64| Control {
            name: name.to_string(),
            kind: "integer",
            min: 0,
            max: 255,
            step: 1,
            default: PATTERN_NEUTRAL,
            value: value.load(Ordering::Relaxed),
            menu: Vec::new(),
        };
        vec![
            control("brightness", &self.brightness),
            control("contrast", &self.contrast),
        ]
    }

    fn change(&self, name: &str, value: i64) -> Result<Control, ControlError> {
        let list = self.controls();
        let control = list
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ControlError::unknown(name, &list))?;
        control.check(value)?;
        let slot = match name {
            "brightness" => &self.brightness,
            _ => &self.contrast,
        };
        slot.store(value, Ordering::Relaxed);
        Ok(Control {
            value,
            ..control.clone()
        })
    }

    /// Apply the current settings to a luma plane, in place.
    pub fn apply(&self, luma: &mut [u8]) {
        let offset = self.brightness.load(Ordering::Relaxed) - PATTERN_NEUTRAL;
        let gain = self.contrast.load(Ordering::Relaxed);
        if offset == 0 && gain == PATTERN_NEUTRAL {
            return;
        }
        // One table for the 256 possible inputs; the frame then costs a lookup per sample.
        let mut table = [0u8; 256];
        for (i, out) in table.iter_mut().enumerate() {
            let scaled = (i as i64 - 128) * gain / PATTERN_NEUTRAL + 128;
            *out = (scaled + offset).clamp(0, 255) as u8;
        }
        for y in luma.iter_mut() {
            *y = table[usize::from(*y)];
        }
    }
}

impl PictureControls for PatternControls {
    fn list(&self) -> Result<Vec<Control>, ControlError> {
        Ok(self.controls())
    }

    fn set(&self, name: &str, value: i64) -> Result<Control, ControlError> {
        self.change(name, value)
    }
}

/// When slot `n` is due, counted from slot 0.
fn slot_offset(n: u64, fps: u64) -> Duration {
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(fps.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A triangle wave: 0 up to `span` and back, as `t` grows.
fn bounce(t: u64, span: u64) -> u64 {
    if span == 0 {
        return 0;
    }
    let phase = t % (2 * span);
    if phase <= span {
        phase
    } else {
        2 * span - phase
    }
}

/// Fill the rectangle `(x, y, width, height)` (even coordinates and sizes) with a YUV colour.
fn fill_rect(
    y: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
    w: usize,
    rect: (usize, usize, usize, usize),
    colour: (u8, u8, u8),
) {
    let (x0, y0, rw, rh) = rect;
    for row in y0..y0 + rh {
        y[row * w + x0..row * w + x0 + rw].fill(colour.0);
    }
    let cw = w / 2;
    for row in y0 / 2..(y0 + rh) / 2 {
        u[row * cw + x0 / 2..row * cw + (x0 + rw) / 2].fill(colour.1);
        v[row * cw + x0 / 2..row * cw + (x0 + rw) / 2].fill(colour.2);
    }
}

/// Draw the background tile: colour bars with a vertical ramp and fine texture on the top two
/// thirds; a luma ramp with a checkerboard on the bottom third. Periodic in `w`, drawn twice.
fn draw_tile(w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (cw, ch) = (w / 2, h / 2);
    let bars_end = h * 2 / 3;
    let mut noise = 0x9E37_79B9_7F4A_7C15u64;
    let mut tile_y = vec![0u8; 2 * w * h];
    for row in 0..h {
        let ramp = (row * 40 / h) as i32 - 20;
        let check = (w / 40).max(2);
        for x in 0..w {
            let luma = if row < bars_end {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                let grain = (noise >> 60) as i32 - 8;
                i32::from(BARS[x * BARS.len() / w].0) + ramp + grain
            } else {
                let gradient = 16 + (x * 219 / w) as i32;
                if row >= (bars_end + h) / 2 && (x / check + row / check).is_multiple_of(2) {
                    gradient / 2 + 60
                } else {
                    gradient
                }
            };
            let luma = luma.clamp(16, 235) as u8;
            tile_y[row * 2 * w + x] = luma;
            tile_y[row * 2 * w + w + x] = luma;
        }
    }
    let mut tile_u = vec![0u8; w * ch];
    let mut tile_v = vec![0u8; w * ch];
    for row in 0..ch {
        for x in 0..cw {
            let (u, v) = if row * 2 < bars_end {
                let bar = BARS[x * 2 * BARS.len() / w];
                (bar.1, bar.2)
            } else {
                // A gentle hue sweep under the gradient.
                (
                    128 + (x * 40 / cw) as u8 - 20,
                    108 + (row * 40 / ch) as u8 / 2,
                )
            };
            for (tile, value) in [(&mut tile_u, u), (&mut tile_v, v)] {
                tile[row * w + x] = value;
                tile[row * w + cw + x] = value;
            }
        }
    }
    (tile_y, tile_u, tile_v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(width: u32, height: u32, fps: u32) -> VideoSpec {
        VideoSpec {
            source: "test".parse().unwrap(),
            width,
            height,
            fps,
            ..Default::default()
        }
    }

    #[test]
    fn frames_have_the_asked_size_consecutive_counters_and_motion() -> Result<(), VideoError> {
        for (w, h) in [(160, 120), (320, 240), (1280, 720)] {
            let mut source = TestPattern::new(&spec(w, h, 120));
            assert_eq!(
                (
                    source.format().width,
                    source.format().height,
                    source.format().fps
                ),
                (w, h, 120)
            );
            let mut previous: Option<Frame> = None;
            for n in 0..4u32 {
                let frame = source.next_frame()?;
                assert_eq!((frame.width, frame.height), (w, h));
                assert_eq!(frame.data.len(), Frame::i420_len(w, h));
                let (y, _, _) = frame.planes();
                let stamp = pattern::read(y, w, h, w as usize);
                assert_eq!(
                    stamp,
                    Some(Stamp::new(n, frame.captured_at)),
                    "{w}x{h} frame {n}"
                );
                if let Some(previous) = &previous {
                    let (py, _, _) = previous.planes();
                    let changed = y.iter().zip(py).filter(|(a, b)| a != b).count();
                    assert!(
                        changed > y.len() / 20,
                        "{w}x{h}: only {changed} pixels changed"
                    );
                    assert!(frame.instant > previous.instant);
                }
                previous = Some(frame);
            }
        }
        Ok(())
    }

    #[test]
    fn frames_are_paced() -> Result<(), VideoError> {
        let mut source = TestPattern::new(&spec(320, 240, 30));
        let first = source.next_frame()?;
        source.next_frame()?;
        let third = source.next_frame()?;
        // Slots 0, 1, 2 are 2/30 s apart; allow for clock granularity, never an upper bound.
        assert!(third.instant - first.instant >= Duration::from_millis(60));
        Ok(())
    }

    #[test]
    fn a_late_source_skips_ahead_instead_of_bursting() -> Result<(), VideoError> {
        let mut source = TestPattern::new(&spec(160, 120, 50));
        source.next_frame()?;
        thread::sleep(Duration::from_millis(200)); // ten slots late
        // The late frame goes out at once, on the latest slot already due (less than 20 ms ago);
        // the two after it keep to the schedule, so the second is at least 20 ms later.
        let late = source.next_frame()?;
        source.next_frame()?;
        let after = source.next_frame()?;
        assert!(
            after.instant - late.instant >= Duration::from_millis(20),
            "no burst after falling behind"
        );
        assert_eq!(
            pattern::read(after.planes().0, 160, 120, 160).map(|s| s.frame),
            Some(3)
        );
        Ok(())
    }

    #[test]
    fn odd_zero_and_huge_sizes_are_clamped() {
        let source = TestPattern::new(&spec(321, 0, 0));
        let format = source.format();
        assert_eq!(
            (format.width, format.height, format.fps),
            (320, MIN_SIDE, 1)
        );
        let tall = TestPattern::new(&spec(16, 100_000, 30));
        assert_eq!(tall.draw(5).len(), Frame::i420_len(16, MAX_SIDE));
    }

    #[test]
    fn background_keeps_moving_over_many_frames() {
        let source = TestPattern::new(&spec(320, 240, 30));
        for index in [0u64, 100, 159, 160, 1000, u64::from(u32::MAX)] {
            assert_ne!(
                source.draw(index),
                source.draw(index + 1),
                "picture {index}"
            );
        }
    }

    #[test]
    fn pattern_controls_check_names_and_ranges() {
        let p = PatternControls::default();
        assert_eq!(p.set("brightness", 200).map(|c| c.value), Ok(200));
        assert!(matches!(
            p.set("brightness", 256),
            Err(ControlError::OutOfRange { value: 256, .. })
        ));
        let err = p.set("zoom", 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no control named `zoom`; controls: brightness, contrast"
        );
        assert_eq!(p.list().unwrap()[0].value, 200);
    }

    #[test]
    fn brightness_shifts_luma_and_contrast_scales_it() {
        let p = PatternControls::default();
        let mut y = vec![16u8, 128, 235];
        p.apply(&mut y);
        assert_eq!(y, [16, 128, 235]);
        p.set("brightness", 168).unwrap();
        p.apply(&mut y);
        assert_eq!(y, [56, 168, 255]);
        let p = PatternControls::default();
        p.set("contrast", 64).unwrap();
        let mut y = vec![0u8, 128, 255];
        p.apply(&mut y);
        assert_eq!(y, [64, 128, 191]);
    }
}
