//! The bad-input corpus: every file in `runtime/tests/data/bad/` (made by
//! `runtime/tests/reference/make_bad_inputs.py`) is fed to the loader that
//! would meet it in the field, and each row names the exact error kind it must
//! produce. Rows run under `catch_unwind`, so a panic fails the test with the
//! file's name; the bombs (files that *declare* gigabytes) run a second time in
//! a child process whose address space is capped at 1 GiB, so a loader that
//! allocated what a header claims would fail there. `errors.rs` holds the
//! older rows (truncated PNG, wrong checksum, ...) and is not repeated here.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{repo, test_data};
use edgeclr::adapt::checkpoint::{Checkpoint, CheckpointError};
use edgeclr::adapt::params::Params;
use edgeclr::data::{decode_image, DataError, Dataset, DecodeLimits};
use edgeclr::manifest::ManifestError;
use edgeclr::preprocess::PreprocessError;
use edgeclr::probe::{KnnHead, LinearProbe, ProbeError};
use edgeclr::store::{EmbeddingSet, StoreError};
use edgeclr::{Encoder, LoadOptions, Manifest, ModelError, Preprocessor, TractEncoder};
use ndarray::{Array4, ArrayD};

fn bad(name: &str) -> PathBuf {
    test_data(&format!("bad/{name}"))
}

/// `Ok` when `result` is an error matching `pattern`, else what happened instead.
macro_rules! refused {
    ($result:expr, $pattern:pat $(if $guard:expr)?) => {
        match $result {
            Err($pattern) $(if $guard)? => Ok(()),
            Err(other) => Err(format!("wrong error: {other:?}")),
            Ok(_) => Err("accepted".to_string()),
        }
    };
}

/// Loads a model the way `edgeclr embed --model X.toml` does.
fn load_model(manifest: &str) -> Result<TractEncoder, ModelError> {
    let manifest =
        Manifest::load(&bad(manifest)).map_err(|e| ModelError::ManifestMismatch(e.to_string()))?;
    TractEncoder::load(&manifest, &LoadOptions::default())
}

fn decode(name: &str) -> Result<image::RgbImage, DataError> {
    decode_image(&bad(name), DecodeLimits::default())
}

fn summarize(name: &str) -> Result<edgeclr::inspect::OnnxSummary, ModelError> {
    let bytes = std::fs::read(bad(name)).expect("corpus file");
    // Through ModelError, as a backend reports it (the kinds are the same).
    edgeclr::inspect::summarize(&bad(name), &bytes).map_err(ModelError::from)
}

/// One broken input: the file (or files) it reads, whether it declares a huge
/// size (run again under the memory cap), and the check.
struct Row {
    files: &'static [&'static str],
    bomb: bool,
    check: fn() -> Result<(), String>,
}

const fn row(files: &'static [&'static str], check: fn() -> Result<(), String>) -> Row {
    Row {
        files,
        bomb: false,
        check,
    }
}

const fn bomb(files: &'static [&'static str], check: fn() -> Result<(), String>) -> Row {
    Row {
        files,
        bomb: true,
        check,
    }
}

