//! The adapted encoder exported as ONNX: run by tract (and ONNX Runtime when
//! `ORT_DYLIB_PATH` is set), it must give the frozen model's embedding passed
//! through the adapter as computed here with ndarray, and the original logits.

use std::io::Write;
use std::path::PathBuf;

use crate::common::{coffee, max_abs_diff, repo};
use edgeclr::adapt::export::{export_adapted, ExportError};
use edgeclr::adapt::{Params, ParamsError};
use edgeclr::backend::{load_encoder, Backend};
use edgeclr::{Encoder, EncoderOutput, LoadOptions, Manifest, TractEncoder};
use ndarray::{Array1, Array2, Array4, ArrayD, Axis, Ix1, Ix2, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const D: usize = 1280;
const R: usize = 64;

fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Why the ONNX Runtime halves of these tests cannot run, if they cannot:
/// a build without the `ort` feature (the ARM builds tested under qemu,
/// where `ci/test`'s x86 library is in the environment but unusable), or no
/// library named.
fn ort_unavailable() -> Option<&'static str> {
    if !cfg!(feature = "ort") {
        return Some("built without the `ort` feature");
    }
    if std::env::var_os("ORT_DYLIB_PATH").is_none_or(|p| p.is_empty()) {
        return Some("set ORT_DYLIB_PATH to a libonnxruntime.so");
    }
    None
}

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("export-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn default_manifest() -> Manifest {
    Manifest::load(&repo("models/mobilenet_v2")).expect("default manifest")
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], bound: f32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(-bound..bound))
}

/// A seeded adapter that is far from the identity (non-zero up projection).
fn random_adapter(seed: u64, d: usize, r: usize) -> Params {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = Params::new();
    let bd = 1.0 / (d as f32).sqrt();
    let br = 1.0 / (r as f32).sqrt();
    p.insert("adapter.down.weight", uniform(&mut rng, &[r, d], bd));
    p.insert("adapter.down.bias", uniform(&mut rng, &[r], bd));
    p.insert("adapter.up.weight", uniform(&mut rng, &[d, r], br));
    p.insert("adapter.up.bias", uniform(&mut rng, &[d], br));
    p
}

/// `y = x + up(relu(down(x)))`, `lin(x) = x·Wᵀ + b`, in plain ndarray.
fn adapter_forward(adapter: &Params, x: &Array2<f32>) -> Array2<f32> {
    let w = |n: &str| {
        adapter
            .get(n)
            .unwrap()
            .clone()
            .into_dimensionality::<Ix2>()
            .unwrap()
    };
    let b = |n: &str| -> Array1<f32> {
        adapter
            .get(n)
            .unwrap()
            .clone()
            .into_dimensionality::<Ix1>()
            .unwrap()
    };
    let h = (x.dot(&w("adapter.down.weight").t()) + b("adapter.down.bias")).mapv(|v| v.max(0.0));
    x + &(h.dot(&w("adapter.up.weight").t()) + b("adapter.up.bias"))
}

fn run_tract(manifest: &Manifest, input: &Array4<f32>) -> EncoderOutput {
    TractEncoder::load(manifest, &LoadOptions::default())
        .expect("model loads in tract")
        .run(input.view())
        .expect("model runs in tract")
}

fn check_adapted(
    backend: &str,
    original: &EncoderOutput,
    adapted: &EncoderOutput,
    adapter: &Params,
) -> (f32, f32) {
    let expected = adapter_forward(adapter, &original.embedding);
    let moved = max_abs_diff(expected.view(), original.embedding.view());
    assert!(
        moved > 1e-2,
        "the adapter barely changes the embedding ({moved})"
    );
    let emb_diff = max_abs_diff(adapted.embedding.view(), expected.view());
    let logit_diff = max_abs_diff(
        adapted.logits.as_ref().unwrap().view(),
        original.logits.as_ref().unwrap().view(),
    );
    say(&format!(
        "export[{backend}]: adapter moves the embedding by up to {moved:.4}; \
         max |exported - (frozen + adapter in ndarray)| = {emb_diff:.3e}; \
         max |exported logits - original logits| = {logit_diff:.3e}"
    ));
    assert!(
        emb_diff < 1e-4,
        "{backend}: adapted embedding differs by {emb_diff}"
    );
    assert!(
        logit_diff < 1e-4,
        "{backend}: logits differ by {logit_diff}"
    );
    (emb_diff, logit_diff)
}

