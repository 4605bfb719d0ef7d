//! Turns received H.264 RTP packets into whole Annex-B access units, and notices loss: after a
//! gap in sequence numbers, nothing is handed out until the next keyframe, and the caller is told
//! to ask for one.

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;

use crate::video::h264::has_idr;

/// What a packet produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// A complete access unit, ready to decode.
    pub access_unit: Option<Bytes>,
    /// Loss was detected: ask the sender for a keyframe.
    pub request_keyframe: bool,
}

#[derive(Default)]
pub struct Assembler {
    depacketizer: H264Packet,
    current: BytesMut,
    timestamp: Option<u32>,
    last_seq: Option<u16>,
    /// Set after loss (and at start): drop until an access unit that holds an IDR.
    need_keyframe: bool,
    /// The current access unit is damaged.
    broken: bool,
    pub lost_packets: u64,
}

impl Assembler {
    pub fn new() -> Self {
        Assembler {
            need_keyframe: true,
            ..Default::default()
        }
    }

    /// Feed one RTP packet (sequence number, timestamp, marker bit, payload).
    pub fn push(&mut self, seq: u16, timestamp: u32, marker: bool, payload: &Bytes) -> Pushed {
        let mut out = Pushed::default();
        if let Some(last) = self.last_seq {
            let step = seq.wrapping_sub(last);
            if step == 0 || step > 0x8000 {
                // Duplicate or late packet: ignore.
                return out;
            }
            if step != 1 {
                self.lost_packets += u64::from(step - 1);
                self.broken = true;
                self.need_keyframe = true;
                self.depacketizer = H264Packet::default();
                out.request_keyframe = true;
            }
        }
        self.last_seq = Some(seq);
        if self.timestamp != Some(timestamp) {
            // A new access unit began before the previous one's marker: that one is lost, and
            // what follows it cannot be decoded until a keyframe.
            if !self.current.is_empty() {
                self.need_keyframe = true;
                out.request_keyframe = true;
                self.current.clear();
                self.depacketizer = H264Packet::default();
            }
            self.timestamp = Some(timestamp);
        }
        match self.depacketizer.depacketize(payload) {
            Ok(nal) => self.current.extend_from_slice(&nal),
            Err(_) => self.broken = true,
        }
        if marker {
            let au = std::mem::take(&mut self.current).freeze();
            let damaged = std::mem::replace(&mut self.broken, false);
            self.timestamp = None;
            if damaged || au.is_empty() {
                self.need_keyframe = true;
                out.request_keyframe = true;
            } else if self.need_keyframe {
                if has_idr(&au) {
                    self.need_keyframe = false;
                    out.access_unit = Some(au);
                } else {
                    out.request_keyframe = true;
                }
            } else {
                out.access_unit = Some(au);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(nal_type: u8, body: &[u8]) -> Bytes {
        let mut v = vec![0x60 | nal_type];
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    fn stap_a(nals: &[Bytes]) -> Bytes {
        let mut v = vec![0x78];
        for n in nals {
            v.extend_from_slice(&(n.len() as u16).to_be_bytes());
            v.extend_from_slice(n);
        }
        Bytes::from(v)
    }

    fn fu_a(nal_type: u8, start: bool, end: bool, body: &[u8]) -> Bytes {
        let mut v = vec![
            0x7c,
            nal_type | if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 },
        ];
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn reassembles_a_keyframe_then_a_p_frame() {
        let mut a = Assembler::new();
        let params = stap_a(&[single(7, &[1, 2, 3]), single(8, &[4, 5])]);
        assert_eq!(a.push(10, 900, false, &params), Pushed::default());
        assert_eq!(
            a.push(11, 900, false, &fu_a(5, true, false, &[9, 9])),
            Pushed::default()
        );
        let got = a.push(12, 900, true, &fu_a(5, false, true, &[8]));
        let au = got.access_unit.unwrap();
        assert_eq!(crate::video::h264::nal_types(&au), vec![7, 8, 5]);
        assert!(!got.request_keyframe);
        let p = a.push(13, 3900, true, &single(1, &[7, 7, 7]));
        assert_eq!(
            crate::video::h264::nal_types(&p.access_unit.unwrap()),
            vec![1]
        );
        assert_eq!(a.lost_packets, 0);
    }

    #[test]
    fn p_frames_before_the_first_keyframe_are_dropped_and_a_keyframe_is_asked_for() {
        let mut a = Assembler::new();
        let got = a.push(1, 0, true, &single(1, &[1, 2, 3]));
        assert!(got.access_unit.is_none() && got.request_keyframe);
    }

    #[test]
    fn loss_drops_until_the_next_keyframe() {
        let mut a = Assembler::new();
        assert!(
            a.push(1, 0, true, &single(5, &[1, 2]))
                .access_unit
                .is_some()
        );
        // Packet 2 (start of the next frame) is lost.
        let got = a.push(3, 3000, true, &fu_a(1, false, true, &[3, 3]));
        assert!(got.access_unit.is_none() && got.request_keyframe);
        assert!(
            a.push(4, 6000, true, &single(1, &[4, 4]))
                .access_unit
                .is_none()
        );
        assert!(
            a.push(5, 9000, true, &single(5, &[5, 5]))
                .access_unit
                .is_some()
        );
        assert!(
            a.push(6, 12000, true, &single(1, &[6, 6]))
                .access_unit
                .is_some()
        );
        assert_eq!(a.lost_packets, 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut a = Assembler::new();
        assert!(
            a.push(65535, 0, true, &single(5, &[1, 2]))
                .access_unit
                .is_some()
        );
        assert!(
            a.push(0, 3000, true, &single(1, &[1, 2]))
                .access_unit
                .is_some()
        );
        assert_eq!(a.lost_packets, 0);
    }
}
