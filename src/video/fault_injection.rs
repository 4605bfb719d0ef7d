//! A test pattern that fails on command (`--video test-faults:CONTROL_FILE`), for testing how
//! spyglass rides out camera faults without a camera to unplug.
//!
//! The control file holds one word, read before every frame and at open:
//! - `ok` (or no file): frames flow;
//! - `error`: each read fails, as a camera with read errors does;
//! - `stall`: reads block and deliver nothing, as a stalled driver does;
//! - `gone`: the device has been unplugged: reads and opens fail with "no such device".

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::controls::Controls;
use super::test_pattern::TestPattern;
use super::{Backend, Frame, SourceOpener, VideoError, VideoFormat, VideoSource, VideoSpec};

/// The `--video` prefix that selects this source.
pub const PREFIX: &str = "test-faults:";

/// The row in [`super::SOURCES`]: `--video test-faults:FILE` (not offered in errors: it is for
/// tests).
pub static BACKEND: Backend = Backend {
    usage: None,
    claims: |value| {
        value
            .strip_prefix(PREFIX)
            .is_some_and(|file| !file.is_empty())
    },
    stamped: true,
    prepare,
};

/// No controls; each open reads the control file anew.
fn prepare(spec: &VideoSpec) -> (Controls, SourceOpener) {
    let spec = spec.clone();
    let open: SourceOpener = Box::new(move || {
        let control = spec
            .source
            .as_str()
            .strip_prefix(PREFIX)
            .unwrap_or_default();
        Ok(Box::new(FaultInjection::open(control, &spec)?) as Box<dyn VideoSource>)
    });
    (Controls::none(), open)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Error,
    Stall,
    Gone,
}

pub struct FaultInjection {
    control: PathBuf,
    inner: TestPattern,
}

fn mode(control: &Path) -> Mode {
    match std::fs::read_to_string(control).map(|s| s.trim().to_ascii_lowercase()) {
        Ok(word) if word == "error" => Mode::Error,
        Ok(word) if word == "stall" => Mode::Stall,
        Ok(word) if word == "gone" => Mode::Gone,
        _ => Mode::Ok,
    }
}

impl FaultInjection {
    pub fn open(control: &str, spec: &VideoSpec) -> Result<Self, VideoError> {
        let control = PathBuf::from(control);
        if mode(&control) == Mode::Gone {
            return Err(VideoError::NotFound {
                device: spec.source.to_string(),
            });
        }
        Ok(FaultInjection {
            control,
            inner: TestPattern::new(spec),
        })
    }

    fn device(&self) -> String {
        format!("{PREFIX}{}", self.control.display())
    }
}

impl VideoSource for FaultInjection {
    fn format(&self) -> &VideoFormat {
        self.inner.format()
    }

    fn next_frame(&mut self) -> Result<Frame, VideoError> {
        loop {
            match mode(&self.control) {
                Mode::Ok => return self.inner.next_frame(),
                Mode::Error => {
                    std::thread::sleep(Duration::from_millis(30));
                    return Err(VideoError::Failed {
                        device: self.device(),
                        message: "read error (injected)".into(),
                    });
                }
                Mode::Gone => {
                    return Err(VideoError::NotFound {
                        device: self.device(),
                    });
                }
                Mode::Stall => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_control_file() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("ctl");
        let spec = VideoSpec {
            source: format!("{PREFIX}{}", control.display()).parse().unwrap(),
            width: 160,
            height: 120,
            fps: 30,
            ..Default::default()
        };
        let mut src = FaultInjection::open(control.to_str().unwrap(), &spec).unwrap();
        assert!(src.next_frame().is_ok());
        std::fs::write(&control, "error\n").unwrap();
        assert!(matches!(src.next_frame(), Err(VideoError::Failed { .. })));
        std::fs::write(&control, "gone").unwrap();
        assert!(matches!(src.next_frame(), Err(VideoError::NotFound { .. })));
        assert!(FaultInjection::open(control.to_str().unwrap(), &spec).is_err());
        std::fs::write(&control, "ok").unwrap();
        assert!(src.next_frame().is_ok());
    }
}
