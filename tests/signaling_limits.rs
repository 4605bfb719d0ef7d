//! Hostile signaling (issue 12, items 7, 8 and 9) against the real daemon, a real Mosquitto and
//! real WebRTC viewers: floods of early candidates, offers that hold places without connecting,
//! floods of minimal offers, and bad offers over a slow broker link. Each test prints its
//! figure. Everything listens on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The device's retained status as a new subscriber gets it.
async fn current_status(broker: &Broker, topic: &str) -> serde_json::Value {
    let mut c = TestClient::connect(broker, &[topic.to_string()]).await;
    c.wait_json(topic, Duration::from_secs(5), |_| true).await
}

/// Watch a device until told to stop; returns the viewer task and its stop switch.
fn watch_until_stopped(
    broker: &Broker,
    daemon: &Daemon,
) -> (
    tokio::task::JoinHandle<Result<spyglass::view::ViewReport, spyglass::view::ViewError>>,
    Arc<tokio::sync::Notify>,
) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(broker, daemon, u64::MAX);
    options.timeout = Duration::from_secs(180);
    options.stop = Some(Arc::clone(&stop));
    (tokio::spawn(spyglass::view::run(options)), stop)
}

/// Item 7: 64 CIDs x 64 candidates of nearly 64 KiB each (what used to be held: ~256 MiB), then
/// the same number of well-formed candidates near the length limit: RSS grows by less than
/// 32 MB, and a viewer still streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_early_candidates_is_held_within_bounds() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    // A first session warms the daemon up (threads, codec, allocator arenas).
    let warm = spyglass::view::run(view_options(&broker, &daemon, 5))
        .await
        .unwrap();
    assert_eq!(warm.frames, 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kb(daemon.pid());
    let client = TestClient::connect(&broker, &[]).await;
    let uid = daemon.id.clone();
    // Just under the 64 KiB message limit, so only the candidate length limit stops them.
    let padding = "x".repeat(64 * 1024 - 200);
    for cid in 0..64 {
        for n in 0..64 {
            let payload = format!(
                r#"{{"candidate":"candidate:{n} 1 udp 1 127.0.0.1 {} typ host {padding}","sdpMid":"0"}}"#,
                1000 + n
            );
            client
                .publish(&format!("{uid}/ice/flood{cid}"), payload)
                .await;
        }
    }
    // Candidates that are held: under the 512-byte limit.
    let filler = "y".repeat(400);
    for cid in 0..64 {
        for n in 0..64 {
            let payload = format!(
                r#"{{"candidate":"candidate:{n} 1 udp 1 127.0.0.1 {} typ host {filler}","sdpMid":"0"}}"#,
                1000 + n
            );
            client
                .publish(&format!("{uid}/ice/held{cid}"), payload)
                .await;
        }
    }
    // A round trip through the daemon: once it answers this, it has read the flood.
    let mut probe = TestClient::connect(&broker, &[format!("{uid}/error/probe")]).await;
    probe.publish(&format!("{uid}/offer/probe"), "nope").await;
    probe
        .wait_json(
            &format!("{uid}/error/probe"),
            Duration::from_secs(60),
            |_| true,
        )
        .await;
    let after = rss_kb(daemon.pid());
    eprintln!(
        "early candidate flood (4096 x 64 KiB + 4096 x 0.5 KiB): daemon RSS {before} kB -> {after} kB \
         (+{} kB; limit 32768 kB)",
        after.saturating_sub(before)
    );
    assert!(
        after < before + 32 * 1024,
        "RSS grew by {} kB",
        after - before
    );
    let fresh = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    assert_eq!(fresh.frames, 10, "{fresh:?}");
}

