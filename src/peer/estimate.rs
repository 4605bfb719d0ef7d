//! One viewer's bandwidth estimate: the library's GCC estimator (`rtc::interceptor::Gcc`, fed by
//! its `CongestionControlInterceptor` from the viewer's transport-cc feedback), with three
//! corrections applied to its output, and the result published on the viewer's [`Link`].
//!
//! We do not write an estimator. What GCC 0.21.1 does wrong for a camera, measured with Chromium
//! (/work/wave/notes/r2-rtp-congestion.md §3.5 and docs/PERFORMANCE.md "Rate control"), and what
//! this wrapper does about it:
//!
//! 1. **It inflates while the sender is content-limited.** Its increase has no cap relative to
//!    what arrives, so a static scene sent at 300 kbit/s let it climb to the maximum, and the next
//!    busy scene was encoded at a rate the link never carried. The output may only *rise* to
//!    [`DELIVERED_HEADROOM`] times what the viewer actually received over the last second
//!    (measured with the library's own `RateCalculator` from the same feedback); while the sender
//!    is content-limited it holds instead of climbing. (A plain cap at 1.5 × delivered would also
//!    pull the estimate down whenever the encoder undershoots its target, and a static scene
//!    would drag the shared encoder to its minimum.)
//! 2. **Its delay half does not back off on a queueing bottleneck** (a 500 kbit/s link with a
//!    300 ms or 1.5 s queue: it climbed to the maximum; only overflow losses stopped it). The
//!    wrapper measures the queueing delay from the same reports (one-way delay over its minimum
//!    in the last [`BASE_DELAY_WINDOW`]); above [`QUEUE_DELAY_LIMIT`] it restarts the library
//!    estimator at [`BACKOFF`] times the delivered rate (`Gcc::new`, the only way to set its
//!    state from outside), at most once per [`BACKOFF_INTERVAL`]. The library then climbs again
//!    by its own rules.
//! 3. **Its loss half holds between 2 and 10 % loss**, so after any knock-down on a link with a
//!    few per cent of random loss the estimate never recovers. While the smoothed loss is inside
//!    that band *and the queue is not growing* (random loss, not congestion), the wrapper follows
//!    the delay half alone; above 10 % the loss half rules again.
//!
//! The estimator is a pure function of the reports and instants handed in; tests drive it
//! without a network.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport, RateCalculator};
use tracing::debug;

use super::link::Link;

/// The estimate rises no further than this multiple of what the viewer received in the last
/// second.
pub const DELIVERED_HEADROOM: f64 = 1.5;
/// What "received in the last second" is measured over.
const DELIVERED_WINDOW: Duration = Duration::from_secs(1);
/// Queueing delay (one-way delay above its recent minimum) that counts as congestion.
pub const QUEUE_DELAY_LIMIT: Duration = Duration::from_millis(60);
/// The recent minimum of the one-way delay is taken over this long.
pub const BASE_DELAY_WINDOW: Duration = Duration::from_secs(10);
/// On congestion the estimate restarts at this fraction of the delivered rate.
pub const BACKOFF: f64 = 0.85;
/// Restarts are at least this far apart (the last one must have had time to show).
pub const BACKOFF_INTERVAL: Duration = Duration::from_millis(500);
/// The library loss half's band of "hold" (its `GCC_LOW_LOSS` and `GCC_HIGH_LOSS`).
const LOSS_BAND: (f64, f64) = (
    rtc::interceptor::GCC_LOW_LOSS,
    rtc::interceptor::GCC_HIGH_LOSS,
);
/// How often the estimator's state goes to the debug log.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The smallest one-way delay seen, per slice of time, over [`BASE_DELAY_WINDOW`].
#[derive(Debug, Default)]
struct BaseDelay {
    /// (start of the slice, minimum one-way delay in it, seconds)
    slices: VecDeque<(Instant, f64)>,
}

impl BaseDelay {
    const SLICE: Duration = Duration::from_secs(1);

    fn add(&mut self, now: Instant, delay: f64) {
        match self.slices.back_mut() {
            Some((start, min)) if now.saturating_duration_since(*start) < Self::SLICE => {
                *min = min.min(delay);
            }
            _ => self.slices.push_back((now, delay)),
        }
        while self
            .slices
            .front()
            .is_some_and(|(start, _)| now.saturating_duration_since(*start) > BASE_DELAY_WINDOW)
        {
            self.slices.pop_front();
        }
    }

    fn min(&self) -> Option<f64> {
        self.slices.iter().map(|(_, d)| *d).reduce(f64::min)
    }
}

/// The library's GCC behind our corrections; publishes to the viewer's [`Link`].
pub struct LinkEstimator {
    inner: Gcc,
    link: Arc<Link>,
    min: f64,
    max: f64,
    delivered: RateCalculator,
    base: BaseDelay,
    /// Departure instants are measured from here (arrivals are on the viewer's clock).
    epoch: Instant,
    /// Queueing delay of the newest feedback, seconds.
    queue_delay: f64,
    last_backoff: Option<Instant>,
    target: f64,
    logged: Option<Instant>,
    /// Restarts so far (for the log).
    backoffs: u64,
}

