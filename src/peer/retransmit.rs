//! Our NACK responder: resends what a viewer reports lost, within bounds, and says when loss
//! cannot be repaired that way (the session then asks for a keyframe instead).
//!
//! It replaces the library's `NackResponderInterceptor`, which resends every requested packet
//! every time it is asked, at once and without limit: behind a 500 kbit/s, 3 %-loss link that
//! made 35 times the stream in retransmissions (issue 15). The rules here, for each sequence
//! number a NACK names:
//!
//! - **not kept** (older than the last [`HISTORY`] packets) or **before the newest keyframe**
//!   (the viewer can start again from that keyframe): not resent; the first counts as
//!   unrepairable;
//! - **too old**: first sent more than [`MAX_AGE`] ago, when it would only arrive after the
//!   viewer gave up on its frame: not resent, unrepairable;
//! - **too soon**: resent less than one round-trip time ago (the previous copy may still be on
//!   its way): not resent, the viewer asks again if it still misses it;
//! - **resent [`MAX_RESENDS`] times already**: not resent, unrepairable;
//! - **over budget**: retransmissions draw on a token bucket refilled at [`RETRANSMIT_SHARE`] of
//!   the viewer's bandwidth estimate, so they never take more than that share, whatever the
//!   viewer asks; the viewer asks again later, and the packet ages out if the budget stays short.
//!
//! Resends go down the chain like media: through the pacer, numbered by the transport-wide
//! sequence number sender (plain resends) and recorded by the congestion controller. With RTX
//! negotiated (RFC 4588) they are sent as RTX packets on their own SSRC and payload type, so that
//! the viewer can tell a repair from a duplicate (see docs/PERFORMANCE.md, "Rate control", for why
//! that matters with Chromium).
//!
//! The round-trip time comes from our RTCP sender reports and the viewer's reception reports
//! (RFC 3550 6.4.1) and is published on the viewer's [`Link`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket,
};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use rtc::shared::error::Error;

use super::link::Link;

/// Packets kept per stream for resending (a power of two). At 30 fps and 1-2 Mbit/s that is a
/// few seconds, more than [`MAX_AGE`].
pub const HISTORY: usize = 1024;
/// Retransmissions never take more than this share of the viewer's bandwidth estimate.
pub const RETRANSMIT_SHARE: f64 = 0.25;
/// How much of the share may be spent at once: this long's worth.
const BUDGET_WINDOW: Duration = Duration::from_millis(250);
/// The budget always holds at least this many bytes (about three full packets), so that a low
/// estimate still lets single losses be repaired.
const MIN_BUDGET_BYTES: f64 = 3600.0;
/// Resends per packet, at most.
pub const MAX_RESENDS: u8 = 3;
/// Packets first sent longer ago than this are not resent: the viewer's jitter buffer has given
/// up on their frame by the time a resend arrives.
pub const MAX_AGE: Duration = Duration::from_millis(1000);
/// The round-trip time assumed until one is measured.
const DEFAULT_RTT: Duration = Duration::from_millis(100);
/// Resends of one packet are at least this far apart, however short the round trip.
const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(10);
/// Sender reports remembered for round-trip times (one goes out every second or so).
const SENDER_REPORTS: usize = 16;

/// One sent packet, as it was handed to the chain (before the transport-wide sequence number).
struct Sent {
    packet: rtc::rtp::Packet,
    at: Instant,
    resends: u8,
    last_resend: Option<Instant>,
}

/// A bound stream that negotiated NACK.
struct Stream {
    history: Vec<Option<Sent>>,
    /// RTX SSRC and payload type, when negotiated.
    rtx: Option<(u32, u8)>,
    rtx_sequence: u16,
    /// The first packet of the newest keyframe.
    keyframe: Option<u16>,
}

impl Stream {
    fn slot(seq: u16) -> usize {
        usize::from(seq) & (HISTORY - 1)
    }

    fn get(history: &mut [Option<Sent>], seq: u16) -> Option<&mut Sent> {
        history[Self::slot(seq)]
            .as_mut()
            .filter(|s| s.packet.header.sequence_number == seq)
    }
}

