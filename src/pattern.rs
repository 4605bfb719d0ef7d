//! The test pattern code: a frame counter and capture time drawn into a picture as large
//! black/white blocks, and the A/V sync flash. The writer (the `--video test` source) and the
//! readers in Rust (the headless viewer, the self-test) share this module; the viewer page has a
//! reader of its own (`web/src/pattern.js`). `docs/TEST_PATTERN.md` is the public contract: it
//! describes the same layout for readers written in other languages.
//!
//! Layout in short, with `B` the block size in pixels (see [`block_size`]):
//! a 4×24 grid of `B`×`B` cells at `(B, B)` inside a black `26B`×`6B` box at the top-left corner;
//! column 0 and column 23 are fixed markers, the other 88 cells carry the frame counter (32 bits),
//! the low 48 bits of the capture time in milliseconds and a CRC-8/AUTOSAR, most significant bit
//! first, row by row. The flash is a `4B`×`4B` square at `(W - 5B, B)`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Luma of a black block (video range, as H.264 encoders and browsers expect).
pub const BLACK: u8 = 16;
/// Luma of a white block.
pub const WHITE: u8 = 235;
/// Chroma under the code and the flash: no colour.
const NEUTRAL_CHROMA: u8 = 128;
/// A sampled cell is white when the mean of its four centre pixels is at least this.
pub const THRESHOLD: u8 = 128;
/// The flash reads as on at or above this mean luma, off at or below [`FLASH_OFF_MAX`], and as
/// unknown in between (a frame caught mid-transition by the encoder).
pub const FLASH_ON_MIN: u8 = 160;
/// See [`FLASH_ON_MIN`].
pub const FLASH_OFF_MAX: u8 = 96;
/// The flash is on for frames captured in the first this-many milliseconds of each second.
pub const FLASH_MS: u64 = 100;
/// Only the low 48 bits of the capture time are carried (enough until the year 10889, and exact
/// in a JavaScript number).
pub const CAPTURED_MS_MASK: u64 = (1 << 48) - 1;

/// Cell rows in the code grid.
const ROWS: usize = 4;
/// Cell columns in the code grid, including the two marker columns.
const COLS: usize = 24;
/// Marker cells of column 0, top to bottom (`true` is white); column 23 is the inverse.
const START_MARKER: [bool; ROWS] = [true, false, true, false];
/// Payload bytes: frame counter (4), capture time (6), CRC (1).
const PAYLOAD_LEN: usize = 11;
const _: () = assert!(PAYLOAD_LEN * 8 == ROWS * (COLS - 2));

/// What the code carries: which frame this is and when it was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Frames delivered by the source before this one (the first frame is 0).
    pub frame: u32,
    /// Capture time in milliseconds since the Unix epoch (only the low 48 bits are written).
    pub captured_ms: u64,
}

impl Stamp {
    /// A stamp for `frame` captured at `captured_at` (times before the epoch count as 0).
    pub fn new(frame: u32, captured_at: SystemTime) -> Stamp {
        let captured_ms = captured_at.duration_since(UNIX_EPOCH).map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
        Stamp { frame, captured_ms }
    }

    /// The capture time as a `SystemTime`.
    pub fn captured_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.captured_ms)
    }

    /// Whether the flash is on for this frame: captured in the first [`FLASH_MS`] of a second.
    pub fn flash(&self) -> bool {
        self.captured_ms % 1000 < FLASH_MS
    }
}

/// Block size in pixels for a `width`×`height` picture, or `None` when the code does not fit.
///
/// `B = max(4, 2 * floor(min(floor(W/32), floor(H/30)) / 2))`; the layout needs `W >= 31B` and
/// `H >= 6B`. So 160x120 → 4, 320x240 → 8, 640x480 → 16, 1280x720 → 24, 1920x1080 → 36.
pub fn block_size(width: u32, height: u32) -> Option<u32> {
    let b = ((width / 32).min(height / 30) & !1).max(4);
    (width >= 31 * b && height >= 6 * b).then_some(b)
}

