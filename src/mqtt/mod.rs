//! The MQTT 5 transport: connects to the broker, keeps the connection up (reconnecting with
//! capped exponential backoff and jitter), subscribes with No-Local after every connect, and
//! moves messages in and out. It knows nothing of what the messages mean, only that some of them
//! may be dropped under load (lossy ones, which never delay the others).
//!
//! The device's client id is random and new at every connection unless one is configured: a
//! broker hands a client id to its newest connection, so a guessable one would let anyone who can
//! log in knock the device off the broker (docs/SECURITY.md).
//!
//! The broker URL's scheme chooses the transport: `mqtt://` plain TCP, `mqtts://` TLS, `ws://`
//! and `wss://` MQTT over a WebSocket (without and with TLS). The transport owns its types: the
//! URL ([`url`]) and the TLS files and configuration ([`tls`]).

pub mod tls;
pub mod url;

pub use tls::MqttTls;
pub use url::{BrokerScheme, BrokerUrl};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Filter, LastWill, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::secret::Secret;

/// Largest message we let the broker send us. Larger than any limit the application applies,
/// so that the application sees an oversized message and can answer it with an error.
const MAX_INCOMING_BYTES: u32 = 1024 * 1024;
/// Most QoS 1 publishes in flight (sent, not yet acknowledged) at once; the broker's Receive
/// Maximum lowers it further (Mosquitto's default is 20). rumqttc keeps one slot per possible
/// packet id, ~216 bytes each, written at start: without a limit that is 65536 slots, 14 MB of
/// the daemon's memory before anything happens. Publishes beyond it wait in the outbox.
const MAX_INFLIGHT: u16 = 128;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Messages the broker may deliver to us in one go, at most. The subscriptions are QoS 0 (see
/// [`drive`]), so this is no flow-control window, only the depth of the hand-over to the caller.
const EVENTS_DEPTH: usize = 256;

/// The MQTT client id to connect with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientId {
    /// Always this one: a viewer's CID, or a device whose broker binds client ids to
    /// credentials (AWS IoT Core policies, for example).
    Fixed(String),
    /// `{prefix}-` and 16 random hex digits, new at every connection.
    Random { prefix: String },
}

