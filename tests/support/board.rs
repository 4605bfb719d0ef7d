//! The emulated board for integration tests: a thin wrapper around `tests/vm/board.py` (see
//! tests/vm/README.md). Debian's kernel boots under QEMU with real drivers (vivid, snd-aloop,
//! and on request v4l2loopback, vim2m, vicodec or any module of that kernel); the guest runs
//! a shell command from the test. [`Board::run`] boots, runs it and powers off; [`Board::up`]
//! boots in the background, optionally as a host on a netlab site's LAN, and returns once the
//! guest printed its ready line; dropping the [`Board`] (also while a test panics) stops the
//! guest and removes its tap and files, and the tool's supervisor does it if this process dies
//! without unwinding. [`h264_clip`] makes H.264 access units (rpicam-vid's settings) to feed a
//! v4l2loopback device from the guest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::netlab::Netlab;

/// The tool's script.
pub fn tool_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vm/board.py")
}

/// The guest's place on a network: a tap on `bridge` in namespace `ns`.
#[derive(Debug, Clone)]
pub struct BoardNet {
    pub ns: String,
    pub bridge: String,
    /// ADDR/PREFIX
    pub cidr: String,
    pub gateway: String,
}

impl BoardNet {
    /// One more host on `site`'s LAN (behind its router and NAT, beside the site's own hosts),
    /// at the LAN's address `.host` (netlab gives its hosts .10 upwards: take e.g. 100).
    pub fn on_lan(lab: &Netlab, site: &str, host: u8) -> BoardNet {
        let s = &lab.info["sites"][site];
        assert!(s.is_object(), "netlab {} has no site {site}", lab.tag);
        let lan = s["lan"].as_str().expect("site lan");
        let (net, prefix) = lan.split_once('/').expect("lan CIDR");
        let mut octets: Vec<&str> = net.split('.').collect();
        let last = host.to_string();
        octets[3] = &last;
        BoardNet {
            ns: s["router_ns"].as_str().expect("router_ns").to_string(),
            // netlab names a router's LAN bridge <tag><site>b (tests/netlab/README.md).
            bridge: format!("{}{}b", lab.tag, site),
            cidr: format!("{}/{prefix}", octets.join(".")),
            gateway: s["gateway"].as_str().expect("gateway").to_string(),
        }
    }

