//! Where a drawn screen goes: PNG files (tests, screenshots, headless boards)
//! or the Linux framebuffer. An SPI panel (SSD1306, ST7789) is driven by its
//! own `DrawTarget` driver crate instead: see the module docs of `display`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{DisplayError, RgbCanvas};

/// A parsed `--display` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisplaySpec {
    /// `png:DIR`: every shown frame saved as `DIR/frame-NNNNN.png`.
    Png(PathBuf),
    /// `fb` or `fb:/dev/fbN`: the Linux framebuffer.
    Framebuffer(PathBuf),
    /// `none`: draw nothing (benchmarks, a board without a screen).
    None,
}

impl FromStr for DisplaySpec {
    type Err = DisplayError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "png" if !arg.is_empty() => Ok(DisplaySpec::Png(arg.into())),
            "fb" => Ok(DisplaySpec::Framebuffer(if arg.is_empty() {
                "/dev/fb0".into()
            } else {
                arg.into()
            })),
            "none" if arg.is_empty() => Ok(DisplaySpec::None),
            _ => Err(DisplayError::BadSpec(s.to_owned())),
        }
    }
}

impl DisplaySpec {
    pub fn open(&self) -> Result<Box<dyn DisplaySink>, DisplayError> {
        Ok(match self {
            DisplaySpec::Png(dir) => Box::new(PngSink::new(dir)?),
            DisplaySpec::Framebuffer(dev) => Box::new(FramebufferSink::open(dev)?),
            DisplaySpec::None => Box::new(NullSink),
        })
    }
}

/// Shows a finished screen.
pub trait DisplaySink: Send {
    fn show(&mut self, canvas: &RgbCanvas) -> Result<(), DisplayError>;
}

/// Discards every screen.
#[derive(Debug)]
pub struct NullSink;

impl DisplaySink for NullSink {
    fn show(&mut self, _canvas: &RgbCanvas) -> Result<(), DisplayError> {
        Ok(())
    }
}

/// Saves each screen as `frame-00000.png`, `frame-00001.png`, ...
#[derive(Debug)]
pub struct PngSink {
    dir: PathBuf,
    next: u64,
}

impl PngSink {
    /// Creates `dir` if needed.
    pub fn new(dir: &Path) -> Result<Self, DisplayError> {
        std::fs::create_dir_all(dir).map_err(|source| DisplayError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            next: 0,
        })
    }

    /// The file the `n`-th shown screen went to.
    pub fn frame_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("frame-{n:05}.png"))
    }
}

impl DisplaySink for PngSink {
    fn show(&mut self, canvas: &RgbCanvas) -> Result<(), DisplayError> {
        let path = self.frame_path(self.next);
        canvas
            .image
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| DisplayError::Png {
                path: path.clone(),
                message: e.to_string(),
            })?;
        self.next += 1;
        Ok(())
    }
}

/// The pixel layout of a framebuffer, from `FBIOGET_VSCREENINFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FbFormat {
    pub width: u32,
    pub height: u32,
    pub bits_per_pixel: u32,
    /// Bytes per line (`FBIOGET_FSCREENINFO`), at least `width * bpp / 8`.
    pub line_length: usize,
    /// Bit offset and length of each channel.
    pub red: (u32, u32),
    pub green: (u32, u32),
    pub blue: (u32, u32),
}

impl FbFormat {
    /// Packs one RGB pixel into the framebuffer's bytes (little-endian).
    pub fn pack(&self, rgb: [u8; 3], out: &mut [u8]) {
        let chan = |v: u8, (offset, len): (u32, u32)| -> u32 {
            if len == 0 {
                0
            } else {
                (u32::from(v) >> (8 - len.min(8))) << offset
            }
        };
        let word = chan(rgb[0], self.red) | chan(rgb[1], self.green) | chan(rgb[2], self.blue);
        let bytes = word.to_le_bytes();
        let n = out.len().min(4);
        out[..n].copy_from_slice(&bytes[..n]);
    }

