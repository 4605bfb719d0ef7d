//! The built-in test pattern source (`--video test`). TODO: moving content + pattern code blocks.

use super::{Frame, VideoError, VideoFormat, VideoSource, VideoSpec};

pub struct TestPattern {
    format: VideoFormat,
}

impl TestPattern {
    pub fn new(spec: &VideoSpec) -> Self {
        TestPattern {
            format: VideoFormat {
                width: spec.width,
                height: spec.height,
                fps: spec.fps,
                description: "test pattern".into(),
            },
        }
    }
}

impl VideoSource for TestPattern {
    fn format(&self) -> &VideoFormat {
        &self.format
    }
    fn next_frame(&mut self) -> Result<Frame, VideoError> {
        unimplemented!()
    }
}
