//! When one viewer's trouble is worth a keyframe for everyone.
//!
//! The encoder is shared, so a keyframe a viewer asks for is a keyframe every viewer receives and
//! pays for (several times an ordinary frame). A viewer on a lossy link asks often: Chromium sends
//! a PLI whenever it cannot decode, our retransmitter finds losses it cannot repair, and a viewer
//! whose link cannot carry the stream has frames held back until the next keyframe. Before this
//! policy, one viewer behind a 3 %-loss link forced 13 keyframes in 30 s on everyone (issue 15).
//!
//! Retransmission comes first (the [`super::retransmit`] rules decide what it can repair); what is
//! left asks here, per viewer and per [`Cause`]:
//!
//! - a request is refused while a keyframe sent to this viewer may still be on its way (less than
//!   its round-trip time plus [`IN_FLIGHT_MARGIN`] ago): that keyframe answers it;
//! - loss requests (PLI/FIR, unrepairable loss) at most once per [`LOSS_INTERVAL`] per viewer;
//! - congestion requests (frames held back for the viewer's backlog) at most once per
//!   [`CONGESTION_INTERVAL`].
//!
//! The hub's own gate then coalesces the requests of all viewers (at most one keyframe per
//! 250 ms). Time is passed in.

use std::time::{Duration, Instant};

/// Why a viewer wants a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The viewer's decoder asked (RTCP PLI or FIR).
    PictureLoss,
    /// Packets the viewer lost that retransmission cannot bring back.
    Unrepairable,
    /// Frames were held back because the viewer's link could not carry them.
    Congestion,
}

/// Loss requests from one viewer are served at most this often.
pub const LOSS_INTERVAL: Duration = Duration::from_secs(1);
/// Congestion requests from one viewer are served at most this often.
pub const CONGESTION_INTERVAL: Duration = Duration::from_secs(2);
/// A keyframe sent this long plus a round trip ago is assumed to have arrived (or been lost).
pub const IN_FLIGHT_MARGIN: Duration = Duration::from_millis(100);

/// One viewer's keyframe requests.
#[derive(Debug, Default)]
pub struct KeyframePolicy {
    last_loss: Option<Instant>,
    last_congestion: Option<Instant>,
    last_keyframe_sent: Option<Instant>,
    /// Requests passed on and refused, by cause (loss causes together, congestion).
    pub passed: u64,
    pub refused: u64,
}

impl KeyframePolicy {
    /// A keyframe went to this viewer.
    pub fn keyframe_sent(&mut self, now: Instant) {
        self.last_keyframe_sent = Some(now);
    }

    /// Whether a request for `cause` goes on to the encoder now.
    pub fn allow(&mut self, cause: Cause, now: Instant, rtt: Option<Duration>) -> bool {
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        let in_flight = rtt.unwrap_or(Duration::from_millis(100)) + IN_FLIGHT_MARGIN;
        if since(self.last_keyframe_sent).is_some_and(|d| d < in_flight) {
            self.refused += 1;
            return false;
        }
        let (last, interval) = match cause {
            Cause::PictureLoss | Cause::Unrepairable => (&mut self.last_loss, LOSS_INTERVAL),
            Cause::Congestion => (&mut self.last_congestion, CONGESTION_INTERVAL),
        };
        if last.is_some_and(|t| now.saturating_duration_since(t) < interval) {
            self.refused += 1;
            return false;
        }
        *last = Some(now);
        self.passed += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_requests_from_one_viewer_are_spaced() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut policy = KeyframePolicy::default();
        assert!(policy.allow(Cause::PictureLoss, t0, None));
        // A burst of PLIs and unrepairable losses: one keyframe per second.
        for n in (50..1000).step_by(50) {
            assert!(!policy.allow(Cause::PictureLoss, ms(n), None));
            assert!(!policy.allow(Cause::Unrepairable, ms(n), None));
        }
        assert!(policy.allow(Cause::Unrepairable, ms(1000), None));
        // Congestion has its own budget.
        assert!(policy.allow(Cause::Congestion, ms(1010), None));
        assert!(!policy.allow(Cause::Congestion, ms(2500), None));
        assert!(policy.allow(Cause::Congestion, ms(3010), None));
        assert_eq!(policy.passed, 4);
    }

    #[test]
    fn a_keyframe_on_its_way_answers_requests() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut policy = KeyframePolicy::default();
        policy.keyframe_sent(t0);
        let rtt = Some(Duration::from_millis(200));
        // Within the round trip + margin (300 ms): refused.
        assert!(!policy.allow(Cause::PictureLoss, ms(250), rtt));
        assert!(policy.allow(Cause::PictureLoss, ms(310), rtt));
    }
}
