//! A run of adaptation with a run directory: resume, the epoch loop, the
//! metrics log, the collapse alarm and rollback, the best epoch on
//! validation data, and the export — the same for every front-end.
//!
//! Why a session and not only a [`Trainer`]: a trainer knows how to take a
//! step; a *run* also has to survive being killed (checkpoint after every
//! epoch, the log never behind it, [`run_dir`]), refuse to continue another
//! run's checkpoint ([`crate::adapt::resume`]), stop before it ruins the
//! encoder (the collapse alarm) and never export a model worse than frozen
//! when it can check ([`val`]). Each front-end redoing that is how they came
//! to resume three different ways; here it is written once. Front-ends keep
//! what is theirs: flags, progress bars and printing (through
//! [`SessionEvents`]), and where the views come from ([`TrainViews`]).
//!
//! ```no_run
//! use edgeclr::adapt::config::AdaptConfig;
//! use edgeclr::adapt::session::{Session, SessionOptions, TrainViews};
//! use edgeclr::adapt::trainer::Trainer;
//! use edgeclr::adapt::views::{build_cache, Precision};
//! use edgeclr::data::Dataset;
//! use edgeclr::backend::{load_encoder, Backend};
//! use edgeclr::LoadOptions;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manifest = edgeclr::Manifest::load("models/mobilenet_v2/manifest.toml".as_ref())?;
//! let mut encoder = load_encoder(&Backend::Tract, &manifest, &LoadOptions::default())?;
//! let data = Dataset::open("data/fashion-mnist".as_ref(), Some("train"))?;
//! let config = AdaptConfig::default();
//! let steps = Trainer::steps_per_epoch(data.len(), config.batch_size);
//! let trainer = Trainer::new(config.clone(), manifest.outputs.embedding_dim, steps)?;
//! let options = SessionOptions::new("run".as_ref());
//! let mut session = Session::open(trainer, manifest, config, &options)?;
//! let cache = build_cache(&mut *encoder, &data, data.len(), 2, 0, Precision::F32, |_, _| {})?;
//! let summary = session.run(&mut TrainViews::Cache(cache), None, &mut ())?;
//! println!("exported {}", summary.exported.onnx.display());
//! # Ok(()) }
//! ```

pub mod run_dir;
pub mod val;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;

use self::run_dir::{EpochLog, RunDir, BEST_CHECKPOINT, CHECKPOINT, EXPORT, GOOD_CHECKPOINT};
use self::val::{Best, Scores, ValSet};
use self::watch::Watch;
use super::checkpoint::{Checkpoint, CheckpointError};
use super::collapse::{CollapseError, CollapseRule};
use super::config::AdaptConfig;
use super::export::{export_adapted, ExportError};
use super::resume::{self, ResumeError};
use super::trainer::{StepReport, TrainError, Trainer};
use super::views::{ViewCache, ViewMaker};
use crate::data::Dataset;
use crate::metrics::Diagnostics;
use crate::{Encoder, Manifest};

/// Why a session stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Collapse(#[from] CollapseError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// Reading images or drawing views (streaming, validation data).
    #[error(transparent)]
    Input(#[from] Box<crate::Error>),
    #[error("{what} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("encoding the metrics log: {0}")]
    Json(String),
    #[error("the validation data's train and test parts have different classes ({train:?} against {test:?})")]
    ValClasses {
        train: Vec<String>,
        test: Vec<String>,
    },
    #[error("the validation data has no labels (class subfolders, a CSV list with labels or IDX labels)")]
    ValUnlabelled,
    #[error("{} holds no validation accuracy; it was not written by this edgeclr", .0.display())]
    BestWithoutAccuracy(PathBuf),
}

impl From<crate::Error> for SessionError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Train(e) => Self::Train(e),
            other => Self::Input(Box::new(other)),
        }
    }
}

/// How a session treats its run directory.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Checkpoints, metrics.jsonl, plots and the exported model go here.
    pub run_dir: PathBuf,
    /// Continue from `run_dir/checkpoint.safetensors` under the one resume
    /// policy ([`resume::open`]); a missing checkpoint is an error.
    pub resume: bool,
    /// When the collapse alarm sounds.
    pub collapse: CollapseRule,
    /// On an alarm, restore the last healthy epoch, export it and stop
    /// (otherwise the alarm only warns).
    pub rollback: bool,
}

impl SessionOptions {
    /// A fresh run in `run_dir` with the default alarm and no rollback.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            resume: false,
            collapse: CollapseRule::default(),
            rollback: false,
        }
    }
}

