//! Process source (`--video exec:COMMAND`): a command, run through `sh -c`, writes pictures to
//! its standard output. What it writes is `--exec-format`: raw I420 at the configured size, one
//! picture after another (`rpicam-vid -t 0 -n --codec yuv420 -o -`), or an H.264 Annex B stream
//! (`rpicam-vid --codec h264 --inline -o -`), which is split into access units and passed through.
//!
//! The process is supervised like a camera: the pipeline opens this source when the first viewer
//! comes, which starts the command; a command that exits, or writes nothing for
//! [`STALL_TIMEOUT`], is a failed source, which the pipeline reopens (a new process) after a
//! back-off; closing the source ends the process. The command runs in a process group of its
//! own, which is sent SIGTERM, then SIGKILL, and the shell is reaped (no zombies). Should
//! spyglass itself be killed, the kernel kills the shell (`PR_SET_PDEATHSIG`), and the programs
//! it started get EOF or SIGPIPE on the pipes whose other end is gone.
//!
//! Everything the process writes is bounded: a raw picture is read into a buffer of exactly one
//! picture; an H.264 access unit may hold at most [`max_access_unit`] bytes; each stderr line is
//! logged up to [`MAX_LOG_LINE`] bytes, and at most [`LOG_LINES_PER_WINDOW`] lines per
//! [`LOG_WINDOW`].

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::controls::Controls;
use super::h264::AccessUnitSplitter;
use super::{
    AccessUnit, Backend, Captured, Delivers, Frame, SourceOpener, VideoError, VideoFormat,
    VideoSource, VideoSpec,
};

/// The `--video` prefix that selects this source.
pub const PREFIX: &str = "exec:";

/// The row in [`super::SOURCES`]: `--video exec:COMMAND`.
pub static BACKEND: Backend = Backend {
    usage: Some("`exec:COMMAND`"),
    claims: |value| {
        value
            .strip_prefix(PREFIX)
            .is_some_and(|command| !command.trim().is_empty())
    },
    stamped: false,
    prepare,
};

/// The first picture may take this long: the command may first have to start a camera
/// (rpicam-vid takes one to three seconds on a Pi).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// After the first picture, a process that writes nothing for this long has stalled.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the process group gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(500);
/// Bytes read from the pipe at a time in H.264 mode.
const READ_CHUNK: usize = 64 * 1024;
/// The pipe from the process is enlarged to this (the kernel's default limit for unprivileged
/// processes), so a whole picture fits and the process blocks less.
const PIPE_SIZE: i32 = 1 << 20;
/// Longest stderr line logged; the rest of the line is dropped.
pub const MAX_LOG_LINE: usize = 512;
/// At most this many stderr lines are logged per [`LOG_WINDOW`]; the rest are counted.
pub const LOG_LINES_PER_WINDOW: u32 = 50;
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// `--exec-format`: what the command writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExecFormat {
    /// Raw I420 pictures at the configured size, back to back.
    #[default]
    I420,
    /// H.264 Annex B (start codes), passed through to the viewers.
    H264,
}

impl FromStr for ExecFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<ExecFormat, String> {
        match value {
            "i420" => Ok(ExecFormat::I420),
            "h264" => Ok(ExecFormat::H264),
            _ => Err(format!("expected i420 or h264, got {value:?}")),
        }
    }
}

impl fmt::Display for ExecFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExecFormat::I420 => "i420",
            ExecFormat::H264 => "h264",
        })
    }
}

/// The largest H.264 access unit accepted from a stream of `width`x`height`: twice a raw
/// picture (an encoder's worst case is about one raw picture), and at least 1 MiB.
pub fn max_access_unit(width: u32, height: u32) -> usize {
    (2 * Frame::i420_len(width, height)).max(1 << 20)
}

/// No controls; each open starts the command anew.
fn prepare(spec: &VideoSpec) -> (Controls, SourceOpener) {
    let spec = spec.clone();
    let open: SourceOpener =
        Box::new(move || Ok(Box::new(ExecSource::open(&spec)?) as Box<dyn VideoSource>));
    (Controls::none(), open)
}

/// A running command and the pipes from it.
struct Process {
    child: Child,
    stdout: ChildStdout,
    /// What errors and the log call it: `exec:` and the command.
    name: String,
}

