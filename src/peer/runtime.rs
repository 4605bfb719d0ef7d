//! How often a peer connection's driver wakes up: [`WakeRuntime`], webrtc's own runtime with the
//! driver's sleeps capped while a connection is being made or runs over a TURN relay, and
//! [`Pace`], which says when.
//!
//! Why: webrtc 0.21's driver (`webrtc-0.21.1/src/peer_connection/driver.rs`,
//! `PeerConnectionDriver::event_loop`) writes what the protocol core produced only at the top of
//! each loop iteration, and sleeps until the core's next timer in between. Three kinds of output
//! are produced after that flush and so wait for the next wake-up:
//!
//! - the DTLS ClientHello: `DtlsHandler::handle_event`
//!   (`rtc-0.21.1/src/peer_connection/handler/dtls.rs`) queues flight 1 in `connect()` when ICE
//!   selects a pair but never drains the endpoint's transmits; only `handle_timeout` does. While
//!   ICE is checking the next timer is one check interval away (200 ms by default); once it is
//!   connected the ICE agent ticks every 200 ms whatever the settings
//!   (`rtc-ice-0.21.1/src/agent/mod.rs`, `Agent::get_timeout_interval`);
//! - everything the core answers to a datagram that came through a TURN relay (DTLS flights, ICE
//!   responses, the pair selection itself): relayed reads reach the core in `poll_reads`, after
//!   `poll_writes` and `poll_events` have run (`event_loop`);
//! - every packet sent from a relayed candidate: `RTCTurnRelayer::handle_write`
//!   (`webrtc-0.21.1/src/peer_connection/transport/turn_relayer.rs`) only queues it in the TURN
//!   client, and `poll_writes` drained the relayer before the core wrote it.
//!
//! Each costs up to one timer period: ~200 ms for the ClientHello at the default check pacing,
//! ~1.4 s of DTLS handshake through a TURN relay (three stalled hops), and one media interval on
//! every relayed packet. Nothing in the crate's settings or interceptors reaches these points,
//! but the driver asks the connection's runtime for every sleep (`runtime.sleep(delay)`), and
//! the runtime is ours to give (`PeerConnectionBuilder::with_runtime`). A sleep cut short is
//! harmless: the ICE agent, DTLS and the TURN client each check their own deadlines when woken.
//!
//! The caps, from measurements (docs/PERFORMANCE.md, "Connecting"):
//! - **checking** (ICE checking → connected): 10 ms, for at most [`CHECKING_WINDOW`];
//! - **handshake** (ICE connected → DTLS done, then [`LINGER`] more for the first media and
//!   data channel messages): 1 ms, for at most [`HANDSHAKE_WINDOW`];
//! - **relayed** (the selected pair's local candidate is a relay): 5 ms for the session's life,
//!   about 200 wake-ups a second.
//!
//! The runtime also wraps the connection's UDP sockets so that a nomination that arrives before
//! the device's own check is answered at once ([`super::nomination`]), and refuses outgoing TCP
//! connections: spyglass gathers no TCP candidates, and webrtc dials every remote TCP-passive
//! candidate it is given, without a timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
};

/// Longest driver sleep while ICE checks.
pub const CHECKING_CAP: Duration = Duration::from_millis(10);
/// The checking cap holds this long at most (late candidates connect anyway; their handshake
/// gets the handshake cap).
pub const CHECKING_WINDOW: Duration = Duration::from_secs(5);
/// Longest driver sleep from ICE connected until DTLS is done, and for [`LINGER`] after.
pub const HANDSHAKE_CAP: Duration = Duration::from_millis(1);
/// The handshake cap holds this long at most.
pub const HANDSHAKE_WINDOW: Duration = Duration::from_secs(3);
/// After the connection is up, the handshake cap holds this much longer: the first media and
/// data channel messages, and the peer's last DTLS flight, leave at once.
pub const LINGER: Duration = Duration::from_millis(300);
/// Longest driver sleep while the connection sends through a TURN relay of ours.
pub const RELAYED_CAP: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Checking(Instant),
    Handshake(Instant),
    Connected(Instant),
}

#[derive(Debug)]
struct PaceState {
    phase: Phase,
    relayed: bool,
}

/// Where one peer connection stands, as far as its driver's wake-ups are concerned. Fed from the
/// connection's callbacks (which run on the driver before it computes its next sleep); read by
/// [`WakeRuntime::sleep`]. Time is passed in.
#[derive(Debug)]
pub struct Pace {
    state: Mutex<PaceState>,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            state: Mutex::new(PaceState {
                phase: Phase::Idle,
                relayed: false,
            }),
        }
    }
}

