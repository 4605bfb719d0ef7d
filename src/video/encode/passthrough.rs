//! Passthrough: H.264 that the source encoded itself (a camera that delivers H.264, `rpicam-vid
//! --codec h264`), handed on to every viewer without decoding or encoding anything.
//!
//! What it adds to the source's access units: the newest SPS and PPS are kept, and put in front
//! of an IDR that comes without them, so every keyframe starts a viewer; an IDR before any
//! parameter sets were seen is dropped (nobody could decode it). A keyframe request goes to the
//! source's [`KeyframeTrigger`] where it has one (V4L2's force-key-frame control); otherwise
//! viewers wait for the source's next IDR, and [`Passthrough::idr_period`] says how long that is.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tracing::{debug, warn};

use super::{EncodeError, EncodedFrame, Encoder};
use crate::video::h264::{NAL_IDR, NAL_PPS, NAL_SPS, nals};
use crate::video::{AccessUnit, Frame, KeyframeTrigger};

/// What the status and the log call this encoder.
pub const NAME: &str = "passthrough";

/// Parameter sets larger than this are not kept (a real SPS or PPS has tens of bytes; this bounds
/// what a broken stream can make us hold and repeat).
const MAX_PARAMETER_SET: usize = 1024;
/// Keyframe requests are passed to the source at most this often.
const MIN_TRIGGER_INTERVAL: Duration = Duration::from_millis(250);

pub struct Passthrough {
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    trigger: Option<KeyframeTrigger>,
    last_trigger: Option<Instant>,
    /// The trigger failed once: the source cannot be asked (logged once, then not tried again).
    trigger_failed: bool,
    last_idr: Option<Instant>,
    idr_period: Option<Duration>,
    seq: u64,
}

impl Passthrough {
    pub fn new(trigger: Option<KeyframeTrigger>) -> Self {
        Passthrough {
            sps: None,
            pps: None,
            trigger,
            last_trigger: None,
            trigger_failed: false,
            last_idr: None,
            idr_period: None,
            seq: 0,
        }
    }

    /// The time between the source's last two IDRs: how long a joining viewer may wait for its
    /// first picture when the source cannot be asked for one.
    pub fn idr_period(&self) -> Option<Duration> {
        self.idr_period
    }

    fn request_keyframe(&mut self) {
        let Some(trigger) = &self.trigger else { return };
        if self.trigger_failed
            || self
                .last_trigger
                .is_some_and(|t| t.elapsed() < MIN_TRIGGER_INTERVAL)
        {
            return;
        }
        self.last_trigger = Some(Instant::now());
        if let Err(err) = trigger() {
            warn!("cannot ask the source for a keyframe, viewers wait for its next one: {err}");
            self.trigger_failed = true;
        }
    }
}

fn start_code_nal(out: &mut BytesMut, nal: &[u8]) {
    out.put_slice(&[0, 0, 0, 1]);
    out.put_slice(nal);
}

impl Encoder for Passthrough {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Whether keyframe requests reach the source.
    fn keyframes_on_request(&self) -> bool {
        self.trigger.is_some() && !self.trigger_failed
    }

    fn encode(&mut self, frame: &Frame, _: bool) -> Result<Option<EncodedFrame>, EncodeError> {
        let _ = frame;
        Err(EncodeError::Failed {
            encoder: NAME,
            message: "passes the source's H.264 through; it cannot encode raw pictures".into(),
        })
    }

