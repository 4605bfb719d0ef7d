//! One viewer's pacer: the library's `PacerInterceptor`, paced at [`PACE_FACTOR`] times the
//! bandwidth estimate, with its backlog published on the viewer's [`Link`].
//!
//! The library pacer paces at exactly the estimate ("no hidden headroom"). A camera's keyframe
//! is several times an average frame, and openh264 overshoots its target on forced keyframes, so
//! at 1× the queue grew without bound once the estimate fell below what the encoder produced
//! (Chromium's jitter buffer reached 2-6 s in the R2 probe). libwebrtc paces at 2.5× its target
//! for the same reason. The pacer still spreads a keyframe over a few tens of milliseconds
//! instead of putting it on the wire in one burst.
//!
//! The backlog (bits queued ÷ pacing rate) is what the session's send loop reads to decide,
//! frame by frame, whether a viewer gets a frame at all (see `session`): frames are held back at
//! the application, whole, rather than left to pile up here or be refused mid-frame by the
//! pacer's queue limit (which it does to new arrivals, making a hole the viewer must repair).

use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{
    Attribute, Interceptor, PacerBuilder, PacerInterceptor, Packet, StreamInfo, TaggedPacket,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use rtc::shared::marshal::MarshalSize;

use super::link::Link;

/// The pacer releases at this multiple of the bandwidth estimate.
pub const PACE_FACTOR: f64 = 2.5;
/// Packets the pacer holds before it refuses more. The session keeps the backlog far below this
/// (it stops handing frames over once the backlog passes a few hundred milliseconds); this is
/// the backstop.
pub const QUEUE_LIMIT: usize = 512;

/// The library pacer, wrapped.
pub struct LinkPacer {
    inner: PacerInterceptor,
    link: Arc<Link>,
    queued_bits: u64,
}

fn rtp_bits(packet: &TaggedPacket) -> Option<u64> {
    match &packet.message.packet {
        Packet::Rtp(rtp) => Some(rtp.marshal_size() as u64 * 8),
        _ => None,
    }
}

impl LinkPacer {
    /// A pacer for a link whose estimate starts at `start_bps`.
    pub fn new(link: Arc<Link>, start_bps: f64) -> Self {
        LinkPacer {
            inner: PacerBuilder::new()
                .with_target_bitrate(start_bps * PACE_FACTOR)
                .with_queue_limit(QUEUE_LIMIT)
                .build(),
            link,
            queued_bits: 0,
        }
    }

    fn publish(&self) {
        self.link.set_pacer(
            self.queued_bits,
            self.inner.pacer().target_bitrate() as u64,
            self.inner.dropped(),
        );
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for LinkPacer {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let estimate = match msg.message.get(&Attribute::TargetBitrateChanged {
            bits_per_second: 0.0,
        }) {
            Some(Attribute::TargetBitrateChanged { bits_per_second }) => Some(*bits_per_second),
            _ => None,
        };
        self.inner.handle_read(msg)?;
        if let Some(bps) = estimate {
            // The library pacer has just set itself to the estimate; pace with headroom.
            self.inner.pacer_mut().set_target_bitrate(bps * PACE_FACTOR);
            self.publish();
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.inner.poll_read()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let bits = rtp_bits(&msg);
        let now = msg.now;
        let dropped = self.inner.dropped();
        self.inner.handle_write(msg)?;
        if let Some(bits) = bits
            && self.inner.dropped() == dropped
        {
            self.queued_bits += bits;
            // The library pacer releases only from `handle_timeout`: a frame would wait for the
            // driver's next timer tick (at least 1 ms, and a wake-up of the whole chain per frame
            // per viewer). Release what the budget allows at once.
            self.inner.handle_timeout(now)?;
            self.publish();
        }
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        let packet = self.inner.poll_write()?;
        if let Some(bits) = rtp_bits(&packet) {
            self.queued_bits = self.queued_bits.saturating_sub(bits);
            self.publish();
        }
        Some(packet)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.inner.handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        self.inner.poll_timeout()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        self.inner.close()
    }
}

impl Interceptor for LinkPacer {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_local_stream(info);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_local_stream(info);
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_remote_stream(info);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_remote_stream(info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::shared::TransportContext;
    use std::time::Duration;

    fn tagged(now: Instant, packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    fn rtp(seq: u16) -> Packet {
        Packet::Rtp(rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                sequence_number: seq,
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![0; 1238]),
        })
    }

    #[test]
    fn paces_at_a_multiple_of_the_estimate_and_publishes_its_backlog() {
        let link = Arc::new(Link::new(1_000_000));
        let mut pacer = LinkPacer::new(Arc::clone(&link), 1_000_000.0);
        let t0 = Instant::now();
        let drain = |pacer: &mut LinkPacer| {
            let mut n = 0;
            while let Some(p) = pacer.poll_write() {
                assert!(matches!(p.message.packet, Packet::Rtp(_)));
                n += 1;
            }
            n
        };
        // 100 packets of 1250 bytes (1 Mbit) at once: the burst (a tenth of a second at
        // 2.5 Mbit/s) leaves at once, the rest waits.
        for seq in 0..100 {
            pacer.handle_write(tagged(t0, rtp(seq))).unwrap();
        }
        let burst = drain(&mut pacer);
        assert!((20..=26).contains(&burst), "{burst} packets at once");
        // What waits, at 2.5 Mbit/s.
        let waiting = (100 - burst) as f64 * 10_000.0 / 2_500_000.0;
        let backlog = link.pacer_backlog().as_secs_f64();
        assert!(
            (backlog - waiting).abs() < 0.005,
            "{backlog} s, {waiting} s"
        );
        // The estimate falls to 400 kbit/s: the pacer now releases 1 Mbit/s.
        let mut feedback = tagged(t0, Packet::Rtcp(vec![]));
        feedback.message.add(Attribute::TargetBitrateChanged {
            bits_per_second: 400_000.0,
        });
        pacer.handle_read(feedback).unwrap();
        assert_eq!(pacer.inner.pacer().target_bitrate(), 1_000_000.0);
        let backlog = link.pacer_backlog().as_secs_f64();
        assert!((backlog - waiting * 2.5).abs() < 0.01, "{backlog} s");
        // 300 ms later about 30 more have gone out, and the backlog says so.
        let mut sent = 0;
        let mut at = t0;
        while at < t0 + Duration::from_millis(300) {
            at += Duration::from_millis(5);
            pacer.handle_timeout(at).unwrap();
            sent += drain(&mut pacer);
        }
        assert!((27..=36).contains(&sent), "{sent} packets in 300 ms");
        let left = link.pacer_backlog().as_secs_f64();
        let expected = (100 - burst - sent) as f64 * 10_000.0 / 1_000_000.0;
        assert!((left - expected).abs() < 0.005, "{left} s, {expected} s");
    }
}
