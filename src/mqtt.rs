//! The MQTT 5 transport: connects to the broker, keeps the connection up (reconnecting with
//! capped exponential backoff and jitter), subscribes with No-Local after every connect, and
//! moves messages in and out. It knows nothing of what the messages mean.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Largest message we let the broker send us. Larger than any limit the application applies,
/// so that the application sees an oversized message and can answer it with an error.
const MAX_INCOMING_BYTES: u32 = 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Retained last will: topic and payload.
    pub will: Option<(String, Vec<u8>)>,
    /// Filters subscribed (QoS 1, No-Local) after every connect.
    pub subscriptions: Vec<String>,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("subscriptions", &self.subscriptions)
            .finish()
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
}

/// Messages waiting to be handed to the MQTT client. Publishing never blocks the caller: the
/// event loop that drains the client's requests also delivers incoming messages to the caller,
/// so a caller blocked on a full request queue would deadlock with it under a flood. When this
/// many are waiting (the broker is gone or slow), further messages are dropped.
const OUTBOX_DEPTH: usize = 1024;

pub struct MqttConnection {
    pub client: Mqtt,
    pub events: mpsc::Receiver<MqttEvent>,
    task: JoinHandle<()>,
}

/// Start the connection. Nothing is sent until the event loop runs, which starts here.
pub fn connect(settings: MqttSettings) -> MqttConnection {
    let mut options = MqttOptions::new(
        settings.client_id.clone(),
        settings.host.clone(),
        settings.port,
    );
    options.set_keep_alive(Duration::from_secs(15));
    options.set_clean_start(true);
    options.set_max_packet_size(Some(MAX_INCOMING_BYTES));
    if let Some(user) = &settings.username {
        options.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
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
    let (tx, events) = mpsc::channel(256);
    let task = tokio::spawn(drive(
        eventloop,
        client.clone(),
        settings.subscriptions.clone(),
        tx,
    ));
    let (outbox, mut pending) = mpsc::channel::<(String, Vec<u8>, bool)>(OUTBOX_DEPTH);
    let sender = client.clone();
    tokio::spawn(async move {
        while let Some((topic, payload, retain)) = pending.recv().await {
            if let Err(err) = sender
                .publish(topic.clone(), QoS::AtLeastOnce, retain, payload)
                .await
            {
                warn!(topic, "MQTT publish: {err}");
            }
        }
    });
    MqttConnection {
        client: Mqtt { client, outbox },
        events,
        task,
    }
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    tx: mpsc::Sender<MqttEvent>,
) {
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                if !subscriptions.is_empty() {
                    let filters = subscriptions.iter().map(|path| Filter {
                        nolocal: true,
                        ..Filter::new(path.clone(), QoS::AtLeastOnce)
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
                return;
            }
            Ok(_) => {}
            Err(err) => {
                let message = err.to_string();
                if tx
                    .send(MqttEvent::Disconnected(message.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
                failures = failures.saturating_add(1);
                let delay = backoff(failures, rand::random::<f64>());
                if failures <= 3 || failures % 10 == 0 {
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
}

impl MqttConnection {
    /// Publish a last message (e.g. the offline status), disconnect cleanly, and wait (a short
    /// while) for the event loop to send both.
    pub async fn close(mut self, last: Option<(String, Vec<u8>)>) {
        if let Some((topic, payload)) = last {
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
