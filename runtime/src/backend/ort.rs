//! The optional backend: ONNX Runtime, through the `ort` crate, behind the
//! `ort` cargo feature.
//!
//! Nothing is linked at build time (`ort`'s `load-dynamic`): the shared library
//! is opened when the first [`OrtEncoder`] loads, from [`OrtOptions::library`]
//! or else the `ORT_DYLIB_PATH` environment variable. There is deliberately no
//! search of the file system. Any ONNX Runtime ≥ 1.31 works, e.g. the
//! `capi/libonnxruntime.so.1.*` inside the `onnxruntime` Python wheel, or, on a
//! Jetson, the one inside NVIDIA's `onnxruntime-gpu` build for its JetPack.
//!
//! # One runtime per process
//! `ort` keeps process-wide globals: the library it opened, and one ONNX
//! Runtime environment (a second `ort::init().build()` fails, even after the
//! first is dropped). This module therefore creates the environment once, on
//! the first load, and every later [`OrtEncoder`] shares it. A later load that
//! names a *different* library file is refused with
//! [`ModelError::Unavailable`]; one process cannot switch libraries.
//! Sessions keep their own thread pools, sized by [`LoadOptions::threads`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ::ort::environment::Environment;
use ::ort::ep::{self, ExecutionProvider as _};
use ::ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session};
use ::ort::value::TensorRef;
use ::ort::{ErrorCode, LoadDynamicError};
use ndarray::ArrayView4;

use super::tract::check_against_manifest;
use super::{
    check_output, embedding_output, Encoder, EncoderOutput, ExecutionProvider, LoadOptions,
    ModelError, OrtOptions,
};
use crate::inspect::OnnxSummary;
use crate::manifest::Manifest;
use crate::onnx::{expose_output, parse_proto, read_verified};

const BACKEND: &str = "ort";

/// The environment variable naming the library, as `ort` itself reads it.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

/// The oldest ONNX Runtime this build can drive (the `ort` crate's `api-31`).
const MIN_MINOR: u32 = ::ort::MINOR_VERSION;

/// What to install, appended to every "library missing / unusable" error.
fn install_hint() -> String {
    format!(
        "install ONNX Runtime 1.{MIN_MINOR} or newer, e.g. `pip install onnxruntime`, whose \
         onnxruntime/capi/libonnxruntime.so.1.* is the file to use (print its folder with \
         `python3 -c 'import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))'`); \
         on a Jetson use NVIDIA's onnxruntime-gpu build for its JetPack"
    )
}

fn backend_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Backend {
        backend: BACKEND,
        message: e.to_string(),
    }
}

fn unavailable(message: String) -> ModelError {
    ModelError::Unavailable {
        backend: BACKEND,
        message,
    }
}

/// Where the library path came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Option,
    Env,
}

/// Picks the library: the option, else a non-empty `env` (`ORT_DYLIB_PATH`).
fn resolve_library(
    option: Option<&Path>,
    env: Option<std::ffi::OsString>,
) -> Result<(PathBuf, Source), ModelError> {
    if let Some(path) = option {
        return Ok((path.to_path_buf(), Source::Option));
    }
    match env {
        Some(value) if !value.is_empty() => Ok((PathBuf::from(value), Source::Env)),
        _ => Err(unavailable(format!(
            "no ONNX Runtime library given: set {ORT_DYLIB_PATH} to the path of a \
             libonnxruntime.so.1.* (or pass it as OrtOptions::library); {}",
            install_hint()
        ))),
    }
}

/// The process's one ONNX Runtime: which file it came from, and its environment.
struct Runtime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// Opens the library and creates the environment on first use; afterwards
/// returns the shared environment (refusing a different library file).
fn environment(options: &OrtOptions) -> Result<(Environment, PathBuf), ModelError> {
    let (path, source) =
        resolve_library(options.library.as_deref(), std::env::var_os(ORT_DYLIB_PATH))?;
    let from = match source {
        Source::Option => "given as the ONNX Runtime library".to_owned(),
        Source::Env => format!("named by {ORT_DYLIB_PATH}"),
    };
    if !path.is_file() {
        return Err(unavailable(format!(
            "{} ({from}) does not exist or is not a file; {}",
            path.display(),
            install_hint()
        )));
    }
    let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());

    let mut guard = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(runtime) = guard.as_ref() {
        if runtime.library != canonical {
            return Err(unavailable(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {} \
                 (one library per process)",
                runtime.library.display(),
                canonical.display()
            )));
        }
        return Ok((runtime.environment.clone(), runtime.library.clone()));
    }

    let builder = ::ort::init_from(&canonical).map_err(|e| {
        unavailable(match e {
            LoadDynamicError::BadVersion { version_str, path } => format!(
                "the ONNX Runtime library {} ({from}) is version {version_str}, but edgeclr's \
                 ort backend needs 1.{MIN_MINOR} or newer; {}",
                path.display(),
                install_hint()
            ),
            LoadDynamicError::MissingApi { path } => format!(
                "{} ({from}) is not an ONNX Runtime library (it has no OrtGetApiBase); {}",
                path.display(),
                install_hint()
            ),
            LoadDynamicError::Dlopen { error, path } => {
                let why = std::error::Error::source(&error)
                    .map_or_else(|| error.to_string(), |s| format!("{error}: {s}"));
                format!(
                    "cannot load ONNX Runtime from {} ({from}): {why}; {}",
                    path.display(),
                    install_hint()
                )
            }
            other => format!(
                "cannot load ONNX Runtime ({from}): {other}; {}",
                install_hint()
            ),
        })
    })?;
    let environment = builder
        .with_name("edgeclr")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            unavailable(format!(
                "cannot start ONNX Runtime from {}: {e}",
                canonical.display()
            ))
        })?;
    *guard = Some(Runtime {
        library: canonical.clone(),
        environment: environment.clone(),
    });
    Ok((environment, canonical))
}

