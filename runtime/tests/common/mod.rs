//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use ndarray::{ArrayD, ArrayView, Dimension};
use ndarray_npy::ReadNpyExt;

/// Path relative to the repository root.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Path inside runtime/tests/data.
pub fn test_data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub fn read_npy_f32(name: &str) -> ArrayD<f32> {
    let file = std::fs::File::open(test_data(name)).expect("reference file");
    ArrayD::<f32>::read_npy(file).expect("f32 npy")
}

/// The preprocessed coffee photo (`tests/data/preprocess_coffee.npy`) as a
/// batch of one, `[1, 3, 224, 224]`.
pub fn coffee() -> ndarray::Array4<f32> {
    read_npy_f32("preprocess_coffee.npy")
        .into_dimensionality::<ndarray::Ix3>()
        .unwrap()
        .insert_axis(ndarray::Axis(0))
}

/// Largest absolute element-wise difference.
pub fn max_abs_diff<D: Dimension, E: Dimension>(a: ArrayView<f32, D>, b: ArrayView<f32, E>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
