//! Cosine k-NN head that learns new classes on the device.
//!
//! Like Core ML's updatable nearest-neighbour classifier, the head *is* its
//! training data: enrolling a class stores a few L2-normalised embeddings
//! ("keys"), and prediction is a vote among the most similar keys. Adding or
//! forgetting a class therefore never touches the others and needs no
//! optimisation, which is what a few-shot, on-device setting wants.

use std::path::Path;

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::{
    accuracy_of, check_finite, check_labels, check_shape, check_unique, l2_norm, load_json,
    save_json_atomic, ProbeError, Result,
};
use crate::metrics::l2_normalize_rows;

const FORMAT: &str = "edgeclr-knn";
const VERSION: u32 = 1;

/// Queries scored per matrix product; bounds the similarity buffer to
/// `QUERY_BLOCK × keys` floats however large the batch.
const QUERY_BLOCK: usize = 256;

/// Stored keys must be unit vectors; allow for f32 rounding (and a little
/// hand-editing) when loading.
const UNIT_NORM_SLACK: f32 = 1e-3;

/// One k-NN decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnnPrediction {
    /// Winning class index (into [`KnnHead::classes`]).
    pub class: usize,
    /// The winner's share of the similarity-weighted votes, in (0, 1].
    pub score: f32,
    /// Every class that received votes with its share, best first.
    pub top: Vec<(usize, f32)>,
}

/// A cosine-similarity k-NN classifier over enrolled embeddings.
///
/// Prediction takes the `k` keys most similar to the query (cosine
/// similarity; equal similarities go to the earlier key) and lets each vote
/// for its class with weight `max(similarity, 0)`, so close keys count more
/// than marginal ones and anti-correlated keys not at all. If no neighbour
/// is positively similar, every neighbour votes with weight 1 instead. The
/// class with the most votes wins; equal votes go to the lower class index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "KnnFile", into = "KnnFile")]
pub struct KnnHead {
    k: usize,
    classes: Vec<String>,
    /// Unit-norm keys, one per row.
    keys: Array2<f32>,
    /// Class of each key.
    key_labels: Vec<usize>,
    /// Name of the encoder whose embeddings were enrolled; keys from another
    /// model's embedding space would be meaningless.
    pub model: Option<String>,
}

impl KnnHead {
    /// An empty head for `dim`-dimensional embeddings voting among `k` neighbours.
    pub fn new(dim: usize, k: usize) -> Result<Self> {
        if dim == 0 {
            return Err(ProbeError::InvalidConfig("dim must be positive".into()));
        }
        check_k(k)?;
        Ok(Self {
            k,
            classes: Vec::new(),
            keys: Array2::zeros((0, dim)),
            key_labels: Vec::new(),
            model: None,
        })
    }

    /// A head holding every row of `x` as a key of class `labels[i]`.
    /// Classes without rows are allowed and simply never predicted.
    pub fn from_labelled(
        x: ArrayView2<f32>,
        labels: &[usize],
        classes: Vec<String>,
        k: usize,
    ) -> Result<Self> {
        check_unique(&classes)?;
        let mut head = Self::new(x.ncols(), k)?;
        check_labels(labels, x.nrows(), classes.len())?;
        head.keys = unit_rows(x, x.ncols(), "training set")?;
        head.key_labels = labels.to_vec();
        head.classes = classes;
        Ok(head)
    }

    /// Adds `embeddings` as keys of `class`, creating the class (appended to
    /// [`classes`](Self::classes)) if it is new. Other classes are untouched.
    pub fn enroll(&mut self, class: &str, embeddings: ArrayView2<f32>) -> Result<()> {
        let keys = unit_rows(embeddings, self.dim(), "enrolment set")?;
        let existing = self.classes.iter().position(|c| c == class);
        let label = existing.unwrap_or(self.classes.len());
        self.keys
            .append(Axis(0), keys.view())
            .map_err(|e| ProbeError::Corrupt {
                format: FORMAT,
                reason: e.to_string(),
            })?;
        self.key_labels
            .extend(std::iter::repeat_n(label, keys.nrows()));
        if existing.is_none() {
            self.classes.push(class.to_string());
        }
        Ok(())
    }

    /// Removes `class` and all its keys, returning how many keys there were.
    /// Classes after it move down one index (names are the stable handle);
    /// the others' keys are untouched.
    pub fn forget(&mut self, class: &str) -> Result<usize> {
        let label = self.class_index(class)?;
        let kept: Vec<usize> = (0..self.key_labels.len())
            .filter(|&i| self.key_labels[i] != label)
            .collect();
        let removed = self.key_labels.len() - kept.len();
        self.keys = self.keys.select(Axis(0), &kept);
        self.key_labels = kept
            .iter()
            .map(|&i| match self.key_labels[i] {
                l if l > label => l - 1,
                l => l,
            })
            .collect();
        self.classes.remove(label);
        Ok(removed)
    }

