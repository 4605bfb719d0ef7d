//! Reading H.264 Annex B: which NAL units an access unit holds and what profile and level its
//! sequence parameter set announces ([`ProfileLevel`], SDP's `profile-level-id`), and splitting a
//! byte stream into access units ([`AccessUnitSplitter`]). openh264's [`nal_units`] splits an
//! access unit at start codes.

use std::fmt;

use openh264::nal_units;

/// NAL unit type of a non-IDR slice.
pub const NAL_SLICE: u8 = 1;
/// NAL unit type of an IDR slice.
pub const NAL_IDR: u8 = 5;
/// NAL unit type of supplemental enhancement information.
pub const NAL_SEI: u8 = 6;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub const NAL_PPS: u8 = 8;
/// NAL unit type of an access unit delimiter.
pub const NAL_AUD: u8 = 9;

/// The NAL units of an Annex B stream, each without its start code (header byte first).
pub fn nals(annexb: &[u8]) -> impl Iterator<Item = &[u8]> {
    nal_units(annexb).filter_map(|unit| {
        // `nal_units` starts each unit at the `00 00 01` before it.
        let start = unit.iter().position(|&b| b != 0)?;
        let nal = &unit[start + 1..];
        (unit[start] == 1 && !nal.is_empty()).then_some(nal)
    })
}

/// NAL unit types in an access unit, in order.
pub fn nal_types(annexb: &[u8]) -> Vec<u8> {
    nals(annexb).map(|nal| nal[0] & 0x1f).collect()
}

/// True when an access unit holds an IDR slice.
pub fn has_idr(annexb: &[u8]) -> bool {
    nals(annexb).any(|nal| nal[0] & 0x1f == NAL_IDR)
}

/// `profile_idc`, the constraint flags and `level_idc` from the first SPS in an access unit:
/// the three bytes of SDP's `profile-level-id`. `None` without an SPS, or when it is truncated.
pub fn profile_level(annexb: &[u8]) -> Option<[u8; 3]> {
    let sps = nals(annexb).find(|nal| nal[0] & 0x1f == NAL_SPS)?;
    sps.get(1..4)?.try_into().ok()
}

/// H.264 profiles as SDP's `profile-level-id` tells them apart (RFC 6184, and the table
/// browsers use: profile_idc plus the constraint flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    ConstrainedBaseline,
    Baseline,
    Main,
    ConstrainedHigh,
    High,
    PredictiveHigh444,
}

impl Profile {
    /// The profile of `profile_idc` with constraint flags `iop` (the first two bytes of a
    /// `profile-level-id`); `None` for profiles WebRTC does not name (High 10, 4:2:2, ...).
    pub fn of(profile_idc: u8, iop: u8) -> Option<Profile> {
        // (profile_idc, mask, value): iop & mask == value. The low four bits (constraint_set4,
        // constraint_set5 and two reserved bits) must be zero in every row.
        const PATTERNS: [(u8, u8, u8, Profile); 9] = [
            (0x42, 0x4f, 0x40, Profile::ConstrainedBaseline),
            (0x4d, 0x8f, 0x80, Profile::ConstrainedBaseline),
            (0x58, 0xcf, 0xc0, Profile::ConstrainedBaseline),
            (0x42, 0x4f, 0x00, Profile::Baseline),
            (0x58, 0xcf, 0x80, Profile::Baseline),
            (0x4d, 0xaf, 0x00, Profile::Main),
            (0x64, 0xff, 0x00, Profile::High),
            (0x64, 0xff, 0x0c, Profile::ConstrainedHigh),
            (0xf4, 0xff, 0x00, Profile::PredictiveHigh444),
        ];
        PATTERNS
            .iter()
            .find(|&&(idc, mask, value, _)| idc == profile_idc && iop & mask == value)
            .map(|&(_, _, _, profile)| profile)
    }

