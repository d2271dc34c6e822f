//! The engine against PyTorch autograd: MobileNetV2 from the cut tensor
//! `features.14` to `embedding` (blocks features.15–17, the 1×1 conv
//! features.18, ReLU6, pooling, flatten) at 112 px (cut `[160, 4, 4]`),
//! forward and the gradient of `sum(y · g)` w.r.t. every initialiser in the
//! scope, against `tests/reference/nn_torch_ref.py` (torch, float64,
//! rebuilt from the ONNX nodes alone; files in `tests/data/nn_torch/`).
//! Once through the engine itself ([`edgeclr::adapt::nn::import`]), once
//! through the tail API ([`edgeclr::adapt::tail`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::common::{max_abs_diff, read_npy_f32, repo, test_data};
use edgeclr::adapt::nn::{self, ParamKind};
use edgeclr::adapt::tail::{self, ParamScope, TailChoice, TailSpec, TAIL_PREFIX};
use edgeclr::onnx::parse_proto;
use edgeclr::Manifest;
use ndarray::{ArrayD, Axis, Ix2, Slice};
use serde::Deserialize;

const DIR: &str = "nn_torch";
const CUT: &str = "features.14";
const CUT_SHAPE: [usize; 3] = [160, 4, 4];
/// Forward: absolute.
const Y_TOL: f32 = 1e-4;
/// Gradients: `REL_TOL · (1 + max |ref|)`.
const REL_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct FileEntry {
    kind: String,
    init: Option<String>,
    shape: Vec<usize>,
    param_shape: Option<Vec<usize>>,
}

#[derive(Deserialize)]
struct Index {
    cut: String,
    output: String,
    cut_shape: Vec<usize>,
    /// Every initialiser the torch rebuild differentiates, in graph order.
    params: Vec<String>,
    files: BTreeMap<String, FileEntry>,
}

