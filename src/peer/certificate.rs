//! The device's DTLS certificate: made by spyglass with a validity it chooses, and renewed before
//! it expires, on every architecture.
//!
//! webrtc checks the expiry of the certificate at every new peer connection and refuses to build
//! one with an expired certificate. `rtc` 0.21 gives a certificate it generates an expiry of
//! now + 48 h on 32-bit ARM whatever its X.509 validity says (`certificate_expiration` in
//! `rtc/src/peer_connection/certificate/mod.rs`), so a certificate made once at start would end
//! every offer after two days of uptime there, or sooner when NTP steps the clock forward. Here
//! the expiry is set by us ([`VALIDITY`]) and checked against the realtime clock before every
//! peer connection: when less than [`RENEW_BEFORE`] is left (or the clock jumped past it), a new
//! certificate is made. New sessions get the new one; running sessions keep theirs (their DTLS
//! handshake is done, and webrtc checks the expiry only when a connection is built).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtc::crypto::SignatureScheme;
use rtc::peer_connection::certificate::CertificateParams;
use tracing::info;
use webrtc::peer_connection::RTCCertificate;

/// How long a certificate is valid (what browsers use for theirs: 30 days).
pub const VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Renew when less than this is left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The X.509 validity starts this long before the certificate is made, for peers whose clocks
/// are behind ours (WebRTC peers authenticate by fingerprint, but some check the dates too).
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("crypto provider: {0}")]
    Provider(String),
    #[error("certificate parameters: {0}")]
    Params(String),
    #[error("generating the DTLS certificate: {0}")]
    Generate(String),
}

/// The current certificate, renewed on demand.
pub struct CertificateStore {
    current: Mutex<RTCCertificate>,
    renewals: AtomicU64,
}

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateStore")
            .field("renewals", &self.renewals())
            .finish_non_exhaustive()
    }
}

impl CertificateStore {
    /// A store holding a certificate made at `now`.
    pub fn new(now: SystemTime) -> Result<Self, CertificateError> {
        Ok(CertificateStore {
            current: Mutex::new(make(now)?),
            renewals: AtomicU64::new(0),
        })
    }

    /// The certificate for a peer connection built at `now`: the current one, or a new one when
    /// the current one is due for renewal.
    pub fn certificate(&self, now: SystemTime) -> Result<RTCCertificate, CertificateError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if due(current.expires, now) {
            let fresh = make(now)?;
            info!(
                valid_days = VALIDITY.as_secs() / 86400,
                expires_unix = unix_seconds(fresh.expires),
                previous_expired_unix = unix_seconds(current.expires),
                "DTLS certificate renewed"
            );
            *current = fresh;
            self.renewals.fetch_add(1, Ordering::Relaxed);
        }
        Ok(current.clone())
    }

    /// Renew now if due (called from the daemon's timer, so an offer rarely waits for it).
    pub fn renew_if_due(&self, now: SystemTime) -> Result<(), CertificateError> {
        self.certificate(now).map(drop)
    }

    /// Certificates made since the first.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }
}

/// Whether a certificate that expires at `expires` must be replaced at `now`.
pub fn due(expires: SystemTime, now: SystemTime) -> bool {
    expires
        .duration_since(now)
        .map_or(true, |left| left < RENEW_BEFORE)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// A self-signed ECDSA P-256 certificate valid from `now` - [`BACKDATE`] to `now` + [`VALIDITY`],
/// with webrtc's expiry set to the same end.
fn make(now: SystemTime) -> Result<RTCCertificate, CertificateError> {
    let provider =
        rtc::crypto::default_provider().map_err(|e| CertificateError::Provider(e.to_string()))?;
    let mut params = CertificateParams::new(vec!["spyglass".to_owned()])
        .map_err(|e| CertificateError::Params(e.to_string()))?;
    let expires = now + VALIDITY;
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = expires.into();
    let mut certificate =
        RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
            .map_err(|e| CertificateError::Generate(e.to_string()))?;
    // rtc replaces the expiry with now + 48 h on target_arch "arm"; ours holds everywhere.
    certificate.expires = expires;
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn a_certificate_lasts_its_validity_and_is_renewed_a_week_before_its_end() {
        let t0 = SystemTime::now();
        let store = CertificateStore::new(t0).unwrap();
        let first = store.certificate(t0).unwrap();
        assert_eq!(first.expires, t0 + VALIDITY);
        // Three weeks later: still the same one (webrtc would accept it; 9 days are left).
        let later = store.certificate(t0 + 21 * DAY).unwrap();
        assert_eq!(later, first);
        assert_eq!(store.renewals(), 0);
        // 23 days later: 7 days left is not enough; a new one.
        let renewed = store
            .certificate(t0 + 23 * DAY + Duration::from_secs(1))
            .unwrap();
        assert_ne!(renewed, first);
        assert_eq!(store.renewals(), 1);
        assert_eq!(
            renewed.expires,
            t0 + 23 * DAY + Duration::from_secs(1) + VALIDITY
        );
    }

    #[test]
    fn a_clock_that_jumps_past_the_expiry_gets_a_fresh_certificate() {
        let t0 = SystemTime::now();
        let store = CertificateStore::new(t0).unwrap();
        let jumped = t0 + 365 * DAY;
        let c = store.certificate(jumped).unwrap();
        assert_eq!(c.expires, jumped + VALIDITY);
        assert_eq!(store.renewals(), 1);
    }

    #[test]
    fn due_is_decided_by_the_time_left() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * DAY / 1000;
        assert!(!due(t0 + 8 * DAY, t0));
        assert!(due(t0 + 6 * DAY, t0));
        assert!(due(t0, t0 + DAY), "expired");
    }

    #[test]
    fn a_clock_before_1970_plus_a_day_still_makes_a_certificate() {
        let early = UNIX_EPOCH + Duration::from_secs(3600);
        let store = CertificateStore::new(early).unwrap();
        assert_eq!(store.certificate(early).unwrap().expires, early + VALIDITY);
    }
}
