//! The systemd service: the unit's hardening score, the notify protocol (READY=1 once online,
//! WATCHDOG=1 pings), a clean stop on SIGTERM, and the fuzz seed corpus as regression inputs.
//! Real systemd-analyze, real daemon processes, a real broker; nothing is installed or started
//! as a service.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const MAX_EXPOSURE: f64 = 2.5;

/// `systemd-analyze security --offline=true` rates the shipped unit at most 2.5 (skipped where
/// systemd-analyze is missing or too old for --offline).
#[test]
fn the_unit_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/spyglass.service");
    let out = match std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: no systemd-analyze ({e})");
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("unrecognized option") || text.contains("Unknown command verb") {
        eprintln!("skipped: systemd-analyze has no offline security check:\n{text}");
        return;
    }
    // "→ Overall exposure level for spyglass.service: 1.6 OK 🙂"
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for spyglass.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {score}");
    // The unit also passes `systemd-analyze verify` (with ExecStart pointing at this build).
    let dir = temp_dir("unit");
    let copy = dir.join("spyglass.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&copy, text.replace("/usr/bin/spyglass", spyglass_bin())).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{text}"
    );
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "SupplementaryGroups=video audio",
        "Restart=on-failure",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "DeviceAllow=char-alsa rw",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LimitNOFILE=1024",
        "MemoryHigh=192M",
        "MemoryMax=256M",
        "TasksMax=128",
    ] {
        let unit_text = std::fs::read_to_string(&unit).unwrap();
        assert!(
            unit_text.lines().any(|l| l.trim() == line),
            "the unit lacks {line}"
        );
    }
    assert!(
        std::fs::read_to_string(&unit)
            .unwrap()
            .lines()
            .any(|l| l.starts_with("WatchdogSec=")),
        "the unit sets no WatchdogSec"
    );
}

