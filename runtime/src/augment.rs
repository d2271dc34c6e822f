//! Seeded SimCLR-style augmentations, run on the device.
//!
//! One call to [`Augmenter::view`] applies, in torchvision's order
//! (SimCLR / MoCo v2 pipeline):
//!
//! 1. `RandomResizedCrop(out_size, scale, ratio)`: torchvision's sampling
//!    (up to 10 tries of uniform area fraction and log-uniform aspect ratio,
//!    then a centre-crop fallback clamped to the ratio range), then a bilinear
//!    resize (`FilterType::Triangle`) of the crop to `out_size`;
//! 2. horizontal flip with probability `hflip_p`;
//! 3. with probability `jitter_p`, `ColorJitter(brightness, contrast,
//!    saturation, hue)`: the four factors are drawn as in torchvision
//!    (brightness/contrast/saturation uniform in `[max(0, 1−s), 1+s]`, hue
//!    shift uniform in `[−h, h]`) and applied **in a random order** (a
//!    random permutation per view, as torchvision's `fn_idx`). The ops work
//!    on `f32` pixels in `[0, 1]`, clamped after each op as torchvision's
//!    tensor ops do, and are quantised back to `u8` once at the end:
//!    - brightness: `x · f`;
//!    - contrast: blend with the mean gray level of the image, `f·x + (1−f)·mean`;
//!    - saturation: blend with the pixel's gray level, `f·x + (1−f)·gray`;
//!    - hue: rotate the hue channel in HSV by the shift (in turns);
//! 4. grayscale with probability `grayscale_p` (ITU-R 601 luma
//!    `0.299 R + 0.587 G + 0.114 B`, copied to the three channels);
//! 5. Gaussian blur with probability `blur_p`, sigma uniform in `blur_sigma`
//!    (`image::imageops::blur`).
//!
//! Crop and resize come first so the colour ops run on the (small) output.
//!
//! # Reproducibility and checkpoints
//!
//! All randomness comes from one `ChaCha8Rng` seeded with
//! `seed_from_u64(seed)`. [`Augmenter::rng_state`] returns the seed and the
//! ChaCha word position (`get_word_pos`, exact even mid-block);
//! [`Augmenter::resume`] rebuilds the generator with `set_word_pos`, so a run
//! resumed from a checkpoint produces exactly the views an uninterrupted run
//! would have produced next. (The word position is a `u128`; it serialises
//! with serde_json, not with TOML.)

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Invalid augmentation settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AugmentError {
    #[error("invalid augmentation config: {0}")]
    Config(String),
}

/// The augmentation pipeline's settings. `Default` is SimCLR's (with MoCo
/// v2's crop scale `(0.2, 1.0)`) for a 224×224 model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Output `(width, height)`: the model's preprocessing input size.
    pub out_size: (u32, u32),
    /// Range of the crop's area as a fraction of the image, within `(0, 1]`.
    pub scale: (f32, f32),
    /// Range of the crop's aspect ratio `w / h` (sampled log-uniformly).
    pub ratio: (f32, f32),
    /// Probability of a horizontal flip.
    pub hflip_p: f32,
    /// Probability of applying the colour jitter.
    pub jitter_p: f32,
    /// Brightness jitter strength (factor in `[max(0, 1−b), 1+b]`).
    pub brightness: f32,
    /// Contrast jitter strength.
    pub contrast: f32,
    /// Saturation jitter strength.
    pub saturation: f32,
    /// Hue jitter strength in turns, within `[0, 0.5]` (shift in `[−h, h]`).
    pub hue: f32,
    /// Probability of converting to grayscale.
    pub grayscale_p: f32,
    /// Probability of a Gaussian blur.
    pub blur_p: f32,
    /// Range of the blur's sigma, in output pixels.
    pub blur_sigma: (f32, f32),
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            out_size: (224, 224),
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            grayscale_p: 0.2,
            blur_p: 0.5,
            blur_sigma: (0.1, 2.0),
        }
    }
}

impl AugmentConfig {
    /// A config that only crops and resizes: every probability 0, full-area
    /// crops. Tests and evaluation start from it.
    pub fn identity(out_size: (u32, u32)) -> Self {
        Self {
            out_size,
            scale: (1.0, 1.0),
            hflip_p: 0.0,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            ..Self::default()
        }
    }

