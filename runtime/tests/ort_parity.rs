//! The ONNX Runtime backend (`--features ort`) against tract and against the
//! Python onnxruntime references, plus its error paths.
//!
//! The library comes from `ORT_DYLIB_PATH`, else from the `onnxruntime` Python
//! wheel (`capi/libonnxruntime.so.1.*`). Without either, the tests that need it
//! print `SKIPPED: ...` on stderr and pass; CI installs the wheel.
#![cfg(feature = "ort")]

use std::io::Write;
use std::mem::discriminant;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{max_abs_diff, read_npy_f32, repo, test_data};
use edgeclr::backend::{load_encoder, Backend, ExecutionProvider, OrtEncoder, OrtOptions};
use edgeclr::{Encoder, LoadOptions, Manifest, ModelError, TractEncoder};
use ndarray::{s, Array4, ArrayD, Axis, Ix2, Ix4};

const PHOTOS: [&str; 4] = ["coffee", "chelsea", "astronaut", "rocket"];

/// Written straight to stderr, past the test harness's capture, so a skip is
/// visible in a plain `cargo test` run.
fn say(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// The ONNX Runtime library to test with: `ORT_DYLIB_PATH`, else the one in
/// the installed onnxruntime wheel.
fn find_library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let capi = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so.1"))
        })
        .collect();
    libs.sort();
    libs.pop()
}

fn library_or_skip(test: &str) -> Option<PathBuf> {
    let lib = find_library();
    if lib.is_none() {
        say(&format!(
            "SKIPPED: ort_parity::{test}: no ONNX Runtime library (set ORT_DYLIB_PATH or `pip install onnxruntime`)"
        ));
    }
    lib
}

fn cpu(library: &Path) -> OrtOptions {
    OrtOptions {
        library: Some(library.to_path_buf()),
        execution_provider: ExecutionProvider::Cpu,
    }
}

fn default_manifest() -> Manifest {
    Manifest::load(&repo("models/mobilenet_v2")).expect("default manifest")
}

fn bad(name: &str) -> Manifest {
    Manifest::load(&test_data(&format!("bad/{name}"))).expect("bad-model manifest parses")
}

/// The reference inputs: name → `[N, 3, 224, 224]`.
fn reference_inputs() -> Vec<(String, Array4<f32>)> {
    let mut inputs: Vec<(String, Array4<f32>)> = PHOTOS
        .iter()
        .map(|p| {
            let x = read_npy_f32(&format!("preprocess_{p}.npy")).insert_axis(Axis(0));
            (p.to_string(), x.into_dimensionality::<Ix4>().unwrap())
        })
        .collect();
    let fmnist = read_npy_f32("preprocess_fmnist_first2.npy");
    inputs.push((
        "fmnist_first2".into(),
        fmnist.into_dimensionality::<Ix4>().unwrap(),
    ));
    inputs
}

#[test]
fn embeddings_match_tract_and_onnxruntime_references() {
    let Some(lib) = library_or_skip("embeddings_match_tract_and_onnxruntime_references") else {
        return;
    };
    let manifest = default_manifest();
    let mut ort = OrtEncoder::load(&manifest, &LoadOptions::default(), &cpu(&lib)).unwrap();
    let mut tract = TractEncoder::load(&manifest, &LoadOptions::default()).unwrap();
    say(&format!(
        "ort library: {} ({})",
        ort.library().display(),
        ort.runtime_info()
    ));
    for (name, input) in reference_inputs() {
        let o = ort.run(input.view()).unwrap();
        let t = tract.run(input.view()).unwrap();
        let reference = read_npy_f32(&format!("embedding_ort_{name}.npy"))
            .into_dimensionality::<Ix2>()
            .unwrap();
        let vs_tract = max_abs_diff(o.embedding.view(), t.embedding.view());
        let vs_ref = max_abs_diff(o.embedding.view(), reference.view());
        let logits = o.logits.as_ref().expect("logits are read by default");
        let logits_tract = max_abs_diff(logits.view(), t.logits.as_ref().unwrap().view());
        let logits_ref = match name.as_str() {
            "fmnist_first2" => f32::NAN,
            _ => {
                let r: ArrayD<f32> = read_npy_f32(&format!("logits_ort_{name}.npy"));
                max_abs_diff(logits.view(), r.view())
            }
        };
        say(&format!(
            "parity {name:>14}: embedding max|ort-tract| {vs_tract:.3e}, max|ort-python| {vs_ref:.3e}; \
             logits max|ort-tract| {logits_tract:.3e}, max|ort-python| {logits_ref:.3e}"
        ));
        assert!(
            vs_tract < 1e-4,
            "{name}: ort and tract embeddings differ by {vs_tract}"
        );
        assert!(
            vs_ref < 1e-4,
            "{name}: ort differs from the Python onnxruntime reference by {vs_ref}"
        );
        assert!(
            logits_tract < 1e-3,
            "{name}: logits differ from tract by {logits_tract}"
        );
        assert!(
            logits_ref.is_nan() || logits_ref < 1e-3,
            "{name}: logits differ from Python by {logits_ref}"
        );
    }
}