fn index() -> Index {
    let text = std::fs::read_to_string(test_data(&format!("{DIR}/index.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn npy(name: &str) -> ArrayD<f32> {
    read_npy_f32(&format!("{DIR}/{name}"))
}

fn manifest() -> Manifest {
    Manifest::load(&repo("models/mobilenet_v2")).unwrap()
}

fn proto(manifest: &Manifest) -> tract_onnx::pb::ModelProto {
    parse_proto(&manifest.onnx, &std::fs::read(&manifest.onnx).unwrap()).unwrap()
}

/// What the reference file of `kind` holds of a full gradient.
fn summary(kind: &str, grad: &ArrayD<f32>) -> ArrayD<f32> {
    match kind {
        "grad" => grad.clone(),
        "gradsum0" => grad.sum_axis(Axis(0)),
        "gradhead4" => grad.slice_axis(Axis(0), Slice::from(0..4)).to_owned(),
        other => panic!("unknown reference kind '{other}'"),
    }
}

/// Compares every gradient reference file against `grads` (by initialiser
/// name), requiring one gradient per reference parameter and no other.
/// Returns the worst `max |d| / (1 + max |ref|)` and where it was.
fn check_grads(index: &Index, grads: &BTreeMap<String, ArrayD<f32>>, what: &str) -> (f32, String) {
    let want: BTreeSet<&str> = index.params.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = grads.keys().map(String::as_str).collect();
    assert_eq!(got, want, "{what}: parameters with a gradient");
    let mut worst = (0.0f32, String::new());
    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    for (file, entry) in &index.files {
        let Some(init) = entry.init.as_deref() else {
            continue;
        };
        covered.insert(init);
        let grad = &grads[init];
        assert_eq!(
            Some(grad.shape()),
            entry.param_shape.as_deref(),
            "{what}: shape of the gradient of '{init}'"
        );
        let reference = npy(file);
        assert_eq!(reference.shape(), entry.shape.as_slice(), "{file}");
        let ours = summary(&entry.kind, grad);
        let scale = 1.0 + reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(ours.view(), reference.view());
        assert!(err.is_finite(), "{what}: {file}: non-finite gradient");
        let rel = err / scale;
        println!("{what}: {file}: max|d| = {err:.3e}, scale {scale:.3}, rel {rel:.3e}");
        if rel > worst.0 {
            worst = (rel, file.clone());
        }
        if rel > REL_TOL {
            failures.push(format!("{file}: max|d| {err:.3e} > {REL_TOL} · {scale:.3}"));
        }
    }
    assert_eq!(
        covered, want,
        "{what}: every parameter has a reference file"
    );
    assert!(
        failures.is_empty(),
        "{what}: gradients differ from torch:\n{}",
        failures.join("\n")
    );
    worst
}

#[test]
fn engine_matches_torch_autograd_on_the_last_blocks() {
    let index = index();
    assert_eq!(
        (index.cut.as_str(), index.output.as_str()),
        (CUT, "embedding")
    );
    assert_eq!(index.cut_shape, CUT_SHAPE);
    let manifest = manifest();
    let proto = proto(&manifest);
    let nn::Imported { graph, init } =
        nn::import(proto.graph.as_ref().unwrap(), CUT, &CUT_SHAPE, "embedding").unwrap();
    assert_eq!(graph.input_shape(), CUT_SHAPE);
    assert_eq!(graph.output_shape(), [1280]);

    // The scope: the same initialisers as the torch rebuild, in graph order.
    let names: Vec<&str> = graph.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, index.params, "engine parameters");
    for (spec, value) in graph.params().iter().zip(&init) {
        assert_eq!(value.shape(), spec.shape.as_slice(), "{}", spec.name);
        let kind = if spec.name.ends_with(".weight") {
            ParamKind::Weight
        } else {
            ParamKind::Bias
        };
        assert_eq!(spec.kind, kind, "{}", spec.name);
    }

    let x = npy("x.npy");
    let g = npy("g.npy");
    let y_ref = npy("y.npy");
    let refs: Vec<&ArrayD<f32>> = init.iter().collect();
    let (y, tape) = graph.forward(&refs, x).unwrap();
    let y_err = max_abs_diff(y.view(), y_ref.view());
    println!("engine: y max|d| = {y_err:.3e}");
    assert!(y_err <= Y_TOL, "engine forward differs from torch: {y_err}");

    let n = graph.params().len();
    let grads = graph.backward(&refs, &tape, g, &vec![true; n]).unwrap();
    assert_eq!(grads.len(), n);
    let grads: BTreeMap<String, ArrayD<f32>> = graph
        .params()
        .iter()
        .zip(grads)
        .map(|(spec, grad)| {
            let grad = grad.unwrap_or_else(|| panic!("no gradient for '{}'", spec.name));
            (spec.name.clone(), grad)
        })
        .collect();
    let (worst, file) = check_grads(&index, &grads, "engine");
    println!("engine: worst gradient rel error {worst:.3e} ({file})");
}

#[test]
fn tail_api_matches_torch_autograd_on_blocks_4() {
    let index = index();
    let manifest = manifest();
    // At the manifest's 224 px, blocks:4 cuts at the same tensor.
    let (spec224, _) = tail::load_tail(&manifest, &TailChoice::Blocks(4), ParamScope::All).unwrap();
    assert_eq!(spec224.cut, CUT);
    assert_eq!(spec224.cut_shape, [160, 7, 7]);
    drop(spec224);

    let proto = proto(&manifest);
    let (spec, init) = TailSpec::from_model(
        &proto,
        "embedding",
        &TailChoice::Blocks(4),
        &[3, 112, 112],
        ParamScope::All,
    )
    .unwrap();
    assert_eq!(spec.cut, CUT);
    assert_eq!(spec.cut_shape, CUT_SHAPE);
    assert_eq!((spec.channels, spec.out_dim), (160, 1280));
    let want: Vec<String> = index
        .params
        .iter()
        .map(|p| format!("{TAIL_PREFIX}{p}"))
        .collect();
    assert_eq!(spec.param_names(), want, "trainable tail parameters");

    let x = npy("x.npy");
    let width: usize = CUT_SHAPE.iter().product();
    let rows = x.into_shape_with_order((3, width)).unwrap();
    let g = npy("g.npy").into_dimensionality::<Ix2>().unwrap();
    let y_ref = npy("y.npy");
    let (y, cache) = tail::forward(&spec, &init, rows.view()).unwrap();
    let y_err = max_abs_diff(y.view(), y_ref.view());
    println!("tail: y max|d| = {y_err:.3e}");
    assert!(y_err <= Y_TOL, "tail forward differs from torch: {y_err}");

    let mut grads = init.empty_like();
    tail::backward(&spec, &init, &cache, g.view(), &mut grads).unwrap();
    let grads: BTreeMap<String, ArrayD<f32>> = grads
        .iter()
        .map(|(k, v)| {
            let name = k.strip_prefix(TAIL_PREFIX).unwrap_or(k);
            (name.to_owned(), v.clone())
        })
        .collect();
    let (worst, file) = check_grads(&index, &grads, "tail");
    println!("tail: worst gradient rel error {worst:.3e} ({file})");
}
