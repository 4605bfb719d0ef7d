//! Reliability: camera faults, hostile floods, leaks, broker outages. Real broker, real daemon
//! process, real WebRTC viewers; faults come from the `test-faults:` source, which fails on
//! command.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

/// Resident memory (kB) and open descriptors of a process.
fn rss_kb_and_fds(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_faults_are_ridden_out_and_viewers_stay_connected() {
    let broker = Broker::start();
    let dir = temp_dir("faults");
    let control = dir.join("camera");
    std::fs::write(&control, "ok").unwrap();
    let source = format!("test-faults:{}", control.display());
    let daemon = Daemon::start(&broker, &["--video", &source]);
    wait_online(&broker, &daemon).await;
    let status_topic = format!("{}/status", daemon.id);
    let mut watcher = TestClient::connect(&broker, &[status_topic.clone()]).await;

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.timeout = Duration::from_secs(60);
    options.stop = Some(Arc::clone(&stop));
    let viewer = tokio::spawn(spyglass::view::run(options));
    let live = |v: &serde_json::Value| v["video"]["state"] == "live" && v["viewers"] == 1;
    watcher
        .wait_json(&status_topic, Duration::from_secs(15), live)
        .await;

    for fault in ["error", "stall", "gone"] {
        // Let frames flow for a while first, so each restart shows in the viewer's counters.
        tokio::time::sleep(Duration::from_secs(1)).await;
        std::fs::write(&control, fault).unwrap();
        let lost = watcher
            .wait_json(&status_topic, Duration::from_secs(10), |v| {
                v["video"]["state"] == "lost"
            })
            .await;
        assert_eq!(
            lost["viewers"], 1,
            "the viewer stays connected during {fault}"
        );
        std::fs::write(&control, "ok").unwrap();
        watcher
            .wait_json(&status_topic, Duration::from_secs(10), live)
            .await;
    }
    // Let the last recovery stream for a while, then stop the viewer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.notify_one();
    let report = viewer.await.unwrap().unwrap();
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(
        report.counter_resets, 3,
        "the source restarted after each fault: {report:?}"
    );
    assert!(
        report.last_counter.unwrap() >= 30,
        "frames flow again after the last fault: {report:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_messages_leaves_the_daemon_up_and_the_viewer_streaming() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--peer-timeout", "2"]);
    wait_online(&broker, &daemon).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.timeout = Duration::from_secs(120);
    options.stop = Some(Arc::clone(&stop));
    let viewer_cid = options.cid.clone();
    let viewer = tokio::spawn(spyglass::view::run(options));
    let status_topic = format!("{}/status", daemon.id);
    let mut client = TestClient::connect(&broker, &[status_topic.clone()]).await;
    client
        .wait_json(&status_topic, Duration::from_secs(15), |v| {
            v["viewers"] == 1
        })
        .await;
    let (rss_before, _) = rss_kb_and_fds(daemon.pid());

    let uid = &daemon.id;
    let valid_offer = serde_json::json!({"type": "offer", "sdp": support_offer_sdp()}).to_string();
    let huge = serde_json::json!({"type": "offer", "sdp": "a".repeat(200_000)}).to_string();
    let messages: Vec<(String, Vec<u8>)> = (0..10_000u32)
        .map(|i| {
            let cid = format!("attacker{}", i % 97);
            match i % 10 {
                0 => (format!("{uid}/offer/{cid}"), b"{not json".to_vec()),
                1 => (format!("{uid}/offer/{cid}"), br#"{"type":7,"sdp":[]}"#.to_vec()),
                2 => (format!("{uid}/ice/{cid}"), br#"{"candidate":{"x":1}}"#.to_vec()),
                3 => (
                    format!("{uid}/ice/dead{i}"),
                    format!(r#"{{"candidate":"candidate:1 1 udp 1 127.0.0.1 {} typ host","sdpMid":"0"}}"#, 1000 + i % 60000).into_bytes(),
                ),
                4 => (format!("{uid}/offer/{cid}"), valid_offer.clone().into_bytes()),
                5 if i % 1000 == 5 => (format!("{uid}/offer/{cid}"), huge.clone().into_bytes()),
                5 => (format!("{uid}/offer/bad.cid{i}"), valid_offer.clone().into_bytes()),
                6 => (format!("{uid}/answer/{cid}"), b"\xff\xfe\x00".to_vec()),
                7 => (format!("{uid}/ice/{cid}"), b"[]".to_vec()),
                8 => (format!("{uid}/offer/{cid}/extra"), b"{}".to_vec()),
                _ => (format!("{uid}/ice/{cid}"), br#"{"candidate":""}"#.to_vec()),
            }
        })
        .collect();
    for (topic, payload) in messages {
        client.publish(&topic, payload).await;
    }
    // The daemon is alive and answers a fresh viewer while the first keeps streaming.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fresh = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    assert_eq!(fresh.frames, 10, "{fresh:?}");
    stop.notify_one();
    let report = viewer.await.unwrap().unwrap();
    assert!(report.error.is_none(), "viewer {viewer_cid}: {report:?}");
    assert!(report.frames > 100, "the viewer kept receiving: {report:?}");
    assert_eq!(report.counter_gaps, 0, "{report:?}");
    assert_eq!(report.counter_resets, 0, "{report:?}");
    let (rss_after, _) = rss_kb_and_fds(daemon.pid());
    eprintln!("flood: daemon RSS {rss_before} kB before, {rss_after} kB after 10,000 messages");
    assert!(
        rss_after < rss_before + 20 * 1024,
        "memory stays flat: {rss_before} kB -> {rss_after} kB"
    );
}

/// Sessions one after another and at once leave no viewers, descriptors or memory behind.
/// `SPYGLASS_SOAK_SESSIONS` / `SPYGLASS_SOAK_PARALLEL` scale it up (`make soak`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_leak_nothing() {
    let sequential: usize = std::env::var("SPYGLASS_SOAK_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let parallel: usize = std::env::var("SPYGLASS_SOAK_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let broker = Broker::start();
    // One place more than the parallel viewers: the last sequential session may still be closing.
    let max = (parallel + 1).to_string();
    let daemon = Daemon::start(&broker, &["--max-viewers", &max]);
    wait_online(&broker, &daemon).await;
    let status_topic = format!("{}/status", daemon.id);

    // Warm up (codec, threads, allocator arenas), then take the baseline.
    for _ in 0..3 {
        let r = spyglass::view::run(view_options(&broker, &daemon, 5))
            .await
            .unwrap();
        assert_eq!(r.frames, 5, "{r:?}");
    }
    settle(&broker, &status_topic).await;
    let (rss_base, fds_base) = rss_kb_and_fds(daemon.pid());

    for i in 0..sequential {
        let r = spyglass::view::run(view_options(&broker, &daemon, 5))
            .await
            .unwrap();
        assert_eq!(r.frames, 5, "session {i}: {r:?}");
    }
    let runs = (0..parallel).map(|_| spyglass::view::run(view_options(&broker, &daemon, 30)));
    for r in futures_join_all(runs).await {
        let r = r.unwrap();
        assert_eq!(r.frames, 30, "{r:?}");
    }
    settle(&broker, &status_topic).await;
    let (rss_end, fds_end) = rss_kb_and_fds(daemon.pid());
    eprintln!(
        "sessions: {sequential} sequential + {parallel} parallel; RSS {rss_base} kB -> {rss_end} kB; \
         descriptors {fds_base} -> {fds_end}"
    );
    assert!(
        fds_end <= fds_base,
        "descriptors back to baseline: {fds_base} -> {fds_end}"
    );
    assert!(
        rss_end <= rss_base + 5 * 1024,
        "RSS grew by at most 5 MB: {rss_base} -> {rss_end} kB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_keeps_viewers_streaming_and_the_device_comes_back_online() {
    let mut broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.timeout = Duration::from_secs(60);
    options.stop = Some(Arc::clone(&stop));
    let viewer = tokio::spawn(spyglass::view::run(options));
    let status_topic = format!("{}/status", daemon.id);
    {
        let mut c = TestClient::connect(&broker, &[status_topic.clone()]).await;
        c.wait_json(&status_topic, Duration::from_secs(15), |v| {
            v["viewers"] == 1
        })
        .await;
    }
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = std::time::Instant::now();
    broker.restart();
    // The new broker has no retained status: the device publishes it again on reconnect.
    let mut c = TestClient::connect(&broker, &[status_topic.clone()]).await;
    let status = c
        .wait_json(&status_topic, Duration::from_secs(20), |v| {
            v["online"] == true
        })
        .await;
    eprintln!(
        "device back online {} ms after the broker returned",
        restarted.elapsed().as_millis()
    );
    assert_eq!(
        status["viewers"], 1,
        "the WebRTC session survived the outage: {status}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.notify_one();
    let report = viewer.await.unwrap().unwrap();
    assert!(
        report.frames > 120,
        "frames kept flowing through the outage: {report:?}"
    );
    assert_eq!(report.counter_gaps, 0, "{report:?}");
}

/// Wait until the current (retained) status shows no viewers, then a little longer for the
/// closed sessions to be torn down.
async fn settle(broker: &Broker, status_topic: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = TestClient::connect(broker, &[status_topic.to_string()]).await;
        let current = c
            .wait_json(status_topic, Duration::from_secs(5), |_| true)
            .await;
        if current["viewers"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "viewers never returned to 0: {current}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A real offer SDP (recvonly H.264) from the viewer side's peer factory.
fn support_offer_sdp() -> String {
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 \
00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=rtpmap:102 H264/90000\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        .to_string()
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F: Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
