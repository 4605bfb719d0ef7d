//! Home Assistant (`--homeassistant`): the device announces itself through MQTT discovery
//! (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery) as one device with
//!
//! - a camera (`camera.mqtt`) whose image topic, `{uid}/snapshot`, carries JPEG snapshots
//!   (retained, raw bytes), published every `--homeassistant-interval` and on request;
//! - a button (`button.mqtt`) that asks for a snapshot on `{uid}/snapshot/request`;
//! - two sensors read from the status: connected viewers, and the video state.
//!
//! Every entity is available while the device's retained status says `"online":true`, and
//! unavailable from its last will (`{"online":false}`) on. The discovery entries are retained and
//! stay when the daemon stops (Home Assistant keeps the device, shown unavailable); `spyglass
//! homeassistant --remove` deletes them ([`remove`]), which the package does on removal.
//!
//! Snapshots come from the shared pipeline: its newest frame while anyone watches; while nobody
//! does, a snapshot starts the camera (and the encoder) for at most [`START_TIMEOUT`] and takes a
//! frame once the picture has settled. With `--homeassistant` off none of this exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::VERSION;
use crate::config::DaemonConfig;
use crate::mqtt::{self, Mqtt, MqttEvent, MqttSettings};
use crate::rate::TokenBucket;
use crate::video::Frame;
use crate::video::hub::Hub;
use crate::video::snapshot;

/// A snapshot while nobody watches starts the camera for at most this long.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and takes the first frame this long after the first one (exposure settles).
pub const SETTLE: Duration = Duration::from_millis(700);
/// Snapshots asked for on the request topic: one per this long on average...
pub const REQUEST_INTERVAL: Duration = Duration::from_secs(5);
/// ...and this many at once after a quiet spell. More requests are ignored.
pub const REQUEST_BURST: u32 = 2;
/// Requests waiting to be served at most; more are ignored.
pub const REQUEST_QUEUE: usize = 4;
/// JPEG quality of the snapshots.
const QUALITY: i64 = snapshot::DEFAULT_QUALITY as i64;

/// The device's discovery entries and topics.
#[derive(Debug, Clone)]
pub struct HomeAssistant {
    /// The discovery prefix (`homeassistant`).
    pub prefix: String,
    /// The device id (the topics' first levels).
    pub uid: String,
    /// The discovery node id: the device id with every character outside `[a-zA-Z0-9_-]`
    /// replaced by `_`.
    pub node: String,
    /// Time between snapshots; zero: only on request.
    pub interval: Duration,
    /// The viewer page's URL, when there is a page.
    pub page_url: Option<String>,
    /// What the camera is, for the device's model.
    pub source: String,
}

