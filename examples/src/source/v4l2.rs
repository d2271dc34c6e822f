//! A V4L2 camera (USB/UVC webcams, the Pi camera through its V4L2 driver).
//!
//! Uses `linuxvideo`, which issues the V4L2 ioctls from pure Rust: the common
//! alternative (`v4l`) generates its bindings with bindgen at build time and
//! so needs libclang on the build machine, which neither this machine nor a
//! typical board image has. Frames come as YUYV or MJPEG (what UVC cameras
//! offer) or packed RGB, and are converted by [`super::convert`].

use std::path::{Path, PathBuf};

use image::RgbImage;
use linuxvideo::format::{PixFormat, PixelFormat};
use linuxvideo::stream::ReadStream;
use linuxvideo::{BufType, CapabilityFlags, Device, Fract};

use super::convert::{decode_mjpeg, yuyv_to_rgb};
use super::{CaptureOptions, FrameSource, SourceError};

/// Formats we can convert, in order of preference: uncompressed first (no
/// decode cost), then MJPEG (what most webcams offer at high resolutions).
const PREFERRED: &[PixelFormat] = &[
    PixelFormat::YUYV,
    PixelFormat::RGB3,
    PixelFormat::MJPG,
    PixelFormat::JPEG,
];

/// An open, streaming camera.
pub struct V4l2Source {
    device: PathBuf,
    options: CaptureOptions,
    stream: Option<Stream>,
}

struct Stream {
    inner: ReadStream,
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
}

impl std::fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Source")
            .field("device", &self.device)
            .field("options", &self.options)
            .field("streaming", &self.stream.is_some())
            .finish()
    }
}

fn fourcc(f: PixelFormat) -> String {
    format!("{f}")
}

fn start(device: &Path, options: &CaptureOptions) -> Result<Stream, SourceError> {
    let camera = |message: String| SourceError::Camera {
        device: device.to_path_buf(),
        message,
    };
    let dev = Device::open(device).map_err(|e| camera(format!("cannot open: {e}")))?;
    let caps = dev
        .capabilities()
        .map_err(|e| camera(format!("not a V4L2 device: {e}")))?;
    if !caps
        .device_capabilities()
        .contains(CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING)
    {
        return Err(camera(format!(
            "'{}' cannot stream video capture",
            caps.card()
        )));
    }
    let offered = dev
        .formats(BufType::VIDEO_CAPTURE)
        .map(|f| f.map(|f| f.pixel_format()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| camera(format!("cannot list formats: {e}")))?;
    let format = PREFERRED
        .iter()
        .copied()
        .find(|f| offered.contains(f))
        .ok_or_else(|| {
            let names: Vec<String> = offered.iter().copied().map(fourcc).collect();
            camera(format!(
                "offers none of YUYV, RGB3, MJPG, JPEG (it offers {})",
                names.join(", ")
            ))
        })?;
    let capture = dev
        .video_capture(PixFormat::new(options.width, options.height, format))
        .map_err(|e| camera(format!("cannot set the capture format: {e}")))?;
    let negotiated = capture.format();
    let (width, height) = (negotiated.width(), negotiated.height());
    let stride = negotiated.bytes_per_line() as usize;
    if negotiated.pixel_format() != format {
        return Err(camera(format!(
            "asked for {} but the driver chose {}",
            fourcc(format),
            fourcc(negotiated.pixel_format())
        )));
    }
    if options.fps > 0 {
        // Not every driver lets the rate be set; the default rate then stays.
        let _ = capture.set_frame_interval(Fract::new(1, options.fps));
    }
    let inner = capture
        .into_stream()
        .map_err(|e| camera(format!("cannot start streaming: {e}")))?;
    Ok(Stream {
        inner,
        format,
        width,
        height,
        stride,
    })
}

impl V4l2Source {
    /// Opens `device` and starts streaming at about `options.width`×`height`
    /// (the driver picks the nearest size it supports) and `options.fps`.
    pub fn open(device: &Path, options: &CaptureOptions) -> Result<Self, SourceError> {
        let stream = start(device, options)?;
        Ok(Self {
            device: device.to_path_buf(),
            options: *options,
            stream: Some(stream),
        })
    }

    /// The negotiated frame size, while streaming.
    pub fn frame_size(&self) -> Option<(u32, u32)> {
        self.stream.as_ref().map(|s| (s.width, s.height))
    }
}

impl FrameSource for V4l2Source {
    fn describe(&self) -> String {
        match &self.stream {
            Some(s) => format!(
                "v4l2 {} {}x{} {}",
                self.device.display(),
                s.width,
                s.height,
                fourcc(s.format)
            ),
            None => format!("v4l2 {} (closed)", self.device.display()),
        }
    }

    fn next_frame(&mut self) -> Result<RgbImage, SourceError> {
        let device = self.device.clone();
        let Some(stream) = self.stream.as_mut() else {
            return Err(SourceError::Disconnected {
                device,
                message: "the stream is closed".into(),
            });
        };
        let (format, width, height, stride) =
            (stream.format, stream.width, stream.height, stream.stride);
        let bytes = stream.inner.dequeue(|buf| Ok(buf.to_vec()));
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                // ENODEV/EIO after an unplug: drop the stream so reopen starts clean.
                self.stream = None;
                return Err(SourceError::Disconnected {
                    device,
                    message: e.to_string(),
                });
            }
        };
        match format {
            PixelFormat::YUYV => yuyv_to_rgb(&bytes, width, height, stride.max(2 * width as usize)),
            PixelFormat::RGB3 => {
                let stride = stride.max(3 * width as usize);
                let row = 3 * width as usize;
                let need = stride * (height as usize).saturating_sub(1) + row;
                if bytes.len() < need {
                    return Err(SourceError::Format(format!(
                        "RGB3 frame needs {need} bytes, got {}",
                        bytes.len()
                    )));
                }
                let mut out = Vec::with_capacity(row * height as usize);
                for y in 0..height as usize {
                    out.extend_from_slice(&bytes[y * stride..y * stride + row]);
                }
                RgbImage::from_raw(width, height, out)
                    .ok_or_else(|| SourceError::Format("RGB3 frame size".into()))
            }
            _ => decode_mjpeg(&bytes),
        }
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        self.stream = None;
        self.stream = Some(start(&self.device, &self.options)?);
        Ok(())
    }
}