#[test]
fn batches_threads_and_embedding_only() {
    let Some(lib) = library_or_skip("batches_threads_and_embedding_only") else {
        return;
    };
    let manifest = default_manifest();
    let options = LoadOptions {
        threads: 2,
        embedding_only: true,
    };
    let mut ort = OrtEncoder::load(&manifest, &options, &cpu(&lib)).unwrap();
    let input = read_npy_f32("preprocess_fmnist_first2.npy")
        .into_dimensionality::<Ix4>()
        .unwrap();
    let batched = ort.run(input.view()).unwrap();
    assert!(batched.logits.is_none(), "embedding_only skips the logits");
    assert_eq!(batched.embedding.dim(), (2, 1280));
    for i in 0..2 {
        // A sliced view (not the whole array) goes through as_standard_layout.
        let single = ort
            .run(input.slice(s![i..i + 1, .., .., ..]))
            .unwrap()
            .embedding;
        let d = max_abs_diff(single.view(), batched.embedding.slice(s![i..i + 1, ..]));
        assert!(d < 1e-4, "row {i}: single vs batched differ by {d}");
    }
    // A non-contiguous batch (every other sample of a doubled batch).
    let doubled = ndarray::concatenate(Axis(0), &[input.view(), input.view()]).unwrap();
    let strided = ort
        .run(doubled.slice(s![..;2, .., .., ..]))
        .unwrap()
        .embedding;
    let expected =
        ndarray::concatenate(Axis(0), &[batched.embedding.row(0).insert_axis(Axis(0)); 2]).unwrap();
    assert!(max_abs_diff(strided.view(), expected.view()) < 1e-4);

    let err = ort
        .run(Array4::<f32>::zeros((1, 3, 9, 8)).view())
        .unwrap_err();
    assert!(matches!(err, ModelError::InputShape { .. }), "{err}");
    let err = ort
        .run(Array4::<f32>::zeros((0, 3, 224, 224)).view())
        .unwrap_err();
    assert!(matches!(err, ModelError::InputShape { .. }), "{err}");
}

