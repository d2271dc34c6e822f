//! Pieces every subcommand shares: model selection, loading, progress bars.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use edgeclr::backend::{load_encoder, Backend, ExecutionProvider};
use edgeclr::{Encoder, LoadOptions, Manifest};
use indicatif::{ProgressBar, ProgressStyle};

/// The cores this process may use (its CPU affinity, cgroup quota), as
/// the standard library reports them; 1 when it cannot tell.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A count flag that must be at least 1 (threads, batch size): 0 is refused
/// by name rather than quietly read as 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("'{s}' is not a count: {e}")),
    }
}

/// The model every verb uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "models/mobilenet_v2";

/// Options naming and configuring the encoder.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model: a manifest.toml, a directory holding one, or an .onnx with a
    /// manifest beside it. Defaults to $EDGECLR_MODEL, then the shipped
    /// MobileNetV2 (models/mobilenet_v2).
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Threads for the backend (default: this machine's cores; a Jetson Nano
    /// or Pi 4 has 4). tract splits each batch between them; ONNX Runtime
    /// uses them inside ops.
    #[arg(long, default_value_t = default_threads(), value_name = "N", value_parser = at_least_one)]
    pub threads: usize,
    /// Inference backend: `tract` (pure Rust, built in) or `ort` (ONNX
    /// Runtime, loaded from a libonnxruntime.so; needs a build with
    /// `--features ort`).
    #[arg(long, default_value = "tract", value_name = "tract|ort")]
    pub backend: String,
    /// Execution provider for `--backend ort`: cpu, cuda or tensorrt (the
    /// library must be a GPU build; there is no silent CPU fallback).
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda|tensorrt")]
    pub ep: String,
    /// The libonnxruntime.so.1.* for `--backend ort` (default: $ORT_DYLIB_PATH).
    #[arg(long, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
}

impl ModelArgs {
    /// Resolves the model path: flag, environment, then the shipped default
    /// (relative to the working directory, else to the source tree).
    pub fn path(&self) -> PathBuf {
        resolve_model(self.model.as_deref())
    }

    pub fn manifest(&self) -> Result<Manifest> {
        let path = self.path();
        Manifest::load(&path).with_context(|| format!("loading the manifest of {}", path.display()))
    }

    /// The backend the flags select.
    pub fn backend(&self) -> Result<Backend> {
        let mut backend: Backend = self.backend.parse().map_err(anyhow::Error::msg)?;
        if let Backend::Ort(ort) = &mut backend {
            ort.library = self.ort_lib.clone();
            ort.execution_provider = self
                .ep
                .parse::<ExecutionProvider>()
                .map_err(anyhow::Error::msg)?;
        } else if self.ep != "cpu" || self.ort_lib.is_some() {
            anyhow::bail!("--ep and --ort-lib apply to --backend ort only");
        }
        Ok(backend)
    }

    pub fn load(&self, embedding_only: bool) -> Result<Box<dyn Encoder>> {
        let manifest = self.manifest()?;
        let backend = self.backend()?;
        let spinner = spinner(format!("loading {} with {}", manifest.name, backend.name()));
        let options = LoadOptions {
            threads: self.threads.max(1),
            embedding_only,
        };
        let encoder = load_encoder(&backend, &manifest, &options)
            .with_context(|| format!("loading model {}", manifest.onnx.display()))?;
        spinner.finish_and_clear();
        Ok(encoder)
    }
}

pub fn resolve_model(model: Option<&Path>) -> PathBuf {
    if let Some(m) = model {
        return m.to_path_buf();
    }
    if let Some(env) = std::env::var_os("EDGECLR_MODEL") {
        return PathBuf::from(env);
    }
    shipped(DEFAULT_MODEL)
}

/// A shipped file or directory (`models/…`, `data/…`): relative to the
/// working directory when it is there, else in the source tree this binary
/// was built from, so `edgeclr demo` works from any directory on the build
/// machine.
pub fn shipped(path: &str) -> PathBuf {
    let local = PathBuf::from(path);
    if local.exists() {
        local
    } else {
        source_root().join(path)
    }
}

/// The repository root: this crate lives in `runtime/cli/`, two levels
/// below it (one level was right before the CLI became its own crate, and
/// sent the fallback to `runtime/models/…`).
fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A progress bar over `len` items (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

pub fn spinner(msg: String) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(msg);
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

/// Class names for labelled embeddings: those stored with them, else "0", "1", ….
pub fn class_names(set: &edgeclr::store::EmbeddingSet, labels: &[usize]) -> Vec<String> {
    let n = labels.iter().copied().max().map_or(0, |m| m + 1);
    match &set.meta.class_names {
        Some(names) if names.len() >= n => names.clone(),
        _ => (0..n).map(|c| c.to_string()).collect(),
    }
}
