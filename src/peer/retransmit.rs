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
