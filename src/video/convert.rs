//! Converting camera pictures to I420, the layout of [`Frame`](super::Frame): a tight Y plane,
//! then U, then V at half width and half height, limited ("TV") range as H.264 expects.
//!
//! Raw formats (YUYV, NV12, YU12) are taken as limited range, as V4L2 drivers deliver them, and
//! only repacked; their rows may be padded (`stride`, V4L2's `bytesperline`). MJPEG frames are
//! JFIF, i.e. full-range YCbCr, and are rescaled to limited range on the way. Every function writes
//! into a caller-owned `Vec`, resized to one picture; the V4L2 source gives each frame a new one,
//! since the frame moves on to the encoder and then to the snapshot slot.
//!
//! MJPEG goes through libjpeg-turbo ([`MjpegDecoder`]), which decodes to the JPEG's own planar
//! YCbCr: a 4:2:0 JPEG straight into the I420 picture, a 4:2:2 one (what most webcams send) with
//! its chroma rows averaged in pairs, never through 4:4:4. [`ZuneMjpegDecoder`] is the pure-Rust
//! decoder used before (full 4:4:4, then subsampled), kept as the reference `make bench` measures
//! against.

use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::Frame;

/// Why a buffer could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "{format} buffer of {got} bytes is too short for {width}x{height} with {stride} bytes per line (need {need})"
    )]
    BadLength {
        format: &'static str,
        width: u32,
        height: u32,
        stride: usize,
        got: usize,
        need: usize,
    },
    #[error(
        "{format} size {width}x{height} is not usable (must be even and non-zero, stride at least {min_stride}, got {stride})"
    )]
    BadGeometry {
        format: &'static str,
        width: u32,
        height: u32,
        stride: usize,
        min_stride: usize,
    },
    #[error("corrupt JPEG: {0}")]
    CorruptJpeg(String),
    #[error("JPEG is {got_width}x{got_height}, expected {width}x{height}")]
    JpegSize {
        width: u32,
        height: u32,
        got_width: usize,
        got_height: usize,
    },
}

/// Where the rows of a raw picture are: `stride` bytes per line of the first plane (V4L2
/// `bytesperline`), and `plane_rows` lines allocated per plane, normally `height`; some drivers pad
/// planar formats to a multiple of 16 lines, which moves the chroma planes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub plane_rows: u32,
}

impl Layout {
    /// Rows of `stride` bytes, planes back to back.
    pub fn new(width: u32, height: u32, stride: usize) -> Self {
        Layout {
            width,
            height,
            stride,
            plane_rows: height,
        }
    }

    /// No padding at all: the stride is the natural line length of `format`.
    pub fn tight(width: u32, height: u32, bytes_per_pixel_row: usize) -> Self {
        Layout::new(width, height, width as usize * bytes_per_pixel_row)
    }

    fn check(
        &self,
        format: &'static str,
        min_stride: usize,
    ) -> Result<(usize, usize), ConvertError> {
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0
            || h == 0
            || w % 2 == 1
            || h % 2 == 1
            || self.stride < min_stride
            || self.plane_rows < self.height
        {
            return Err(ConvertError::BadGeometry {
                format,
                width: self.width,
                height: self.height,
                stride: self.stride,
                min_stride,
            });
        }
        Ok((w, h))
    }
}

/// Resize `out` to one I420 picture of `width`x`height` and split it into its planes.
fn i420_planes(
    out: &mut Vec<u8>,
    width: usize,
    height: usize,
) -> (&mut [u8], &mut [u8], &mut [u8]) {
    out.resize(Frame::i420_len(width as u32, height as u32), 0);
    let (y, chroma) = out.split_at_mut(width * height);
    let (u, v) = chroma.split_at_mut((width / 2) * (height / 2));
    (y, u, v)
}

fn too_short(format: &'static str, layout: &Layout, got: usize, need: usize) -> ConvertError {
    ConvertError::BadLength {
        format,
        width: layout.width,
        height: layout.height,
        stride: layout.stride,
        got,
        need,
    }
}

/// Copy `rows` rows of `width` bytes from `src` (rows `stride` apart) into tight `dst`.
fn copy_plane(src: &[u8], stride: usize, dst: &mut [u8], width: usize, rows: usize) {
    if stride == width {
        dst[..width * rows].copy_from_slice(&src[..width * rows]);
    } else {
        for (d, s) in dst
            .chunks_exact_mut(width)
            .zip(src.chunks(stride))
            .take(rows)
        {
            d.copy_from_slice(&s[..width]);
        }
    }
}

