//! V4L2 memory-to-memory devices: the queue handling that a stateful encoder needs (the
//! Raspberry Pi's H.264 encoder, `/dev/video11`; the kernel's `vicodec` in the emulated board).
//!
//! A device takes pictures on its OUTPUT queue and gives coded frames on its CAPTURE queue.
//! [`M2mDevice::start`] negotiates both formats (the raw one and the coded one, each a fourcc,
//! so the same code drives H.264 and vicodec's FWHT), applies controls, maps [`BUFFERS`] buffers
//! per queue and turns both queues on; [`M2mSession::process`] copies a picture into a free
//! OUTPUT buffer, queues it, and collects what the CAPTURE queue gives back (requeueing each
//! buffer once its bytes are copied out). Dropping the session turns the queues off, unmaps and
//! frees the buffers and closes the device. Only the multi-planar API is spoken, which is what
//! the Pi's encoder (bcm2835-codec) offers; the raw format is one plane (YU12).

use std::io;
use std::os::raw::{c_int, c_void};
use std::time::Duration;

use v4l::v4l_sys::{
    V4L2_BUF_FLAG_KEYFRAME, V4L2_CAP_DEVICE_CAPS, V4L2_CAP_STREAMING, V4L2_CAP_VIDEO_M2M_MPLANE,
    v4l2_buffer, v4l2_capability, v4l2_control, v4l2_fmtdesc, v4l2_format, v4l2_plane,
    v4l2_requestbuffers, v4l2_selection, v4l2_streamparm,
};
use v4l::v4l2::{self, vidioc};

/// Buffers mapped per queue.
pub const BUFFERS: u32 = 4;
const BUF_TYPE_CAPTURE_MPLANE: u32 = 9;
const BUF_TYPE_OUTPUT_MPLANE: u32 = 10;
const MEMORY_MMAP: u32 = 1;
/// `VIDIOC_S_SELECTION`, `_IOWR('V', 95, struct v4l2_selection)` (the v4l crate has no constant).
const VIDIOC_S_SELECTION: vidioc::_IOC_TYPE = 0xc040_565f;
const _: () = assert!(std::mem::size_of::<v4l2_selection>() == 64);
/// `V4L2_BUF_TYPE_VIDEO_OUTPUT`: the selection API's name for the OUTPUT queue.
const BUF_TYPE_OUTPUT: u32 = 2;
/// `V4L2_SEL_TGT_CROP`.
const SEL_TGT_CROP: u32 = 0;

/// The two queues of a memory-to-memory device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Pictures in.
    Output,
    /// Coded frames out.
    Capture,
}

impl Queue {
    fn buf_type(self) -> u32 {
        match self {
            Queue::Output => BUF_TYPE_OUTPUT_MPLANE,
            Queue::Capture => BUF_TYPE_CAPTURE_MPLANE,
        }
    }
}

/// Why a device could not be used. Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum M2mError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: String,
        what: String,
        error: io::Error,
    },
    #[error("{path}: {message}")]
    Unusable { path: String, message: String },
}

/// A fourcc as V4L2 packs it.
pub fn fourcc(code: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*code)
}

