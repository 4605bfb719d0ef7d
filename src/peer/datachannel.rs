//! The `spyglass` data channel: JSON requests from a viewer and the device's replies (keyframes,
//! stats, picture controls, snapshots). `docs/PROTOCOL.md` ("Data channel") is the contract.
//!
//! Parsing and reply building are plain functions; [`serve`] moves messages between them and the
//! channel. A request type is one variant of `Wire` (serde, tagged by `type`), its checks in
//! `request`, and its reply in `handle`. Requests are served one at a time per channel; the slow ones (snapshot encoding,
//! V4L2 ioctls) run on blocking threads, so no request can hold up the media tasks.
//!
//! Bounds (docs/SECURITY.md): [`MAX_CHANNELS`] channels per viewer; [`SEND_BUFFER_BYTES`] sent
//! and not yet acknowledged per channel, and a reply the viewer does not take within
//! [`SEND_TIMEOUT`] closes the channel; per viewer ([`ViewerBudget`], over all its channels) one
//! snapshot at a time and a rate for snapshots, control requests and keyframes; device-wide,
//! the hub's request workers and keyframe budget.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tracing::{debug, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::PeerConnection;

use super::bitrate::{RateControl, ViewerRate};
use crate::rate::TokenBucket;
use crate::signaling::protocol::Field;
use crate::video::hub::Hub;
use crate::video::snapshot;

/// The label of the channel this module serves; channels with other labels are ignored.
pub const LABEL: &str = "spyglass";
/// JPEG bytes per `snapshot-chunk` message (base64 makes it 21 848 characters of JSON, well
/// under the 64 KiB every WebRTC stack accepts in one SCTP message).
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Requests longer than this are refused unread.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Stats pushes: default, fastest and slowest interval.
pub const STATS_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);
const STATS_INTERVAL_MIN: Duration = Duration::from_millis(500);
const STATS_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Stated in every reply that changes the shared stream.
pub const SHARED_NOTE: &str = "applies to the shared stream: every viewer sees the change";
/// Data channels (of any label) one viewer may have open; more are closed at once.
pub const MAX_CHANNELS: usize = 8;
/// Bytes handed to one channel and not yet acknowledged by the viewer, at most; a reply waits
/// for room (the peer connection is built with this limit).
pub const SEND_BUFFER_BYTES: usize = 256 * 1024;
/// A reply the viewer does not make room for within this long closes the channel.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Snapshots per viewer: on average one per this interval, [`SNAPSHOT_BURST`] after a pause,
/// and never two at once.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(2);
pub const SNAPSHOT_BURST: u32 = 2;
/// `controls` and `set-control` requests per viewer: per second, and at once after a pause
/// (each is V4L2 ioctls on a blocking thread).
pub const CONTROL_CHANGES: (f64, u32) = (10.0, 20);
/// `keyframe` requests per viewer: at most one per this interval (and the hub's device-wide
/// budget).
pub const KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);

/// What one session has sent, counted by its video task.
#[derive(Debug)]
pub struct SessionCounters {
    pub started: Instant,
    pub frames: AtomicU64,
    pub keyframes: AtomicU64,
    pub bytes: AtomicU64,
}