impl Process {
    fn spawn(command: &str, name: &str) -> Result<Process, VideoError> {
        let parent = std::process::id();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The shell dies with the thread that started it (the pipeline's supervisor,
                // which lives as long as spyglass does)...
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // ...and if spyglass died before the line above, at once.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| VideoError::Failed {
            device: name.to_string(),
            message: format!("cannot start /bin/sh: {e}"),
        })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VideoError::Failed {
                device: name.to_string(),
                message: "no pipes to the process".into(),
            });
        };
        // SAFETY: F_SETPIPE_SZ on a pipe we own; a refusal only leaves the default size.
        unsafe {
            libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        }
        let log_name = name.to_string();
        let pid = child.id();
        // Ends when the last holder of the pipe's write end (the process group) is gone.
        if let Err(err) = std::thread::Builder::new()
            .name("exec-stderr".into())
            .spawn(move || log_stderr(stderr, &log_name, pid))
        {
            warn!("{name}: cannot start the stderr logger: {err}");
        }
        info!(pid, "{name}: started");
        Ok(Process {
            child,
            stdout,
            name: name.to_string(),
        })
    }

    /// Read into `buf` what the process writes within `deadline`: at least one byte. EOF (the
    /// process closed its output, normally by exiting) and the deadline are errors.
    fn read_some(&mut self, buf: &mut [u8], deadline: Instant) -> Result<usize, VideoError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.failed(format!(
                    "wrote nothing for {} s",
                    STALL_TIMEOUT.as_secs().max(1)
                )));
            }
            let mut pollfd = libc::pollfd {
                fd: self.stdout.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.failed(format!("poll: {err}")));
            }
            if ready == 0 {
                continue;
            }
            match self.stdout.read(buf) {
                Ok(0) => return Err(self.exited()),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.failed(format!("reading its output: {e}"))),
            }
        }
    }

    fn failed(&self, message: String) -> VideoError {
        VideoError::Failed {
            device: self.name.clone(),
            message,
        }
    }

    /// The error for an output that ended: how the process exited, if it has.
    fn exited(&mut self) -> VideoError {
        // Give the process a moment to exit after it closed its output.
        let until = Instant::now() + Duration::from_millis(200);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return self.failed(format!("exited ({status})")),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => return self.failed("closed its output".into()),
            }
        }
    }
}

impl Drop for Process {
    /// SIGTERM to the process group, SIGKILL after [`TERM_GRACE`], and reap the shell.
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: signals to the group this process leads (its pid is its group id).
        unsafe {
            libc::killpg(group, libc::SIGTERM);
        }
        let until = Instant::now() + TERM_GRACE;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever of the group is left (the shell, or programs it started) is killed.
        // SAFETY: as above; ESRCH when nothing is left is fine.
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
        let status = self.child.wait();
        debug!("{}: stopped ({status:?})", self.name);
    }
}