fn fourcc_text(code: u32) -> String {
    code.to_le_bytes()
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

/// An open memory-to-memory device.
pub struct M2mDevice {
    fd: c_int,
    path: String,
    pub card: String,
    pub driver: String,
}

impl Drop for M2mDevice {
    fn drop(&mut self) {
        let _ = v4l2::close(self.fd);
    }
}

/// # Safety
/// `arg` must be the type that `request` takes.
unsafe fn xioctl<T>(fd: c_int, request: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: the caller matches `arg` to `request`; it outlives the call.
        match unsafe { v4l2::ioctl(fd, request, (arg as *mut T).cast::<c_void>()) } {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn zeroed<T>() -> T {
    // SAFETY: only used for the kernel's plain-data structs, for which all zeroes is valid.
    unsafe { std::mem::zeroed() }
}

fn c_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl M2mDevice {
    /// Open `path` and check that it is a multi-planar memory-to-memory device that streams.
    pub fn open(path: &str) -> Result<M2mDevice, M2mError> {
        let fd = v4l2::open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC).map_err(
            |error| M2mError::Io {
                path: path.into(),
                what: "cannot open".into(),
                error,
            },
        )?;
        let mut device = M2mDevice {
            fd,
            path: path.to_string(),
            card: String::new(),
            driver: String::new(),
        };
        let mut caps: v4l2_capability = zeroed();
        // SAFETY: VIDIOC_QUERYCAP takes a v4l2_capability.
        unsafe { xioctl(fd, vidioc::VIDIOC_QUERYCAP, &mut caps) }
            .map_err(|e| device.io("not a V4L2 device", e))?;
        device.card = c_text(&caps.card);
        device.driver = c_text(&caps.driver);
        let flags = if caps.capabilities & V4L2_CAP_DEVICE_CAPS != 0 {
            caps.device_caps
        } else {
            caps.capabilities
        };
        if flags & V4L2_CAP_VIDEO_M2M_MPLANE == 0 || flags & V4L2_CAP_STREAMING == 0 {
            return Err(device.unusable(format!(
                "{} (driver {}) is not a multi-planar memory-to-memory device",
                device.card, device.driver
            )));
        }
        Ok(device)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn io(&self, what: &str, error: io::Error) -> M2mError {
        M2mError::Io {
            path: self.path.clone(),
            what: what.to_string(),
            error,
        }
    }

    fn unusable(&self, message: String) -> M2mError {
        M2mError::Unusable {
            path: self.path.clone(),
            message,
        }
    }

    /// The fourccs a queue takes.
    pub fn formats(&self, queue: Queue) -> Vec<u32> {
        let mut out = Vec::new();
        for index in 0..64 {
            let mut desc: v4l2_fmtdesc = zeroed();
            desc.index = index;
            desc.type_ = queue.buf_type();
            // SAFETY: VIDIOC_ENUM_FMT takes a v4l2_fmtdesc.
            if unsafe { xioctl(self.fd, vidioc::VIDIOC_ENUM_FMT, &mut desc) }.is_err() {
                break;
            }
            out.push(desc.pixelformat);
        }
        out
    }

    /// Set a control; the error names it.
    pub fn set_control(&self, id: u32, value: i32) -> Result<(), M2mError> {
        set_control(self.fd, id, value).map_err(|e| self.io(&format!("control {id:#x}"), e))
    }

    /// Negotiate the formats, apply `controls` (each may be refused: those are returned, with
    /// why), map the buffers and start both queues.
    pub fn start(
        self,
        config: &M2mConfig,
        controls: &[(u32, i32)],
    ) -> Result<(M2mSession, Vec<(u32, io::Error)>), M2mError> {
        // The coded side first, as the stateful encoder interface asks.
        let mut coded: v4l2_format = zeroed();
        coded.type_ = BUF_TYPE_CAPTURE_MPLANE;
        // SAFETY: the union member for the multi-planar buffer types is pix_mp.
        unsafe {
            let pix = &mut coded.fmt.pix_mp;
            pix.width = config.width;
            pix.height = config.height;
            pix.pixelformat = config.coded;
            pix.num_planes = 1;
            pix.plane_fmt[0].sizeimage = config.coded_size;
        }
        // SAFETY: VIDIOC_S_FMT takes a v4l2_format.
        unsafe { xioctl(self.fd, vidioc::VIDIOC_S_FMT, &mut coded) }
            .map_err(|e| self.io("cannot set the coded format", e))?;
        // SAFETY: as above.
        let got = unsafe { coded.fmt.pix_mp.pixelformat };
        if got != config.coded {
            return Err(self.unusable(format!(
                "asked for {} on the CAPTURE queue, the driver set {}",
                fourcc_text(config.coded),
                fourcc_text(got)
            )));
        }
        let mut raw: v4l2_format = zeroed();
        raw.type_ = BUF_TYPE_OUTPUT_MPLANE;
        // SAFETY: pix_mp, as above.
        unsafe {
            let pix = &mut raw.fmt.pix_mp;
            pix.width = config.width;
            pix.height = config.height;
            pix.pixelformat = config.raw;
            pix.num_planes = 1;
        }
        // SAFETY: VIDIOC_S_FMT takes a v4l2_format.
        unsafe { xioctl(self.fd, vidioc::VIDIOC_S_FMT, &mut raw) }
            .map_err(|e| self.io("cannot set the picture format", e))?;
        // SAFETY: pix_mp, as above.
        let (pix_fmt, width, height, stride, size) = unsafe {
            let pix = &raw.fmt.pix_mp;
            (
                pix.pixelformat,
                pix.width,
                pix.height,
                pix.plane_fmt[0].bytesperline,
                pix.plane_fmt[0].sizeimage,
            )
        };
        if pix_fmt != config.raw || width != config.width || height < config.height {
            return Err(self.unusable(format!(
                "asked for {} {}x{} on the OUTPUT queue, the driver set {} {width}x{height}",
                fourcc_text(config.raw),
                config.width,
                config.height,
                fourcc_text(pix_fmt)
            )));
        }
        let layout = PlaneLayout::from_driver(config.width, config.height, stride, size);
        // The visible picture, when the driver padded the height (bcm2835-codec's 1080 -> 1088,
        // vicodec's 360 -> 368): without it the stream would announce the padded size.
        if height != config.height {
            let mut sel: v4l2_selection = zeroed();
            sel.type_ = BUF_TYPE_OUTPUT;
            sel.target = SEL_TGT_CROP;
            sel.r.width = config.width;
            sel.r.height = config.height;
            // SAFETY: VIDIOC_S_SELECTION takes a v4l2_selection (size checked above).
            unsafe { xioctl(self.fd, VIDIOC_S_SELECTION, &mut sel) }
                .map_err(|e| self.io("cannot set the visible size (crop)", e))?;
        }
        let mut parm: v4l2_streamparm = zeroed();
        parm.type_ = BUF_TYPE_OUTPUT_MPLANE;
        // The output member, for an OUTPUT queue.
        parm.parm.output.timeperframe.numerator = 1;
        parm.parm.output.timeperframe.denominator = config.fps.max(1);
        // Not every driver takes a rate (vicodec does not): then it has none to keep to.
        // SAFETY: VIDIOC_S_PARM takes a v4l2_streamparm.
        let _ = unsafe { xioctl(self.fd, vidioc::VIDIOC_S_PARM, &mut parm) };
        let refused: Vec<(u32, io::Error)> = controls
            .iter()
            .filter_map(|&(id, value)| set_control(self.fd, id, value).err().map(|e| (id, e)))
            .collect();
        let mut session = M2mSession {
            device: self,
            layout,
            output: Vec::new(),
            capture: Vec::new(),
            output_free: Vec::new(),
            streaming: false,
        };
        session.output = session.map_buffers(Queue::Output)?;
        session.capture = session.map_buffers(Queue::Capture)?;
        session.output_free = (0..session.output.len() as u32).collect();
        for index in 0..session.capture.len() as u32 {
            session.queue(Queue::Capture, index, 0)?;
        }
        for queue in [Queue::Output, Queue::Capture] {
            let mut kind = queue.buf_type() as c_int;
            // SAFETY: VIDIOC_STREAMON takes the buffer type as an int.
            unsafe { xioctl(session.device.fd, vidioc::VIDIOC_STREAMON, &mut kind) }
                .map_err(|e| session.device.io("cannot start streaming", e))?;
        }
        session.streaming = true;
        Ok((session, refused))
    }
}

/// Set a control of the device at `path` through a handle of its own (a camera's
/// force-key-frame control while another handle streams).
pub fn set_control_at(path: &str, id: u32, value: i32) -> io::Result<()> {
    let fd = v4l2::open(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC)?;
    let result = set_control(fd, id, value);
    let _ = v4l2::close(fd);
    result
}

fn set_control(fd: c_int, id: u32, value: i32) -> io::Result<()> {
    let mut control = v4l2_control { id, value };
    // SAFETY: VIDIOC_S_CTRL takes a v4l2_control.
    unsafe { xioctl(fd, vidioc::VIDIOC_S_CTRL, &mut control) }
}

/// What a session encodes: raw `raw` pictures of `width`x`height` to `coded` frames of at most
/// `coded_size` bytes, at `fps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct M2mConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub raw: u32,
    pub coded: u32,
    pub coded_size: u32,
}

/// Where I420's planes go in the driver's single-plane YU12 buffer: lines of `stride` bytes
/// (chroma `stride / 2`), planes of `rows` lines (drivers may pad the height, bcm2835-codec to a
/// multiple of 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneLayout {
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    pub rows: usize,
}

impl PlaneLayout {
    /// From the format the driver set: `bytesperline` and `sizeimage`.
    pub fn from_driver(width: u32, height: u32, bytesperline: u32, sizeimage: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        let stride = (bytesperline as usize).max(w);
        let rows = (sizeimage as usize * 2 / 3 / stride).max(h);
        // Only a padding of whole lines up to the next multiple of 16 or 32 is believed.
        let rows = if rows == h.next_multiple_of(16) || rows == h.next_multiple_of(32) {
            rows
        } else {
            h
        };
        PlaneLayout {
            width: w,
            height: h,
            stride,
            rows,
        }
    }

    /// Bytes one picture takes in the buffer.
    pub fn len(&self) -> usize {
        self.stride * self.rows + 2 * (self.stride / 2) * (self.rows / 2)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy a tight I420 picture into `dst` at this layout.
    pub fn copy_i420(&self, src: &[u8], dst: &mut [u8]) {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w / 2, h / 2);
        let (y, rest) = src.split_at((w * h).min(src.len()));
        let (u, v) = rest.split_at((cw * ch).min(rest.len()));
        let c_stride = self.stride / 2;
        let u_at = self.stride * self.rows;
        let v_at = u_at + c_stride * (self.rows / 2);
        let planes = [
            (y, w, h, self.stride, 0),
            (u, cw, ch, c_stride, u_at),
            (v, cw, ch, c_stride, v_at),
        ];
        for (plane, pw, ph, stride, at) in planes {
            for (row, line) in plane.chunks_exact(pw).take(ph).enumerate() {
                let start = at + row * stride;
                if let Some(out) = dst.get_mut(start..start + pw) {
                    out.copy_from_slice(line);
                }
            }
        }
    }
}

/// One mapped buffer.
struct Mapped {
    ptr: *mut u8,
    len: usize,
}

/// A device streaming: its buffers, mapped.
pub struct M2mSession {
    device: M2mDevice,
    layout: PlaneLayout,
    output: Vec<Mapped>,
    capture: Vec<Mapped>,
    /// OUTPUT buffers that the driver has given back.
    output_free: Vec<u32>,
    streaming: bool,
}

// SAFETY: the mappings belong to the session alone and move with it.
unsafe impl Send for M2mSession {}

/// One frame from the CAPTURE queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coded {
    pub data: Vec<u8>,
    /// The driver flagged it a keyframe.
    pub keyframe: bool,
}

