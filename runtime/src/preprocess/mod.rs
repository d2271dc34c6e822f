//! Preprocessing: decoded RGB image → the encoder's input tensor.
//!
//! The steps follow the manifest and reproduce torchvision's
//! `Resize(short) → CenterCrop → ToTensor → Normalize` on PIL images, because
//! that is how the shipped encoders were trained and evaluated. The resize is
//! Pillow's own algorithm ([`resample`]), so a tensor made here matches the
//! Python reference within 1e-2 per element after normalisation (tested).

pub mod resample;

use image::RgbImage;
use ndarray::{s, Array4, ArrayViewMut3};

use crate::manifest::{ChannelOrder, Filter, Layout, Manifest, PreprocessSpec};

/// Errors raised while turning an image into a tensor.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("image is empty ({0}x{1})")]
    EmptyImage(u32, u32),
    /// The resize step would make an image this large: a very thin image
    /// (say 1×10⁶ pixels, a few hundred bytes as PNG) resized so its short side
    /// is 256 pixels would otherwise allocate gigabytes.
    #[error("a {width}x{height} image would be resized to {resized_width}x{resized_height}, over the {limit}-pixel limit (aspect ratio too extreme)")]
    ResizeTooLarge {
        width: u32,
        height: u32,
        resized_width: u64,
        resized_height: u64,
        limit: u64,
    },
    #[error("output tensor has shape {got:?}, expected {expected:?}")]
    Shape {
        got: Vec<usize>,
        expected: Vec<usize>,
    },
}

/// Largest image the resize step may produce (width × height), the same
/// 64 Mpixel bound [`crate::data::DecodeLimits`] puts on decoded images.
pub const MAX_RESIZED_PIXELS: u64 = 64 * 1024 * 1024;

/// Turns images into input tensors for one model. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: PreprocessSpec,
    layout: Layout,
    channels: ChannelOrder,
}

impl Preprocessor {
    pub fn new(manifest: &Manifest) -> Self {
        Self {
            spec: manifest.preprocess.clone(),
            layout: manifest.input.layout,
            channels: manifest.input.channels,
        }
    }

    /// Shape of one sample's tensor (batch dimension excluded).
    pub fn sample_shape(&self) -> [usize; 3] {
        let [h, w] = self.spec.crop.map(|v| v as usize);
        match self.layout {
            Layout::Nchw => [3, h, w],
            Layout::Nhwc => [h, w, 3],
        }
    }

    /// Size after the resize step, torchvision's rule: the short side becomes
    /// `resize_short_side` and the long side is scaled and truncated. Refused
    /// when the result would exceed [`MAX_RESIZED_PIXELS`].
    fn resized_size(&self, w: u32, h: u32) -> Result<(u32, u32), PreprocessError> {
        let [crop_h, crop_w] = self.spec.crop;
        let (rw, rh) = match self.spec.resize_short_side {
            Some(short) if w <= h => (
                u64::from(short),
                u64::from(short) * u64::from(h) / u64::from(w),
            ),
            Some(short) => (
                u64::from(short) * u64::from(w) / u64::from(h),
                u64::from(short),
            ),
            None => (u64::from(crop_w), u64::from(crop_h)),
        };
        if rw.saturating_mul(rh) > MAX_RESIZED_PIXELS {
            return Err(PreprocessError::ResizeTooLarge {
                width: w,
                height: h,
                resized_width: rw,
                resized_height: rh,
                limit: MAX_RESIZED_PIXELS,
            });
        }
        // Both fit in u32: each is at most MAX_RESIZED_PIXELS.
        Ok((rw as u32, rh as u32))
    }

    fn resize(&self, image: &RgbImage, w: u32, h: u32) -> RgbImage {
        match self.spec.filter {
            Filter::Nearest => resample::resize_nearest(image, w, h),
            Filter::Bilinear => resample::resize(image, w, h, resample::Kernel::Bilinear),
            Filter::Bicubic => resample::resize(image, w, h, resample::Kernel::Bicubic),
        }
    }

    /// Writes one image into `out`, a sample-shaped slice of a batch tensor:
    /// resize, centre crop, scale, normalise, lay out.
    pub fn write_into(
        &self,
        image: &RgbImage,
        mut out: ArrayViewMut3<f32>,
    ) -> Result<(), PreprocessError> {
        let expected = self.sample_shape();
        if out.shape() != expected {
            return Err(PreprocessError::Shape {
                got: out.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(PreprocessError::EmptyImage(w, h));
        }
        let (rw, rh) = self.resized_size(w, h)?;
        let resized = if (rw, rh) == (w, h) {
            image.clone()
        } else {
            self.resize(image, rw, rh)
        };
        let [crop_h, crop_w] = self.spec.crop;
        // torchvision's CenterCrop uses Python's round(): half to even.
        let top = (rh.saturating_sub(crop_h) as f64 / 2.0).round_ties_even() as usize;
        let left = (rw.saturating_sub(crop_w) as f64 / 2.0).round_ties_even() as usize;
        // A source smaller than the crop (no resize configured) is padded with zeros.
        out.fill(0.0);
        let order: [usize; 3] = match self.channels {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        // Fold scale, mean and std into one multiply-add per element.
        let gain: [f32; 3] = std::array::from_fn(|c| self.spec.scale / self.spec.std[c]);
        let bias: [f32; 3] = std::array::from_fn(|c| -self.spec.mean[c] / self.spec.std[c]);
        let pixels = resized.as_raw();
        let rows = (crop_h as usize).min(rh as usize);
        let cols = (crop_w as usize).min(rw as usize);
        for y in 0..rows {
            for x in 0..cols {
                let at = ((top + y) * rw as usize + left + x) * 3;
                let px = &pixels[at..at + 3];
                for (dst_c, &src_c) in order.iter().enumerate() {
                    let v = f32::from(px[src_c]) * gain[dst_c] + bias[dst_c];
                    match self.layout {
                        Layout::Nchw => out[[dst_c, y, x]] = v,
                        Layout::Nhwc => out[[y, x, dst_c]] = v,
                    }
                }
            }
        }
        Ok(())
    }

    /// Builds a batch tensor `[N, ...sample_shape]` from images.
    pub fn batch(&self, images: &[RgbImage]) -> Result<Array4<f32>, PreprocessError> {
        let [a, b, c] = self.sample_shape();
        let mut batch = Array4::<f32>::zeros((images.len(), a, b, c));
        for (i, image) in images.iter().enumerate() {
            self.write_into(image, batch.slice_mut(s![i, .., .., ..]))?;
        }
        Ok(batch)
    }
}