    /// Class names; a class index is a position in this list.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Index of a class name.
    pub fn class_index(&self, name: &str) -> Result<usize> {
        self.classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| ProbeError::UnknownClass(name.to_string()))
    }

    /// Embedding width the head expects.
    pub fn dim(&self) -> usize {
        self.keys.ncols()
    }

    /// Number of neighbours that vote.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Total number of stored keys.
    pub fn num_keys(&self) -> usize {
        self.key_labels.len()
    }

    /// Number of keys per class, indexed like [`classes`](Self::classes).
    pub fn keys_per_class(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.key_labels {
            if let Some(c) = counts.get_mut(l) {
                *c += 1;
            }
        }
        counts
    }

    /// Classifies each row of `x` (see the type docs for the voting rule).
    pub fn predict(&self, x: ArrayView2<f32>) -> Result<Vec<KnnPrediction>> {
        if self.num_keys() == 0 {
            return Err(ProbeError::Empty("k-NN head (no enrolled keys)"));
        }
        let queries = unit_rows(x, self.dim(), "query")?;
        let mut out = Vec::with_capacity(queries.nrows());
        for block in queries.axis_chunks_iter(Axis(0), QUERY_BLOCK) {
            let sims = block.dot(&self.keys.t());
            out.extend(sims.outer_iter().map(|row| self.vote(row)));
        }
        Ok(out)
    }

    /// Share of rows whose predicted class equals the label.
    pub fn accuracy(&self, x: ArrayView2<f32>, labels: &[usize]) -> Result<f64> {
        check_labels(labels, x.nrows(), self.classes.len())?;
        let predicted: Vec<usize> = self.predict(x)?.iter().map(|p| p.class).collect();
        Ok(accuracy_of(&predicted, labels))
    }

    /// Writes the head as JSON, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save_json_atomic(path.as_ref(), self)
    }

    /// Reads a head written by [`Self::save`], rejecting other formats and versions.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        load_json(path.as_ref(), FORMAT, VERSION)
    }

    /// Weighted vote among the `k` keys most similar to one query.
    fn vote(&self, sims: ArrayView1<f32>) -> KnnPrediction {
        let mut nearest: Vec<usize> = (0..sims.len()).collect();
        let k = self.k.min(nearest.len());
        let more_similar = |a: &usize, b: &usize| sims[*b].total_cmp(&sims[*a]).then(a.cmp(b));
        if k < nearest.len() {
            nearest.select_nth_unstable_by(k - 1, more_similar);
            nearest.truncate(k);
        }

        let mut votes = vec![0.0f32; self.classes.len()];
        let weighted = nearest.iter().any(|&i| sims[i] > 0.0);
        for &i in &nearest {
            let weight = if weighted { sims[i].max(0.0) } else { 1.0 };
            votes[self.key_labels[i]] += weight;
        }
        let total: f32 = votes.iter().sum();
        let mut top: Vec<(usize, f32)> = votes
            .iter()
            .enumerate()
            .filter(|&(_, &v)| v > 0.0)
            .map(|(c, &v)| (c, v / total))
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let (class, score) = top.first().copied().unwrap_or((0, 0.0));
        KnnPrediction { class, score, top }
    }
}

fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(ProbeError::InvalidConfig("k must be at least 1".into()));
    }
    Ok(())
}

/// Validates embeddings and scales each row to unit length; zero rows are an
/// error because they have no direction to compare.
fn unit_rows(x: ArrayView2<f32>, dim: usize, what: &'static str) -> Result<Array2<f32>> {
    check_shape(&x, dim, what)?;
    check_finite(&x, what)?;
    if let Some(row) = x.outer_iter().position(|r| l2_norm(r) == 0.0) {
        return Err(ProbeError::ZeroNorm { what, row });
    }
    Ok(l2_normalize_rows(x))
}

/// On-disk form of [`KnnHead`].
#[derive(Serialize, Deserialize)]
struct KnnFile {
    format: String,
    version: u32,
    dim: usize,
    k: usize,
    classes: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    /// Class index of each key.
    labels: Vec<usize>,
    /// Unit-norm keys, `dim` values each.
    keys: Vec<Vec<f32>>,
}

impl From<KnnHead> for KnnFile {
    fn from(h: KnnHead) -> Self {
        Self {
            format: FORMAT.to_string(),
            version: VERSION,
            dim: h.dim(),
            k: h.k,
            keys: h.keys.outer_iter().map(|r| r.to_vec()).collect(),
            classes: h.classes,
            model: h.model,
            labels: h.key_labels,
        }
    }
}

impl TryFrom<KnnFile> for KnnHead {
    type Error = ProbeError;

    fn try_from(f: KnnFile) -> Result<Self> {
        let corrupt = |reason: String| ProbeError::Corrupt {
            format: FORMAT,
            reason,
        };
        if f.format != FORMAT || f.version != VERSION {
            return Err(corrupt(format!(
                "expected {FORMAT} version {VERSION}, found {} version {}",
                f.format, f.version
            )));
        }
        let mut head = Self::new(f.dim, f.k)?;
        check_unique(&f.classes)?;
        if f.labels.len() != f.keys.len() {
            return Err(corrupt(format!(
                "{} labels for {} keys",
                f.labels.len(),
                f.keys.len()
            )));
        }
        check_labels(&f.labels, f.keys.len(), f.classes.len())?;
        if let Some(i) = f.keys.iter().position(|r| r.len() != f.dim) {
            return Err(corrupt(format!(
                "key {i} has {} values, expected dim = {}",
                f.keys[i].len(),
                f.dim
            )));
        }
        let n = f.keys.len();
        let flat: Vec<f32> = f.keys.into_iter().flatten().collect();
        let keys = Array2::from_shape_vec((n, f.dim), flat).map_err(|e| corrupt(e.to_string()))?;
        check_finite(&keys.view(), "keys")?;
        if let Some(i) = keys
            .outer_iter()
            .position(|r| (l2_norm(r) - 1.0).abs() > UNIT_NORM_SLACK)
        {
            return Err(corrupt(format!("key {i} is not unit-norm")));
        }
        head.keys = keys;
        head.key_labels = f.labels;
        head.classes = f.classes;
        head.model = f.model;
        Ok(head)
    }
}
