//! The library's adaptation session: the epoch loop's crash rules (a run
//! stopped anywhere resumes to the same bytes; the metrics log never trails
//! the checkpoint and is trimmed when it leads), the resume policy, the best
//! epoch on validation data, and the export. Views are synthetic (random
//! 1280-d "embeddings" in four clusters), so no image is encoded; the export
//! needs the shipped model file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::common::repo;
use edgeclr::adapt::checkpoint::Checkpoint;
use edgeclr::adapt::config::AdaptConfig;
use edgeclr::adapt::session::run_dir::{EpochLog, CHECKPOINT, METRICS};
use edgeclr::adapt::session::val::ValSet;
use edgeclr::adapt::session::{Session, SessionError, SessionEvents, SessionOptions, TrainViews};
use edgeclr::adapt::trainer::{StepReport, Trainer};
use edgeclr::adapt::views::{Precision, ViewCache};
use edgeclr::Manifest;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const IMAGES: usize = 64;

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("session-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The shipped MobileNetV2 manifest, or `None` (skip) where ci/setup has not
/// made its model file (a failure under `EDGECLR_REQUIRE_MODELS=1`).
fn manifest() -> Option<Manifest> {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    if !manifest.onnx.is_file() {
        assert!(
            std::env::var("EDGECLR_REQUIRE_MODELS").as_deref() != Ok("1"),
            "{} is missing (ci/setup makes it)",
            manifest.onnx.display()
        );
        eprintln!("SKIPPED: session: no model file");
        return None;
    }
    Some(manifest)
}

/// `n` points near one of four random centres each (label = centre), and
/// two noisy views of them.
fn clustered(n: usize, dim: usize, seed: u64) -> (Array2<f32>, Vec<usize>, ViewCache) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres = Array2::from_shape_fn((4, dim), |_| rng.random_range(-1.0f32..1.0));
    let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let base = Array2::from_shape_fn((n, dim), |(i, j)| {
        centres[[labels[i], j]] + rng.random_range(-0.8f32..0.8)
    });
    let mut view =
        || base.mapv(|x| x) + Array2::from_shape_fn((n, dim), |_| rng.random_range(-0.1f32..0.1));
    let views = vec![view(), view()];
    let cache = ViewCache::new(views, Precision::F32).unwrap();
    (base, labels, cache)
}

fn config(epochs: usize) -> AdaptConfig {
    AdaptConfig {
        epochs,
        batch_size: 16,
        bank_size: 32,
        seed: 3,
        ..AdaptConfig::default()
    }
}

fn session(
    manifest: &Manifest,
    config: &AdaptConfig,
    dir: &Path,
    resume: bool,
) -> Result<Session, SessionError> {
    let steps = Trainer::steps_per_epoch(IMAGES, config.batch_size);
    let trainer = Trainer::new(config.clone(), manifest.outputs.embedding_dim, steps).unwrap();
    let options = SessionOptions {
        resume,
        ..SessionOptions::new(dir)
    };
    Session::open(trainer, manifest.clone(), config.clone(), &options)
}

/// Stops the run (as a kill would) at the first step of epoch `at`.
struct KillAt {
    at: usize,
    epoch: usize,
    epochs_logged: Vec<usize>,
}

impl SessionEvents for KillAt {
    fn epoch_begins(&mut self, epoch: usize, _steps: usize) {
        self.epoch = epoch;
    }
    fn step(&mut self, _report: &StepReport) {
        if self.epoch == self.at {
            panic!("killed in epoch {}", self.at);
        }
    }
    fn epoch_ends(&mut self, log: &EpochLog) {
        self.epochs_logged.push(log.epoch);
    }
}

fn tensors_equal(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!((a.epoch, a.step), (b.epoch, b.step));
    let names: Vec<&str> = a.tensors.names().collect();
    assert_eq!(names, b.tensors.names().collect::<Vec<_>>());
    for name in names {
        let (x, y) = (a.tensors.get(name).unwrap(), b.tensors.get(name).unwrap());
        assert!(
            x.iter()
                .zip(y.iter())
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs"
        );
    }
}