impl LinkEstimator {
    /// An estimator starting at `start` bits/s, kept within `min..=max`.
    pub fn new(link: Arc<Link>, start: f64, min: f64, max: f64) -> Self {
        let start = start.clamp(min, max);
        LinkEstimator {
            inner: Gcc::new(start, min, max),
            link,
            min,
            max,
            delivered: RateCalculator::new(DELIVERED_WINDOW),
            base: BaseDelay::default(),
            epoch: Instant::now(),
            queue_delay: 0.0,
            last_backoff: None,
            target: start,
            logged: None,
            backoffs: 0,
        }
    }

    /// Queueing delay of the newest feedback.
    pub fn queue_delay(&self) -> Duration {
        Duration::from_secs_f64(self.queue_delay.max(0.0))
    }

    fn measure(&mut self, now: Instant, reports: &[PacketReport]) {
        let mut sum = 0.0;
        let mut n = 0u32;
        for report in reports.iter().filter(|r| r.arrived) {
            self.delivered.add(now, report.size);
            let Some(arrival) = report.arrival else {
                continue;
            };
            let sent = report
                .departure
                .checked_duration_since(self.epoch)
                .unwrap_or_default();
            let delay = arrival.as_secs_f64() - sent.as_secs_f64();
            self.base.add(now, delay);
            sum += delay;
            n += 1;
        }
        if n > 0
            && let Some(base) = self.base.min()
        {
            self.queue_delay = sum / f64::from(n) - base;
        }
    }
}

