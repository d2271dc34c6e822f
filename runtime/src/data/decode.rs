//! Image decoding with limits, so a hostile or corrupt file costs an error,
//! not gigabytes of memory.

use std::io::Cursor;
use std::path::Path;

use image::{ImageReader, RgbImage};

use super::DataError;

/// Bounds applied before pixels are allocated.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width × height.
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 64 Mpixel and 512 MiB: above any camera frame, far below a bomb.
    fn default() -> Self {
        Self {
            max_pixels: 64 * 1024 * 1024,
            max_alloc: 512 * 1024 * 1024,
        }
    }
}

/// Decodes an image file to 8-bit RGB.
pub fn decode_image(path: &Path, limits: DecodeLimits) -> Result<RgbImage, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image_bytes(&bytes, path, limits)
}

/// Decodes encoded image bytes to 8-bit RGB; `path` is only used in errors.
pub fn decode_image_bytes(
    bytes: &[u8],
    path: &Path,
    limits: DecodeLimits,
) -> Result<RgbImage, DataError> {
    let decode_err = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(decode_err("unrecognised image format".into()));
    }
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| decode_err(e.to_string()))?;
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    let image = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(decode_err("image has no pixels".into()));
    }
    Ok(image.to_rgb8())
}