#[test]
fn load_encoder_dispatches_on_the_backend() {
    assert_eq!(
        "ort".parse::<Backend>().unwrap(),
        Backend::Ort(OrtOptions::default())
    );
    assert_eq!("tract".parse::<Backend>().unwrap(), Backend::Tract);
    assert!("onnx".parse::<Backend>().is_err());
    assert_eq!(
        "TensorRT".parse::<ExecutionProvider>().unwrap(),
        ExecutionProvider::TensorRt
    );
    assert_eq!(ExecutionProvider::Cuda.to_string(), "cuda");
    let Some(lib) = library_or_skip("load_encoder_dispatches_on_the_backend") else {
        return;
    };
    let manifest = bad("tiny.toml");
    let mut enc =
        load_encoder(&Backend::Ort(cpu(&lib)), &manifest, &LoadOptions::default()).unwrap();
    assert_eq!(enc.backend(), "ort");
    let out = enc.run(Array4::<f32>::ones((2, 3, 8, 8)).view()).unwrap();
    assert_eq!(out.embedding.dim(), (2, 3));
    assert!(out.embedding.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    let tract = load_encoder(&Backend::Tract, &manifest, &LoadOptions::default()).unwrap();
    assert_eq!(tract.backend(), "tract");
}

#[test]
fn missing_library_is_a_clear_error_not_a_panic() {
    let manifest = bad("tiny.toml");
    let missing = PathBuf::from("/nonexistent/onnxruntime/libonnxruntime.so.1");
    let options = OrtOptions {
        library: Some(missing),
        execution_provider: ExecutionProvider::Cpu,
    };
    let err = OrtEncoder::load(&manifest, &LoadOptions::default(), &options).unwrap_err();
    say(&format!("missing library → {err}"));
    assert!(
        matches!(err, ModelError::Unavailable { backend: "ort", .. }),
        "{err}"
    );
    for needle in [
        "/nonexistent/onnxruntime/libonnxruntime.so.1",
        "does not exist",
        "pip install onnxruntime",
    ] {
        assert!(
            err.to_string().contains(needle),
            "'{needle}' missing from: {err}"
        );
    }

    // Neither the option nor ORT_DYLIB_PATH (only checkable where CI has not set it).
    if std::env::var_os("ORT_DYLIB_PATH").is_none_or(|p| p.is_empty()) {
        let err = OrtEncoder::load(&manifest, &LoadOptions::default(), &OrtOptions::default())
            .unwrap_err();
        say(&format!("no library → {err}"));
        assert!(matches!(err, ModelError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("ORT_DYLIB_PATH"), "{err}");
    }
}

/// ONNX Runtime is loaded once per process, so tests that need the *first*
/// load to fail run their body in a fresh copy of this test binary.
/// Returns true in that child, where the caller runs the body.
fn in_fresh_process(test: &str) -> bool {
    const CHILD: &str = "EDGECLR_ORT_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    // The test's path in the integration binary: its module (without the
    // crate name), then its name; `--exact` runs nothing on a bare name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let path = format!("{module}::{test}");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([&path, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("re-run the test binary");
    say(&String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{test} failed in its own process:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 passed"),
        "{path} did not run in its own process:\n{stdout}"
    );
    false
}

#[test]
fn a_file_that_is_not_a_library_is_refused_and_a_good_one_still_loads() {
    if !in_fresh_process("a_file_that_is_not_a_library_is_refused_and_a_good_one_still_loads") {
        return;
    }
    let manifest = bad("tiny.toml");
    let options = OrtOptions {
        library: Some(test_data("bad/tiny.onnx")),
        execution_provider: ExecutionProvider::Cpu,
    };
    let err = OrtEncoder::load(&manifest, &LoadOptions::default(), &options).unwrap_err();
    say(&format!("not a library (fresh process) → {err}"));
    assert!(matches!(err, ModelError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot load ONNX Runtime"),
        "{err}"
    );
    let Some(lib) =
        library_or_skip("a_file_that_is_not_a_library_is_refused_and_a_good_one_still_loads")
    else {
        return;
    };
    OrtEncoder::load(&manifest, &LoadOptions::default(), &cpu(&lib))
        .expect("a failed load does not poison the process");
}

/// Set EDGECLR_TEST_OLD_ORT to a libonnxruntime older than 1.31 (e.g. from
/// `pip download onnxruntime==1.20.1`) to check the too-old message.
#[test]
fn too_old_library_says_what_to_install() {
    let Some(old) = std::env::var_os("EDGECLR_TEST_OLD_ORT").map(PathBuf::from) else {
        say("SKIPPED: ort_parity::too_old_library_says_what_to_install (set EDGECLR_TEST_OLD_ORT to an ONNX Runtime < 1.31)");
        return;
    };
    if !in_fresh_process("too_old_library_says_what_to_install") {
        return;
    }
    let options = OrtOptions {
        library: Some(old),
        execution_provider: ExecutionProvider::Cpu,
    };
    let err = OrtEncoder::load(&bad("tiny.toml"), &LoadOptions::default(), &options).unwrap_err();
    say(&format!("too old (fresh process) → {err}"));
    assert!(matches!(err, ModelError::Unavailable { .. }), "{err}");
    for needle in ["is version 1.", "needs 1.", "pip install onnxruntime"] {
        assert!(
            err.to_string().contains(needle),
            "'{needle}' missing from: {err}"
        );
    }
}

#[test]
fn gpu_provider_on_a_cpu_only_library_is_a_clear_error() {
    let Some(lib) = library_or_skip("gpu_provider_on_a_cpu_only_library_is_a_clear_error") else {
        return;
    };
    let manifest = bad("tiny.toml");
    for (ep, what) in [
        (ExecutionProvider::Cuda, "CUDA"),
        (ExecutionProvider::TensorRt, "TensorRT"),
    ] {
        let options = OrtOptions {
            library: Some(lib.clone()),
            execution_provider: ep,
        };
        match OrtEncoder::load(&manifest, &LoadOptions::default(), &options) {
            Ok(_) => say(&format!(
                "note: {} offers {what} and it registered; nothing to refuse",
                lib.display()
            )),
            Err(err @ ModelError::Unavailable { .. }) => {
                say(&format!("{ep} on this library → {err}"));
                for needle in [what, "onnxruntime-gpu", "execution provider"] {
                    assert!(
                        err.to_string().contains(needle),
                        "'{needle}' missing from: {err}"
                    );
                }
            }
            // A GPU build on a machine whose GPU/driver is unusable: still an error naming the EP.
            Err(err) => {
                say(&format!("{ep} on this library → {err}"));
                assert!(err.to_string().contains(&ep.to_string()), "{err}");
            }
        }
    }
}

#[test]
fn bad_models_give_the_same_errors_as_tract() {
    // These are refused before ONNX Runtime is touched, so no library is needed.
    let library = find_library();
    for name in ["wrong_sha.toml", "not_onnx.toml", "wrong_shape.toml"] {
        let manifest = bad(name);
        let tract = TractEncoder::load(&manifest, &LoadOptions::default()).unwrap_err();
        let options = OrtOptions {
            library: library.clone(),
            execution_provider: ExecutionProvider::Cpu,
        };
        let ort = OrtEncoder::load(&manifest, &LoadOptions::default(), &options).unwrap_err();
        say(&format!("{name}: ort → {ort}"));
        assert_eq!(
            discriminant(&ort),
            discriminant(&tract),
            "{name}: ort says '{ort}', tract says '{tract}'"
        );
        assert_eq!(ort.to_string(), tract.to_string(), "{name}");
    }
    let Some(lib) = library_or_skip("bad_models_give_the_same_errors_as_tract (unsupported_op)")
    else {
        return;
    };
    let err = OrtEncoder::load(
        &bad("unsupported_op.toml"),
        &LoadOptions::default(),
        &cpu(&lib),
    )
    .unwrap_err();
    say(&format!("unsupported_op.toml: ort → {err}"));
    assert!(matches!(err, ModelError::UnsupportedOps(_)), "{err}");
    assert!(err.to_string().contains("FancyPool"), "{err}");
}
