//! Checkpoints: exact round trips, clear errors on damaged files, and no NaN
//! (nor a half-written file) ever replacing a good checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::repo;
use edgeclr::adapt::checkpoint::{Checkpoint, CheckpointError, FORMAT};
use edgeclr::adapt::Params;
use edgeclr::Manifest;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A fresh, empty directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(-3.0f32..3.0))
}

fn sample() -> Checkpoint {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut tensors = Params::new();
    tensors.insert("adapter.down.weight", random(&mut rng, &[4, 16]));
    tensors.insert("adapter.down.bias", random(&mut rng, &[4]));
    tensors.insert("adapter.up.weight", random(&mut rng, &[16, 4]));
    tensors.insert("adapter.up.bias", random(&mut rng, &[16]));
    tensors.insert("ema.adapter.down.weight", random(&mut rng, &[4, 16]));
    tensors.insert(
        "optim.adam.m.adapter.down.weight",
        random(&mut rng, &[4, 16]),
    );
    tensors.insert("bank.queue", random(&mut rng, &[8, 2, 3]));
    tensors.insert("loss.t_prime", ArrayD::from_elem(IxDyn(&[1]), 0.693_5));
    tensors.insert("rng.state", ArrayD::from_elem(IxDyn(&[]), 12345.0));
    tensors.insert("empty", ArrayD::zeros(IxDyn(&[0, 3])));
    // A transposed (non-standard layout) view must be stored in logical order.
    let transposed = random(&mut rng, &[3, 5]).reversed_axes();
    assert!(!transposed.is_standard_layout());
    tensors.insert("transposed", transposed);
    Checkpoint {
        step: 123_456_789_012,
        epoch: 17,
        model: "mobilenet_v2".into(),
        model_sha256: "c0637dffc68934f0afe6e8b50bb2521534e35c17e53fe13e981f0b7072fa8aed".into(),
        config_json: r#"{"loss":"siglip","lr":0.001,"note":"ünïcödé \"quoted\"\n"}"#.into(),
        tensors,
    }
}

fn no_tmp_left(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn round_trip_is_exact() {
    let dir = scratch("round_trip");
    let path = dir.join("run.safetensors");
    let ckpt = sample();
    ckpt.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back, ckpt);
    // Bit-exact, not just equal (PartialEq on f32 would accept -0.0 == 0.0).
    for (name, t) in ckpt.tensors.iter() {
        let b = back.tensors.get(name).unwrap();
        assert_eq!(t.shape(), b.shape(), "{name}");
        assert!(
            t.iter()
                .zip(b.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}"
        );
    }
    // Saving over an existing checkpoint replaces it.
    let mut next = ckpt.clone();
    next.step += 1;
    next.tensors.get_mut("adapter.up.bias").unwrap()[[0]] = 42.0;
    next.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), next);
    no_tmp_left(&dir);
}

#[test]
fn truncated_files_are_errors_not_panics() {
    let dir = scratch("truncated");
    let path = dir.join("run.safetensors");
    sample().save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cut = dir.join("cut.safetensors");
    let mut lengths = vec![
        0,
        1,
        7,
        8,
        9,
        8 + header_len / 2,
        8 + header_len,
        bytes.len() - 1,
    ];
    lengths.extend((0..bytes.len()).step_by(97));
    for len in lengths {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let err = Checkpoint::load(&cut).expect_err(&format!("{len} bytes must not load"));
        assert!(
            matches!(err, CheckpointError::Format { .. }),
            "{len} bytes: {err}"
        );
    }
}

#[test]
fn random_bytes_and_missing_files_are_errors() {
    let dir = scratch("random");
    let path = dir.join("noise.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for len in [3usize, 16, 1000, 100_000] {
        let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        std::fs::write(&path, &noise).unwrap();
        assert!(
            Checkpoint::load(&path).is_err(),
            "{len} random bytes loaded"
        );
    }
    // A plausible header length followed by garbage JSON.
    let mut fake = 16u64.to_le_bytes().to_vec();
    fake.extend(b"{not json at all");
    std::fs::write(&path, &fake).unwrap();
    let err = Checkpoint::load(&path).unwrap_err();
    assert!(matches!(err, CheckpointError::Format { .. }), "{err}");

    let err = Checkpoint::load(&dir.join("absent.safetensors")).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
}

