//! Trainable tail layers of the ONNX graph: the walk that finds them, the
//! trunk cut, their forward/backward against an independent numpy reference
//! (`tests/reference/tail_ref.py`) and finite differences, and the trainer
//! with a tail (MoCo keys, checkpoints).

use std::path::PathBuf;

use crate::common::repo;
use edgeclr::adapt::config::AdaptConfig;
use edgeclr::adapt::layers::Layer;
use edgeclr::adapt::tail::{self, ParamScope, TailChoice, TailError, TailSpec};
use edgeclr::adapt::trainer::Trainer;
use edgeclr::adapt::views::{Precision, ViewCache};
use edgeclr::adapt::Params;
use edgeclr::onnx::parse_proto;
use edgeclr::Manifest;
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    x: Vec<Vec<f64>>,
    trunk: Vec<Vec<f64>>,
    upstream: Vec<Vec<f64>>,
    y: Vec<Vec<f64>>,
    loss: f64,
    grads: std::collections::BTreeMap<String, Vec<f64>>,
}

fn tiny_path() -> PathBuf {
    repo("runtime/tests/data/tail/tail_tiny.onnx")
}

fn tiny_proto() -> tract_onnx::pb::ModelProto {
    let path = tiny_path();
    parse_proto(&path, &std::fs::read(&path).unwrap()).unwrap()
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(repo("runtime/tests/data/tail/tail_ref.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn matrix(rows: &[Vec<f64>]) -> Array2<f32> {
    Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j] as f32)
}

/// The tiny model's input, `[4, 3, 3]` per image.
const TINY_INPUT: [usize; 3] = [4, 3, 3];

fn tiny_spec(choice: &TailChoice) -> Result<(TailSpec, Params), TailError> {
    TailSpec::from_model(
        &tiny_proto(),
        "embedding",
        choice,
        &TINY_INPUT,
        ParamScope::All,
    )
}

fn tiny_tail() -> (TailSpec, Params) {
    tiny_spec(&TailChoice::Node("conv".into())).unwrap()
}