/// What a session reports as it goes; a front-end prints it its own way.
/// Every method has an empty default (`()` ignores everything).
pub trait SessionEvents {
    /// Epoch `epoch` (1-based) starts; it takes `steps` steps.
    fn epoch_begins(&mut self, _epoch: usize, _steps: usize) {}
    /// A step was taken.
    fn step(&mut self, _report: &StepReport) {}
    /// An epoch ended and was logged.
    fn epoch_ends(&mut self, _log: &EpochLog) {}
    /// Something the user should see that does not stop the run (a collapse
    /// alarm without rollback, a plot that could not be drawn).
    fn warning(&mut self, _message: &str) {}
    /// What the session decided (rolled back, which epoch it exports).
    fn notice(&mut self, _message: &str) {}
}

impl SessionEvents for () {}

/// Where the training views come from.
pub enum TrainViews<'a> {
    /// Computed once ([`crate::adapt::views::build_cache`]), reused every epoch.
    Cache(ViewCache),
    /// Drawn fresh every step through the trunk (as from a camera); `diag`
    /// holds two fixed views of the first images for the per-epoch
    /// diagnostics. The maker is reseeded with `seed + epoch` each epoch.
    Stream {
        maker: Box<ViewMaker>,
        encoder: &'a mut dyn Encoder,
        data: &'a Dataset,
        /// Train on the first `images` images of `data`.
        images: usize,
        seed: u64,
        diag: ViewCache,
    },
}