    /// Whether a decoder of profile `self` decodes every stream of profile `stream` (H.264
    /// Annex A: constrained baseline is in every profile here; Main and High streams are
    /// decoded by High and by High 4:4:4 Predictive decoders).
    pub fn decodes(self, stream: Profile) -> bool {
        use Profile::*;
        match stream {
            _ if self == stream => true,
            ConstrainedBaseline => true,
            Baseline => false,
            Main => matches!(self, High | PredictiveHigh444),
            ConstrainedHigh => matches!(self, High | PredictiveHigh444),
            High => self == PredictiveHigh444,
            PredictiveHigh444 => false,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::ConstrainedBaseline => "constrained baseline",
            Profile::Baseline => "baseline",
            Profile::Main => "main",
            Profile::ConstrainedHigh => "constrained high",
            Profile::High => "high",
            Profile::PredictiveHigh444 => "high 4:4:4 predictive",
        })
    }
}

/// The three bytes of SDP's `profile-level-id`: profile_idc, the constraint flags, level_idc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileLevel(pub [u8; 3]);

impl ProfileLevel {
    /// From the first SPS in an access unit.
    pub fn of_access_unit(annexb: &[u8]) -> Option<ProfileLevel> {
        profile_level(annexb).map(ProfileLevel)
    }

    /// From SDP text such as `42e01f` (any case).
    pub fn parse(hex: &str) -> Option<ProfileLevel> {
        let hex = hex.trim();
        if hex.len() != 6 || !hex.is_ascii() {
            return None;
        }
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
        Some(ProfileLevel([byte(0)?, byte(2)?, byte(4)?]))
    }

    pub fn profile(self) -> Option<Profile> {
        Profile::of(self.0[0], self.0[1])
    }

    pub fn level_idc(self) -> u8 {
        self.0[2]
    }
}

impl fmt::Display for ProfileLevel {
    /// The SDP form, `42e01f`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}{:02x}{:02x}", self.0[0], self.0[1], self.0[2])
    }
}

/// Why a byte stream could not be split into access units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("no H.264 start code in the first {0} bytes: not an Annex B stream")]
    NoStartCode(usize),
    #[error("an access unit grew past {0} bytes without ending (a giant NAL, or not H.264)")]
    TooLarge(usize),
}

/// Splits an Annex B byte stream, fed in pieces of any size, into access units.
///
/// An access unit ends where the next begins (H.264 7.4.1.2.3): at an access unit delimiter,
/// SEI, SPS or PPS, or a slice whose first_mb_in_slice is 0, after a slice of the current one.
/// So each unit is known complete only when the first bytes of the next arrive, one frame
/// interval later; a stream's end completes the last ([`finish`](Self::finish)). At most `limit`
/// bytes are held: a longer unit is an error, and so are `limit` bytes without a start code.
#[derive(Debug)]
pub struct AccessUnitSplitter {
    /// Bytes of the unit being gathered (from its first start code) and of what follows it.
    buffer: Vec<u8>,
    /// Where the search for the next start code goes on.
    scan: usize,
    /// Where the NAL being read starts (its start code), once one was found.
    nal_start: Option<usize>,
    /// The unit being gathered has a slice already.
    has_slice: bool,
    limit: usize,
}

impl AccessUnitSplitter {
    pub fn new(limit: usize) -> Self {
        AccessUnitSplitter {
            buffer: Vec::new(),
            scan: 0,
            nal_start: None,
            has_slice: false,
            limit,
        }
    }

    /// How many bytes are held.
    pub fn held(&self) -> usize {
        self.buffer.len()
    }