/// Whether `payload` (H.264, RFC 6184) starts a keyframe: an SPS, an IDR slice, a STAP-A that
/// opens with an SPS or an IDR, or the first FU-A fragment of an IDR slice.
fn starts_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => payload
            .get(3)
            .is_some_and(|n| matches!(n & 0x1f, IDR | SPS)),
        FU_A => payload
            .get(1)
            .is_some_and(|h| h & 0x80 != 0 && h & 0x1f == IDR),
        _ => false,
    }
}

/// `a` comes before `b` in sequence-number order (with wrap-around).
fn precedes(a: u16, b: u16) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000
}

/// The NACK responder interceptor (for `Slot::NackResponder`, above the pacer).
pub struct Retransmitter {
    link: Arc<Link>,
    streams: HashMap<u32, Stream>,
    /// The budget, in bytes, and when it was last refilled.
    budget: f64,
    refilled: Option<Instant>,
    /// (middle 32 bits of the NTP time, when it left) of our recent sender reports.
    sender_reports: VecDeque<(u32, Instant)>,
    rtt: Option<Duration>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Retransmitter {
    pub fn new(link: Arc<Link>) -> Self {
        Retransmitter {
            link,
            streams: HashMap::new(),
            budget: MIN_BUDGET_BYTES,
            refilled: None,
            sender_reports: VecDeque::with_capacity(SENDER_REPORTS),
            rtt: None,
            reads: VecDeque::new(),
            writes: VecDeque::new(),
        }
    }

    /// Bytes per second the budget refills at.
    fn budget_rate(&self) -> f64 {
        self.link.estimate_bps() as f64 / 8.0 * RETRANSMIT_SHARE
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.budget_rate();
        let cap = (rate * BUDGET_WINDOW.as_secs_f64()).max(MIN_BUDGET_BYTES);
        if let Some(last) = self.refilled {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.budget = (self.budget + elapsed * rate).min(cap);
        }
        self.budget = self.budget.min(cap);
        self.refilled = Some(now);
    }

    fn on_nack(&mut self, now: Instant, nack: &TransportLayerNack) {
        self.refill(now);
        let rtt = self.rtt.unwrap_or(DEFAULT_RTT);
        let interval = rtt.max(MIN_RESEND_INTERVAL);
        let link = &self.link;
        let Some(stream) = self.streams.get_mut(&nack.media_ssrc) else {
            return;
        };
        for pair in &nack.nacks {
            let lost = std::iter::once(pair.packet_id).chain(
                (0..16u16)
                    .filter(|bit| pair.lost_packets & (1 << bit) != 0)
                    .map(|bit| pair.packet_id.wrapping_add(bit + 1)),
            );
            for seq in lost {
                link.nacked_packets.fetch_add(1, Ordering::Relaxed);
                if stream.keyframe.is_some_and(|k| precedes(seq, k)) {
                    // The viewer can start again from the newest keyframe.
                    link.refused_too_old.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let rtx = stream.rtx;
                let Some(sent) = Stream::get(&mut stream.history, seq) else {
                    link.refused_unknown.fetch_add(1, Ordering::Relaxed);
                    link.loss_unrepairable();
                    continue;
                };
                if now.saturating_duration_since(sent.at) > MAX_AGE {
                    link.refused_too_old.fetch_add(1, Ordering::Relaxed);
                    link.loss_unrepairable();
                    continue;
                }
                if sent
                    .last_resend
                    .is_some_and(|t| now.saturating_duration_since(t) < interval)
                {
                    link.refused_too_soon.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if sent.resends >= MAX_RESENDS {
                    link.refused_over_count.fetch_add(1, Ordering::Relaxed);
                    link.loss_unrepairable();
                    continue;
                }
                let size = sent.packet.payload.len() + 12 + if rtx.is_some() { 2 } else { 0 };
                if self.budget < size as f64 {
                    link.refused_over_budget.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.budget -= size as f64;
                sent.resends += 1;
                sent.last_resend = Some(now);
                let packet = match rtx {
                    Some((ssrc, payload_type)) => {
                        // RFC 4588: the original sequence number, then the original payload.
                        let original = &sent.packet;
                        let mut payload = BytesMut::with_capacity(2 + original.payload.len());
                        payload.put_u16(original.header.sequence_number);
                        payload.put_slice(&original.payload);
                        let sequence_number = stream.rtx_sequence;
                        stream.rtx_sequence = stream.rtx_sequence.wrapping_add(1);
                        rtc::rtp::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                marker: original.header.marker,
                                payload_type,
                                sequence_number,
                                timestamp: original.header.timestamp,
                                ssrc,
                                ..Default::default()
                            },
                            payload: payload.freeze(),
                        }
                    }
                    None => sent.packet.clone(),
                };
                link.retransmitted_packets.fetch_add(1, Ordering::Relaxed);
                link.retransmitted_bytes
                    .fetch_add(size as u64, Ordering::Relaxed);
                self.writes.push_back(TaggedPacket {
                    now,
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtp(packet))
                        .with(Attribute::Retransmission),
                });
            }
        }
    }

    /// A reception report about one of our streams: the round-trip time it implies.
    fn on_reception_report(&mut self, now: Instant, report: &ReceptionReport) {
        if report.last_sender_report == 0 || !self.streams.contains_key(&report.ssrc) {
            return;
        }
        let Some(&(_, sent)) = self
            .sender_reports
            .iter()
            .find(|(ntp, _)| *ntp == report.last_sender_report)
        else {
            return;
        };
        let delay = Duration::from_secs_f64(f64::from(report.delay) / 65536.0);
        let Some(rtt) = now.saturating_duration_since(sent).checked_sub(delay) else {
            return;
        };
        // Smoothed like TCP's SRTT (RFC 6298), so one late report does not swing it.
        let smoothed = match self.rtt {
            Some(previous) => (previous * 7 + rtt) / 8,
            None => rtt,
        };
        self.rtt = Some(smoothed);
        self.link.set_rtt(smoothed);
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Retransmitter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for packet in packets {
                let any = packet.as_any();
                if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                    self.on_nack(msg.now, nack);
                } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    for report in &rr.reports {
                        self.on_reception_report(msg.now, report);
                    }
                } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    for report in &sr.reports {
                        self.on_reception_report(msg.now, report);
                    }
                }
            }
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtp(packet) => {
                if let Some(stream) = self.streams.get_mut(&packet.header.ssrc) {
                    let seq = packet.header.sequence_number;
                    if starts_keyframe(&packet.payload) {
                        stream.keyframe = Some(seq);
                    }
                    stream.history[Stream::slot(seq)] = Some(Sent {
                        packet: packet.clone(),
                        at: msg.now,
                        resends: 0,
                        last_resend: None,
                    });
                }
            }
            Packet::Rtcp(packets) => {
                for packet in packets {
                    if let Some(sr) = packet.as_any().downcast_ref::<SenderReport>() {
                        if self.sender_reports.len() == SENDER_REPORTS {
                            self.sender_reports.pop_front();
                        }
                        // The middle 32 bits of the NTP timestamp, as reception reports echo it.
                        self.sender_reports
                            .push_back(((sr.ntp_time >> 16) as u32, msg.now));
                    }
                }
            }
            _ => {}
        }
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.writes.pop_front()
    }
}

