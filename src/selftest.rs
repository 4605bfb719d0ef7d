//! `spyglass selftest`: the whole media path in one process, with no broker and no network.
//!
//! Each frame goes capture → H.264 encode → RTP packetize (the payloader WebRTC uses) →
//! depacketize ([`Assembler`], as the headless viewer does) → openh264 decode, one after the other
//! on this thread, with each stage timed. The checks then ask: did every frame come back, at the
//! size the source negotiated, do the pictures change, and, with the test pattern, do the frame
//! counters read back from the decoded pixels run in order without gaps.
//!
//! Stages are functions that add to one [`Report`]: [`video_stage`], then [`audio_stage`] with
//! `--audio tone` or an ALSA device: 20 ms chunks go capture → Opus encode (the daemon's encoder
//! settings) → RTP packetize (one packet per Opus frame) → depacketize → Opus decode; the checks
//! ask that every chunk came back as one packet and 960 samples, that the sound is not silence,
//! and, when a tone is expected, that a Goertzel filter finds its frequency well above others.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::codec::opus::{OpusPacket, OpusPayloader};
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp::packetizer::{Packetizer, new_packetizer};
use rtc::rtp::sequence::new_random_sequencer;
use serde::Serialize;

use crate::audio::encode::OpusEncoder;
use crate::audio::{self, AudioSetting, CHUNK_FRAMES, SAMPLE_RATE};
use crate::config::SelftestConfig;
use crate::pattern;
use crate::video::encode;
use crate::video::h264::{Profile, nal_types, profile_level};
use crate::video::v4l2::{self, V4l2Source};
use crate::video::{self, Frame, VideoSource};
use crate::view::assemble::Assembler;

/// RTP packet size limit, as WebRTC's sample writer uses.
const MTU: usize = 1200;
const H264_CLOCK_RATE: u32 = 90_000;
/// Any dynamic payload type will do: the packets never leave the process.
const PAYLOAD_TYPE: u8 = 102;
const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Decoded sound quieter than this (RMS, dB full scale) counts as silence.
const SILENCE_DBFS: f64 = -60.0;
/// The expected tone must stand this far (dB) above the strongest other frequency probed.
const TONE_MARGIN_DB: f64 = 10.0;

/// Time spent in one stage over the run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StageTime {
    pub frames: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl StageTime {
    fn add(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        self.frames += 1;
        self.total_ms += ms;
        self.max_ms = self.max_ms.max(ms);
        self.mean_ms = self.total_ms / self.frames as f64;
    }
}

impl fmt::Display for StageTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mean {:7.2} ms  max {:7.2} ms  total {:8.1} ms",
            self.mean_ms, self.max_ms, self.total_ms
        )
    }
}

/// Per-stage timings of one path, per video frame or per 20 ms audio chunk.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Timings {
    /// Waiting for the next picture or chunk, and converting a picture: paced by the source (a
    /// camera's or a sound card's clock, the test pattern's or the tone's timer), so this is
    /// mostly waiting.
    pub capture: StageTime,
    pub encode: StageTime,
    pub packetize: StageTime,
    pub depacketize: StageTime,
    pub decode: StageTime,
}

impl Timings {
    /// One line per stage, each after its label.
    fn write(&self, f: &mut fmt::Formatter<'_>, labels: [&str; 5]) -> fmt::Result {
        let stages = [
            &self.capture,
            &self.encode,
            &self.packetize,
            &self.depacketize,
            &self.decode,
        ];
        for (label, stage) in labels.iter().zip(stages) {
            writeln!(f, "{label}{stage}")?;
        }
        Ok(())
    }
}