    /// Checks every field; [`Augmenter::new`] calls it.
    pub fn validate(&self) -> Result<(), AugmentError> {
        let err = |m: String| Err(AugmentError::Config(m));
        if self.out_size.0 == 0 || self.out_size.1 == 0 {
            return err(format!("out_size {:?} must be positive", self.out_size));
        }
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return err(format!(
                "scale ({s0}, {s1}) must satisfy 0 < min <= max <= 1"
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return err(format!(
                "ratio ({r0}, {r1}) must satisfy 0 < min <= max < inf"
            ));
        }
        for (name, p) in [
            ("hflip_p", self.hflip_p),
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return err(format!("{name} = {p} is not a probability in [0, 1]"));
            }
        }
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return err(format!("{name} = {v} must be finite and >= 0"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return err(format!("hue = {} must lie in [0, 0.5]", self.hue));
        }
        let (b0, b1) = self.blur_sigma;
        if !(b0 > 0.0 && b0 <= b1 && b1.is_finite()) {
            return err(format!(
                "blur_sigma ({b0}, {b1}) must satisfy 0 < min <= max < inf"
            ));
        }
        Ok(())
    }
}

/// Where an [`Augmenter`]'s random stream stands: enough to resume it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AugmentState {
    /// The seed given to [`Augmenter::new`].
    pub seed: u64,
    /// ChaCha8 word position (32-bit words consumed since seeding).
    pub word_pos: u128,
}

/// The four colour-jitter ops, in the order torchvision indexes them.
#[derive(Debug, Clone, Copy)]
enum Jitter {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
    Hue(f32),
}

/// A seeded source of augmented views.
#[derive(Debug, Clone)]
pub struct Augmenter {
    config: AugmentConfig,
    seed: u64,
    rng: ChaCha8Rng,
}