impl M2mSession {
    pub fn device(&self) -> &M2mDevice {
        &self.device
    }

    pub fn layout(&self) -> PlaneLayout {
        self.layout
    }

    fn map_buffers(&self, queue: Queue) -> Result<Vec<Mapped>, M2mError> {
        let dev = &self.device;
        let mut req = v4l2_requestbuffers {
            count: BUFFERS,
            type_: queue.buf_type(),
            memory: MEMORY_MMAP,
            ..zeroed()
        };
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers.
        unsafe { xioctl(dev.fd, vidioc::VIDIOC_REQBUFS, &mut req) }
            .map_err(|e| dev.io(&format!("cannot get {queue:?} buffers"), e))?;
        if req.count == 0 {
            return Err(dev.unusable(format!("the driver gave no {queue:?} buffers")));
        }
        let mut mapped = Vec::new();
        for index in 0..req.count {
            let mut plane: v4l2_plane = zeroed();
            let mut buf: v4l2_buffer = zeroed();
            buf.index = index;
            buf.type_ = queue.buf_type();
            buf.memory = MEMORY_MMAP;
            buf.m.planes = &mut plane;
            buf.length = 1;
            // SAFETY: VIDIOC_QUERYBUF takes a v4l2_buffer whose planes point at `plane`.
            unsafe { xioctl(dev.fd, vidioc::VIDIOC_QUERYBUF, &mut buf) }
                .map_err(|e| dev.io("cannot query a buffer", e))?;
            let len = plane.length as usize;
            // SAFETY: the offset the driver gave for this plane; a shared mapping of `len`.
            let ptr = unsafe {
                v4l2::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    dev.fd,
                    plane.m.mem_offset as libc::off_t,
                )
            }
            .map_err(|e| dev.io("cannot map a buffer", e))?;
            mapped.push(Mapped {
                ptr: ptr.cast(),
                len,
            });
        }
        Ok(mapped)
    }

    fn queue(&self, queue: Queue, index: u32, bytesused: u32) -> Result<(), M2mError> {
        let mut plane: v4l2_plane = zeroed();
        plane.bytesused = bytesused;
        let buffers = match queue {
            Queue::Output => &self.output,
            Queue::Capture => &self.capture,
        };
        plane.length = buffers.get(index as usize).map_or(0, |m| m.len as u32);
        let mut buf: v4l2_buffer = zeroed();
        buf.index = index;
        buf.type_ = queue.buf_type();
        buf.memory = MEMORY_MMAP;
        buf.m.planes = &mut plane;
        buf.length = 1;
        // SAFETY: VIDIOC_QBUF takes a v4l2_buffer whose planes point at `plane`.
        unsafe { xioctl(self.device.fd, vidioc::VIDIOC_QBUF, &mut buf) }.map_err(|e| {
            self.device
                .io(&format!("cannot queue a {queue:?} buffer"), e)
        })
    }

    /// Take a finished buffer off `queue`: its index, bytes used and flags; `None` when none is
    /// ready.
    fn dequeue(&self, queue: Queue) -> Result<Option<(u32, usize, u32)>, M2mError> {
        let mut plane: v4l2_plane = zeroed();
        let mut buf: v4l2_buffer = zeroed();
        buf.type_ = queue.buf_type();
        buf.memory = MEMORY_MMAP;
        buf.m.planes = &mut plane;
        buf.length = 1;
        // SAFETY: VIDIOC_DQBUF takes a v4l2_buffer whose planes point at `plane`.
        match unsafe { xioctl(self.device.fd, vidioc::VIDIOC_DQBUF, &mut buf) } {
            Ok(()) => {
                let used = plane.bytesused.saturating_sub(plane.data_offset) as usize;
                Ok(Some((buf.index, used, buf.flags)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(self
                .device
                .io(&format!("cannot dequeue a {queue:?} buffer"), e)),
        }
    }

    /// Wait until a buffer is ready on either queue, at most `timeout`. False on timeout.
    fn wait(&self, timeout: Duration) -> Result<bool, M2mError> {
        let mut pollfd = libc::pollfd {
            fd: self.device.fd,
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: one valid pollfd for the call.
            let n = unsafe { libc::poll(&mut pollfd, 1, ms) };
            if n >= 0 {
                if pollfd.revents & libc::POLLERR != 0 {
                    return Err(self.device.unusable("the device reported an error".into()));
                }
                return Ok(n > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(self.device.io("poll", e));
            }
        }
    }

    /// Give back what the OUTPUT queue is done with, and collect what the CAPTURE queue made.
    fn reap(&mut self, coded: &mut Vec<Coded>) -> Result<(), M2mError> {
        while let Some((index, _, _)) = self.dequeue(Queue::Output)? {
            self.output_free.push(index);
        }
        while let Some((index, used, flags)) = self.dequeue(Queue::Capture)? {
            if let Some(m) = self.capture.get(index as usize) {
                // SAFETY: a mapping of `m.len` bytes that the driver has handed back to us.
                let bytes = unsafe { std::slice::from_raw_parts(m.ptr, m.len) };
                let data = bytes[..used.min(m.len)].to_vec();
                if !data.is_empty() {
                    coded.push(Coded {
                        data,
                        keyframe: flags & V4L2_BUF_FLAG_KEYFRAME != 0,
                    });
                }
            }
            self.queue(Queue::Capture, index, 0)?;
        }
        Ok(())
    }

    /// Encode one tight I420 picture: returns the coded frames that came out, waiting up to
    /// `wait` for the first (an encoder may hold a picture back; it comes with a later call).
    pub fn process(&mut self, i420: &[u8], wait: Duration) -> Result<Vec<Coded>, M2mError> {
        let mut coded = Vec::new();
        self.reap(&mut coded)?;
        let deadline = std::time::Instant::now() + wait;
        let index = loop {
            if let Some(index) = self.output_free.pop() {
                break index;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.wait(left)? {
                return Err(self
                    .device
                    .unusable("the encoder gave no picture buffer back".into()));
            }
            self.reap(&mut coded)?;
        };
        let Some(m) = self.output.get(index as usize) else {
            return Err(self.device.unusable(format!("no buffer {index}")));
        };
        let len = self.layout.len().min(m.len);
        // SAFETY: a mapping of `m.len` bytes that the driver has handed back to us.
        let dst = unsafe { std::slice::from_raw_parts_mut(m.ptr, m.len) };
        self.layout.copy_i420(i420, &mut dst[..len]);
        self.queue(Queue::Output, index, len as u32)?;
        while coded.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.wait(left)? {
                break;
            }
            self.reap(&mut coded)?;
        }
        Ok(coded)
    }

    /// Set a control while streaming (force a keyframe, a new bitrate).
    pub fn set_control(&self, id: u32, value: i32) -> Result<(), M2mError> {
        self.device.set_control(id, value)
    }
}

impl Drop for M2mSession {
    /// Both queues off, the buffers unmapped and freed; the device closes after.
    fn drop(&mut self) {
        if self.streaming {
            for queue in [Queue::Output, Queue::Capture] {
                let mut kind = queue.buf_type() as c_int;
                // SAFETY: VIDIOC_STREAMOFF takes the buffer type as an int.
                let _ = unsafe { xioctl(self.device.fd, vidioc::VIDIOC_STREAMOFF, &mut kind) };
            }
        }
        for m in self.output.drain(..).chain(self.capture.drain(..)) {
            // SAFETY: a mapping made in `map_buffers`, unmapped once.
            let _ = unsafe { v4l2::munmap(m.ptr.cast(), m.len) };
        }
        for queue in [Queue::Output, Queue::Capture] {
            let mut req = v4l2_requestbuffers {
                count: 0,
                type_: queue.buf_type(),
                memory: MEMORY_MMAP,
                ..zeroed()
            };
            // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers.
            let _ = unsafe { xioctl(self.device.fd, vidioc::VIDIOC_REQBUFS, &mut req) };
        }
    }
}

/// The `/dev/video*` nodes, in numeric order.
pub fn video_nodes() -> Vec<String> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let index = name.strip_prefix("video")?.parse::<u32>().ok()?;
            Some((index, format!("/dev/{name}")))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, path)| path).collect()
}