/// Draw the code and the flash for `stamp` into a tightly packed I420 picture (`y` is
/// `width*height` bytes, `u` and `v` `(width/2)*(height/2)` each). Returns `false`, drawing
/// nothing, when the size is odd, the code does not fit (see [`block_size`]) or a plane is short.
pub fn write(
    y: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
    width: u32,
    height: u32,
    stamp: &Stamp,
) -> bool {
    let Some(b) = block_size(width, height) else {
        return false;
    };
    let (w, h, b) = (width as usize, height as usize, b as usize);
    let cw = w / 2;
    let chroma_len = cw * (h / 2);
    if w % 2 != 0 || h % 2 != 0 || y.len() < w * h || u.len() < chroma_len || v.len() < chroma_len {
        return false;
    }
    let cells = cells(stamp);

    // The code box: black quiet zone one block wide around the 4x24 cells.
    for py in 0..6 * b {
        let row = &mut y[py * w..py * w + 26 * b];
        row.fill(BLACK);
        if (b..5 * b).contains(&py) {
            let r = py / b - 1;
            for (c, &white) in cells[r].iter().enumerate() {
                if white {
                    row[(c + 1) * b..(c + 2) * b].fill(WHITE);
                }
            }
        }
    }
    neutral_chroma(u, v, cw, 0..3 * b, 0..13 * b);

    // The flash square.
    let level = if stamp.flash() { WHITE } else { BLACK };
    let (fx, fy) = (w - 5 * b, b);
    for py in fy..fy + 4 * b {
        y[py * w + fx..py * w + fx + 4 * b].fill(level);
    }
    neutral_chroma(u, v, cw, fy / 2..(fy + 4 * b) / 2, fx / 2..(fx + 4 * b) / 2);
    true
}

/// Set chroma rows `rows` and columns `cols` (in chroma samples) to neutral.
fn neutral_chroma(
    u: &mut [u8],
    v: &mut [u8],
    cw: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    for cy in rows {
        u[cy * cw + cols.start..cy * cw + cols.end].fill(NEUTRAL_CHROMA);
        v[cy * cw + cols.start..cy * cw + cols.end].fill(NEUTRAL_CHROMA);
    }
}

/// Read the code back from a luma plane whose rows are `stride` bytes apart. Returns `None` when
/// the picture is too small or `y` too short, a marker cell is wrong, or the CRC does not match.
pub fn read(y: &[u8], width: u32, height: u32, stride: usize) -> Option<Stamp> {
    let b = checked_block_size(y, width, height, stride)?;
    let mut cells = [[false; COLS]; ROWS];
    for (r, row) in cells.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            let (x0, y0) = ((c + 1) * b, (r + 1) * b);
            *cell = centre_mean(y, stride, x0 + b / 2, y0 + b / 2) >= u32::from(THRESHOLD);
        }
    }
    for (r, &start) in START_MARKER.iter().enumerate() {
        if cells[r][0] != start || cells[r][COLS - 1] == start {
            return None;
        }
    }
    let mut bytes = [0u8; PAYLOAD_LEN];
    let payload = cells.iter().flat_map(|row| row[1..COLS - 1].iter());
    for (i, &bit) in payload.enumerate() {
        bytes[i / 8] |= u8::from(bit) << (7 - i % 8);
    }
    if crc8(&bytes[..PAYLOAD_LEN - 1]) != bytes[PAYLOAD_LEN - 1] {
        return None;
    }
    let frame = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let captured_ms = bytes[4..10]
        .iter()
        .fold(0u64, |ms, &byte| ms << 8 | u64::from(byte));
    Some(Stamp { frame, captured_ms })
}

