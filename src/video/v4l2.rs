//! V4L2 camera source. TODO.

use super::{Frame, VideoError, VideoFormat, VideoSource, VideoSpec};

pub struct V4l2Source {
    format: VideoFormat,
}

impl V4l2Source {
    pub fn open(path: &str, _spec: &VideoSpec) -> Result<Self, VideoError> {
        Err(VideoError::NotFound { device: path.to_string() })
    }
}

impl VideoSource for V4l2Source {
    fn format(&self) -> &VideoFormat {
        &self.format
    }
    fn next_frame(&mut self) -> Result<Frame, VideoError> {
        unimplemented!()
    }
}