const ROWS: &[Row] = &[
    // Images.
    row(&["truncated.jpg"], || {
        refused!(decode("truncated.jpg"), DataError::Decode { .. })
    }),
    row(&["empty.jpg"], || {
        refused!(decode("empty.jpg"), DataError::Decode { .. })
    }),
    bomb(&["bomb.png"], || {
        refused!(
            decode("bomb.png"),
            DataError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        )
    }),
    bomb(&["bomb.jpg"], || {
        refused!(
            decode("bomb.jpg"),
            DataError::TooLarge {
                width: 65000,
                height: 65000,
                ..
            }
        )
    }),
    bomb(&["thin.png"], || {
        let image = decode("thin.png").map_err(|e| format!("thin.png should decode: {e}"))?;
        let manifest = Manifest::load(&repo("models/mobilenet_v2")).map_err(|e| e.to_string())?;
        refused!(
            Preprocessor::new(&manifest).batch(&[image]),
            PreprocessError::ResizeTooLarge {
                width: 1,
                height: 60_000,
                ..
            }
        )
    }),
    // ONNX models.
    row(
        &["empty.onnx"],
        || refused!(summarize("empty.onnx"), ModelError::NotOnnx { message, .. } if message.contains("no graph")),
    ),
    bomb(&["declared_2gb.onnx", "declared_2gb.toml"], || {
        refused!(
            load_model("declared_2gb.toml"),
            ModelError::NotOnnx { message, .. } if message.contains("declares shape [536870912]")
        )
    }),
    bomb(
        &["external_2gb.onnx", "external_2gb.toml", "huge.bin"],
        || {
            refused!(
                load_model("external_2gb.toml"),
                ModelError::NotOnnx { message, .. } if message.contains("external file")
            )
        },
    ),
    // Found by the onnx_load fuzz target (a tract panic on a graph output no
    // node produces); the file is the fuzzer's artifact, not generated.
    row(&["fuzz_undefined_output.onnx"], || {
        refused!(
            summarize("fuzz_undefined_output.onnx"),
            ModelError::NotOnnx { message, .. } if message.contains("graph output 'embedding'")
        )
    }),
    // Found by the onnx_load fuzz target: a Flatten node without inputs makes
    // tract's shape inference index out of bounds; the panic is caught.
    row(
        &["fuzz_flatten_no_input.onnx", "fuzz_flatten_no_input.toml"],
        || {
            refused!(
                load_model("fuzz_flatten_no_input.toml"),
                ModelError::Backend { message, .. } if message.contains("internal assertion")
            )
        },
    ),
    bomb(&["raw_len_2gb.onnx"], || {
        refused!(summarize("raw_len_2gb.onnx"), ModelError::NotOnnx { .. })
    }),
    row(&["complex_init.onnx", "complex_init.toml"], || {
        refused!(
            load_model("complex_init.toml"),
            ModelError::NotOnnx { message, .. } if message.contains("Complex64")
        )
    }),
    // Numerical faults at run time.
    row(&["nan_model.onnx", "nan_model.toml"], || {
        let mut model = load_model("nan_model.toml").map_err(|e| e.to_string())?;
        refused!(
            model.run(Array4::<f32>::zeros((2, 3, 8, 8)).view()),
            ModelError::NonFiniteOutput(name) if name == "embedding"
        )
    }),
    // Manifests.
    row(&["negative_shape.toml"], || {
        refused!(
            Manifest::load(&bad("negative_shape.toml")),
            ManifestError::Parse { .. }
        )
    }),
    row(&["zero_crop.toml"], || {
        refused!(
            Manifest::load(&bad("zero_crop.toml")),
            ManifestError::Invalid { message, .. } if message.contains("crop")
        )
    }),
    row(&["nan_std.toml"], || {
        refused!(
            Manifest::load(&bad("nan_std.toml")),
            ManifestError::Invalid { message, .. } if message.contains("std")
        )
    }),
    row(&["unknown_key.toml"], || {
        refused!(
            Manifest::load(&bad("unknown_key.toml")),
            ManifestError::Parse { message, .. } if message.contains("colour")
        )
    }),
    row(&["binary.toml"], || {
        refused!(
            Manifest::load(&bad("binary.toml")),
            ManifestError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData
        )
    }),
    // Embedding arrays.
    row(&["emb_inf.npy"], || {
        refused!(
            EmbeddingSet::load(&bad("emb_inf.npy")),
            StoreError::NonFinite { row: 2, .. }
        )
    }),
    row(&["emb_f64.npy"], || {
        refused!(
            EmbeddingSet::load(&bad("emb_f64.npy")),
            StoreError::Npy { .. }
        )
    }),
    row(&["emb_3d.npy"], || {
        refused!(
            EmbeddingSet::load(&bad("emb_3d.npy")),
            StoreError::Npy { .. }
        )
    }),
    row(&["emb_truncated.npy"], || {
        refused!(
            EmbeddingSet::load(&bad("emb_truncated.npy")),
            StoreError::Npy { .. }
        )
    }),
    bomb(&["emb_huge_shape.npy"], || {
        refused!(
            EmbeddingSet::load(&bad("emb_huge_shape.npy")),
            StoreError::Npy { .. }
        )
    }),
    // Found by the npy fuzzer: a 45-deep `{{{…` header, on which the
    // header parser took minutes; refused before it is parsed.
    row(&["nested_header.npy"], || {
        refused!(
            EmbeddingSet::load(&bad("nested_header.npy")),
            StoreError::Npy { message, .. } if message.contains("nested brackets")
        )
    }),
    row(&["emb_neglabel.npy", "emb_neglabel.labels.npy"], || {
        refused!(
            EmbeddingSet::load(&bad("emb_neglabel.npy")),
            StoreError::Npy { message, .. } if message.contains("negative label -1")
        )
    }),
    // Checkpoints.
    row(&["ckpt_good.safetensors"], || {
        let ckpt = Checkpoint::load(&bad("ckpt_good.safetensors"))
            .map_err(|e| format!("the control fails: {e}"))?;
        (ckpt.step == 3 && ckpt.tensors.len() == 1)
            .then_some(())
            .ok_or_else(|| format!("{ckpt:?}"))
    }),
    row(&["ckpt_truncated.safetensors"], || {
        refused!(
            Checkpoint::load(&bad("ckpt_truncated.safetensors")),
            CheckpointError::Format { .. }
        )
    }),
    bomb(&["ckpt_huge_header.safetensors"], || {
        refused!(
            Checkpoint::load(&bad("ckpt_huge_header.safetensors")),
            CheckpointError::Format { .. }
        )
    }),
    row(&["ckpt_f64.safetensors"], || {
        refused!(
            Checkpoint::load(&bad("ckpt_f64.safetensors")),
            CheckpointError::Dtype { name, .. } if name == "w"
        )
    }),
    row(&["ckpt_no_meta.safetensors"], || {
        refused!(
            Checkpoint::load(&bad("ckpt_no_meta.safetensors")),
            CheckpointError::MissingMetadata { key: "format", .. }
        )
    }),
    row(&["ckpt_bad_step.safetensors"], || {
        refused!(
            Checkpoint::load(&bad("ckpt_bad_step.safetensors")),
            CheckpointError::BadMetadata { key: "step", .. }
        )
    }),
    row(&["ckpt_foreign.safetensors"], || {
        refused!(
            Checkpoint::load(&bad("ckpt_foreign.safetensors")),
            CheckpointError::BadMetadata { key: "format", .. }
        )
    }),
    // Linear-probe and k-NN heads (shape errors surface through serde as Json).
    row(&["probe_good.json"], || {
        LinearProbe::load(bad("probe_good.json"))
            .map(|_| ())
            .map_err(|e| format!("the control fails: {e}"))
    }),
    row(&["probe_ragged.json"], || {
        refused!(
            LinearProbe::load(bad("probe_ragged.json")),
            ProbeError::Json { source, .. } if source.to_string().contains("weight row 1 has 2 values")
        )
    }),
    row(&["probe_bias.json"], || {
        refused!(
            LinearProbe::load(bad("probe_bias.json")),
            ProbeError::Json { source, .. } if source.to_string().contains("1 biases")
        )
    }),
    row(&["probe_version.json"], || {
        refused!(
            LinearProbe::load(bad("probe_version.json")),
            ProbeError::UnsupportedVersion {
                found: Some(99),
                ..
            }
        )
    }),
    row(&["knn_good.json"], || {
        KnnHead::load(bad("knn_good.json"))
            .map(|_| ())
            .map_err(|e| format!("the control fails: {e}"))?;
        refused!(
            LinearProbe::load(bad("knn_good.json")),
            ProbeError::WrongFormat { .. }
        )
    }),
    row(&["knn_label_range.json"], || {
        refused!(
            KnnHead::load(bad("knn_label_range.json")),
            ProbeError::Json { source, .. } if source.to_string().contains("label 5")
        )
    }),
    row(&["knn_not_unit.json"], || {
        refused!(
            KnnHead::load(bad("knn_not_unit.json")),
            ProbeError::Json { source, .. } if source.to_string().contains("not unit-norm")
        )
    }),
    // IDX datasets.
    bomb(&["huge-images-idx3-ubyte"], || {
        refused!(
            Dataset::open(&bad("huge-images-idx3-ubyte"), None),
            DataError::BadIdx { message, .. } if message.contains("1 GiB")
        )
    }),
    row(&["rank0-images-idx3-ubyte"], || {
        refused!(
            Dataset::open(&bad("rank0-images-idx3-ubyte"), None),
            DataError::BadIdx { message, .. } if message.contains("rank 0")
        )
    }),
    row(&["empty-images-idx3-ubyte"], || {
        refused!(
            Dataset::open(&bad("empty-images-idx3-ubyte"), None),
            DataError::BadIdx { .. }
        )
    }),
    row(&["garbage-images-idx3-ubyte.gz"], || {
        refused!(
            Dataset::open(&bad("garbage-images-idx3-ubyte.gz"), None),
            DataError::BadIdx { .. }
        )
    }),
];

