//! Hostile viewers (issue 12): candidates that would make the device connect or send where a
//! viewer says, floods of candidates, and viewers that vanish without a goodbye. A real Mosquitto,
//! a real spyglass process, real WebRTC peers; every address named anywhere is on loopback.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use spyglass::peer::candidates::{MAX_CANDIDATE_PAIRS, MAX_REMOTE_CANDIDATES};
use spyglass::peer::{ICE_CHECK_INTERVAL, ICE_MAX_BINDING_REQUESTS};
use support::*;

/// A STUN Binding request: type 0x0001 and the magic cookie.
fn is_binding_request(packet: &[u8]) -> bool {
    packet.len() >= 20 && packet[..2] == [0, 1] && packet[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// UDP sockets on 127.0.0.1 that record every STUN Binding request they get: (port, when).
struct Sinks {
    ports: Vec<u16>,
    hits: Arc<Mutex<Vec<(u16, Instant)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sinks {
    async fn bind(n: usize) -> Sinks {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let mut ports = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = socket.local_addr().unwrap().port();
            ports.push(port);
            let hits = Arc::clone(&hits);
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                    if is_binding_request(&buf[..n]) {
                        hits.lock().unwrap().push((port, Instant::now()));
                    }
                }
            }));
        }
        Sinks { ports, hits, tasks }
    }

    fn hits(&self) -> Vec<(u16, Instant)> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An offer from a real (closed) peer connection, with `lines` appended to its one media
/// section (its own candidates removed).
async fn offer_with(lines: impl Iterator<Item = String>) -> String {
    let mut sdp = recvonly_offer(&[RtpCodecKind::Video], false).await;
    assert!(sdp.ends_with("\r\n") && sdp.matches("m=").count() == 1);
    for line in lines {
        sdp.push_str(&line);
        sdp.push_str("\r\n");
    }
    sdp
}

/// Issue 12, item 1: `tcp ... tcptype passive` candidates, in the offer and trickled, make the
/// device open no TCP connection at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_candidates_make_the_device_connect_nowhere() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--peer-timeout", "6"]);
    wait_online(&broker, &daemon).await;

    // A listener the test holds, counting whatever connects to it, and closed ports.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let closed: Vec<u16> = (0..16).map(|_| free_port()).collect();
    let tcp = |i: usize| {
        let port = if i.is_multiple_of(2) {
            open_port
        } else {
            closed[(i / 2) % closed.len()]
        };
        format!("candidate:{i} 1 tcp 2105524479 127.0.0.1 {port} typ host tcptype passive")
    };

    let before = proc_stats(daemon.pid());
    // 200 in the offer's SDP...
    let offer = offer_with((0..200).map(|i| format!("a={}", tcp(i)))).await;
    let cid = "tcpflood";
    offer_and_wait_answer(&broker, &daemon, cid, &offer).await;
    // ...and 2,000 trickled after the answer.
    let client = TestClient::connect(&broker, &[]).await;
    let ice_topic = format!("{}/ice/{cid}", daemon.id);
    for i in 0..2000 {
        let msg = serde_json::json!({"candidate": tcp(i), "sdpMid": "0", "sdpMLineIndex": 0});
        client.publish(&ice_topic, msg.to_string()).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = proc_stats(daemon.pid());

    // A fresh viewer still streams.
    let fresh = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    // The flooding session ends at its peer timeout and says what it refused.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ended = |log: &str| {
        log.lines()
            .any(|l| l.contains("remote candidates:") && l.contains(cid))
    };
    while !ended(&daemon.log()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    let summary = daemon
        .log()
        .lines()
        .find(|l| l.contains("remote candidates:") && l.contains(cid))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "tcp candidates: 200 in the offer + 2000 trickled; connections accepted by the listener: {}; \
         daemon fds {} -> {} ({:+}); fresh viewer frames {}; daemon: {summary}",
        accepted.load(Ordering::Relaxed),
        before.fds,
        after.fds,
        after.fds as i64 - before.fds as i64,
        fresh.frames
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 0, "the device connected");
    assert!(
        after.fds <= before.fds + 50,
        "descriptors: {} -> {}",
        before.fds,
        after.fds
    );
    assert_eq!(fresh.frames, 10, "{:?}", fresh.error);
    assert!(summary.contains("0 handed to ICE"), "{summary}");
}