    fn pass(
        &mut self,
        au: &AccessUnit,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        if force_keyframe {
            self.request_keyframe();
        }
        let (mut has_sps, mut has_pps, mut has_idr, mut has_nal) = (false, false, false, false);
        for nal in nals(&au.data) {
            has_nal = true;
            match nal[0] & 0x1f {
                NAL_SPS if nal.len() <= MAX_PARAMETER_SET => {
                    has_sps = true;
                    if self.sps.as_deref() != Some(nal) {
                        self.sps = Some(Bytes::copy_from_slice(nal));
                    }
                }
                NAL_PPS if nal.len() <= MAX_PARAMETER_SET => {
                    has_pps = true;
                    if self.pps.as_deref() != Some(nal) {
                        self.pps = Some(Bytes::copy_from_slice(nal));
                    }
                }
                NAL_IDR => has_idr = true,
                _ => {}
            }
        }
        if !has_nal {
            return Ok(None);
        }
        let data = if has_idr && !(has_sps && has_pps) {
            let (Some(sps), Some(pps)) = (&self.sps, &self.pps) else {
                debug!("an IDR before any SPS/PPS: dropped, nobody could decode it");
                return Ok(None);
            };
            let mut out = BytesMut::with_capacity(au.data.len() + sps.len() + pps.len() + 8);
            if !has_sps {
                start_code_nal(&mut out, sps);
            }
            if !has_pps {
                start_code_nal(&mut out, pps);
            }
            out.put_slice(&au.data);
            out.freeze()
        } else {
            au.data.clone()
        };
        if has_idr {
            let now = Instant::now();
            if let Some(last) = self.last_idr {
                self.idr_period = Some(now - last);
            }
            self.last_idr = Some(now);
        }
        let seq = self.seq;
        self.seq += 1;
        Ok(Some(EncodedFrame::new(
            data,
            has_idr,
            seq,
            au.captured_at,
            au.instant,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::SystemTime;

    use super::*;
    use crate::video::h264::nal_types;

    fn au(bytes: &[u8]) -> AccessUnit {
        AccessUnit {
            data: Bytes::copy_from_slice(bytes),
            captured_at: SystemTime::now(),
            instant: Instant::now(),
        }
    }

    const SPS: [u8; 8] = [0, 0, 0, 1, 0x67, 0x4d, 0x40, 0x1f];
    const PPS: [u8; 6] = [0, 0, 0, 1, 0x68, 0xee];
    const IDR: [u8; 6] = [0, 0, 0, 1, 0x65, 0x88];
    const SLICE: [u8; 6] = [0, 0, 0, 1, 0x41, 0x9a];

    #[test]
    fn parameter_sets_are_put_before_an_idr_that_lacks_them() {
        let mut pass = Passthrough::new(None);
        // An IDR before any parameter set: nobody could decode it.
        assert!(pass.pass(&au(&IDR), false).unwrap().is_none());
        let first = pass
            .pass(&au(&[&SPS[..], &PPS, &IDR].concat()), false)
            .unwrap()
            .unwrap();
        assert!(first.keyframe);
        assert_eq!(nal_types(&first.data), [7, 8, 5]);
        let slice = pass.pass(&au(&SLICE), false).unwrap().unwrap();
        assert!(!slice.keyframe);
        assert_eq!(nal_types(&slice.data), [1]);
        // A bare IDR gets the cached SPS and PPS in front of it.
        let bare = pass.pass(&au(&IDR), false).unwrap().unwrap();
        assert!(bare.keyframe);
        assert_eq!(nal_types(&bare.data), [7, 8, 5]);
        assert_eq!(&bare.data[..SPS.len()], SPS);
        assert_eq!((first.seq, slice.seq, bare.seq), (0, 1, 2));
        assert!(pass.idr_period().is_some());
        // Raw pictures are not for passthrough.
        let frame = Frame {
            width: 2,
            height: 2,
            data: vec![0; 6],
            captured_at: SystemTime::now(),
            instant: Instant::now(),
        };
        assert!(pass.encode(&frame, false).is_err());
    }

    #[test]
    fn keyframe_requests_reach_the_trigger_at_a_bounded_rate() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let mut pass = Passthrough::new(Some(Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })));
        for _ in 0..10 {
            pass.pass(&au(&SLICE), true).unwrap();
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(pass.keyframes_on_request());
        // A trigger that fails is given up after its first failure.
        let mut failing = Passthrough::new(Some(Arc::new(|| {
            Err(crate::video::VideoError::Failed {
                device: "/dev/video9".into(),
                message: "no such control".into(),
            })
        })));
        failing.pass(&au(&SLICE), true).unwrap();
        assert!(!failing.keyframes_on_request());
    }

    #[test]
    fn parameter_sets_over_the_limit_are_never_kept() {
        // An SPS of MAX_PARAMETER_SET + 1 bytes (its NAL, without the start code).
        let mut big_sps = vec![0, 0, 0, 1, 0x67, 0x4d, 0x40, 0x1f];
        big_sps.resize(4 + MAX_PARAMETER_SET + 1, 0xaa);
        let mut pass = Passthrough::new(None);
        // Before any parameter set was kept, an IDR that only has an oversized SPS is dropped, and
        // the SPS is not kept for the next one.
        assert!(
            pass.pass(&au(&[&big_sps[..], &PPS, &IDR].concat()), false)
                .unwrap()
                .is_none()
        );
        assert!(
            pass.pass(&au(&[&PPS[..], &IDR].concat()), false)
                .unwrap()
                .is_none()
        );
        assert!(pass.sps.is_none());
        // A normal SPS is kept; a later oversized one passes on inside its access unit (behind
        // the kept one) but does not replace it.
        pass.pass(&au(&[&SPS[..], &PPS, &IDR].concat()), false)
            .unwrap()
            .unwrap();
        let with_big = pass
            .pass(&au(&[&big_sps[..], &PPS, &IDR].concat()), false)
            .unwrap()
            .unwrap();
        assert_eq!(nal_types(&with_big.data), [7, 7, 8, 5]);
        assert_eq!(&with_big.data[..SPS.len()], SPS);
        // (A NAL found before a four-byte start code keeps its trailing zero byte.)
        assert!(
            pass.sps
                .as_deref()
                .is_some_and(|sps| sps.starts_with(&SPS[4..]) && sps.len() <= SPS.len())
        );
        let bare = pass.pass(&au(&IDR), false).unwrap().unwrap();
        assert_eq!(nal_types(&bare.data), [7, 8, 5]);
        assert!(bare.data.len() < 2 * (SPS.len() + PPS.len() + IDR.len()));
    }
}