    /// Add `bytes`; every access unit they complete is passed to `unit`, in order.
    pub fn push(&mut self, bytes: &[u8], mut unit: impl FnMut(Vec<u8>)) -> Result<(), SplitError> {
        self.buffer.extend_from_slice(bytes);
        // A start code is 00 00 01; the header byte after it must be here too, and for a slice
        // the byte after that (first_mb_in_slice == 0 shows as its top bit).
        let mut waiting = false;
        while let Some(at) = find_start_code(&self.buffer, self.scan) {
            let header = at + 3;
            let Some(&nal_header) = self.buffer.get(header) else {
                (self.scan, waiting) = (at, true);
                break;
            };
            let nal_type = nal_header & 0x1f;
            let is_slice = matches!(nal_type, NAL_SLICE | NAL_IDR);
            let first_slice = if is_slice {
                let Some(&next) = self.buffer.get(header + 1) else {
                    (self.scan, waiting) = (at, true);
                    break;
                };
                next & 0x80 != 0
            } else {
                false
            };
            // Include the zero byte of a four-byte start code.
            let start = if at > 0 && self.buffer[at - 1] == 0 {
                at - 1
            } else {
                at
            };
            let begins_unit = self.has_slice
                && (first_slice
                    || matches!(nal_type, NAL_AUD | NAL_SEI | NAL_SPS | NAL_PPS | 14..=18));
            match self.nal_start {
                None => {
                    // Bytes before the stream's first start code are not H.264.
                    self.buffer.drain(..start);
                    self.nal_start = Some(0);
                    self.scan = header - start;
                    self.has_slice = is_slice;
                    continue;
                }
                Some(_) if begins_unit => {
                    let rest = self.buffer.split_off(start);
                    unit(std::mem::replace(&mut self.buffer, rest));
                    self.nal_start = Some(0);
                    self.scan = header - start;
                    self.has_slice = is_slice;
                    continue;
                }
                Some(_) => {
                    self.nal_start = Some(start);
                    self.has_slice |= is_slice;
                    self.scan = header;
                }
            }
        }
        if self.nal_start.is_none() {
            if self.buffer.len() > self.limit {
                return Err(SplitError::NoStartCode(self.limit));
            }
            // Keep only what could still be the start of a start code.
            let keep = self.buffer.len().min(4);
            self.buffer.drain(..self.buffer.len() - keep);
            self.scan = 0;
        } else if self.buffer.len() > self.limit {
            return Err(SplitError::TooLarge(self.limit));
        } else if !waiting {
            // Next time, look again at the last bytes: a start code may straddle two pieces.
            self.scan = self.scan.max(self.buffer.len().saturating_sub(3));
        }
        Ok(())
    }

    /// The stream ended: the unit being gathered, if it has a slice.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let has_slice = std::mem::take(&mut self.has_slice);
        self.nal_start = None;
        self.scan = 0;
        let buffer = std::mem::take(&mut self.buffer);
        has_slice.then_some(buffer)
    }
}

