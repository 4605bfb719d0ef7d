//! The process source and H.264 passthrough (issue 16), against real producers: Debian's ffmpeg
//! writing raw I420 (`testsrc2`) and H.264 Annex B from libx264 with the settings rpicam-vid
//! uses (SPS/PPS before every IDR, an IDR every 30 frames, no B-frames), a real broker, a real
//! daemon process and the headless viewer decoding the pictures.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use support::*;

/// A marker in the producer's command line, to find its processes in /proc.
fn marker() -> String {
    format!(
        "spyglass-picam-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// ffmpeg's test source as raw I420, in real time; `extra` goes before the output options.
fn ffmpeg_i420(marker: &str, extra: &str) -> String {
    format!(
        "exec:ffmpeg -hide_banner -nostats -loglevel error -re -f lavfi \
         -i testsrc2=size=320x240:rate=30 {extra} -f rawvideo -pix_fmt yuv420p \
         -metadata comment={marker} -"
    )
}

/// ffmpeg's test source as H.264 from libx264 in `profile`, as rpicam-vid writes it: headers
/// before every IDR (`--inline`), an IDR every 30 frames (`--intra 30`), no B-frames.
fn ffmpeg_h264(marker: &str, profile: &str) -> String {
    format!(
        "exec:ffmpeg -hide_banner -nostats -loglevel error -re -f lavfi \
         -i testsrc2=size=320x240:rate=30 -c:v libx264 -preset veryfast -tune zerolatency \
         -profile:v {profile} -bf 0 -g 30 -pix_fmt yuv420p -x264-params repeat-headers=1 \
         -metadata comment={marker} -f h264 -"
    )
}

/// PIDs of the processes whose command line holds `marker`, other than `daemon` (whose
/// `--video` holds it too).
fn processes_with(marker: &str, daemon: u32) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pid != daemon)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    String::from_utf8_lossy(&cmdline)
                        .replace('\0', " ")
                        .contains(marker)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Children of `parent` that are zombies (exited, not reaped).
fn zombie_children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // `pid (comm) state ppid ...`; comm may hold spaces, so read after the last ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state == Some("Z") && ppid == Some(parent)
        })
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Decoded pictures are real: not black, not one flat grey, and they change.
fn assert_real_pictures(report: &spyglass::view::ViewReport) {
    let lumas: Vec<f64> = report.luma.iter().map(|(_, l)| *l).collect();
    assert!(!lumas.is_empty(), "{report:?}");
    assert!(
        lumas.iter().all(|&l| (40.0..220.0).contains(&l)),
        "mean luma outside a test picture's range: {lumas:?}"
    );
    let (lo, hi) = lumas
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &l| (lo.min(l), hi.max(l)));
    assert!(hi > lo, "the pictures never change: {lumas:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_i420_from_a_process_is_encoded_and_decoded() {
    let broker = Broker::start();
    let mark = marker();
    let daemon = Daemon::start(
        &broker,
        &["--video", &ffmpeg_i420(&mark, ""), "--encoder", "openh264"],
    );
    let status = wait_online(&broker, &daemon).await;
    let pid = daemon.pid();
    assert_eq!(status["video"]["encoder"], "openh264");
    assert!(status["video"]["idr_period_ms"].is_null());
    // Nothing runs until someone watches.
    assert!(processes_with(&mark, pid).is_empty());
    let report = spyglass::view::run(view_options(&broker, &daemon, 60))
        .await
        .unwrap();
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.frames, 60);
    assert_eq!((report.width, report.height), (320, 240));
    assert_real_pictures(&report);
    assert!(
        daemon.log().contains("ffmpeg"),
        "the log names the process source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_from_a_process_is_passed_through_in_its_own_profile() {
    let broker = Broker::start();
    let mark = marker();
    let daemon = Daemon::start(
        &broker,
        &[
            "--video",
            &ffmpeg_h264(&mark, "high"),
            "--exec-format",
            "h264",
        ],
    );
    let status_topic = format!("{}/status", daemon.id);
    let mut watcher = TestClient::connect(&broker, std::slice::from_ref(&status_topic)).await;
    let status = watcher
        .wait_json(&status_topic, Duration::from_secs(20), |v| {
            v["online"] == true
        })
        .await;
    assert_eq!(status["video"]["encoder"], "passthrough");

    // The headless viewer offers High (openh264 decodes it): it gets the stream as it is.
    let report = spyglass::view::run(view_options(&broker, &daemon, 75))
        .await
        .unwrap();
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.frames, 75);
    assert_eq!((report.width, report.height), (320, 240));
    assert_real_pictures(&report);
    eprintln!(
        "passthrough: first frame {:?} ms after the offer",
        report.first_frame_ms
    );
    // rpicam-vid cannot be asked for keyframes: the status states its IDR period (30 frames).
    let with_period = watcher
        .wait_json(&status_topic, Duration::from_secs(10), |v| {
            v["video"]["idr_period_ms"].is_u64()
        })
        .await;
    let period = with_period["video"]["idr_period_ms"].as_u64().unwrap();
    assert!((700..=1500).contains(&period), "IDR period {period} ms");

    // An offer that takes only baseline H.264 cannot receive High: `unsupported`, no picture.
    let cid = format!("baseline-{}", rand::random::<u32>());
    let error_topic = format!("{}/error/{cid}", daemon.id);
    let mut client = TestClient::connect(&broker, std::slice::from_ref(&error_topic)).await;
    let sdp = recvonly_offer(&[RtpCodecKind::Video], true).await;
    let offer = serde_json::json!({"type": "offer", "sdp": sdp}).to_string();
    client
        .publish(&format!("{}/offer/{cid}", daemon.id), offer)
        .await;
    let error = client
        .wait_json(&error_topic, Duration::from_secs(20), |_| true)
        .await;
    assert_eq!(error["code"], "unsupported", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("high") && message.contains("42e01f"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_profile_passthrough_and_a_process_restarted_after_it_exits() {
    let broker = Broker::start();
    let mark = marker();
    // The producer exits after one second of pictures, every time: spyglass starts it again
    // and the viewer keeps getting pictures across the restarts.
    let command = ffmpeg_h264(&mark, "main").replace("-f lavfi", "-t 1 -f lavfi");
    let daemon = Daemon::start(&broker, &["--video", &command, "--exec-format", "h264"]);
    wait_online(&broker, &daemon).await;
    let mut options = view_options(&broker, &daemon, 100);
    options.timeout = Duration::from_secs(40);
    let report = spyglass::view::run(options).await.unwrap();
    assert!(report.error.is_none(), "{report:?}");
    assert_eq!(report.frames, 100);
    assert_real_pictures(&report);
    let log = daemon.log();
    let starts = log.matches(": started").count();
    assert!(
        starts >= 3,
        "the producer was started {starts} times:\n{log}"
    );
    assert!(log.contains("exited"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_ends_with_the_pipeline_and_with_spyglass() {
    let broker = Broker::start();
    let mark = marker();
    let mut daemon = Daemon::start(&broker, &["--video", &ffmpeg_i420(&mark, "")]);
    wait_online(&broker, &daemon).await;
    let pid = daemon.pid();
    let report = spyglass::view::run(view_options(&broker, &daemon, 20))
        .await
        .unwrap();
    assert_eq!(report.frames, 20, "{report:?}");
    // The viewer left: the pipeline stops and the process with it, reaped.
    wait_until("the producer to end", Duration::from_secs(15), || {
        processes_with(&mark, pid).is_empty()
    })
    .await;
    assert!(zombie_children(daemon.pid()).is_empty());

    // Watching again starts it again; SIGKILL to spyglass leaves no producer behind.
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.stop = Some(Arc::clone(&stop));
    let viewer = tokio::spawn(spyglass::view::run(options));
    wait_until("the producer to start", Duration::from_secs(20), || {
        !processes_with(&mark, pid).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.kill();
    wait_until(
        "the producer to end after SIGKILL",
        Duration::from_secs(10),
        || processes_with(&mark, pid).is_empty(),
    )
    .await;
    stop.notify_one();
    let _ = viewer.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_of_garbage_is_bounded_and_refused() {
    let broker = Broker::start();
    let daemon = Daemon::start(
        &broker,
        &["--video", "exec:cat /dev/urandom", "--exec-format", "h264"],
    );
    wait_online(&broker, &daemon).await;
    let mut options = view_options(&broker, &daemon, 10);
    options.timeout = Duration::from_secs(25);
    let report = spyglass::view::run(options).await.unwrap();
    let error = report.error.clone().expect("an error reply");
    assert_eq!(
        error.code,
        spyglass::signaling::protocol::ErrorCode::Internal
    );
    assert!(error.message.contains("SPS"), "{error:?}");
    let log = daemon.log();
    assert!(
        log.contains("grew past") || log.contains("no H.264 start code"),
        "{log}"
    );
    // Megabytes of random bytes a second went in; memory stayed bounded.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kb < 200_000, "peak resident memory {peak_kb} kB");
}

/// `spyglass selftest` checks a process's H.264 the way it would be passed through (issue 16:
/// "`spyglass selftest` checks the stream"): packetized, depacketized and decoded, its profile
/// named; the producer ends with the self-test; a producer of garbage fails it.
#[test]
fn selftest_checks_a_stream_passed_through() {
    let selftest = |video: &str| {
        std::process::Command::new(spyglass_bin())
            .args(["selftest", "--video", video, "--exec-format", "h264"])
            .args(["--size", "320x240", "--fps", "30", "--seconds", "2"])
            .output()
            .unwrap()
    };
    let mark = marker();
    let run = selftest(&ffmpeg_h264(&mark, "main"));
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("encoder:          passthrough: H.264 main (profile-level-id 4d"),
        "{text}"
    );
    assert!(text.contains("result:           PASS"), "{text}");
    assert!(
        processes_with(&mark, 0).is_empty(),
        "the producer outlived the self-test"
    );

    let garbage = selftest("exec:head -c 4000000 /dev/urandom");
    let text = String::from_utf8_lossy(&garbage.stdout);
    assert!(!garbage.status.success(), "{text}");
    assert!(!text.contains("result:           PASS"), "{text}");
}