impl Default for SessionCounters {
    fn default() -> Self {
        SessionCounters {
            started: Instant::now(),
            frames: AtomicU64::new(0),
            keyframes: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

/// What one viewer may still ask for, shared by all its channels.
#[derive(Debug)]
pub struct ViewerBudget {
    snapshot_under_way: AtomicBool,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    snapshots: TokenBucket,
    controls: TokenBucket,
    keyframes: TokenBucket,
}

impl Default for ViewerBudget {
    fn default() -> Self {
        ViewerBudget {
            snapshot_under_way: AtomicBool::new(false),
            buckets: Mutex::new(Buckets {
                snapshots: TokenBucket::new(1.0 / SNAPSHOT_INTERVAL.as_secs_f64(), SNAPSHOT_BURST),
                controls: TokenBucket::new(CONTROL_CHANGES.0, CONTROL_CHANGES.1),
                keyframes: TokenBucket::every(KEYFRAME_INTERVAL),
            }),
        }
    }
}

/// The `rate-limited` error for a request that may be retried after `wait`.
fn rate_limited(what: &str, wait: Duration) -> RequestError {
    RequestError::new(
        "rate-limited",
        format!("{what}; retry in {} ms", wait.as_millis().max(1)),
    )
}

impl ViewerBudget {
    fn take(
        &self,
        now: Instant,
        pick: impl FnOnce(&mut Buckets) -> &mut TokenBucket,
    ) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = pick(&mut buckets);
        if bucket.try_take(now) {
            Ok(())
        } else {
            Err(bucket.wait(now))
        }
    }

    /// A snapshot may start: none is under way for this viewer and the rate allows. The
    /// returned guard marks it under way until dropped.
    fn start_snapshot(&self, now: Instant) -> Result<SnapshotUnderWay<'_>, RequestError> {
        if self.snapshot_under_way.swap(true, Ordering::AcqRel) {
            return Err(RequestError::new(
                "rate-limited",
                "one snapshot at a time: retry when the previous one has arrived",
            ));
        }
        let guard = SnapshotUnderWay(self);
        self.take(now, |b| &mut b.snapshots).map_err(|wait| {
            rate_limited(
                &format!(
                    "at most {SNAPSHOT_BURST} snapshots at once and one per {} s on average",
                    SNAPSHOT_INTERVAL.as_secs()
                ),
                wait,
            )
        })?;
        Ok(guard)
    }
}

/// Clears "a snapshot is under way" when dropped.
struct SnapshotUnderWay<'a>(&'a ViewerBudget);

impl Drop for SnapshotUnderWay<'_> {
    fn drop(&mut self) {
        self.0.snapshot_under_way.store(false, Ordering::Release);
    }
}

/// A request as parsed from one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Keyframe,
    Stats,
    SubscribeStats { interval: Duration },
    UnsubscribeStats,
    Controls,
    SetControl { name: String, value: i64 },
    Snapshot { quality: i64 },
}

/// A request that cannot be served: the `code` and `message` of the error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: &'static str,
    pub message: String,
}

impl RequestError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
        }
    }
}

/// The requests as they arrive, one variant per `type` (docs/PROTOCOL.md's table). Fields are
/// [`Field`]s so that a wrong JSON type becomes the contract's own error text rather than serde's.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Wire {
    Keyframe,
    Stats,
    SubscribeStats {
        #[serde(default)]
        interval_ms: Field<Option<i64>>,
    },
    UnsubscribeStats,
    Controls,
    SetControl {
        #[serde(default)]
        name: Field<Option<String>>,
        #[serde(default)]
        value: Field<Option<i64>>,
    },
    Snapshot {
        #[serde(default)]
        quality: Field<Option<i64>>,
    },
    /// Any other `type`: answered `unknown-type`.
    #[serde(other)]
    Unknown,
}

/// An optional integer field: `None` when absent or null, `bad-value` naming `key` when it is
/// something else.
fn integer(field: Field<Option<i64>>, key: &str) -> Result<Option<i64>, RequestError> {
    match field {
        Field::Absent => Ok(None),
        Field::Given(n) => Ok(n),
        Field::Wrong(v) => Err(RequestError::new(
            "bad-value",
            format!("`{key}` must be an integer, got {v}"),
        )),
    }
}

/// Parse one message. Returns the request's `id` (echoed in every reply; `null` when absent or
/// unreadable) with the request or the error to reply with.
pub fn parse(message: &[u8]) -> (Value, Result<Request, RequestError>) {
    if message.len() > MAX_REQUEST_BYTES {
        return (
            Value::Null,
            Err(RequestError::new(
                "too-large",
                format!(
                    "request of {} bytes; at most {MAX_REQUEST_BYTES}",
                    message.len()
                ),
            )),
        );
    }
    let object = match serde_json::from_slice::<Value>(message) {
        Ok(Value::Object(o)) => o,
        Ok(_) => {
            return (
                Value::Null,
                Err(RequestError::new(
                    "bad-json",
                    "a request is one JSON object",
                )),
            );
        }
        Err(e) => {
            return (
                Value::Null,
                Err(RequestError::new(
                    "bad-json",
                    format!("request is not JSON: {e}"),
                )),
            );
        }
    };
    let id = object.get("id").cloned().unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
        return (
            Value::Null,
            Err(RequestError::new(
                "bad-request",
                "`id` must be a number or a string",
            )),
        );
    }
    let Some(kind) = object
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return (
            id,
            Err(RequestError::new(
                "bad-request",
                "`type` is missing or not a string",
            )),
        );
    };
    // Every field is a `Field`, which takes any JSON value, and `type` is a string: what is
    // left to fail is serde's own bookkeeping, answered as a bad request.
    let request = serde_json::from_value::<Wire>(Value::Object(object))
        .map_err(|e| RequestError::new("bad-request", e.to_string()))
        .and_then(|wire| request(wire, &kind));
    (id, request)
}