/// The memory-to-memory devices whose OUTPUT queue takes `raw` and whose CAPTURE queue makes
/// `coded`: path, card and driver.
pub fn find(raw: u32, coded: u32) -> Vec<(String, String, String)> {
    video_nodes()
        .into_iter()
        .filter_map(|path| {
            let device = M2mDevice::open(&path).ok()?;
            (device.formats(Queue::Output).contains(&raw)
                && device.formats(Queue::Capture).contains(&coded))
            .then(|| (path, device.card.clone(), device.driver.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plane_layout_from_the_driver_and_the_copy() {
        // bcm2835-codec style: 1920x1080 with planes of 1088 lines.
        let l = PlaneLayout::from_driver(1920, 1080, 1920, 1920 * 1088 * 3 / 2);
        assert_eq!((l.stride, l.rows), (1920, 1088));
        // Tight.
        let l = PlaneLayout::from_driver(4, 4, 4, 24);
        assert_eq!((l.stride, l.rows, l.len()), (4, 4, 24));
        // A padded 4x2 picture: stride 8, rows 16.
        let l = PlaneLayout::from_driver(4, 2, 8, 8 * 16 * 3 / 2);
        assert_eq!((l.stride, l.rows), (8, 16));
        let src: Vec<u8> = (1..=12).collect(); // Y 8, U 2, V 2
        let mut dst = vec![0u8; l.len()];
        l.copy_i420(&src, &mut dst);
        assert_eq!(&dst[0..4], &[1, 2, 3, 4]);
        assert_eq!(&dst[8..12], &[5, 6, 7, 8]);
        assert_eq!(&dst[8 * 16..8 * 16 + 2], &[9, 10]);
        assert_eq!(&dst[8 * 16 + 4 * 8..8 * 16 + 4 * 8 + 2], &[11, 12]);
    }

    #[test]
    fn devices_that_are_not_m2m_are_refused() {
        let err = M2mDevice::open("/dev/null").err().expect("not V4L2");
        assert!(
            err.to_string().starts_with("/dev/null: not a V4L2 device"),
            "{err}"
        );
        assert!(M2mDevice::open("/dev/video-nonexistent").is_err());
        assert_eq!(fourcc_text(fourcc(b"H264")), "H264");
    }
}
