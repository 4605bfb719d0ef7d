//! End-to-end tests of the live video spine: a real Mosquitto, a real spyglass process with the
//! test pattern, and real WebRTC viewers that decode H.264 and read the pattern's pixels.

mod support;

use std::time::Duration;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_decodes_live_frames_at_the_configured_size_without_gaps() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--size", "320x240", "--fps", "30"]);
    let status = wait_online(&broker, &daemon).await;
    assert_eq!(status["video"]["codec"], "H264");
    assert_eq!(status["video"]["width"], 320);
    assert_eq!(status["video"]["height"], 240);
    assert_eq!(status["video"]["fps"], 30);
    assert_eq!(status["viewers"], 0);
    assert_eq!(status["max_viewers"], 4);
    assert!(status["audio"].is_null());

    let report = spyglass::view::run(view_options(&broker, &daemon, 90))
        .await
        .unwrap();
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.frames, 90, "{report:?}");
    assert_eq!((report.width, report.height), (320, 240));
    // The test pattern's code is read from the decoded pixels of (nearly) every frame.
    assert!(report.stamped_frames >= 85, "{report:?}");
    let (first, last) = (report.first_counter.unwrap(), report.last_counter.unwrap());
    assert!(
        last >= first + 80,
        "counter must advance: {first} -> {last}"
    );
    assert_eq!(
        report.counter_gaps, 0,
        "frames missing at steady state: {report:?}"
    );
    let latency = report.latency_ms.clone().unwrap();
    assert!(latency.min >= 0.0, "capture precedes decoding: {latency:?}");
    assert!(report.first_frame_ms.unwrap() > 0.0);
    eprintln!(
        "first frame {:.0} ms after the offer; latency median {:.0} ms",
        report.first_frame_ms.unwrap(),
        latency.median
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_are_served_by_one_encoder_and_status_counts_them() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let status_topic = format!("{}/status", daemon.id);
    let mut watcher = TestClient::connect(&broker, &[status_topic.clone()]).await;

    let (a, b) = tokio::join!(
        spyglass::view::run(view_options(&broker, &daemon, 60)),
        spyglass::view::run(view_options(&broker, &daemon, 60)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.frames, b.frames), (60, 60), "{a:?} {b:?}");
    // Both saw the same counters: the same captured frames.
    assert!(a.stamped_frames > 50 && b.stamped_frames > 50);
    watcher
        .wait_json(&status_topic, Duration::from_secs(10), |v| {
            v["viewers"] == 2
        })
        .await;
    // The viewers closed their peer connections (DTLS close_notify).
    watcher
        .wait_json(&status_topic, Duration::from_secs(5), |v| v["viewers"] == 0)
        .await;
    let log = daemon.log();
    assert_eq!(
        log.matches("capture started").count(),
        1,
        "one capture/encoder pipeline for both viewers:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_beyond_max_viewers_gets_busy() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--max-viewers", "1"]);
    wait_online(&broker, &daemon).await;
    let first = tokio::spawn(spyglass::view::run(view_options(&broker, &daemon, 120)));
    // Give the first viewer time to be admitted.
    let status_topic = format!("{}/status", daemon.id);
    let mut watcher = TestClient::connect(&broker, &[status_topic.clone()]).await;
    watcher
        .wait_json(&status_topic, Duration::from_secs(15), |v| {
            v["viewers"] == 1
        })
        .await;

    let second = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    let err = second.error.expect("second viewer must be refused");
    assert_eq!(err.code.as_str(), "busy");
    assert_eq!(second.frames, 0);
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        first.frames, 120,
        "the first viewer keeps streaming: {first:?}"
    );
    // The first viewer closed its connection: its place is free again at once (DTLS close),
    // not only after ICE consent lapses.
    watcher
        .wait_json(&status_topic, Duration::from_secs(3), |v| v["viewers"] == 0)
        .await;
    let third = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    assert_eq!(third.frames, 10, "{third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_offers_get_errors_while_a_viewer_keeps_receiving() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let viewer = tokio::spawn(spyglass::view::run(view_options(&broker, &daemon, 150)));
    let status_topic = format!("{}/status", daemon.id);
    let error_topic = format!("{}/error/bad1", daemon.id);
    let mut client =
        TestClient::connect(&broker, &[status_topic.clone(), error_topic.clone()]).await;
    client
        .wait_json(&status_topic, Duration::from_secs(15), |v| {
            v["viewers"] == 1
        })
        .await;

    let offer_topic = format!("{}/offer/bad1", daemon.id);
    let huge = serde_json::json!({"type": "offer", "sdp": "v=0\r\n".repeat(20_000)}).to_string();
    let cases: [&[u8]; 6] = [
        b"not json",
        br#"{"type":"answer","sdp":"v=0"}"#,
        br#"{"type":"offer"}"#,
        br#"{"type":"offer","sdp":"this is not SDP"}"#,
        b"\xff\xfe",
        huge.as_bytes(),
    ];
    for payload in cases {
        client.publish(&offer_topic, payload.to_vec()).await;
        let err = client
            .wait_json(&error_topic, Duration::from_secs(10), |_| true)
            .await;
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned();
        assert_eq!(err["code"], "bad-request", "payload {shown:?} got {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // An offer with video but no H.264.
    let vp8_only = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 \
00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=rtpmap:96 VP8/90000\r\n";
    let offer = serde_json::json!({"type": "offer", "sdp": vp8_only}).to_string();
    client.publish(&offer_topic, offer).await;
    let err = client
        .wait_json(&error_topic, Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(err["code"], "unsupported", "{err}");

    let report = viewer.await.unwrap().unwrap();
    assert_eq!(
        report.frames, 150,
        "the existing viewer kept receiving: {report:?}"
    );
    assert_eq!(report.counter_gaps, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_daemon_turns_the_retained_status_offline() {
    let broker = Broker::start();
    let mut daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    daemon.kill();
    let topic = format!("{}/status", daemon.id);
    // The broker notices the dead connection (keep-alive) and publishes the retained will; a new
    // subscriber sees it as the retained status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let mut client = TestClient::connect(&broker, &[topic.clone()]).await;
        let got = tokio::time::timeout(Duration::from_secs(2), client.messages.recv()).await;
        if let Ok(Some((_, payload, retained))) = got {
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            if v == serde_json::json!({"online": false}) {
                assert!(retained);
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never turned offline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_publishes_offline() {
    let broker = Broker::start();
    let mut daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let topic = format!("{}/status", daemon.id);
    let mut client = TestClient::connect(&broker, &[topic.clone()]).await;
    client
        .wait_json(&topic, Duration::from_secs(5), |v| v["online"] == true)
        .await;
    let status = daemon.terminate().expect("daemon exits");
    assert!(status.success(), "{status:?}");
    client
        .wait_json(&topic, Duration::from_secs(5), |v| {
            *v == serde_json::json!({"online": false})
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_connects_is_reaped_after_the_peer_timeout() {
    let broker = Broker::start();
    let daemon = Daemon::start(
        &broker,
        &[
            "--max-viewers",
            "1",
            "--max-connecting",
            "1",
            "--peer-timeout",
            "2",
        ],
    );
    wait_online(&broker, &daemon).await;
    let ghost_answer = format!("{}/answer/ghost", daemon.id);
    let ghost_error = format!("{}/error/ghost", daemon.id);
    let other_answer = format!("{}/answer/other", daemon.id);
    let other_error = format!("{}/error/other", daemon.id);
    let mut client = TestClient::connect(
        &broker,
        &[
            ghost_answer.clone(),
            ghost_error.clone(),
            other_answer.clone(),
            other_error.clone(),
        ],
    )
    .await;

    // A real offer from a peer that goes away at once: ICE can never complete.
    let offer = recvonly_offer(&[RtpCodecKind::Video], false).await;
    let msg = serde_json::json!({"type": "offer", "sdp": offer}).to_string();
    client
        .publish(&format!("{}/offer/ghost", daemon.id), msg.clone())
        .await;
    client
        .wait_json(&ghost_answer, Duration::from_secs(10), |v| {
            v["type"] == "answer"
        })
        .await;

    // A session still connecting holds no viewer's place: another offer is answered, and the
    // ghost (the one connecting longest, with --max-connecting 1) gives way with `busy`.
    client
        .publish(&format!("{}/offer/other", daemon.id), msg)
        .await;
    let err = client
        .wait_json(&ghost_error, Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(err["code"], "busy", "{err}");
    client
        .wait_json(&other_answer, Duration::from_secs(10), |v| {
            v["type"] == "answer"
        })
        .await;
    // After the peer timeout that one ends too, telling its viewer why, and a real viewer streams.
    let err = client
        .wait_json(&other_error, Duration::from_secs(10), |_| true)
        .await;
    assert_eq!(err["code"], "unreachable", "{err}");
    let report = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    assert_eq!(report.frames, 10, "{report:?}");
}
