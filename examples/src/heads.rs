//! What turns a frame into ranked labels: the model's own ImageNet logits, a
//! saved linear probe, or a k-NN head, all on the frozen encoder.

use std::path::Path;

use anyhow::{bail, Context, Result};
use edgeclr::embed::embed_images;
use edgeclr::probe::{KnnHead, LinearProbe};
use edgeclr::{Encoder, Manifest, Preprocessor};
use image::RgbImage;
use ndarray::{Array2, ArrayView2};

/// Softmax of one row of logits, computed stably.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The `k` best `(name, probability)` of `probs` (ties keep index order).
pub fn top_k(probs: &[f32], names: &[String], k: usize) -> Vec<(String, f32)> {
    let mut ranked: Vec<usize> = (0..probs.len()).collect();
    ranked.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    ranked
        .into_iter()
        .take(k)
        .map(|c| {
            let name = names
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("class {c}"));
            (name, probs[c])
        })
        .collect()
}

/// The k-NN decision as ranked `(name, vote share)`.
pub fn knn_top(head: &KnnHead, x: ArrayView2<f32>, k: usize) -> Result<Vec<(String, f32)>> {
    if head.classes().is_empty() {
        return Ok(Vec::new());
    }
    let p = head
        .predict(x)?
        .into_iter()
        .next()
        .context("no prediction")?;
    Ok(p.top
        .into_iter()
        .take(k)
        .map(|(c, s)| (head.classes()[c].clone(), s))
        .collect())
}

/// A classifier on top of the frozen encoder.
pub enum Head {
    /// The model's logits output and its class names.
    Logits(Vec<String>),
    Probe(LinearProbe),
    Knn(KnnHead),
}

impl Head {
    /// The head for the flags: `--probe FILE`, `--knn FILE`, or the logits.
    pub fn load(manifest: &Manifest, probe: Option<&Path>, knn: Option<&Path>) -> Result<Self> {
        match (probe, knn) {
            (Some(_), Some(_)) => bail!("give --probe or --knn, not both"),
            (Some(p), None) => {
                Ok(Head::Probe(LinearProbe::load(p).with_context(|| {
                    format!("loading the probe {}", p.display())
                })?))
            }
            (None, Some(k)) => {
                Ok(Head::Knn(KnnHead::load(k).with_context(|| {
                    format!("loading the k-NN head {}", k.display())
                })?))
            }
            (None, None) => {
                if manifest.outputs.logits.is_none() {
                    bail!(
                        "model '{}' has no logits output: pass --probe or --knn",
                        manifest.name
                    );
                }
                let names = manifest.class_names()?.unwrap_or_default();
                Ok(Head::Logits(names))
            }
        }
    }

    /// Whether the encoder must produce logits for this head.
    pub fn needs_logits(&self) -> bool {
        matches!(self, Head::Logits(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Head::Logits(n) => format!("model logits, {} classes", n.len()),
            Head::Probe(p) => format!("linear probe, {} classes", p.classes().len()),
            Head::Knn(k) => format!("k-NN head, {} classes", k.classes().len()),
        }
    }

    /// Ranked labels for one frame.
    pub fn classify(
        &self,
        encoder: &mut dyn Encoder,
        preprocessor: &Preprocessor,
        frame: &RgbImage,
        k: usize,
    ) -> Result<Vec<(String, f32)>> {
        let out = embed_images(encoder, preprocessor, std::slice::from_ref(frame))?;
        self.rank(&out.embedding, out.logits.as_ref(), k)
    }

    /// Ranked labels from an embedding row (and logits, for [`Head::Logits`]).
    pub fn rank(
        &self,
        embedding: &Array2<f32>,
        logits: Option<&Array2<f32>>,
        k: usize,
    ) -> Result<Vec<(String, f32)>> {
        match self {
            Head::Logits(names) => {
                let logits = logits.context("the model returned no logits")?;
                let row = logits.row(0);
                let probs = softmax(row.as_slice().context("logits not contiguous")?);
                Ok(top_k(&probs, names, k))
            }
            Head::Probe(p) => {
                let probs = p.predict_proba(embedding.view())?;
                let row = probs.row(0);
                Ok(top_k(
                    row.as_slice().context("not contiguous")?,
                    p.classes(),
                    k,
                ))
            }
            Head::Knn(h) => knn_top(h, embedding.view(), k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ranks_by_probability() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let p = softmax(&[1.0, 3.0, 2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let top = top_k(&p, &names, 2);
        assert_eq!(top[0].0, "b");
        assert_eq!(top[1].0, "c");
        assert!(top[0].1 > top[1].1);
    }
}
