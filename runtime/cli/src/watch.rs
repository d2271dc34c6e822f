//! What `edgeclr adapt` (and the demo) do at the end of each epoch and of the
//! run besides training: the collapse alarm with `--rollback`, and the PNG
//! plots in RUN_DIR (curves.png every epoch, spectrum.png and pca.png at the end).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use edgeclr::adapt::checkpoint::Checkpoint;
use edgeclr::adapt::collapse::{CollapseMonitor, CollapseRule, EpochHealth};
use edgeclr::adapt::trainer::Trainer;
use edgeclr::metrics::Diagnostics;
use edgeclr::plot::{self, EpochPoint};
use ndarray::ArrayView2;

/// The last healthy state of a run, kept for `--rollback`.
pub const GOOD_CHECKPOINT: &str = "checkpoint.good.safetensors";

/// Flags of the collapse alarm.
#[derive(Debug, Clone, clap::Args)]
pub struct CollapseArgs {
    /// On a collapse alarm, restore RUN_DIR/checkpoint.good.safetensors (the
    /// last healthy epoch), export that state and stop (instead of only warning).
    #[arg(long)]
    pub rollback: bool,
    /// Alarm when the effective rank falls below this fraction of its value
    /// before adaptation.
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub collapse_rank: f64,
    /// Alarm when uniformity rises above this fraction of its value before
    /// adaptation (it is ≤ 0; 0 means every embedding in one point).
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub collapse_uniformity: f64,
}

/// Collapse monitor and plot history of one run.
pub struct Watch {
    monitor: CollapseMonitor,
    rollback: bool,
    dir: PathBuf,
    history: Vec<EpochPoint>,
    frozen_spectrum: Vec<f64>,
}

/// The metrics.jsonl lines of an earlier run, for the curves of a resumed one.
fn read_history(path: &Path) -> Vec<EpochPoint> {
    let Ok(text) = std::fs::read_to_string(path) else {
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

impl Watch {
    /// Starts watching a run whose embeddings before adaptation have
    /// diagnostics `frozen` (and k-NN accuracy `frozen_knn`); a resumed run
    /// picks up the curves from RUN_DIR/metrics.jsonl.
    pub fn new(
        dir: &Path,
        args: &CollapseArgs,
        frozen: &Diagnostics,
        frozen_knn: Option<f64>,
        resume: bool,
    ) -> Result<Self> {
        let rule = CollapseRule {
            rank_fraction: args.collapse_rank,
            uniformity_fraction: args.collapse_uniformity,
        };
        let monitor = CollapseMonitor::new(rule, frozen.uniformity, frozen.effective_rank)?;
        let mut history = vec![EpochPoint {
            epoch: 0,
            loss: f64::NAN,
            alignment: frozen.alignment,
            uniformity: frozen.uniformity,
            effective_rank: frozen.effective_rank,
            knn_acc: frozen_knn,
        }];
        if resume {
            history.extend(read_history(&dir.join("metrics.jsonl")));
        }
        Ok(Self {
            monitor,
            rollback: args.rollback,
            dir: dir.to_path_buf(),
            history,
            frozen_spectrum: frozen.spectrum.clone(),
        })
    }

    pub fn good_path(&self) -> PathBuf {
        self.dir.join(GOOD_CHECKPOINT)
    }

    /// Records an epoch, redraws curves.png, and returns the alarm's
    /// messages (empty when the epoch is healthy), already printed as warnings.
    pub fn epoch_end(&mut self, point: EpochPoint) -> Vec<String> {
        self.history.push(point);
        self.draw("curves.png", plot::curves(&self.history, plot::SIZE));
        let symptoms: Vec<String> = self
            .monitor
            .check(&EpochHealth {
                loss: point.loss,
                uniformity: point.uniformity,
                effective_rank: point.effective_rank,
            })
            .iter()
            .map(ToString::to_string)
            .collect();
        for s in &symptoms {
            eprintln!("warning: collapse alarm at epoch {}: {s}", point.epoch);
        }
        symptoms
    }

    /// Whether an alarm restores the last good checkpoint and stops the run.
    pub fn rolls_back(&self) -> bool {
        self.rollback
    }

    /// Restores the last healthy state into `trainer` and RUN_DIR's
    /// checkpoint, records why in collapse.json, and says so.
    pub fn roll_back(
        &self,
        trainer: &mut Trainer,
        ckpt_path: &Path,
        epoch: usize,
        symptoms: &[String],
    ) -> Result<()> {
        let good_path = self.good_path();
        let good = Checkpoint::load(&good_path)
            .with_context(|| format!("--rollback: reading {}", good_path.display()))?;
        trainer.restore_from(&good)?;
        good.save(ckpt_path)?;
        let record = serde_json::json!({
            "epoch": epoch,
            "symptoms": symptoms,
            "rolled_back_to_epoch": good.epoch,
            "rolled_back_to_step": good.step,
        });
        let path = self.dir.join("collapse.json");
        edgeclr::atomic::write_atomic(&path, |f| {
            std::io::Write::write_all(f, serde_json::to_string_pretty(&record)?.as_bytes())
        })?;
        println!(
            "collapse at epoch {epoch}: rolled back to the last healthy state (epoch {}, step {}) \
             from {} and stopped; see {}. Try a lower --lr or another --loss.",
            good.epoch,
            good.step,
            good_path.display(),
            path.display()
        );
        Ok(())
    }

    /// Draws spectrum.png (before vs `after`) and pca.png of `points`
    /// (coloured by `labels` when given).
    pub fn finish(
        &self,
        after: &Diagnostics,
        points: ArrayView2<f32>,
        labels: Option<&[usize]>,
        classes: &[String],
    ) {
        self.draw(
            "spectrum.png",
            plot::spectrum(&self.frozen_spectrum, &after.spectrum, plot::SIZE),
        );
        let title = if labels.is_some() {
            "adapted embeddings (test split), first two principal components"
        } else {
            "adapted embeddings (training views), first two principal components"
        };
        let pca = plot::pca_2d(points)
            .and_then(|p| plot::scatter(p.view(), labels, classes, title, plot::SIZE));
        self.draw("pca.png", pca);
    }

    /// A plot that cannot be drawn is a warning, never a failed run.
    fn draw(&self, name: &str, image: Result<image::RgbImage, plot::PlotError>) {
        let path = self.dir.join(name);
        if let Err(e) = image.and_then(|im| plot::save_png(&im, &path)) {
            eprintln!("warning: {}: {e}", path.display());
        }
    }
}
