//! IDX bytes (plain, or gzipped when the first byte is odd) → read_idx, then
//! as an images file: open the dataset and decode every image.
#![no_main]

#[path = "common.rs"]
mod common;

use edgeclr::data::{read_idx, IdxDataset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knob, bytes)) = data.split_first() else {
        return;
    };
    let name = if knob & 1 == 1 {
        "fuzz-images-idx3-ubyte.gz"
    } else {
        "fuzz-images-idx3-ubyte"
    };
    let path = common::scratch(name, bytes);
    let _ = read_idx(&path);
    if let Ok(set) = IdxDataset::open(&path) {
        for i in 0..set.len().min(64) {
            set.image(i)
                .expect("an opened IDX set decodes every index below len()");
        }
    }
});