impl HomeAssistant {
    pub fn new(cfg: &DaemonConfig) -> Self {
        let page_url = cfg.http.map(|addr| {
            let host = if addr.ip().is_unspecified() {
                gethostname::gethostname().to_string_lossy().into_owned()
            } else {
                match addr.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                }
            };
            let mut url = format!("http://{host}:{}/", addr.port());
            if let Ok(mut parsed) = url::Url::parse(&url) {
                parsed.query_pairs_mut().append_pair("id", &cfg.id);
                url = parsed.to_string();
            }
            url
        });
        HomeAssistant {
            prefix: cfg.homeassistant_prefix.clone(),
            uid: cfg.id.clone(),
            node: node_id(&cfg.id),
            interval: Duration::from_secs(cfg.homeassistant_interval.into()),
            page_url,
            source: cfg.video.source.to_string(),
        }
    }

    /// `{uid}/snapshot`: the camera's image topic.
    pub fn image_topic(&self) -> String {
        format!("{}/snapshot", self.uid)
    }

    /// `{uid}/snapshot/request`: any message there asks for a snapshot.
    pub fn request_topic(&self) -> String {
        format!("{}/snapshot/request", self.uid)
    }

    fn config_topic(&self, component: &str, object: Option<&str>) -> String {
        match object {
            Some(object) => format!("{}/{component}/{}/{object}/config", self.prefix, self.node),
            None => format!("{}/{component}/{}/config", self.prefix, self.node),
        }
    }

    /// Every discovery topic of the device.
    pub fn config_topics(&self) -> Vec<String> {
        vec![
            self.config_topic("camera", None),
            self.config_topic("button", Some("snapshot")),
            self.config_topic("sensor", Some("viewers")),
            self.config_topic("sensor", Some("video")),
        ]
    }

    /// The discovery messages (retained), topic and JSON payload.
    pub fn discovery(&self) -> Vec<(String, Vec<u8>)> {
        let status = format!("{}/status", self.uid);
        let availability = json!([{
            "topic": status,
            "value_template": "{{ 'online' if value_json.online else 'offline' }}",
        }]);
        let mut device = json!({
            "identifiers": [format!("spyglass_{}", self.node)],
            "name": self.uid,
            "manufacturer": "spyglass",
            "model": format!("spyglass camera ({})", self.source),
            "sw_version": VERSION,
        });
        if let Some(url) = &self.page_url {
            device["configuration_url"] = Value::String(url.clone());
        }
        let origin = json!({ "name": "spyglass", "sw_version": VERSION });
        let entity = |object: &str, fields: Value| {
            let mut config = json!({
                "unique_id": format!("spyglass_{}_{object}", self.node),
                "availability": availability,
                "device": device,
                "origin": origin,
            });
            if let (Some(config), Value::Object(fields)) = (config.as_object_mut(), fields) {
                config.extend(fields);
            }
            serde_json::to_vec(&config).unwrap_or_default()
        };
        let topics = self.config_topics();
        vec![
            (
                topics[0].clone(),
                entity(
                    "camera",
                    json!({ "name": null, "topic": self.image_topic(), "icon": "mdi:cctv" }),
                ),
            ),
            (
                topics[1].clone(),
                entity(
                    "snapshot",
                    json!({
                        "name": "Snapshot",
                        "command_topic": self.request_topic(),
                        "payload_press": "PRESS",
                        "icon": "mdi:camera",
                    }),
                ),
            ),
            (
                topics[2].clone(),
                entity(
                    "viewers",
                    json!({
                        "name": "Viewers",
                        "state_topic": status,
                        "value_template": "{{ value_json.viewers | default(0) }}",
                        "state_class": "measurement",
                        "icon": "mdi:eye",
                    }),
                ),
            ),
            (
                topics[3].clone(),
                entity(
                    "video",
                    json!({
                        "name": "Video",
                        "state_topic": status,
                        "value_template":
                            "{{ value_json.video.state if value_json.video is defined else 'idle' }}",
                        "device_class": "enum",
                        "options": ["idle", "live", "lost"],
                        "entity_category": "diagnostic",
                    }),
                ),
            ),
        ]
    }
}

/// A discovery node id from a device id: `[a-zA-Z0-9_-]` kept, anything else `_`.
pub fn node_id(uid: &str) -> String {
    uid.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Publish snapshots on `ha.image_topic()`: one at start, then every interval and on each
/// request (within the request budget), until `requests` closes.
pub async fn snapshots(ha: HomeAssistant, hub: Hub, mqtt: Mqtt, mut requests: mpsc::Receiver<()>) {
    let topic = ha.image_topic();
    let mut budget = TokenBucket::new(1.0 / REQUEST_INTERVAL.as_secs_f64(), REQUEST_BURST);
    let mut next = (!ha.interval.is_zero()).then(tokio::time::Instant::now);
    loop {
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = due => {
                next = Some(tokio::time::Instant::now() + ha.interval);
            }
            request = requests.recv() => match request {
                Some(()) => {
                    if !budget.try_take(Instant::now()) {
                        debug!("snapshot request ignored: too many");
                        continue;
                    }
                }
                None => return,
            },
        }
        match take(&hub).await {
            Ok((jpeg, frame)) => {
                debug!(
                    bytes = jpeg.len(),
                    width = frame.width,
                    height = frame.height,
                    "snapshot for Home Assistant"
                );
                mqtt.publish_when_idle(topic.clone(), jpeg, true);
            }
            Err(err) => warn!("snapshot for Home Assistant: {err}"),
        }
    }
}