/// Check the values of a request that has the right shape.
fn request(wire: Wire, kind: &str) -> Result<Request, RequestError> {
    Ok(match wire {
        Wire::Keyframe => Request::Keyframe,
        Wire::Stats => Request::Stats,
        Wire::SubscribeStats { interval_ms } => {
            let ms = integer(interval_ms, "interval_ms")?
                .unwrap_or(STATS_INTERVAL_DEFAULT.as_millis() as i64);
            let (min, max) = (
                STATS_INTERVAL_MIN.as_millis() as i64,
                STATS_INTERVAL_MAX.as_millis() as i64,
            );
            if !(min..=max).contains(&ms) {
                return Err(RequestError::new(
                    "out-of-range",
                    format!("interval_ms must be within {min}..={max}, got {ms}"),
                ));
            }
            Request::SubscribeStats {
                interval: Duration::from_millis(ms as u64),
            }
        }
        Wire::UnsubscribeStats => Request::UnsubscribeStats,
        Wire::Controls => Request::Controls,
        Wire::SetControl { name, value } => {
            let Field::Given(Some(name)) = name else {
                return Err(RequestError::new(
                    "bad-request",
                    "set-control needs `name` (a string)",
                ));
            };
            let value = integer(value, "value")?.ok_or_else(|| {
                RequestError::new("bad-request", "set-control needs `value` (an integer)")
            })?;
            Request::SetControl { name, value }
        }
        Wire::Snapshot { quality } => {
            let quality =
                integer(quality, "quality")?.unwrap_or(i64::from(snapshot::DEFAULT_QUALITY));
            if !(1..=100).contains(&quality) {
                return Err(RequestError::new(
                    "out-of-range",
                    format!("quality must be within 1..=100, got {quality}"),
                ));
            }
            Request::Snapshot { quality }
        }
        Wire::Unknown => {
            return Err(RequestError::new(
                "unknown-type",
                format!(
                    "unknown request type `{kind}`; known: keyframe, stats, subscribe-stats, \
                     unsubscribe-stats, controls, set-control, snapshot"
                ),
            ));
        }
    })
}

/// The error reply for a request.
pub fn error_reply(id: &Value, error: &RequestError) -> Value {
    if error.code == "internal" {
        // The viewer only learns that it failed; the log says why.
        warn!(
            "data channel request answered `internal`: {}",
            error.message
        );
    }
    json!({"id": id, "type": "error", "code": error.code, "message": error.message})
}

/// The snapshot reply's header and chunk messages for `jpeg`.
pub fn snapshot_messages(
    id: &Value,
    jpeg: &[u8],
    width: u32,
    height: u32,
    captured_ms: u64,
) -> Vec<Value> {
    let chunks: Vec<&[u8]> = jpeg.chunks(CHUNK_BYTES).collect();
    let mut messages = vec![json!({
        "id": id,
        "type": "snapshot",
        "format": "image/jpeg",
        "width": width,
        "height": height,
        "size": jpeg.len(),
        "crc32": format!("{:08x}", crc32fast::hash(jpeg)),
        "chunks": chunks.len(),
        "captured_ms": captured_ms,
    })];
    let b64 = base64::engine::general_purpose::STANDARD;
    for (index, chunk) in chunks.iter().enumerate() {
        messages.push(json!({
            "id": id,
            "type": "snapshot-chunk",
            "index": index,
            "data": b64.encode(chunk),
        }));
    }
    messages
}

/// CPU time of this process in seconds (user + system, all threads), from `getrusage`.
fn process_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `usage` is a valid place for one `rusage`, which getrusage fills when it
    // returns 0.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it wrote the whole struct.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// SoC temperature in °C, where the kernel reports one.
fn soc_temperature() -> Option<f64> {
    let text = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    let millis: f64 = text.trim().parse().ok()?;
    Some(millis / 1000.0)
}