/// Read the flash from a luma plane: `Some(true)` for white, `Some(false)` for black, `None` when
/// the picture is too small or the square is neither clearly white nor clearly black. Only
/// meaningful on pictures where [`read`] finds the code.
pub fn read_flash(y: &[u8], width: u32, height: u32, stride: usize) -> Option<bool> {
    let b = checked_block_size(y, width, height, stride)?;
    let mean = centre_mean(y, stride, width as usize - 3 * b, 3 * b);
    if mean >= u32::from(FLASH_ON_MIN) {
        Some(true)
    } else if mean <= u32::from(FLASH_OFF_MAX) {
        Some(false)
    } else {
        None
    }
}

/// The block size, when the code fits and `y` holds `height` rows of `stride` bytes.
fn checked_block_size(y: &[u8], width: u32, height: u32, stride: usize) -> Option<usize> {
    let b = block_size(width, height)? as usize;
    let needed = stride
        .checked_mul(height as usize - 1)?
        .checked_add(width as usize)?;
    (stride >= width as usize && y.len() >= needed).then_some(b)
}

/// Mean luma of the 2x2 pixels whose bottom-right one is at `(cx, cy)`.
fn centre_mean(y: &[u8], stride: usize, cx: usize, cy: usize) -> u32 {
    let at = |x: usize, row: usize| u32::from(y[row * stride + x]);
    (at(cx - 1, cy - 1) + at(cx, cy - 1) + at(cx - 1, cy) + at(cx, cy) + 2) / 4
}

/// The cell colours (`true` is white) for `stamp`, markers included.
fn cells(stamp: &Stamp) -> [[bool; COLS]; ROWS] {
    let mut bytes = [0u8; PAYLOAD_LEN];
    bytes[..4].copy_from_slice(&stamp.frame.to_be_bytes());
    bytes[4..10].copy_from_slice(&(stamp.captured_ms & CAPTURED_MS_MASK).to_be_bytes()[2..]);
    bytes[10] = crc8(&bytes[..10]);
    let mut cells = [[false; COLS]; ROWS];
    for (r, row) in cells.iter_mut().enumerate() {
        row[0] = START_MARKER[r];
        row[COLS - 1] = !START_MARKER[r];
        for (c, cell) in row[1..COLS - 1].iter_mut().enumerate() {
            let i = r * (COLS - 2) + c;
            *cell = bytes[i / 8] >> (7 - i % 8) & 1 == 1;
        }
    }
    cells
}

/// CRC-8/AUTOSAR: polynomial 0x2F, initial value 0xFF, final XOR 0xFF, not reflected.
const CRC8: crc::Crc<u8> = crc::Crc::<u8>::new(&crc::CRC_8_AUTOSAR);