    /// The guest's address.
    pub fn ip(&self) -> String {
        self.cidr.split('/').next().unwrap_or_default().to_string()
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BoardSpec {
    /// Installed as /test/spyglass (debug info stripped, shared libraries along).
    pub binary: Option<PathBuf>,
    /// Host file or directory -> path in the guest.
    pub files: Vec<(PathBuf, String)>,
    /// Kernel modules to load, in order: "v4l2loopback video_nr=10 max_buffers=8", "vim2m"...
    pub modules: Vec<String>,
    /// The guest command (busybox sh); /test is on its PATH, its stdin is [`Board::send`]'s.
    pub run: String,
    pub net: Option<BoardNet>,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// [`Board::up`]: the console line that means ready.
    pub ready: String,
}

impl Default for BoardSpec {
    fn default() -> Self {
        BoardSpec {
            binary: None,
            files: vec![],
            modules: vec![],
            run: String::new(),
            net: None,
            memory_mb: 768,
            timeout: Duration::from_secs(600),
            ready: "=== ready".into(),
        }
    }
}

impl BoardSpec {
    /// The spyglass under test, as /test/spyglass.
    pub fn with_spyglass(mut self) -> Self {
        self.binary = Some(PathBuf::from(super::spyglass_bin()));
        self
    }

    /// A program of this machine, found on PATH, as /test/NAME (with its libraries).
    pub fn with_program(mut self, name: &str) -> Self {
        let path =
            which(name).unwrap_or_else(|| panic!("{name} not found: run make deps-emulated"));
        self.files.push((path, format!("/test/{name}")));
        self
    }

    pub fn with_file(mut self, src: impl Into<PathBuf>, dest: &str) -> Self {
        self.files.push((src.into(), dest.into()));
        self
    }

    pub fn with_module(mut self, spec: &str) -> Self {
        self.modules.push(spec.into());
        self
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--memory".into(),
            self.memory_mb.to_string(),
            "--timeout".into(),
            self.timeout.as_secs().to_string(),
            "--run".into(),
            self.run.clone(),
        ];
        if let Some(b) = &self.binary {
            a.extend(["--binary".into(), b.display().to_string()]);
        }
        for (src, dest) in &self.files {
            a.extend(["--file".into(), format!("{}:{dest}", src.display())]);
        }
        for m in &self.modules {
            a.extend(["--module".into(), m.clone()]);
        }
        if let Some(n) = &self.net {
            a.extend([
                "--netns".into(),
                n.ns.clone(),
                "--bridge".into(),
                n.bridge.clone(),
                "--ip".into(),
                n.cidr.clone(),
                "--gateway".into(),
                n.gateway.clone(),
            ]);
        }
        a
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// How a guest run ended. Its exported files live until it is dropped.
#[derive(Debug)]
pub struct BoardResult {
    /// The guest command's exit status (None: it never finished).
    pub exit: Option<i32>,
    pub powered_off: bool,
    pub timed_out: bool,
    /// QEMU started -> the guest command started, seconds.
    pub boot_s: Option<f64>,
    /// The whole guest run, seconds.
    pub total_s: Option<f64>,
    /// The serial console (exported files cut out).
    pub console: String,
    /// Files the guest exported with `copy-out FILE [NAME]`: NAME -> path here.
    pub files: HashMap<String, PathBuf>,
    dir: PathBuf,
}

impl Drop for BoardResult {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl BoardResult {
    fn from_json(v: &Value, dir: PathBuf) -> BoardResult {
        BoardResult {
            dir,
            exit: v["exit"].as_i64().map(|e| e as i32),
            powered_off: v["powered_off"] == true,
            timed_out: v["timed_out"] == true,
            boot_s: v["boot_s"].as_f64(),
            total_s: v["total_s"].as_f64(),
            console: v["console"].as_str().unwrap_or_default().to_string(),
            files: v["files"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, p)| (k.clone(), PathBuf::from(p.as_str().unwrap_or_default())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The console lines between `=== NAME` and the next `=== ` line.
    pub fn section(&self, name: &str) -> String {
        let start = format!("=== {name}");
        let mut out = String::new();
        let mut inside = false;
        for line in self.console.lines() {
            if inside && line.starts_with("=== ") {
                break;
            }
            if inside {
                out.push_str(line);
                out.push('\n');
            }
            if line == start {
                inside = true;
            }
        }
        out
    }

    /// An exported file's bytes.
    pub fn file(&self, name: &str) -> Vec<u8> {
        let path = self
            .files
            .get(name)
            .unwrap_or_else(|| panic!("the guest exported no {name}:\n{}", self.console));
        std::fs::read(path).unwrap()
    }
}

fn tool(args: &[String]) -> Result<Value, String> {
    let out = Command::new("python3")
        .arg(tool_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running board.py: {e} (python3 missing?)"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(stderr);
    }
    if out.stdout.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("board.py printed no JSON ({e}); stderr: {stderr}"))
}

/// A board running in the background.
pub struct Board {
    pub tag: String,
    /// What `board.py up` printed: state_dir, log, net (ip, tap, mac...), boot_s, ready_s.
    pub info: Value,
    ended: bool,
}

impl Board {
    /// Boot, run `spec.run`, power off. `Err` = the board could not be built or booted.
    pub fn run(spec: &BoardSpec) -> Result<BoardResult, String> {
        let out = super::temp_dir("board");
        let mut args = vec!["run".to_string()];
        args.extend(spec.args());
        args.extend([
            "--owner".into(),
            std::process::id().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        match tool(&args) {
            Ok(v) => Ok(BoardResult::from_json(&v, out)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&out);
                Err(e)
            }
        }
    }

    /// Boot in the background; Ok once the guest printed `spec.ready`.
    pub fn up(spec: &BoardSpec) -> Result<Board, String> {
        let mut args = vec!["up".to_string()];
        args.extend(spec.args());
        args.extend([
            "--owner".into(),
            std::process::id().to_string(),
            "--ready".into(),
            spec.ready.clone(),
        ]);
        let info = tool(&args)?;
        Ok(Board {
            tag: info["tag"].as_str().unwrap_or_default().to_string(),
            info,
            ended: false,
        })
    }

    /// One line to the guest command's standard input.
    pub fn send(&self, line: &str) {
        tool(&["send".into(), self.tag.clone(), line.into()])
            .unwrap_or_else(|e| panic!("board {} send: {e}", self.tag));
    }

    /// The console so far.
    pub fn console(&self) -> String {
        let log = self.info["log"].as_str().unwrap_or_default();
        String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).replace('\r', "")
    }

    /// Wait until the guest powers off (the supervisor stops it at the spec's timeout).
    pub fn wait(&mut self, timeout: Duration) -> Result<BoardResult, String> {
        let v = tool(&[
            "wait".into(),
            self.tag.clone(),
            "--timeout".into(),
            timeout.as_secs().to_string(),
        ])?;
        let mut r = BoardResult::from_json(&v, super::temp_dir("board"));
        // The run's own directory goes with `down`: keep the exported files.
        for path in r.files.values_mut() {
            let kept = r.dir.join(path.file_name().unwrap_or_default());
            if std::fs::copy(&*path, &kept).is_ok() {
                *path = kept;
            }
        }
        self.down();
        Ok(r)
    }

    /// Stop the guest now and remove everything (idempotent; Drop does it too).
    pub fn down(&mut self) {
        if !self.ended {
            self.ended = true;
            if let Err(e) = tool(&["down".into(), self.tag.clone()]) {
                eprintln!("board {} down: {e}", self.tag);
            }
        }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.ended {
            let console = self.console();
            let tail: Vec<&str> = console.lines().rev().take(60).collect();
            eprintln!(
                "--- board {} console (last lines) ---\n{}",
                self.tag,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.down();
    }
}

/// H.264 Annex B from Debian's ffmpeg/libx264 with rpicam-vid's settings (`--inline`: SPS and
/// PPS before every IDR; no B-frames), as one file per access unit (`dir/0001.h264`...), the
/// form `feed-h264` writes to a v4l2loopback device. `profile`: baseline, main or high
/// (libx264's veryfast preset, so main/high really use CABAC). `keyint`: the IDR period in frames.
pub fn h264_clip(
    dir: &Path,
    (width, height): (u32, u32),
    fps: u32,
    frames: u32,
    profile: &str,
    keyint: u32,
) -> PathBuf {
    let units = dir.join("au");
    std::fs::create_dir_all(&units).unwrap();
    let clip = dir.join("clip.h264");
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size={width}x{height}:rate={fps}"))
        .args([
            "-frames:v",
            &frames.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
        ])
        .args([
            "-tune",
            "zerolatency",
            "-profile:v",
            profile,
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-g", &keyint.to_string(), "-bf", "0"])
        .args(["-x264-params", "repeat-headers=1", "-f", "h264"])
        .arg(&clip)
        .status()
        .expect("ffmpeg (make deps-emulated)");
    assert!(status.success(), "ffmpeg could not make {}", clip.display());
    // The image2 muxer writes each packet (one access unit) to its own file.
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&clip)
        .args(["-c:v", "copy", "-f", "image2"])
        .arg(units.join("%04d.h264"))
        .status()
        .expect("ffmpeg");
    assert!(
        status.success(),
        "ffmpeg could not split {}",
        clip.display()
    );
    units
}

/// The access units of a directory made by [`h264_clip`], in order.
pub fn access_units(units: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// The frames of a `v4l2-ctl --stream-to-hdr` file: per frame the fourcc `Vhdr` (big-endian
/// u32), per plane a big-endian u32 length and the plane's bytes (one plane here).
pub fn hdr_frames(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut frames = vec![];
    let mut pos = 0;
    while pos < data.len() {
        let head = data.get(pos..pos + 8).ok_or("truncated header")?;
        if &head[..4] != b"rdhV" {
            return Err(format!("no Vhdr at byte {pos}"));
        }
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body = data
            .get(pos + 8..pos + 8 + len)
            .ok_or_else(|| format!("frame at {pos} claims {len} bytes"))?;
        frames.push(body.to_vec());
        pos += 8 + len;
    }
    Ok(frames)
}