/// Round-trip time of the selected ICE candidate pair, in ms, once measured.
async fn rtt_ms(pc: &Arc<dyn PeerConnection>) -> Option<f64> {
    let report = pc
        .get_stats(Instant::now(), webrtc::peer_connection::StatsSelector::None)
        .await;
    report
        .candidate_pairs()
        .filter(|p| p.nominated && p.current_round_trip_time > 0.0)
        .map(|p| p.current_round_trip_time * 1000.0)
        .next()
}

/// Figures between two stats messages: bitrate and CPU use are averaged over the interval.
struct StatsSampler {
    at: Instant,
    bytes: u64,
    cpu: Option<f64>,
}

impl StatsSampler {
    fn new(counters: &SessionCounters) -> Self {
        StatsSampler {
            at: counters.started,
            bytes: 0,
            cpu: process_cpu_seconds(),
        }
    }

    async fn sample(&mut self, ctx: &ChannelContext) -> Value {
        let (hub, counters, pc) = (&ctx.hub, &ctx.counters, &ctx.pc);
        let now = Instant::now();
        let seconds = now.duration_since(self.at).as_secs_f64().max(1e-3);
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let cpu = process_cpu_seconds();
        let cpu_percent = cpu
            .zip(self.cpu)
            .map(|(now, before)| ((now - before) / seconds * 1000.0).round() / 10.0);
        let bitrate_kbps = ((bytes - self.bytes) as f64 * 8.0 / seconds / 1000.0).round();
        *self = StatsSampler {
            at: now,
            bytes,
            cpu,
        };
        let mut stats = json!({
            "type": "stats",
            "session_seconds": (counters.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "bitrate_kbps": bitrate_kbps,
            "frames_sent": counters.frames.load(Ordering::Relaxed),
            "keyframes_sent": counters.keyframes.load(Ordering::Relaxed),
            "bytes_sent": bytes,
            "rtt_ms": rtt_ms(pc).await,
            "cpu_percent": cpu_percent,
            "temperature_c": soc_temperature(),
            "viewers": hub.subscribers(),
        });
        if let (Some((viewer, rate)), Value::Object(map)) = (&ctx.viewer, &mut stats)
            && let Value::Object(link) = link_stats(viewer, rate)
        {
            map.extend(link);
        }
        stats
    }
}

/// What the channel task needs from the session.
#[derive(Clone)]
pub struct ChannelContext {
    pub hub: Hub,
    pub counters: Arc<SessionCounters>,
    pub pc: Arc<dyn PeerConnection>,
    /// The viewer's link and layers, and the shared rate control (device sessions).
    pub viewer: Option<(Arc<ViewerRate>, RateControl)>,
    /// This viewer's budget, shared by its channels.
    pub budget: Arc<ViewerBudget>,
}

/// The stats about the viewer's link and the rate control: bandwidth estimate, the shared
/// encoder's target, the temporal layers this viewer receives, loss, retransmissions, what it
/// was not sent, and its stalls (docs/PROTOCOL.md, "Stats object").
fn link_stats(viewer: &ViewerRate, rate: &RateControl) -> Value {
    let link = viewer.link();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "estimate_kbps": link.estimate_bps() / 1000,
        "target_kbps": rate.target_bps() / 1000,
        "layer": usize::from(viewer.layer()).min(rate.layers().saturating_sub(1)),
        "layers": rate.layers(),
        "loss_percent": (link.loss() * 1000.0).round() / 10.0,
        "nacked_packets": n(&link.nacked_packets),
        "retransmitted_packets": n(&link.retransmitted_packets),
        "retransmitted_bytes": n(&link.retransmitted_bytes),
        "frames_skipped": n(&viewer.frames_skipped),
        "frames_held_back": n(&viewer.frames_held_back),
        "stalls": n(&viewer.stalls),
        "keyframes_requested": n(&viewer.keyframes_requested),
        "pacer_ms": link.pacer_backlog().as_millis() as u64,
    })
}

/// Send a reply, waiting for room in the channel's send buffer for at most [`SEND_TIMEOUT`];
/// false when the channel is closed or the viewer did not make room (then it is closed).
async fn send(channel: &Arc<dyn DataChannel>, message: &Value) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, channel.send_text(&message.to_string())).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            debug!("data channel send: {err}");
            false
        }
        Err(_) => {
            debug!(
                "data channel: the viewer took no data for {} s; closing",
                SEND_TIMEOUT.as_secs()
            );
            let _ = channel.close().await;
            false
        }
    }
}

