//! Still pictures: a raw frame (video-range I420) as a baseline JPEG (JFIF, full-range YCbCr,
//! 4:2:0), for the data channel's `snapshot` request.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

use super::Frame;

/// JPEG quality when the viewer names none.
pub const DEFAULT_QUALITY: u8 = 85;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("quality must be 1..=100, got {0}")]
    Quality(i64),
    #[error("JPEG encoding of a {width}x{height} frame failed: {message}")]
    Encode {
        width: u32,
        height: u32,
        message: String,
    },
}

/// Encode `frame` as a JPEG of the same size at `quality` (1..=100).
pub fn jpeg(frame: &Frame, quality: i64) -> Result<Vec<u8>, SnapshotError> {
    let quality = u8::try_from(quality)
        .ok()
        .filter(|q| (1..=100).contains(q))
        .ok_or(SnapshotError::Quality(quality))?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let encode_error = |message: String| SnapshotError::Encode {
        width: frame.width,
        height: frame.height,
        message,
    };
    let (width, height) = match (u16::try_from(w), u16::try_from(h)) {
        (Ok(width), Ok(height)) => (width, height),
        _ => return Err(encode_error("too large for JPEG".into())),
    };
    if frame.data.len() < Frame::i420_len(frame.width, frame.height) {
        return Err(encode_error("frame data is short".into()));
    }
    // JFIF YCbCr is full range: stretch video-range luma (16..235) and chroma (16..240).
    let full_y = |v: u8| ((i32::from(v) - 16) * 255 / 219).clamp(0, 255) as u8;
    let full_c = |v: u8| ((i32::from(v) - 128) * 255 / 224 + 128).clamp(0, 255) as u8;
    let (y, u, v) = frame.planes();
    let cw = w / 2;
    let mut pixels = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        for x in 0..w {
            let c = (row / 2) * cw + x / 2;
            pixels.extend_from_slice(&[full_y(y[row * w + x]), full_c(u[c]), full_c(v[c])]);
        }
    }
    let mut out = Vec::new();
    let mut encoder = Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(SamplingFactor::R_4_2_0);
    encoder
        .encode(&pixels, width, height, ColorType::Ycbcr)
        .map_err(|e| encode_error(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern;
    use crate::video::VideoSource;
    use crate::video::test_pattern::TestPattern;

    #[test]
    fn a_snapshot_decodes_to_the_frame_with_its_code() {
        let spec = crate::video::VideoSpec {
            source: "test".parse().unwrap(),
            width: 320,
            height: 240,
            fps: 100,
            ..Default::default()
        };
        let mut source = TestPattern::new(&spec);
        source.next_frame().unwrap();
        let frame = source.next_frame().unwrap();
        let bytes = jpeg(&frame, 85).unwrap();
        let options = zune_jpeg::zune_core::options::DecoderOptions::default()
            .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::Luma);
        let mut decoder =
            zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(&bytes), options);
        let luma = decoder.decode().unwrap();
        let info = decoder.info().unwrap();
        assert_eq!((info.width, info.height), (320, 240));
        let stamp = pattern::read(&luma, 320, 240, 320).map(|s| s.frame);
        assert_eq!(stamp, Some(1));
        assert!(matches!(jpeg(&frame, 0), Err(SnapshotError::Quality(0))));
        assert!(matches!(
            jpeg(&frame, 101),
            Err(SnapshotError::Quality(101))
        ));
    }
}