impl Interceptor for Retransmitter {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if info.mime_type.to_ascii_lowercase().starts_with("video/") {
            self.link
                .bound_video(info.payload_type, info.payload_type_rtx);
        }
        let nack = info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty());
        if nack {
            let mut history = Vec::with_capacity(HISTORY);
            history.resize_with(HISTORY, || None);
            self.streams.insert(
                info.ssrc,
                Stream {
                    history,
                    rtx: info.ssrc_rtx.zip(info.payload_type_rtx),
                    rtx_sequence: rand::random(),
                    keyframe: None,
                },
            );
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::RTCPFeedback;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    const SSRC: u32 = 0x1111;
    const RTX_SSRC: u32 = 0x2222;

    fn responder(estimate_bps: u64, rtx: bool) -> (Retransmitter, Arc<Link>) {
        let link = Arc::new(Link::new(estimate_bps));
        let mut r = Retransmitter::new(Arc::clone(&link));
        r.bind_local_stream(&StreamInfo {
            ssrc: SSRC,
            ssrc_rtx: rtx.then_some(RTX_SSRC),
            payload_type: 108,
            payload_type_rtx: rtx.then_some(109),
            mime_type: "video/H264".into(),
            rtcp_feedback: vec![RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            }],
            ..Default::default()
        });
        (r, link)
    }

    fn tagged(now: Instant, packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    /// Send packets `seqs` at `at`, each with a 1000-byte payload (an ordinary slice).
    fn send(r: &mut Retransmitter, at: Instant, seqs: std::ops::Range<u16>) {
        for seq in seqs {
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    ssrc: SSRC,
                    payload_type: 108,
                    sequence_number: seq,
                    timestamp: 90 * u32::from(seq),
                    ..Default::default()
                },
                payload: bytes::Bytes::from(vec![0x41; 1000]),
            };
            r.handle_write(tagged(at, Packet::Rtp(packet))).unwrap();
        }
        while r.poll_write().is_some() {}
    }

    fn send_keyframe(r: &mut Retransmitter, at: Instant, seq: u16) {
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: SSRC,
                sequence_number: seq,
                ..Default::default()
            },
            // STAP-A opening with an SPS.
            payload: bytes::Bytes::from_static(&[24, 0, 4, 0x67, 0x42, 0xc0, 0x1f]),
        };
        r.handle_write(tagged(at, Packet::Rtp(packet))).unwrap();
        while r.poll_write().is_some() {}
    }

    /// The viewer NACKs `seqs` at `at`; the retransmissions that come out.
    fn nack(r: &mut Retransmitter, at: Instant, seqs: &[u16]) -> Vec<rtc::rtp::Packet> {
        let nacks = seqs
            .iter()
            .map(|&packet_id| NackPair {
                packet_id,
                lost_packets: 0,
            })
            .collect();
        let feedback = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: SSRC,
            nacks,
        };
        r.handle_read(tagged(at, Packet::Rtcp(vec![Box::new(feedback)])))
            .unwrap();
        while r.poll_read().is_some() {}
        let mut out = Vec::new();
        while let Some(p) = r.poll_write() {
            assert!(p.message.has(&Attribute::Retransmission));
            match p.message.packet {
                Packet::Rtp(p) => out.push(p),
                _ => panic!("a retransmission is RTP"),
            }
        }
        out
    }

    #[test]
    fn a_packet_is_resent_once_per_round_trip_and_at_most_max_resends_times() {
        let (mut r, link) = responder(2_000_000, false);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        send(&mut r, t0, 0..10);
        assert_eq!(nack(&mut r, ms(50), &[3]).len(), 1);
        // Asked again before a round trip (100 ms until measured): not resent.
        assert!(nack(&mut r, ms(100), &[3]).is_empty());
        assert_eq!(link.refused_too_soon.load(Ordering::Relaxed), 1);
        assert_eq!(nack(&mut r, ms(160), &[3]).len(), 1);
        assert_eq!(nack(&mut r, ms(270), &[3]).len(), 1);
        // MAX_RESENDS reached: the loss cannot be repaired this way.
        assert!(nack(&mut r, ms(380), &[3]).is_empty());
        assert_eq!(link.refused_over_count.load(Ordering::Relaxed), 1);
        assert_eq!(link.unrepairable.load(Ordering::Relaxed), 1);
        assert_eq!(link.retransmitted_packets.load(Ordering::Relaxed), 3);
        // A plain retransmission is the packet as it was.
        let again = nack(&mut r, ms(400), &[4]);
        assert_eq!(
            (again[0].header.ssrc, again[0].header.sequence_number),
            (SSRC, 4)
        );
    }

    #[test]
    fn retransmissions_never_take_more_than_their_share_of_the_estimate() {
        // 200 kbit/s: the share is 50 kbit/s, 6250 bytes/s; the budget holds at most
        // max(250 ms of it, 3600 bytes) = 3600 bytes.
        let (mut r, link) = responder(200_000, false);
        let t0 = Instant::now();
        send(&mut r, t0, 0..400);
        let mut resent_bytes = 0;
        // The viewer asks for everything, ten times a second, for 4 seconds.
        for step in 0..40u64 {
            let seqs: Vec<u16> = (0..400).collect();
            let at = t0 + Duration::from_millis(10 + step * 100);
            resent_bytes += nack(&mut r, at, &seqs)
                .iter()
                .map(|p| p.payload.len() + 12)
                .sum::<usize>();
        }
        let allowed = 3600.0 + 4.0 * 200_000.0 / 8.0 * RETRANSMIT_SHARE;
        assert!(
            resent_bytes as f64 <= allowed,
            "{resent_bytes} bytes resent, at most {allowed}"
        );
        assert!(resent_bytes > 0);
        assert!(link.refused_over_budget.load(Ordering::Relaxed) > 0);
        assert_eq!(
            link.retransmitted_bytes.load(Ordering::Relaxed),
            resent_bytes as u64
        );
    }

    #[test]
    fn old_packets_and_packets_before_a_keyframe_are_not_resent() {
        let (mut r, link) = responder(2_000_000, false);
        let t0 = Instant::now();
        send(&mut r, t0, 0..10);
        // Older than MAX_AGE: unrepairable.
        assert!(nack(&mut r, t0 + MAX_AGE + Duration::from_millis(1), &[2]).is_empty());
        assert_eq!(link.refused_too_old.load(Ordering::Relaxed), 1);
        assert_eq!(link.unrepairable.load(Ordering::Relaxed), 1);
        // A packet we never kept (or long gone from the history): unrepairable.
        assert!(nack(&mut r, t0, &[5000]).is_empty());
        assert_eq!(link.unrepairable.load(Ordering::Relaxed), 2);
        // Before the newest keyframe: the viewer can start again from it.
        let t1 = t0 + Duration::from_millis(10);
        send_keyframe(&mut r, t1, 10);
        send(&mut r, t1, 11..14);
        assert!(nack(&mut r, t1, &[9]).is_empty());
        assert_eq!(link.refused_too_old.load(Ordering::Relaxed), 2);
        assert_eq!(link.unrepairable.load(Ordering::Relaxed), 2);
        assert_eq!(nack(&mut r, t1, &[10, 12]).len(), 2);
    }

    #[test]
    fn with_rtx_a_repair_goes_on_its_own_ssrc_with_the_original_sequence_number() {
        let (mut r, link) = responder(2_000_000, true);
        assert_eq!(link.video_payload_type(), Some(108));
        assert_eq!(link.rtx_payload_type(), Some(109));
        let t0 = Instant::now();
        send(&mut r, t0, 700..705);
        let out = nack(&mut r, t0, &[701, 703]);
        assert_eq!(out.len(), 2);
        for (packet, original) in out.iter().zip([701u16, 703]) {
            assert_eq!(
                (packet.header.ssrc, packet.header.payload_type),
                (RTX_SSRC, 109)
            );
            assert_eq!(&packet.payload[..2], &original.to_be_bytes());
            assert_eq!(packet.payload.len(), 1002);
            assert_eq!(packet.header.timestamp, 90 * u32::from(original));
        }
        assert_eq!(
            out[1].header.sequence_number,
            out[0].header.sequence_number.wrapping_add(1)
        );
    }

    #[test]
    fn the_round_trip_comes_from_sender_and_reception_reports() {
        let (mut r, link) = responder(2_000_000, false);
        let t0 = Instant::now();
        let sr = SenderReport {
            ssrc: SSRC,
            ntp_time: 0x0001_2345_6789_0000,
            ..Default::default()
        };
        r.handle_write(tagged(t0, Packet::Rtcp(vec![Box::new(sr)])))
            .unwrap();
        while r.poll_write().is_some() {}
        // The viewer held the report for 0.5 s (32768/65536) and answers 580 ms after it left.
        let rr = ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport {
                ssrc: SSRC,
                last_sender_report: 0x2345_6789,
                delay: 32768,
                ..Default::default()
            }],
            ..Default::default()
        };
        r.handle_read(tagged(
            t0 + Duration::from_millis(580),
            Packet::Rtcp(vec![Box::new(rr)]),
        ))
        .unwrap();
        assert_eq!(link.rtt(), Some(Duration::from_millis(80)));
    }

    #[test]
    fn keyframe_starts_are_recognised() {
        assert!(starts_keyframe(&[0x65, 0x88]));
        assert!(starts_keyframe(&[0x67, 0x42]));
        assert!(starts_keyframe(&[24, 0, 4, 0x67]));
        assert!(starts_keyframe(&[28, 0x85]));
        assert!(!starts_keyframe(&[28, 0x05]), "a middle fragment");
        assert!(!starts_keyframe(&[28, 0x81]), "a P slice");
        assert!(!starts_keyframe(&[0x41]));
        assert!(!starts_keyframe(&[]));
    }
}
