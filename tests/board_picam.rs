//! Issue 16 against real kernel drivers, in one boot of the emulated board (tests/vm/README.md):
//! - spyglass's memory-to-memory queue code (the one the Pi's H.264 encoder uses) drives the
//!   kernel's vicodec stateful encoder (multi-planar, FWHT instead of H.264) through
//!   `spyglass selftest --m2m-codec FWHT`: every picture in, one coded frame out, keyframes at
//!   the GOP set through a control, headers that name the picture;
//! - a V4L2 camera that delivers H.264 (v4l2loopback, fed in the guest with libx264 Main-profile
//!   access units made with rpicam-vid's settings) is passed through: the daemon in the guest,
//!   `spyglass view` outside it on the LAN decodes the frames; the status says `passthrough`,
//!   and, since v4l2loopback has no force-key-frame control, the source's IDR period.

mod support;

use std::time::Duration;

use support::board::{Board, BoardNet, BoardSpec, h264_clip};
use support::netlab::Netlab;

const VIEW_FRAMES: u64 = 30;

fn guest_script(id: &str, broker: &str, ip: &str) -> String {
    format!(
        r#"
echo "=== m2m selftest"
NO_COLOR=1 spyglass selftest --video test --size 640x360 --fps 10 --seconds 3 --m2m-codec FWHT 2>&1
echo "rc $?"
feed-h264 /dev/video10 /test/au 15 320 180 &
sleep 1
echo "=== devices"
NO_COLOR=1 spyglass devices 2>&1
NO_COLOR=1 spyglass --id {id} --mqtt {broker} --video /dev/video10 --size 320x180 --fps 15 \
  --rtc-bind {ip} --mdns off --http off --audio none 2>/tmp/daemon.log &
daemon=$!
echo "=== ready"
read -r line
kill -TERM $daemon; wait $daemon; status=$?
echo "=== daemon log"; tail -n 40 /tmp/daemon.log
echo "=== daemon exit $status"
exit $status
"#
    )
}

#[test]
fn vicodec_through_the_m2m_queue_code_and_a_v4l2_h264_camera_passed_through() {
    let dir = support::temp_dir("board-picam");
    // Main profile, an IDR every 15 frames (1 s at 15 fps), headers before every IDR.
    let units = h264_clip(&dir, (320, 180), 15, 60, "main", 15);
    let lab = Netlab::up_with(
        serde_json::json!({"sites": [{"name": "lan", "nat": "cone"}], "turn": false}),
        "basic",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let net = BoardNet::on_lan(&lab, "lan", 100);
    let broker = lab.info["broker"]["url"].as_str().unwrap().to_string();
    let id = format!("board-picam-{}/cam", std::process::id());
    let spec = BoardSpec {
        run: guest_script(&id, &broker, &net.ip()),
        net: Some(net),
        ..Default::default()
    }
    .with_spyglass()
    .with_program("v4l2-ctl")
    .with_file(&units, "/test/au")
    .with_module("v4l2loopback video_nr=10 card_label=h264-camera max_buffers=8")
    // The Pi's encoder speaks the multi-planar API; so does vicodec with this.
    .with_module("vicodec multiplanar=1");
    let mut board = Board::up(&spec).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);

    let status_topic = format!("{id}/status");
    let status = |timeout: &str| {
        let out = lab
            .command("lan", "mosquitto_sub")
            .args([
                "-h",
                "10.0.0.1",
                "-t",
                &status_topic,
                "-C",
                "1",
                "-W",
                timeout,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let online = status("60");
    assert!(
        online.contains(r#""online":true"#),
        "{online}\n{}",
        board.console()
    );

    let view = lab
        .command("lan", support::spyglass_bin())
        .args(["view", "--mqtt", &broker, "--id", &id, "--timeout", "90"])
        .args(["--mdns", "off", "--frames", &VIEW_FRAMES.to_string()])
        .args(["--rtc-bind", &lab.ip("lan"), "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&view.stderr);
    assert!(
        view.status.success(),
        "spyglass view: {stderr}\n{}",
        board.console()
    );
    let report: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    println!("spyglass view: {report}");
    assert!(report["error"].is_null(), "{report}");
    assert_eq!(report["frames"], VIEW_FRAMES);
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64()),
        (Some(320), Some(180))
    );
    // The retained status now says how the stream was made.
    let after = status("10");
    let after: serde_json::Value = serde_json::from_str(after.trim()).unwrap();
    assert_eq!(after["video"]["encoder"], "passthrough", "{after}");
    // An IDR every 15 frames, fed at 15 fps at most (slower under emulation).
    let period = after["video"]["idr_period_ms"].as_u64();
    assert!(
        period.is_some_and(|p| (900..=5000).contains(&p)),
        "IDR period {period:?}: {after}"
    );

    board.send("stop");
    let run = board
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let selftest = run.section("m2m selftest");
    println!("{selftest}");
    assert!(selftest.contains("rc 0"), "{selftest}");
    assert!(
        selftest.contains("FWHT") && selftest.contains("PASS"),
        "{selftest}"
    );
    // `spyglass devices` shows the camera's H.264 and that no H.264 encoder is there (vicodec
    // makes FWHT).
    let devices = run.section("devices");
    assert!(
        devices.contains("H264 (passed through with --encoder auto)"),
        "{devices}"
    );
    assert!(devices.contains("no V4L2 H.264 encoder"), "{devices}");
    let log = run.section("daemon log");
    assert!(log.contains("passthrough"), "{log}");
    assert!(
        log.contains("cannot ask the source for a keyframe"),
        "{log}"
    );
    assert_eq!(run.exit, Some(0), "guest command failed:\n{}", run.console);
}