/// Issue 12, item 2: an offer naming 1,000 UDP addresses gets at most the cap of candidate pairs
/// checked, each pair at most webrtc's number of binding requests, paced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_naming_1000_addresses_gets_at_most_the_cap_of_pairs_checked() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let sinks = Sinks::bind(1000).await;
    let offer = offer_with(
        sinks
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("a=candidate:{i} 1 udp 1 127.0.0.1 {port} typ host")),
    )
    .await;
    let size = serde_json::json!({"type": "offer", "sdp": offer})
        .to_string()
        .len();
    assert!(size < 64 * 1024, "the offer fits the message limit: {size}");
    let t0 = Instant::now();
    offer_and_wait_answer(&broker, &daemon, "pairs", &offer).await;
    // Each pair fails after its binding requests (1.4 s); wait well past that.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let hits = sinks.hits();

    let mut per_port: HashMap<u16, Vec<Instant>> = HashMap::new();
    for (port, at) in &hits {
        per_port.entry(*port).or_default().push(*at);
    }
    let max_per_pair = per_port.values().map(Vec::len).max().unwrap_or(0);
    // Requests to one pair within any 100 ms, and to all pairs within any second.
    let window = |times: &mut Vec<Instant>, span: Duration| {
        times.sort();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t - times[i] < span)
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    let pair_burst = per_port
        .values()
        .map(|t| window(&mut t.clone(), Duration::from_millis(100)))
        .max()
        .unwrap_or(0);
    let mut all: Vec<Instant> = hits.iter().map(|(_, t)| *t).collect();
    let per_second = window(&mut all, Duration::from_secs(1));
    let span = match (all.first(), all.last()) {
        (Some(a), Some(b)) => (*b - *a).as_millis(),
        _ => 0,
    };
    eprintln!(
        "1000 candidates in the offer ({size} bytes): {} of 1000 sinks got binding requests \
         (cap {MAX_REMOTE_CANDIDATES} remote candidates, {MAX_CANDIDATE_PAIRS} pairs); {} requests \
         in {span} ms, first {} ms after the offer; at most {max_per_pair} per pair (limit {}), \
         at most {pair_burst} to one pair in 100 ms, at most {per_second} in any second",
        per_port.len(),
        hits.len(),
        all.first().map_or(0, |t| (*t - t0).as_millis()),
        ICE_MAX_BINDING_REQUESTS as usize + 1,
    );
    assert!(!per_port.is_empty(), "loopback candidates are allowed here");
    assert!(per_port.len() <= MAX_REMOTE_CANDIDATES.min(MAX_CANDIDATE_PAIRS));
    assert!(max_per_pair <= ICE_MAX_BINDING_REQUESTS as usize + 1);
    // Paced: one request per pair per check interval, with room for the immediate checks webrtc
    // adds when candidates arrive.
    let interval_ms = ICE_CHECK_INTERVAL.as_millis() as usize;
    assert!(
        pair_burst <= 100usize.div_ceil(interval_ms) + 5,
        "{pair_burst} requests to one pair in 100 ms"
    );
    assert!(
        per_second <= per_port.len() * (1000 / interval_ms + 5),
        "{per_second} requests in one second"
    );
    assert!(
        hits.len() <= per_port.len() * (ICE_MAX_BINDING_REQUESTS as usize + 1),
        "{} requests",
        hits.len()
    );
}

/// Issue 12, item 2: without `--rtc-allow-loopback on` the device sends nothing to loopback
/// addresses a viewer names; a viewer on loopback still connects (the device answers its checks
/// and learns its address as peer-reflexive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_candidates_are_refused_by_default_yet_a_loopback_viewer_connects() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--rtc-allow-loopback", "off"]);
    wait_online(&broker, &daemon).await;
    let sinks = Sinks::bind(20).await;
    let mut lines: Vec<String> = sinks
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("a=candidate:{i} 1 udp 2130706431 127.0.0.1 {port} typ host"))
        .collect();
    lines.push("a=candidate:99 1 udp 2130706431 ::1 9 typ host".into());
    lines.push("a=candidate:98 1 udp 2130706431 ::ffff:127.0.0.1 9 typ host".into());
    let offer = offer_with(lines.into_iter()).await;
    offer_and_wait_answer(&broker, &daemon, "loopback", &offer).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hits = sinks.hits().len();

    let viewer = spyglass::view::run(view_options(&broker, &daemon, 10))
        .await
        .unwrap();
    eprintln!(
        "loopback refused: {hits} binding requests at 20 loopback sinks; a loopback viewer got {} frames",
        viewer.frames
    );
    assert_eq!(hits, 0);
    assert_eq!(viewer.frames, 10, "{:?}", viewer.error);
    assert!(daemon.log().contains("loopback address"));
}

