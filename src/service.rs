//! systemd integration (`Type=notify`): `READY=1` once the device is online, `WATCHDOG=1` pings
//! while the media path is healthy, `STOPPING=1` on the way out. Without `NOTIFY_SOCKET` (not
//! under systemd) every call does nothing.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// The hub thread beats at least every second; a heartbeat older than this means the media path
/// hangs (a source open or an encoder call that never returns), and the watchdog goes unfed.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(5);

/// Talks to the service manager.
pub struct Notifier {
    /// `WATCHDOG_USEC` for this process, when systemd's watchdog is on.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    ready: bool,
    starved: bool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: None,
            ready: false,
            starved: false,
        }
    }

    /// The device is online (first broker connection, status published). Sent once.
    pub fn ready(&mut self) {
        if !self.ready {
            self.ready = true;
            send(&[NotifyState::Ready]);
        }
    }

    pub fn status(&self, text: &str) {
        send(&[NotifyState::Status(text)]);
    }

    /// Called often (every daemon tick, 500 ms): pings the watchdog every quarter of its period
    /// (or every tick, if that is shorter) while the
    /// media path's heartbeat is fresh. The daemon loop itself must be running to call this, so a
    /// stuck loop starves the watchdog too.
    pub fn tick(&mut self, now: Instant, heartbeat_age: Duration) {
        let Some(period) = self.watchdog else { return };
        if heartbeat_age > HEARTBEAT_STALE {
            if !self.starved {
                self.starved = true;
                warn!(
                    ms = heartbeat_age.as_millis() as u64,
                    "the video pipeline stopped beating; no more watchdog pings"
                );
            }
            return;
        }
        self.starved = false;
        if self
            .last_ping
            .is_none_or(|last| now.duration_since(last) >= period / 4)
        {
            self.last_ping = Some(now);
            send(&[NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify: {e}");
    }
}
