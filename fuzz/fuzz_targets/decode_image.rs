//! Image bytes → decode (with limits) → preprocessing into a model's tensor.
//! The first byte picks the resize filter and whether to resize, so all of
//! preprocess/resample.rs is reached.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use edgeclr::data::{decode_image_bytes, DecodeLimits};
use edgeclr::{Manifest, Preprocessor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knob, bytes)) = data.split_first() else {
        return;
    };
    // A smaller pixel limit than the default keeps each run fast; the limit
    // logic is the same.
    let limits = DecodeLimits {
        max_pixels: 1 << 20,
        max_alloc: 64 << 20,
    };
    let Ok(image) = decode_image_bytes(bytes, Path::new("fuzz"), limits) else {
        return;
    };
    let filter = ["nearest", "bilinear", "bicubic"][usize::from(knob % 3)];
    let resize = match knob / 3 % 3 {
        0 => None,
        1 => Some(8),
        _ => Some(13),
    };
    let manifest = Manifest::from_toml(&common::tiny_manifest(filter, resize, &"0".repeat(64)))
        .expect("the fixed manifest is valid");
    let batch = Preprocessor::new(&manifest)
        .batch(std::slice::from_ref(&image))
        .expect("any decoded image preprocesses");
    assert_eq!(batch.shape(), &[1, 3, 8, 8]);
    assert!(batch.iter().all(|v| v.is_finite()));
});