/// What the video stage saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct VideoReport {
    /// What the source negotiated, e.g. `/dev/video0 YUYV 640x480@30` or `test pattern ...`.
    pub source: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// The source's frames carry the test pattern's code, so their counters are checked.
    pub stamped: bool,
    /// H.264 profile and level from the SPS, e.g. `constrained baseline, level 3.1`.
    pub h264: String,
    /// The encoder: `openh264`, `v4l2`, or `passthrough` for a source that delivers H.264.
    pub encoder: String,
    pub bitrate_kbps: u32,
    pub captured: u64,
    pub encoded: u64,
    pub keyframes: u64,
    pub encoded_bytes: u64,
    pub rtp_packets: u64,
    pub largest_rtp_payload: usize,
    pub access_units: u64,
    pub decoded: u64,
    /// Decoded pictures whose size differs from the source's.
    pub wrong_size: u64,
    /// Decoded pictures whose luma differs from the previous one.
    pub changed: u64,
    /// Test pattern only: decoded pictures whose frame counter could be read.
    pub stamps_read: u64,
    /// Test pattern only: frame counters that did not follow the previous one.
    pub stamps_out_of_order: u64,
    pub first_stamp: Option<u32>,
    pub last_stamp: Option<u32>,
    pub timings: Timings,
}

/// What the audio stage saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AudioReport {
    /// `none`, or what the source opened, e.g. `ALSA hw:Loopback,1,0, 48000 Hz, 1 channel(s)`.
    pub source: String,
    pub channels: u16,
    pub bitrate_kbps: u32,
    pub chunks: u64,
    pub encoded: u64,
    pub encoded_bytes: u64,
    pub rtp_packets: u64,
    /// RTP sequence numbers or timestamps that did not follow the previous packet.
    pub rtp_out_of_order: u64,
    pub depacketized: u64,
    /// Decoded samples per channel.
    pub decoded_samples: u64,
    /// RMS level of the decoded sound (mono mix), dB full scale.
    pub level_dbfs: f64,
    /// The strongest frequency among those probed (50 Hz steps), Hz.
    pub dominant_hz: u32,
    pub expected_tone_hz: Option<u32>,
    /// Power at the expected tone over the strongest other probed frequency, dB.
    pub tone_margin_db: Option<f64>,
    pub timings: Timings,
}

/// The self-test's one report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub version: String,
    pub video: VideoReport,
    pub audio: AudioReport,
    pub wall_ms: f64,
    /// Failed checks, each saying what was expected and what happened. Empty means pass.
    pub failures: Vec<String>,
    pub passed: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.video;
        writeln!(f, "spyglass selftest {}", self.version)?;
        writeln!(f, "video source:     {}", v.source)?;
        writeln!(
            f,
            "encoder:          {}: H.264 {}, {}x{}@{}, {} kbit/s",
            v.encoder, v.h264, v.width, v.height, v.fps, v.bitrate_kbps
        )?;
        writeln!(
            f,
            "frames:           captured {}, encoded {} ({} keyframes, {} bytes), RTP packets {} (largest payload {} B), access units {}, decoded {}",
            v.captured,
            v.encoded,
            v.keyframes,
            v.encoded_bytes,
            v.rtp_packets,
            v.largest_rtp_payload,
            v.access_units,
            v.decoded
        )?;
        writeln!(
            f,
            "pictures:         {} changed from the one before, {} of the wrong size",
            v.changed, v.wrong_size
        )?;
        if v.stamped {
            writeln!(
                f,
                "test pattern:     {} counters read, {} out of order, first {}, last {}",
                v.stamps_read,
                v.stamps_out_of_order,
                v.first_stamp.map_or("-".into(), |n| n.to_string()),
                v.last_stamp.map_or("-".into(), |n| n.to_string())
            )?;
        }
        v.timings.write(
            f,
            [
                "capture:          ",
                "encode:           ",
                "packetize:        ",
                "depacketize:      ",
                "decode:           ",
            ],
        )?;
        let a = &self.audio;
        writeln!(f, "audio source:     {}", a.source)?;
        if a.source != "none" {
            writeln!(
                f,
                "audio encoder:    Opus {} ch, {} kbit/s, 20 ms packets",
                a.channels, a.bitrate_kbps
            )?;
            writeln!(
                f,
                "audio chunks:     captured {}, encoded {} ({} bytes), RTP packets {} ({} out of order), depacketized {}, decoded {} samples",
                a.chunks,
                a.encoded,
                a.encoded_bytes,
                a.rtp_packets,
                a.rtp_out_of_order,
                a.depacketized,
                a.decoded_samples
            )?;
            let tone = match (a.expected_tone_hz, a.tone_margin_db) {
                (Some(hz), Some(db)) => format!(", {hz} Hz tone {db:+.1} dB over any other"),
                _ => String::new(),
            };
            writeln!(
                f,
                "audio sound:      level {:.1} dBFS, strongest at {} Hz{tone}",
                a.level_dbfs, a.dominant_hz
            )?;
            a.timings.write(
                f,
                [
                    "audio capture:    ",
                    "audio encode:     ",
                    "audio packetize:  ",
                    "audio depacketize: ",
                    "audio decode:     ",
                ],
            )?;
        }
        writeln!(f, "wall time:        {:.0} ms", self.wall_ms)?;
        for failure in &self.failures {
            writeln!(f, "FAILED:           {failure}")?;
        }
        writeln!(
            f,
            "result:           {}",
            if self.passed { "PASS" } else { "FAIL" }
        )
    }
}

