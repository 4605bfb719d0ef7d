//! What spyglass writes to its log: the user's filter (`--log` or `RUST_LOG`, default `info`),
//! plus directives that keep the WebRTC stack's known noise out of a healthy session's log.
//!
//! Healthy sessions log nothing above INFO. The stack does, and none of these lines needs the
//! user's attention:
//!
//! | target | level | line | why |
//! |---|---|---|---|
//! | `rtc_ice::agent` | WARN | `pingAllCandidates called with no candidate pairs` | every check tick until the viewer's first usable candidate (hundreds per session); also "remote mDNS candidate added, but mDNS is disabled" and other peer-caused lines |
//! | `rtc_dtls::config` | WARN | `conn.remote_addr is empty, please set explicitly server_name` | every session, as the DTLS client; no setting reaches it |
//! | `webrtc::peer_connection::driver` | WARN | `None tcp/udp socket, drop the packet` | at the close of relayed sessions (its real failures are ERRORs) |
//! | `rtc_sctp::endpoint` | WARN | `refusing first packet due to empty server_config` | sessions with a data channel: the device, as the DTLS client, opens the SCTP association itself and refuses the viewer's simultaneous INIT; the association is made either way |
//! | `webrtc::peer_connection::transport::turn_relayer` | ERROR | `TURN permission request failed: CreatePermission error response (error 403: Forbidden IP)` | once per relay and private address of the viewer when the TURN server denies private peers (coturn's recommended hardening); the session works through the other addresses |
//!
//! The first four are raised to ERROR by target. The TURN line is dropped by its text only, so
//! that the same target's real failures (an allocation refused) stay visible; the device tests
//! its TURN servers at start-up anyway ([`crate::peer::relay`]). A user filter that names one of
//! these targets keeps its own level for it.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// Targets whose warnings are known noise: raised to ERROR unless the user's filter names them.
pub const QUIET_TARGETS: [&str; 4] = [
    "rtc_ice::agent",
    "rtc_dtls::config",
    "webrtc::peer_connection::driver",
    "rtc_sctp::endpoint",
];

/// Where webrtc logs TURN permission failures.
pub const TURN_RELAYER_TARGET: &str = "webrtc::peer_connection::transport::turn_relayer";

/// The text of a TURN server's refusal to relay to an address it forbids.
const PERMISSION_FORBIDDEN: &str = "CreatePermission error response (error 403";

/// The filter directives for `user` (the user's own, or `None` for the default `info`).
pub fn directives(user: Option<&str>) -> String {
    let user = user.map(str::trim).filter(|u| !u.is_empty());
    let mut out = user.unwrap_or("info").to_owned();
    for target in QUIET_TARGETS {
        if !user.is_some_and(|u| u.contains(target)) {
            out.push_str(&format!(",{target}=error"));
        }
    }
    out
}

/// Drops one message: the TURN server's 403 to a CreatePermission (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietTurnPermissions;

/// An event's message and, for a `log` record (which reaches tracing through `tracing-log`
/// with the target "log"), its own target.
#[derive(Default)]
struct MessageText {
    message: String,
    log_target: Option<String>,
}

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.log_target = Some(format!("{value:?}")),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "log.target" => self.log_target = Some(value.to_owned()),
            _ => {}
        }
    }
}

impl QuietTurnPermissions {
    /// Whether `target`'s event with `message` is let through.
    pub fn admits(target: &str, message: &str) -> bool {
        !(target == TURN_RELAYER_TARGET && message.contains(PERMISSION_FORBIDDEN))
    }
}

impl<S: Subscriber> Layer<S> for QuietTurnPermissions {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let target = event.metadata().target();
        if target != TURN_RELAYER_TARGET && target != "log" {
            return true;
        }
        let mut text = MessageText::default();
        event.record(&mut text);
        let target = text.log_target.as_deref().unwrap_or(target);
        Self::admits(target, &text.message)
    }
}

/// Install the process's logger: `user` directives (or `info`) plus the quiet ones, to stderr
/// (coloured only on a terminal, unless NO_COLOR is set).
pub fn init(user: Option<&str>) {
    let filter = EnvFilter::new(directives(user));
    let quiet_turn = !user.is_some_and(|u| u.contains(TURN_RELAYER_TARGET));
    tracing_subscriber::registry()
        .with(filter)
        .with(quiet_turn.then_some(QuietTurnPermissions))
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only on a terminal (not in journald or a log file), and not with
                // NO_COLOR set.
                .with_ansi(
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                ),
        )
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_raised_unless_the_user_names_it() {
        assert_eq!(
            directives(None),
            "info,rtc_ice::agent=error,rtc_dtls::config=error,webrtc::peer_connection::driver=error,\
             rtc_sctp::endpoint=error"
        );
        assert_eq!(
            directives(Some("debug,rtc_ice::agent=trace")),
            "debug,rtc_ice::agent=trace,rtc_dtls::config=error,webrtc::peer_connection::driver=error,\
             rtc_sctp::endpoint=error"
        );
        assert!(directives(Some("  ")).starts_with("info,"));
    }

    #[test]
    fn only_the_permission_refusal_is_dropped() {
        let forbidden = "TURN permission request failed: CreatePermission error response (error 403: Forbidden IP)";
        assert!(!QuietTurnPermissions::admits(
            TURN_RELAYER_TARGET,
            forbidden
        ));
        assert!(QuietTurnPermissions::admits("spyglass::peer", forbidden));
        assert!(QuietTurnPermissions::admits(
            TURN_RELAYER_TARGET,
            "TURN allocation failed from 10.0.0.5:40000 to 10.0.0.2:3478: Allocate error response (error 401: Unauthorized)"
        ));
    }
}