fn weighted_loss(y: ArrayView2<f32>, g: ArrayView2<f32>) -> f64 {
    y.iter()
        .zip(g.iter())
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

#[test]
fn the_walk_finds_the_tail_and_its_weights() {
    let (spec, init) = tiny_tail();
    assert_eq!(spec.cut, "trunk");
    assert_eq!(
        spec.nodes,
        ["conv", "clip", "pool", "flatten", "fc", "fc_bias", "out_relu"]
    );
    assert_eq!((spec.channels, spec.out_dim), (4, 6));
    assert_eq!(
        init.names().collect::<Vec<_>>(),
        [
            "tail.conv.bias",
            "tail.conv.weight",
            "tail.fc.bias",
            "tail.fc.weight"
        ]
    );
    assert_eq!(init.get("tail.conv.weight").unwrap().shape(), [5, 4, 1, 1]);
    assert_eq!(spec.cut_shape, [4, 3, 3]);

    // auto: the last weighted layer (MatMul) and what follows it.
    let (auto, _) = tiny_spec(&TailChoice::Auto).unwrap();
    assert_eq!(auto.nodes, ["fc", "fc_bias", "out_relu"]);
    assert_eq!((auto.cut.as_str(), auto.channels), ("flat", 5));

    // The trunk keeps only what computes the cut tensor.
    let trunk = edgeclr::onnx::cut_at(&tiny_proto(), "trunk").unwrap();
    let graph = trunk.graph.unwrap();
    assert_eq!(graph.node.len(), 1);
    assert_eq!(graph.output.len(), 1);
    assert_eq!(graph.output[0].name, "trunk");
    assert!(graph.initializer.is_empty());
}

#[test]
fn bad_choices_are_clear_errors() {
    let err = tiny_spec(&TailChoice::Node("trunk_relu".into())).unwrap_err();
    assert!(
        matches!(err, TailError::Graph(ref m) if m.contains("nothing would be left")),
        "{err}"
    );
    let err = tiny_spec(&TailChoice::Node("nope".into())).unwrap_err();
    assert!(
        err.to_string().contains("without meeting node 'nope'"),
        "{err}"
    );
    let err = TailSpec::from_model(
        &tiny_proto(),
        "missing",
        &TailChoice::Auto,
        &TINY_INPUT,
        ParamScope::All,
    )
    .unwrap_err();
    assert!(matches!(err, TailError::Graph(_)), "{err}");
    // The tiny graph is a plain chain: its block outputs are few.
    let err = tiny_spec(&TailChoice::Blocks(50)).unwrap_err();
    assert!(err.to_string().contains("asked for 50"), "{err}");
    // Biases only: the conv and MatMul weights get no gradient.
    let (spec, init) = TailSpec::from_model(
        &tiny_proto(),
        "embedding",
        &TailChoice::Node("conv".into()),
        &TINY_INPUT,
        ParamScope::Biases,
    )
    .unwrap();
    assert_eq!(spec.param_names(), ["tail.conv.bias", "tail.fc.bias"]);
    assert_eq!(
        init.len(),
        4,
        "frozen weights are still given to the forward"
    );
}

#[test]
fn mobilenet_scopes_auto_and_last_blocks() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let (spec, init) = tail::load_tail(&manifest, &TailChoice::Auto, ParamScope::All).unwrap();
    assert_eq!(
        spec.nodes,
        [
            "features.18.0.conv",
            "features.18.2.relu6",
            "pool",
            "flatten"
        ]
    );
    assert_eq!(spec.cut, "features.17");
    assert_eq!((spec.channels, spec.out_dim), (320, 1280));
    assert_eq!(spec.cut_shape, [320, 7, 7]);
    assert_eq!(init.numel(), 1280 * 320 + 1280);
    // One node further back is the depthwise 3×3 conv: the engine trains it.
    let (spec, _) = tail::load_tail(
        &manifest,
        &TailChoice::Node("features.17.conv.1.0.conv".into()),
        ParamScope::All,
    )
    .unwrap();
    assert_eq!(spec.cut, "features.17.conv.0.2.relu6");
    assert_eq!(spec.cut_shape, [960, 7, 7]);
    // The last 4 blocks: features.15-18, cut at features.14 (two residual
    // blocks inside the scope).
    let (spec, init) = tail::load_tail(&manifest, &TailChoice::Blocks(4), ParamScope::All).unwrap();
    assert_eq!(spec.cut, "features.14");
    assert_eq!(spec.cut_shape, [160, 7, 7]);
    assert_eq!(
        spec.nodes.first().map(String::as_str),
        Some("features.15.conv.0.0.conv")
    );
    assert!(spec.nodes.iter().any(|n| n == "features.16.add"));
    assert_eq!(spec.param_names().len(), 3 * 6 + 2);
    assert!(init.numel() > 1_000_000);
    // A node inside a residual block: the skip connection crosses the cut.
    let err = tail::load_tail(
        &manifest,
        &TailChoice::Node("features.16.conv.1.0.conv".into()),
        ParamScope::All,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("features.16.add") && text.contains("skip connection"),
        "{text}"
    );
}

#[test]
fn unsupported_ops_are_named() {
    // The tiny model with its Relu replaced by a Sigmoid inside the tail.
    let mut proto = tiny_proto();
    let graph = proto.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.name == "out_relu")
        .unwrap();
    node.op_type = "Sigmoid".into();
    let err = TailSpec::from_model(
        &proto,
        "embedding",
        &TailChoice::Auto,
        &TINY_INPUT,
        ParamScope::All,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("out_relu") && text.contains("Sigmoid") && text.contains("Conv, Gemm"),
        "{text}"
    );
}

#[test]
fn forward_and_backward_match_the_numpy_reference() {
    let (spec, init) = tiny_tail();
    let r = reference();
    let trunk = matrix(&r.trunk);
    let g = matrix(&r.upstream);
    let (y, cache) = tail::forward(&spec, &init, trunk.view()).unwrap();
    let expected = matrix(&r.y);
    let diff = (&y - &expected)
        .mapv(f32::abs)
        .fold(0.0f32, |a, &b| a.max(b));
    assert!(diff < 1e-5, "forward differs from numpy by {diff}");
    let loss = weighted_loss(y.view(), g.view());
    assert!((loss - r.loss).abs() < 1e-5, "{loss} vs {}", r.loss);

    let mut grads = Params::new();
    tail::backward(&spec, &init, &cache, g.view(), &mut grads).unwrap();
    assert_eq!(grads.len(), r.grads.len());
    for (name, want) in &r.grads {
        let got = grads.get(name).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (a, b) in got.iter().zip(want) {
            assert!(
                (f64::from(*a) - b).abs() < 1e-5 * (1.0 + b.abs()),
                "{name}: {a} vs numpy {b}"
            );
        }
    }
    // Resolved once (as the trainer does), the tail reaches its weights and
    // gradients by handle: the same bits as by name.
    let mut resolved = spec.clone();
    resolved.resolve(&init).unwrap();
    let (y2, cache2) = tail::forward(&resolved, &init, trunk.view()).unwrap();
    assert_eq!(y2, y);
    let mut by_handle = init.empty_like();
    tail::backward(&resolved, &init, &cache2, g.view(), &mut by_handle).unwrap();
    assert!(by_handle.same_layout(&init));
    assert_eq!(by_handle, grads);
    // The raw input is not the trunk output: the "trunk" Relu matters.
    assert_ne!(matrix(&r.x), trunk);
}

