//! The viewer's side of the `spyglass` data channel: send a request, wait for the reply with
//! the same `id`, and put snapshot chunks back together (checking size and CRC-32). Used by the
//! integration tests through [`super::ViewOptions::data_channel`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::BytesMut;
use serde_json::Value;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::PeerConnection;

/// The viewer's `spyglass` channel and its peer connection (to open more channels with).
pub struct DataLink {
    pub channel: Arc<dyn DataChannel>,
    pub pc: Arc<dyn PeerConnection>,
}

/// A snapshot as received: the header message and the reassembled, checked JPEG.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub header: Value,
    pub jpeg: Vec<u8>,
}

/// Requests over an open `spyglass` channel.
pub struct DataClient {
    pub link: DataLink,
    next_id: u64,
    /// Messages that arrived while waiting for a reply (stats pushes, for example).
    unsolicited: VecDeque<Value>,
}

impl DataClient {
    /// Wait until the channel is open.
    pub async fn open(link: DataLink, timeout: Duration) -> Result<DataClient, String> {
        let wait = async {
            loop {
                match link.channel.poll().await {
                    Some(DataChannelEvent::OnOpen) => return Ok(()),
                    Some(DataChannelEvent::OnClose) | None => {
                        return Err("data channel closed before it opened".to_string());
                    }
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| format!("data channel not open within {timeout:?}"))??;
        Ok(DataClient {
            link,
            next_id: 1,
            unsolicited: VecDeque::new(),
        })
    }

    /// Send raw text (no `id` is added).
    pub async fn send_raw(&self, text: &str) -> Result<(), String> {
        self.link
            .channel
            .send_text(text)
            .await
            .map_err(|e| format!("sending on the data channel: {e}"))
    }

    /// Send raw binary.
    pub async fn send_binary(&self, data: &[u8]) -> Result<(), String> {
        self.link
            .channel
            .send(BytesMut::from(data))
            .await
            .map_err(|e| format!("sending on the data channel: {e}"))
    }

    /// The next message from the device: one that arrived earlier unasked for, or a new one.
    pub async fn next(&mut self, timeout: Duration) -> Result<Value, String> {
        if let Some(v) = self.unsolicited.pop_front() {
            return Ok(v);
        }
        self.receive(timeout).await
    }

    async fn receive(&mut self, timeout: Duration) -> Result<Value, String> {
        let wait = async {
            loop {
                match self.link.channel.poll().await {
                    Some(DataChannelEvent::OnMessage(m)) => {
                        return serde_json::from_slice::<Value>(&m.data)
                            .map_err(|e| format!("device sent non-JSON: {e}"));
                    }
                    Some(DataChannelEvent::OnClose) | None => {
                        return Err("data channel closed".to_string());
                    }
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| format!("no message within {timeout:?}"))?
    }

    /// Send `request` with a fresh `id` and return the first reply that echoes it.
    pub async fn request(
        &mut self,
        mut request: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = Value::from(id);
        self.send_raw(&request.to_string()).await?;
        self.reply_to(&Value::from(id), timeout).await
    }

    /// The next message whose `id` is `id`; others are kept for [`DataClient::next`].
    pub async fn reply_to(&mut self, id: &Value, timeout: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.receive(left).await?;
            if &message["id"] == id {
                return Ok(message);
            }
            self.unsolicited.push_back(message);
        }
    }

    /// Ask for a snapshot and reassemble it; errors if the device replied with an error or the
    /// chunks do not add up to the announced size and CRC-32.
    pub async fn snapshot(&mut self, quality: u8, timeout: Duration) -> Result<Snapshot, String> {
        let header = self
            .request(
                serde_json::json!({"type": "snapshot", "quality": quality}),
                timeout,
            )
            .await?;
        if header["type"] != "snapshot" {
            return Err(format!("snapshot refused: {header}"));
        }
        let id = header["id"].clone();
        let chunks = header["chunks"].as_u64().ok_or("header lacks `chunks`")?;
        let size = header["size"].as_u64().ok_or("header lacks `size`")?;
        let mut parts: Vec<Option<Vec<u8>>> = vec![None; chunks as usize];
        let b64 = base64::engine::general_purpose::STANDARD;
        for _ in 0..chunks {
            let chunk = self.reply_to(&id, timeout).await?;
            let index = chunk["index"].as_u64().ok_or("chunk lacks `index`")? as usize;
            let data = chunk["data"].as_str().ok_or("chunk lacks `data`")?;
            let slot = parts
                .get_mut(index)
                .ok_or(format!("chunk index {index} of {chunks}"))?;
            *slot = Some(
                b64.decode(data)
                    .map_err(|e| format!("chunk {index}: {e}"))?,
            );
        }
        let jpeg: Vec<u8> = parts.into_iter().flatten().flatten().collect();
        if jpeg.len() as u64 != size {
            return Err(format!("got {} bytes, header said {size}", jpeg.len()));
        }
        let crc = format!("{:08x}", crc32fast::hash(&jpeg));
        if header["crc32"] != crc.as_str() {
            return Err(format!("CRC-32 {crc} does not match {}", header["crc32"]));
        }
        Ok(Snapshot { header, jpeg })
    }
}