    /// The canvas converted to framebuffer rows (clipped to the screen),
    /// each `line_length` bytes long.
    pub fn encode(&self, canvas: &RgbCanvas) -> Vec<u8> {
        let bpp = (self.bits_per_pixel / 8) as usize;
        let w = canvas.image.width().min(self.width) as usize;
        let h = canvas.image.height().min(self.height) as usize;
        let mut out = vec![0u8; self.line_length * h];
        for y in 0..h {
            for x in 0..w {
                let at = y * self.line_length + x * bpp;
                self.pack(
                    canvas.image.get_pixel(x as u32, y as u32).0,
                    &mut out[at..at + bpp],
                );
            }
        }
        out
    }
}

/// The Linux framebuffer (`/dev/fb0`): the screen is written at the top-left
/// corner with plain file I/O, after reading the pixel format by ioctl.
#[derive(Debug)]
pub struct FramebufferSink {
    device: PathBuf,
    file: File,
    format: FbFormat,
}

#[cfg(target_os = "linux")]
mod fb_ioctl {
    //! The two read-only framebuffer ioctls, with the kernel's struct layouts
    //! (`linux/fb.h`).

    use std::os::fd::AsRawFd;

    pub const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
    pub const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    pub struct Bitfield {
        pub offset: u32,
        pub length: u32,
        pub msb_right: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct VarScreenInfo {
        pub xres: u32,
        pub yres: u32,
        pub xres_virtual: u32,
        pub yres_virtual: u32,
        pub xoffset: u32,
        pub yoffset: u32,
        pub bits_per_pixel: u32,
        pub grayscale: u32,
        pub red: Bitfield,
        pub green: Bitfield,
        pub blue: Bitfield,
        pub transp: Bitfield,
        pub rest: [u32; 20],
    }

    #[repr(C)]
    pub struct FixScreenInfo {
        pub id: [u8; 16],
        pub smem_start: libc::c_ulong,
        pub smem_len: u32,
        pub type_: u32,
        pub type_aux: u32,
        pub visual: u32,
        pub xpanstep: u16,
        pub ypanstep: u16,
        pub ywrapstep: u16,
        pub line_length: u32,
        pub mmio_start: libc::c_ulong,
        pub mmio_len: u32,
        pub accel: u32,
        pub capabilities: u16,
        pub reserved: [u16; 2],
    }

    pub fn var(file: &std::fs::File) -> std::io::Result<VarScreenInfo> {
        let mut info = VarScreenInfo::default();
        // SAFETY: FBIOGET_VSCREENINFO writes one `struct fb_var_screeninfo`
        // (160 bytes, the layout above) to the pointer, which is valid for it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_VSCREENINFO as _, &mut info) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info)
    }

    pub fn fix(file: &std::fs::File) -> std::io::Result<FixScreenInfo> {
        // SAFETY: all-zero is a valid value of this plain-data struct.
        let mut info: FixScreenInfo = unsafe { std::mem::zeroed() };
        // SAFETY: FBIOGET_FSCREENINFO writes one `struct fb_fix_screeninfo`
        // (the layout above) to the pointer, which is valid for it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_FSCREENINFO as _, &mut info) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info)
    }

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<VarScreenInfo>(), 160);
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<FixScreenInfo>(), 80);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(std::mem::size_of::<FixScreenInfo>(), 68);
    }
}