#[test]
fn gradient_matches_finite_differences() {
    let (spec, init) = tiny_tail();
    let r = reference();
    let trunk = matrix(&r.trunk);
    let g = matrix(&r.upstream);
    let (_, cache) = tail::forward(&spec, &init, trunk.view()).unwrap();
    let mut grads = Params::new();
    tail::backward(&spec, &init, &cache, g.view(), &mut grads).unwrap();
    let h = 1e-3f32;
    let mut checked = 0;
    for name in spec.param_names() {
        for i in 0..init.get(&name).unwrap().len() {
            let at = |delta: f32| {
                let mut p = init.clone();
                *p.get_mut(&name).unwrap().iter_mut().nth(i).unwrap() += delta;
                let (y, _) = tail::forward(&spec, &p, trunk.view()).unwrap();
                weighted_loss(y.view(), g.view())
            };
            let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
            let an = f64::from(*grads.get(&name).unwrap().iter().nth(i).unwrap());
            assert!(
                (fd - an).abs() < 2e-3 * (1.0 + an.abs()),
                "{name}[{i}]: finite difference {fd} vs analytic {an}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 20 + 5 + 30 + 6);
}

fn tail_config(bank: usize) -> AdaptConfig {
    AdaptConfig {
        batch_size: 4,
        bank_size: bank,
        bottleneck: 3,
        head_hidden: 8,
        head_out: 4,
        epochs: 2,
        lr: 1e-2,
        train_tail: Some(edgeclr::adapt::tail::TailChoice::Node("conv".into())),
        ..AdaptConfig::default()
    }
}

fn random_views(seed: u64, n: usize, w: usize) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_fn((n, w), |_| rng.random_range(0.0f32..3.0))
}

#[test]
fn trainer_trains_the_tail_and_its_ema_copy() {
    let cfg = tail_config(8);
    let mut trainer = Trainer::with_tail(cfg, Some(tiny_tail()), 0, 2).unwrap();
    assert!(trainer.ema.contains("tail.conv.weight"));
    let x = random_views(1, 8, 36);
    let frozen = trainer.frozen(x.view()).unwrap();
    assert_eq!(frozen, trainer.adapt(x.view()).unwrap(), "identity at init");
    let before = trainer.params.get("tail.conv.weight").unwrap().clone();
    let cache = ViewCache::new(vec![x.clone(), random_views(2, 8, 36)], Precision::F16).unwrap();
    assert_eq!(cache.memory_bytes(), 2 * 8 * 36 * 2);
    trainer.prefill_bank(cache.view(0).view()).unwrap();
    for _ in 0..2 {
        trainer.train_epoch(&cache, |_| {}).unwrap();
    }
    assert_ne!(trainer.params.get("tail.conv.weight").unwrap(), &before);
    assert_ne!(trainer.ema.get("tail.conv.weight").unwrap(), &before);
    assert_eq!(
        trainer.frozen(x.view()).unwrap(),
        frozen,
        "frozen stays frozen"
    );
    assert_ne!(trainer.adapt(x.view()).unwrap(), frozen);
}

#[test]
fn checkpoint_with_a_tail_refuses_a_resume_without_it() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let cfg = tail_config(0);
    let mut trainer = Trainer::with_tail(cfg.clone(), Some(tiny_tail()), 0, 2).unwrap();
    let x1 = random_views(3, 4, 36);
    let x2 = random_views(4, 4, 36);
    trainer.train_step(x1.view(), x2.view()).unwrap();
    let ckpt = trainer.checkpoint(&manifest, &cfg, 1).unwrap();
    assert!(ckpt.tensors.contains("tail.conv.weight"));
    assert!(ckpt.tensors.contains("ema.tail.conv.weight"));

    let mut same = Trainer::with_tail(cfg.clone(), Some(tiny_tail()), 0, 2).unwrap();
    same.restore_from(&ckpt).unwrap();
    assert_eq!(same.params, trainer.params);
    assert_eq!(same.ema, trainer.ema);

    let plain_cfg = AdaptConfig {
        train_tail: None,
        ..cfg
    };
    let mut plain = Trainer::new(plain_cfg, 6, 2).unwrap();
    let err = plain.restore_from(&ckpt).unwrap_err();
    assert!(err.to_string().contains("--train-tail"), "{err}");
}

/// A pooled tap (`features.13` grid-pooled to 7×7): the pooling becomes the
/// tail's last nodes, so the blocks below the tap train. The tail's forward
/// at its initial weights on the written trunk's output is the tap's own
/// embedding from tract (pool included), and block counting ends at the tap.
#[test]
fn a_pooled_tap_trains_the_blocks_below_it() {
    use crate::common::{coffee, max_abs_diff};
    use edgeclr::{Encoder, LoadOptions, TractEncoder};
    let manifest = Manifest::load(&repo("models/mobilenet_v2_f13_grid7")).unwrap();
    let (spec, init) = tail::load_tail(&manifest, &TailChoice::Blocks(2), ParamScope::All).unwrap();
    assert_eq!(spec.cut, "features.11");
    assert_eq!(spec.cut_shape, [96, 14, 14]);
    assert_eq!((spec.channels, spec.out_dim), (96, 96 * 7 * 7));
    assert_eq!(
        spec.nodes.first().map(String::as_str),
        Some("features.12.conv.0.0.conv")
    );
    assert!(spec.nodes.iter().any(|n| n == "features.13.add"));
    assert!(
        spec.nodes.last().is_some_and(|n| n.ends_with("_pooled")),
        "{:?}",
        spec.nodes
    );

    let dir = std::env::temp_dir().join(format!("edgeclr-tap-tail-{}", std::process::id()));
    let trunk = tail::write_trunk(&manifest, &spec, &dir).unwrap();
    assert_eq!(trunk.outputs.embedding_dim, 96 * 14 * 14);
    let image = coffee();
    let load = |m: &Manifest| TractEncoder::load(m, &LoadOptions::default()).unwrap();
    let cut = load(&trunk).run(image.view()).unwrap().embedding;
    let want = load(&manifest).run(image.view()).unwrap().embedding;
    let (got, _) = tail::forward(&spec, &init, cut.view()).unwrap();
    let diff = max_abs_diff(got.view(), want.view());
    assert!(
        diff < 1e-4,
        "engine tail + pool vs tract tap: max |d| = {diff}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The inference-only adapted model (`adapt::adapted`) embeds exactly as the
/// trainer does, from its parameters or its checkpoint, and holds nothing but
/// the adapter and the trained layers.
#[test]
fn adapted_model_embeds_as_the_trainer_does() {
    use edgeclr::adapt::adapted::AdaptedModel;
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let cfg = tail_config(8);
    let mut trainer = Trainer::with_tail(cfg.clone(), Some(tiny_tail()), 0, 2).unwrap();
    let cache = ViewCache::new(
        vec![random_views(5, 8, 36), random_views(6, 8, 36)],
        Precision::F32,
    )
    .unwrap();
    trainer.prefill_bank(cache.view(0).view()).unwrap();
    trainer.train_epoch(&cache, |_| {}).unwrap();
    let x = random_views(7, 300, 36); // more than one chunk of rows
    let want = trainer.adapt(x.view()).unwrap();

    let model = trainer.adapted_model().unwrap();
    assert_eq!(model.embed(x.view()).unwrap(), want);
    assert!(model
        .params()
        .names()
        .all(|n| n.starts_with("adapter.") || n.starts_with("tail.")));
    assert!(model.params().contains("tail.conv.weight"));
    let ckpt = trainer.checkpoint(&manifest, &cfg, 1).unwrap();
    let (spec, _) = tiny_tail();
    let from_ckpt = AdaptedModel::from_checkpoint(&ckpt, Some(spec)).unwrap();
    assert_eq!(from_ckpt.embed(x.view()).unwrap(), want);
    // A tail checkpoint without its scope, and a scope without tail weights.
    assert!(AdaptedModel::from_checkpoint(&ckpt, None).is_err());
    let plain = Trainer::new(
        AdaptConfig {
            train_tail: None,
            ..cfg
        },
        6,
        2,
    )
    .unwrap();
    assert!(AdaptedModel::new(&plain.params, Some(tiny_tail().0)).is_err());

    // Without a tail: the adapter alone; the frozen model is the identity.
    let y = random_views(8, 5, 6);
    let adapter_only = plain.adapted_model().unwrap();
    assert_eq!(
        adapter_only.embed(y.view()).unwrap(),
        plain.adapt(y.view()).unwrap()
    );
    assert_eq!(AdaptedModel::frozen().embed(y.view()).unwrap(), y);
    let mut updated = AdaptedModel::frozen();
    updated.set_params(&plain.params).unwrap();
    assert_eq!(
        updated.embed(y.view()).unwrap(),
        plain.adapt(y.view()).unwrap()
    );
}

/// MoCo: the keys of the second view are computed once by the momentum copy
/// *before* the update, used as positives, and exactly those are enqueued.
#[test]
fn moco_enqueues_the_keys_it_used() {
    let cfg = AdaptConfig {
        batch_size: 4,
        bank_size: 8,
        bottleneck: 3,
        head_hidden: 8,
        head_out: 4,
        lr: 1e-1,
        warmup_epochs: 0,
        momentum: 0.5,
        ..AdaptConfig::default()
    };
    let mut trainer = Trainer::new(cfg, 6, 2).unwrap();
    let x1 = random_views(5, 4, 6);
    let x2 = random_views(6, 4, 6);
    trainer.prefill_bank(random_views(7, 4, 6).view()).unwrap();
    let adapter = Layer::adapter(6, 3).unwrap();
    let head = Layer::mlp("head", 6, 8, 4).unwrap();
    let a = adapter.embed(&trainer.ema, x2.view()).unwrap();
    let keys_before = head.embed(&trainer.ema, a.view()).unwrap();
    trainer.train_step(x1.view(), x2.view()).unwrap();
    let bank = trainer.bank.as_ref().unwrap().chronological();
    let newest = bank.slice(ndarray::s![bank.nrows() - 4.., ..]);
    // Compare to the keys the bank stores (it may normalise them).
    let a = adapter.embed(&trainer.ema, x2.view()).unwrap();
    let keys_after = head.embed(&trainer.ema, a.view()).unwrap();
    let dist = |k: &Array2<f32>| {
        let norm = |r: ndarray::ArrayView1<f32>| r.dot(&r).sqrt();
        newest
            .outer_iter()
            .zip(k.outer_iter())
            .map(|(b, k)| (&b / norm(b) - &(&k / norm(k))).mapv(f32::abs).sum())
            .sum::<f32>()
    };
    assert!(
        dist(&keys_before) < 1e-5,
        "enqueued keys are not the pre-update keys"
    );
    assert!(
        dist(&keys_after) > 1e-4,
        "the EMA copy did not move (test is vacuous)"
    );
}

/// Labels of the eight images the label-reading trainer tests use: three
/// classes and two unlabelled images.
const LABELS: [Option<usize>; 8] = [
    Some(0),
    Some(1),
    None,
    Some(1),
    Some(0),
    Some(2),
    Some(2),
    None,
];

/// A trainer for 6-wide inputs, 2 steps per epoch, with [`LABELS`] set.
fn labelled_trainer(cfg: &AdaptConfig) -> Trainer {
    let mut t = Trainer::new(cfg.clone(), 6, 2).unwrap();
    t.set_labels(LABELS.to_vec());
    t
}

/// SupCon in the trainer: the labels set for the images reach the bank with
/// their keys (prefill and every step), survive a checkpoint, and a resumed
/// trainer continues exactly as the uninterrupted one.
#[test]
fn supcon_trainer_keeps_labels_in_the_bank_and_resumes_exactly() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let cfg = AdaptConfig {
        loss: "supcon:tau=0.1".parse().expect("objective spec"),
        batch_size: 4,
        bank_size: 8,
        bottleneck: 3,
        head_hidden: 8,
        head_out: 4,
        warmup_epochs: 0,
        ..AdaptConfig::default()
    };
    let labels = LABELS.to_vec();
    let new = || labelled_trainer(&cfg);
    let cache = ViewCache::new(
        vec![random_views(8, 8, 6), random_views(9, 8, 6)],
        Precision::F32,
    )
    .unwrap();
    let mut trainer = new();
    trainer.prefill_bank(cache.view(0).view()).unwrap();
    assert_eq!(trainer.bank.as_ref().unwrap().labels(), &labels[..]);
    trainer.train_epoch(&cache, |_| {}).unwrap();
    // Every image was enqueued once more this epoch, in shuffled order:
    // the bank's labels are a permutation of the images' labels.
    let mut held = trainer.bank.as_ref().unwrap().labels().to_vec();
    let mut want = labels.clone();
    held.sort();
    want.sort();
    assert_eq!(held, want);

    let ckpt = trainer.checkpoint(&manifest, &cfg, 1).unwrap();
    let mut resumed = new();
    resumed.restore_from(&ckpt).unwrap();
    assert_eq!(resumed.bank, trainer.bank);
    trainer.train_epoch(&cache, |_| {}).unwrap();
    resumed.train_epoch(&cache, |_| {}).unwrap();
    assert_eq!(resumed.params, trainer.params);

    // Labels for fewer images than the cache holds: a clear error.
    let mut short = Trainer::new(cfg.clone(), 6, 2).unwrap();
    short.set_labels(vec![Some(0); 3]);
    let err = short.train_epoch(&cache, |_| {}).unwrap_err();
    assert!(err.to_string().contains("labels"), "{err}");
}

/// `--loss ce` in the trainer: the classifier is part of the trainable state
/// (checkpointed, resumed exactly), the loss falls as it fits the labels,
/// and a config without classes or a label out of range is refused.
#[test]
fn ce_trainer_fits_labels_and_resumes_exactly() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let cfg = AdaptConfig {
        loss: "ce".parse().expect("objective spec"),
        classes: 3,
        epochs: 42,
        batch_size: 4,
        bottleneck: 3,
        head_out: 0,
        warmup_epochs: 0,
        lr: 5e-2,
        ..AdaptConfig::default()
    };
    let new = || labelled_trainer(&cfg);
    // Two views of each image: the same point plus a little noise.
    let noisy = random_views(8, 8, 6) + random_views(9, 8, 6).mapv(|v| 0.1 * v);
    let cache = ViewCache::new(vec![random_views(8, 8, 6), noisy], Precision::F32).unwrap();
    let mut trainer = new();
    assert!(trainer.bank.is_none(), "ce uses no memory bank");
    assert_eq!(
        trainer
            .params
            .get(edgeclr::adapt::trainer::CLASSIFIER_WEIGHT)
            .unwrap()
            .shape(),
        &[3, 6]
    );
    let first = trainer.train_epoch(&cache, |_| {}).unwrap();
    let ckpt = trainer.checkpoint(&manifest, &cfg, 1).unwrap();
    let mut resumed = new();
    resumed.restore_from(&ckpt).unwrap();
    trainer.train_epoch(&cache, |_| {}).unwrap();
    resumed.train_epoch(&cache, |_| {}).unwrap();
    assert_eq!(resumed.params, trainer.params);
    let mut last = first;
    for _ in 0..40 {
        last = trainer.train_epoch(&cache, |_| {}).unwrap();
    }
    assert!(
        last < 0.5 * first,
        "ce did not fit 6 labelled rows: epoch 1 {first}, epoch 42 {last}"
    );

    let no_classes = AdaptConfig {
        classes: 0,
        ..cfg.clone()
    };
    let err = Trainer::new(no_classes, 6, 2).err().expect("refused");
    assert!(err.to_string().contains("classes"), "{err}");
    let stray = AdaptConfig {
        loss: "infonce".parse().expect("objective spec"),
        ..cfg.clone()
    };
    assert!(Trainer::new(stray, 6, 2).is_err(), "classes without ce");
    let mut out_of_range = Trainer::new(cfg.clone(), 6, 2).unwrap();
    out_of_range.set_labels(vec![Some(3); 8]);
    let err = out_of_range.train_epoch(&cache, |_| {}).unwrap_err();
    assert!(err.to_string().contains("label"), "{err}");
}

/// The drift guard (`anchor`): 1 keeps the adapter at its source weights
/// (the identity) whatever the loss wants, 0 lets it move, and a value in
/// between keeps it closer to the source than a free run does.
#[test]
fn anchor_pulls_the_adapter_toward_its_source_weights() {
    let run = |anchor: f32| {
        let cfg = AdaptConfig {
            loss: "infonce:tau=0.2".parse().expect("objective spec"),
            batch_size: 4,
            bank_size: 0,
            bottleneck: 3,
            head_out: 0,
            warmup_epochs: 0,
            lr: 1e-2,
            anchor,
            ..AdaptConfig::default()
        };
        let mut trainer = Trainer::new(cfg, 6, 2).unwrap();
        let source = trainer.params.with_prefix("adapter.");
        let cache = ViewCache::new(
            vec![random_views(8, 8, 6), random_views(9, 8, 6)],
            Precision::F32,
        )
        .unwrap();
        for _ in 0..5 {
            trainer.train_epoch(&cache, |_| {}).unwrap();
        }
        let moved = trainer.params.with_prefix("adapter.");
        let mut distance = 0.0f64;
        for (name, s) in source.iter() {
            let m = moved.get(name).unwrap();
            distance += (m - s).mapv(|d| f64::from(d * d)).sum();
        }
        distance.sqrt()
    };
    let (free, half, pinned) = (run(0.0), run(0.5), run(1.0));
    assert_eq!(pinned, 0.0, "anchor 1 must keep the source weights");
    assert!(free > 1e-3, "the free run did not move (test is vacuous)");
    assert!(half < 0.5 * free, "anchor 0.5: {half} vs free {free}");
    let bad = AdaptConfig {
        anchor: 1.5,
        ..AdaptConfig::default()
    };
    assert!(Trainer::new(bad, 6, 2).is_err());
}

/// The backward keeps only what it reads (conv inputs for weight
/// gradients, clamp outputs for their masks): same gradients as with every
/// value kept, and biases-only keeps far less.
#[test]
fn dropped_activations_change_no_gradient() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let proto = parse_proto(&manifest.onnx, &std::fs::read(&manifest.onnx).unwrap()).unwrap();
    let mut kept = Vec::new();
    for scope in [ParamScope::All, ParamScope::Biases] {
        let (spec, init) = TailSpec::from_model(
            &proto,
            "embedding",
            &TailChoice::Blocks(4),
            &[3, 112, 112],
            scope,
        )
        .unwrap();
        let width: usize = spec.cut_shape.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = Array2::from_shape_fn((5, width), |_| rng.random_range(-1.0f32..1.0));
        let g = Array2::from_shape_fn((5, spec.out_dim), |_| rng.random_range(-1.0f32..1.0));
        let (y, cache) = tail::forward(&spec, &init, x.view()).unwrap();
        let mut grads = Params::new();
        tail::backward(&spec, &init, &cache, g.view(), &mut grads).unwrap();
        // Reference: the engine keeping every value.
        let graph = spec.graph();
        let refs: Vec<_> = graph
            .params()
            .iter()
            .map(|p| init.get(&format!("tail.{}", p.name)).unwrap())
            .collect();
        let trainable: Vec<bool> = graph
            .params()
            .iter()
            .map(|p| spec.param_names().contains(&format!("tail.{}", p.name)))
            .collect();
        let (y_all, tape) = graph.forward_rows(&refs, x.view(), 1).unwrap();
        assert_eq!(y, y_all);
        let all = graph
            .backward_rows(&refs, &tape, g.view(), &trainable, 1)
            .unwrap();
        assert_eq!(grads.len(), spec.param_names().len());
        for (p, want) in graph.params().iter().zip(&all) {
            let got = grads.get(&format!("tail.{}", p.name)).ok();
            assert_eq!(got, want.as_ref(), "{}", p.name);
        }
        assert!(
            cache.bytes() < tape.bytes(),
            "{scope}: {} vs {}",
            cache.bytes(),
            tape.bytes()
        );
        let (keeps, total) = spec.activation_bytes_per_sample();
        assert!(keeps < total);
        kept.push(keeps);
    }
    assert!(kept[1] * 2 < kept[0], "biases-only keeps {kept:?}");
}
