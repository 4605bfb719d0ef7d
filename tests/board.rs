//! The emulated board (tests/vm/README.md) with a network and the kernel drivers for the sources
//! and encoders to come (issue 16), in one boot of Debian's kernel under QEMU:
//! - a v4l2loopback device that delivers H.264 (fed in the guest with libx264 access units made
//!   with rpicam-vid's settings) reads back intact through the kernel's capture queue;
//! - the kernel's memory-to-memory test drivers (vim2m, vicodec's stateful FWHT encoder) are
//!   there and process buffers;
//! - the daemon in the guest, a host on a netlab LAN, captures from vivid and `spyglass view`
//!   outside the guest decodes its frames over that network.
//!
//! web/test/vm/stream.test.mjs has Chromium watch the board.

mod support;

use std::time::Duration;

use support::board::{Board, BoardNet, BoardSpec, access_units, h264_clip, hdr_frames};
use support::netlab::Netlab;

const CLIP_FRAMES: usize = 30;
const READ_FRAMES: usize = 31;

const VIEW_FRAMES: u64 = 30;

/// The guest's script: feed the loopback device, read it back, exercise the M2M drivers, then
/// run the daemon on vivid until the host says stop.
fn guest_script(id: &str, broker: &str, ip: &str) -> String {
    format!(
        r#"
feed-h264 /dev/video10 /test/au 15 320 180 &
feeder=$!
sleep 1
echo "=== loopback formats"; v4l2-ctl -d /dev/video10 --list-formats
echo "=== loopback format"; v4l2-ctl -d /dev/video10 --get-fmt-video
echo "=== loopback read"
v4l2-ctl -d /dev/video10 --stream-mmap --stream-count={READ_FRAMES} --stream-to-hdr=/tmp/back.hdr 2>&1
echo "rc $?"
copy-out /tmp/back.hdr
kill $feeder
node() {{ for d in /sys/class/video4linux/video*; do [ "$(cat "$d/name")" = "$1" ] && echo "/dev/${{d##*/}}"; done; }}
m2m=$(node vim2m); enc=$(node stateful-encoder)
echo "=== vim2m info"; v4l2-ctl -d "$m2m" --info
echo "=== vim2m capture formats"; v4l2-ctl -d "$m2m" --list-formats
echo "=== vim2m output formats"; v4l2-ctl -d "$m2m" --list-formats-out
echo "=== vim2m stream"
v4l2-ctl -d "$m2m" --set-fmt-video-out=width=320,height=180,pixelformat=RGB3 \
  --set-fmt-video=width=320,height=180,pixelformat=YUYV \
  --stream-mmap --stream-out-mmap --stream-count=10 --stream-to=/tmp/m2m.yuyv 2>&1
echo "rc $?"
echo "bytes $(wc -c < /tmp/m2m.yuyv)"
echo "first $(od -A n -t u1 -N 4 /tmp/m2m.yuyv)"
echo "=== encoder info"; v4l2-ctl -d "$enc" --info
echo "=== encoder capture formats"; v4l2-ctl -d "$enc" --list-formats
echo "=== encoder output formats"; v4l2-ctl -d "$enc" --list-formats-out
echo "=== encoder stream"
v4l2-ctl -d "$enc" --set-fmt-video-out=width=640,height=480,pixelformat=YU12 \
  --stream-mmap --stream-out-mmap --stream-count=10 --stream-to=/tmp/enc.fwht 2>&1
echo "rc $?"
copy-out /tmp/enc.fwht
NO_COLOR=1 spyglass --id {id} --mqtt {broker} --video /dev/video0 --size 320x180 --fps 15 \
  --rtc-bind {ip} --mdns off --http off --audio none 2>/tmp/daemon.log &
daemon=$!
echo "=== ready"
read -r line
kill -TERM $daemon; wait $daemon; status=$?
echo "=== daemon log"; tail -n 60 /tmp/daemon.log
echo "=== daemon exit $status"
exit $status
"#
    )
}

