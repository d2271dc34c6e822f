//! Frame sources for the camera apps: a V4L2 camera, a folder of images, an
//! IDX dataset, or deterministic synthetic frames, all behind [`FrameSource`]
//! so an app runs the same on a board (camera) and in CI (no camera).
//!
//! A source is named by a spec string (see [`SourceSpec`]):
//! `synthetic`, `folder:DIR`, `idx:PATH`, `v4l2:/dev/video0`.

mod convert;
mod folder;
mod idx;
mod synthetic;
#[cfg(target_os = "linux")]
mod v4l2;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use image::RgbImage;

pub use convert::{decode_mjpeg, yuyv_to_rgb};
pub use folder::FolderSource;
pub use idx::IdxSource;
pub use synthetic::SyntheticSource;
#[cfg(target_os = "linux")]
pub use v4l2::V4l2Source;

/// Errors raised by frame sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown source '{0}' (expected synthetic, folder:DIR, idx:PATH or v4l2:/dev/videoN)")]
    BadSpec(String),
    #[error(transparent)]
    Data(#[from] edgeclr::data::DataError),
    #[error("{path}: no images match")]
    NoMatch { path: PathBuf },
    /// The camera cannot be opened or configured (missing device, no permission,
    /// not a capture device, no usable pixel format).
    #[error("camera {device}: {message}")]
    Camera { device: PathBuf, message: String },
    /// The camera stopped delivering frames (unplugged, driver reset). The
    /// stream is closed; [`FrameSource::reopen`] tries to open it again.
    #[error("camera {device} disappeared: {message} (unplugged? the app retries)")]
    Disconnected { device: PathBuf, message: String },
    #[error("frame format: {0}")]
    Format(String),
    #[error("V4L2 cameras are only supported on Linux")]
    Unsupported,
}

impl SourceError {
    /// Whether waiting and calling [`FrameSource::reopen`] may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Disconnected { .. })
    }
}

/// A stream of RGB frames. Finite sources (folders, datasets) loop forever, so
/// every source behaves like a camera; apps stop after `--frames N`.
pub trait FrameSource: Send {
    /// Short description for logs and the screen (`synthetic`, `folder data/photos`).
    fn describe(&self) -> String;
    /// The next frame (blocking until a camera delivers one).
    fn next_frame(&mut self) -> Result<RgbImage, SourceError>;
    /// Re-opens the source after a [transient](SourceError::is_transient) error.
    /// Sources that cannot fail that way just return `Ok`.
    fn reopen(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// Capture settings for camera sources (ignored by the others, except that the
/// synthetic source uses `width`×`height` as its frame size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOptions {
    pub width: u32,
    pub height: u32,
    /// Requested frames per second (the driver picks the nearest it supports).
    pub fps: u32,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            fps: 30,
        }
    }
}

/// A parsed `--source` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Synthetic,
    /// A directory of images, or a glob in its last component (`DIR/*.jpg`).
    Folder(PathBuf),
    Idx(PathBuf),
    V4l2(PathBuf),
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let path = || {
            if arg.is_empty() {
                Err(SourceError::BadSpec(s.to_owned()))
            } else {
                Ok(PathBuf::from(arg))
            }
        };
        match kind {
            "synthetic" if arg.is_empty() => Ok(SourceSpec::Synthetic),
            "folder" => Ok(SourceSpec::Folder(path()?)),
            "idx" => Ok(SourceSpec::Idx(path()?)),
            "v4l2" | "camera" => Ok(SourceSpec::V4l2(if arg.is_empty() {
                PathBuf::from("/dev/video0")
            } else {
                PathBuf::from(arg)
            })),
            _ => Err(SourceError::BadSpec(s.to_owned())),
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Synthetic => f.write_str("synthetic"),
            SourceSpec::Folder(p) => write!(f, "folder:{}", p.display()),
            SourceSpec::Idx(p) => write!(f, "idx:{}", p.display()),
            SourceSpec::V4l2(p) => write!(f, "v4l2:{}", p.display()),
        }
    }
}

impl SourceSpec {
    /// Opens the source this spec names.
    pub fn open(&self, options: &CaptureOptions) -> Result<Box<dyn FrameSource>, SourceError> {
        Ok(match self {
            SourceSpec::Synthetic => Box::new(SyntheticSource::new(options.width, options.height)),
            SourceSpec::Folder(p) => Box::new(FolderSource::open(p)?),
            SourceSpec::Idx(p) => Box::new(IdxSource::open(p)?),
            #[cfg(target_os = "linux")]
            SourceSpec::V4l2(p) => Box::new(V4l2Source::open(p, options)?),
            #[cfg(not(target_os = "linux"))]
            SourceSpec::V4l2(_) => return Err(SourceError::Unsupported),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in [
            "synthetic",
            "folder:data/photos",
            "idx:data/x.idx",
            "v4l2:/dev/video2",
        ] {
            assert_eq!(s.parse::<SourceSpec>().unwrap().to_string(), s);
        }
        assert_eq!(
            "v4l2".parse::<SourceSpec>().unwrap(),
            SourceSpec::V4l2("/dev/video0".into())
        );
        for bad in ["", "folder", "folder:", "webcam:0", "synthetic:3"] {
            assert!(matches!(
                bad.parse::<SourceSpec>(),
                Err(SourceError::BadSpec(_))
            ));
        }
    }

    #[test]
    fn a_missing_camera_is_a_clear_error() {
        let spec: SourceSpec = "v4l2:/dev/video-does-not-exist".parse().unwrap();
        let err = spec.open(&CaptureOptions::default()).err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("/dev/video-does-not-exist"), "{msg}");
        assert!(!err.is_transient());
    }
}