/// Send a stats push if there is room now; a full buffer skips it.
async fn push(channel: &Arc<dyn DataChannel>, message: &Value) -> bool {
    match channel.try_send_text(&message.to_string()).await {
        Ok(()) => true,
        Err(webrtc::error::Error::ErrSendBufferFull) => true,
        Err(err) => {
            debug!("data channel send: {err}");
            false
        }
    }
}

/// Serve one `spyglass` channel until it closes.
pub async fn serve(channel: Arc<dyn DataChannel>, ctx: ChannelContext) {
    let mut sampler = StatsSampler::new(&ctx.counters);
    let mut push_every: Option<tokio::time::Interval> = None;
    loop {
        let event = tokio::select! {
            event = channel.poll() => event,
            _ = async { match push_every.as_mut() { Some(i) => { i.tick().await; } None => std::future::pending().await } } => {
                let stats = sampler.sample(&ctx).await;
                if !push(&channel, &stats).await { return; }
                continue;
            }
        };
        let message = match event {
            Some(DataChannelEvent::OnMessage(m)) => m,
            Some(DataChannelEvent::OnClose) | None => return,
            Some(_) => continue,
        };
        let (id, request) = parse(&message.data);
        let sent = match request {
            Ok(Request::Snapshot { quality }) => snapshot(&ctx, &channel, &id, quality).await,
            Ok(request) => {
                let replies = handle(&ctx, &mut sampler, &mut push_every, &id, request).await;
                send_all(&channel, &replies).await
            }
            Err(err) => send(&channel, &error_reply(&id, &err)).await,
        };
        if !sent {
            return;
        }
    }
}

async fn send_all(channel: &Arc<dyn DataChannel>, replies: &[Value]) -> bool {
    for reply in replies {
        if !send(channel, reply).await {
            return false;
        }
    }
    true
}

/// Serve a snapshot request: within the viewer's budget, on one of the hub's request workers,
/// and counted as under way until its last chunk is sent.
async fn snapshot(
    ctx: &ChannelContext,
    channel: &Arc<dyn DataChannel>,
    id: &Value,
    quality: i64,
) -> bool {
    let failed =
        |code: &'static str, message: String| error_reply(id, &RequestError { code, message });
    let under_way = match ctx.budget.start_snapshot(Instant::now()) {
        Ok(guard) => guard,
        Err(err) => return send(channel, &error_reply(id, &err)).await,
    };
    let Some(frame) = ctx.hub.latest_frame() else {
        return send(
            channel,
            &failed("no-frame", "no frame captured yet; try again".into()),
        )
        .await;
    };
    let replies = {
        let Ok(_turn) = ctx.hub.request_workers().acquire_owned().await else {
            return send(channel, &failed("internal", "request workers gone".into())).await;
        };
        let encoded = tokio::task::spawn_blocking(move || {
            snapshot::jpeg(&frame, quality).map(|jpeg| (jpeg, frame))
        })
        .await;
        match encoded {
            Ok(Ok((jpeg, frame))) => {
                let captured_ms = frame
                    .captured_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                snapshot_messages(id, &jpeg, frame.width, frame.height, captured_ms)
            }
            Ok(Err(err)) => vec![failed("snapshot-failed", err.to_string())],
            Err(err) => vec![failed("internal", format!("snapshot: {err}"))],
        }
    };
    let sent = send_all(channel, &replies).await;
    drop(under_way);
    sent
}

