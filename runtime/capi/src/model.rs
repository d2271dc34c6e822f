//! Models: open a manifest with tract, embed RGB8 images.

use std::path::Path;

use image::RgbImage;

use super::args::{expect_len, out_arg, slice_arg, slice_mut_arg, str_arg};
use super::registry;
use super::status::{guard, EdgeclrStatus, FfiError};
use edgeclr::backend::{Encoder, LoadOptions, TractEncoder};
use edgeclr::embed::embed_images;
use edgeclr::{Manifest, Preprocessor};

pub(crate) const KIND: &str = "model";

/// An opened encoder. Treat as opaque: copy it, compare it, pass it back;
/// `id == 0` is the null handle.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeclrModel {
    pub id: u64,
}

/// What a model handle owns.
pub(crate) struct Model {
    encoder: TractEncoder,
    preprocessor: Preprocessor,
}

/// The manifest of the model behind `model` (for trainers).
pub(crate) fn manifest_of(model: EdgeclrModel) -> Result<Manifest, FfiError> {
    registry::with(model.id, KIND, |m: &mut Model| {
        Ok(m.encoder.manifest().clone())
    })
}

/// Copies a strided RGB8 buffer into an image, checking every size first.
fn image_from_rgb8(
    rgb: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage, FfiError> {
    let invalid = |m: String| FfiError::new(EdgeclrStatus::InvalidArgument, m);
    if width == 0 || height == 0 {
        return Err(invalid(format!("image is empty ({width}x{height})")));
    }
    let row = (width as usize)
        .checked_mul(3)
        .ok_or_else(|| invalid(format!("width {width} overflows")))?;
    if stride < row {
        return Err(invalid(format!(
            "stride {stride} is less than width × 3 = {row} bytes"
        )));
    }
    let needed = stride
        .checked_mul(height as usize - 1)
        .and_then(|n| n.checked_add(row))
        .ok_or_else(|| invalid(format!("{height} rows of stride {stride} overflow")))?;
    if rgb.len() < needed {
        return Err(FfiError::new(
            EdgeclrStatus::BufferSize,
            format!(
                "rgb holds {} bytes, a {width}x{height} image with stride {stride} needs {needed}",
                rgb.len()
            ),
        ));
    }
    let mut pixels = Vec::with_capacity(row * height as usize);
    for y in 0..height as usize {
        pixels.extend_from_slice(&rgb[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| invalid("image buffer size mismatch".into()))
}

/// Opens the model described by a manifest (a `manifest.toml`, a directory
/// holding one, or an `.onnx` with a manifest beside it), checks the ONNX
/// file's sha256 and optimises it for tract. `threads` is the number of
/// matrix-kernel worker threads (0 is taken as 1). On success `*out` is a new
/// handle; free it with [`edgeclr_model_free`].
///
/// # Safety
/// `manifest_path` is NULL or a NUL-terminated string; `out` is NULL or
/// points to a writable `EdgeclrModel`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_model_open(
    manifest_path: *const std::ffi::c_char,
    threads: u32,
    out: *mut EdgeclrModel,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        // SAFETY: forwarded contract.
        let path = unsafe { str_arg(manifest_path, "manifest_path") }?;
        let manifest = Manifest::load(Path::new(path))?;
        let options = LoadOptions {
            threads: (threads as usize).max(1),
            embedding_only: true,
        };
        let encoder = TractEncoder::load(&manifest, &options)?;
        let preprocessor = Preprocessor::new(encoder.manifest());
        *out = EdgeclrModel {
            id: registry::insert(
                KIND,
                Model {
                    encoder,
                    preprocessor,
                },
            ),
        };
        Ok(())
    })
}

/// Writes the model's embedding width (1280 for the shipped MobileNetV2) to
/// `*out`: the length every embedding buffer must have.
///
/// # Safety
/// `out` is NULL or points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_model_embedding_dim(
    model: EdgeclrModel,
    out: *mut usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let out = unsafe { out_arg(out, "out") }?;
        *out = registry::with(model.id, KIND, |m: &mut Model| {
            Ok(m.encoder.manifest().outputs.embedding_dim)
        })?;
        Ok(())
    })
}

/// Embeds one RGB8 image (3 bytes per pixel, R G B, rows `stride` bytes
/// apart, `stride >= width * 3`) into `out`, which must hold exactly the
/// model's embedding width ([`edgeclr_model_embedding_dim`]) floats.
/// Preprocessing (resize, centre crop, normalisation) follows the manifest,
/// exactly as `edgeclr embed` does; the embedding is not L2-normalised.
///
/// `rgb_len` is the size of the `rgb` buffer in bytes; it must cover
/// `stride * (height - 1) + width * 3` bytes. Nothing is written to `out` on
/// failure.
///
/// # Safety
/// `rgb` is NULL or points to `rgb_len` readable bytes; `out` is NULL or
/// points to `out_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn edgeclr_model_embed_rgb8(
    model: EdgeclrModel,
    rgb: *const u8,
    rgb_len: usize,
    width: u32,
    height: u32,
    stride: usize,
    out: *mut f32,
    out_len: usize,
) -> EdgeclrStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let rgb = unsafe { slice_arg(rgb, rgb_len, "rgb") }?;
        // SAFETY: forwarded contract.
        let out = unsafe { slice_mut_arg(out, out_len, "out") }?;
        registry::with(model.id, KIND, |m: &mut Model| {
            expect_len("out", out.len(), m.encoder.manifest().outputs.embedding_dim)?;
            let image = image_from_rgb8(rgb, width, height, stride)?;
            let output = embed_images(&mut m.encoder, &m.preprocessor, &[image])?;
            let row = output.embedding.row(0);
            expect_len("the model's embedding", row.len(), out.len())?;
            for (dst, src) in out.iter_mut().zip(row.iter()) {
                *dst = *src;
            }
            Ok(())
        })
    })
}

/// Frees a model handle. Afterwards every call with it (a second free
/// included) returns `EDGECLR_STATUS_INVALID_HANDLE`. If another thread is in
/// a call on it, that call completes first and the model is released then.
#[no_mangle]
pub extern "C" fn edgeclr_model_free(model: EdgeclrModel) -> EdgeclrStatus {
    guard(|| registry::remove(model.id, KIND))
}