/// Item 8: four CIDs that never connect and re-offer every 29 s (just inside the 30 s peer
/// timeout) never keep a viewer out: connecting sessions hold no viewer's place. The status
/// says whether an offer would be taken, and the next offer gets what it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_never_connect_hold_no_place_and_the_status_tells_the_truth() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--max-viewers", "1", "--peer-timeout", "30"]);
    wait_online(&broker, &daemon).await;
    let uid = daemon.id.clone();
    let status_topic = format!("{uid}/status");
    let ghosts: Vec<String> = (1..=4).map(|g| format!("ghost{g}")).collect();
    let mut subscriptions = vec![status_topic.clone(), format!("{uid}/error/late")];
    subscriptions.extend(ghosts.iter().map(|g| format!("{uid}/answer/{g}")));
    let mut client = TestClient::connect(&broker, &subscriptions).await;
    // Real offers whose peers are gone: ICE can never complete.
    let offer = recvonly_offer(&[RtpCodecKind::Video], false).await;
    let msg = serde_json::json!({"type": "offer", "sdp": offer}).to_string();
    let offer_all = |client: &TestClient| {
        let msg = msg.clone();
        let topics: Vec<String> = ghosts.iter().map(|g| format!("{uid}/offer/{g}")).collect();
        let client = client.client.clone();
        async move {
            for topic in topics {
                client
                    .publish(
                        topic,
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        msg.clone(),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let started = Instant::now();
    for round in 0..2 {
        if round == 1 {
            // The ghosts' second round, 29 s after the first.
            let wait = Duration::from_secs(29).saturating_sub(started.elapsed());
            tokio::time::sleep(wait).await;
        }
        offer_all(&client).await;
        let mut waiting: Vec<String> = ghosts.iter().map(|g| format!("{uid}/answer/{g}")).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !waiting.is_empty() {
            let (topic, _, _) = tokio::time::timeout_at(deadline, client.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("no answers on {waiting:?}"))
                .unwrap();
            waiting.retain(|t| *t != topic);
        }
        // The status says there is room...
        let status = current_status(&broker, &status_topic).await;
        assert_eq!(
            (&status["viewers"], &status["max_viewers"]),
            (&0.into(), &1.into())
        );
        // ...and a viewer is let in at once.
        let report = spyglass::view::run(view_options(&broker, &daemon, 10))
            .await
            .unwrap();
        eprintln!(
            "round {round} ({:.0} s): 4 ghosts connecting, viewer answered after {:.0} ms, first frame \
             after {:.0} ms (bound: no wait)",
            started.elapsed().as_secs_f64(),
            report.answer_ms.unwrap_or(f64::NAN),
            report.first_frame_ms.unwrap_or(f64::NAN)
        );
        assert_eq!(report.frames, 10, "{report:?}");
    }
    // A connected viewer fills the place: the status says so, and the next offer is busy. (First
    // the last viewer leaves: the status says when its place is free.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while current_status(&broker, &status_topic).await["viewers"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the last viewer never left the status"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (viewer, stop) = watch_until_stopped(&broker, &daemon);
    let deadline = Instant::now() + Duration::from_secs(20);
    while current_status(&broker, &status_topic).await["viewers"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the viewer never showed in the status"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .publish(&format!("{uid}/offer/late"), msg.clone())
        .await;
    let refusal = client
        .wait_json(
            &format!("{uid}/error/late"),
            Duration::from_secs(10),
            |_| true,
        )
        .await;
    assert_eq!(refusal["code"], "busy", "{refusal}");
    stop.notify_one();
    let report = viewer.await.unwrap().unwrap();
    assert!(report.frames > 0, "{report:?}");
}

/// Item 8: 50,000 minimal offers (`{"type":"offer","sdp":"x"}`) on distinct CIDs take no session
/// and do not delay a viewer's answer past 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_minimal_offers_do_not_delay_an_answer() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let uid = daemon.id.clone();
    let client = TestClient::connect(&broker, &[]).await;
    let flood_client = client.client.clone();
    let (halfway_tx, mut halfway) = mpsc::unbounded_channel();
    let flood = tokio::spawn(async move {
        let began = Instant::now();
        for i in 0..50_000u32 {
            flood_client
                .publish(
                    format!("{uid}/offer/m{i}"),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    br#"{"type":"offer","sdp":"x"}"#.to_vec(),
                )
                .await
                .unwrap();
            if i == 15_000 {
                let _ = halfway_tx.send(());
            }
        }
        began.elapsed()
    });
    halfway.recv().await.unwrap();
    let report = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    let flood_time = flood.await.unwrap();
    eprintln!(
        "50,000 minimal offers published in {:.1} s; a viewer's answer during the flood after \
         {:?} ms (limit 2000 ms); device error: {:?}",
        flood_time.as_secs_f64(),
        report.answer_ms.map(f64::round),
        report.error
    );
    let answer_ms = report.answer_ms.expect("an answer");
    assert_eq!(report.frames, 10, "{report:?}");
    assert!(answer_ms < 2000.0, "answer after {answer_ms:.0} ms");
}

/// A TCP proxy on 127.0.0.1 that delays everything by `delay` in both directions (a delay line:
/// bytes keep flowing, each chunk `delay` after it arrived).
async fn delaying_proxy(upstream: u16, delay: Duration) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(delay_line(cr, sw, delay));
            tokio::spawn(delay_line(sr, cw, delay));
        }
    });
    (port, task)
}

async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = tokio::time::Instant::now() + delay;
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Item 9: with 50 ms added to the device's broker link, 20,000 bad offers (each of which
/// deserves an error reply) do not delay a viewer's answer past 2 s: error replies are
/// rate-limited and never queued ahead of answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_over_a_slow_broker_link_do_not_crowd_out_an_answer() {
    let broker = Broker::start();
    let (proxy_port, proxy) = delaying_proxy(broker.port, Duration::from_millis(50)).await;
    let daemon = Daemon::start(
        &broker,
        &["--mqtt", &format!("mqtt://127.0.0.1:{proxy_port}")],
    );
    wait_online(&broker, &daemon).await;
    let uid = daemon.id.clone();
    let attacker = TestClient::connect(&broker, &[format!("{uid}/error/+")]).await;
    let flood_client = attacker.client.clone();
    let (halfway_tx, mut halfway) = mpsc::unbounded_channel();
    let flood = tokio::spawn(async move {
        let began = Instant::now();
        for i in 0..20_000u32 {
            let payload: &[u8] = match i % 4 {
                0 => b"{not json",
                1 => br#"{"type":"offer","sdp":"x"}"#,
                2 => br#"{"type":"answer","sdp":"v=0"}"#,
                _ => br#"{"type":"offer"}"#,
            };
            flood_client
                .publish(
                    format!("{uid}/offer/bad{}", i % 1000),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload.to_vec(),
                )
                .await
                .unwrap();
            if i == 5_000 {
                let _ = halfway_tx.send(());
            }
        }
        began.elapsed()
    });
    halfway.recv().await.unwrap();
    let report = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    let flood_time = flood.await.unwrap();
    // Count the error replies that went out while the flood lasted (and a little after).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut attacker = attacker;
    let mut errors = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(200), attacker.messages.recv()).await
    {
        errors += 1;
    }
    eprintln!(
        "20,000 bad offers in {:.1} s over a link with 50 ms added: the viewer's answer after \
         {:?} ms (limit 2000 ms); {errors} error replies went out; device error: {:?}",
        flood_time.as_secs_f64(),
        report.answer_ms.map(f64::round),
        report.error
    );
    let answer_ms = report.answer_ms.expect("an answer");
    assert_eq!(report.frames, 10, "{report:?}");
    assert!(answer_ms < 2000.0, "answer after {answer_ms:.0} ms");
    assert!(errors > 0, "bad offers still get some replies");
    proxy.abort();
}