/// Files of the folder that `errors.rs` covers.
const COVERED_BY_ERRORS_RS: &[&str] = &[
    "emb_mismatch.labels.npy",
    "emb_mismatch.npy",
    "emb_nan.npy",
    "empty.png",
    "not_onnx.onnx",
    "not_onnx.toml",
    "text.png",
    "tiny.onnx",
    "tiny.toml",
    "truncated-images-idx3-ubyte",
    "truncated.png",
    "unsupported_op.onnx",
    "unsupported_op.toml",
    "wrong_magic-images-idx3-ubyte",
    "wrong_sha.toml",
    "wrong_shape.toml",
    "wrong_types.toml",
];

/// Set in the child process of [`bombs_fit_in_a_1gib_address_space`].
const BOMBS_ONLY: &str = "EDGECLR_BAD_INPUTS_BOMBS_ONLY";

/// Runs the rows (all, or only the bombs in the capped child), each under
/// `catch_unwind`, and returns the failures.
fn run_rows(bombs_only: bool) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for row in ROWS.iter().filter(|r| r.bomb || !bombs_only) {
        ran += 1;
        match std::panic::catch_unwind(row.check) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => failures.push(format!("{:?}: {message}", row.files)),
            Err(_) => failures.push(format!("{:?}: PANICKED", row.files)),
        }
    }
    (ran, failures)
}