impl ClientId {
    /// The id for the next connection.
    pub fn next(&self) -> String {
        match self {
            ClientId::Fixed(id) => id.clone(),
            ClientId::Random { prefix } => format!("{prefix}-{:016x}", rand::random::<u64>()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: ClientId,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Retained last will: topic and payload.
    pub will: Option<(String, Vec<u8>)>,
    /// Filters subscribed (QoS 0, No-Local) after every connect.
    pub subscriptions: Vec<String>,
    /// TCP, TLS or WebSocket, and the TLS files.
    pub transport: MqttTransport,
}

/// How to reach the broker beyond host and port: what the URL's scheme says, the WebSocket path,
/// and the TLS files. The default is plain TCP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTransport {
    pub scheme: BrokerScheme,
    /// The WebSocket path (`ws://`, `wss://`); ignored otherwise.
    pub path: String,
    pub tls: MqttTls,
}

impl MqttTransport {
    pub fn new(url: &BrokerUrl, tls: &MqttTls) -> Self {
        MqttTransport {
            scheme: url.scheme,
            path: url.path.clone(),
            tls: tls.clone(),
        }
    }
}

/// What the transport reports.
#[derive(Debug, Clone)]
pub enum MqttEvent {
    /// Connected (again) and subscribed: time to (re)publish status.
    Connected,
    /// The connection dropped; reconnecting.
    Disconnected(String),
    Message {
        topic: String,
        payload: Bytes,
    },
}

/// Publishing side of the connection. Cheap to clone.
#[derive(Clone)]
pub struct Mqtt {
    client: AsyncClient,
    outbox: mpsc::Sender<(String, Vec<u8>, bool)>,
    lossy: mpsc::Sender<(String, Vec<u8>, bool)>,
}

/// Messages waiting to be handed to the MQTT client. Publishing never blocks the caller: the
/// event loop that drains the client's requests also delivers incoming messages to the caller,
/// so a caller blocked on a full request queue would deadlock with it under a flood. When this
/// many are waiting (the broker is gone or slow), further messages are dropped.
const OUTBOX_DEPTH: usize = 1024;
/// Lossy messages (error replies) waiting; more are dropped. They are handed to the client only
/// when no other message waits, and only when its request queue has room.
const LOSSY_DEPTH: usize = 64;

pub struct MqttConnection {
    pub client: Mqtt,
    pub events: mpsc::Receiver<MqttEvent>,
    task: JoinHandle<()>,
}

/// Start the connection. Nothing is sent until the event loop runs, which starts here. Fails
/// only when the TLS files cannot be loaded.
pub fn connect(settings: MqttSettings) -> anyhow::Result<MqttConnection> {
    let t = &settings.transport;
    // For WebSockets rumqttc takes host, port and path from a URL in place of the host.
    let ws_url = || {
        BrokerUrl {
            scheme: t.scheme,
            host: settings.host.clone(),
            port: settings.port,
            path: t.path.clone(),
        }
        .websocket_url()
    };
    let tls = || -> anyhow::Result<TlsConfiguration> {
        Ok(TlsConfiguration::Rustls(Arc::new(tls::client_config(
            &t.tls,
        )?)))
    };
    let (addr, transport) = match t.scheme {
        BrokerScheme::Mqtts => (settings.host.clone(), Transport::tls_with_config(tls()?)),
        BrokerScheme::Ws => (ws_url(), Transport::ws()),
        BrokerScheme::Wss => (ws_url(), Transport::wss_with_config(tls()?)),
        _ => (settings.host.clone(), Transport::tcp()),
    };
    let mut options = MqttOptions::new(settings.client_id.next(), addr, settings.port);
    options.set_transport(transport);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_start(true);
    options.set_max_packet_size(Some(MAX_INCOMING_BYTES));
    // Signaling is small messages answered at once: with Nagle's algorithm a publish can wait
    // for the broker's delayed ACK (~40 ms) before it leaves.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
    if let Some(user) = &settings.username {
        let password = settings.password.as_deref().unwrap_or_default();
        options.set_credentials(user.clone(), password);
    }
    if let Some((topic, payload)) = &settings.will {
        options.set_last_will(LastWill::new(
            topic.clone(),
            payload.clone(),
            QoS::AtLeastOnce,
            true,
            None,
        ));
    }
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (tx, events) = mpsc::channel(EVENTS_DEPTH);
    let task = tokio::spawn(drive(
        eventloop,
        client.clone(),
        settings.subscriptions.clone(),
        settings.client_id.clone(),
        tx,
    ));
    let (outbox, pending) = mpsc::channel::<(String, Vec<u8>, bool)>(OUTBOX_DEPTH);
    let (lossy, lossy_pending) = mpsc::channel::<(String, Vec<u8>, bool)>(LOSSY_DEPTH);
    tokio::spawn(hand_over(client.clone(), pending, lossy_pending));
    Ok(MqttConnection {
        client: Mqtt {
            client,
            outbox,
            lossy,
        },
        events,
        task,
    })
}

/// Hands queued messages to the MQTT client: every waiting message first, a lossy one only when
/// none waits (and dropped when the client's own queue is full), so error replies never hold up
/// answers, candidates or the status.
async fn hand_over(
    client: AsyncClient,
    mut pending: mpsc::Receiver<(String, Vec<u8>, bool)>,
    mut lossy: mpsc::Receiver<(String, Vec<u8>, bool)>,
) {
    loop {
        tokio::select! {
            biased;
            message = pending.recv() => {
                let Some((topic, payload, retain)) = message else { return };
                tracing::trace!(topic, "publishing");
                if let Err(err) = client.publish(topic.clone(), QoS::AtLeastOnce, retain, payload).await {
                    warn!(topic, "MQTT publish: {err}");
                }
            }
            message = lossy.recv() => {
                let Some((topic, payload, retain)) = message else { return };
                if client.try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload).is_err() {
                    debug!(topic, "MQTT client busy: lossy message dropped");
                }
            }
        }
    }
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    client_id: ClientId,
    tx: mpsc::Sender<MqttEvent>,
) {
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                debug!(client_id = %eventloop.options.client_id(), "MQTT connected");
                if !subscriptions.is_empty() {
                    // QoS 0: the broker delivers to us without waiting for acknowledgements (at
                    // QoS 1 Mosquitto keeps at most 20 unacknowledged, which on a slow link
                    // queues a viewer's offer behind a flood). Nothing is lost that QoS 1 would
                    // keep: the session is clean, so a broken connection loses both alike.
                    let filters = subscriptions.iter().map(|path| Filter {
                        nolocal: true,
                        ..Filter::new(path.clone(), QoS::AtMostOnce)
                    });
                    if let Err(err) = client.subscribe_many(filters).await {
                        warn!("MQTT subscribe: {err}");
                    }
                }
                // Publishes queued behind the subscribe are ordered after it by the event loop.
                if tx.send(MqttEvent::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                tracing::trace!(topic, "message received");
                let event = MqttEvent::Message {
                    topic,
                    payload: publish.payload,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                debug!("broker sent DISCONNECT: {:?}", d.reason_code);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                debug!("MQTT disconnect sent");
                // Read on until the broker closes the connection: closing it with the broker's
                // acknowledgements unread resets it, and a reset makes the broker drop what it
                // has not read yet (Mosquitto 2.0.11 lost the last of five publishes sent just
                // before a disconnect this way).
                let drain = async { while eventloop.poll().await.is_ok() {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                return;
            }
            Ok(_) => {}
            Err(err) => {
                let taken_over = matches!(
                    &err,
                    ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code: DisconnectReasonCode::SessionTakenOver,
                        ..
                    })
                );
                let message = err.to_string();
                if tx
                    .send(MqttEvent::Disconnected(message.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
                failures = failures.saturating_add(1);
                let mut delay = backoff(failures, rand::random::<f64>());
                if taken_over {
                    // Another connection took our client id: come back at once, under a new id
                    // when ours is random (so that whoever learnt it cannot do it again).
                    warn!(
                        "the broker gave this client id to another connection; reconnecting{}",
                        if matches!(client_id, ClientId::Random { .. }) {
                            " with a new one"
                        } else {
                            ""
                        }
                    );
                    delay = Duration::ZERO;
                }
                eventloop.options.set_client_id(client_id.next());
                if failures <= 3 || failures.is_multiple_of(10) {
                    warn!(
                        "MQTT connection: {message}; retrying in {} ms",
                        delay.as_millis()
                    );
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Capped exponential backoff with jitter: the `n`th consecutive failure waits between half and
/// all of `min * 2^(n-1)`, capped at `BACKOFF_MAX`. `jitter` is in [0, 1).
pub fn backoff(n: u32, jitter: f64) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let capped = exp.min(BACKOFF_MAX);
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

impl Mqtt {
    /// Publish at QoS 1, in order with earlier publishes. Never waits; drops the message (with a
    /// warning) when [`OUTBOX_DEPTH`] messages are already waiting.
    pub async fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        if let Err(mpsc::error::TrySendError::Full((topic, _, _))) =
            self.outbox.try_send((topic, payload, retain))
        {
            warn!(topic, "MQTT outbox full: message dropped");
        }
    }

    /// Publish at QoS 1 (not retained) if the connection has time for it: only when no message
    /// from [`Mqtt::publish`] waits, and dropped when [`LOSSY_DEPTH`] lossy ones already wait.
    pub fn publish_lossy(&self, topic: String, payload: Vec<u8>) {
        self.publish_when_idle(topic, payload, false);
    }

    /// [`Mqtt::publish_lossy`] for bulky messages that must not hold up signaling (Home
    /// Assistant's snapshots), retained or not.
    pub fn publish_when_idle(&self, topic: String, payload: Vec<u8>, retain: bool) {
        if self.lossy.try_send((topic, payload, retain)).is_err() {
            debug!("MQTT lossy outbox full: message dropped");
        }
    }
}

impl MqttConnection {
    /// Publish last messages, retained (e.g. the offline status), disconnect cleanly, and wait
    /// (a short while) for the event loop to send them all.
    pub async fn close(mut self, last: impl IntoIterator<Item = (String, Vec<u8>)>) {
        for (topic, payload) in last {
            // Directly, behind whatever the outbox has handed over already.
            let _ = self
                .client
                .client
                .publish(topic, QoS::AtLeastOnce, true, payload)
                .await;
        }
        let _ = self.client.client.disconnect().await;
        let wait = async {
            // Keep draining events so the event loop is not blocked on a full channel.
            while self.events.recv().await.is_some() {}
        };
        if tokio::time::timeout(Duration::from_secs(2), wait)
            .await
            .is_err()
        {
            debug!("MQTT close timed out");
        }
        self.task.abort();
        info!("MQTT disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        assert_eq!(backoff(1, 1.0), BACKOFF_MIN);
        assert_eq!(backoff(1, 0.0), BACKOFF_MIN / 2);
        assert_eq!(backoff(3, 1.0), BACKOFF_MIN * 4);
        assert_eq!(backoff(40, 1.0), BACKOFF_MAX);
        assert!(backoff(40, 0.0) >= BACKOFF_MAX / 2);
    }
}
