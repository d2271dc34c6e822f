//! Embeddings as one safetensors file: `embeddings` (f32 `[n, d]`), `indices`
//! (i64 `[n]`, dataset index of each row) and `labels` (i64 `[n]`, when
//! labelled), with the metadata as the file's string map. One file instead of
//! three, memory-mappable, and read by `safetensors` in Python and Rust alike.

use std::collections::HashMap;
use std::io::Write;

use safetensors::tensor::{Dtype, TensorView};

use super::{EmbeddingSet, Rows, StoreError};

pub(super) fn write(
    path: &std::path::Path,
    set: &EmbeddingSet,
    rows: &Rows,
    metadata: Vec<(String, String)>,
) -> Result<(), StoreError> {
    let fail = |message: String| StoreError::Meta {
        path: path.to_path_buf(),
        message,
    };
    let (n, d) = set.embeddings.dim();
    let floats: Vec<u8> = set
        .embeddings
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let ints = |v: &mut dyn Iterator<Item = usize>| -> Vec<u8> {
        v.flat_map(|i| (i as i64).to_le_bytes()).collect()
    };
    let indices = ints(&mut rows.indices.iter().copied());
    let labels = set.labels.as_ref().map(|l| ints(&mut l.iter().copied()));
    let view_err = |e: safetensors::SafeTensorError| fail(format!("safetensors: {e}"));
    let mut tensors = vec![
        (
            "embeddings",
            TensorView::new(Dtype::F32, vec![n, d], &floats).map_err(view_err)?,
        ),
        (
            "indices",
            TensorView::new(Dtype::I64, vec![n], &indices).map_err(view_err)?,
        ),
    ];
    if let Some(labels) = &labels {
        tensors.push((
            "labels",
            TensorView::new(Dtype::I64, vec![n], labels).map_err(view_err)?,
        ));
    }
    let bytes = safetensors::tensor::serialize(tensors, Some(HashMap::from_iter(metadata)))
        .map_err(|e| fail(format!("safetensors: {e}")))?;
    super::write_atomic(path, |f| f.write_all(&bytes))
}