#[test]
fn every_broken_input_gets_its_typed_error() {
    let bombs_only = std::env::var_os(BOMBS_ONLY).is_some();
    let (ran, failures) = run_rows(bombs_only);
    println!(
        "{ran} broken inputs tried, {} refused as expected",
        ran - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The corpus folder and the tables stay in sync: every file is some row's.
#[test]
fn every_file_in_the_corpus_has_a_row() {
    let dir = test_data("bad");
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("corpus folder") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let named = ROWS.iter().any(|r| r.files.contains(&name.as_str()))
            || COVERED_BY_ERRORS_RS.contains(&name.as_str());
        if !named {
            orphans.push(name);
        }
    }
    assert!(orphans.is_empty(), "files with no row: {orphans:?}");
}

/// Re-runs the bomb rows in a child whose virtual address space is capped at
/// 1 GiB (`ulimit -v`): each bomb declares 2 GiB or more, so a loader that
/// trusted a header would fail to allocate there instead of refusing cleanly.
#[test]
fn bombs_fit_in_a_1gib_address_space() {
    if std::env::var_os(BOMBS_ONLY).is_some() {
        return;
    }
    let exe: &Path = &std::env::current_exe().expect("test binary");
    // The test's path in the integration binary (its module, without the
    // crate name), for --exact.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let test = format!("{module}::every_broken_input_gets_its_typed_error");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -v 1048576 && exec "$0" --exact "$1" --nocapture --test-threads 1"#)
        .arg(exe)
        .arg(&test)
        .env(BOMBS_ONLY, "1")
        .output()
        .expect("spawn the capped child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the capped child failed ({}):\n{text}",
        out.status
    );
    assert!(text.contains("refused as expected"), "{text}");
}

/// A diverged step never reaches the disk: saving a checkpoint that holds NaN
/// or Inf is refused and the previous checkpoint stays byte-identical.
#[test]
fn a_non_finite_checkpoint_never_replaces_the_good_one() {
    let dir = std::env::temp_dir().join(format!("edgeclr-nan-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let good = Checkpoint::load(&bad("ckpt_good.safetensors")).unwrap();
    good.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    for poison in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut diverged = good.clone();
        diverged.step += 1;
        let mut tensors = Params::new();
        tensors.insert("w", ArrayD::from_elem(vec![2, 2], poison));
        diverged.tensors = tensors;
        let err = diverged.save(&path).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NonFinite(ref n) if n == "w"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before, "checkpoint changed");
        assert!(!dir.join("checkpoint.safetensors.tmp").exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// ONNX Runtime gets the same protection: the model is checked by
/// `parse_proto` before the runtime library is even opened, so these refusals
/// need no `libonnxruntime` on the machine.
#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_refuses_the_same_models_before_loading_them() {
    use edgeclr::backend::{load_encoder, Backend, OrtOptions};
    for (manifest, needle) in [
        ("declared_2gb.toml", "declares shape [536870912]"),
        ("external_2gb.toml", "external file"),
        ("complex_init.toml", "Complex64"),
    ] {
        let manifest = Manifest::load(&bad(manifest)).unwrap();
        let backend = Backend::Ort(OrtOptions::default());
        match load_encoder(&backend, &manifest, &LoadOptions::default()) {
            Err(ModelError::NotOnnx { message, .. }) => {
                assert!(message.contains(needle), "{message}")
            }
            Err(other) => panic!("{}: wrong error {other:?}", manifest.name),
            Ok(_) => panic!("{}: accepted", manifest.name),
        }
    }
}