#[test]
fn exported_model_computes_the_adapter_in_tract_and_ort() {
    let manifest = default_manifest();
    let adapter = random_adapter(42, D, R);
    let dir = scratch("parity");
    let exported = export_adapted(&manifest, &adapter, &dir, "mobilenet_v2_adapted").unwrap();

    // The manifest on disk describes the new model and resolves on its own.
    assert_eq!(exported, Manifest::load(&dir).unwrap());
    assert_eq!(exported.name, "mobilenet_v2_adapted");
    assert_eq!(exported.onnx, dir.join("mobilenet_v2_adapted.onnx"));
    assert_ne!(exported.sha256, manifest.sha256);
    let description = exported.description.as_deref().unwrap();
    assert!(description.contains("edgeclr") && description.contains("mobilenet_v2"));
    assert!(exported.source.contains(&manifest.sha256));
    assert_eq!(exported.outputs, manifest.outputs);
    assert_eq!(exported.input, manifest.input);
    assert_eq!(exported.preprocess, manifest.preprocess);
    assert_eq!(
        exported.class_names().unwrap(),
        manifest.class_names().unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let input = coffee();
    let original = run_tract(&manifest, &input);
    let adapted = run_tract(&exported, &input);
    check_adapted("tract", &original, &adapted, &adapter);

    // A batch of two (different) samples goes through the same graph.
    let mut batch = ndarray::concatenate(Axis(0), &[input.view(), input.view()]).unwrap();
    batch.index_axis_mut(Axis(0), 1).mapv_inplace(|v| -0.5 * v);
    let original2 = run_tract(&manifest, &batch);
    let adapted2 = run_tract(&exported, &batch);
    check_adapted("tract, batch 2", &original2, &adapted2, &adapter);

    if let Some(why) = ort_unavailable() {
        say(&format!("SKIPPED: export::exported_model_computes_the_adapter_in_tract_and_ort (ONNX Runtime part): {why}"));
        return;
    }
    let backend: Backend = "ort".parse().unwrap();
    let mut ort = load_encoder(&backend, &exported, &LoadOptions::default())
        .expect("exported model loads in ONNX Runtime");
    let adapted_ort = ort.run(batch.view()).expect("runs in ONNX Runtime");
    check_adapted("ort, batch 2", &original2, &adapted_ort, &adapter);
}

#[test]
fn export_is_deterministic() {
    let manifest = default_manifest();
    let adapter = random_adapter(3, D, 8);
    let (a, b) = (scratch("det-a"), scratch("det-b"));
    let ma = export_adapted(&manifest, &adapter, &a, "m").unwrap();
    let mb = export_adapted(&manifest, &adapter, &b, "m").unwrap();
    let bytes_a = std::fs::read(a.join("m.onnx")).unwrap();
    assert_eq!(bytes_a, std::fs::read(b.join("m.onnx")).unwrap());
    assert_eq!(ma.sha256, mb.sha256);
    assert_eq!(
        std::fs::read(a.join("manifest.toml")).unwrap(),
        std::fs::read(b.join("manifest.toml")).unwrap()
    );
    // Exporting again over the same directory gives the same bytes too.
    export_adapted(&manifest, &adapter, &a, "m").unwrap();
    assert_eq!(bytes_a, std::fs::read(a.join("m.onnx")).unwrap());
    // A different adapter gives a different model.
    let other = export_adapted(&manifest, &random_adapter(4, D, 8), &b, "m").unwrap();
    assert_ne!(other.sha256, ma.sha256);
}

#[test]
fn wrong_adapters_and_targets_are_refused() {
    let manifest = default_manifest();
    let dir = scratch("refused");

    // Wrong embedding width in the down projection.
    let err = export_adapted(&manifest, &random_adapter(1, 512, R), &dir, "x").unwrap_err();
    assert!(matches!(err, ExportError::AdapterShape(_)), "{err}");

    // Inconsistent ranks.
    let mut adapter = random_adapter(1, D, R);
    adapter.insert("adapter.up.weight", ArrayD::zeros(IxDyn(&[D, R + 1])));
    let err = export_adapted(&manifest, &adapter, &dir, "x").unwrap_err();
    assert!(
        matches!(&err, ExportError::Adapter(ParamsError::Shape { name, .. }) if name == "adapter.up.weight"),
        "{err}"
    );
    let mut adapter = random_adapter(1, D, R);
    adapter.insert("adapter.down.bias", ArrayD::zeros(IxDyn(&[R, 1])));
    assert!(export_adapted(&manifest, &adapter, &dir, "x").is_err());

    // A missing tensor.
    let mut adapter = Params::new();
    for (name, t) in random_adapter(1, D, R).iter() {
        if name != "adapter.up.bias" {
            adapter.insert(name, t.clone());
        }
    }
    let err = export_adapted(&manifest, &adapter, &dir, "x").unwrap_err();
    assert!(
        matches!(&err, ExportError::Adapter(ParamsError::Missing(n)) if n == "adapter.up.bias"),
        "{err}"
    );

    // NaN weights.
    let mut adapter = random_adapter(1, D, R);
    adapter.get_mut("adapter.up.weight").unwrap()[[0, 0]] = f32::NAN;
    let err = export_adapted(&manifest, &adapter, &dir, "x").unwrap_err();
    assert!(
        matches!(err, ExportError::Adapter(ParamsError::NonFinite(_))),
        "{err}"
    );

    // Bad names, and the original model's own directory.
    let adapter = random_adapter(1, D, R);
    for name in ["", "a/b", ".."] {
        let err = export_adapted(&manifest, &adapter, &dir, name).unwrap_err();
        assert!(matches!(err, ExportError::InvalidName(_)), "{name}: {err}");
    }
    let err = export_adapted(&manifest, &adapter, &repo("models/mobilenet_v2"), "x").unwrap_err();
    assert!(
        matches!(err, ExportError::WouldOverwriteOriginal(_)),
        "{err}"
    );
    assert!(!repo("models/mobilenet_v2/x.onnx").exists());

    // A manifest whose sha256 does not match the ONNX file.
    let mut tampered = manifest.clone();
    tampered.sha256 = "0".repeat(64);
    let err = export_adapted(&tampered, &adapter, &dir, "x").unwrap_err();
    assert!(matches!(err, ExportError::Model(_)), "{err}");

    // Nothing was written by any refused export.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// Trained tail layers (MobileNetV2's last 1×1 conv, ReLU6, pooling) plus
/// the adapter: the exported graph computes what the trainer computes in
/// process (frozen trunk → tail → adapter), in tract and in ONNX Runtime.
#[test]
fn exported_tail_and_adapter_match_the_in_process_model() {
    use edgeclr::adapt::tail::{self, ParamScope, TailChoice};
    let manifest = default_manifest();
    let (spec, init) = tail::load_tail(&manifest, &TailChoice::Auto, ParamScope::All).unwrap();
    let dir = scratch("tail");
    let trunk = tail::write_trunk(&manifest, &spec, &dir.join("trunk")).unwrap();
    assert_eq!(trunk.outputs.embedding, "features.17");
    assert_eq!(trunk.outputs.embedding_dim, 320 * 7 * 7);

    let input = coffee();
    let mut batch = ndarray::concatenate(Axis(0), &[input.view(), input.view()]).unwrap();
    batch.index_axis_mut(Axis(0), 1).mapv_inplace(|v| -0.5 * v);
    let original = run_tract(&manifest, &batch);
    let cut = run_tract(&trunk, &batch).embedding;
    let (frozen, _) = tail::forward(&spec, &init, cut.view()).unwrap();
    let frozen_diff = max_abs_diff(frozen.view(), original.embedding.view());
    say(&format!(
        "export[tail]: trunk + tail in ndarray vs the whole model in tract: {frozen_diff:.3e}"
    ));
    assert!(frozen_diff < 1e-4, "{frozen_diff}");

    // Trained-looking weights: every tail tensor perturbed, a random adapter.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut params = random_adapter(43, D, R);
    for (name, t) in init.iter() {
        let t = t.mapv(|v| {
            v * (1.0 + rng.random_range(-0.3f32..0.3)) + rng.random_range(-0.01f32..0.01)
        });
        params.insert(name, t);
    }
    let (e, _) = tail::forward(&spec, &params, cut.view()).unwrap();
    let expected = adapter_forward(&params, &e);
    let moved = max_abs_diff(e.view(), frozen.view());
    assert!(
        moved > 1e-2,
        "the tail perturbation barely moves the embedding ({moved})"
    );

    let exported = export_adapted(&manifest, &params, &dir.join("model"), "mnv2_tail").unwrap();
    assert!(exported
        .description
        .as_deref()
        .unwrap()
        .contains("features.18.0.weight"));
    let adapted = run_tract(&exported, &batch);
    let diff = max_abs_diff(adapted.embedding.view(), expected.view());
    say(&format!(
        "export[tail, tract]: tail moves the embedding by up to {moved:.4}; \
         max |exported - in-process| = {diff:.3e}"
    ));
    assert!(diff < 1e-4, "tract: {diff}");

    if let Some(why) = ort_unavailable() {
        say(&format!("SKIPPED: export::exported_tail_and_adapter_match_the_in_process_model (ONNX Runtime part): {why}"));
        return;
    }
    let backend: Backend = "ort".parse().unwrap();
    let cut_ort = load_encoder(&backend, &trunk, &LoadOptions::default())
        .expect("the trunk loads in ONNX Runtime")
        .run(batch.view())
        .unwrap()
        .embedding;
    let trunk_diff = max_abs_diff(cut_ort.view(), cut.view());
    let adapted_ort = load_encoder(&backend, &exported, &LoadOptions::default())
        .expect("exported model loads in ONNX Runtime")
        .run(batch.view())
        .unwrap();
    let diff_ort = max_abs_diff(adapted_ort.embedding.view(), expected.view());
    say(&format!(
        "export[tail, ort]: trunk ort vs tract {trunk_diff:.3e}; max |exported - in-process| = {diff_ort:.3e}"
    ));
    assert!(trunk_diff < 1e-4, "ort trunk: {trunk_diff}");
    assert!(diff_ort < 1e-4, "ort: {diff_ort}");
}

/// A pooled tap (`features.13`, `pool = "grid:7x7"`): the pooling is
/// exported as ONNX nodes before the adapter, so the exported model's plain
/// `[N, 4704]` output is the tap pooled as edgeclr pools it, then adapted.
#[test]
fn pooled_tap_exports_its_pooling_and_adapter() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2_f13_grid7")).unwrap();
    let d = manifest.outputs.embedding_dim;
    let adapter = random_adapter(31, d, 16);
    let dir = scratch("pooled");
    let exported = export_adapted(&manifest, &adapter, &dir, "f13-adapted").unwrap();
    assert!(exported.outputs.pool.is_none());
    assert_eq!(exported.outputs.embedding, "features.13_pooled");
    assert_eq!(exported.outputs.embedding_dim, d);
    let input = coffee();
    let original = run_tract(&manifest, &input);
    let adapted = run_tract(&exported, &input);
    let expected = adapter_forward(&adapter, &original.embedding);
    let diff = max_abs_diff(adapted.embedding.view(), expected.view());
    say(&format!("export[pooled tap, tract]: {diff:.3e}"));
    assert!(
        diff < 1e-4,
        "exported pooled tap + adapter differs by {diff}"
    );
    if let Some(why) = ort_unavailable() {
        say(&format!("SKIPPED: pooled tap (ONNX Runtime part): {why}"));
    } else {
        let backend: Backend = "ort".parse().unwrap();
        let ort = load_encoder(&backend, &exported, &LoadOptions::default())
            .unwrap()
            .run(input.view())
            .unwrap();
        let diff = max_abs_diff(ort.embedding.view(), expected.view());
        say(&format!("export[pooled tap, ort]: {diff:.3e}"));
        assert!(diff < 1e-4, "ORT: {diff}");
    }
    // A grid that does not divide the map has unequal bins: refused.
    let mut odd = manifest.clone();
    odd.outputs.pool = edgeclr::manifest::Pool::Grid(4);
    odd.outputs.embedding_dim = 96 * 16;
    let err =
        export_adapted(&odd, &random_adapter(32, 96 * 16, 8), &scratch("odd"), "x").unwrap_err();
    assert!(err.to_string().contains("divides the map"), "{err}");
}
