//! Labelled evaluation data a run never trains on, and the best epoch on it.
//!
//! Why the session keeps the best epoch: adaptation can make an encoder
//! worse (long self-supervised runs drift). With labelled data to check, the
//! frozen encoder is scored first (epoch 0), every epoch is scored, and the
//! best one — possibly epoch 0 — is what gets exported, so a checked run
//! never exports a model worse than frozen on that data.

use std::path::Path;

use ndarray::Array2;

use super::SessionError;
use crate::adapt::checkpoint::Checkpoint;
use crate::data::Dataset;
use crate::embed::{embed_dataset, EmbedOptions};
use crate::probe::{KnnHead, LinearProbe, LinearProbeConfig};
use crate::Encoder;

/// Neighbours of the validation k-NN head (the demo's and the README's k).
pub const VAL_K: usize = 20;

/// Frozen embeddings of a labelled train split (the heads are fitted on it)
/// and a test split (they are scored on it).
#[derive(Debug, Clone)]
pub struct ValSet {
    pub train: Array2<f32>,
    pub train_labels: Vec<usize>,
    pub test: Array2<f32>,
    pub test_labels: Vec<usize>,
    pub classes: Vec<String>,
}

/// k-NN and linear-probe accuracy of one encoder state on a [`ValSet`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub knn: f64,
    pub probe: f64,
}

impl ValSet {
    /// Embeds `train` and `test` with `encoder` (every image must read);
    /// `progress(done)` counts the images of both parts, train first.
    pub fn embed(
        encoder: &mut dyn Encoder,
        train: &Dataset,
        test: &Dataset,
        mut progress: impl FnMut(usize),
    ) -> Result<Self, SessionError> {
        if train.class_names() != test.class_names() {
            return Err(SessionError::ValClasses {
                train: train.class_names().unwrap_or_default(),
                test: test.class_names().unwrap_or_default(),
            });
        }
        let mut split = |before: usize, data: &Dataset| {
            let out = embed_dataset(
                encoder,
                data,
                &EmbedOptions {
                    strict: true,
                    ..EmbedOptions::default()
                },
                |n| progress(before + n),
            )?;
            let labels = out.labels.ok_or(SessionError::ValUnlabelled)?;
            Ok::<_, SessionError>((out.embeddings, labels, out.class_names.unwrap_or_default()))
        };
        let (train_rows, train_labels, classes) = split(0, train)?;
        let (test, test_labels, _) = split(train.len(), test)?;
        Ok(Self {
            train: train_rows,
            train_labels,
            test,
            test_labels,
            classes,
        })
    }

    /// Accuracy of a cosine k-NN head (k = [`VAL_K`]) fitted on `train`
    /// (this set's train split as some encoder state embeds it), scored on `test`.
    pub fn knn(&self, train: &Array2<f32>, test: &Array2<f32>) -> Result<f64, SessionError> {
        let head = KnnHead::from_labelled(
            train.view(),
            &self.train_labels,
            self.classes.clone(),
            VAL_K,
        )?;
        Ok(head.accuracy(test.view(), &self.test_labels)?)
    }

    /// Accuracy of a linear probe (default settings), as [`ValSet::knn`].
    pub fn probe(&self, train: &Array2<f32>, test: &Array2<f32>) -> Result<f64, SessionError> {
        let (probe, _) = LinearProbe::fit(
            train.view(),
            &self.train_labels,
            self.classes.clone(),
            &LinearProbeConfig::default(),
        )?;
        Ok(probe.accuracy(test.view(), &self.test_labels)?)
    }

    /// Both scores of `embed` (the frozen or the adapted map).
    pub fn scores(
        &self,
        mut embed: impl FnMut(&Array2<f32>) -> Result<Array2<f32>, SessionError>,
    ) -> Result<Scores, SessionError> {
        let (train, test) = (embed(&self.train)?, embed(&self.test)?);
        Ok(Scores {
            knn: self.knn(&train, &test)?,
            probe: self.probe(&train, &test)?,
        })
    }
}

/// The best epoch on the validation split so far and its k-NN accuracy,
/// kept as `checkpoint.best.safetensors` (the accuracy as its `val.knn_acc`
/// tensor, so one atomic file holds both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Best {
    pub epoch: usize,
    pub knn: f64,
}

const BEST_KNN: &str = "val.knn_acc";

impl Best {
    /// The accuracy is kept at the f32 precision it is stored in, so a
    /// resumed run compares the next epochs against the same number.
    pub fn new(epoch: usize, knn: f64) -> Self {
        Self {
            epoch,
            knn: f64::from(knn as f32),
        }
    }

    /// Whether `knn` (at the stored precision) beats this one.
    pub fn beaten_by(&self, knn: f64) -> bool {
        f64::from(knn as f32) > self.knn
    }

    /// Writes `ckpt` (this epoch's state) with the accuracy beside it.
    pub(super) fn save(&self, mut ckpt: Checkpoint, path: &Path) -> Result<(), SessionError> {
        ckpt.tensors.insert(
            BEST_KNN,
            ndarray::ArrayD::from_elem(vec![1], self.knn as f32),
        );
        Ok(ckpt.save(path)?)
    }

    pub(super) fn read(path: &Path) -> Result<Self, SessionError> {
        let ckpt = Checkpoint::load(path)?;
        let knn = ckpt
            .tensors
            .get(BEST_KNN)
            .map_err(|_| SessionError::BestWithoutAccuracy(path.to_path_buf()))?;
        let knn = knn.iter().next().copied().unwrap_or(f32::NAN);
        Ok(Self::new(ckpt.epoch as usize, f64::from(knn)))
    }
}