impl Augmenter {
    /// A fresh augmenter; the same `(config, seed)` always yields the same views.
    pub fn new(config: AugmentConfig, seed: u64) -> Result<Self, AugmentError> {
        config.validate()?;
        Ok(Self {
            config,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// Rebuilds an augmenter at a saved [`AugmentState`] (see the module docs).
    pub fn resume(config: AugmentConfig, state: AugmentState) -> Result<Self, AugmentError> {
        let mut aug = Self::new(config, state.seed)?;
        aug.rng.set_word_pos(state.word_pos);
        Ok(aug)
    }

    /// The random stream's position, for checkpoints.
    pub fn rng_state(&self) -> AugmentState {
        AugmentState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos(),
        }
    }

    pub fn config(&self) -> &AugmentConfig {
        &self.config
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `n` independent views of `image` (SimCLR/MoCo use `n = 2`).
    pub fn views(&mut self, image: &RgbImage, n: usize) -> Vec<RgbImage> {
        (0..n).map(|_| self.view(image)).collect()
    }

    /// One augmented view of `image`, of size `config.out_size`. An empty
    /// (0-pixel) image yields a black image and consumes no randomness.
    pub fn view(&mut self, image: &RgbImage) -> RgbImage {
        let (ow, oh) = self.config.out_size;
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return RgbImage::new(ow, oh);
        }
        let (x, y, cw, ch) = self.sample_crop(w, h);
        let mut out = if (x, y, cw, ch) == (0, 0, w, h) {
            imageops::resize(image, ow, oh, FilterType::Triangle)
        } else {
            let crop = imageops::crop_imm(image, x, y, cw, ch);
            imageops::resize(&*crop, ow, oh, FilterType::Triangle)
        };
        if self.coin(self.config.hflip_p) {
            imageops::flip_horizontal_in_place(&mut out);
        }
        if self.coin(self.config.jitter_p) {
            let ops = self.sample_jitter();
            color_jitter(&mut out, &ops);
        }
        if self.coin(self.config.grayscale_p) {
            to_grayscale(&mut out);
        }
        if self.coin(self.config.blur_p) {
            let (s0, s1) = self.config.blur_sigma;
            let sigma = s0 + (s1 - s0) * self.unit() as f32;
            out = imageops::blur(&out, sigma);
        }
        out
    }

    /// Samples a crop box `(x, y, width, height)` inside a `width × height`
    /// image, as torchvision's `RandomResizedCrop.get_params`.
    pub fn sample_crop(&mut self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let area = f64::from(width) * f64::from(height);
        let (s0, s1) = (
            f64::from(self.config.scale.0),
            f64::from(self.config.scale.1),
        );
        let (r0, r1) = (
            f64::from(self.config.ratio.0),
            f64::from(self.config.ratio.1),
        );
        let (l0, l1) = (r0.ln(), r1.ln());
        for _ in 0..10 {
            let target_area = area * (s0 + (s1 - s0) * self.unit());
            let aspect = (l0 + (l1 - l0) * self.unit()).exp();
            let cw = (target_area * aspect).sqrt().round();
            let ch = (target_area / aspect).sqrt().round();
            if cw > 0.0 && cw <= f64::from(width) && ch > 0.0 && ch <= f64::from(height) {
                let (cw, ch) = (cw as u32, ch as u32);
                let y = self.rng.random_range(0..=height - ch);
                let x = self.rng.random_range(0..=width - cw);
                return (x, y, cw, ch);
            }
        }
        // Centre crop at the nearest allowed aspect ratio.
        let in_ratio = f64::from(width) / f64::from(height);
        let (cw, ch) = if in_ratio < r0 {
            (
                width,
                ((f64::from(width) / r0).round() as u32).clamp(1, height),
            )
        } else if in_ratio > r1 {
            (
                ((f64::from(height) * r1).round() as u32).clamp(1, width),
                height,
            )
        } else {
            (width, height)
        };
        ((width - cw) / 2, (height - ch) / 2, cw, ch)
    }

    /// Uniform in `[0, 1)`; always one 64-bit draw.
    fn unit(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// True with probability `p`; always consumes one draw (so `p = 0` and
    /// `p = 1` keep the stream aligned with other probabilities).
    fn coin(&mut self, p: f32) -> bool {
        self.unit() < f64::from(p)
    }

    /// The jitter factors and their random order (torchvision's `get_params`).
    fn sample_jitter(&mut self) -> [Jitter; 4] {
        let mut order = [0usize, 1, 2, 3];
        for i in (1..order.len()).rev() {
            let j = self.rng.random_range(0..=i);
            order.swap(i, j);
        }
        let c = &self.config;
        let (b, ct, s, hue) = (c.brightness, c.contrast, c.saturation, c.hue);
        let mut factor = |strength: f32| {
            let lo = (1.0 - strength).max(0.0);
            let hi = 1.0 + strength;
            lo + (hi - lo) * self.rng.random::<f64>() as f32
        };
        let fb = factor(b);
        let fc = factor(ct);
        let fs = factor(s);
        let fh = -hue + 2.0 * hue * self.rng.random::<f64>() as f32;
        let ops = [
            Jitter::Brightness(fb),
            Jitter::Contrast(fc),
            Jitter::Saturation(fs),
            Jitter::Hue(fh),
        ];
        order.map(|i| ops[i])
    }
}

/// ITU-R 601 luma, as torchvision's `rgb_to_grayscale` and PIL's `L` mode.
fn luma(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

fn to_u8(x: f32) -> u8 {
    (x * 255.0).round().clamp(0.0, 255.0) as u8
}

/// Applies the jitter ops in order on `[0, 1]` floats, clamping after each.
fn color_jitter(img: &mut RgbImage, ops: &[Jitter]) {
    let mut px: Vec<[f32; 3]> = img
        .pixels()
        .map(|p| p.0.map(|c| f32::from(c) / 255.0))
        .collect();
    for op in ops {
        match *op {
            Jitter::Brightness(f) => {
                for p in &mut px {
                    *p = p.map(|c| (c * f).clamp(0.0, 1.0));
                }
            }
            Jitter::Contrast(f) => {
                // torchvision: mean of the grayscale image (over all pixels).
                let mean = (px.iter().map(|&p| f64::from(luma(p))).sum::<f64>()
                    / px.len().max(1) as f64) as f32;
                for p in &mut px {
                    *p = p.map(|c| (f * c + (1.0 - f) * mean).clamp(0.0, 1.0));
                }
            }
            Jitter::Saturation(f) => {
                for p in &mut px {
                    let g = luma(*p);
                    *p = p.map(|c| (f * c + (1.0 - f) * g).clamp(0.0, 1.0));
                }
            }
            Jitter::Hue(shift) => {
                if shift != 0.0 {
                    for p in &mut px {
                        let (h, s, v) = rgb_to_hsv(*p);
                        *p = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
                    }
                }
            }
        }
    }
    for (dst, p) in img.pixels_mut().zip(px) {
        *dst = Rgb(p.map(to_u8));
    }
}

/// In-place grayscale, the luma copied to all three channels.
fn to_grayscale(img: &mut RgbImage) {
    for p in img.pixels_mut() {
        let y = luma(p.0.map(f32::from)).round().clamp(0.0, 255.0) as u8;
        *p = Rgb([y, y, y]);
    }
}

/// RGB in `[0, 1]` to HSV with hue in turns `[0, 1)`.
fn rgb_to_hsv([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let v = max;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    if delta <= 0.0 {
        return (0.0, s, v);
    }
    let h = if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    };
    ((h / 6.0).rem_euclid(1.0), s, v)
}

/// HSV (hue in turns) back to RGB in `[0, 1]`.
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * f);
    let t = v * (1.0 - s * (1.0 - f));
    match (i as i32).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip() {
        for &p in &[
            [0.2f32, 0.5, 0.9],
            [1.0, 0.0, 0.0],
            [0.3, 0.3, 0.3],
            [0.9, 0.8, 0.1],
            [0.0, 0.0, 0.0],
        ] {
            let (h, s, v) = rgb_to_hsv(p);
            let q = hsv_to_rgb(h, s, v);
            for c in 0..3 {
                assert!((p[c] - q[c]).abs() < 1e-5, "{p:?} -> {q:?}");
            }
        }
    }
}