/// Log the process's stderr line by line, within the bounds in the module's comment.
fn log_stderr(stderr: impl Read, name: &str, pid: u32) {
    let mut reader = BufReader::with_capacity(4096, stderr);
    let mut line = Vec::with_capacity(MAX_LOG_LINE);
    let mut window = Instant::now();
    let (mut logged, mut suppressed) = (0u32, 0u64);
    loop {
        line.clear();
        // Read one line, keeping at most MAX_LOG_LINE bytes of it.
        let mut ended = false;
        loop {
            let Ok(buf) = reader.fill_buf() else {
                ended = true;
                break;
            };
            if buf.is_empty() {
                ended = true;
                break;
            }
            let (take, newline) = match buf.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LOG_LINE.saturating_sub(line.len());
            line.extend_from_slice(&buf[..take.min(room)]);
            reader.consume(take);
            if newline {
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if !text.is_empty() {
            if window.elapsed() >= LOG_WINDOW {
                if suppressed > 0 {
                    warn!(
                        pid,
                        "{name}: {suppressed} more lines on stderr were not logged"
                    );
                }
                window = Instant::now();
                (logged, suppressed) = (0, 0);
            }
            if logged < LOG_LINES_PER_WINDOW {
                logged += 1;
                info!(pid, "{name}: {text}");
            } else {
                suppressed += 1;
            }
        }
        if ended {
            if suppressed > 0 {
                warn!(
                    pid,
                    "{name}: {suppressed} more lines on stderr were not logged"
                );
            }
            return;
        }
    }
}

/// A command's output as a video source.
pub struct ExecSource {
    process: Process,
    format: VideoFormat,
    exec_format: ExecFormat,
    /// No picture has been read yet: the first may take [`STARTUP_TIMEOUT`].
    first: bool,
    splitter: AccessUnitSplitter,
    /// Access units complete but not yet handed out, with when their first bytes came.
    ready: std::collections::VecDeque<(Vec<u8>, SystemTime, Instant)>,
    /// When the first bytes of the unit being gathered came.
    gathering_since: Option<(SystemTime, Instant)>,
    chunk: Vec<u8>,
}

impl ExecSource {
    /// Start the command that `spec`'s source names.
    pub fn open(spec: &VideoSpec) -> Result<Self, VideoError> {
        let name = spec.source.to_string();
        let command = spec
            .source
            .as_str()
            .strip_prefix(PREFIX)
            .unwrap_or_default();
        if command.trim().is_empty() {
            return Err(VideoError::Failed {
                device: name,
                message: "no command".into(),
            });
        }
        if spec.exec_format == ExecFormat::I420
            && (spec.width % 2 == 1 || spec.height % 2 == 1 || spec.width == 0 || spec.height == 0)
        {
            return Err(VideoError::Failed {
                device: name,
                message: format!(
                    "I420 needs an even size, not {}x{}",
                    spec.width, spec.height
                ),
            });
        }
        let process = Process::spawn(command, &name)?;
        let description = format!(
            "{name} ({} {}x{}@{})",
            spec.exec_format, spec.width, spec.height, spec.fps
        );
        Ok(ExecSource {
            process,
            format: VideoFormat {
                width: spec.width,
                height: spec.height,
                fps: spec.fps,
                description,
            },
            exec_format: spec.exec_format,
            first: true,
            splitter: AccessUnitSplitter::new(max_access_unit(spec.width, spec.height)),
            ready: std::collections::VecDeque::new(),
            gathering_since: None,
            chunk: Vec::new(),
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now()
            + if self.first {
                STARTUP_TIMEOUT
            } else {
                STALL_TIMEOUT
            }
    }

    fn next_access_unit(&mut self) -> Result<AccessUnit, VideoError> {
        let deadline = self.deadline();
        if self.chunk.len() != READ_CHUNK {
            self.chunk = vec![0; READ_CHUNK];
        }
        loop {
            if let Some((data, captured_at, instant)) = self.ready.pop_front() {
                self.first = false;
                return Ok(AccessUnit {
                    data: Bytes::from(data),
                    captured_at,
                    instant,
                });
            }
            let n = self.process.read_some(&mut self.chunk, deadline)?;
            let now = (SystemTime::now(), Instant::now());
            let since = *self.gathering_since.get_or_insert(now);
            let ready = &mut self.ready;
            let mut completed = false;
            self.splitter
                .push(&self.chunk[..n], |unit| {
                    ready.push_back((unit, since.0, since.1));
                    completed = true;
                })
                .map_err(|e| VideoError::Failed {
                    device: self.process.name.clone(),
                    message: e.to_string(),
                })?;
            if completed {
                // The bytes that completed a unit started the next one.
                self.gathering_since = Some(now);
            }
        }
    }
}

impl VideoSource for ExecSource {
    fn format(&self) -> &VideoFormat {
        &self.format
    }

    /// One raw I420 picture: exactly one picture's bytes.
    fn next_frame(&mut self) -> Result<Frame, VideoError> {
        if self.exec_format != ExecFormat::I420 {
            return Err(self
                .process
                .failed("writes H.264, which is passed through, not raw pictures".into()));
        }
        let (width, height) = (self.format.width, self.format.height);
        let mut data = vec![0u8; Frame::i420_len(width, height)];
        let deadline = self.deadline();
        let mut filled = 0;
        let mut started = None;
        while filled < data.len() {
            filled += self.process.read_some(&mut data[filled..], deadline)?;
            started.get_or_insert((SystemTime::now(), Instant::now()));
        }
        self.first = false;
        let (captured_at, instant) = started.unwrap_or_else(|| (SystemTime::now(), Instant::now()));
        Ok(Frame {
            width,
            height,
            data,
            captured_at,
            instant,
        })
    }

    fn delivers(&self) -> Delivers {
        match self.exec_format {
            ExecFormat::I420 => Delivers::I420,
            ExecFormat::H264 => Delivers::H264,
        }
    }

    fn next_captured(&mut self) -> Result<Captured, VideoError> {
        match self.exec_format {
            ExecFormat::I420 => self.next_frame().map(Captured::Raw),
            ExecFormat::H264 => self.next_access_unit().map(Captured::H264),
        }
    }

    fn startup(&self) -> Duration {
        STARTUP_TIMEOUT
    }
}