impl Pace {
    fn with<T>(&self, f: impl FnOnce(&mut PaceState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }

    /// ICE started (or restarted) checking.
    pub fn checking(&self, now: Instant) {
        self.with(|s| s.phase = Phase::Checking(now));
    }

    /// ICE selected a pair; `dtls_done` when the connection was already up (an ICE restart).
    pub fn ice_connected(&self, now: Instant, dtls_done: bool) {
        self.with(|s| {
            s.phase = if dtls_done {
                Phase::Connected(now)
            } else {
                Phase::Handshake(now)
            }
        });
    }

    /// The peer connection is connected (ICE and DTLS).
    pub fn connected(&self, now: Instant) {
        self.with(|s| s.phase = Phase::Connected(now));
    }

    /// Whether the selected pair's local candidate is a TURN relay.
    pub fn relayed(&self, relayed: bool) {
        self.with(|s| s.relayed = relayed);
    }

    /// The connection failed or closed: no more caps.
    pub fn ended(&self) {
        self.with(|s| {
            s.phase = Phase::Idle;
            s.relayed = false;
        });
    }

    /// The longest the driver may sleep now, if anything caps it.
    pub fn cap(&self, now: Instant) -> Option<Duration> {
        self.with(|s| {
            let phase = match s.phase {
                Phase::Checking(since)
                    if now.saturating_duration_since(since) < CHECKING_WINDOW =>
                {
                    Some(CHECKING_CAP)
                }
                Phase::Handshake(since)
                    if now.saturating_duration_since(since) < HANDSHAKE_WINDOW =>
                {
                    Some(HANDSHAKE_CAP)
                }
                Phase::Connected(since) if now.saturating_duration_since(since) < LINGER => {
                    Some(HANDSHAKE_CAP)
                }
                _ => None,
            };
            let relayed = s.relayed.then_some(RELAYED_CAP);
            match (phase, relayed) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        })
    }
}

/// webrtc's default runtime with the driver's sleeps capped by a [`Pace`], and outgoing TCP
/// refused. One per peer connection.
#[derive(Debug)]
pub struct WakeRuntime {
    inner: Arc<dyn Runtime>,
    pace: Arc<Pace>,
}

impl WakeRuntime {
    /// `None` when webrtc was built without a runtime (it always has tokio here).
    pub fn new(pace: Arc<Pace>) -> Option<Self> {
        Some(WakeRuntime {
            inner: webrtc::runtime::default_runtime()?,
            pace,
        })
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Runtime for WakeRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let socket = self.inner.wrap_udp_socket(socket)?;
        Ok(Arc::new(super::nomination::EarlyNomination::new(socket)))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> BoxFuture<'a, io::Result<Arc<dyn AsyncTcpStream>>> {
        Box::pin(async move {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("ICE over TCP is not used: no connection to {remote_addr}"),
            ))
        })
    }

    fn resolve_host<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let duration = match self.pace.cap(self.inner.now()) {
            Some(cap) => duration.min(cap),
            None => duration,
        };
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> BoxFuture<'static, ()> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "spyglass-wake"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn caps_follow_the_connection() {
        let t0 = Instant::now();
        let pace = Pace::default();
        assert_eq!(pace.cap(t0), None, "a new connection sleeps as webrtc says");
        pace.checking(t0);
        assert_eq!(pace.cap(t0 + 100 * MS), Some(CHECKING_CAP));
        assert_eq!(
            pace.cap(t0 + CHECKING_WINDOW),
            None,
            "checking for long: no cap"
        );
        pace.ice_connected(t0 + 200 * MS, false);
        assert_eq!(pace.cap(t0 + 210 * MS), Some(HANDSHAKE_CAP));
        assert_eq!(pace.cap(t0 + 200 * MS + HANDSHAKE_WINDOW), None);
        pace.connected(t0 + 250 * MS);
        assert_eq!(pace.cap(t0 + 250 * MS + LINGER / 2), Some(HANDSHAKE_CAP));
        assert_eq!(
            pace.cap(t0 + 250 * MS + LINGER),
            None,
            "direct and settled: no cap"
        );
    }

    #[test]
    fn a_relayed_connection_stays_capped_until_it_ends() {
        let t0 = Instant::now();
        let pace = Pace::default();
        pace.checking(t0);
        pace.ice_connected(t0, false);
        pace.relayed(true);
        assert_eq!(
            pace.cap(t0 + MS),
            Some(HANDSHAKE_CAP),
            "the smaller cap wins"
        );
        pace.connected(t0 + 10 * MS);
        assert_eq!(pace.cap(t0 + Duration::from_secs(3600)), Some(RELAYED_CAP));
        pace.ended();
        assert_eq!(pace.cap(t0 + Duration::from_secs(3600)), None);
    }

    #[tokio::test]
    async fn outgoing_tcp_is_refused() {
        let runtime = WakeRuntime::new(Arc::default()).unwrap();
        let refused = runtime
            .connect_tcp(SocketAddr::from(([127, 0, 0, 1], 9)))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn an_ice_restart_of_a_connected_session_only_lingers() {
        let t0 = Instant::now();
        let pace = Pace::default();
        pace.checking(t0);
        pace.ice_connected(t0 + 50 * MS, true);
        assert_eq!(pace.cap(t0 + 60 * MS), Some(HANDSHAKE_CAP));
        assert_eq!(pace.cap(t0 + 50 * MS + LINGER), None);
    }
}
