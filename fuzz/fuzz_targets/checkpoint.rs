//! Checkpoint bytes → Checkpoint::load (safetensors header, metadata, f32
//! tensors); a loaded checkpoint must save and load back equal.
#![no_main]

#[path = "common.rs"]
mod common;

use edgeclr::adapt::checkpoint::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("checkpoint.safetensors", data);
    let Ok(ckpt) = Checkpoint::load(&path) else {
        return;
    };
    let again = common::scratch("again.safetensors", b"");
    match ckpt.save(&again) {
        Ok(()) => {
            let back = Checkpoint::load(&again).expect("a saved checkpoint loads");
            assert_eq!(back.step, ckpt.step);
            assert_eq!(back.tensors.len(), ckpt.tensors.len());
        }
        Err(edgeclr::adapt::checkpoint::CheckpointError::NonFinite(_)) => {}
        Err(e) => panic!("a loaded checkpoint fails to save: {e}"),
    }
});
