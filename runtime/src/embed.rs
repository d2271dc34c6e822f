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
    /// Embed only this shard of them (after `limit`).
    pub shard: Option<Shard>,
}

/// One of `count` equal, contiguous parts of a dataset, so that `count`
/// processes (or machines) split one embedding job and their outputs,
/// concatenated in shard order, are exactly the unsharded output.
///
/// Written `I/N` with `I` counted from 1, as test runners shard:
///
/// ```
/// use edgeclr::embed::Shard;
///
/// let shard: Shard = "2/3".parse().unwrap();
/// assert_eq!(shard.range(10), 3..6);
/// let all: Vec<usize> = (1..=3)
///     .flat_map(|i| format!("{i}/3").parse::<Shard>().unwrap().range(10))
///     .collect();
/// assert_eq!(all, (0..10).collect::<Vec<_>>());
/// assert!("0/3".parse::<Shard>().is_err());
/// assert!("4/3".parse::<Shard>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// From 0.
    index: usize,
    count: usize,
}

impl Shard {
    /// Shard `index` (from 0) of `count`; `None` when out of range.
    pub fn new(index: usize, count: usize) -> Option<Self> {
        (index < count).then_some(Self { index, count })
    }

    /// The dataset indices of this shard of `len` images: shard `i` holds
    /// `i·len/N .. (i+1)·len/N`, so sizes differ by at most one.
    pub fn range(&self, len: usize) -> std::ops::Range<usize> {
        let bound = |i: usize| (i as u128 * len as u128 / self.count as u128) as usize;
        bound(self.index)..bound(self.index + 1)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("shard '{s}' is not I/N with 1 <= I <= N (e.g. 1/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i: usize = i.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if i == 0 || n == 0 {
            return Err(bad());
        }
        Shard::new(i - 1, n).ok_or_else(bad)
    }
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            normalize: false,
            strict: false,
            keep_logits: false,
            limit: None,
            shard: None,
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

/// One batch, decoded and preprocessed: rows `..filled` of `pixels` hold
/// dataset images `indices`; the images that could not be used are in `skipped`.
struct Prepared {
    pixels: Array4<f32>,
    filled: usize,
    indices: Vec<usize>,
    skipped: Vec<Skipped>,
    end: usize,
}

/// Decodes and preprocesses dataset images `start..end` into one batch.
fn prepare(
    dataset: &Dataset,
    preprocessor: &Preprocessor,
    strict: bool,
    start: usize,
    end: usize,
) -> Result<Prepared> {
    let [a, b, c] = preprocessor.sample_shape();
    let mut pixels = Array4::<f32>::zeros((end - start, a, b, c));
    let (mut filled, mut indices, mut skipped) = (0, Vec::new(), Vec::new());
    for index in start..end {
        let outcome = dataset.image(index).map_err(Error::from).and_then(|img| {
            preprocessor
                .write_into(&img, pixels.slice_mut(s![filled, .., .., ..]))
                .map_err(Error::from)
        });
        match outcome {
            Ok(()) => {
                indices.push(index);
                filled += 1;
            }
            Err(e) if !strict => skipped.push(Skipped {
                index,
                source: dataset.describe(index),
                reason: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(Prepared {
        pixels,
        filled,
        indices,
        skipped,
        end,
    })
}

/// Embeds every image of `dataset` (or of its `options.limit` / `options.shard`
/// part). `progress` is called with the number of images handled so far
/// (embedded or skipped).
///
/// Decoding and preprocessing run on their own thread, one batch ahead of the
/// encoder: the encoder's workers never wait for pixels, and a slow decode
/// (large JPEGs) overlaps with encoding instead of adding to it.
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
    let total = options
        .limit
        .map_or(dataset.len(), |l| l.min(dataset.len()));
    let std::ops::Range {
        start: first,
        end: last,
    } = options.shard.map_or(0..total, |shard| shard.range(total));
    let strict = options.strict;
    std::thread::scope(|scope| -> Result<()> {
        // One batch in flight: memory stays at two batches of pixels.
        let (sender, batches) = std::sync::mpsc::sync_channel::<Result<Prepared>>(1);
        let preprocessor = &preprocessor;
        scope.spawn(move || {
            for start in (first..last).step_by(batch_size) {
                let end = (start + batch_size).min(last);
                let prepared = prepare(dataset, preprocessor, strict, start, end);
                let failed = prepared.is_err();
                // A closed channel means the encoder side stopped (an error).
                if sender.send(prepared).is_err() || failed {
                    break;
                }
            }
        });
        for prepared in batches {
            let prepared = prepared?;
            if prepared.filled > 0 {
                let out = encoder.run(prepared.pixels.slice(s![..prepared.filled, .., .., ..]))?;
                chunks.push(out.embedding);
                if options.keep_logits {
                    logit_chunks.extend(out.logits);
                }
            }
            indices.extend(prepared.indices);
            skipped.extend(prepared.skipped);
            progress(prepared.end - first);
        }
        Ok(())
    })?;
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