#[test]
fn nan_is_refused_and_the_previous_checkpoint_survives() {
    let dir = scratch("nan");
    let path = dir.join("run.safetensors");
    let good = sample();
    good.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut bad = good.clone();
        bad.step += 1;
        bad.tensors.get_mut("ema.adapter.down.weight").unwrap()[[2, 3]] = bad_value;
        let err = bad.save(&path).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::NonFinite(name) if name == "ema.adapter.down.weight"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "file was touched");
        assert_eq!(Checkpoint::load(&path).unwrap(), good);
    }
    // Refused before any write: nothing at a fresh path either.
    let mut bad = good.clone();
    bad.tensors.get_mut("rng.state").unwrap()[[]] = f32::NAN;
    let fresh = dir.join("fresh.safetensors");
    assert!(bad.save(&fresh).is_err());
    assert!(!fresh.exists());
    no_tmp_left(&dir);
}

#[test]
fn wrong_model_is_detected() {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).unwrap();
    let mut ckpt = sample();
    ckpt.model_sha256 = manifest.sha256.to_uppercase();
    ckpt.check_model(&manifest).unwrap();
    ckpt.model = "resnet18".into();
    ckpt.model_sha256 = "ab".repeat(32);
    let err = ckpt.check_model(&manifest).unwrap_err();
    match &err {
        CheckpointError::WrongModel { expected, found } => {
            assert!(expected.contains(&manifest.sha256), "{err}");
            assert!(
                found.contains("resnet18") && found.contains(&"ab".repeat(32)),
                "{err}"
            );
        }
        other => panic!("expected WrongModel, got {other}"),
    }
}

/// Writes a safetensors file directly, bypassing `Checkpoint::save`.
fn write_raw(
    path: &Path,
    dtype: safetensors::Dtype,
    data: &[u8],
    shape: &[usize],
    metadata: Option<HashMap<String, String>>,
) {
    let view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), data).unwrap();
    let bytes = safetensors::serialize([("x", view)], metadata).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn full_metadata() -> HashMap<String, String> {
    [
        ("format", FORMAT),
        ("step", "1"),
        ("epoch", "0"),
        ("model", "m"),
        ("model_sha256", "00"),
        ("config", "{}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn foreign_safetensors_files_are_clear_errors() {
    let dir = scratch("foreign");
    let path = dir.join("foreign.safetensors");
    let f32_data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();

    // Valid file, all metadata: loads.
    write_raw(
        &path,
        safetensors::Dtype::F32,
        &f32_data,
        &[2],
        Some(full_metadata()),
    );
    let ok = Checkpoint::load(&path).unwrap();
    assert_eq!(
        ok.tensors.get("x").unwrap().as_slice().unwrap(),
        &[1.0, 2.0]
    );

    // No metadata at all.
    write_raw(&path, safetensors::Dtype::F32, &f32_data, &[2], None);
    let err = Checkpoint::load(&path).unwrap_err();
    assert!(
        matches!(err, CheckpointError::MissingMetadata { .. }),
        "{err}"
    );

    // Each key missing in turn.
    for key in ["format", "step", "epoch", "model", "model_sha256", "config"] {
        let mut meta = full_metadata();
        meta.remove(key);
        write_raw(&path, safetensors::Dtype::F32, &f32_data, &[2], Some(meta));
        let err = Checkpoint::load(&path).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::MissingMetadata { key: k, .. } if *k == key),
            "{key}: {err}"
        );
    }

    // A step that is not a number.
    let mut meta = full_metadata();
    meta.insert("step".into(), "-3".into());
    write_raw(&path, safetensors::Dtype::F32, &f32_data, &[2], Some(meta));
    let err = Checkpoint::load(&path).unwrap_err();
    assert!(
        matches!(err, CheckpointError::BadMetadata { key: "step", .. }),
        "{err}"
    );

    // Not f32.
    let f64_data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_raw(
        &path,
        safetensors::Dtype::F64,
        &f64_data,
        &[2],
        Some(full_metadata()),
    );
    let err = Checkpoint::load(&path).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Dtype { name, .. } if name == "x"),
        "{err}"
    );
    assert!(err.to_string().contains("F64"), "{err}");
}