/// Packed YUYV 4:2:2 to I420. Luma is copied; each chroma sample is the average of the two lines
/// it covers (as ffmpeg's default downsampling nearly does).
///
/// Plain Rust, written so the compiler vectorises it (stride-2 and stride-4 loads). yuvutils-rs
/// 0.8.3's `yuyv422_to_yuv420` is not used: its SIMD paths leave the last columns of every line
/// unwritten (yuvutils-rs issue #92).
pub fn yuyv_to_i420(src: &[u8], layout: &Layout, out: &mut Vec<u8>) -> Result<(), ConvertError> {
    const FORMAT: &str = "YUYV";
    let (w, h) = layout.check(FORMAT, layout.width as usize * 2)?;
    let line = w * 2;
    let need = layout.stride * (h - 1) + line;
    if src.len() < need {
        return Err(too_short(FORMAT, layout, src.len(), need));
    }
    let (y, u, v) = i420_planes(out, w, h);
    let stride = layout.stride;
    for (row, ((y2, u_row), v_row)) in y
        .chunks_exact_mut(w * 2)
        .zip(u.chunks_exact_mut(w / 2))
        .zip(v.chunks_exact_mut(w / 2))
        .enumerate()
    {
        let top = &src[2 * row * stride..2 * row * stride + line];
        let bottom = &src[(2 * row + 1) * stride..(2 * row + 1) * stride + line];
        let (y_top, y_bottom) = y2.split_at_mut(w);
        for (d, px) in y_top.iter_mut().zip(top.chunks_exact(2)) {
            *d = px[0];
        }
        for (d, px) in y_bottom.iter_mut().zip(bottom.chunks_exact(2)) {
            *d = px[0];
        }
        for (((u, v), t), b) in u_row
            .iter_mut()
            .zip(v_row.iter_mut())
            .zip(top.chunks_exact(4))
            .zip(bottom.chunks_exact(4))
        {
            *u = (u16::from(t[1]) + u16::from(b[1])).div_ceil(2) as u8;
            *v = (u16::from(t[3]) + u16::from(b[3])).div_ceil(2) as u8;
        }
    }
    Ok(())
}

/// NV12 (Y plane, then interleaved UV at half size) to I420.
pub fn nv12_to_i420(src: &[u8], layout: &Layout, out: &mut Vec<u8>) -> Result<(), ConvertError> {
    const FORMAT: &str = "NV12";
    let (w, h) = layout.check(FORMAT, layout.width as usize)?;
    let uv_offset = layout.stride * layout.plane_rows as usize;
    let need = uv_offset + layout.stride * (h / 2 - 1) + w;
    if src.len() < need {
        return Err(too_short(FORMAT, layout, src.len(), need));
    }
    let (y, u, v) = i420_planes(out, w, h);
    copy_plane(src, layout.stride, y, w, h);
    let uv = &src[uv_offset..];
    for ((u_row, v_row), uv_row) in u
        .chunks_exact_mut(w / 2)
        .zip(v.chunks_exact_mut(w / 2))
        .zip(uv.chunks(layout.stride))
    {
        for ((u, v), pair) in u_row
            .iter_mut()
            .zip(v_row.iter_mut())
            .zip(uv_row[..w].chunks_exact(2))
        {
            *u = pair[0];
            *v = pair[1];
        }
    }
    Ok(())
}

/// YU12 (V4L2's name for I420) to tight I420: a copy that drops line padding. The chroma planes
/// have `stride / 2` bytes per line, as V4L2 defines for single-plane YU12.
pub fn yu12_to_i420(src: &[u8], layout: &Layout, out: &mut Vec<u8>) -> Result<(), ConvertError> {
    const FORMAT: &str = "YU12";
    let (w, h) = layout.check(FORMAT, layout.width as usize)?;
    let (stride, rows) = (layout.stride, layout.plane_rows as usize);
    let c_stride = stride / 2;
    let u_offset = stride * rows;
    let v_offset = u_offset + c_stride * (rows / 2);
    let need = v_offset + c_stride * (h / 2 - 1) + w / 2;
    if src.len() < need {
        return Err(too_short(FORMAT, layout, src.len(), need));
    }
    let (y, u, v) = i420_planes(out, w, h);
    copy_plane(src, stride, y, w, h);
    copy_plane(&src[u_offset..], c_stride, u, w / 2, h / 2);
    copy_plane(&src[v_offset..], c_stride, v, w / 2, h / 2);
    Ok(())
}

