//! Per-frame cost of each stage of the video path (issue 7), at 640x480, 1280x720 and 1920x1080:
//! colour conversion (YUYV, NV12 → I420) and MJPEG decoding on pictures made from the real sample
//! frames in `tests/data/` (scaled up, nearest neighbour), openh264 encoding of the test pattern at
//! the daemon's settings, H.264 packetizing with the payloader WebRTC uses, and SRTP protection
//! of those packets (AES-128-GCM, the profile Chromium negotiates), which each viewer pays.
//!
//! `cargo bench --bench pipeline` (or `make bench`, which also reads criterion's estimates into
//! its table). Measurement time is kept short so the whole suite runs in about two minutes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::packetizer::{Packetizer, new_packetizer};
use rtc::rtp::sequence::new_random_sequencer;
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context as SrtpContext;
use rtc::srtp::protection_profile::ProtectionProfile;
use spyglass::video::convert::{
    Layout, MjpegDecoder, ZuneMjpegDecoder, nv12_to_i420, yuyv_to_i420,
};
use spyglass::video::encode::openh264::H264Encoder;
use spyglass::video::encode::{Encoder, EncoderSettings};
use spyglass::video::{Frame, VideoSource, VideoSpec, test_pattern::TestPattern};

const SIZES: [(u32, u32); 3] = [(640, 480), (1280, 720), (1920, 1080)];
const SRC_W: usize = 320;
const SRC_H: usize = 240;
const FPS: u32 = 30;
const BITRATE_KBPS: u32 = 2000;
/// As the daemon's sample writer.
const MTU: usize = 1200;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Nearest-neighbour scaling of a plane of `unit`-byte samples (`unit` = 4 for a YUYV pixel pair,
/// 2 for an NV12 UV pair, 1 for a plain plane).
fn scale(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize, unit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(dw * dh * unit);
    for y in 0..dh {
        let row = &src[(y * sh / dh) * sw * unit..][..sw * unit];
        for x in 0..dw {
            let sx = x * sw / dw;
            out.extend_from_slice(&row[sx * unit..][..unit]);
        }
    }
    out
}

fn yuyv(w: u32, h: u32) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    scale(
        &fixture("testsrc2_320x240.yuyv"),
        SRC_W / 2,
        SRC_H,
        w / 2,
        h,
        4,
    )
}

fn nv12(w: u32, h: u32) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    let src = fixture("testsrc2_320x240.nv12");
    let (y, uv) = src.split_at(SRC_W * SRC_H);
    let mut out = scale(y, SRC_W, SRC_H, w, h, 1);
    out.extend(scale(uv, SRC_W / 2, SRC_H / 2, w / 2, h / 2, 2));
    out
}

/// The sample JPEG decoded, scaled to `w`x`h` and encoded again as a 4:2:2 baseline JPEG with
/// standard Huffman tables at quality 90, like a UVC webcam's MJPEG.
fn mjpeg(w: u32, h: u32) -> Vec<u8> {
    let mut i420 = Vec::new();
    MjpegDecoder::new()
        .decode(
            &fixture("testsrc2_320x240_422.jpg"),
            SRC_W as u32,
            SRC_H as u32,
            &mut i420,
        )
        .expect("sample JPEG decodes");
    let (y, chroma) = i420.split_at(SRC_W * SRC_H);
    let (u, v) = chroma.split_at(SRC_W * SRC_H / 4);
    let mut ycbcr = Vec::with_capacity(SRC_W * SRC_H * 3);
    for row in 0..SRC_H {
        for col in 0..SRC_W {
            let c = (row / 2) * (SRC_W / 2) + col / 2;
            ycbcr.extend_from_slice(&[y[row * SRC_W + col], u[c], v[c]]);
        }
    }
    let big = scale(&ycbcr, SRC_W, SRC_H, w as usize, h as usize, 3);
    let mut jpeg = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 90);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_2);
    encoder
        .encode(&big, w as u16, h as u16, jpeg_encoder::ColorType::Ycbcr)
        .expect("JPEG encodes");
    jpeg
}

/// One second of the test pattern, as the daemon captures it.
fn pattern_frames(w: u32, h: u32) -> Vec<Frame> {
    let mut source = TestPattern::new(&VideoSpec {
        source: "test".parse().unwrap(),
        width: w,
        height: h,
        fps: FPS,
        ..Default::default()
    });
    (0..FPS)
        .map(|_| source.next_frame().expect("test pattern"))
        .collect()
}

