//! End-to-end tests of the audio path: a real Mosquitto, a real spyglass process, real libasound
//! capture (ALSA's `file` plugin fed through a FIFO, so no sound card is needed), the real Opus
//! encoder and decoder, and real WebRTC viewers.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use spyglass::audio::tone_power;
use support::*;

/// The tone the fake microphone hears.
const MIC_HZ: f64 = 660.0;
const MIC_AMPLITUDE: f64 = 8000.0;
const RATE: f64 = 48000.0;

/// Writes the tone into `fifo` in real time, 20 ms at a time, as a sound card would deliver it;
/// reopens the FIFO whenever its reader (spyglass's ALSA source) closes it.
fn feed_fifo(fifo: PathBuf, stop: Arc<AtomicBool>) {
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        // Non-blocking open fails until a reader is there.
        let Ok(mut pipe) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(&fifo)
        else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut bytes = Vec::with_capacity(1920);
            for _ in 0..960 {
                let t = n as f64 / RATE;
                let s = (MIC_AMPLITUDE * (2.0 * std::f64::consts::PI * MIC_HZ * t).sin()) as i16;
                bytes.extend_from_slice(&s.to_le_bytes());
                n += 1;
            }
            match pipe.write(&bytes) {
                Ok(_) => {}
                // The pipe is full: this 20 ms is lost, as in an overrun.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The reader closed: wait for the next one.
                Err(_) => break,
            }
            next += Duration::from_millis(20);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// An ALSA configuration (`~/.asoundrc`) with a capture PCM `name` whose samples come from
/// `fifo`: the `file` plugin over the `null` device.
/// A capture device `spyglass_mic` made of ALSA's `file` plugin reading a FIFO that a thread
/// fills with the test tone in real time, in a temporary HOME. Dropping it stops the feeder.
struct FifoMic {
    home: PathBuf,
    stop: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl FifoMic {
    fn start(tag: &str) -> FifoMic {
        let home = temp_dir(tag);
        let fifo = home.join("mic.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        write_asoundrc(&home, "spyglass_mic", &fifo);
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || feed_fifo(fifo, stop))
        };
        FifoMic {
            home,
            stop,
            feeder: Some(feeder),
        }
    }
}

impl Drop for FifoMic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn write_asoundrc(home: &Path, name: &str, fifo: &Path) {
    std::fs::write(
        home.join(".asoundrc"),
        format!(
            "pcm.{name} {{\n  type file\n  slave.pcm \"null\"\n  file \"/dev/null\"\n  infile \"{}\"\n  format \"raw\"\n}}\n",
            fifo.display()
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tone_captured_through_libasound_reaches_the_viewer_as_opus() {
    let mic = FifoMic::start("alsa-home");
    let home = mic.home.clone();

    let broker = Broker::start();
    let home_str = home.to_str().unwrap();
    let daemon = Daemon::start_with_env(
        &broker,
        &["--audio", "spyglass_mic"],
        &[("HOME", home_str), ("XDG_CONFIG_HOME", home_str)],
    );
    let status = wait_online(&broker, &daemon).await;
    assert_eq!(
        status["audio"],
        serde_json::json!({"codec": "opus", "channels": 1}),
        "{status}"
    );

    let report = spyglass::view::run(view_options(&broker, &daemon, 120))
        .await
        .unwrap();
    drop(mic);

    assert_eq!(report.frames, 120, "video goes on with audio: {report:?}");
    assert!(
        report.audio_packets >= 100,
        "{} packets",
        report.audio_packets
    );
    let level = report.audio_level_dbfs.unwrap();
    assert!(level > -30.0, "the tone is not silence: {level:.1} dBFS");
    // Skip the first half second (the decoder settling), then look for the tone.
    let pcm = &report.audio_pcm[24_000.min(report.audio_pcm.len())..];
    assert!(pcm.len() >= 48_000, "{} samples", pcm.len());
    let tone = tone_power(pcm, MIC_HZ);
    for other in [440.0, 880.0, 1000.0, 1500.0] {
        let ratio_db = 10.0 * (tone / tone_power(pcm, other)).log10();
        assert!(
            ratio_db > 20.0,
            "{MIC_HZ} Hz should dominate {other} Hz, by {ratio_db:.1} dB"
        );
    }
    eprintln!(
        "{} Opus packets, level {level:.1} dBFS, {MIC_HZ} Hz found",
        report.audio_packets
    );
    let log = daemon.log();
    assert!(
        log.contains("audio capture started: ALSA spyglass_mic"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_auto_without_a_capture_device_streams_video_only_and_says_so_once() {
    let broker = Broker::start();
    // On this machine (and CI) there is no sound card. Where there is one, an empty ALSA
    // configuration makes a machine without one.
    let empty = temp_dir("alsa-empty");
    let conf = empty.join("alsa.conf");
    std::fs::write(&conf, "").unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let env: Vec<(&str, &str)> = if spyglass::audio::alsa::probe("default").is_ok() {
        vec![("ALSA_CONFIG_PATH", conf.as_str())]
    } else {
        vec![]
    };
    let daemon = Daemon::start_with_env(&broker, &["--audio", "auto"], &env);
    let status = wait_online(&broker, &daemon).await;
    assert!(status["audio"].is_null(), "{status}");
    let report = spyglass::view::run(view_options(&broker, &daemon, 30))
        .await
        .unwrap();
    assert_eq!(report.frames, 30, "{report:?}");
    assert_eq!(report.audio_packets, 0);
    let log = daemon.log();
    let warnings = log.matches("no audio capture device").count();
    assert_eq!(warnings, 1, "one warning line:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("streaming video only")),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_device_that_does_not_open_is_an_error_naming_it() {
    let out = std::process::Command::new(spyglass_bin())
        .args([
            "--id",
            "test/x",
            "--mqtt",
            "mqtt://127.0.0.1:9",
            "--video",
            "test",
            "--audio",
            "hw:CARD=NoSuchMic",
            "--mdns",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hw:CARD=NoSuchMic"), "{err}");
    assert!(err.contains("capture devices found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tone_beeps_in_step_with_the_flash() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &["--audio", "tone", "--fps", "30"]);
    let status = wait_online(&broker, &daemon).await;
    assert_eq!(status["audio"]["codec"], "opus");
    let mut opts = view_options(&broker, &daemon, 210);
    opts.timeout = Duration::from_secs(40);
    let report = spyglass::view::run(opts).await.unwrap();
    assert_eq!(report.frames, 210, "{report:?}");
    assert!(report.audio_packets >= 200, "{}", report.audio_packets);
    let beeps = report.beep_latency_ms.clone().expect("beeps heard");
    let flashes = report.flash_latency_ms.clone().expect("flashes seen");
    let offset = report
        .av_offset_ms
        .expect("beeps and flashes of the same seconds");
    eprintln!(
        "A/V offset {offset:+.1} ms (audio later when positive); beep onset after its second: \
         median {:.1} ms (min {:.1}, max {:.1}); flash frame after its capture: median {:.1} ms \
         (min {:.1}, max {:.1})",
        beeps.median, beeps.min, beeps.max, flashes.median, flashes.min, flashes.max
    );
    // Beeps arrive after they were made, never before.
    assert!(beeps.min >= 0.0, "{beeps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_m_line_gets_opus_when_audio_runs_and_is_inactive_otherwise() {
    let broker = Broker::start();
    for (audio, opus) in [("tone", true), ("none", false)] {
        let daemon = Daemon::start(&broker, &["--audio", audio]);
        wait_online(&broker, &daemon).await;
        let answer_topic = format!("{}/answer/probe", daemon.id);
        let mut client = TestClient::connect(&broker, &[answer_topic.clone()]).await;
        let offer = recvonly_offer(&[RtpCodecKind::Video, RtpCodecKind::Audio], true).await;
        let msg = serde_json::json!({"type": "offer", "sdp": offer}).to_string();
        client
            .publish(&format!("{}/offer/probe", daemon.id), msg)
            .await;
        let answer = client
            .wait_json(&answer_topic, Duration::from_secs(10), |v| {
                v["type"] == "answer"
            })
            .await;
        let sdp = answer["sdp"].as_str().unwrap();
        let audio_section = sdp
            .split("m=")
            .find(|s| s.starts_with("audio"))
            .unwrap_or_else(|| panic!("no audio m-line in the answer:\n{sdp}"));
        if opus {
            assert!(audio_section.contains("opus/48000/2"), "{audio_section}");
            assert!(audio_section.contains("a=sendonly"), "{audio_section}");
        } else {
            assert!(
                audio_section.starts_with("audio 0 ") || audio_section.contains("a=inactive"),
                "{audio_section}"
            );
        }
        assert!(sdp.contains("H264/90000"), "{sdp}");
    }
}

/// `spyglass selftest --audio NAME`: the real libasound capture path (the `file` plugin fed a
/// 660 Hz tone through a FIFO), Opus, RTP and back; the report finds the tone, and a tone that is
/// not there fails the run.
#[test]
fn selftest_captures_through_libasound_and_finds_the_tone() {
    let mic = FifoMic::start("alsa-selftest");
    let home = mic.home.clone();
    let selftest = |expect: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_spyglass"))
            .args([
                "selftest",
                "--video",
                "test",
                "--size",
                "320x240",
                "--fps",
                "15",
                "--seconds",
                "2",
                "--audio",
                "spyglass_mic",
                "--expect-tone",
                expect,
            ])
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", &home)
            .output()
            .unwrap()
    };
    let found = selftest("660");
    let missing = selftest("1000");
    drop(mic);

    let text = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert!(
        text.contains("audio source:     ALSA spyglass_mic"),
        "{text}"
    );
    assert!(
        text.contains("strongest at 650 Hz") || text.contains("strongest at 700 Hz"),
        "{text}"
    );
    assert!(text.contains("660 Hz tone +"), "{text}");
    assert!(text.contains("result:           PASS"), "{text}");
    let text = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(missing.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED:           no 1000 Hz tone"), "{text}");
}
