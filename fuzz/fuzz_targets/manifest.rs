//! Manifest TOML text → parse and validate; a manifest that validates must
//! also build a preprocessor and print without panicking.
#![no_main]

use edgeclr::{Manifest, Preprocessor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::from_toml(text) else {
        return;
    };
    let _ = manifest.to_string();
    let pre = Preprocessor::new(&manifest);
    // Preprocess one small image when the crop is small enough to be cheap.
    let (h, w) = manifest.input_hw();
    if h * w <= 64 * 64
        && manifest
            .preprocess
            .resize_short_side
            .is_none_or(|s| s <= 256)
    {
        let image = image::RgbImage::from_pixel(5, 7, image::Rgb([10, 200, 30]));
        let _ = pre.batch(&[image]);
    }
});