/// Under `NOTIFY_SOCKET` the daemon says READY=1 only once it is online, then pings the
/// watchdog (`WATCHDOG_USEC`) while the video pipeline is alive, and says STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_ready_after_online_then_watchdog_pings() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let broker = Broker::start();
    let status_topic_client = |id: &str| format!("{id}/status");
    // 1 s watchdog: the daemon pings at least every 500 ms.
    let mut daemon = Daemon::start_with_env(
        &broker,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let topic = status_topic_client(&daemon.id);

    let mut messages: Vec<(Instant, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut online_before_ready = None;
    while Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        let got = {
            let socket = &socket;
            tokio::task::block_in_place(|| socket.recv(&mut buf))
        };
        if let Ok(n) = got {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            if online_before_ready.is_none() && text.lines().any(|l| l == "READY=1") {
                // READY=1 comes after the status was published: the broker has it (retained).
                let mut c = TestClient::connect(&broker, &[topic.clone()]).await;
                let v = c.wait_json(&topic, Duration::from_secs(5), |_| true).await;
                online_before_ready = Some(v["online"] == true);
            }
            messages.push((Instant::now(), text));
        }
        let watchdogs_after_ready = messages
            .iter()
            .skip_while(|(_, m)| !m.lines().any(|l| l == "READY=1"))
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .count();
        if watchdogs_after_ready >= 3 {
            break;
        }
    }
    let texts: Vec<&str> = messages.iter().map(|(_, m)| m.as_str()).collect();
    eprintln!("notify messages: {texts:?}");
    let ready = messages
        .iter()
        .position(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {texts:?}"));
    assert_eq!(
        messages
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == "READY=1"))
            .count(),
        1,
        "READY=1 once: {texts:?}"
    );
    assert_eq!(
        online_before_ready,
        Some(true),
        "the online status is on the broker when READY=1 arrives"
    );
    let pings: Vec<Instant> = messages[ready..]
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 3, "watchdog pings after READY=1: {texts:?}");
    let gaps: Vec<u128> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    eprintln!("watchdog ping intervals (ms), WATCHDOG_USEC=1 s: {gaps:?}");

    let status = daemon.terminate().expect("daemon exit status");
    assert!(status.success(), "clean exit: {status:?}");
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(
        rest.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "STOPPING=1 on SIGTERM: {rest:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Without a broker the device never comes online, so it never says READY=1 — but the media
/// path is alive, so the watchdog is fed and systemd leaves it waiting for the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_before_the_broker_is_reachable_but_the_watchdog_is_fed() {
    let dir = temp_dir("notify-nobroker");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut broker = Broker::start();
    broker.stop();
    let mut daemon = Daemon::start_with_env(
        &broker,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut texts = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if let Ok(n) = socket.recv(&mut buf) {
            texts.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    eprintln!("notify messages without a broker: {texts:?}");
    assert!(
        !texts.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 before online: {texts:?}"
    );
    assert!(
        texts
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
            >= 2,
        "watchdog pings while waiting for the broker: {texts:?}"
    );
    daemon.kill();
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGTERM with a viewer streaming: the retained status turns offline, the session is closed,
/// and the process exits. The requirement is 2 s; the check allows 5 s (a shared, loaded test
/// machine) and prints the measured time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_goes_offline_closes_sessions_and_exits_promptly() {
    let broker = Broker::start();
    let mut daemon = Daemon::start(&broker, &[]);
    wait_online(&broker, &daemon).await;
    let topic = format!("{}/status", daemon.id);
    let mut watcher = TestClient::connect(&broker, &[topic.clone()]).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut options = view_options(&broker, &daemon, u64::MAX);
    options.timeout = Duration::from_secs(60);
    options.stop = Some(Arc::clone(&stop));
    let viewer = tokio::spawn(spyglass::view::run(options));
    watcher
        .wait_json(&topic, Duration::from_secs(20), |v| {
            v["viewers"] == 1 && v["video"]["state"] == "live"
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let signalled = Instant::now();
    let status = tokio::task::block_in_place(|| daemon.terminate()).expect("exit status");
    let exit_ms = signalled.elapsed().as_millis();
    eprintln!("SIGTERM -> exit: {exit_ms} ms (required: 2000 ms; checked: 5000 ms)");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(exit_ms < 5000, "exit took {exit_ms} ms");
    let offline = watcher
        .wait_json(&topic, Duration::from_secs(5), |v| v["online"] == false)
        .await;
    eprintln!("status after SIGTERM: {offline}");
    let log = strip_ansi(&daemon.log());
    assert!(
        log.contains("sessions closed closed=1 of=1"),
        "the session was closed before exit:\n{log}"
    );
    // The viewer sees the end of its session; stop it in any case.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while !viewer.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    eprintln!(
        "viewer noticed the end within {} ms: {ended}",
        signalled.elapsed().as_millis()
    );
    stop.notify_one();
    let report = viewer.await.unwrap();
    eprintln!("viewer: {report:?}");
}

/// `MemoryDenyWriteExecute=yes` holds: with the kernel's own W^X rule for the process
/// (`PR_SET_MDWE`, what systemd uses where the kernel has it) the daemon answers a viewer and
/// streams (openh264, ring and the rest map no writable+executable memory). Skipped on kernels
/// before 6.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_streams_under_memory_deny_write_execute() {
    use std::os::unix::process::CommandExt;
    const PR_SET_MDWE: libc::c_int = 65;
    const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
    let broker = Broker::start();
    let dir = temp_dir("mdwe");
    let id = format!("test/mdwe-{}", rand::random::<u32>());
    let log = std::fs::File::create(dir.join("spyglass.log")).unwrap();
    let mut command = std::process::Command::new(spyglass_bin());
    command
        .args([
            "--id",
            &id,
            "--mqtt",
            &broker.url(),
            "--video",
            "test",
            "--size",
            "320x240",
        ])
        .args([
            "--rtc-bind",
            "127.0.0.1",
            "--rtc-allow-loopback",
            "on",
            "--mdns",
            "off",
            "--http",
            "off",
            "--audio",
            "none",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("skipped: PR_SET_MDWE is not supported by this kernel");
            return;
        }
        Err(e) => panic!("starting spyglass under PR_SET_MDWE: {e}"),
    };
    let topic = format!("{id}/status");
    let mut watcher = TestClient::connect(&broker, &[topic.clone()]).await;
    watcher
        .wait_json(&topic, Duration::from_secs(20), |v| v["online"] == true)
        .await;
    let report = spyglass::view::run(spyglass::view::ViewOptions {
        host: "127.0.0.1".into(),
        port: broker.port,
        username: None,
        password: None,
        id: id.clone(),
        cid: format!("viewer-{}", rand::random::<u32>()),
        frames: 30,
        timeout: Duration::from_secs(30),
        bind: vec!["127.0.0.1".parse().unwrap()],
        mdns: false,
        own_servers: Default::default(),
        stop: None,
        data_channel: None,
        transport: Default::default(),
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("spyglass.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("daemon under PR_SET_MDWE: {report:?}");
    let report = report.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(report.frames, 30, "{report:?}\n{log}");
}

/// The fuzz seed corpus (real Chromium offer, Firefox- and Safari-style offers) as regression
/// inputs on stable Rust: each offer carries H.264 we can send and parses in the WebRTC stack.
#[test]
fn fuzz_seed_offers_are_served() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/offer_sdp");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let sdp = spyglass::signaling::protocol::parse_offer(&data)
            .unwrap_or_else(|_| String::from_utf8(data.clone()).unwrap());
        let video = spyglass::peer::sdp::offer_video(&sdp);
        assert!(
            matches!(video, spyglass::peer::sdp::OfferVideo::H264 { .. }),
            "{}: {video:?}",
            path.display()
        );
        assert!(
            spyglass::peer::sdp::offer_has_audio(&sdp),
            "{}",
            path.display()
        );
        webrtc::peer_connection::RTCSessionDescription::offer(sdp)
            .unwrap()
            .unmarshal()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 6, "seed offers in {}", dir.display());
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Issue 12, item 11: a secret file that other users may read is named in a warning at start;
/// the same file with mode 600 is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_files_readable_by_others_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Broker::start();
    let dir = temp_dir("secrets");
    let password = dir.join("mqtt-password");
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::write(&password, "secret\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(mode)).unwrap();
        let daemon = Daemon::start(
            &broker,
            &[
                "--mqtt-username",
                "cam",
                "--mqtt-password-file",
                password.to_str().unwrap(),
            ],
        );
        wait_online(&broker, &daemon).await;
        let log = strip_ansi(&daemon.log());
        let warning = log
            .lines()
            .find(|l| l.contains("readable by every user"))
            .map(str::to_string);
        eprintln!("mode {mode:03o}: {warning:?}");
        assert_eq!(warning.is_some(), warned, "{log}");
        if let Some(w) = warning {
            assert!(
                w.contains(password.to_str().unwrap()) && w.contains("644"),
                "{w}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