fn crc8(bytes: &[u8]) -> u8 {
    CRC8.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [(u32, u32); 5] = [
        (160, 120),
        (320, 240),
        (640, 480),
        (1280, 720),
        (1920, 1080),
    ];

    fn now_ms() -> u64 {
        Stamp::new(0, SystemTime::now()).captured_ms
    }

    /// A mid-grey I420 picture with the code for `stamp` drawn in it.
    fn stamped(width: u32, height: u32, stamp: &Stamp) -> Vec<u8> {
        let mut data = vec![128u8; crate::video::Frame::i420_len(width, height)];
        let y_len = (width * height) as usize;
        let (y, chroma) = data.split_at_mut(y_len);
        let (u, v) = chroma.split_at_mut(y_len / 4);
        assert!(
            write(y, u, v, width, height, stamp),
            "code fits at {width}x{height}"
        );
        data
    }

    /// Deterministic pseudo-random bytes (xorshift64).
    fn noise(seed: u64) -> impl FnMut() -> u8 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        }
    }

    #[test]
    fn crc8_is_autosar() {
        assert_eq!(crc8(b"123456789"), 0xDF);
    }

    #[test]
    fn block_size_scales_with_the_picture() {
        let sizes: Vec<_> = SIZES.iter().map(|&(w, h)| block_size(w, h)).collect();
        assert_eq!(sizes, [Some(4), Some(8), Some(16), Some(24), Some(36)]);
        assert_eq!(block_size(100, 80), None);
        assert_eq!(block_size(0, 0), None);
    }

    #[test]
    fn code_fits_from_124x24() {
        assert_eq!(block_size(124, 24), Some(4));
        assert_eq!(block_size(122, 24), None);
        assert_eq!(block_size(124, 22), None);
    }

    /// The worked example in `docs/TEST_PATTERN.md`.
    #[test]
    fn cells_match_the_documented_example() {
        let rows: Vec<String> = cells(&Stamp {
            frame: 1,
            captured_ms: 1_700_000_000_123,
        })
        .iter()
        .map(|row| {
            row.iter()
                .map(|&white| if white { '1' } else { '0' })
                .collect()
        })
        .collect();
        assert_eq!(
            rows,
            [
                "100000000000000000000000",
                "000000000010000000110001",
                "110111100111111100101010",
                "010100001111011100110011",
            ]
        );
    }

    #[test]
    fn round_trip_at_every_size() {
        let stamps = [
            Stamp {
                frame: 0,
                captured_ms: 0,
            },
            Stamp {
                frame: u32::MAX,
                captured_ms: u64::from(u32::MAX),
            },
            Stamp {
                frame: 1,
                captured_ms: CAPTURED_MS_MASK,
            },
            Stamp {
                frame: 12345,
                captured_ms: now_ms(),
            },
        ];
        for (w, h) in SIZES {
            for stamp in &stamps {
                let data = stamped(w, h, stamp);
                assert_eq!(
                    read(&data, w, h, w as usize),
                    Some(*stamp),
                    "{w}x{h} {stamp:?}"
                );
            }
        }
    }

    #[test]
    fn capture_time_keeps_its_low_48_bits() {
        let stamp = Stamp {
            frame: 7,
            captured_ms: u64::MAX,
        };
        let data = stamped(320, 240, &stamp);
        let read_back = read(&data, 320, 240, 320);
        assert_eq!(
            read_back,
            Some(Stamp {
                frame: 7,
                captured_ms: CAPTURED_MS_MASK
            })
        );
    }

    #[test]
    fn reads_through_a_padded_stride() {
        let (w, h, stride) = (640u32, 480u32, 704usize);
        let stamp = Stamp {
            frame: 99,
            captured_ms: now_ms(),
        };
        let data = stamped(w, h, &stamp);
        let mut padded = vec![0u8; stride * h as usize];
        for row in 0..h as usize {
            padded[row * stride..row * stride + w as usize]
                .copy_from_slice(&data[row * w as usize..][..w as usize]);
        }
        assert_eq!(read(&padded, w, h, stride), Some(stamp));
    }

    #[test]
    fn blank_and_noise_pictures_have_no_code() {
        for (w, h) in SIZES {
            let len = (w * h) as usize;
            for level in [0u8, BLACK, 128, WHITE, 255] {
                assert_eq!(read(&vec![level; len], w, h, w as usize), None);
            }
        }
        let (w, h) = (320u32, 240u32);
        let mut next = noise(42);
        for _ in 0..200 {
            let y: Vec<u8> = (0..w * h).map(|_| next()).collect();
            assert_eq!(read(&y, w, h, w as usize), None);
        }
    }

    #[test]
    fn short_or_small_input_is_rejected_without_panicking() {
        let data = stamped(
            320,
            240,
            &Stamp {
                frame: 1,
                captured_ms: 2,
            },
        );
        assert_eq!(read(&data[..320 * 239], 320, 240, 320), None);
        assert_eq!(read(&data, 320, 240, 100), None);
        assert_eq!(read(&data, 100, 80, 100), None);
        assert_eq!(read(&[], 0, 0, 0), None);
        assert_eq!(read_flash(&data[..1000], 320, 240, 320), None);
        let (mut y, mut u, mut v) = (vec![0u8; 100 * 80], vec![0u8; 50 * 40], vec![0u8; 50 * 40]);
        assert!(!write(
            &mut y,
            &mut u,
            &mut v,
            100,
            80,
            &Stamp {
                frame: 0,
                captured_ms: 0
            }
        ));
        assert!(!write(
            &mut y,
            &mut u,
            &mut v,
            320,
            240,
            &Stamp {
                frame: 0,
                captured_ms: 0
            }
        ));
    }

    #[test]
    fn every_single_flipped_block_is_detected() {
        let (w, h) = (320u32, 240u32);
        let b = block_size(w, h).unwrap_or_default() as usize;
        let stamp = Stamp {
            frame: 0x1234_5678,
            captured_ms: now_ms(),
        };
        let data = stamped(w, h, &stamp);
        for r in 0..ROWS {
            for c in 0..COLS {
                let mut y = data[..(w * h) as usize].to_vec();
                let (x0, y0) = ((c + 1) * b, (r + 1) * b);
                let flipped = if y[y0 * w as usize + x0] >= THRESHOLD {
                    BLACK
                } else {
                    WHITE
                };
                for py in y0..y0 + b {
                    y[py * w as usize + x0..py * w as usize + x0 + b].fill(flipped);
                }
                assert_eq!(read(&y, w, h, w as usize), None, "cell ({r}, {c}) flipped");
            }
        }
    }

    #[test]
    fn survives_mild_noise() {
        let mut next = noise(7);
        for (w, h) in SIZES {
            let stamp = Stamp {
                frame: 31337,
                captured_ms: now_ms(),
            };
            let mut y = stamped(w, h, &stamp)[..(w * h) as usize].to_vec();
            for px in &mut y {
                let delta = i32::from(next() % 41) - 20;
                *px = (i32::from(*px) + delta).clamp(0, 255) as u8;
            }
            assert_eq!(read(&y, w, h, w as usize), Some(stamp), "{w}x{h}");
        }
    }

    #[test]
    fn survives_a_2x2_box_blur() {
        for (w, h) in SIZES {
            let (wu, hu) = (w as usize, h as usize);
            let stamp = Stamp {
                frame: 4_000_000_000,
                captured_ms: now_ms(),
            };
            let y = &stamped(w, h, &stamp)[..wu * hu];
            let at = |x: usize, row: usize| u32::from(y[row.min(hu - 1) * wu + x.min(wu - 1)]);
            let blurred: Vec<u8> = (0..wu * hu)
                .map(|i| {
                    let (x, row) = (i % wu, i / wu);
                    ((at(x, row) + at(x + 1, row) + at(x, row + 1) + at(x + 1, row + 1) + 2) / 4)
                        as u8
                })
                .collect();
            assert_eq!(read(&blurred, w, h, wu), Some(stamp), "{w}x{h}");
        }
    }

    #[test]
    fn flash_is_on_in_the_first_100_ms_of_each_second() {
        for (ms, on) in [
            (0, true),
            (99, true),
            (100, false),
            (999, false),
            (1_700_000_000_050, true),
        ] {
            let stamp = Stamp {
                frame: 3,
                captured_ms: ms,
            };
            assert_eq!(stamp.flash(), on, "{ms}");
            for (w, h) in SIZES {
                let data = stamped(w, h, &stamp);
                assert_eq!(
                    read_flash(&data, w, h, w as usize),
                    Some(on),
                    "{ms} at {w}x{h}"
                );
                assert_eq!(read(&data, w, h, w as usize), Some(stamp));
            }
        }
        let grey = vec![128u8; 320 * 240];
        assert_eq!(read_flash(&grey, 320, 240, 320), None);
    }

    #[test]
    fn code_and_flash_have_neutral_chroma() {
        let (w, h) = (320u32, 240u32);
        let data = stamped(
            w,
            h,
            &Stamp {
                frame: 5,
                captured_ms: 50,
            },
        );
        let mut tinted = vec![60u8; data.len()];
        tinted[..(w * h) as usize].fill(128);
        let y_len = (w * h) as usize;
        let (y, chroma) = tinted.split_at_mut(y_len);
        let (u, v) = chroma.split_at_mut(y_len / 4);
        assert!(write(
            y,
            u,
            v,
            w,
            h,
            &Stamp {
                frame: 5,
                captured_ms: 50
            }
        ));
        let b = 8usize;
        let cw = (w / 2) as usize;
        assert_eq!(u[0], NEUTRAL_CHROMA);
        assert_eq!(v[(3 * b - 1) * cw + 13 * b - 1], NEUTRAL_CHROMA);
        assert_eq!(u[(3 * b - 1) * cw + 13 * b], 60, "outside the code box");
        assert_eq!(
            u[b / 2 * cw + (w as usize - 5 * b) / 2],
            NEUTRAL_CHROMA,
            "flash"
        );
        assert_eq!(&y[..], &data[..y_len]);
    }

    /// Encode `count` stamped test pattern pictures with openh264 at `bps`, decode them, and
    /// return each stamp with what was read back (code and flash).
    fn h264_round_trip(
        width: u32,
        height: u32,
        bps: u32,
        count: u32,
    ) -> Vec<(Stamp, Option<Stamp>, Option<bool>)> {
        use crate::video::{VideoSpec, test_pattern::TestPattern};
        use openh264::OpenH264API;
        use openh264::decoder::Decoder;
        use openh264::encoder::{BitRate, Encoder, EncoderConfig, FrameRate, RateControlMode};
        use openh264::formats::{YUVBuffer, YUVSource};

        let spec = VideoSpec {
            source: "test".parse().unwrap(),
            width,
            height,
            fps: 30,
            ..Default::default()
        };
        let background = TestPattern::new(&spec);
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bps))
            .max_frame_rate(FrameRate::from_hz(30.0))
            .rate_control_mode(RateControlMode::Bitrate);
        let mut encoder =
            Encoder::with_api_config(OpenH264API::from_source(), config).expect("encoder");
        let mut decoder = Decoder::new().expect("decoder");
        let start_ms = 1_700_000_000_950u64; // the flash turns on after two frames
        let mut results = Vec::new();
        for n in 0..count {
            let stamp = Stamp {
                frame: n,
                captured_ms: start_ms + u64::from(n) * 1000 / 30,
            };
            let mut data = background.draw(u64::from(n));
            let y_len = (width * height) as usize;
            let (y, chroma) = data.split_at_mut(y_len);
            let (u, v) = chroma.split_at_mut(y_len / 4);
            assert!(write(y, u, v, width, height, &stamp));
            let yuv = YUVBuffer::from_vec(data, width as usize, height as usize);
            let annexb = encoder.encode(&yuv).expect("encode").to_vec();
            if let Some(decoded) = decoder.decode(&annexb).expect("decode") {
                let (w, h) = decoded.dimensions();
                let stride = decoded.strides().0;
                let luma = decoded.y();
                results.push((
                    stamp,
                    read(luma, w as u32, h as u32, stride),
                    read_flash(luma, w as u32, h as u32, stride),
                ));
            }
        }
        results
    }

    #[test]
    fn survives_h264_at_low_bitrates() {
        for (w, h, bps) in [
            (320, 240, 300_000),
            (1280, 720, 2_000_000),
            (160, 120, 100_000),
        ] {
            let results = h264_round_trip(w, h, bps, 45);
            assert!(
                results.len() >= 40,
                "{w}x{h}: only {} pictures decoded",
                results.len()
            );
            for (stamp, code, flash) in results {
                assert_eq!(code, Some(stamp), "{w}x{h} at {bps} bit/s");
                assert_eq!(
                    flash,
                    Some(stamp.flash()),
                    "{w}x{h} at {bps} bit/s, {stamp:?}"
                );
            }
        }
    }
}
