//! Batched embedding of a dataset: decode → preprocess → encoder, a batch at a
//! time, with bad images skipped (and counted) or fatal, as the caller chooses.

use image::RgbImage;
use ndarray::{concatenate, s, Array2, Array4, Axis};

use crate::backend::{Encoder, EncoderOutput};
use crate::data::Dataset;
use crate::preprocess::Preprocessor;
use crate::{metrics, Error, Result};

/// How [`embed_dataset`] runs.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Images per encoder call.
    pub batch_size: usize,
    /// L2-normalise each embedding (cosine geometry, as the contrastive theory assumes).
    pub normalize: bool,
    /// Fail on the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Keep the logits output too (for classification).
    pub keep_logits: bool,
    /// Embed only the first `limit` images.
    pub limit: Option<usize>,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            normalize: false,
            strict: false,
            keep_logits: false,
            limit: None,
        }
    }
}

/// An image that could not be used, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub index: usize,
    pub source: String,
    pub reason: String,
}

/// Embeddings of a dataset, row `i` for dataset image `indices[i]`.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub embeddings: Array2<f32>,
    pub logits: Option<Array2<f32>>,
    /// Labels of the embedded images, when the dataset has them.
    pub labels: Option<Vec<usize>>,
    pub class_names: Option<Vec<String>>,
    pub indices: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

/// Runs a batch of already-decoded images through preprocessing and the encoder.
pub fn embed_images(
    encoder: &mut dyn Encoder,
    preprocessor: &Preprocessor,
    images: &[RgbImage],
) -> Result<EncoderOutput> {
    let batch: Array4<f32> = preprocessor.batch(images)?;
    Ok(encoder.run(batch.view())?)
}

/// Embeds every image of `dataset`. `progress` is called with the number of
/// images handled so far (embedded or skipped).
pub fn embed_dataset(
    encoder: &mut dyn Encoder,
    dataset: &Dataset,
    options: &EmbedOptions,
    mut progress: impl FnMut(usize),
) -> Result<Embeddings> {
    let preprocessor = Preprocessor::new(encoder.manifest());
    let batch_size = options.batch_size.max(1);
    let mut chunks = Vec::new();
    let mut logit_chunks = Vec::new();
    let mut indices = Vec::new();
    let mut skipped = Vec::new();
    let [a, b, c] = preprocessor.sample_shape();
    let total = options
        .limit
        .map_or(dataset.len(), |l| l.min(dataset.len()));
    let mut start = 0;
    while start < total {
        let end = (start + batch_size).min(total);
        let mut batch = Array4::<f32>::zeros((end - start, a, b, c));
        let mut filled = 0;
        for index in start..end {
            let outcome = dataset.image(index).map_err(Error::from).and_then(|img| {
                preprocessor
                    .write_into(&img, batch.slice_mut(s![filled, .., .., ..]))
                    .map_err(Error::from)
            });
            match outcome {
                Ok(()) => {
                    indices.push(index);
                    filled += 1;
                }
                Err(e) if !options.strict => skipped.push(Skipped {
                    index,
                    source: dataset.describe(index),
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        if filled > 0 {
            let out = encoder.run(batch.slice(s![..filled, .., .., ..]))?;
            chunks.push(out.embedding);
            if options.keep_logits {
                logit_chunks.extend(out.logits);
            }
        }
        progress(end);
        start = end;
    }
    let dim = encoder.manifest().outputs.embedding_dim;
    let stack = |parts: &[Array2<f32>], width: usize| -> Array2<f32> {
        if parts.is_empty() {
            Array2::zeros((0, width))
        } else {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            concatenate(Axis(0), &views).unwrap_or_else(|_| Array2::zeros((0, width)))
        }
    };
    let mut embeddings = stack(&chunks, dim);
    if options.normalize {
        embeddings = metrics::l2_normalize_rows(embeddings.view());
    }
    let logits = (options.keep_logits && !logit_chunks.is_empty())
        .then(|| stack(&logit_chunks, logit_chunks[0].ncols()));
    let labels = dataset
        .labels()
        .map(|all| indices.iter().map(|&i| all[i]).collect());
    Ok(Embeddings {
        embeddings,
        logits,
        labels,
        class_names: dataset.class_names(),
        indices,
        skipped,
    })
}