/// The Huffman tables of ITU-T T.81 Annex K.3, as one DHT segment. UVC webcams leave them out of
/// their MJPEG frames ("AVI1" style) and decoders must assume these.
const STANDARD_DHT: [u8; 420] = {
    const DC_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const DC_C_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const AC_L_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
    const AC_L_VALS: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    const AC_C_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_C_VALS: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ];
    let mut seg = [0u8; 420];
    // FF C4, length 418 (everything after the marker).
    seg[0] = 0xff;
    seg[1] = 0xc4;
    seg[2] = (418u16 >> 8) as u8;
    seg[3] = (418u16 & 0xff) as u8;
    let mut at = 4;
    // (class << 4 | id, bits, values): DC luma, AC luma, DC chroma, AC chroma.
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_BITS, &DC_VALS),
        (0x10, &AC_L_BITS, &AC_L_VALS),
        (0x01, &DC_C_BITS, &DC_VALS),
        (0x11, &AC_C_BITS, &AC_C_VALS),
    ];
    let mut t = 0;
    while t < tables.len() {
        let (class_id, bits, vals) = tables[t];
        seg[at] = class_id;
        at += 1;
        let mut i = 0;
        while i < 16 {
            seg[at] = bits[i];
            at += 1;
            i += 1;
        }
        let mut i = 0;
        while i < vals.len() {
            seg[at] = vals[i];
            at += 1;
            i += 1;
        }
        t += 1;
    }
    assert!(at == 420);
    seg
};

/// Whether a JPEG defines Huffman tables (a DHT segment) before its first scan.
fn has_huffman_tables(jpeg: &[u8]) -> bool {
    let mut at = 2; // after SOI
    while at + 4 <= jpeg.len() {
        if jpeg[at] != 0xff {
            return false; // not at a marker: malformed, let the decoder complain
        }
        let marker = jpeg[at + 1];
        match marker {
            0xff => at += 1, // fill byte
            0xc4 => return true,
            0xda | 0xd9 => return false,   // start of scan, end of image
            0x01 | 0xd0..=0xd7 => at += 2, // markers without a length
            _ => at += 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]])),
        }
    }
    false
}

/// Full range (JFIF) to limited range, one table per kind of sample.
const LUMA_TO_LIMITED: [u8; 256] = range_table(219, 16);
const CHROMA_TO_LIMITED: [u8; 256] = range_table(224, 16);

/// `out = lo + round(v * span / 255)`; for chroma (span 224) this maps 128 to 128.
const fn range_table(span: u32, lo: u32) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut v = 0;
    while v < 256 {
        t[v] = (lo + (v as u32 * span + 127) / 255) as u8;
        v += 1;
    }
    t
}

/// Rescale a full-range plane to limited range in place: `lo + round(v * span / 255)`, the same
/// as [`range_table`], in arithmetic the compiler vectorises.
fn to_limited(plane: &mut [u8], span: u16) {
    for v in plane.iter_mut() {
        let x = u16::from(*v) * span + 127;
        // x / 255, exact for x < 65535.
        *v = 16 + ((x + 1 + (x >> 8)) >> 8) as u8;
    }
}

/// Check the size, find the start marker, and put the standard Huffman tables into a frame that
/// comes without them (into `patched`). Returns the JPEG to decode.
fn prepare_jpeg<'a>(
    jpeg: &'a [u8],
    width: u32,
    height: u32,
    patched: &'a mut Vec<u8>,
) -> Result<&'a [u8], ConvertError> {
    if width == 0 || height == 0 || width % 2 == 1 || height % 2 == 1 {
        return Err(ConvertError::BadGeometry {
            format: "MJPG",
            width,
            height,
            stride: 0,
            min_stride: 0,
        });
    }
    if jpeg.len() < 4 || jpeg[0] != 0xff || jpeg[1] != 0xd8 {
        return Err(ConvertError::CorruptJpeg(format!(
            "no JPEG start marker in {} bytes",
            jpeg.len()
        )));
    }
    if has_huffman_tables(jpeg) {
        return Ok(jpeg);
    }
    patched.clear();
    patched.extend_from_slice(&jpeg[..2]);
    patched.extend_from_slice(&STANDARD_DHT);
    patched.extend_from_slice(&jpeg[2..]);
    Ok(patched)
}

