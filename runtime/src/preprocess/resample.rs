//! Pillow's resampling, reproduced exactly.
//!
//! The shipped encoders were evaluated on images resized by PIL (torchvision's
//! `Resize` on PIL images). Pillow resizes separably — a horizontal pass, then
//! a vertical one — with fixed-point weights (22 fractional bits) and rounds
//! to 8 bits after each pass. General-purpose resizers (including SIMD ones)
//! choose other weight precisions or pass orders and land one grey level away
//! on some pixels, which is 0.017 after ImageNet normalisation. This module
//! follows `libImaging/Resample.c` step by step so the result is PIL's to the
//! bit; it is small, and its cost is negligible next to the encoder.

use image::RgbImage;

/// Fractional bits of the fixed-point weights (`32 - 8 - 2` in Pillow).
const PRECISION_BITS: u32 = 22;

/// A separable resampling kernel, as Pillow defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Triangle filter, support 1 (PIL `BILINEAR`).
    Bilinear,
    /// Keys cubic with a = −0.5, support 2 (PIL `BICUBIC`).
    Bicubic,
}

impl Kernel {
    fn support(self) -> f64 {
        match self {
            Kernel::Bilinear => 1.0,
            Kernel::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Kernel::Bilinear if x < 1.0 => 1.0 - x,
            Kernel::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

/// For each output index: the first input index, and the fixed-point weights
/// of the inputs it reads from there on.
struct Coefficients {
    taps: Vec<(usize, Vec<i32>)>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing
    /// `in_size` samples to `out_size`.
    fn new(in_size: usize, out_size: usize, kernel: Kernel) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = kernel.support() * filter_scale;
        let taps = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                let xmin = ((center - support + 0.5) as isize).max(0) as usize;
                let xmax = ((center + support + 0.5) as isize)
                    .min(in_size as isize)
                    .max(xmin as isize) as usize;
                let weights: Vec<f64> = (xmin..xmax)
                    .map(|x| kernel.weight((x as f64 - center + 0.5) / filter_scale))
                    .collect();
                let total: f64 = weights.iter().sum();
                let fixed = weights
                    .iter()
                    .map(|&w| {
                        let w = if total != 0.0 { w / total } else { w };
                        let scaled = w * f64::from(1u32 << PRECISION_BITS);
                        // C's (int) truncates toward zero after the ±0.5.
                        (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                    })
                    .collect();
                (xmin, fixed)
            })
            .collect();
        Self { taps }
    }
}

/// Rounds a fixed-point accumulator to 8 bits, clamping as Pillow's `clip8`.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

fn horizontal(src: &RgbImage, out_w: u32, kernel: Kernel) -> RgbImage {
    let (w, h) = src.dimensions();
    let coeffs = Coefficients::new(w as usize, out_w as usize, kernel);
    let raw = src.as_raw();
    let mut out = Vec::with_capacity(out_w as usize * h as usize * 3);
    for y in 0..h as usize {
        let row = &raw[y * w as usize * 3..(y + 1) * w as usize * 3];
        for (xmin, weights) in &coeffs.taps {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &k) in weights.iter().enumerate() {
                let px = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                for c in 0..3 {
                    acc[c] += i32::from(px[c]) * k;
                }
            }
            out.extend(acc.map(clip8));
        }
    }
    RgbImage::from_raw(out_w, h, out).expect("buffer sized for out_w x h")
}

fn vertical(src: &RgbImage, out_h: u32, kernel: Kernel) -> RgbImage {
    let (w, h) = src.dimensions();
    let coeffs = Coefficients::new(h as usize, out_h as usize, kernel);
    let raw = src.as_raw();
    let stride = w as usize * 3;
    let mut out = Vec::with_capacity(stride * out_h as usize);
    for (ymin, weights) in &coeffs.taps {
        for x in 0..stride {
            let mut acc = 1i32 << (PRECISION_BITS - 1);
            for (i, &k) in weights.iter().enumerate() {
                acc += i32::from(raw[(ymin + i) * stride + x]) * k;
            }
            out.push(clip8(acc));
        }
    }
    RgbImage::from_raw(w, out_h, out).expect("buffer sized for w x out_h")
}

/// Resizes like `PIL.Image.resize((w, h), BILINEAR | BICUBIC)`: horizontal
/// pass first (when the width changes), then vertical (when the height does).
pub fn resize(image: &RgbImage, w: u32, h: u32, kernel: Kernel) -> RgbImage {
    let mut out = if image.width() != w {
        horizontal(image, w, kernel)
    } else {
        image.clone()
    };
    if out.height() != h {
        out = vertical(&out, h, kernel);
    }
    out
}

/// Like `PIL.Image.resize((w, h), NEAREST)`: each output pixel takes the
/// input pixel under its centre.
pub fn resize_nearest(image: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = image.dimensions();
    let pick = |o: u32, out: u32, inp: u32| -> u32 {
        (((o as f64 + 0.5) * inp as f64 / out as f64) as u32).min(inp - 1)
    };
    RgbImage::from_fn(w, h, |x, y| {
        *image.get_pixel(pick(x, w, iw), pick(y, h, ih))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(28, 256), (600, 384), (451, 384), (7, 3)] {
            for kernel in [Kernel::Bilinear, Kernel::Bicubic] {
                for (_, w) in Coefficients::new(i, o, kernel).taps {
                    let sum: i64 = w.iter().map(|&v| i64::from(v)).sum();
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                        "{i}->{o} {kernel:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        for kernel in [Kernel::Bilinear, Kernel::Bicubic] {
            let out = resize(&img, 100, 9, kernel);
            assert_eq!(out.dimensions(), (100, 9));
            assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
        }
    }
}