/// The offset of the next `00 00 01` at or after `from`.
fn find_start_code(buffer: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + 3 <= buffer.len() {
        // Find the next 01, then look back for the two zeros.
        let one = buffer[at + 2..].iter().position(|&b| b == 1)? + at + 2;
        if buffer[one - 1] == 0 && buffer[one - 2] == 0 {
            return Some(one - 2);
        }
        at = one - 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nal_units_are_found_after_three_and_four_byte_start_codes() {
        let au = [
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88, 0x84,
        ];
        assert_eq!(nal_types(&au), vec![7, 8, 5]);
        assert!(has_idr(&au));
        assert_eq!(profile_level(&au), Some([0x42, 0xc0, 0x1f]));
        let slice = [0, 0, 0, 1, 0x41, 0x9a];
        assert_eq!(nal_types(&slice), vec![1]);
        assert!(!has_idr(&slice));
        assert_eq!(profile_level(&slice), None);
        // A start code with nothing after it, and no start code at all.
        assert_eq!(nal_types(&[0, 0, 1]), Vec::<u8>::new());
        assert_eq!(nal_types(&[0x65, 0x88]), Vec::<u8>::new());
        assert_eq!(profile_level(&[0, 0, 1, 0x67, 0x42]), None);
    }

    /// A stream of three access units: SPS PPS IDR(2 slices), slice, AUD SEI slice.
    fn stream() -> (Vec<u8>, Vec<Vec<u8>>) {
        let units: Vec<Vec<u8>> = vec![
            [
                &[0, 0, 0, 1, 0x67, 0x4d, 0x40, 0x1f][..],
                &[0, 0, 0, 1, 0x68, 0xee, 0x3c, 0x80],
                &[0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33],
                // A second slice of the same picture: first_mb_in_slice != 0 (top bit clear).
                &[0, 0, 1, 0x65, 0x41, 0x9a, 0x00],
            ]
            .concat(),
            [0, 0, 0, 1, 0x41, 0x9a, 0x02, 0x00, 0x00, 0x03, 0x01].to_vec(),
            [
                &[0, 0, 0, 1, 0x09, 0xf0][..],
                &[0, 0, 1, 0x06, 0x05, 0x01, 0xff, 0x80],
                &[0, 0, 1, 0x41, 0x9b, 0x11],
            ]
            .concat(),
        ];
        (units.concat(), units)
    }

    #[test]
    fn a_stream_splits_into_access_units_whatever_the_pieces() {
        let (bytes, units) = stream();
        for piece in [1, 2, 3, 5, 7, bytes.len()] {
            let mut splitter = AccessUnitSplitter::new(1 << 20);
            let mut got = Vec::new();
            // Garbage before the first start code is dropped.
            splitter.push(&[0x12, 0x34], |u| got.push(u)).unwrap();
            for chunk in bytes.chunks(piece) {
                splitter.push(chunk, |u| got.push(u)).unwrap();
            }
            // The last unit is complete only when the stream ends.
            assert_eq!(got.len(), 2, "piece {piece}");
            got.extend(splitter.finish());
            assert_eq!(got, units, "piece {piece}");
        }
    }

    #[test]
    fn garbage_and_giant_units_are_errors_within_the_limit() {
        let mut splitter = AccessUnitSplitter::new(4096);
        let noise: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8 | 0x10).collect();
        let mut result = Ok(());
        for _ in 0..10 {
            result = splitter.push(&noise, |_| {});
            assert!(splitter.held() <= 4096 + noise.len());
            if result.is_err() {
                break;
            }
        }
        assert!(
            result.is_ok(),
            "noise without start codes is dropped as it comes"
        );
        assert!(splitter.held() <= 4);
        // One NAL that never ends.
        splitter.push(&[0, 0, 1, 0x65, 0x88], |_| {}).unwrap();
        let mut err = None;
        for _ in 0..10 {
            if let Err(e) = splitter.push(&noise, |_| {}) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(SplitError::TooLarge(4096)));
    }

    #[test]
    fn profiles_as_sdp_names_them() {
        let p = |hex: &str| ProfileLevel::parse(hex).unwrap().profile();
        assert_eq!(p("42e01f"), Some(Profile::ConstrainedBaseline));
        assert_eq!(p("42c01f"), Some(Profile::ConstrainedBaseline));
        assert_eq!(p("42001f"), Some(Profile::Baseline));
        assert_eq!(p("4d001f"), Some(Profile::Main));
        assert_eq!(p("4d401f"), Some(Profile::Main));
        assert_eq!(p("640028"), Some(Profile::High));
        assert_eq!(p("640c1f"), Some(Profile::ConstrainedHigh));
        assert_eq!(p("f4001f"), Some(Profile::PredictiveHigh444));
        assert_eq!(p("6e001f"), None);
        assert_eq!(ProfileLevel::parse("4D401F").unwrap().to_string(), "4d401f");
        assert_eq!(ProfileLevel::parse("4d40"), None);
        assert!(Profile::Main.decodes(Profile::ConstrainedBaseline));
        assert!(Profile::PredictiveHigh444.decodes(Profile::High));
        assert!(!Profile::Main.decodes(Profile::High));
        assert!(!Profile::ConstrainedBaseline.decodes(Profile::Main));
        assert!(!Profile::Main.decodes(Profile::Baseline));
    }
}