/// Decodes MJPEG frames to I420 with libjpeg-turbo, keeping its decompressor and scratch
/// buffers between frames.
#[derive(Default)]
pub struct MjpegDecoder {
    /// The frame with the standard Huffman tables put in, when it came without.
    patched: Vec<u8>,
    /// Made at the first frame.
    decompressor: Option<turbojpeg::Decompressor>,
    /// The JPEG's own planes, when its chroma is not 4:2:0.
    planes: Vec<u8>,
}

impl std::fmt::Debug for MjpegDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MjpegDecoder").finish_non_exhaustive()
    }
}

fn turbo_error(e: turbojpeg::Error) -> ConvertError {
    ConvertError::CorruptJpeg(e.to_string())
}

impl MjpegDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one JPEG of `width`x`height` (baseline, any chroma subsampling, with or without
    /// Huffman tables) into `out` as limited-range I420. `jpeg` should be only the bytes the
    /// driver filled (`bytesused`), though trailing padding is tolerated. A damaged JPEG (libjpeg's
    /// warnings included, e.g. a truncated frame) is an error, never a half-grey picture.
    pub fn decode(
        &mut self,
        jpeg: &[u8],
        width: u32,
        height: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        let data = prepare_jpeg(jpeg, width, height, &mut self.patched)?;
        let decompressor = match &mut self.decompressor {
            Some(d) => d,
            None => self
                .decompressor
                .insert(turbojpeg::Decompressor::new().map_err(turbo_error)?),
        };
        let header = decompressor.read_header(data).map_err(turbo_error)?;
        if (header.width, header.height) != (width as usize, height as usize) {
            return Err(ConvertError::JpegSize {
                width,
                height,
                got_width: header.width,
                got_height: header.height,
            });
        }
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w / 2, h / 2);
        out.resize(Frame::i420_len(width, height), 0);
        if header.subsamp == turbojpeg::Subsamp::Sub2x2 {
            // The JPEG's planes are I420's: decode straight into the picture.
            let image = turbojpeg::YuvImage {
                pixels: out.as_mut_slice(),
                width: w,
                align: 1,
                height: h,
                subsamp: header.subsamp,
            };
            decompressor
                .decompress_to_yuv(data, image)
                .map_err(turbo_error)?;
            let (y, chroma) = out.split_at_mut(w * h);
            to_limited(y, 219);
            to_limited(chroma, 224);
            return Ok(());
        }
        let len = turbojpeg::yuv_pixels_len(w, 1, h, header.subsamp).map_err(turbo_error)?;
        self.planes.resize(len, 0);
        let image = turbojpeg::YuvImage {
            pixels: self.planes.as_mut_slice(),
            width: w,
            align: 1,
            height: h,
            subsamp: header.subsamp,
        };
        decompressor
            .decompress_to_yuv(data, image)
            .map_err(turbo_error)?;
        let (y, u, v) = i420_planes(out, w, h);
        y.copy_from_slice(&self.planes[..w * h]);
        to_limited(y, 219);
        if header.subsamp == turbojpeg::Subsamp::Gray {
            u.fill(128);
            v.fill(128);
            return Ok(());
        }
        // The JPEG's chroma planes: their size from what is left (both the same size).
        let chroma = &self.planes[w * h..];
        let (sw, sh) = match header.subsamp {
            turbojpeg::Subsamp::Sub2x1 => (cw, h),
            turbojpeg::Subsamp::None => (w, h),
            turbojpeg::Subsamp::Sub1x2 => (w, ch),
            turbojpeg::Subsamp::Sub4x1 => (w.div_ceil(4), h),
            turbojpeg::Subsamp::Sub1x4 => (w, h.div_ceil(4)),
            other => {
                return Err(ConvertError::CorruptJpeg(format!(
                    "chroma subsampling {other:?} is not supported"
                )));
            }
        };
        if chroma.len() < 2 * sw * sh {
            return Err(ConvertError::CorruptJpeg("short chroma planes".into()));
        }
        let (cb, cr) = chroma.split_at(sw * sh);
        for (dst, src) in [(u, cb), (v, &cr[..sw * sh])] {
            resample_chroma(src, sw, sh, dst, cw, ch);
            to_limited(dst, 224);
        }
        Ok(())
    }
}