impl FramebufferSink {
    #[cfg(target_os = "linux")]
    pub fn open(device: &Path) -> Result<Self, DisplayError> {
        let fb = |message: String| DisplayError::Framebuffer {
            device: device.to_path_buf(),
            message,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(device)
            .map_err(|e| {
                fb(format!(
                    "cannot open: {e} (is there a framebuffer, and may this user write it?)"
                ))
            })?;
        let var = fb_ioctl::var(&file).map_err(|e| fb(format!("not a framebuffer: {e}")))?;
        let fix = fb_ioctl::fix(&file).map_err(|e| fb(format!("not a framebuffer: {e}")))?;
        if !matches!(var.bits_per_pixel, 16 | 24 | 32) {
            return Err(fb(format!(
                "{} bits per pixel is not supported (16, 24 or 32 are)",
                var.bits_per_pixel
            )));
        }
        let format = FbFormat {
            width: var.xres,
            height: var.yres,
            bits_per_pixel: var.bits_per_pixel,
            line_length: (fix.line_length as usize)
                .max((var.xres * var.bits_per_pixel / 8) as usize),
            red: (var.red.offset, var.red.length),
            green: (var.green.offset, var.green.length),
            blue: (var.blue.offset, var.blue.length),
        };
        Ok(Self {
            device: device.to_path_buf(),
            file,
            format,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn open(device: &Path) -> Result<Self, DisplayError> {
        Err(DisplayError::Framebuffer {
            device: device.to_path_buf(),
            message: "the framebuffer is only supported on Linux".into(),
        })
    }

    pub fn format(&self) -> FbFormat {
        self.format
    }
}

impl DisplaySink for FramebufferSink {
    fn show(&mut self, canvas: &RgbCanvas) -> Result<(), DisplayError> {
        use std::os::unix::fs::FileExt;
        let bytes = self.format.encode(canvas);
        self.file
            .write_all_at(&bytes, 0)
            .map_err(|e| DisplayError::Framebuffer {
                device: self.device.clone(),
                message: format!("write failed: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            "png:out".parse::<DisplaySpec>().unwrap(),
            DisplaySpec::Png("out".into())
        );
        assert_eq!(
            "fb".parse::<DisplaySpec>().unwrap(),
            DisplaySpec::Framebuffer("/dev/fb0".into())
        );
        assert_eq!("none".parse::<DisplaySpec>().unwrap(), DisplaySpec::None);
        for bad in ["png", "png:", "hdmi", ""] {
            assert!(bad.parse::<DisplaySpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn framebuffer_pixels_pack_as_rgb565_and_xrgb8888() {
        let rgb565 = FbFormat {
            width: 2,
            height: 1,
            bits_per_pixel: 16,
            line_length: 8,
            red: (11, 5),
            green: (5, 6),
            blue: (0, 5),
        };
        let mut canvas = RgbCanvas::new(3, 2);
        canvas.image.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        canvas.image.put_pixel(1, 0, image::Rgb([0, 255, 255]));
        let bytes = rgb565.encode(&canvas);
        assert_eq!(bytes.len(), 8, "clipped to 1 row of line_length bytes");
        assert_eq!(u16::from_le_bytes([bytes[0], bytes[1]]), 0xF800);
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]), 0x07FF);
        assert_eq!(&bytes[4..], &[0, 0, 0, 0], "padding untouched");
        let xrgb = FbFormat {
            bits_per_pixel: 32,
            line_length: 8,
            red: (16, 8),
            green: (8, 8),
            blue: (0, 8),
            ..rgb565
        };
        let bytes = xrgb.encode(&canvas);
        assert_eq!(&bytes[..8], &[0, 0, 255, 0, 255, 255, 0, 0]);
    }

    #[test]
    fn png_sink_numbers_frames() {
        let dir = std::env::temp_dir().join(format!("edgeclr-png-sink-{}", std::process::id()));
        let mut sink = PngSink::new(&dir).unwrap();
        let canvas = RgbCanvas::new(4, 3);
        sink.show(&canvas).unwrap();
        sink.show(&canvas).unwrap();
        let back = image::open(sink.frame_path(1)).unwrap().to_rgb8();
        assert_eq!(back, canvas.image);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_framebuffer_is_a_clear_error() {
        let err = FramebufferSink::open(Path::new("/dev/fb-does-not-exist")).unwrap_err();
        assert!(err.to_string().contains("/dev/fb-does-not-exist"), "{err}");
    }
}
