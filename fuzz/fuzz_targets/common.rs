//! Shared by the fuzz targets: the APIs under test read files, so each input
//! is written to a per-process scratch file (in /dev/shm when it exists, so
//! no disk traffic) and the path handed over.

#![allow(dead_code)]

use std::path::PathBuf;

/// Writes `bytes` to this process's scratch file named `name` and returns its path.
pub fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::path::Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = dir.join(format!("edgeclr-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

/// The tiny test encoder's manifest (8x8 NCHW input, 3-d embedding), with
/// the filter and resize chosen by the fuzzer.
pub fn tiny_manifest(filter: &str, resize: Option<u32>, sha: &str) -> String {
    let resize = resize.map_or(String::new(), |r| format!("resize_short_side = {r}\n"));
    format!(
        r#"name = "tiny"
onnx = "tiny.onnx"
sha256 = "{sha}"
licence = "CC0-1.0"
source = "fuzz"

[input]
name = "input"
shape = [3, 8, 8]
layout = "nchw"
channels = "rgb"

[preprocess]
{resize}filter = "{filter}"
crop = [8, 8]
scale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]

[outputs]
embedding = "embedding"
embedding_dim = 3
"#
    )
}