/// Chroma plane `src` (`sw`x`sh`) to `dst` (`dw`x`dh`, half the picture each way): 4:2:2 (the
/// common webcam case) averages each pair of rows; 4:4:4 averages 2x2 blocks; other layouts
/// take the nearest sample.
fn resample_chroma(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
    if sw == dw && sh == 2 * dh {
        for (row, out) in dst.chunks_exact_mut(dw).enumerate() {
            let top = &src[2 * row * sw..][..dw];
            let bottom = &src[(2 * row + 1) * sw..][..dw];
            for ((d, &t), &b) in out.iter_mut().zip(top).zip(bottom) {
                *d = (u16::from(t) + u16::from(b)).div_ceil(2) as u8;
            }
        }
    } else if sw == 2 * dw && sh == 2 * dh {
        for (row, out) in dst.chunks_exact_mut(dw).enumerate() {
            let top = &src[2 * row * sw..][..sw];
            let bottom = &src[(2 * row + 1) * sw..][..sw];
            for ((d, t), b) in out
                .iter_mut()
                .zip(top.chunks_exact(2))
                .zip(bottom.chunks_exact(2))
            {
                let sum = u16::from(t[0]) + u16::from(t[1]) + u16::from(b[0]) + u16::from(b[1]);
                *d = ((sum + 2) / 4) as u8;
            }
        }
    } else {
        for (row, out) in dst.chunks_exact_mut(dw).enumerate() {
            let sy = (row * sh / dh).min(sh - 1);
            for (x, d) in out.iter_mut().enumerate() {
                *d = src[sy * sw + (x * sw / dw).min(sw - 1)];
            }
        }
    }
}

/// The pure-Rust MJPEG decoder spyglass used before libjpeg-turbo: zune-jpeg to full-resolution
/// YCbCr 4:4:4, then 2x2 chroma averages. Kept as the reference that `make bench` measures
/// [`MjpegDecoder`] against, and that the tests compare it with.
#[derive(Debug, Default)]
pub struct ZuneMjpegDecoder {
    /// The frame with the standard Huffman tables put in, when it came without.
    patched: Vec<u8>,
    /// Decoded full-resolution YCbCr (or luma for a greyscale JPEG), interleaved.
    decoded: Vec<u8>,
}

impl ZuneMjpegDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// As [`MjpegDecoder::decode`].
    pub fn decode(
        &mut self,
        jpeg: &[u8],
        width: u32,
        height: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        let data = prepare_jpeg(jpeg, width, height, &mut self.patched)?;

        let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::YCbCr);
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
        decoder
            .decode_headers()
            .map_err(|e| ConvertError::CorruptJpeg(e.to_string()))?;
        let (got_width, got_height) = decoder.dimensions().unwrap_or((0, 0));
        if (got_width, got_height) != (width as usize, height as usize) {
            return Err(ConvertError::JpegSize {
                width,
                height,
                got_width,
                got_height,
            });
        }
        let grey = decoder.input_colorspace() == Some(ColorSpace::Luma);
        if grey {
            decoder.set_options(options.jpeg_set_out_colorspace(ColorSpace::Luma));
        }
        let size = decoder
            .output_buffer_size()
            .ok_or_else(|| ConvertError::CorruptJpeg("size overflows".into()))?;
        self.decoded.resize(size, 0);
        decoder
            .decode_into(&mut self.decoded)
            .map_err(|e| ConvertError::CorruptJpeg(e.to_string()))?;

        let (w, h) = (width as usize, height as usize);
        let (y, u, v) = i420_planes(out, w, h);
        if grey {
            for (d, &s) in y.iter_mut().zip(&self.decoded) {
                *d = LUMA_TO_LIMITED[usize::from(s)];
            }
            u.fill(128);
            v.fill(128);
            return Ok(());
        }
        // Interleaved YCbCr 4:4:4 -> Y plane, and 2x2 averages of Cb and Cr.
        let line = w * 3;
        for ((pair, y2), (u_row, v_row)) in self
            .decoded
            .chunks_exact(line * 2)
            .zip(y.chunks_exact_mut(w * 2))
            .zip(u.chunks_exact_mut(w / 2).zip(v.chunks_exact_mut(w / 2)))
        {
            let (top, bottom) = pair.split_at(line);
            let (y_top, y_bottom) = y2.split_at_mut(w);
            for (d, px) in y_top.iter_mut().zip(top.chunks_exact(3)) {
                *d = LUMA_TO_LIMITED[usize::from(px[0])];
            }
            for (d, px) in y_bottom.iter_mut().zip(bottom.chunks_exact(3)) {
                *d = LUMA_TO_LIMITED[usize::from(px[0])];
            }
            for (((u, v), t), b) in u_row
                .iter_mut()
                .zip(v_row.iter_mut())
                .zip(top.chunks_exact(6))
                .zip(bottom.chunks_exact(6))
            {
                let cb =
                    (u32::from(t[1]) + u32::from(t[4]) + u32::from(b[1]) + u32::from(b[4]) + 2) / 4;
                let cr =
                    (u32::from(t[2]) + u32::from(t[5]) + u32::from(b[2]) + u32::from(b[5]) + 2) / 4;
                *u = CHROMA_TO_LIMITED[cb as usize];
                *v = CHROMA_TO_LIMITED[cr as usize];
            }
        }
        Ok(())
    }
}

