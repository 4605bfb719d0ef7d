//! What one viewer's transport knows about its link, shared without locks between the
//! interceptors of its peer connection (which write it: [`super::estimate`], [`super::pacer`],
//! [`super::retransmit`]) and the application (which reads it: the session's send loop, the
//! shared encoder's rate control, the data channel's stats).
//!
//! Every figure is a plain atomic: the interceptors run inside webrtc's driver task, the readers
//! elsewhere, and nothing here is worth a lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The viewer's link as its transport sees it. One per peer connection, behind an `Arc`.
#[derive(Debug)]
pub struct Link {
    /// The bandwidth estimate (after our corrections, see [`super::estimate`]), bits/s.
    estimate_bps: AtomicU64,
    /// The library estimator's own figure before our corrections, bits/s (for logs and stats).
    raw_estimate_bps: AtomicU64,
    /// Fraction of packets the viewer reported lost, in parts per million (smoothed).
    loss_ppm: AtomicU32,
    /// Round-trip time from RTCP sender/receiver reports, microseconds; 0 until measured.
    rtt_us: AtomicU32,
    /// Bits waiting in the pacer, and the rate it releases them at (bits/s).
    pacer_queued_bits: AtomicU64,
    pacing_bps: AtomicU64,
    /// Packets the pacer refused because its queue was full.
    pacer_dropped: AtomicU64,
    /// Payload types the interceptors bound for the video stream (0: not bound yet), and the RTX
    /// payload type (0: no RTX negotiated).
    video_payload_type: AtomicU32,
    rtx_payload_type: AtomicU32,
    /// Retransmission figures (see [`super::retransmit`]).
    pub nacked_packets: AtomicU64,
    pub retransmitted_packets: AtomicU64,
    pub retransmitted_bytes: AtomicU64,
    /// Requested packets not resent, by reason.
    pub refused_unknown: AtomicU64,
    pub refused_too_old: AtomicU64,
    pub refused_too_soon: AtomicU64,
    pub refused_over_count: AtomicU64,
    pub refused_over_budget: AtomicU64,
    /// Losses that retransmission cannot repair (the packet is gone, too old, or was resent as
    /// often as allowed): the viewer needs a keyframe instead.
    pub unrepairable: AtomicU64,
    unrepairable_pending: AtomicBool,
    unrepairable_notify: Notify,
}

impl Link {
    /// A link whose estimate starts at `start_bps`.
    pub fn new(start_bps: u64) -> Self {
        Link {
            estimate_bps: AtomicU64::new(start_bps),
            raw_estimate_bps: AtomicU64::new(start_bps),
            loss_ppm: AtomicU32::new(0),
            rtt_us: AtomicU32::new(0),
            pacer_queued_bits: AtomicU64::new(0),
            pacing_bps: AtomicU64::new(start_bps),
            pacer_dropped: AtomicU64::new(0),
            video_payload_type: AtomicU32::new(0),
            rtx_payload_type: AtomicU32::new(0),
            nacked_packets: AtomicU64::new(0),
            retransmitted_packets: AtomicU64::new(0),
            retransmitted_bytes: AtomicU64::new(0),
            refused_unknown: AtomicU64::new(0),
            refused_too_old: AtomicU64::new(0),
            refused_too_soon: AtomicU64::new(0),
            refused_over_count: AtomicU64::new(0),
            refused_over_budget: AtomicU64::new(0),
            unrepairable: AtomicU64::new(0),
            unrepairable_pending: AtomicBool::new(false),
            unrepairable_notify: Notify::new(),
        }
    }

    /// The bandwidth estimate, bits/s.
    pub fn estimate_bps(&self) -> u64 {
        self.estimate_bps.load(Ordering::Relaxed)
    }

    /// The library estimator's figure before our corrections, bits/s.
    pub fn raw_estimate_bps(&self) -> u64 {
        self.raw_estimate_bps.load(Ordering::Relaxed)
    }

    pub(crate) fn set_estimate(&self, corrected_bps: u64, raw_bps: u64) {
        self.estimate_bps.store(corrected_bps, Ordering::Relaxed);
        self.raw_estimate_bps.store(raw_bps, Ordering::Relaxed);
    }

    /// Smoothed fraction of packets lost, 0..=1.
    pub fn loss(&self) -> f64 {
        f64::from(self.loss_ppm.load(Ordering::Relaxed)) / 1e6
    }

    pub(crate) fn set_loss(&self, fraction: f64) {
        let ppm = (fraction.clamp(0.0, 1.0) * 1e6).round() as u32;
        self.loss_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Round-trip time, once measured.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        }
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        let us = rtt.as_micros().clamp(1, u128::from(u32::MAX)) as u32;
        self.rtt_us.store(us, Ordering::Relaxed);
    }

    pub(crate) fn set_pacer(&self, queued_bits: u64, pacing_bps: u64, dropped: u64) {
        self.pacer_queued_bits.store(queued_bits, Ordering::Relaxed);
        self.pacing_bps.store(pacing_bps, Ordering::Relaxed);
        self.pacer_dropped.store(dropped, Ordering::Relaxed);
    }

    /// How long the pacer needs to send what it holds.
    pub fn pacer_backlog(&self) -> Duration {
        let bits = self.pacer_queued_bits.load(Ordering::Relaxed);
        let rate = self.pacing_bps.load(Ordering::Relaxed).max(1);
        Duration::from_secs_f64(bits as f64 / rate as f64)
    }

    /// Packets the pacer refused because its queue was full.
    pub fn pacer_dropped(&self) -> u64 {
        self.pacer_dropped.load(Ordering::Relaxed)
    }

    /// The payload type the interceptors bound for video, once the answer is set.
    pub fn video_payload_type(&self) -> Option<u8> {
        match self.video_payload_type.load(Ordering::Relaxed) {
            0 => None,
            pt => Some(pt as u8),
        }
    }

    /// The RTX payload type, when the viewer negotiated RTX.
    pub fn rtx_payload_type(&self) -> Option<u8> {
        match self.rtx_payload_type.load(Ordering::Relaxed) {
            0 => None,
            pt => Some(pt as u8),
        }
    }

    pub(crate) fn bound_video(&self, payload_type: u8, rtx: Option<u8>) {
        // Payload types are 7 bits; 0 (PCMU) is never a video type, so it can mean "none".
        self.video_payload_type
            .store(u32::from(payload_type), Ordering::Relaxed);
        self.rtx_payload_type
            .store(rtx.map_or(0, u32::from), Ordering::Relaxed);
    }

    /// Retransmission cannot repair what the viewer lost: it needs a keyframe.
    pub(crate) fn loss_unrepairable(&self) {
        self.unrepairable.fetch_add(1, Ordering::Relaxed);
        self.unrepairable_pending.store(true, Ordering::Release);
        self.unrepairable_notify.notify_one();
    }

    /// Wait until a loss is found unrepairable (returns at once if one is pending).
    pub async fn unrepairable_loss(&self) {
        loop {
            if self.unrepairable_pending.swap(false, Ordering::AcqRel) {
                return;
            }
            self.unrepairable_notify.notified().await;
        }
    }
}
