//! What a session does at the end of each epoch and of the run besides
//! training: the collapse alarm with rollback, and the PNG plots in the run
//! directory (curves.png every epoch, spectrum.png and pca.png at the end).

use ndarray::ArrayView2;

use super::run_dir::{RunDir, COLLAPSE, GOOD_CHECKPOINT};
use super::{SessionError, SessionEvents};
use crate::adapt::checkpoint::Checkpoint;
use crate::adapt::collapse::{CollapseMonitor, CollapseRule, EpochHealth};
use crate::adapt::trainer::Trainer;
use crate::metrics::Diagnostics;
use crate::plot::{self, EpochPoint};

/// Collapse monitor and plot history of one run.
pub(super) struct Watch {
    monitor: CollapseMonitor,
    rollback: bool,
    dir: RunDir,
    history: Vec<EpochPoint>,
    frozen_spectrum: Vec<f64>,
}

impl Watch {
    /// Starts watching a run whose embeddings before adaptation have
    /// diagnostics `frozen` (and k-NN accuracy `frozen_knn`); a resumed run
    /// picks up the curves from the run directory's metrics log.
    pub fn new(
        dir: &RunDir,
        rule: CollapseRule,
        rollback: bool,
        frozen: &Diagnostics,
        frozen_knn: Option<f64>,
        resume: bool,
    ) -> Result<Self, SessionError> {
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
            history.extend(dir.history());
        }
        Ok(Self {
            monitor,
            rollback,
            dir: dir.clone(),
            history,
            frozen_spectrum: frozen.spectrum.clone(),
        })
    }

    /// Records an epoch, redraws curves.png, and returns the alarm's
    /// messages (empty when the epoch is healthy), already reported as
    /// warnings.
    pub fn epoch_end(&mut self, point: EpochPoint, events: &mut dyn SessionEvents) -> Vec<String> {
        self.history.push(point);
        let curves = plot::curves(&self.history, plot::SIZE);
        self.draw("curves.png", curves, events);
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
            events.warning(&format!("collapse alarm at epoch {}: {s}", point.epoch));
        }
        symptoms
    }

    /// Whether an alarm restores the last good checkpoint and stops the run.
    pub fn rolls_back(&self) -> bool {
        self.rollback
    }

    /// Restores the last healthy state into `trainer` and the run's
    /// checkpoint, records why in collapse.json, and says so.
    pub fn roll_back(
        &self,
        trainer: &mut Trainer,
        epoch: usize,
        symptoms: &[String],
        events: &mut dyn SessionEvents,
    ) -> Result<(), SessionError> {
        let good_path = self.dir.file(GOOD_CHECKPOINT);
        let good = Checkpoint::load(&good_path)?;
        trainer.restore_from(&good)?;
        good.save(&self.dir.file(super::run_dir::CHECKPOINT))?;
        let record = serde_json::json!({
            "epoch": epoch,
            "symptoms": symptoms,
            "rolled_back_to_epoch": good.epoch,
            "rolled_back_to_step": good.step,
        });
        self.dir.write_json(COLLAPSE, &record)?;
        events.notice(&format!(
            "collapse at epoch {epoch}: rolled back to the last healthy state (epoch {}, step {}) \
             from {} and stopped; see {}. Try a lower --lr or another --loss.",
            good.epoch,
            good.step,
            good_path.display(),
            self.dir.file(COLLAPSE).display()
        ));
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
        events: &mut dyn SessionEvents,
    ) {
        let spectrum = plot::spectrum(&self.frozen_spectrum, &after.spectrum, plot::SIZE);
        self.draw("spectrum.png", spectrum, events);
        let title = if labels.is_some() {
            "adapted embeddings (test split), first two principal components"
        } else {
            "adapted embeddings (training views), first two principal components"
        };
        let pca = plot::pca_2d(points)
            .and_then(|p| plot::scatter(p.view(), labels, classes, title, plot::SIZE));
        self.draw("pca.png", pca, events);
    }

    /// A plot that cannot be drawn is a warning, never a failed run.
    fn draw(
        &self,
        name: &str,
        image: Result<image::RgbImage, plot::PlotError>,
        events: &mut dyn SessionEvents,
    ) {
        let path = self.dir.file(name);
        if let Err(e) = image.and_then(|im| plot::save_png(&im, &path)) {
            events.warning(&format!("{}: {e}", path.display()));
        }
    }
}