/// One-off MJPEG decode; a capture loop should keep an [`MjpegDecoder`] instead.
pub fn mjpeg_to_i420(
    jpeg: &[u8],
    width: u32,
    height: u32,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    MjpegDecoder::new().decode(jpeg, width, height, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 320;
    const H: u32 = 240;

    /// A fixture from `tests/data/` (see its README for how they were made).
    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn reference() -> Vec<u8> {
        let r = fixture("testsrc2_320x240.i420");
        assert_eq!(r.len(), Frame::i420_len(W, H));
        r
    }

    /// Mean absolute difference and largest difference of each plane (Y, U, V).
    fn plane_diffs(a: &[u8], b: &[u8]) -> [(f64, u8); 3] {
        assert_eq!(a.len(), b.len());
        let y = (W * H) as usize;
        let c = y / 4;
        let ranges = [0..y, y..y + c, y + c..y + 2 * c];
        ranges.map(|r| {
            let (pa, pb) = (&a[r.clone()], &b[r]);
            let sum: u64 = pa
                .iter()
                .zip(pb)
                .map(|(x, y)| u64::from(x.abs_diff(*y)))
                .sum();
            let max = pa
                .iter()
                .zip(pb)
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap_or(0);
            (sum as f64 / pa.len() as f64, max)
        })
    }

    /// Copy `src` (rows of `line` bytes) into rows of `stride` bytes, padding with 0xEE.
    fn pad_rows(src: &[u8], line: usize, stride: usize) -> Vec<u8> {
        src.chunks(line)
            .flat_map(|row| {
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0xee, stride - line))
            })
            .collect()
    }

    /// Remove every DHT (FFC4) segment before the first scan, as UVC webcams send frames.
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut at = 2;
        loop {
            assert_eq!(jpeg[at], 0xff, "marker expected at {at}");
            let marker = jpeg[at + 1];
            if marker == 0xda {
                out.extend_from_slice(&jpeg[at..]);
                return out;
            }
            let len = 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
            if marker != 0xc4 {
                out.extend_from_slice(&jpeg[at..at + len]);
            }
            at += len;
        }
    }

    #[test]
    fn nv12_matches_ffmpeg_exactly() {
        let mut out = Vec::new();
        nv12_to_i420(
            &fixture("testsrc2_320x240.nv12"),
            &Layout::tight(W, H, 1),
            &mut out,
        )
        .unwrap();
        assert!(out == reference());
    }

    #[test]
    fn nv12_with_padded_lines() {
        let nv12 = fixture("testsrc2_320x240.nv12");
        let padded = pad_rows(&nv12, W as usize, 384);
        let mut out = Vec::new();
        nv12_to_i420(&padded, &Layout::new(W, H, 384), &mut out).unwrap();
        assert!(out == reference());
    }

    #[test]
    fn yuyv_matches_ffmpeg() {
        let mut out = Vec::new();
        yuyv_to_i420(
            &fixture("testsrc2_320x240.yuyv"),
            &Layout::tight(W, H, 2),
            &mut out,
        )
        .unwrap();
        let [y, u, v] = plane_diffs(&out, &reference());
        // Luma is a lossless repack; chroma is a two-line average where ffmpeg filters with a
        // slightly wider kernel (0.16 levels apart on average for this picture).
        assert_eq!(y, (0.0, 0), "luma");
        assert!(
            u.0 < 0.5 && v.0 < 0.5,
            "chroma differs too much: {u:?} {v:?}"
        );
    }

    #[test]
    fn yuyv_with_padded_lines_is_the_same_as_tight() {
        let yuyv = fixture("testsrc2_320x240.yuyv");
        let (mut tight, mut padded) = (Vec::new(), Vec::new());
        yuyv_to_i420(&yuyv, &Layout::tight(W, H, 2), &mut tight).unwrap();
        let stride = W as usize * 2 + 64;
        // Drop the padding after the last line: drivers need not provide it.
        let mut src = pad_rows(&yuyv, W as usize * 2, stride);
        src.truncate(src.len() - 64);
        yuyv_to_i420(&src, &Layout::new(W, H, stride), &mut padded).unwrap();
        assert!(tight == padded);
    }

    #[test]
    fn yu12_copy_honours_stride_and_plane_padding() {
        let reference = reference();
        let (w, h) = (W as usize, H as usize);
        let (y, rest) = reference.split_at(w * h);
        let (u, v) = rest.split_at(w * h / 4);
        // Stride 352 (chroma 176), planes padded to 256 lines as some drivers do.
        let (stride, rows) = (352usize, 256usize);
        let mut src = pad_rows(y, w, stride);
        src.resize(stride * rows, 0);
        src.extend(pad_rows(u, w / 2, stride / 2));
        src.resize(stride * rows + stride / 2 * rows / 2, 0);
        src.extend(pad_rows(v, w / 2, stride / 2));
        let layout = Layout {
            width: W,
            height: H,
            stride,
            plane_rows: rows as u32,
        };
        let mut out = Vec::new();
        yu12_to_i420(&src, &layout, &mut out).unwrap();
        assert!(out == reference);
        // And the plain tight case.
        yu12_to_i420(&reference, &Layout::tight(W, H, 1), &mut out).unwrap();
        assert!(out == reference);
    }

    #[test]
    fn mjpeg_422_matches_ffmpeg_within_a_few_levels() {
        let jpeg = fixture("testsrc2_320x240_422.jpg");
        let mut out = Vec::new();
        mjpeg_to_i420(&jpeg, W, H, &mut out).unwrap();
        let diffs = plane_diffs(&out, &reference());
        for (plane, (mad, _)) in ["Y", "U", "V"].iter().zip(diffs) {
            assert!(
                mad < 3.0,
                "{plane}: mean difference {mad} (all planes: {diffs:?})"
            );
        }
    }

    #[test]
    fn mjpeg_without_huffman_tables_decodes_like_the_original() {
        let jpeg = fixture("testsrc2_320x240_422.jpg");
        let stripped = strip_dht(&jpeg);
        assert_eq!(
            stripped.len(),
            jpeg.len() - 420,
            "the fixture has one DHT segment with all four tables"
        );
        assert!(!has_huffman_tables(&stripped));
        let mut decoder = MjpegDecoder::new();
        let (mut with, mut without) = (Vec::new(), Vec::new());
        decoder.decode(&jpeg, W, H, &mut with).unwrap();
        decoder.decode(&stripped, W, H, &mut without).unwrap();
        assert!(with == without);
    }

    #[test]
    fn mjpeg_tolerates_trailing_bytes_after_the_image() {
        let mut jpeg = fixture("testsrc2_320x240_422.jpg");
        let mut clean = Vec::new();
        mjpeg_to_i420(&jpeg, W, H, &mut clean).unwrap();
        jpeg.extend(std::iter::repeat_n(0, 4096));
        let mut padded = Vec::new();
        mjpeg_to_i420(&jpeg, W, H, &mut padded).unwrap();
        assert!(clean == padded);
    }

    #[test]
    fn corrupt_or_wrong_jpegs_are_errors() {
        let jpeg = fixture("testsrc2_320x240_422.jpg");
        let mut out = Vec::new();
        assert!(matches!(
            mjpeg_to_i420(b"not a jpeg", W, H, &mut out),
            Err(ConvertError::CorruptJpeg(_))
        ));
        assert!(matches!(
            mjpeg_to_i420(&jpeg[..200], W, H, &mut out),
            Err(ConvertError::CorruptJpeg(_))
        ));
        let err = mjpeg_to_i420(&jpeg, 640, 480, &mut out).unwrap_err();
        assert_eq!(err.to_string(), "JPEG is 320x240, expected 640x480");
    }

    #[test]
    fn short_raw_buffers_are_errors() {
        let mut out = Vec::new();
        let err = yuyv_to_i420(&[0; 1000], &Layout::tight(W, H, 2), &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "YUYV buffer of 1000 bytes is too short for 320x240 with 640 bytes per line (need 153600)"
        );
        assert!(matches!(
            nv12_to_i420(&[0; 1000], &Layout::tight(W, H, 1), &mut out),
            Err(ConvertError::BadLength { .. })
        ));
        assert!(matches!(
            yu12_to_i420(&[0; 1000], &Layout::tight(W, H, 1), &mut out),
            Err(ConvertError::BadLength { .. })
        ));
        assert!(matches!(
            yuyv_to_i420(&[0; 1000], &Layout::new(W, H, 100), &mut out),
            Err(ConvertError::BadGeometry { .. })
        ));
        assert!(matches!(
            yu12_to_i420(&[0; 1000], &Layout::tight(3, 2, 1), &mut out),
            Err(ConvertError::BadGeometry { .. })
        ));
    }

    #[test]
    fn range_tables_map_the_ends() {
        assert_eq!((LUMA_TO_LIMITED[0], LUMA_TO_LIMITED[255]), (16, 235));
        assert_eq!(
            (
                CHROMA_TO_LIMITED[0],
                CHROMA_TO_LIMITED[128],
                CHROMA_TO_LIMITED[255]
            ),
            (16, 128, 240)
        );
    }

    #[test]
    fn libjpeg_turbo_and_the_zune_reference_agree() {
        // 4:2:2 (a webcam's) and 4:2:0 (the snapshot encoder's) JPEGs, with and without
        // Huffman tables.
        let frame = Frame {
            width: W,
            height: H,
            data: reference(),
            captured_at: std::time::SystemTime::now(),
            instant: std::time::Instant::now(),
        };
        let jpeg_420 = crate::video::snapshot::jpeg(&frame, 90).unwrap();
        let jpeg_422 = fixture("testsrc2_320x240_422.jpg");
        for jpeg in [&jpeg_420, &jpeg_422, &strip_dht(&jpeg_422)] {
            let (mut turbo, mut zune) = (Vec::new(), Vec::new());
            MjpegDecoder::new().decode(jpeg, W, H, &mut turbo).unwrap();
            ZuneMjpegDecoder::new()
                .decode(jpeg, W, H, &mut zune)
                .unwrap();
            // Both give the picture that was encoded; libjpeg-turbo, without the 4:4:4 round
            // trip, at least as closely.
            let turbo_off = plane_diffs(&turbo, &reference());
            let zune_off = plane_diffs(&zune, &reference());
            for ((plane, (t, _)), (z, _)) in ["Y", "U", "V"].iter().zip(turbo_off).zip(zune_off) {
                assert!(
                    t < 3.0 && t <= z + 0.25,
                    "{plane}: {turbo_off:?} vs {zune_off:?}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_not_a_grey_picture() {
        let jpeg = fixture("testsrc2_320x240_422.jpg");
        let mut out = Vec::new();
        let err = MjpegDecoder::new()
            .decode(&jpeg[..jpeg.len() / 2], W, H, &mut out)
            .unwrap_err();
        assert!(matches!(err, ConvertError::CorruptJpeg(_)), "{err}");
    }

    #[test]
    fn range_arithmetic_matches_the_tables() {
        let mut all: Vec<u8> = (0..=255).collect();
        to_limited(&mut all, 219);
        assert_eq!(all, LUMA_TO_LIMITED);
        let mut all: Vec<u8> = (0..=255).collect();
        to_limited(&mut all, 224);
        assert_eq!(all, CHROMA_TO_LIMITED);
    }
}
