//! Camera pixel formats to RGB: packed YUYV (4:2:2) by hand, MJPEG through
//! the `image` crate's JPEG decoder. Kept apart from the V4L2 code so it is
//! tested on known frames without a camera.

use std::path::Path;

use image::RgbImage;

use super::SourceError;
use edgeclr::data::{decode_image_bytes, DecodeLimits};

fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// One BT.601 limited-range ("video range", what UVC webcams send) YCbCr
/// sample to RGB, in the usual 8-bit fixed-point form.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let d = i32::from(cb) - 128;
    let e = i32::from(cr) - 128;
    [
        clamp_u8((c + 409 * e + 128) >> 8),
        clamp_u8((c - 100 * d - 208 * e + 128) >> 8),
        clamp_u8((c + 516 * d + 128) >> 8),
    ]
}

/// Converts a packed YUYV frame (`Y0 U Y1 V` per pixel pair) to RGB.
/// `stride` is the bytes per line the driver reports (at least `2 * width`).
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage, SourceError> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || w % 2 != 0 {
        return Err(SourceError::Format(format!(
            "YUYV frame must have a positive, even width (got {width}x{height})"
        )));
    }
    if stride < 2 * w {
        return Err(SourceError::Format(format!(
            "YUYV stride {stride} is below 2 x width ({})",
            2 * w
        )));
    }
    let needed = stride * (h - 1) + 2 * w;
    if data.len() < needed {
        return Err(SourceError::Format(format!(
            "YUYV frame {width}x{height} needs {needed} bytes, got {}",
            data.len()
        )));
    }
    let mut out = RgbImage::new(width, height);
    for (row, line) in out.chunks_exact_mut(3 * w).enumerate() {
        let src = &data[row * stride..row * stride + 2 * w];
        for (pair, px) in src.chunks_exact(4).zip(line.chunks_exact_mut(6)) {
            let [y0, u, y1, v] = [pair[0], pair[1], pair[2], pair[3]];
            px[..3].copy_from_slice(&ycbcr_to_rgb(y0, u, v));
            px[3..].copy_from_slice(&ycbcr_to_rgb(y1, u, v));
        }
    }
    Ok(out)
}

/// Decodes one MJPEG frame. UVC cameras may leave out the Huffman tables
/// (DHT); the decoder then uses the standard ones, as the MJPEG spec says.
pub fn decode_mjpeg(data: &[u8]) -> Result<RgbImage, SourceError> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(SourceError::Format(
            "MJPEG frame does not start with a JPEG SOI marker".into(),
        ));
    }
    decode_image_bytes(data, Path::new("<mjpeg frame>"), DecodeLimits::default())
        .map_err(|e| SourceError::Format(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference colours in BT.601 limited range, e.g. from ITU-R BT.601's
    /// colour-bar values (75% bars scaled to 100%).
    const KNOWN: &[([u8; 3], [u8; 3])] = &[
        ([16, 128, 128], [0, 0, 0]),
        ([235, 128, 128], [255, 255, 255]),
        ([126, 128, 128], [128, 128, 128]),
        ([81, 90, 240], [255, 0, 0]),
        ([145, 54, 34], [0, 255, 0]),
        ([41, 240, 110], [0, 0, 255]),
    ];

    #[test]
    fn known_colours_convert_within_one_level() {
        for &(ycc, rgb) in KNOWN {
            let got = ycbcr_to_rgb(ycc[0], ycc[1], ycc[2]);
            for c in 0..3 {
                assert!(
                    (i32::from(got[c]) - i32::from(rgb[c])).abs() <= 1,
                    "{ycc:?} -> {got:?}, expected {rgb:?}"
                );
            }
        }
    }

    #[test]
    fn yuyv_frame_with_padding_converts_pixel_by_pixel() {
        // 4x2 frame, stride 10 (2 padding bytes per line): line 0 is black |
        // white pairs, line 1 red | blue.
        #[rustfmt::skip]
        let data = [
            16, 128, 16, 128, 235, 128, 235, 128, 0xAA, 0xAA,
            81, 90, 81, 240, 41, 240, 41, 110, 0xAA, 0xAA,
        ];
        let img = yuyv_to_rgb(&data, 4, 2, 10).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(2, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(3, 0).0, [255, 255, 255]);
        let red = img.get_pixel(1, 1).0;
        assert!(red[0] >= 254 && red[1] <= 1 && red[2] <= 1, "{red:?}");
        let blue = img.get_pixel(3, 1).0;
        assert!(blue[2] >= 254 && blue[0] <= 1 && blue[1] <= 1, "{blue:?}");
    }

    #[test]
    fn bad_yuyv_frames_are_errors_not_panics() {
        assert!(yuyv_to_rgb(&[0; 8], 3, 1, 6).is_err());
        assert!(yuyv_to_rgb(&[0; 8], 4, 2, 8).is_err());
        assert!(yuyv_to_rgb(&[0; 16], 4, 2, 6).is_err());
        assert!(yuyv_to_rgb(&[], 0, 0, 0).is_err());
    }

    #[test]
    fn mjpeg_frame_decodes_to_the_encoded_colours() {
        let mut src = RgbImage::new(32, 16);
        for (x, _, p) in src.enumerate_pixels_mut() {
            p.0 = if x < 16 { [200, 30, 30] } else { [20, 40, 220] };
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&src)
            .unwrap();
        let out = decode_mjpeg(&jpeg).unwrap();
        assert_eq!(out.dimensions(), (32, 16));
        for (x, y) in [(4, 8), (28, 8)] {
            let (a, b) = (out.get_pixel(x, y).0, src.get_pixel(x, y).0);
            for c in 0..3 {
                assert!(
                    (i32::from(a[c]) - i32::from(b[c])).abs() <= 8,
                    "{a:?} vs {b:?}"
                );
            }
        }
        assert!(decode_mjpeg(&[0xFF, 0xD8, 0xFF, 0xE0, 1, 2]).is_err());
        assert!(decode_mjpeg(b"not a jpeg").is_err());
    }
}
