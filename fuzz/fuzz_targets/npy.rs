//! Embedding `.npy` bytes → EmbeddingSet::load (what `edgeclr probe`/`knn`
//! read), with a labels file beside it when the first byte says so.
#![no_main]

#[path = "common.rs"]
mod common;

use edgeclr::store::EmbeddingSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knob, bytes)) = data.split_first() else {
        return;
    };
    let npy = common::scratch("emb.npy", bytes);
    let labels = npy.with_extension("labels.npy");
    if knob & 1 == 1 {
        // The same bytes as labels: exercises the i64 reader and count checks.
        let _ = std::fs::write(&labels, bytes);
    } else {
        let _ = std::fs::remove_file(&labels);
    }
    if let Ok(set) = EmbeddingSet::load(&npy) {
        assert!(set.embeddings.iter().all(|v| v.is_finite()));
        if let Some(l) = &set.labels {
            assert_eq!(l.len(), set.embeddings.nrows());
        }
    }
});