/// Which of the execution providers edgeclr knows the loaded library offers.
fn offered_providers() -> Vec<&'static str> {
    let mut names = Vec::new();
    if ep::CPU::is_available().unwrap_or(false) {
        names.push("cpu");
    }
    if ep::CUDA::is_available().unwrap_or(false) {
        names.push("cuda");
    }
    if ep::TensorRT::is_available().unwrap_or(false) {
        names.push("tensorrt");
    }
    names
}

/// The EP list for a session, after checking the library was built with them.
/// Registration errors are errors (`error_on_failure`): a GPU that was asked
/// for never silently turns into the CPU.
fn execution_providers(
    choice: ExecutionProvider,
    library: &Path,
) -> Result<Vec<ep::ExecutionProviderDispatch>, ModelError> {
    let missing = |what: &str| {
        unavailable(format!(
            "the ONNX Runtime library {} has no {what} execution provider (it offers: {}); \
             use a GPU build of ONNX Runtime 1.{MIN_MINOR}+ (`pip install onnxruntime-gpu`, or on \
             a Jetson NVIDIA's onnxruntime-gpu build for its JetPack) and point {ORT_DYLIB_PATH} \
             at its capi/libonnxruntime.so.1.*, or choose the cpu execution provider",
            library.display(),
            offered_providers().join(", ")
        ))
    };
    let check = |available: ::ort::Result<bool>, what: &str| match available {
        Ok(true) => Ok(()),
        Ok(false) => Err(missing(what)),
        Err(e) => Err(backend_err(e)),
    };
    match choice {
        ExecutionProvider::Cpu => Ok(Vec::new()),
        ExecutionProvider::Cuda => {
            check(ep::CUDA::is_available(), "CUDA")?;
            Ok(vec![ep::CUDA::default().build().error_on_failure()])
        }
        ExecutionProvider::TensorRt => {
            check(ep::TensorRT::is_available(), "TensorRT")?;
            check(ep::CUDA::is_available(), "CUDA")?;
            Ok(vec![
                ep::TensorRT::default().build().error_on_failure(),
                ep::CUDA::default().build().error_on_failure(),
            ])
        }
    }
}

/// Turns a session-creation failure into the most specific [`ModelError`]:
/// an operator ONNX Runtime does not know becomes [`ModelError::UnsupportedOps`].
fn session_err<R>(e: ::ort::Error<R>, choice: ExecutionProvider) -> ModelError {
    let message = e.message().to_owned();
    // e.g. "Fatal error: com.example:FancyPool(-1) is not a registered function/op"
    if let Some((head, _)) = message.split_once(" is not a registered function/op") {
        let op = head.rsplit(' ').next().unwrap_or(head);
        let op = op.split('(').next().unwrap_or(op);
        return ModelError::UnsupportedOps(vec![op.to_owned()]);
    }
    if e.code() == ErrorCode::ExecutionProviderFailure || choice != ExecutionProvider::Cpu {
        return backend_err(format!(
            "creating the session with the {choice} execution provider: {message}"
        ));
    }
    backend_err(message)
}

/// An encoder run by ONNX Runtime (CPU, CUDA or TensorRT).
pub struct OrtEncoder {
    manifest: Manifest,
    session: Session,
    run_options: RunOptions<HasSelectedOutputs>,
    read_logits: bool,
    library: PathBuf,
    execution_provider: ExecutionProvider,
}

impl std::fmt::Debug for OrtEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEncoder")
            .field("model", &self.manifest.name)
            .field("library", &self.library)
            .field("execution_provider", &self.execution_provider)
            .finish()
    }
}