/// The one resume policy (adapt::resume): same model, and the settings a
/// caller states must be the checkpoint's; none stated adopts them.
#[test]
fn resume_policy_names_every_differing_setting() {
    use edgeclr::adapt::config::AdaptConfig;
    use edgeclr::adapt::resume::{self, ResumeError};
    use edgeclr::adapt::trainer::Trainer;
    let dir = scratch("resume-policy");
    let manifest = Manifest::load(&repo("models/mobilenet_v2/manifest.toml")).unwrap();
    let saved = AdaptConfig {
        loss: "supcon:tau=0.1".parse().expect("objective spec"),
        bank_size: 64,
        batch_size: 8,
        anchor: 0.01,
        ..AdaptConfig::default()
    };
    let trainer = Trainer::new(saved.clone(), manifest.outputs.embedding_dim, 4).unwrap();
    let path = dir.join("checkpoint.safetensors");
    trainer
        .checkpoint(&manifest, &saved, 1)
        .unwrap()
        .save(&path)
        .unwrap();

    // No settings stated: the checkpoint's are the run's.
    let adopted = resume::open(&path, &manifest, None).unwrap();
    assert_eq!(adopted.config, saved);
    // The same settings: accepted, and the trainer restores from it.
    let same = resume::open(&path, &manifest, Some(&saved)).unwrap();
    let mut restored = Trainer::new(same.config, manifest.outputs.embedding_dim, 4).unwrap();
    restored.restore_from(&same.checkpoint).unwrap();
    assert_eq!(restored.params, trainer.params);

    // Other settings: refused, each difference named with both values,
    // including settings stored only when not at their default (anchor set
    // there, train_tail set here).
    let other = AdaptConfig {
        lr: 0.01,
        anchor: 0.0,
        train_tail: Some(edgeclr::adapt::tail::TailChoice::Auto),
        ..saved.clone()
    };
    let err = resume::open(&path, &manifest, Some(&other)).unwrap_err();
    let ResumeError::SettingsDiffer { differences, .. } = &err else {
        panic!("expected SettingsDiffer, got {err}");
    };
    let named: Vec<&str> = differences.iter().map(|d| d.setting.as_str()).collect();
    assert_eq!(named, ["anchor", "lr", "train_tail"], "{err}");
    let message = err.to_string();
    assert!(
        message.contains("lr is 0.001 there, 0.01 here"),
        "{message}"
    );
    assert!(
        message.contains("train_tail is (default) there, \"auto\" here"),
        "{message}"
    );

    // Another model's checkpoint: refused whatever the settings.
    let mut wrong = manifest.clone();
    wrong.sha256 = "0".repeat(64);
    assert!(matches!(
        resume::open(&path, &wrong, None),
        Err(ResumeError::Checkpoint(CheckpointError::WrongModel { .. }))
    ));
    // No checkpoint at all: an I/O error naming the file, never a fresh run.
    let missing = resume::open(&dir.join("none.safetensors"), &manifest, Some(&saved));
    assert!(
        matches!(
            missing,
            Err(ResumeError::Checkpoint(CheckpointError::Io { .. }))
        ),
        "{missing:?}"
    );
    // Settings from an unknown edgeclr (an extra field) are unreadable, not
    // silently dropped.
    let mut foreign = Checkpoint::load(&path).unwrap();
    foreign.config_json = foreign
        .config_json
        .replacen('{', "{\"future_setting\":1,", 1);
    let foreign_path = dir.join("foreign.safetensors");
    foreign.save(&foreign_path).unwrap();
    let err = resume::open(&foreign_path, &manifest, None).unwrap_err();
    assert!(matches!(err, ResumeError::UnreadableConfig { .. }), "{err}");
    assert!(err.to_string().contains("future_setting"), "{err}");
}
