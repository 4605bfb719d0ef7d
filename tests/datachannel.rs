//! End-to-end tests of the `spyglass` data channel: a real Mosquitto, a real spyglass process with
//! the test pattern, and the headless viewer with a data channel, decoding the video meanwhile.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spyglass::view::data::{DataClient, DataLink};
use spyglass::view::{ViewReport, run};
use support::*;
use tokio::sync::{Notify, mpsc};

const WAIT: Duration = Duration::from_secs(20);

/// A daemon, and a viewer that watches until told to stop, with its data channel open.
struct Watching {
    _broker: Broker,
    daemon: Daemon,
    client: DataClient,
    stop: Arc<Notify>,
    viewer: tokio::task::JoinHandle<Result<ViewReport, spyglass::view::ViewError>>,
}

async fn watch() -> Watching {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--size", "320x240", "--fps", "30"]);
    wait_online(&broker, &daemon).await;
    let (links, mut link_rx) = mpsc::unbounded_channel::<DataLink>();
    let stop = Arc::new(Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.timeout = Duration::from_secs(300);
    options.stop = Some(Arc::clone(&stop));
    options.data_channel = Some(links);
    let viewer = tokio::spawn(run(options));
    let link = tokio::time::timeout(WAIT, link_rx.recv())
        .await
        .expect("the viewer made no data channel")
        .expect("the viewer ended early");
    let client = DataClient::open(link, WAIT)
        .await
        .expect("the spyglass channel opens");
    Watching {
        _broker: broker,
        daemon,
        client,
        stop,
        viewer,
    }
}

impl Watching {
    async fn ask(&mut self, request: Value) -> Value {
        self.client
            .request(request.clone(), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{request}: {e}"))
    }

    async fn finish(self) -> ViewReport {
        self.stop.notify_one();
        let report = self.viewer.await.unwrap().unwrap();
        drop(self.daemon);
        report
    }
}

fn decode_luma(jpeg: &[u8]) -> (Vec<u8>, usize, usize) {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::Luma);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(jpeg), options);
    let luma = decoder.decode().expect("snapshot decodes as a JPEG");
    let info = decoder.info().unwrap();
    (luma, usize::from(info.width), usize::from(info.height))
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    assert!(n > 0, "no frames to average");
    sum / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_trip_while_the_video_goes_on() {
    let mut w = watch().await;

    // keyframe: acknowledged, and a keyframe reaches this session afterwards.
    let before = w.ask(json!({"type": "stats"})).await["keyframes_sent"]
        .as_u64()
        .unwrap();
    let reply = w.ask(json!({"type": "keyframe"})).await;
    assert_eq!(reply["type"], "keyframe");
    assert_eq!(reply["requested"], true);
    loop {
        let stats = w.ask(json!({"type": "stats"})).await;
        if stats["keyframes_sent"].as_u64().unwrap() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // stats: this session's figures.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = w.ask(json!({"type": "stats"})).await;
    assert_eq!(stats["type"], "stats");
    assert!(stats["frames_sent"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["bytes_sent"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["bitrate_kbps"].as_f64().unwrap() > 0.0, "{stats}");
    assert!(stats["cpu_percent"].as_f64().unwrap() >= 0.0, "{stats}");
    assert_eq!(stats["viewers"], 1);
    assert!(stats["rtt_ms"].is_null() || stats["rtt_ms"].as_f64().unwrap() > 0.0);
    let thermal = std::path::Path::new("/sys/class/thermal/thermal_zone0/temp").exists();
    assert_eq!(stats["temperature_c"].is_number(), thermal, "{stats}");

    // subscribe-stats: pushes without an id until unsubscribed.
    let reply = w
        .ask(json!({"type": "subscribe-stats", "interval_ms": 500}))
        .await;
    assert_eq!(reply["interval_ms"], 500);
    let mut frames = Vec::new();
    for _ in 0..2 {
        let push = w.client.next(WAIT).await.unwrap();
        assert_eq!(push["type"], "stats", "{push}");
        assert!(push["id"].is_null(), "{push}");
        frames.push(push["frames_sent"].as_u64().unwrap());
    }
    assert!(
        frames[1] > frames[0],
        "pushed stats follow the stream: {frames:?}"
    );
    let reply = w.ask(json!({"type": "unsubscribe-stats"})).await;
    assert_eq!(reply["type"], "unsubscribe-stats");

    // controls: the test pattern's own.
    let reply = w.ask(json!({"type": "controls"})).await;
    assert_eq!(reply["shared"], true);
    let controls = reply["controls"].as_array().unwrap();
    let brightness = controls
        .iter()
        .find(|c| c["name"] == "brightness")
        .unwrap_or_else(|| panic!("no brightness in {reply}"));
    assert_eq!(
        (&brightness["min"], &brightness["max"], &brightness["value"]),
        (&json!(0), &json!(255), &json!(128))
    );

    // snapshot: a JPEG of the configured size showing the pattern's code.
    let snapshot = w.client.snapshot(85, WAIT).await.unwrap();
    assert_eq!(snapshot.header["format"], "image/jpeg");
    assert_eq!(snapshot.header["size"], snapshot.jpeg.len());
    assert!(snapshot.header["chunks"].as_u64().unwrap() >= 1);
    let (luma, width, height) = decode_luma(&snapshot.jpeg);
    assert_eq!((width, height), (320, 240));
    let stamp = spyglass::pattern::read(&luma, 320, 240, width).expect("frame code readable");
    assert_eq!(
        stamp.captured_ms,
        snapshot.header["captured_ms"].as_u64().unwrap() & spyglass::pattern::CAPTURED_MS_MASK
    );
    // Several frames later (the pattern runs at 30 fps), a snapshot shows a later frame.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = w.client.snapshot(50, WAIT).await.unwrap();
    let (luma, _, _) = decode_luma(&later.jpeg);
    let later_stamp = spyglass::pattern::read(&luma, 320, 240, 320).expect("code readable");
    assert!(
        later_stamp.frame > stamp.frame,
        "snapshots follow the stream"
    );

    // set-control: brightness up; the decoded video gets brighter.
    let asked_at = Instant::now();
    let reply = w
        .ask(json!({"type": "set-control", "name": "brightness", "value": 200}))
        .await;
    assert_eq!(reply["type"], "set-control", "{reply}");
    assert_eq!(reply["control"]["value"], 200);
    assert_eq!(reply["shared"], true);
    assert!(reply["note"].as_str().unwrap().contains("every viewer"));
    let settled = Instant::now() + Duration::from_secs(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = w.ask(json!({"type": "controls"})).await;
    assert!(
        listed["controls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "brightness" && c["value"] == 200)
    );

    let report = w.finish().await;
    let dark = mean(
        report
            .luma
            .iter()
            .filter(|(t, _)| *t < asked_at)
            .map(|(_, l)| *l),
    );
    let bright = mean(
        report
            .luma
            .iter()
            .filter(|(t, _)| *t > settled)
            .map(|(_, l)| *l),
    );
    assert!(
        bright > dark + 40.0,
        "mean luma {dark:.1} before brightness 200, {bright:.1} after"
    );
    assert!(report.stamped_frames > 60, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_and_the_video_goes_on() {
    let mut w = watch().await;
    let cases = [
        (json!({"type": "zoom"}), "unknown-type", "zoom"),
        (
            json!({"type": "set-control", "name": "brightness", "value": 300}),
            "out-of-range",
            "brightness must be within 0..=255",
        ),
        (
            json!({"type": "set-control", "name": "focus", "value": 1}),
            "unknown-control",
            "no control named `focus`",
        ),
        (
            json!({"type": "set-control", "name": "brightness", "value": "bright"}),
            "bad-value",
            "`value` must be an integer",
        ),
        (
            json!({"type": "set-control", "value": 1}),
            "bad-request",
            "`name`",
        ),
        (
            json!({"type": "snapshot", "quality": 0}),
            "out-of-range",
            "quality",
        ),
        (
            json!({"type": "subscribe-stats", "interval_ms": 1}),
            "out-of-range",
            "interval_ms",
        ),
        (json!({"kind": "stats"}), "bad-request", "`type`"),
    ];
    for (request, code, text) in cases {
        let reply = w.ask(request.clone()).await;
        assert_eq!(reply["type"], "error", "{request} -> {reply}");
        assert_eq!(reply["code"], code, "{request} -> {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(text),
            "{request} -> {reply}"
        );
    }
    // Not JSON, not an object, binary garbage, and an oversized message: errors without an id.
    w.client.send_raw("{not json").await.unwrap();
    w.client.send_raw("[1,2]").await.unwrap();
    w.client.send_binary(&[0xff, 0x00, 0x13]).await.unwrap();
    w.client.send_raw(&"x".repeat(10_000)).await.unwrap();
    for code in ["bad-json", "bad-json", "bad-json", "too-large"] {
        let reply = w.client.next(WAIT).await.unwrap();
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        assert!(reply["id"].is_null());
    }
    // A channel with another label is accepted (and ignored); the spyglass channel still serves.
    let other = w
        .client
        .link
        .pc
        .create_data_channel("pi-webrtc", None)
        .await
        .unwrap();
    let other_client = DataClient::open(
        DataLink {
            channel: other,
            pc: Arc::clone(&w.client.link.pc),
        },
        WAIT,
    )
    .await
    .expect("a channel with another label opens");
    other_client
        .send_raw(r#"{"id":1,"type":"stats"}"#)
        .await
        .unwrap();

    let after_errors = Instant::now();
    let frames_then = w.ask(json!({"type": "stats"})).await["frames_sent"]
        .as_u64()
        .unwrap();
    loop {
        let frames = w.ask(json!({"type": "stats"})).await["frames_sent"]
            .as_u64()
            .unwrap();
        if frames >= frames_then + 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = w.finish().await;
    let decoded_after = report
        .luma
        .iter()
        .filter(|(t, _)| *t > after_errors)
        .count();
    assert!(
        decoded_after >= 20,
        "{decoded_after} frames decoded after the bad requests"
    );
    assert_eq!(report.counter_resets, 0, "the source never restarted");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 12, item 6: one viewer opens 64 channels, stops reading, and asks for snapshots at
/// quality 100 on all of them for 30 s. The daemon's RSS grows by less than 50 MB and another
/// viewer keeps at least 90 % of its frame rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_floods_snapshots_on_64_channels_changes_nothing_for_others() {
    let mut w = watch().await;
    let broker = &w._broker;
    // The attacker: a second viewer with its own data channel, and 63 more.
    let (links, mut link_rx) = mpsc::unbounded_channel::<DataLink>();
    let stop_attacker = Arc::new(Notify::new());
    let mut options = view_options(broker, &w.daemon, u64::MAX);
    options.timeout = Duration::from_secs(300);
    options.stop = Some(Arc::clone(&stop_attacker));
    options.data_channel = Some(links);
    let attacker = tokio::spawn(run(options));
    let link = tokio::time::timeout(WAIT, link_rx.recv())
        .await
        .unwrap()
        .unwrap();
    let pc = Arc::clone(&link.pc);
    let mut channels = vec![link.channel];
    for i in 1..64 {
        channels.push(
            pc.create_data_channel("spyglass", None)
                .await
                .unwrap_or_else(|e| panic!("channel {i}: {e}")),
        );
    }
    // Wait until each has opened (or been closed by the device), reading nothing after that.
    let mut open = Vec::new();
    for channel in channels {
        let opened = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match channel.poll().await {
                    Some(webrtc::data_channel::DataChannelEvent::OnOpen) => return true,
                    Some(webrtc::data_channel::DataChannelEvent::OnClose) | None => return false,
                    Some(_) => {}
                }
            }
        })
        .await
        .unwrap_or(false);
        if opened {
            open.push(channel);
        }
    }
    // The victim's frame rate over 10 s before the flood.
    let _ = w.ask(json!({"type": "stats"})).await;
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let flood_from = Instant::now();
    let rss_before = rss_kb(w.daemon.pid());
    let mut sent = 0u64;
    let mut refused = 0u64;
    let request = json!({"type": "snapshot", "quality": 100}).to_string();
    while flood_from.elapsed() < Duration::from_secs(30) {
        for channel in &open {
            match tokio::time::timeout(Duration::from_millis(50), channel.try_send_text(&request))
                .await
            {
                Ok(Ok(())) => sent += 1,
                _ => refused += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flood_to = Instant::now();
    let rss_after = rss_kb(w.daemon.pid());
    let threads = std::fs::read_to_string(format!("/proc/{}/status", w.daemon.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|t| t.trim().to_string()))
        .unwrap_or_default();
    // What the device left open: it closes channels beyond its limit as they open, and those
    // whose viewer takes no replies.
    let mut still_open = 0;
    for channel in &open {
        if matches!(
            channel.ready_state().await,
            Ok(webrtc::data_channel::RTCDataChannelState::Open)
        ) {
            still_open += 1;
        }
    }
    // The victim is still served.
    let stats = w.ask(json!({"type": "stats"})).await;
    assert_eq!(stats["type"], "stats");
    stop_attacker.notify_one();
    let _ = attacker.await;
    let report = w.finish().await;
    let rate = |from: Instant, to: Instant| {
        let n = report
            .luma
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    };
    let quiet = rate(quiet_from, flood_from);
    let flooded = rate(flood_from, flood_to);
    eprintln!(
        "snapshot flood: {} of 64 channels opened, {still_open} still open after the flood; \
         {sent} requests sent ({refused} not taken by a full buffer); daemon RSS {rss_before} kB -> {rss_after} kB (+{} kB, limit \
         51200 kB); other viewer {quiet:.1} fps before, {flooded:.1} fps during ({:.0} %, \
         limit >= 90 %); daemon threads {threads}",
        open.len(),
        rss_after.saturating_sub(rss_before),
        flooded / quiet * 100.0
    );
    assert!(still_open <= 8, "{still_open} channels open");
    assert!(
        rss_after < rss_before + 50 * 1024,
        "RSS +{} kB",
        rss_after - rss_before
    );
    assert!(flooded >= 0.9 * quiet, "{quiet:.1} fps -> {flooded:.1} fps");
}