/// Why the self-test could not run at all (as opposed to a failed check, which is in the report).
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error("video source: {0}")]
    Video(#[from] video::VideoError),
    #[error("{0}")]
    Encode(#[from] crate::video::encode::EncodeError),
    #[error("RTP packetizer: {0}")]
    Packetize(String),
    #[error("H.264 decoder: {0}")]
    Decode(String),
    #[error("{0}")]
    Audio(#[from] audio::AudioError),
    #[error("Opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("the {0} stage panicked")]
    Panicked(&'static str),
}

/// Run every stage and check the result.
pub fn run(config: &SelftestConfig) -> Result<Report, SelftestError> {
    let started = Instant::now();
    let mut report = Report {
        version: env!("CARGO_PKG_VERSION").to_string(),
        audio: AudioReport {
            source: "none".into(),
            ..AudioReport::default()
        },
        ..Report::default()
    };
    // The audio stage runs beside the video stage (both mostly wait for their source's clock),
    // as in the daemon.
    std::thread::scope(|scope| {
        let audio =
            (config.audio != AudioSetting::None).then(|| scope.spawn(|| audio_stage(config)));
        match config.m2m_codec {
            Some(codec) => m2m_stage(config, codec, &mut report)?,
            None => video_stage(config, &mut report)?,
        }
        if let Some(audio) = audio {
            let (a, failures) = audio
                .join()
                .map_err(|_| SelftestError::Panicked("audio"))??;
            report.audio = a;
            report.failures.extend(failures);
        }
        Ok::<(), SelftestError>(())
    })?;
    report.wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    report.passed = report.failures.is_empty();
    Ok(report)
}

fn open_video(config: &SelftestConfig) -> Result<Box<dyn VideoSource>, SelftestError> {
    let spec = &config.video;
    match config.pixel_format {
        None => Ok(video::open(spec)?),
        Some(fourcc) if spec.source.is(&v4l2::BACKEND) => Ok(Box::new(
            V4l2Source::open_with_format(spec.source.as_str(), spec, Some(fourcc))?,
        )),
        Some(fourcc) => Err(SelftestError::Video(video::VideoError::Failed {
            device: spec.source.to_string(),
            message: format!(
                "--pixel-format {fourcc} applies to V4L2 devices, not the test pattern"
            ),
        })),
    }
}

/// Capture → encode → packetize → depacketize → decode, frame by frame, then the checks.
fn video_stage(config: &SelftestConfig, report: &mut Report) -> Result<(), SelftestError> {
    let mut source = open_video(config)?;
    let format = source.format().clone();
    let is_pattern = config.video.source.backend().stamped;
    let v = &mut report.video;
    v.source = format.description.clone();
    v.stamped = is_pattern;
    v.width = format.width;
    v.height = format.height;
    v.fps = format.fps;
    v.bitrate_kbps = config.bitrate_kbps;

    let mut encoder = encode::open(&*source, &config.video.encoder, config.bitrate_kbps)?;
    v.encoder = encoder.name().to_string();
    let mut packetizer = new_packetizer(
        Instant::now(),
        MTU,
        PAYLOAD_TYPE,
        rand::random(),
        Box::new(H264Payloader::default()),
        Box::new(new_random_sequencer()),
        H264_CLOCK_RATE,
    );
    let mut assembler = Assembler::new();
    let mut decoder = Decoder::new().map_err(|e| SelftestError::Decode(e.to_string()))?;
    let samples_per_frame = H264_CLOCK_RATE / format.fps.max(1);
    let frames = u64::from(config.seconds) * u64::from(config.video.fps);

    let mut previous_luma: Option<Vec<u8>> = None;
    let mut previous_stamp: Option<u32> = None;
    for _ in 0..frames {
        let t = Instant::now();
        let captured = source.next_captured()?;
        v.timings.capture.add(t.elapsed());
        v.captured += 1;

        let t = Instant::now();
        let encoded = encoder.take(&captured, false)?;
        v.timings.encode.add(t.elapsed());
        let Some(encoded) = encoded else { continue };
        v.encoded += 1;
        v.encoded_bytes += encoded.data.len() as u64;
        if encoded.keyframe {
            v.keyframes += 1;
            if v.h264.is_empty() {
                v.h264 = describe_sps(&encoded.data);
            }
        }

        let t = Instant::now();
        let packets = packetizer
            .packetize(Instant::now(), &encoded.data, samples_per_frame)
            .map_err(|e| SelftestError::Packetize(e.to_string()))?;
        v.timings.packetize.add(t.elapsed());
        v.rtp_packets += packets.len() as u64;

        let t = Instant::now();
        let mut units: Vec<Bytes> = Vec::new();
        for packet in &packets {
            v.largest_rtp_payload = v.largest_rtp_payload.max(packet.payload.len());
            let h = &packet.header;
            let pushed = assembler.push(h.sequence_number, h.timestamp, h.marker, &packet.payload);
            units.extend(pushed.access_unit);
        }
        v.timings.depacketize.add(t.elapsed());

        for unit in units {
            v.access_units += 1;
            let t = Instant::now();
            let decoded = decoder
                .decode(&unit)
                .map_err(|e| SelftestError::Decode(e.to_string()))?;
            let elapsed = t.elapsed();
            let Some(yuv) = decoded else { continue };
            v.timings.decode.add(elapsed);
            v.decoded += 1;
            let (w, h) = yuv.dimensions();
            let (stride, _, _) = yuv.strides();
            if (w as u32, h as u32) != (format.width, format.height) {
                v.wrong_size += 1;
            }
            let luma: Vec<u8> = yuv
                .y()
                .chunks(stride)
                .take(h)
                .flat_map(|row| &row[..w.min(row.len())])
                .copied()
                .collect();
            if previous_luma.as_ref().is_some_and(|p| *p != luma) {
                v.changed += 1;
            }
            previous_luma = Some(luma);
            if is_pattern && let Some(stamp) = pattern::read(yuv.y(), w as u32, h as u32, stride) {
                v.stamps_read += 1;
                if previous_stamp.is_some_and(|p| stamp.frame != p.wrapping_add(1)) {
                    v.stamps_out_of_order += 1;
                }
                v.first_stamp.get_or_insert(stamp.frame);
                v.last_stamp = Some(stamp.frame);
                previous_stamp = Some(stamp.frame);
            }
        }
    }
    let lost = assembler.lost_packets;
    check_video(v, frames, lost, is_pattern, &mut report.failures);
    Ok(())
}

/// A memory-to-memory encoder of another codec than H.264 (`--m2m-codec FWHT`: the kernel's
/// vicodec, in the emulated board): the pictures go through the same queue handling as the
/// hardware H.264 encoder's, and the checks ask that every picture came out as one coded frame
/// of the right size, in order, with keyframes at the GOP period set through a control; for FWHT
/// that each frame's header names the picture. No decoder: the bitstream is not H.264.
fn m2m_stage(
    config: &SelftestConfig,
    codec: [u8; 4],
    report: &mut Report,
) -> Result<(), SelftestError> {
    use crate::video::encode::EncoderChoice;
    use crate::video::m2m::{self, M2mConfig, M2mDevice};
    const GOP: u32 = 10;
    let failed = |message: String| {
        SelftestError::Video(video::VideoError::Failed {
            device: "m2m".into(),
            message,
        })
    };
    let mut source = open_video(config)?;
    let format = source.format().clone();
    let raw = m2m::fourcc(b"YU12");
    let coded = m2m::fourcc(&codec);
    let path = match &config.video.encoder {
        EncoderChoice::V4l2(Some(path)) => path.clone(),
        _ => m2m::find(raw, coded)
            .into_iter()
            .next()
            .map(|(path, _, _)| path)
            .ok_or_else(|| {
                failed(format!(
                    "no memory-to-memory device makes {}",
                    String::from_utf8_lossy(&codec)
                ))
            })?,
    };
    let device = M2mDevice::open(&path).map_err(|e| failed(e.to_string()))?;
    let v = &mut report.video;
    v.source = format.description.clone();
    (v.width, v.height, v.fps) = (format.width, format.height, format.fps);
    v.encoder = format!("{path} ({}, driver {})", device.card, device.driver);
    v.h264 = format!(
        "{} (not H.264: no decoding)",
        String::from_utf8_lossy(&codec)
    );
    let m2m_config = M2mConfig {
        width: format.width,
        height: format.height,
        fps: format.fps,
        raw,
        coded,
        coded_size: Frame::i420_len(format.width, format.height) as u32,
    };
    let controls = [(v4l::v4l_sys::V4L2_CID_MPEG_VIDEO_GOP_SIZE, GOP as i32)];
    let (mut session, refused) = device
        .start(&m2m_config, &controls)
        .map_err(|e| failed(e.to_string()))?;
    for (id, error) in refused {
        report
            .failures
            .push(format!("control {id:#x} refused: {error}"));
    }
    let frames = u64::from(config.seconds) * u64::from(config.video.fps);
    let mut previous: Option<Vec<u8>> = None;
    let mut keyframes_at = Vec::new();
    let mut bad_header: Option<Vec<u32>> = None;
    for index in 0..frames {
        let t = Instant::now();
        let frame = source.next_frame()?;
        v.timings.capture.add(t.elapsed());
        v.captured += 1;
        let t = Instant::now();
        let out = session
            .process(&frame.data, Duration::from_secs(2))
            .map_err(|e| failed(e.to_string()))?;
        v.timings.encode.add(t.elapsed());
        for c in out {
            v.encoded += 1;
            v.encoded_bytes += c.data.len() as u64;
            let mut keyframe = c.keyframe;
            if &codec == b"FWHT" {
                // 'OOOO', 0xffffffff, then big-endian version, width, height, flags, four
                // colour fields, payload size.
                let word = |i: usize| {
                    c.data
                        .get(4 * i..4 * i + 4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                };
                let header_ok = word(0) == Some(0x4f4f_4f4f)
                    && word(1) == Some(0xffff_ffff)
                    && word(3) == Some(format.width)
                    && word(4) == Some(format.height)
                    && word(10).is_some_and(|size| size as usize + 44 == c.data.len());
                if !header_ok {
                    v.wrong_size += 1;
                    bad_header.get_or_insert_with(|| {
                        let mut words: Vec<u32> = (0..11).filter_map(word).collect();
                        words.push(c.data.len() as u32);
                        words
                    });
                }
                // vicodec marks an I-frame in its header (V4L2_FWHT_FL_I_FRAME), not in the
                // buffer's flags.
                keyframe |= word(5).is_some_and(|flags| flags & (1 << 10) != 0);
            }
            if keyframe {
                v.keyframes += 1;
                keyframes_at.push(index);
            }
            if previous.as_ref().is_some_and(|p| *p != c.data) {
                v.changed += 1;
            }
            previous = Some(c.data);
        }
    }
    drop(session);
    if v.encoded != frames {
        report.failures.push(format!(
            "{} coded frames came out for {frames} pictures",
            v.encoded
        ));
    }
    // Keyframes at least at every GOP start (an encoder may make more: a picture that changed
    // too much), and not every picture one.
    let expected: Vec<u64> = (0..frames).step_by(GOP as usize).collect();
    if !expected.iter().all(|k| keyframes_at.contains(k)) || keyframes_at.len() as u64 >= frames {
        report.failures.push(format!(
            "keyframes at pictures {keyframes_at:?}, wanted at least {expected:?} (GOP {GOP}) and fewer than every picture"
        ));
    }
    if v.wrong_size > 0 {
        report.failures.push(format!(
            "{} frames with a wrong FWHT header, the first: {bad_header:?} (words, then its length)",
            v.wrong_size
        ));
    }
    if v.changed + 1 < v.encoded {
        report.failures.push(format!(
            "only {} of {} coded frames differ from the one before",
            v.changed, v.encoded
        ));
    }
    Ok(())
}

/// The checks on what the video stage saw.
fn check_video(
    v: &VideoReport,
    frames: u64,
    lost_packets: u64,
    is_pattern: bool,
    failures: &mut Vec<String>,
) {
    if v.captured != frames {
        failures.push(format!("captured {} frames, wanted {frames}", v.captured));
    }
    // skip_frames is off: every picture must be encoded, and nothing is lost in one process.
    if v.encoded != v.captured {
        failures.push(format!("encoded {} of {} frames", v.encoded, v.captured));
    }
    if v.keyframes == 0 {
        failures.push("no keyframe was encoded".into());
    }
    if lost_packets > 0 {
        failures.push(format!("the depacketizer saw {lost_packets} lost packets"));
    }
    if v.access_units != v.encoded {
        failures.push(format!(
            "{} access units came out of the depacketizer for {} encoded frames",
            v.access_units, v.encoded
        ));
    }
    if v.largest_rtp_payload + 12 > MTU {
        failures.push(format!(
            "an RTP payload of {} bytes exceeds the {MTU}-byte MTU",
            v.largest_rtp_payload
        ));
    }
    if v.decoded != v.encoded {
        failures.push(format!("decoded {} of {} frames", v.decoded, v.encoded));
    }
    if v.wrong_size > 0 {
        failures.push(format!(
            "{} decoded pictures were not {}x{}",
            v.wrong_size, v.width, v.height
        ));
    }
    // A live source changes between most frames; ask for at least half, so a camera pointed at
    // a still scene in good light (sensor noise still changes pixels) passes.
    let pairs = v.decoded.saturating_sub(1);
    if pairs == 0 || v.changed * 2 < pairs {
        failures.push(format!(
            "pictures do not change: {} of {pairs} decoded pictures differ from the one before",
            v.changed
        ));
    }
    if is_pattern {
        if v.stamps_read != v.decoded {
            failures.push(format!(
                "the test pattern's code was read from {} of {} decoded pictures",
                v.stamps_read, v.decoded
            ));
        }
        if v.stamps_out_of_order > 0 {
            failures.push(format!(
                "{} frame counters did not follow the one before",
                v.stamps_out_of_order
            ));
        }
    }
}

/// Capture → Opus encode → RTP packetize → depacketize → Opus decode, 20 ms at a time, for
/// `--seconds`, then the checks.
fn audio_stage(config: &SelftestConfig) -> Result<(AudioReport, Vec<String>), SelftestError> {
    let mut a = AudioReport {
        source: "none".into(),
        ..AudioReport::default()
    };
    let mut failures = Vec::new();
    let Some(plan) = audio::resolve(&config.audio)? else {
        return Ok((a, failures));
    };
    let mut source = plan.source.open(plan.channels)?;
    let channels = source.channels();
    a.source = source.description().to_string();
    a.channels = channels;
    a.expected_tone_hz = config.expect_tone_hz;
    let mut encoder = OpusEncoder::new(channels)?;
    a.bitrate_kbps = encoder.bitrate_kbps()?;
    let mut decoder = opus::Decoder::new(
        SAMPLE_RATE,
        if channels == 1 {
            opus::Channels::Mono
        } else {
            opus::Channels::Stereo
        },
    )?;
    let mut packetizer = new_packetizer(
        Instant::now(),
        MTU,
        OPUS_PAYLOAD_TYPE,
        rand::random(),
        Box::new(OpusPayloader),
        Box::new(new_random_sequencer()),
        SAMPLE_RATE,
    );
    let mut depacketizer = OpusPacket;
    let ch = usize::from(channels);
    let mut decoded = vec![0i16; CHUNK_FRAMES * 6 * ch];
    let mut mono: Vec<i16> = Vec::new();
    let mut previous: Option<(u16, u32)> = None;
    let chunks = u64::from(config.seconds) * 50;
    for _ in 0..chunks {
        let t = Instant::now();
        let chunk = source.next_chunk()?;
        a.timings.capture.add(t.elapsed());
        a.chunks += 1;

        let t = Instant::now();
        let encoded = encoder.encode(&chunk)?;
        a.timings.encode.add(t.elapsed());
        a.encoded += 1;
        a.encoded_bytes += encoded.data.len() as u64;

        let t = Instant::now();
        let packets = packetizer
            .packetize(Instant::now(), &encoded.data, CHUNK_FRAMES as u32)
            .map_err(|e| SelftestError::Packetize(e.to_string()))?;
        a.timings.packetize.add(t.elapsed());
        a.rtp_packets += packets.len() as u64;

        for packet in &packets {
            let h = &packet.header;
            if let Some((seq, ts)) = previous
                && (h.sequence_number != seq.wrapping_add(1)
                    || h.timestamp != ts.wrapping_add(CHUNK_FRAMES as u32))
            {
                a.rtp_out_of_order += 1;
            }
            previous = Some((h.sequence_number, h.timestamp));
            let t = Instant::now();
            let Ok(payload) = depacketizer.depacketize(&packet.payload) else {
                continue;
            };
            a.timings.depacketize.add(t.elapsed());
            a.depacketized += 1;

            let t = Instant::now();
            let n = decoder.decode(&payload, &mut decoded, false)?;
            a.timings.decode.add(t.elapsed());
            a.decoded_samples += n as u64;
            mono.extend(decoded[..n * ch].chunks(ch).map(|frame| {
                (frame.iter().map(|&s| i32::from(s)).sum::<i32>() / ch as i32) as i16
            }));
        }
    }
    analyse_sound(&mut a, &mono);
    check_audio(&a, chunks, &mut failures);
    Ok((a, failures))
}

/// Level, strongest frequency (50 Hz steps up to 8 kHz), and the expected tone's margin.
fn analyse_sound(a: &mut AudioReport, mono: &[i16]) {
    if mono.is_empty() {
        a.level_dbfs = f64::NEG_INFINITY;
        return;
    }
    let sum: f64 = mono.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / mono.len() as f64).sqrt() / 32768.0;
    a.level_dbfs = 20.0 * rms.max(1e-9).log10();
    let probes: Vec<(u32, f64)> = (1..=160)
        .map(|k| k * 50)
        .map(|hz| (hz, audio::tone_power(mono, f64::from(hz))))
        .collect();
    a.dominant_hz = probes
        .iter()
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .map_or(0, |p| p.0);
    if let Some(hz) = a.expected_tone_hz {
        let at = audio::tone_power(mono, f64::from(hz));
        // Others: probes at least 100 Hz away, so the tone's own main lobe is not one of them.
        let other = probes
            .iter()
            .filter(|(f, _)| f.abs_diff(hz) >= 100)
            .map(|p| p.1)
            .fold(0.0f64, f64::max);
        a.tone_margin_db = Some(10.0 * (at.max(1e-12) / other.max(1e-12)).log10());
    }
}

/// The checks on what the audio stage saw.
fn check_audio(a: &AudioReport, chunks: u64, failures: &mut Vec<String>) {
    if a.chunks != chunks {
        failures.push(format!(
            "captured {} audio chunks, wanted {chunks}",
            a.chunks
        ));
    }
    if a.encoded != a.chunks {
        failures.push(format!("Opus encoded {} of {} chunks", a.encoded, a.chunks));
    }
    if a.rtp_packets != a.encoded {
        failures.push(format!(
            "{} RTP packets for {} Opus packets (one each expected)",
            a.rtp_packets, a.encoded
        ));
    }
    if a.rtp_out_of_order > 0 {
        failures.push(format!(
            "{} audio RTP packets did not follow the one before (sequence +1, timestamp +960)",
            a.rtp_out_of_order
        ));
    }
    if a.depacketized != a.rtp_packets {
        failures.push(format!(
            "depacketized {} of {} audio RTP packets",
            a.depacketized, a.rtp_packets
        ));
    }
    if a.decoded_samples != a.encoded * CHUNK_FRAMES as u64 {
        failures.push(format!(
            "decoded {} samples per channel for {} packets of {CHUNK_FRAMES}",
            a.decoded_samples, a.encoded
        ));
    }
    if a.level_dbfs.is_nan() || a.level_dbfs <= SILENCE_DBFS {
        failures.push(format!(
            "the decoded sound is silence: level {:.1} dBFS (at most {SILENCE_DBFS} dBFS)",
            a.level_dbfs
        ));
    }
    if let (Some(hz), Some(db)) = (a.expected_tone_hz, a.tone_margin_db)
        && db < TONE_MARGIN_DB
    {
        failures.push(format!(
            "no {hz} Hz tone: it is {db:+.1} dB over the strongest other frequency (wanted {TONE_MARGIN_DB:+.0} dB; strongest at {} Hz)",
            a.dominant_hz
        ));
    }
}

/// Profile and level from the first SPS in an Annex-B access unit.
fn describe_sps(annexb: &[u8]) -> String {
    let Some([profile, constraints, level]) = profile_level(annexb) else {
        return format!("keyframe without SPS (NAL types {:?})", nal_types(annexb));
    };
    let name = match Profile::of(profile, constraints) {
        Some(known) => known.to_string(),
        None => format!("profile {profile}"),
    };
    format!(
        "{name} (profile-level-id {profile:02x}{constraints:02x}{level:02x}), level {}.{}",
        level / 10,
        level % 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::VideoSpec;

    fn config(width: u32, height: u32) -> SelftestConfig {
        SelftestConfig {
            video: VideoSpec {
                source: "test".parse().unwrap(),
                width,
                height,
                fps: 30,
                ..Default::default()
            },
            pixel_format: None,
            audio: AudioSetting::None,
            expect_tone_hz: None,
            seconds: 1,
            bitrate_kbps: 500,
            json: false,
            m2m_codec: None,
        }
    }

    #[test]
    fn test_pattern_passes_end_to_end() {
        let report = run(&config(320, 240)).unwrap();
        assert!(report.passed, "{report}");
        let v = &report.video;
        assert_eq!((v.captured, v.decoded, v.stamps_read), (30, 30, 30));
        assert_eq!((v.first_stamp, v.last_stamp), (Some(0), Some(29)));
        assert!(v.h264.starts_with("constrained baseline"), "{}", v.h264);
        let text = report.to_string();
        assert!(text.contains("result:           PASS"), "{text}");
    }

    #[test]
    fn frames_too_small_for_the_code_fail_the_pattern_check() {
        // 64x48 cannot hold the test pattern's code: the counters cannot be read back.
        let report = run(&config(64, 48)).unwrap();
        assert!(!report.passed);
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.contains("code was read from 0")),
            "{report}"
        );
    }

    #[test]
    fn tone_passes_the_audio_stage() {
        let mut c = config(320, 240);
        c.audio = "tone".parse().unwrap();
        c.expect_tone_hz = Some(1000);
        let report = run(&c).unwrap();
        assert!(report.passed, "{report}");
        let a = &report.audio;
        assert_eq!((a.chunks, a.rtp_packets, a.depacketized), (50, 50, 50));
        assert_eq!(a.decoded_samples, 50 * 960);
        assert_eq!(a.dominant_hz, 1000);
        assert!(a.tone_margin_db.unwrap() > 20.0, "{report}");
        assert!(report.to_string().contains("audio sound:"), "{report}");
    }

    #[test]
    fn a_tone_that_is_not_there_fails() {
        let mut c = config(320, 240);
        c.audio = "tone".parse().unwrap();
        c.expect_tone_hz = Some(440);
        let report = run(&c).unwrap();
        assert!(!report.passed);
        assert!(
            report.failures.iter().any(|f| f.contains("no 440 Hz tone")),
            "{report}"
        );
    }

    #[test]
    fn sps_is_described() {
        let au = [0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xaa];
        assert_eq!(
            describe_sps(&au),
            "constrained baseline (profile-level-id 42c01f), level 3.1"
        );
    }
}
