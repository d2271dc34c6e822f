//! The files of one run directory and the metrics log's crash rules.
//!
//! Why the log has rules: a run can be killed at any instant. Each epoch's
//! line is appended (and synced) *before* that epoch's checkpoint, so after a
//! kill the log holds either exactly the checkpoint's epochs or one line
//! more, never fewer; [`RunDir::trim_log`] drops the extra (or torn) line on
//! resume and the rerun epoch writes it again. `ci/check_crash` kills runs
//! at random moments and checks both.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SessionError;
use crate::plot::EpochPoint;

/// The checkpoint a run continues from.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The last healthy state of a run, kept for rollback on a collapse alarm.
pub const GOOD_CHECKPOINT: &str = "checkpoint.good.safetensors";
/// The best epoch on the validation split (with its accuracy).
pub const BEST_CHECKPOINT: &str = "checkpoint.best.safetensors";
/// One JSON line per epoch.
pub const METRICS: &str = "metrics.jsonl";
/// Why and where a run rolled back.
pub const COLLAPSE: &str = "collapse.json";
/// The exported adapted encoder (a manifest directory).
pub const EXPORT: &str = "model";

/// One line of metrics.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub step: u64,
    pub loss: f64,
    pub lr: f32,
    pub alignment: Option<f64>,
    pub uniformity: f64,
    pub effective_rank: f64,
    pub knn_acc: Option<f64>,
    pub seconds: f64,
    /// Bytes held by the view cache (0 when streaming).
    pub cache_bytes: usize,
}

impl EpochLog {
    /// The point the curves and the collapse alarm read.
    pub fn point(&self) -> EpochPoint {
        EpochPoint {
            epoch: self.epoch,
            loss: self.loss,
            alignment: self.alignment,
            uniformity: self.uniformity,
            effective_rank: self.effective_rank,
            knn_acc: self.knn_acc,
        }
    }
}

/// A run directory: where each of a run's files lives.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

fn io_error<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> SessionError + 'a {
    move |source| SessionError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

impl RunDir {
    /// `root`, created if missing.
    pub fn create(root: &Path) -> Result<Self, SessionError> {
        std::fs::create_dir_all(root).map_err(io_error(root, "creating"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Appends one epoch's line and syncs it to disk.
    pub fn append_log(&self, log: &EpochLog) -> Result<(), SessionError> {
        let path = self.file(METRICS);
        let mut line = serde_json::to_string(log).map_err(|e| SessionError::Json(e.to_string()))?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path, "opening"))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_error(&path, "writing"))
    }

    /// Removes the log of an earlier run in this directory (a fresh run).
    pub fn clear_log(&self) -> Result<(), SessionError> {
        let path = self.file(METRICS);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error(&path, "removing")(e))
            }
            _ => Ok(()),
        }
    }

    /// Keeps the first `epochs` lines of the metrics log (the epochs the
    /// checkpoint holds), rewritten atomically; a line written after the
    /// last checkpoint, complete or torn by a kill, is dropped and written
    /// again when that epoch reruns.
    pub fn trim_log(&self, epochs: usize) -> Result<(), SessionError> {
        let path = self.file(METRICS);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(&path, "reading")(e)),
        };
        let kept: String = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .take(epochs)
            .collect();
        if kept.len() != text.len() {
            crate::atomic::write_atomic(&path, |f| f.write_all(kept.as_bytes()))
                .map_err(io_error(&path, "trimming"))?;
        }
        Ok(())
    }

    /// The metrics lines of an earlier run, for the curves of a resumed one
    /// (unreadable lines are skipped: the curves are a picture, not state).
    pub fn history(&self) -> Vec<EpochPoint> {
        let Ok(text) = std::fs::read_to_string(self.file(METRICS)) else {
            return Vec::new();
        };
        let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some(EpochPoint {
                    epoch: num(&v, "epoch")? as usize,
                    loss: num(&v, "loss").unwrap_or(f64::NAN),
                    alignment: num(&v, "alignment"),
                    uniformity: num(&v, "uniformity")?,
                    effective_rank: num(&v, "effective_rank")?,
                    knn_acc: num(&v, "knn_acc"),
                })
            })
            .collect()
    }

    /// Writes `value` as pretty JSON to `root/name`, atomically.
    pub fn write_json(&self, name: &str, value: &serde_json::Value) -> Result<(), SessionError> {
        let path = self.file(name);
        let text =
            serde_json::to_string_pretty(value).map_err(|e| SessionError::Json(e.to_string()))?;
        crate::atomic::write_atomic(&path, |f| f.write_all(text.as_bytes()))
            .map_err(io_error(&path, "writing"))
    }
}