impl OrtEncoder {
    /// Verifies the model exactly as tract does (sha256, ONNX protobuf, inputs
    /// and outputs against the manifest), then opens ONNX Runtime (once per
    /// process, see the module docs) and creates a session with
    /// `options.threads` intra-op threads on the chosen execution provider.
    pub fn load(
        manifest: &Manifest,
        options: &LoadOptions,
        ort: &OrtOptions,
    ) -> Result<Self, ModelError> {
        let mut bytes = read_verified(manifest)?;
        let mut proto = parse_proto(&manifest.onnx, &bytes)?;
        if expose_output(&mut proto, &manifest.outputs.embedding)? {
            bytes = prost::Message::encode_to_vec(&proto);
        }
        check_against_manifest(&OnnxSummary::from_proto(&proto), manifest)?;
        drop(proto);

        let (environment, library) = environment(ort)?;
        let providers = execution_providers(ort.execution_provider, &library)?;
        let choice = ort.execution_provider;
        let mut builder = Session::builder(&environment)
            .map_err(backend_err)?
            .with_intra_threads(options.threads.max(1))
            .map_err(backend_err)?
            .with_inter_threads(1)
            .map_err(backend_err)?;
        if !providers.is_empty() {
            builder = builder
                .with_no_environment_execution_providers()
                .map_err(backend_err)?
                .with_execution_providers(providers)
                .map_err(|e| session_err(e, choice))?;
        }
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| session_err(e, choice))?;
        drop(bytes);

        if session.inputs().len() != 1 {
            return Err(ModelError::ManifestMismatch(
                "edgeclr encoders take exactly one input tensor".into(),
            ));
        }
        let read_logits = manifest.outputs.logits.is_some() && !options.embedding_only;
        let mut selector = OutputSelector::no_default().with(manifest.outputs.embedding.as_str());
        if read_logits {
            selector = selector.with(manifest.outputs.logits.as_deref().unwrap_or_default());
        }
        let run_options = RunOptions::new()
            .map_err(backend_err)?
            .with_outputs(selector);
        Ok(Self {
            manifest: manifest.clone(),
            session,
            run_options,
            read_logits,
            library,
            execution_provider: choice,
        })
    }

    /// The library file this process's ONNX Runtime was loaded from.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The execution provider the session was created with.
    pub fn execution_provider(&self) -> ExecutionProvider {
        self.execution_provider
    }

    /// ONNX Runtime's build description (version, commit, flags).
    pub fn runtime_info(&self) -> &'static str {
        ::ort::info()
    }
}

impl Encoder for OrtEncoder {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn run(&mut self, batch: ArrayView4<f32>) -> Result<EncoderOutput, ModelError> {
        let expected = &self.manifest.input.shape;
        if &batch.shape()[1..] != expected.as_slice() || batch.shape()[0] == 0 {
            return Err(ModelError::InputShape {
                got: batch.shape().to_vec(),
                expected: expected.clone(),
            });
        }
        let n = batch.shape()[0];
        let contiguous = batch.as_standard_layout();
        let input = TensorRef::from_array_view(&contiguous).map_err(backend_err)?;
        let outputs = self
            .session
            .run_with_options(::ort::inputs![input], &self.run_options)
            .map_err(backend_err)?;
        let view = |name: &str| {
            outputs
                .get(name)
                .ok_or_else(|| backend_err(format!("the session returned no output '{name}'")))?
                .try_extract_array::<f32>()
                .map_err(backend_err)
        };
        let outs = &self.manifest.outputs;
        let embedding = embedding_output(&self.manifest, view(&outs.embedding)?, n)?;
        let logits = match (&outs.logits, self.read_logits) {
            (Some(name), true) => {
                let data = view(name)?;
                let classes = outs
                    .num_classes
                    .unwrap_or(data.shape().last().copied().unwrap_or(0));
                Some(check_output(name, data, n, classes)?)
            }
            _ => None,
        };
        Ok(EncoderOutput { embedding, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_option_beats_environment() {
        let (path, source) =
            resolve_library(Some(Path::new("/a/lib.so")), Some("/b/lib.so".into())).unwrap();
        assert_eq!(
            (path.as_path(), source),
            (Path::new("/a/lib.so"), Source::Option)
        );
        let (path, source) = resolve_library(None, Some("/b/lib.so".into())).unwrap();
        assert_eq!(
            (path.as_path(), source),
            (Path::new("/b/lib.so"), Source::Env)
        );
    }

    #[test]
    fn no_library_is_a_clear_error() {
        for env in [None, Some(std::ffi::OsString::new())] {
            let err = resolve_library(None, env).unwrap_err();
            assert!(matches!(err, ModelError::Unavailable { .. }), "{err}");
            let text = err.to_string();
            for needle in [
                ORT_DYLIB_PATH,
                "OrtOptions::library",
                "pip install onnxruntime",
                "capi/libonnxruntime.so",
            ] {
                assert!(text.contains(needle), "'{needle}' missing from: {text}");
            }
        }
    }
}
