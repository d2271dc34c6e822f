//! Block outputs found from the graph's structure (`edgeclr::blocks`) on the
//! two real encoders: the names their exporters gave the block outputs must
//! come out, in order, and nothing from inside a block.

use edgeclr::blocks::block_outputs;
use edgeclr::onnx::parse_proto;
use edgeclr::Manifest;

use crate::common::repo;

fn blocks_of(manifest: &Manifest) -> Vec<String> {
    let bytes = std::fs::read(&manifest.onnx).expect("model file");
    let proto = parse_proto(&manifest.onnx, &bytes).expect("ONNX");
    block_outputs(
        proto.graph.as_ref().expect("graph"),
        &manifest.outputs.embedding,
    )
}

#[test]
fn mobilenet_v2_blocks_are_its_features() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let found = blocks_of(&manifest);
    // torchvision's features.1 .. features.18: every inverted-residual
    // block (residual or not) and the last 1x1 conv + ReLU6.
    let want: Vec<String> = (1..=18).map(|i| format!("features.{i}")).collect();
    assert_eq!(found, want);
    // Up to an intermediate tap: only the blocks before it.
    assert_eq!(
        block_outputs(
            parse_proto(&manifest.onnx, &std::fs::read(&manifest.onnx).unwrap())
                .unwrap()
                .graph
                .as_ref()
                .unwrap(),
            "features.13"
        ),
        want[..12]
    );
}

#[test]
fn efficientnet_lite0_blocks_are_found_without_names() {
    let manifest = Manifest::load(&repo("models/efficientnet_lite0")).unwrap();
    if !manifest.onnx.is_file() {
        assert!(
            std::env::var("EDGECLR_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{} is missing (ci/setup makes it)",
            manifest.onnx.display()
        );
        eprintln!("SKIPPED: blocks::efficientnet_lite0: no model file");
        return;
    }
    // The export names the MBConv blocks `blocks.N` and the last conv +
    // ReLU6 `head`; the structure alone finds exactly those.
    let mut want: Vec<String> = (0..=15).map(|i| format!("blocks.{i}")).collect();
    want.push("head".into());
    assert_eq!(blocks_of(&manifest), want);
}
