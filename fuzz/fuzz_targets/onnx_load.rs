//! ONNX bytes → protobuf parse and summary (`edgeclr info`), then the full
//! tract load a model goes through (sha256 check, manifest check, operator
//! check, typing, optimisation, planning) against the tiny test manifest.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;

use edgeclr::inspect::OnnxSummary;
use edgeclr::onnx::{parse_proto, sha256_hex};
use edgeclr::{LoadOptions, Manifest, TractEncoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = parse_proto(Path::new("fuzz.onnx"), data) else {
        return;
    };
    let _ = OnnxSummary::from_proto(&proto).to_string();
    let onnx = common::scratch("tiny.onnx", data);
    let mut manifest =
        Manifest::from_toml(&common::tiny_manifest("bilinear", None, &sha256_hex(data)))
            .expect("the fixed manifest is valid");
    manifest.onnx = onnx;
    let _ = TractEncoder::load(&manifest, &LoadOptions::default());
});
