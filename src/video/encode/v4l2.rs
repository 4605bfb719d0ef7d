//! The V4L2 memory-to-memory H.264 encoder (the Raspberry Pi's `/dev/video11`).

use super::{Backend, EncodeError, EncodedFrame, Encoder, EncoderSettings};
use crate::video::Frame;

/// What the status and the log call this encoder.
pub const NAME: &str = "v4l2";

/// The row in [`super::ENCODERS`].
pub static BACKEND: Backend = Backend {
    name: NAME,
    open: |settings| Ok(Box::new(M2mEncoder::open(None, settings)?)),
};

/// The first V4L2 memory-to-memory device that encodes I420 to H.264.
pub fn find_encoder() -> Option<String> {
    None
}

pub struct M2mEncoder {}

impl M2mEncoder {
    pub fn open(path: Option<&str>, settings: EncoderSettings) -> Result<Self, EncodeError> {
        let _ = (path, settings);
        Err(EncodeError::Failed {
            encoder: NAME,
            message: "no V4L2 H.264 encoder found".into(),
        })
    }
}

impl Encoder for M2mEncoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn encode(&mut self, frame: &Frame, force: bool) -> Result<Option<EncodedFrame>, EncodeError> {
        let _ = (frame, force);
        Ok(None)
    }
}
