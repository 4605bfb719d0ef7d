//! H.264 RTP packetization (RFC 6184), once per frame for every viewer.
//!
//! Each viewer used to have its own `TrackLocalStaticSample`, whose packetizer scanned every
//! access unit and copied every FU-A fragment again for every viewer. Now the first viewer to
//! send a frame runs webrtc's `H264Payloader` over it and keeps the payloads in the frame
//! ([`payloads`]); every viewer then only writes its own RTP header in front of the same `Bytes`
//! ([`RtpStream::packet`]): its SSRC, payload type, sequence number and timestamp. No copy and no
//! allocation of ours per packet and viewer (the crates still allocate below `write_rtp`).
//!
//! Per viewer, sequence numbers stay contiguous whatever frames it is not sent (temporal layers
//! it does not get, frames held back), as a decoder expects; timestamps follow the capture clock.

use std::time::Instant;

use bytes::Bytes;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::Payloader;

use crate::video::encode::EncodedFrame;

/// RTP packets are at most this many bytes before SRTP and header extensions (webrtc's own
/// `TrackLocalStaticSample` uses the same).
pub const RTP_MTU: usize = 1200;
const RTP_HEADER: usize = 12;
/// The video RTP clock.
const CLOCK_RATE: f64 = 90_000.0;

/// The frame's RTP payloads, made on first use and shared by every viewer.
pub fn payloads(frame: &EncodedFrame) -> &[Bytes] {
    frame.rtp_payloads.get_or_init(|| {
        // A fresh payloader per access unit: SPS and PPS come in the same access unit as their
        // IDR, so the payloader's carry-over (it holds them for a STAP-A) never spans frames.
        H264Payloader::default()
            .payload(RTP_MTU - RTP_HEADER, &frame.data)
            .unwrap_or_default()
    })
}

/// One viewer's video RTP stream: its own SSRC, payload type, sequence numbers and timestamps.
#[derive(Debug)]
pub struct RtpStream {
    ssrc: u32,
    payload_type: u8,
    next_sequence: u16,
    timestamp_offset: u32,
    epoch: Option<Instant>,
}

impl RtpStream {
    /// A stream with random initial sequence number and timestamp (RFC 3550 5.1).
    pub fn new(ssrc: u32, payload_type: u8) -> Self {
        RtpStream {
            ssrc,
            payload_type,
            next_sequence: rand::random(),
            timestamp_offset: rand::random(),
            epoch: None,
        }
    }

    /// The RTP timestamp of a frame captured at `instant`.
    pub fn timestamp(&mut self, instant: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(instant);
        let ticks = instant.saturating_duration_since(epoch).as_secs_f64() * CLOCK_RATE;
        self.timestamp_offset.wrapping_add(ticks as u64 as u32)
    }

    /// The next packet of a frame: `payload`, the frame's `timestamp`, `last` sets the marker.
    pub fn packet(&mut self, payload: &Bytes, timestamp: u32, last: bool) -> rtc::rtp::Packet {
        let sequence_number = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: last,
                payload_type: self.payload_type,
                sequence_number,
                timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: payload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn frame(data: Vec<u8>) -> EncodedFrame {
        EncodedFrame {
            data: Bytes::from(data),
            keyframe: true,
            seq: 0,
            captured_at: SystemTime::now(),
            instant: Instant::now(),
            temporal_id: 0,
            rtp_payloads: Default::default(),
        }
    }

    #[test]
    fn a_keyframe_is_packetized_once_into_stap_a_and_fu_a() {
        // SPS, PPS, and an IDR slice larger than one packet.
        let mut au = vec![
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c,
        ];
        au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        au.extend((0..3000u32).map(|i| (i % 251) as u8));
        let f = frame(au);
        let first = payloads(&f);
        assert_eq!(first[0][0] & 0x1f, 24, "STAP-A with SPS and PPS");
        assert!(first[1..].iter().all(|p| p[0] & 0x1f == 28), "FU-A");
        assert!(first.iter().all(|p| p.len() <= RTP_MTU - RTP_HEADER));
        // The second viewer gets the very same buffers.
        let second = payloads(&f);
        assert_eq!(first.as_ptr(), second.as_ptr());
    }

    #[test]
    fn sequence_numbers_stay_contiguous_and_timestamps_follow_capture() {
        let mut stream = RtpStream::new(7, 108);
        let t0 = Instant::now();
        let ts0 = stream.timestamp(t0);
        let payload = Bytes::from_static(&[0x41, 1, 2]);
        let a = stream.packet(&payload, ts0, true);
        // A frame 100 ms later (frames in between skipped for this viewer).
        let ts1 = stream.timestamp(t0 + Duration::from_millis(100));
        let b = stream.packet(&payload, ts1, true);
        assert_eq!(
            b.header.sequence_number,
            a.header.sequence_number.wrapping_add(1)
        );
        assert_eq!(ts1.wrapping_sub(ts0), 9000);
        assert_eq!(
            (b.header.ssrc, b.header.payload_type, b.header.version),
            (7, 108, 2)
        );
        assert!(b.payload.as_ptr() == payload.as_ptr());
    }
}