impl BandwidthEstimator for LinkEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        self.inner.on_reports(now, reports);
        self.measure(now, reports);
        let delivered = self.delivered.rate_bits_per_second(now);
        let loss = self.inner.stats().packet_loss.unwrap_or(0.0);
        let queueing = self.queue_delay > QUEUE_DELAY_LIMIT.as_secs_f64();

        // 2: congestion the library's delay half does not see.
        if queueing
            && let Some(delivered) = delivered
            && self
                .last_backoff
                .is_none_or(|t| now.saturating_duration_since(t) >= BACKOFF_INTERVAL)
        {
            let restart = (delivered * BACKOFF).clamp(self.min, self.max);
            if restart < self.target {
                self.inner = Gcc::new(restart, self.min, self.max);
                self.last_backoff = Some(now);
                self.backoffs += 1;
            }
        }

        // 3: random loss inside the band, with no queue behind it, does not hold the rate down.
        let in_band = (LOSS_BAND.0..=LOSS_BAND.1).contains(&loss);
        let proposal = if in_band && !queueing {
            self.inner.delay_based_bitrate()
        } else {
            self.inner.target_bitrate()
        };
        // 1: no higher than the link has shown it carries, plus headroom (but no lower than now:
        // a content-limited sender holds its estimate).
        let ceiling = delivered.map_or(self.max, |d| {
            (d * DELIVERED_HEADROOM).max(self.target).max(self.min)
        });
        self.target = proposal.min(ceiling).clamp(self.min, self.max);

        self.link
            .set_estimate(self.target as u64, self.inner.target_bitrate() as u64);
        self.link.set_loss(loss);
        if self
            .logged
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
        {
            self.logged = Some(now);
            debug!(
                estimate_kbps = (self.target / 1000.0) as u64,
                delay_kbps = (self.inner.delay_based_bitrate() / 1000.0) as u64,
                loss_kbps = (self.inner.loss_based_bitrate() / 1000.0) as u64,
                delivered_kbps = delivered.map(|d| (d / 1000.0) as u64),
                loss_percent = (loss * 1000.0).round() / 10.0,
                queue_ms = (self.queue_delay * 1000.0) as i64,
                backoffs = self.backoffs,
                "bandwidth estimate"
            );
        }
    }

    fn target_bitrate(&self) -> f64 {
        self.target
    }

    fn stats(&self) -> EstimatorStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// A path: capacity (bits/s, a FIFO with an unbounded queue), one-way base delay, random loss.
    struct Path {
        capacity: f64,
        base: Duration,
        loss: f64,
        /// When the path is next free, on the sender's clock.
        free_at: Option<Instant>,
        seed: u64,
    }

    impl Path {
        fn new(capacity: f64, loss: f64) -> Self {
            Path {
                capacity,
                base: Duration::from_millis(20),
                loss,
                free_at: None,
                seed: 0x9e37_79b9_7f4a_7c15,
            }
        }

        fn random(&mut self) -> f64 {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            (self.seed >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Drive `estimator` for `seconds`: every `every_ms` a batch of 1200-byte packets at
    /// min(estimate, `app_limit`), through `path`, reported back at once. Returns the estimates
    /// after each second.
    fn drive(
        estimator: &mut dyn BandwidthEstimator,
        path: &mut Path,
        app_limit: f64,
        seconds: u64,
        every_ms: u64,
    ) -> Vec<f64> {
        let epoch = Instant::now();
        let mut id = 0u64;
        let mut out = Vec::new();
        let mut carry = 0.0;
        let steps_per_second = 1000 / every_ms;
        for step in 0..seconds * steps_per_second {
            let start = epoch + Duration::from_millis(step * every_ms);
            let rate = estimator.target_bitrate().min(app_limit);
            carry += rate * every_ms as f64 / 1000.0 / (1200.0 * 8.0);
            let n = carry.floor() as u64;
            carry -= n as f64;
            let mut reports = Vec::new();
            for i in 0..n {
                let departure = start + Duration::from_millis(every_ms * i / n.max(1));
                let lost = path.random() < path.loss;
                let begin = path.free_at.map_or(departure, |f| f.max(departure));
                let done = begin + Duration::from_secs_f64(1200.0 * 8.0 / path.capacity);
                path.free_at = Some(done);
                let arrival = done + path.base;
                reports.push(PacketReport {
                    ssrc: 1,
                    id,
                    rtp_sequence_number: id as u16,
                    is_twcc: true,
                    twcc_sequence_number: id as u16,
                    size: 1200,
                    arrived: !lost,
                    departure,
                    arrival: (!lost).then(|| arrival.duration_since(epoch)),
                    ecn: Ecn::default(),
                });
                id += 1;
            }
            // Feedback comes when the newest packet has arrived.
            let now = path
                .free_at
                .unwrap_or(start)
                .max(start + Duration::from_millis(every_ms))
                + path.base;
            estimator.on_reports(now, &reports);
            if (step + 1) % steps_per_second == 0 {
                out.push(estimator.target_bitrate());
            }
        }
        out
    }

    fn ours(start: f64) -> (LinkEstimator, Arc<Link>) {
        let link = Arc::new(Link::new(start as u64));
        (
            LinkEstimator::new(Arc::clone(&link), start, 150_000.0, 5_000_000.0),
            link,
        )
    }

    #[test]
    fn a_content_limited_sender_does_not_inflate_the_estimate() {
        // The sender has only 300 kbit/s to send on a 10 Mbit/s path.
        let mut gcc = Gcc::new(500_000.0, 150_000.0, 5_000_000.0);
        let library = drive(&mut gcc, &mut Path::new(10e6, 0.0), 300_000.0, 20, 50);
        let (mut estimator, link) = ours(500_000.0);
        let corrected = drive(&mut estimator, &mut Path::new(10e6, 0.0), 300_000.0, 20, 50);
        assert!(
            *library.last().unwrap() > 1_000_000.0,
            "the library's own climbs: {library:?}"
        );
        // 1.5 x 300 kbit/s is below the start: ours holds (give or take the first second's
        // measurement of what arrives).
        assert!(
            corrected.iter().all(|e| *e <= 550_000.0),
            "ours holds: {corrected:?}"
        );
        assert_eq!(link.estimate_bps(), *corrected.last().unwrap() as u64);
    }

    #[test]
    fn a_queueing_bottleneck_brings_the_estimate_down() {
        // 600 kbit/s, queue without limit (no loss: the library's loss half never acts). (On
        // this clean simulated path the library's delay half reacts too; with Chromium's
        // feedback on a real bottleneck it did not, R2 §3.5.)
        let (mut estimator, _link) = ours(1_500_000.0);
        let corrected = drive(
            &mut estimator,
            &mut Path::new(600e3, 0.0),
            f64::INFINITY,
            10,
            50,
        );
        assert!(
            corrected[2..]
                .iter()
                .all(|e| (300_000.0..=800_000.0).contains(e)),
            "ours settles near the capacity within 3 s: {corrected:?}"
        );
    }

    #[test]
    fn random_loss_inside_the_hold_band_does_not_pin_the_estimate() {
        // 4 % random loss on a fat path, starting low (as after a knock-down), feedback every
        // 500 ms (so that each batch shows the loss rate).
        let mut gcc = Gcc::new(300_000.0, 150_000.0, 5_000_000.0);
        let library = drive(&mut gcc, &mut Path::new(20e6, 0.04), f64::INFINITY, 20, 500);
        let (mut estimator, link) = ours(300_000.0);
        let corrected = drive(
            &mut estimator,
            &mut Path::new(20e6, 0.04),
            f64::INFINITY,
            20,
            500,
        );
        assert!(
            *library.last().unwrap() < 400_000.0,
            "the library's holds: {library:?}"
        );
        assert!(
            *corrected.last().unwrap() > 600_000.0,
            "ours climbs: {corrected:?}"
        );
        assert!((0.02..0.10).contains(&link.loss()), "{}", link.loss());
    }
}