async fn handle(
    ctx: &ChannelContext,
    sampler: &mut StatsSampler,
    push: &mut Option<tokio::time::Interval>,
    id: &Value,
    request: Request,
) -> Vec<Value> {
    let failed = |code: &'static str, message: String| {
        vec![error_reply(id, &RequestError { code, message })]
    };
    match request {
        Request::Keyframe => {
            let now = Instant::now();
            let allowed = ctx
                .budget
                .take(now, |b| &mut b.keyframes)
                .map_err(|wait| {
                    rate_limited(
                        &format!(
                            "at most one keyframe per {} s per viewer",
                            KEYFRAME_INTERVAL.as_secs()
                        ),
                        wait,
                    )
                })
                .and_then(|()| {
                    ctx.hub.request_keyframe_on_demand(now).map_err(|wait| {
                        rate_limited(
                            "the device makes keyframes on demand this often at most",
                            wait,
                        )
                    })
                });
            match allowed {
                Ok(()) => vec![
                    json!({"id": id, "type": "keyframe", "requested": true, "note": SHARED_NOTE}),
                ],
                Err(err) => vec![error_reply(id, &err)],
            }
        }
        Request::Stats => {
            let mut stats = sampler.sample(ctx).await;
            stats["id"] = id.clone();
            vec![stats]
        }
        Request::SubscribeStats { interval } => {
            // The first push comes one interval from now.
            let start = tokio::time::Instant::now() + interval;
            let mut ticks = tokio::time::interval_at(start, interval);
            // A slow channel gets fewer pushes, never a burst of them.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            *push = Some(ticks);
            vec![
                json!({"id": id, "type": "subscribe-stats", "interval_ms": interval.as_millis() as u64}),
            ]
        }
        Request::UnsubscribeStats => {
            *push = None;
            vec![json!({"id": id, "type": "unsubscribe-stats"})]
        }
        Request::Controls => {
            if let Err(wait) = ctx.budget.take(Instant::now(), |b| &mut b.controls) {
                let (per_second, burst) = CONTROL_CHANGES;
                let what =
                    format!("at most {per_second} control requests per second ({burst} at once)");
                return vec![error_reply(id, &rate_limited(&what, wait))];
            }
            let controls = ctx.hub.controls().clone();
            let Ok(_turn) = ctx.hub.request_workers().acquire_owned().await else {
                return failed("internal", "request workers gone".into());
            };
            match tokio::task::spawn_blocking(move || controls.list()).await {
                Ok(Ok(list)) => {
                    vec![json!({"id": id, "type": "controls", "controls": list, "shared": true})]
                }
                Ok(Err(err)) => failed("control-failed", err.to_string()),
                Err(err) => failed("internal", format!("listing controls: {err}")),
            }
        }
        Request::SetControl { name, value } => {
            if let Err(wait) = ctx.budget.take(Instant::now(), |b| &mut b.controls) {
                let (per_second, burst) = CONTROL_CHANGES;
                let what =
                    format!("at most {per_second} control requests per second ({burst} at once)");
                return vec![error_reply(id, &rate_limited(&what, wait))];
            }
            let controls = ctx.hub.controls().clone();
            let Ok(_turn) = ctx.hub.request_workers().acquire_owned().await else {
                return failed("internal", "request workers gone".into());
            };
            let set = tokio::task::spawn_blocking(move || controls.set(&name, value)).await;
            match set {
                Ok(Ok(control)) => vec![json!({
                    "id": id, "type": "set-control", "control": control,
                    "shared": true, "note": SHARED_NOTE,
                })],
                Ok(Err(err @ crate::video::controls::ControlError::Unknown { .. })) => {
                    failed("unknown-control", err.to_string())
                }
                Ok(Err(err @ crate::video::controls::ControlError::OutOfRange { .. })) => {
                    failed("out-of-range", err.to_string())
                }
                Ok(Err(err)) => failed("control-failed", err.to_string()),
                Err(err) => failed("internal", format!("setting a control: {err}")),
            }
        }
        // Served by `snapshot` (it sends as it goes).
        Request::Snapshot { .. } => failed("internal", "snapshot routed wrongly".into()),
    }
}