/// Issue 12, item 2: 100,000 candidates trickled into a connected session cost less than 10 MB,
/// and the viewer keeps streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_100000_candidates_into_a_connected_session_costs_little_memory() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.timeout = Duration::from_secs(300);
    options.stop = Some(Arc::clone(&stop));
    let cid = options.cid.clone();
    let viewer = tokio::spawn(spyglass::view::run(options));
    let status_topic = format!("{}/status", daemon.id);
    let mut client = TestClient::connect(&broker, std::slice::from_ref(&status_topic)).await;
    client
        .wait_json(&status_topic, Duration::from_secs(15), |v| {
            v["viewers"] == 1
        })
        .await;
    // Let the session settle before the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = proc_stats(daemon.pid());

    let ice_topic = format!("{}/ice/{cid}", daemon.id);
    let started = Instant::now();
    for i in 0..100_000u32 {
        let candidate = match i % 4 {
            0 => format!(
                "candidate:{i} 1 udp 2130706431 127.0.0.1 {} typ host",
                1024 + i % 60000
            ),
            1 => format!(
                "candidate:{i} 1 tcp 2105524479 127.0.0.1 {} typ host tcptype passive",
                1024 + i % 60000
            ),
            2 => format!(
                "candidate:{i} 1 udp 1677729535 127.0.0.{} {} typ srflx raddr 0.0.0.0 rport 0",
                1 + i % 250,
                1024 + i % 60000
            ),
            _ => format!(
                "candidate:{i} 1 udp 2130706431 ::1 {} typ host",
                1024 + i % 60000
            ),
        };
        let msg = serde_json::json!({"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0});
        client.publish(&ice_topic, msg.to_string()).await;
    }
    let published = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = proc_stats(daemon.pid());
    stop.notify_one();
    let report = viewer.await.unwrap().unwrap();
    let grew_kb = after.rss_kb as i64 - before.rss_kb as i64;
    eprintln!(
        "100000 candidates trickled into a connected session in {:.1} s: daemon RSS {} -> {} kB \
         ({grew_kb:+} kB), fds {} -> {}; the viewer got {} frames, {} counter gaps",
        published.as_secs_f64(),
        before.rss_kb,
        after.rss_kb,
        before.fds,
        after.fds,
        report.frames,
        report.counter_gaps
    );
    assert!(report.error.is_none(), "{:?}", report.error);
    assert!(grew_kb < 10 * 1024, "RSS grew by {grew_kb} kB");
    assert!(report.frames > 100, "{}", report.frames);
}

/// Issue 12, item 10: a viewer killed without a goodbye (SIGKILL of `spyglass view`) is counted
/// out within 15 s, and the camera goes idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_killed_without_a_goodbye_is_counted_out_within_15_s() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let status_topic = format!("{}/status", daemon.id);
    let mut watcher = TestClient::connect(&broker, std::slice::from_ref(&status_topic)).await;
    let mut view = std::process::Command::new(spyglass_bin())
        .args([
            "view",
            "--mqtt",
            &broker.url(),
            "--id",
            &daemon.id,
            "--frames",
            "1000000",
            "--timeout",
            "300",
            "--rtc-bind",
            "127.0.0.1",
            "--mdns",
            "off",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    watcher
        .wait_json(&status_topic, Duration::from_secs(20), |v| {
            v["viewers"] == 1 && v["video"]["state"] == "live"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    view.kill().unwrap(); // SIGKILL: no DTLS close_notify, no goodbye.
    let killed = Instant::now();
    view.wait().unwrap();
    watcher
        .wait_json(&status_topic, Duration::from_secs(15), |v| {
            v["viewers"] == 0 && v["video"]["state"] == "idle"
        })
        .await;
    let seconds = killed.elapsed().as_secs_f64();
    eprintln!(
        "a SIGKILLed viewer was counted out and the camera idle {seconds:.1} s after the kill"
    );
    assert!(seconds <= 15.0);
}