fn lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(METRICS))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_stopped_run_resumes_to_the_same_checkpoint_and_export() {
    let Some(manifest) = manifest() else { return };
    let dim = manifest.outputs.embedding_dim;
    let cfg = config(3);

    let whole = scratch("whole");
    let (_, _, cache) = clustered(IMAGES, dim, 1);
    let mut s = session(&manifest, &cfg, &whole, false).unwrap();
    assert_eq!(s.resumed(), None);
    let summary = s.run(&mut TrainViews::Cache(cache), None, &mut ()).unwrap();
    assert_eq!(summary.rolled_back_at, None);
    assert!(summary.best.is_none() && summary.frozen.is_none());
    assert_eq!(lines(&whole), 3);
    let reference = Checkpoint::load(&whole.join(CHECKPOINT)).unwrap();
    assert_eq!(reference.epoch, 3);

    // Stopped in epoch 2: epoch 1's line and checkpoint are on disk.
    let stopped = scratch("stopped");
    let (_, _, cache) = clustered(IMAGES, dim, 1);
    let mut s = session(&manifest, &cfg, &stopped, false).unwrap();
    let mut kill = KillAt {
        at: 2,
        epoch: 0,
        epochs_logged: Vec::new(),
    };
    let died = catch_unwind(AssertUnwindSafe(|| {
        let _ = s.run(&mut TrainViews::Cache(cache), None, &mut kill);
    }));
    assert!(died.is_err());
    assert_eq!(kill.epochs_logged, vec![1]);
    assert_eq!(
        Checkpoint::load(&stopped.join(CHECKPOINT)).unwrap().epoch,
        1
    );
    // A kill between a line and its checkpoint leaves a line too many (here
    // a torn one): resume trims it.
    let log = stopped.join(METRICS);
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"epoch\": 2, \"loss\"");
    std::fs::write(&log, text).unwrap();

    let (_, _, cache) = clustered(IMAGES, dim, 1);
    let mut s = session(&manifest, &cfg, &stopped, true).unwrap();
    assert_eq!(
        lines(&stopped),
        1,
        "resume trims the log to the checkpoint's epochs"
    );
    assert_eq!(s.resumed().map(|r| r.0), Some(1));
    s.run(&mut TrainViews::Cache(cache), None, &mut ()).unwrap();
    assert_eq!(lines(&stopped), 3);
    tensors_equal(
        &reference,
        &Checkpoint::load(&stopped.join(CHECKPOINT)).unwrap(),
    );
    let exported =
        |dir: &PathBuf| std::fs::read(dir.join("model/mobilenet_v2-adapted.onnx")).unwrap();
    assert!(exported(&whole) == exported(&stopped), "the exports differ");
}

#[test]
fn resume_refuses_other_settings_and_a_missing_checkpoint() {
    let Some(manifest) = manifest() else { return };
    let dir = scratch("refuse");
    let err = session(&manifest, &config(2), &dir, true).err().unwrap();
    assert!(err.to_string().contains(CHECKPOINT), "{err}");

    let (_, _, cache) = clustered(IMAGES, manifest.outputs.embedding_dim, 2);
    let mut s = session(&manifest, &config(1), &dir, false).unwrap();
    s.run(&mut TrainViews::Cache(cache), None, &mut ()).unwrap();
    let err = session(&manifest, &config(2), &dir, true).err().unwrap();
    assert!(
        err.to_string().contains("epochs is 1 there, 2 here"),
        "{err}"
    );
}

#[test]
fn with_validation_data_the_export_is_the_best_epoch_frozen_included() {
    let Some(manifest) = manifest() else { return };
    let dim = manifest.outputs.embedding_dim;
    let dir = scratch("best");
    let (_, _, cache) = clustered(IMAGES, dim, 4);
    let (train, train_labels, _) = clustered(40, dim, 5);
    let (test, test_labels, _) = clustered(40, dim, 5);
    let val = ValSet {
        train,
        train_labels,
        test,
        test_labels,
        classes: (0..4).map(|c| format!("c{c}")).collect(),
    };
    // An absurd learning rate: the epochs can only do worse than frozen
    // (or as well), and the export must then be the frozen encoder's state.
    let cfg = AdaptConfig {
        lr: 0.5,
        ..config(2)
    };
    let mut s = session(&manifest, &cfg, &dir, false).unwrap();
    let summary = s
        .run(&mut TrainViews::Cache(cache), Some(&val), &mut ())
        .unwrap();
    let best = summary.best.unwrap();
    let (frozen, adapted) = (summary.frozen.unwrap(), summary.adapted.unwrap());
    assert!(best.knn >= frozen.knn - 1e-6, "{best:?} {frozen:?}");
    assert!(
        (adapted.knn - best.knn).abs() < 1e-6,
        "{adapted:?} {best:?}"
    );
    let best_file = Checkpoint::load(&dir.join("checkpoint.best.safetensors")).unwrap();
    assert_eq!(best_file.epoch as usize, best.epoch);
}