/// Drain a channel this device does not serve, so its events do not pile up.
pub async fn ignore(channel: Arc<dyn DataChannel>) {
    while let Some(event) = channel.poll().await {
        if let DataChannelEvent::OnClose = event {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_name_the_problem() {
        let (id, r) = parse(br#"{"id":7,"type":"set-control","name":"brightness","value":140}"#);
        assert_eq!(id, json!(7));
        assert_eq!(
            r,
            Ok(Request::SetControl {
                name: "brightness".into(),
                value: 140
            })
        );
        assert_eq!(
            parse(br#"{"type":"subscribe-stats"}"#),
            (
                Value::Null,
                Ok(Request::SubscribeStats {
                    interval: STATS_INTERVAL_DEFAULT
                })
            )
        );
        let (id, r) = parse(br#"{"id":"a","type":"zoom"}"#);
        assert_eq!(id, json!("a"));
        assert_eq!(r.unwrap_err().code, "unknown-type");
        let (_, r) = parse(br#"{"id":1,"type":"snapshot","quality":500}"#);
        assert_eq!(
            r.unwrap_err().message,
            "quality must be within 1..=100, got 500"
        );
        let (_, r) = parse(br#"{"id":1,"type":"set-control","name":"brightness","value":"hi"}"#);
        assert_eq!(r.unwrap_err().code, "bad-value");
        assert_eq!(parse(b"not json").1.unwrap_err().code, "bad-json");
        assert_eq!(parse(b"[1]").1.unwrap_err().code, "bad-json");
        assert_eq!(parse(&[b' '; 5000]).1.unwrap_err().code, "too-large");
    }

    /// Every refusal the parser makes, as the viewer sees it: the reply's `id`, `code` and
    /// exact `message` (docs/PROTOCOL.md, "Data channel", "Errors").
    #[test]
    fn refusals_have_exact_replies() {
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        let cases: Vec<(&[u8], Value, &str, &str)> = vec![
            (
                &huge,
                Value::Null,
                "too-large",
                "request of 4097 bytes; at most 4096",
            ),
            (
                b"not json",
                Value::Null,
                "bad-json",
                "request is not JSON: expected ident at line 1 column 2",
            ),
            (
                b"",
                Value::Null,
                "bad-json",
                "request is not JSON: EOF while parsing a value at line 1 column 0",
            ),
            (
                b"\xff",
                Value::Null,
                "bad-json",
                "request is not JSON: expected value at line 1 column 1",
            ),
            (
                b"[1]",
                Value::Null,
                "bad-json",
                "a request is one JSON object",
            ),
            (
                b"\"stats\"",
                Value::Null,
                "bad-json",
                "a request is one JSON object",
            ),
            (
                br#"{"id":[1],"type":"stats"}"#,
                Value::Null,
                "bad-request",
                "`id` must be a number or a string",
            ),
            (
                br#"{"id":true,"type":"stats"}"#,
                Value::Null,
                "bad-request",
                "`id` must be a number or a string",
            ),
            (
                br#"{"id":{},"type":5}"#,
                Value::Null,
                "bad-request",
                "`id` must be a number or a string",
            ),
            (
                br#"{"id":1}"#,
                json!(1),
                "bad-request",
                "`type` is missing or not a string",
            ),
            (
                br#"{"id":"a","type":5}"#,
                json!("a"),
                "bad-request",
                "`type` is missing or not a string",
            ),
            (
                br#"{"type":null}"#,
                Value::Null,
                "bad-request",
                "`type` is missing or not a string",
            ),
            (
                br#"{"id":2,"type":"zoom"}"#,
                json!(2),
                "unknown-type",
                "unknown request type `zoom`; known: keyframe, stats, subscribe-stats, unsubscribe-stats, controls, set-control, snapshot",
            ),
            (
                br#"{"id":2,"type":"Stats"}"#,
                json!(2),
                "unknown-type",
                "unknown request type `Stats`; known: keyframe, stats, subscribe-stats, unsubscribe-stats, controls, set-control, snapshot",
            ),
            (
                br#"{"id":3,"type":"subscribe-stats","interval_ms":"x"}"#,
                json!(3),
                "bad-value",
                "`interval_ms` must be an integer, got \"x\"",
            ),
            (
                br#"{"id":3,"type":"subscribe-stats","interval_ms":2000.5}"#,
                json!(3),
                "bad-value",
                "`interval_ms` must be an integer, got 2000.5",
            ),
            (
                br#"{"id":3,"type":"subscribe-stats","interval_ms":499}"#,
                json!(3),
                "out-of-range",
                "interval_ms must be within 500..=60000, got 499",
            ),
            (
                br#"{"id":3,"type":"subscribe-stats","interval_ms":60001}"#,
                json!(3),
                "out-of-range",
                "interval_ms must be within 500..=60000, got 60001",
            ),
            (
                br#"{"id":3,"type":"subscribe-stats","interval_ms":-1}"#,
                json!(3),
                "out-of-range",
                "interval_ms must be within 500..=60000, got -1",
            ),
            (
                br#"{"id":4,"type":"set-control","value":1}"#,
                json!(4),
                "bad-request",
                "set-control needs `name` (a string)",
            ),
            (
                br#"{"id":4,"type":"set-control","name":5,"value":1}"#,
                json!(4),
                "bad-request",
                "set-control needs `name` (a string)",
            ),
            (
                br#"{"id":4,"type":"set-control","name":"brightness"}"#,
                json!(4),
                "bad-request",
                "set-control needs `value` (an integer)",
            ),
            (
                br#"{"id":4,"type":"set-control","name":"brightness","value":null}"#,
                json!(4),
                "bad-request",
                "set-control needs `value` (an integer)",
            ),
            (
                br#"{"id":4,"type":"set-control","name":"brightness","value":"high"}"#,
                json!(4),
                "bad-value",
                "`value` must be an integer, got \"high\"",
            ),
            (
                br#"{"id":4,"type":"set-control","name":"brightness","value":true}"#,
                json!(4),
                "bad-value",
                "`value` must be an integer, got true",
            ),
            (
                br#"{"id":4,"type":"set-control","value":"high"}"#,
                json!(4),
                "bad-request",
                "set-control needs `name` (a string)",
            ),
            (
                br#"{"id":4,"type":"set-control","name":"b","value":18446744073709551615}"#,
                json!(4),
                "bad-value",
                "`value` must be an integer, got 18446744073709551615",
            ),
            (
                br#"{"id":5,"type":"snapshot","quality":0}"#,
                json!(5),
                "out-of-range",
                "quality must be within 1..=100, got 0",
            ),
            (
                br#"{"id":5,"type":"snapshot","quality":101}"#,
                json!(5),
                "out-of-range",
                "quality must be within 1..=100, got 101",
            ),
            (
                br#"{"id":5,"type":"snapshot","quality":[]}"#,
                json!(5),
                "bad-value",
                "`quality` must be an integer, got []",
            ),
        ];
        for (message, id, code, text) in cases {
            let (got_id, request) = parse(message);
            let error = request.unwrap_err();
            assert_eq!(
                error_reply(&got_id, &error),
                json!({"id": id, "type": "error", "code": code, "message": text}),
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        // What is served: absent and null optional fields take their defaults, unknown
        // fields are ignored, and `id` may be absent, null, a number or a string.
        let served: Vec<(&[u8], Value, Request)> = vec![
            (
                br#"{"type":"keyframe","x":1}"#,
                Value::Null,
                Request::Keyframe,
            ),
            (
                br#"{"id":null,"type":"stats"}"#,
                Value::Null,
                Request::Stats,
            ),
            (
                br#"{"id":1.5,"type":"unsubscribe-stats"}"#,
                json!(1.5),
                Request::UnsubscribeStats,
            ),
            (
                br#"{"id":"c","type":"controls"}"#,
                json!("c"),
                Request::Controls,
            ),
            (
                br#"{"id":3,"type":"subscribe-stats","interval_ms":null}"#,
                json!(3),
                Request::SubscribeStats {
                    interval: STATS_INTERVAL_DEFAULT,
                },
            ),
            (
                br#"{"id":3,"type":"subscribe-stats","interval_ms":500}"#,
                json!(3),
                Request::SubscribeStats {
                    interval: Duration::from_millis(500),
                },
            ),
            (
                br#"{"id":4,"type":"set-control","name":"contrast","value":-3}"#,
                json!(4),
                Request::SetControl {
                    name: "contrast".into(),
                    value: -3,
                },
            ),
            (
                br#"{"id":5,"type":"snapshot"}"#,
                json!(5),
                Request::Snapshot { quality: 85 },
            ),
            (
                br#"{"id":5,"type":"snapshot","quality":100}"#,
                json!(5),
                Request::Snapshot { quality: 100 },
            ),
        ];
        for (message, id, request) in served {
            assert_eq!(
                parse(message),
                (id, Ok(request)),
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn snapshots_are_chunked_with_size_and_checksum() {
        let jpeg: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let messages = snapshot_messages(&json!(3), &jpeg, 320, 240, 0);
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[0]["size"], 40_000);
        assert_eq!(messages[0]["chunks"], 3);
        let b64 = base64::engine::general_purpose::STANDARD;
        let joined: Vec<u8> = messages[1..]
            .iter()
            .flat_map(|m| b64.decode(m["data"].as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(joined, jpeg);
        assert_eq!(
            messages[0]["crc32"],
            format!("{:08x}", crc32fast::hash(&jpeg))
        );
        assert!(messages.iter().all(|m| m.to_string().len() < 64 * 1024));
    }
}
