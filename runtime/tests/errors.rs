//! Bad input gets a clear, typed error; nothing panics. The broken files are
//! made by runtime/tests/reference/make_bad_inputs.py.

use crate::common::{repo, test_data};
use edgeclr::data::{decode_image, DataError, Dataset, DecodeLimits};
use edgeclr::embed::{embed_dataset, EmbedOptions};
use edgeclr::manifest::ManifestError;
use edgeclr::store::{EmbeddingSet, StoreError};
use edgeclr::{Encoder, Error, LoadOptions, Manifest, ModelError, TractEncoder};
use ndarray::Array4;

fn bad(name: &str) -> std::path::PathBuf {
    test_data(&format!("bad/{name}"))
}

fn load(manifest: &str) -> Result<TractEncoder, ModelError> {
    TractEncoder::load(
        &Manifest::load(&bad(manifest)).unwrap(),
        &LoadOptions::default(),
    )
}

#[test]
fn tiny_control_model_runs() {
    let mut enc = load("tiny.toml").unwrap();
    let out = enc.run(Array4::<f32>::ones((2, 3, 8, 8)).view()).unwrap();
    assert_eq!(out.embedding.dim(), (2, 3));
    assert!(out.embedding.iter().all(|&v| (v - 1.0).abs() < 1e-6));
}

#[test]
fn wrong_checksum_is_refused() {
    let err = load("wrong_sha.toml").unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("sha256"));
}

#[test]
fn shape_mismatch_with_manifest_is_refused() {
    let err = load("wrong_shape.toml").unwrap_err();
    assert!(matches!(err, ModelError::ManifestMismatch(_)), "{err}");
}

#[test]
fn unsupported_operator_is_named() {
    let err = load("unsupported_op.toml").unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedOps(_)), "{err}");
    assert!(err.to_string().contains("FancyPool"), "{err}");
}

#[test]
fn file_that_is_not_onnx_is_refused() {
    let err = load("not_onnx.toml").unwrap_err();
    assert!(matches!(err, ModelError::NotOnnx { .. }), "{err}");
}

#[test]
fn manifest_with_wrong_types_is_a_parse_error() {
    let err = Manifest::load(&bad("wrong_types.toml")).unwrap_err();
    assert!(matches!(err, ManifestError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("embedding_dim"), "{err}");
}

#[test]
fn missing_manifest_is_reported() {
    let err = Manifest::load(&bad("nothing-here")).unwrap_err();
    assert!(matches!(err, ManifestError::NotFound(_)), "{err}");
}

#[test]
fn wrong_input_batch_shape_is_an_error() {
    let mut enc = load("tiny.toml").unwrap();
    let err = enc
        .run(Array4::<f32>::zeros((1, 3, 9, 8)).view())
        .unwrap_err();
    assert!(matches!(err, ModelError::InputShape { .. }), "{err}");
    let err = enc
        .run(Array4::<f32>::zeros((0, 3, 8, 8)).view())
        .unwrap_err();
    assert!(matches!(err, ModelError::InputShape { .. }), "{err}");
}

#[test]
fn corrupt_images_are_decode_errors() {
    for name in ["truncated.png", "empty.png", "text.png"] {
        let err = decode_image(&bad(name), DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DataError::Decode { .. }), "{name}: {err}");
    }
}

#[test]
fn oversized_image_is_refused_before_decoding() {
    let limits = DecodeLimits {
        max_pixels: 1000,
        ..DecodeLimits::default()
    };
    let err = decode_image(&repo("data/photos/chelsea.png"), limits).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooLarge {
                width: 451,
                height: 300,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn idx_with_wrong_magic_or_truncated_data_is_refused() {
    for name in [
        "wrong_magic-images-idx3-ubyte",
        "truncated-images-idx3-ubyte",
    ] {
        let err = Dataset::open(&bad(name), None).unwrap_err();
        assert!(matches!(err, DataError::BadIdx { .. }), "{name}: {err}");
    }
}

#[test]
fn empty_folder_and_missing_path_are_reported() {
    let dir = std::env::temp_dir().join(format!("edgeclr-empty-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    assert!(matches!(
        Dataset::open(&dir, None).unwrap_err(),
        DataError::Empty(_)
    ));
    assert!(matches!(
        Dataset::open(&dir.join("nope"), None).unwrap_err(),
        DataError::Missing(_)
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A folder with one good and three corrupt images: skipped and counted by
/// default, fatal with `strict`.
#[test]
fn corrupt_images_in_a_folder_are_skipped_or_fatal() {
    let dir = std::env::temp_dir().join(format!("edgeclr-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo("data/fashion-folder/Bag/000.png"),
        dir.join("a_good.png"),
    )
    .unwrap();
    for name in ["truncated.png", "empty.png", "text.png"] {
        std::fs::copy(bad(name), dir.join(name)).unwrap();
    }
    let data = Dataset::open(&dir, None).unwrap();
    let mut enc = load("tiny.toml").unwrap();
    let out = embed_dataset(&mut enc, &data, &EmbedOptions::default(), |_| {}).unwrap();
    assert_eq!(out.embeddings.nrows(), 1);
    assert_eq!(out.skipped.len(), 3);
    assert_eq!(out.indices, vec![0]);
    let strict = EmbedOptions {
        strict: true,
        ..EmbedOptions::default()
    };
    let err = embed_dataset(&mut enc, &data, &strict, |_| {}).unwrap_err();
    assert!(
        matches!(err, Error::Data(DataError::Decode { .. })),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mismatched_embedding_and_label_counts_are_refused() {
    let err = EmbeddingSet::load(&bad("emb_mismatch.npy")).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::CountMismatch {
                embeddings: 4,
                labels: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn nan_embeddings_are_refused() {
    let err = EmbeddingSet::load(&bad("emb_nan.npy")).unwrap_err();
    assert!(matches!(err, StoreError::NonFinite { row: 0, .. }), "{err}");
}
