//! Reading H.264 Annex B access units: which NAL units they hold and what profile and level
//! their sequence parameter set announces. openh264's [`nal_units`] splits them at start codes.

use openh264::nal_units;

/// NAL unit type of an IDR slice.
pub const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub const NAL_SPS: u8 = 7;

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
}