/// A JPEG of the newest frame; while nobody watches, the camera runs for it briefly.
async fn take(hub: &Hub) -> Result<(Vec<u8>, Arc<Frame>), String> {
    let frame = match hub.latest_frame() {
        Some(frame) => frame,
        None => {
            let mut feed = hub.subscribe();
            let deadline = tokio::time::Instant::now() + START_TIMEOUT;
            let mut first: Option<Instant> = None;
            loop {
                match tokio::time::timeout_at(deadline, feed.recv()).await {
                    Ok(Some(_)) => {
                        let now = Instant::now();
                        if now.saturating_duration_since(*first.get_or_insert(now)) >= SETTLE {
                            break;
                        }
                    }
                    Ok(None) => return Err("the video pipeline has stopped".into()),
                    Err(_) => break,
                }
            }
            let frame = hub.latest_frame();
            drop(feed);
            frame.ok_or_else(|| {
                format!(
                    "no frame within {} s (the camera did not start)",
                    START_TIMEOUT.as_secs()
                )
            })?
        }
    };
    let Ok(_turn) = hub.request_workers().acquire_owned().await else {
        return Err("request workers gone".into());
    };
    tokio::task::spawn_blocking(move || {
        snapshot::jpeg(&frame, QUALITY)
            .map(|jpeg| (jpeg, frame))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("snapshot task: {e}"))?
}

/// `spyglass homeassistant --remove`: empty retained messages on every discovery topic and on
/// the image topic, so that Home Assistant forgets the device and the broker the last snapshot.
/// Returns what it did.
pub async fn remove(cfg: DaemonConfig) -> anyhow::Result<String> {
    let ha = HomeAssistant::new(&cfg);
    let mut conn = mqtt::connect(MqttSettings {
        host: cfg.mqtt.host.clone(),
        port: cfg.mqtt.port,
        client_id: match &cfg.mqtt_client_id {
            Some(id) => mqtt::ClientId::Fixed(format!("{id}-ha")),
            None => mqtt::ClientId::Random {
                prefix: format!("spyglass-{}-ha", cfg.id.replace('/', "-")),
            },
        },
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        will: None,
        subscriptions: vec![],
        transport: mqtt::MqttTransport::new(&cfg.mqtt, &cfg.tls),
    })?;
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match conn.events.recv().await {
                Some(MqttEvent::Connected) => return Ok(()),
                Some(MqttEvent::Disconnected(why)) => warn!("broker: {why}"),
                Some(_) => {}
                None => return Err(anyhow::anyhow!("the MQTT connection ended")),
            }
        }
    })
    .await;
    match connected {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("no connection to the broker {} within 10 s", cfg.mqtt),
    }
    let mut topics = ha.config_topics();
    topics.push(ha.image_topic());
    let done = format!(
        "removed the Home Assistant entries of {} ({})",
        ha.uid,
        topics.join(", ")
    );
    conn.close(topics.into_iter().map(|t| (t, Vec::new())))
        .await;
    info!("{done}");
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha() -> HomeAssistant {
        HomeAssistant {
            prefix: "homeassistant".into(),
            uid: "garage/cam 1".into(),
            node: node_id("garage/cam 1"),
            interval: Duration::from_secs(60),
            page_url: Some("http://cam:8080/?id=garage%2Fcam+1".into()),
            source: "test".into(),
        }
    }

    #[test]
    fn discovery_names_every_entity_under_the_node() {
        let ha = ha();
        assert_eq!(ha.node, "garage_cam_1");
        let messages = ha.discovery();
        let topics: Vec<_> = messages.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/camera/garage_cam_1/config",
                "homeassistant/button/garage_cam_1/snapshot/config",
                "homeassistant/sensor/garage_cam_1/viewers/config",
                "homeassistant/sensor/garage_cam_1/video/config",
            ]
        );
        let camera: Value = serde_json::from_slice(&messages[0].1).unwrap();
        assert_eq!(camera["topic"], "garage/cam 1/snapshot");
        assert_eq!(camera["availability"][0]["topic"], "garage/cam 1/status");
        assert_eq!(
            camera["device"]["configuration_url"],
            "http://cam:8080/?id=garage%2Fcam+1"
        );
        let button: Value = serde_json::from_slice(&messages[1].1).unwrap();
        assert_eq!(button["command_topic"], "garage/cam 1/snapshot/request");
        let ids: Vec<_> = messages
            .iter()
            .map(|(_, p)| serde_json::from_slice::<Value>(p).unwrap()["unique_id"].clone())
            .collect();
        assert_eq!(ids.len(), 4);
        assert!(
            ids.iter()
                .all(|id| id.as_str().unwrap().starts_with("spyglass_garage_cam_1_"))
        );
    }
}
