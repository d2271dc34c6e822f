//! Flags every app takes: source, display, layout, frame count, model.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::display::{DisplaySpec, Layout};
use crate::source::{CaptureOptions, FrameSource, SourceError, SourceSpec};
use anyhow::{Context, Result};
use edgeclr::backend::{load_encoder, Backend};
use edgeclr::{Encoder, LoadOptions, Manifest};
use image::RgbImage;

/// The model the apps use unless told otherwise.
pub const DEFAULT_MODEL: &str = "models/mobilenet_v2/manifest.toml";

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Frame source: synthetic, folder:DIR (or folder:'DIR/*.jpg'), idx:PATH,
    /// or v4l2:/dev/videoN (a camera).
    #[arg(long, default_value = "v4l2:/dev/video0", value_name = "SOURCE")]
    pub source: SourceSpec,
    /// Where the screen goes: png:DIR (one PNG per frame), fb (/dev/fb0),
    /// fb:/dev/fbN, or none.
    #[arg(long, default_value = "fb", value_name = "DISPLAY")]
    pub display: DisplaySpec,
    /// Screen layout: color320x240 or mono128x64.
    #[arg(long, default_value = "color320x240", value_name = "LAYOUT")]
    pub layout: Layout,
    /// Stop after this many frames (default: run until killed).
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,
    /// Camera frame size and rate requested from the driver.
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    #[arg(long, default_value_t = 480)]
    pub height: u32,
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Seconds between attempts to reopen a camera that disappeared.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub retry_secs: f64,
    /// Model manifest (default: the shipped MobileNetV2).
    #[arg(long, short = 'm', value_name = "MANIFEST")]
    pub model: Option<PathBuf>,
    /// Inference backend: tract or ort (a build with --features ort).
    #[arg(long, default_value = "tract", value_name = "tract|ort")]
    pub backend: String,
    /// Worker threads for the backend.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// `path` as given if it exists, else relative to the source tree (so the
/// apps run from any directory of a checkout).
pub fn shipped(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    if in_tree.exists() {
        in_tree
    } else {
        path.to_path_buf()
    }
}

impl CommonArgs {
    pub fn manifest(&self) -> Result<Manifest> {
        let path = shipped(self.model.as_deref().unwrap_or(Path::new(DEFAULT_MODEL)));
        Manifest::load(&path).with_context(|| format!("loading the manifest {}", path.display()))
    }

    pub fn load_encoder(
        &self,
        manifest: &Manifest,
        embedding_only: bool,
    ) -> Result<Box<dyn Encoder>> {
        let backend: Backend = self.backend.parse().map_err(anyhow::Error::msg)?;
        let options = LoadOptions {
            threads: self.threads.max(1),
            embedding_only,
        };
        load_encoder(&backend, manifest, &options)
            .with_context(|| format!("loading model {}", manifest.onnx.display()))
    }

    pub fn capture(&self) -> CaptureOptions {
        CaptureOptions {
            width: self.width,
            height: self.height,
            fps: self.fps,
        }
    }

    pub fn open_source(&self) -> Result<Box<dyn FrameSource>> {
        let spec = match &self.source {
            SourceSpec::Folder(p) => SourceSpec::Folder(shipped(p)),
            SourceSpec::Idx(p) => SourceSpec::Idx(shipped(p)),
            other => other.clone(),
        };
        spec.open(&self.capture())
            .with_context(|| format!("opening the source {}", self.source))
    }

    /// Whether frame number `n` (0-based) is past `--frames`.
    pub fn done(&self, n: u64) -> bool {
        self.frames.is_some_and(|f| n >= f)
    }
}

/// The next frame; a camera that disappeared is reopened every
/// `retry_secs` until it is back (the error is printed once per attempt).
/// A frame that cannot be decoded is skipped with a warning.
pub fn next_frame(source: &mut dyn FrameSource, retry_secs: f64) -> Result<RgbImage> {
    let mut bad_frames = 0;
    loop {
        match source.next_frame() {
            Ok(frame) => return Ok(frame),
            Err(e) if e.is_transient() => {
                eprintln!("warning: {e}");
                loop {
                    thread::sleep(Duration::from_secs_f64(retry_secs.max(0.01)));
                    match source.reopen() {
                        Ok(()) => {
                            eprintln!("camera back: {}", source.describe());
                            break;
                        }
                        Err(e) => eprintln!("warning: still no camera: {e}"),
                    }
                }
            }
            Err(e @ (SourceError::Format(_) | SourceError::Data(_))) if bad_frames < 10 => {
                eprintln!("warning: skipping a frame: {e}");
                bad_frames += 1;
            }
            Err(e) => return Err(e).context("reading a frame"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A camera that is unplugged after one frame and comes back on the
    /// second reopen attempt.
    struct FlakyCamera {
        frames: u32,
        reopens: u32,
    }

    impl FrameSource for FlakyCamera {
        fn describe(&self) -> String {
            "flaky".into()
        }

        fn next_frame(&mut self) -> Result<RgbImage, SourceError> {
            self.frames += 1;
            if self.frames == 2 {
                return Err(SourceError::Disconnected {
                    device: "/dev/video9".into(),
                    message: "No such device".into(),
                });
            }
            Ok(RgbImage::new(2, 2))
        }

        fn reopen(&mut self) -> Result<(), SourceError> {
            self.reopens += 1;
            if self.reopens < 2 {
                return Err(SourceError::Camera {
                    device: "/dev/video9".into(),
                    message: "cannot open".into(),
                });
            }
            Ok(())
        }
    }

    #[test]
    fn a_camera_that_disappears_is_reopened_until_it_is_back() {
        let mut cam = FlakyCamera {
            frames: 0,
            reopens: 0,
        };
        next_frame(&mut cam, 0.01).unwrap();
        next_frame(&mut cam, 0.01).unwrap();
        assert_eq!(cam.reopens, 2);
        assert_eq!(cam.frames, 3);
    }

    #[test]
    fn a_source_that_keeps_failing_stops_with_an_error() {
        struct Broken;
        impl FrameSource for Broken {
            fn describe(&self) -> String {
                "broken".into()
            }
            fn next_frame(&mut self) -> Result<RgbImage, SourceError> {
                Err(SourceError::Format("bad frame".into()))
            }
        }
        let err = next_frame(&mut Broken, 0.01).unwrap_err();
        assert!(format!("{err:#}").contains("bad frame"));
    }
}
