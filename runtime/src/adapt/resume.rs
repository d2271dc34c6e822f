//! The one resume policy every front-end follows (`edgeclr adapt --resume`,
//! `camera-adapt --resume`, `edgeclr_trainer_load` / `_resume` in the C ABI).
//!
//! Why one: a resumed run must continue the run the checkpoint holds. The
//! learning-rate schedule, the optimiser's moments, the bank and the
//! shuffling stream are only meaningful with the settings that made them, so
//! quietly training on with other settings (a different `--lr`, another
//! objective) gives a run nobody asked for, and adopting the checkpoint's
//! settings over the ones a user typed hides that they differ. The policy:
//!
//! - the checkpoint must be for the model loaded (its ONNX file's sha256);
//! - its stored configuration is the run's configuration;
//! - a caller that states a configuration (a CLI's flags, a C caller's JSON)
//!   must state that same one: any difference is refused, and the error names
//!   every differing setting with both values;
//! - a caller that states none (a C caller resuming from a file alone) gets
//!   the checkpoint's.
//!
//! ```no_run
//! use edgeclr::adapt::resume;
//! use edgeclr::adapt::config::AdaptConfig;
//! use edgeclr::adapt::trainer::Trainer;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manifest = edgeclr::Manifest::load("models/mobilenet_v2/manifest.toml".as_ref())?;
//! let flags = AdaptConfig::default();
//! let run = resume::open("run/checkpoint.safetensors".as_ref(), &manifest, Some(&flags))?;
//! let mut trainer = Trainer::new(run.config.clone(), manifest.outputs.embedding_dim, 100)?;
//! trainer.restore_from(&run.checkpoint)?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use super::checkpoint::{Checkpoint, CheckpointError};
use super::config::AdaptConfig;
use crate::Manifest;

/// Why a run cannot resume from a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: its stored settings are unreadable ({message}); it was not written by this edgeclr")]
    UnreadableConfig { path: PathBuf, message: String },
    #[error(
        "{path} was trained with other settings than this run's: {}; resume with the checkpoint's settings, or start a new run in another directory",
        .differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    SettingsDiffer {
        path: PathBuf,
        differences: Vec<Difference>,
    },
}

/// One setting that differs between a checkpoint and the run resuming it.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// The setting's name in [`AdaptConfig`] (the CLI flag with `_` for `-`).
    pub setting: String,
    /// Its value in the checkpoint (JSON; `(default)` for a setting stored
    /// only when it is not its default, e.g. `anchor`, `train_tail`).
    pub checkpoint: String,
    /// Its value in this run.
    pub requested: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {} there, {} here",
            self.setting, self.checkpoint, self.requested
        )
    }
}

/// A checkpoint accepted for resuming, with the configuration the run
/// continues under.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub checkpoint: Checkpoint,
    pub config: AdaptConfig,
}

/// Opens `path` to resume a run of `manifest`'s model under the policy in the
/// module docs: `requested` (when given) must equal the checkpoint's settings.
pub fn open(
    path: &Path,
    manifest: &Manifest,
    requested: Option<&AdaptConfig>,
) -> Result<Resumed, ResumeError> {
    let checkpoint = Checkpoint::load(path)?;
    checkpoint.check_model(manifest)?;
    let config = stored_config(path, &checkpoint)?;
    if let Some(requested) = requested {
        let differences = differences(&config, requested);
        if !differences.is_empty() {
            return Err(ResumeError::SettingsDiffer {
                path: path.to_path_buf(),
                differences,
            });
        }
    }
    Ok(Resumed { checkpoint, config })
}

/// The configuration a checkpoint stores.
pub fn stored_config(path: &Path, checkpoint: &Checkpoint) -> Result<AdaptConfig, ResumeError> {
    serde_json::from_str(&checkpoint.config_json).map_err(|e| ResumeError::UnreadableConfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every setting whose value differs between `saved` and `requested`, by
/// name in alphabetical order.
pub fn differences(saved: &AdaptConfig, requested: &AdaptConfig) -> Vec<Difference> {
    if saved == requested {
        return Vec::new();
    }
    // Both sides through serde, so every field (and any added later) is
    // compared and named the way the checkpoint stores it; settings that
    // serialise only when not at their default (`train_tail`, `anchor`, ...)
    // read as `(default)`.
    // Through the JSON text, not `to_value`: an f32 then reads as it is
    // written (`0.001`, not the f64 widening `0.0010000000474974513`).
    let fields = |c: &AdaptConfig| match serde_json::to_string(c)
        .and_then(|text| serde_json::from_str(&text))
    {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (fields(saved), fields(requested));
    let mut names: Vec<&String> = a.keys().collect();
    names.extend(b.keys().filter(|k| !a.contains_key(*k)));
    let show = |v: Option<&serde_json::Value>| {
        v.map_or_else(|| "(default)".to_string(), ToString::to_string)
    };
    names
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Difference {
            setting: k.clone(),
            checkpoint: show(a.get(k)),
            requested: show(b.get(k)),
        })
        .collect()
}
