//! Linear-probe and k-NN head JSON → load; a head that loads must predict on
//! inputs of its width without panicking (its invariants were checked at load).
#![no_main]

#[path = "common.rs"]
mod common;

use edgeclr::probe::{KnnHead, LinearProbe};
use libfuzzer_sys::fuzz_target;
use ndarray::Array2;

fn queries(dim: usize) -> Option<Array2<f32>> {
    (dim <= 4096).then(|| Array2::from_shape_fn((3, dim), |(r, c)| ((r * 7 + c) % 5) as f32 - 2.0))
}

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("head.json", data);
    if let Ok(probe) = LinearProbe::load(&path) {
        if let Some(x) = queries(probe.dim()) {
            let _ = probe.predict_proba(x.view());
            let _ = probe.predict(x.view());
        }
    }
    if let Ok(head) = KnnHead::load(&path) {
        if let Some(x) = queries(head.dim()) {
            let _ = head.predict(x.view());
        }
    }
});
