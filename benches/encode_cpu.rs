//! Raw openh264 encoding CPU time per frame, for `make bench`'s "pipeline ÷ raw encode" ratio:
//! the test pattern's frames (captured first, so drawing them is not counted), encoded at the
//! daemon's settings (30 fps, 2 Mbit/s, one thread), timed with this thread's CPU clock.
//!
//! `cargo bench --bench encode_cpu -- [SECONDS] [WxH...]` prints one JSON line per size:
//! `{"size":"1280x720","frames":150,"cpu_ms_per_frame":4.2,"wall_ms_per_frame":4.3}`.

use std::time::Instant;

use spyglass::video::encode::openh264::H264Encoder;
use spyglass::video::encode::{Encoder, EncoderSettings};
use spyglass::video::{VideoSource, VideoSpec, test_pattern::TestPattern};

fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut sizes: Vec<(u32, u32)> = args
        .iter()
        .skip(1)
        .filter_map(|s| s.split_once('x'))
        .filter_map(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .collect();
    if sizes.is_empty() {
        sizes = vec![(640, 480), (1280, 720), (1920, 1080)];
    }
    let fps = 30;
    for (w, h) in sizes {
        let mut source = TestPattern::new(&VideoSpec {
            source: "test".parse().unwrap(),
            width: w,
            height: h,
            fps,
            ..Default::default()
        });
        let frames: Vec<_> = (0..seconds * fps)
            .map(|_| source.next_frame().expect("test pattern"))
            .collect();
        let mut encoder = H264Encoder::new(EncoderSettings {
            width: w,
            height: h,
            fps,
            bitrate_kbps: 2000,
        })
        .expect("openh264 encoder");
        let (cpu, wall) = (thread_cpu_ms(), Instant::now());
        let mut bytes = 0;
        for f in &frames {
            bytes += encoder
                .encode(f, false)
                .expect("encode")
                .map_or(0, |e| e.data.len());
        }
        let cpu = thread_cpu_ms() - cpu;
        let wall = wall.elapsed().as_secs_f64() * 1e3;
        let n = frames.len() as f64;
        println!(
            "{{\"size\":\"{w}x{h}\",\"frames\":{},\"cpu_ms_per_frame\":{:.3},\"wall_ms_per_frame\":{:.3},\"kbit_per_s\":{:.0}}}",
            frames.len(),
            cpu / n,
            wall / n,
            bytes as f64 * 8.0 / 1000.0 / f64::from(seconds)
        );
    }
}