impl TrainViews<'_> {
    /// The cache the diagnostics read.
    pub fn diag(&self) -> &ViewCache {
        match self {
            TrainViews::Cache(c) => c,
            TrainViews::Stream { diag, .. } => diag,
        }
    }

    /// Images an epoch goes over.
    pub fn images(&self) -> usize {
        match self {
            TrainViews::Cache(c) => c.len(),
            TrainViews::Stream { images, .. } => *images,
        }
    }

    /// Bytes held by training views (0 when streaming).
    pub fn cache_bytes(&self) -> usize {
        match self {
            TrainViews::Cache(c) => c.memory_bytes(),
            TrainViews::Stream { .. } => 0,
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The epoch at which a collapse alarm rolled the run back, if it did.
    pub rolled_back_at: Option<usize>,
    /// The best epoch on validation data (what was exported), with it.
    pub best: Option<Best>,
    /// Validation scores of the frozen and of the exported state.
    pub frozen: Option<Scores>,
    pub adapted: Option<Scores>,
    /// The exported model, as [`Manifest::load`] reads it.
    pub exported: Manifest,
}

/// One adaptation run in one run directory.
pub struct Session {
    trainer: Trainer,
    manifest: Manifest,
    config: AdaptConfig,
    dir: RunDir,
    collapse: CollapseRule,
    rollback: bool,
    /// The checkpoint's epoch and step when resumed.
    resumed: Option<(usize, u64)>,
}

impl Session {
    /// Starts a run with a fresh `trainer` (built with `config`), or, with
    /// `options.resume`, restores the run directory's checkpoint into it:
    /// the checkpoint must be `manifest`'s model and hold `config` (any
    /// difference is refused, naming each setting), and the metrics log is
    /// trimmed to the checkpoint's epochs.
    pub fn open(
        mut trainer: Trainer,
        manifest: Manifest,
        config: AdaptConfig,
        options: &SessionOptions,
    ) -> Result<Self, SessionError> {
        let dir = RunDir::create(&options.run_dir)?;
        let mut resumed = None;
        if options.resume {
            let ckpt = resume::open(&dir.file(CHECKPOINT), &manifest, Some(&config))?.checkpoint;
            trainer.restore_from(&ckpt)?;
            dir.trim_log(ckpt.epoch as usize)?;
            resumed = Some((ckpt.epoch as usize, ckpt.step));
        }
        Ok(Self {
            trainer,
            manifest,
            config,
            dir,
            collapse: options.collapse,
            rollback: options.rollback,
            resumed,
        })
    }

    /// The epoch and step the run resumed at (`None` for a fresh run).
    pub fn resumed(&self) -> Option<(usize, u64)> {
        self.resumed
    }

    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    pub fn run_dir(&self) -> &RunDir {
        &self.dir
    }

    /// Takes one step on two views of a batch (a front-end that is its own
    /// loop, e.g. a camera stream; [`Session::run`] is the epoch loop).
    pub fn step(
        &mut self,
        x1: ndarray::ArrayView2<f32>,
        x2: ndarray::ArrayView2<f32>,
    ) -> Result<StepReport, TrainError> {
        self.trainer.train_step(x1, x2)
    }

    /// Writes the trainer's state as the run's checkpoint (atomically), as
    /// of `epoch`, and returns its path.
    pub fn save_checkpoint(&self, epoch: u64) -> Result<PathBuf, SessionError> {
        let path = self.dir.file(CHECKPOINT);
        self.checkpoint(epoch)?.save(&path)?;
        Ok(path)
    }

    /// Trains from the first epoch not yet done to `config.epochs`, then
    /// exports: the best epoch on `val` when given (the frozen encoder,
    /// epoch 0, included), else the last (or, after a rollback, the last
    /// healthy) one, to `run_dir/model`.
    ///
    /// Crash rules (what `ci/check_crash` kills runs to check): each epoch's
    /// metrics line is written before its checkpoint, and the best file
    /// before the checkpoint too, so a kill anywhere leaves a state that
    /// `resume` continues to the same bytes as an uninterrupted run.
    pub fn run(
        &mut self,
        views: &mut TrainViews<'_>,
        val: Option<&ValSet>,
        events: &mut dyn SessionEvents,
    ) -> Result<RunSummary, SessionError> {
        let resume = self.resumed.is_some();
        let first_epoch = self.resumed.map_or(0, |(epoch, _)| epoch);
        if !resume {
            self.trainer.prefill_bank(views.diag().view(0).view())?;
            self.dir.clear_log()?;
        }
        let trainer = &self.trainer;
        let frozen = val
            .map(|v| v.scores(|x| Ok(trainer.frozen(x.view())?)))
            .transpose()?;
        let (d0, d1) = (views.diag().view(0), views.diag().view(1));
        let frozen_diag = Diagnostics::compute(
            self.trainer.frozen(d0.view())?.view(),
            Some(self.trainer.frozen(d1.view())?.view()),
        )?;
        let mut watch = Watch::new(
            &self.dir,
            self.collapse,
            self.rollback,
            &frozen_diag,
            frozen.map(|f| f.knn),
            resume,
        )?;
        let good_path = self.dir.file(GOOD_CHECKPOINT);
        if !resume || !good_path.exists() {
            self.checkpoint(first_epoch as u64)?.save(&good_path)?;
        }
        let best_path = self.dir.file(BEST_CHECKPOINT);
        let mut best = match frozen {
            None => None,
            Some(_) if resume && best_path.exists() => Some(Best::read(&best_path)?),
            Some(f) => {
                let best = Best::new(0, f.knn);
                best.save(self.checkpoint(0)?, &best_path)?;
                Some(best)
            }
        };
        let cache_bytes = views.cache_bytes();
        let steps = Trainer::steps_per_epoch(views.images(), self.config.batch_size);
        let mut rolled_back_at = None;
        for epoch in first_epoch..self.config.epochs {
            let t = Instant::now();
            events.epoch_begins(epoch + 1, steps);
            let mut last_lr = 0.0;
            let trained = self.train_epoch(views, epoch, &mut |r| {
                last_lr = r.lr;
                events.step(r);
            });
            let loss = match trained {
                Ok(loss) => loss,
                Err(SessionError::Train(e @ TrainError::NonFinite { .. }))
                    if watch.rolls_back() =>
                {
                    let why = [e.to_string()];
                    events.warning(&format!(
                        "collapse alarm at epoch {}: {}",
                        epoch + 1,
                        why[0]
                    ));
                    watch.roll_back(&mut self.trainer, epoch + 1, &why, events)?;
                    rolled_back_at = Some(epoch + 1);
                    break;
                }
                Err(e) => return Err(e),
            };
            let a1 = self.trainer.adapt(d0.view())?;
            let a2 = self.trainer.adapt(d1.view())?;
            let diag = Diagnostics::compute(a1.view(), Some(a2.view()))?;
            let knn = match val {
                Some(v) => Some(v.knn(
                    &self.trainer.adapt(v.train.view())?,
                    &self.trainer.adapt(v.test.view())?,
                )?),
                None => None,
            };
            let log = EpochLog {
                epoch: epoch + 1,
                step: self.trainer.step,
                loss,
                lr: last_lr,
                alignment: diag.alignment,
                uniformity: diag.uniformity,
                effective_rank: diag.effective_rank,
                knn_acc: knn,
                seconds: t.elapsed().as_secs_f64(),
                cache_bytes,
            };
            events.epoch_ends(&log);
            let symptoms = watch.epoch_end(log.point(), events);
            if !symptoms.is_empty() && watch.rolls_back() {
                watch.roll_back(&mut self.trainer, epoch + 1, &symptoms, events)?;
                rolled_back_at = Some(epoch + 1);
                break;
            }
            // The epoch's line goes to disk before its checkpoint: a kill
            // between the two leaves one line too many, which resume trims,
            // instead of a line lost for good.
            self.dir.append_log(&log)?;
            // Before the checkpoint too: a kill between the two reruns this
            // epoch, which finds the same accuracy and writes the same file.
            if let (Some(b), Some(k)) = (best.as_mut(), knn) {
                if b.beaten_by(k) {
                    *b = Best::new(epoch + 1, k);
                    b.save(self.checkpoint(b.epoch as u64)?, &best_path)?;
                }
            }
            let ckpt = self.checkpoint(epoch as u64 + 1)?;
            ckpt.save(&self.dir.file(CHECKPOINT))?;
            if symptoms.is_empty() {
                ckpt.save(&good_path)?;
            }
        }

        if let Some(b) = &best {
            // The best file holds that epoch's exact state (for the final
            // epoch too, when it was the best).
            self.trainer.restore_from(&Checkpoint::load(&best_path)?)?;
            events.notice(&format!(
                "exporting {} (val k-NN {:.2}%), the best on the validation test split{}",
                if b.epoch == 0 {
                    "the frozen encoder (epoch 0)".to_string()
                } else {
                    format!("epoch {}", b.epoch)
                },
                b.knn * 100.0,
                if b.epoch == 0 {
                    ": no epoch beat it"
                } else {
                    ""
                }
            ));
        }
        let adapted = self.trainer.adapt(d0.view())?;
        let after =
            Diagnostics::compute(adapted.view(), Some(self.trainer.adapt(d1.view())?.view()))?;
        match val {
            Some(v) => watch.finish(
                &after,
                self.trainer.adapt(v.test.view())?.view(),
                Some(&v.test_labels),
                &v.classes,
                events,
            ),
            None => watch.finish(&after, adapted.view(), None, &[], events),
        }
        let exported = self.export(&self.dir.file(EXPORT))?;
        let trainer = &self.trainer;
        let adapted_scores = val
            .map(|v| v.scores(|x| Ok(trainer.adapt(x.view())?)))
            .transpose()?;
        Ok(RunSummary {
            rolled_back_at,
            best,
            frozen,
            adapted: adapted_scores,
            exported,
        })
    }

    /// Writes the trainer's adapted encoder (adapter and trained layers) to
    /// `out_dir` as an ONNX model with its manifest, named
    /// `<model>-adapted`.
    pub fn export(&self, out_dir: &Path) -> Result<Manifest, SessionError> {
        let mut trained = self.trainer.params.with_prefix("adapter.");
        trained.extend(self.trainer.params.with_prefix(super::tail::TAIL_PREFIX));
        Ok(export_adapted(
            &self.manifest,
            &trained,
            out_dir,
            &format!("{}-adapted", self.manifest.name),
        )?)
    }

    fn checkpoint(&self, epoch: u64) -> Result<Checkpoint, SessionError> {
        Ok(self
            .trainer
            .checkpoint(&self.manifest, &self.config, epoch)?)
    }

    /// One epoch over the views; the mean loss.
    fn train_epoch(
        &mut self,
        views: &mut TrainViews<'_>,
        epoch: usize,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<f64, SessionError> {
        match views {
            TrainViews::Cache(cache) => Ok(self.trainer.train_epoch(cache, on_step)?),
            TrainViews::Stream {
                maker,
                encoder,
                data,
                images,
                seed,
                ..
            } => {
                maker.reseed(seed.wrapping_add(epoch as u64))?;
                let encoder = &mut **encoder;
                self.trainer.train_epoch_stream(
                    *images,
                    |rows: &[usize]| -> Result<(Array2<f32>, Array2<f32>), SessionError> {
                        let images = rows
                            .iter()
                            .map(|&i| data.image(i))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(crate::Error::from)?;
                        Ok((
                            maker.views(encoder, &images)?,
                            maker.views(encoder, &images)?,
                        ))
                    },
                    on_step,
                )
            }
        }
    }
}