fn encoder(w: u32, h: u32) -> H264Encoder {
    H264Encoder::new(EncoderSettings {
        width: w,
        height: h,
        fps: FPS,
        bitrate_kbps: BITRATE_KBPS,
    })
    .expect("openh264 encoder")
}

fn stages(c: &mut Criterion) {
    for (w, h) in SIZES {
        let size = format!("{w}x{h}");
        let mut out = Vec::new();

        let raw = yuyv(w, h);
        let layout = Layout::tight(w, h, 2);
        c.bench_function(&format!("yuyv_to_i420/{size}"), |b| {
            b.iter(|| yuyv_to_i420(black_box(&raw), &layout, &mut out).unwrap())
        });

        let raw = nv12(w, h);
        let layout = Layout::tight(w, h, 1);
        c.bench_function(&format!("nv12_to_i420/{size}"), |b| {
            b.iter(|| nv12_to_i420(black_box(&raw), &layout, &mut out).unwrap())
        });

        let jpeg = mjpeg(w, h);
        let mut decoder = MjpegDecoder::new();
        c.bench_function(&format!("mjpeg_to_i420/{size}"), |b| {
            b.iter(|| decoder.decode(black_box(&jpeg), w, h, &mut out).unwrap())
        });
        // The same frames through the decoder used before libjpeg-turbo (issue 16's ratio).
        let mut zune = ZuneMjpegDecoder::new();
        c.bench_function(&format!("mjpeg_zune_to_i420/{size}"), |b| {
            b.iter(|| zune.decode(black_box(&jpeg), w, h, &mut out).unwrap())
        });

        // Encode: the pattern's frames in a loop, one encoder, as in the daemon (P frames, with
        // the periodic IDR every 4 s).
        let frames = pattern_frames(w, h);
        let mut enc = encoder(w, h);
        let mut i = 0;
        let mut encoded: Vec<Bytes> = Vec::new();
        c.bench_function(&format!("h264_encode/{size}"), |b| {
            b.iter(|| {
                let f = enc
                    .encode(black_box(&frames[i % frames.len()]), false)
                    .unwrap();
                i += 1;
                if encoded.len() < frames.len() {
                    encoded.extend(f.map(|f| f.data));
                }
            })
        });

        // In test mode (`cargo test --all-targets`) the encode bench ran once: encode the rest.
        while encoded.len() < frames.len().max(2) {
            let f = &frames[encoded.len() % frames.len()];
            if let Some(f) = enc.encode(f, false).unwrap() {
                encoded.push(f.data);
            }
        }

        // Packetize the access units just encoded (steady state: no keyframes but the first).
        let mut packetizer = new_packetizer(
            Instant::now(),
            MTU,
            102,
            1,
            Box::new(H264Payloader::default()),
            Box::new(new_random_sequencer()),
            90_000,
        );
        let mut j = 0;
        c.bench_function(&format!("h264_packetize/{size}"), |b| {
            b.iter(|| {
                let au = &encoded[1 + j % (encoded.len() - 1)];
                j += 1;
                packetizer
                    .packetize(Instant::now(), black_box(au), 3000)
                    .unwrap()
            })
        });

        // Protect (SRTP) one access unit's packets, as each viewer's session does before sending.
        let packets: Vec<Vec<Vec<u8>>> = encoded[1..]
            .iter()
            .map(|au| {
                packetizer
                    .packetize(Instant::now(), au, 3000)
                    .unwrap()
                    .iter()
                    .map(|p| p.marshal().unwrap().to_vec())
                    .collect()
            })
            .collect();
        let mut srtp = srtp_context();
        let mut k = 0;
        c.bench_function(&format!("srtp_protect/{size}"), |b| {
            b.iter(|| {
                let au = &packets[k % packets.len()];
                k += 1;
                for packet in au {
                    black_box(srtp.encrypt_rtp(black_box(packet)).unwrap());
                }
            })
        });
    }
}

/// An SRTP sender context with the profile Chromium chooses and a fixed test key.
fn srtp_context() -> SrtpContext {
    let profile = ProtectionProfile::AeadAes128Gcm;
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    SrtpContext::new(
        &vec![7; profile.key_len()],
        &vec![9; profile.salt_len()],
        profile,
        None,
        None,
        provider.crypto(),
    )
    .expect("SRTP context")
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = stages
}
criterion_main!(benches);