/// NAL unit types of an Annex B access unit, with the byte after each header.
fn nal_units(au: &[u8]) -> Vec<(u8, Option<u8>)> {
    let mut out = vec![];
    let mut i = 0;
    while i + 3 < au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            out.push((au[i + 3] & 0x1f, au.get(i + 4).copied()));
            i += 3;
        }
        i += 1;
    }
    out
}

#[test]
fn the_board_streams_to_spyglass_view_and_its_loopback_and_m2m_drivers_work() {
    let dir = support::temp_dir("board-clip");
    let units = h264_clip(&dir, (320, 180), 15, CLIP_FRAMES as u32, "high", 15);
    let clip = access_units(&units);
    assert_eq!(clip.len(), CLIP_FRAMES);

    let lab = Netlab::up_with(
        serde_json::json!({"sites": [{"name": "lan", "nat": "cone"}], "turn": false}),
        "basic",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let net = BoardNet::on_lan(&lab, "lan", 100);
    let broker = lab.info["broker"]["url"].as_str().unwrap().to_string();
    let id = format!("board-{}/cam", std::process::id());
    let spec = BoardSpec {
        run: guest_script(&id, &broker, &net.ip()),
        net: Some(net),
        ..Default::default()
    }
    .with_spyglass()
    .with_program("v4l2-ctl")
    .with_file(&units, "/test/au")
    // 8 buffers: a reader that is a little late still gets every access unit.
    .with_module("v4l2loopback video_nr=10 card_label=h264-camera max_buffers=8")
    .with_module("vim2m")
    .with_module("vicodec");
    let mut board = Board::up(&spec).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    println!("board: up after {} s", board.info["ready_s"]);

    // The daemon in the guest reaches the broker through the LAN's router...
    let online = lab
        .command("lan", "mosquitto_sub")
        .args([
            "-h",
            "10.0.0.1",
            "-t",
            &format!("{id}/status"),
            "-C",
            "1",
            "-W",
            "60",
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&online.stdout);
    assert!(
        status.contains(r#""online":true"#),
        "status {status:?}\n{}",
        board.console()
    );
    // ...and `spyglass view` in the LAN's host namespace decodes its frames, at its size.
    let view = lab
        .command("lan", support::spyglass_bin())
        .args([
            "view",
            "--mqtt",
            &broker,
            "--id",
            &id,
            "--timeout",
            "90",
            "--mdns",
            "off",
        ])
        .args([
            "--frames",
            &VIEW_FRAMES.to_string(),
            "--rtc-bind",
            &lab.ip("lan"),
            "--json",
        ])
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
    assert_eq!(report["frames"], VIEW_FRAMES);
    assert_eq!(
        (report["width"].as_u64(), report["height"].as_u64()),
        (Some(320), Some(180))
    );
    assert!(report["error"].is_null(), "{report}");

    board.send("stop");
    let run = board
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "board: boot {:?} s, whole run {:?} s",
        run.boot_s, run.total_s
    );
    assert_eq!(run.exit, Some(0), "guest command failed:\n{}", run.console);
    assert!(run.console.contains("=== daemon exit 0"), "{}", run.console);

    // The loopback device offers H.264 on its capture side, at the writer's size.
    let formats = run.section("loopback formats");
    assert!(formats.contains("'H264'"), "{formats}");
    let format = run.section("loopback format");
    assert!(
        format.contains("'H264'") && format.contains("320/180"),
        "{format}"
    );

    // What came back through the kernel's capture queue is the clip, access unit for access
    // unit, in order. The first buffer is left out: v4l2loopback 0.12.7's REQBUFS resets every
    // buffer's bytesused to sizeimage, so a reader's first buffer holds its access unit followed
    // by stale bytes (tests/vm/README.md).
    let frames = hdr_frames(&run.file("back.hdr")).unwrap();
    assert_eq!(
        frames.len(),
        READ_FRAMES,
        "{}",
        run.section("loopback read")
    );
    assert!(
        clip.iter().any(|au| frames[0].starts_with(au)),
        "the first buffer does not start with an access unit of the clip"
    );
    let positions: Vec<usize> = frames[1..]
        .iter()
        .map(|f| {
            clip.iter().position(|au| au == f).unwrap_or_else(|| {
                panic!("a frame of {} bytes is no access unit of the clip", f.len())
            })
        })
        .collect();
    for pair in positions.windows(2) {
        assert_eq!(
            pair[1],
            (pair[0] + 1) % CLIP_FRAMES,
            "frames out of order or lost: {positions:?}"
        );
    }
    // rpicam-vid's --inline: SPS and PPS before every IDR; High profile (profile_idc 100) intact.
    let idrs: Vec<&Vec<u8>> = frames[1..]
        .iter()
        .filter(|f| nal_units(f).iter().any(|n| n.0 == 5))
        .collect();
    assert!(
        idrs.len() >= 2,
        "{} IDR frames in {READ_FRAMES}",
        idrs.len()
    );
    for idr in idrs {
        let nals = nal_units(idr);
        assert!(nals.iter().any(|n| n.0 == 8), "IDR without PPS");
        assert!(
            nals.contains(&(7, Some(100))),
            "IDR without a High-profile SPS: {nals:?}"
        );
    }

    // vim2m: a memory-to-memory device converting RGB to YUYV; 10 buffers through both queues.
    let info = run.section("vim2m info");
    assert!(info.contains("Video Memory-to-Memory"), "{info}");
    let caps = run.section("vim2m capture formats");
    assert!(caps.contains("'YUYV'") && caps.contains("'RGB3'"), "{caps}");
    assert!(run.section("vim2m output formats").contains("'RGB3'"));
    let stream = run.section("vim2m stream");
    assert!(stream.contains("rc 0"), "{stream}");
    assert!(
        stream.contains(&format!("bytes {}", 10 * 320 * 180 * 2)),
        "{stream}"
    );
    // v4l2-ctl's output pattern starts with a 75 % white bar: luma well above black, chroma near
    // the middle, in the converted YUYV.
    let first: Vec<u32> = stream
        .lines()
        .find_map(|l| l.strip_prefix("first "))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(first.len(), 4, "{stream}");
    assert!(first[0] > 120 && first[2] > 120, "luma {first:?}");
    assert!(
        first[1].abs_diff(128) < 16 && first[3].abs_diff(128) < 16,
        "chroma {first:?}"
    );

    // vicodec's stateful encoder: raw frames in (YU12 among 28 formats; 640x360 at least, it
    // clamps smaller sizes), FWHT out (vicodec's own codec, not H.264). Each compressed frame opens with its header: magic 'OOOO', 0xffffffff,
    // then big-endian version, width, height, ..., and the payload size at byte 40.
    assert!(
        run.section("encoder info")
            .contains("Video Memory-to-Memory")
    );
    let caps = run.section("encoder capture formats");
    assert!(
        caps.contains("'FWHT'") && !caps.contains("'H264'"),
        "{caps}"
    );
    assert!(run.section("encoder output formats").contains("'YU12'"));
    assert!(run.section("encoder stream").contains("rc 0"));
    let fwht = run.file("enc.fwht");
    let be = |at: usize| u32::from_be_bytes(fwht[at..at + 4].try_into().unwrap()) as usize;
    let mut pos = 0;
    let mut count = 0;
    while pos < fwht.len() {
        assert!(pos + 44 <= fwht.len(), "truncated FWHT header at {pos}");
        assert_eq!(
            &fwht[pos..pos + 8],
            b"OOOO\xff\xff\xff\xff",
            "FWHT magic at {pos}"
        );
        assert_eq!((be(pos + 12), be(pos + 16)), (640, 480), "FWHT size");
        pos += 44 + be(pos + 40);
        count += 1;
    }
    assert_eq!(count, 10, "FWHT frames");
}
