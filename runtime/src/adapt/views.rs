//! Where training views come from: augmented views of the training images
//! run through the frozen trunk, either computed once and kept
//! ([`ViewCache`], built by [`build_cache`]) or drawn fresh at every step
//! ([`ViewMaker`], for streams: a camera, a folder too large to cache).
//!
//! Why here and not in a front-end: the CLI, the demo, the layer scan and
//! the camera app all make views the same way (the manifest's crop size,
//! seeded augmentations, the trunk through the backend); one copy keeps
//! their views, and so their runs, comparable.

use std::borrow::Borrow;

use image::RgbImage;
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tract_onnx::prelude::f16;

use crate::augment::{AugmentConfig, Augmenter};
use crate::data::Dataset;
use crate::embed::embed_images;
use crate::{Encoder, Manifest, Preprocessor};

/// A view cache used wrongly: views of unequal shapes, a view index past the
/// cache's views.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("view cache: {0}")]
    Shape(String),
    #[error("view {view} is out of range for a cache of {views} views")]
    OutOfRange { view: usize, views: usize },
}

/// Draws augmented views and runs them through the frozen trunk.
pub struct ViewMaker {
    preprocessor: Preprocessor,
    config: AugmentConfig,
    augmenter: Augmenter,
}

impl ViewMaker {
    /// Views at `manifest`'s crop size, the augmentation stream seeded with `seed`.
    pub fn new(manifest: &Manifest, seed: u64) -> crate::Result<Self> {
        let [h, w] = manifest.preprocess.crop;
        let config = AugmentConfig {
            out_size: (w, h),
            ..AugmentConfig::default()
        };
        Ok(Self {
            preprocessor: Preprocessor::new(manifest),
            augmenter: Augmenter::new(config.clone(), seed)?,
            config,
        })
    }

    /// Restarts the augmentation stream at `seed` (a stream reseeds every
    /// epoch so a resumed run draws the same views).
    pub fn reseed(&mut self, seed: u64) -> crate::Result<()> {
        self.augmenter = Augmenter::new(self.config.clone(), seed)?;
        Ok(())
    }

    /// One augmented view of each image, through `encoder`: `[N, W]`.
    pub fn views<I: Borrow<RgbImage>>(
        &mut self,
        encoder: &mut dyn Encoder,
        images: &[I],
    ) -> crate::Result<Array2<f32>> {
        let batch: Vec<_> = images
            .iter()
            .map(|im| self.augmenter.view(im.borrow()))
            .collect();
        Ok(embed_images(encoder, &self.preprocessor, &batch)?.embedding)
    }

    /// Two augmented views of each image, through `encoder`: a positive
    /// pair per row. Each image's two views are drawn one after the other
    /// (a stream of frames then pairs the same way whatever the batch).
    pub fn pairs<I: Borrow<RgbImage>>(
        &mut self,
        encoder: &mut dyn Encoder,
        images: &[I],
    ) -> crate::Result<(Array2<f32>, Array2<f32>)> {
        let (mut v1, mut v2) = (Vec::new(), Vec::new());
        for im in images {
            v1.push(self.augmenter.view(im.borrow()));
            v2.push(self.augmenter.view(im.borrow()));
        }
        Ok((
            embed_images(encoder, &self.preprocessor, &v1)?.embedding,
            embed_images(encoder, &self.preprocessor, &v2)?.embedding,
        ))
    }
}

/// Images decoded and augmented per trunk call while a cache is built.
const CACHE_BATCH: usize = 32;

/// Trunk outputs of `views` augmented views of the first `n` images of
/// `data`, stored at `precision`. `progress(done, total)` is called after
/// each batch (views computed so far, out of `n × views`).
pub fn build_cache(
    encoder: &mut dyn Encoder,
    data: &Dataset,
    n: usize,
    views: usize,
    seed: u64,
    precision: Precision,
    mut progress: impl FnMut(usize, usize),
) -> crate::Result<ViewCache> {
    let manifest = encoder.manifest().clone();
    let mut maker = ViewMaker::new(&manifest, seed)?;
    let mut cache = ViewCacheBuilder::new(views, precision);
    for start in (0..n).step_by(CACHE_BATCH) {
        let end = (start + CACHE_BATCH).min(n);
        let images = (start..end)
            .map(|i| data.image(i))
            .collect::<Result<Vec<_>, _>>()?;
        for v in 0..views {
            cache.push(v, maker.views(encoder, &images)?)?;
            progress(v * n + end, n * views);
        }
    }
    Ok(cache.finish()?)
}

/// How a [`ViewCache`] stores its views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Half precision: half the memory; the trunk outputs of MobileNetV2
    /// (ReLU6-bounded or small) lose ~1e-3 relative, far below view noise.
    F16,
    #[default]
    F32,
}

impl Precision {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F16 => 2,
            Precision::F32 => 4,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f16" => Ok(Precision::F16),
            "f32" => Ok(Precision::F32),
            other => Err(format!("unknown precision '{other}' (expected f16 or f32)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F16 => "f16",
            Precision::F32 => "f32",
        })
    }
}

/// One view of every image, `[N, W]`, in the cache's precision.
#[derive(Debug, Clone)]
enum ViewStore {
    F16(Array2<f16>),
    F32(Array2<f32>),
}

impl ViewStore {
    fn new(v: Array2<f32>, precision: Precision) -> Self {
        match precision {
            Precision::F32 => ViewStore::F32(v),
            Precision::F16 => ViewStore::F16(v.mapv(f16::from_f32)),
        }
    }

    fn dim(&self) -> (usize, usize) {
        match self {
            ViewStore::F16(a) => a.dim(),
            ViewStore::F32(a) => a.dim(),
        }
    }

    fn copy_row(&self, r: usize, mut out: ndarray::ArrayViewMut1<f32>) {
        match self {
            ViewStore::F16(a) => out.zip_mut_with(&a.row(r), |o, &v| *o = v.to_f32()),
            ViewStore::F32(a) => out.assign(&a.row(r)),
        }
    }
}

/// Builds a [`ViewCache`] batch by batch, converting each batch to the
/// cache's precision as it arrives (an f16 cache never holds all views in f32).
#[derive(Debug)]
pub struct ViewCacheBuilder {
    parts: Vec<Vec<ViewStore>>,
    precision: Precision,
}

impl ViewCacheBuilder {
    pub fn new(views: usize, precision: Precision) -> Self {
        Self {
            parts: (0..views).map(|_| Vec::new()).collect(),
            precision,
        }
    }

    /// Appends rows to view `v`.
    pub fn push(&mut self, v: usize, rows: Array2<f32>) -> Result<(), ViewError> {
        let views = self.parts.len();
        let slot = self
            .parts
            .get_mut(v)
            .ok_or(ViewError::OutOfRange { view: v, views })?;
        slot.push(ViewStore::new(rows, self.precision));
        Ok(())
    }

    /// The finished cache; every view must hold the same images.
    pub fn finish(self) -> Result<ViewCache, ViewError> {
        let join = |parts: Vec<ViewStore>| -> Result<ViewStore, ViewError> {
            let err = |e: ndarray::ShapeError| ViewError::Shape(e.to_string());
            Ok(match self.precision {
                Precision::F16 => {
                    let v: Vec<_> = parts
                        .iter()
                        .filter_map(|p| match p {
                            ViewStore::F16(a) => Some(a.view()),
                            ViewStore::F32(_) => None,
                        })
                        .collect();
                    ViewStore::F16(ndarray::concatenate(Axis(0), &v).map_err(err)?)
                }
                Precision::F32 => {
                    let v: Vec<_> = parts
                        .iter()
                        .filter_map(|p| match p {
                            ViewStore::F32(a) => Some(a.view()),
                            ViewStore::F16(_) => None,
                        })
                        .collect();
                    ViewStore::F32(ndarray::concatenate(Axis(0), &v).map_err(err)?)
                }
            })
        };
        let views = self
            .parts
            .into_iter()
            .map(join)
            .collect::<Result<Vec<_>, _>>()?;
        let dims: Vec<_> = views.iter().map(ViewStore::dim).collect();
        if dims.is_empty() || dims.iter().any(|d| *d != dims[0]) {
            return Err(ViewError::Shape(format!(
                "a view cache needs views of equal shape, got {dims:?}"
            )));
        }
        Ok(ViewCache {
            views,
            precision: self.precision,
        })
    }
}

/// Trunk outputs of `V` augmented views of every training image, computed
/// once so that many epochs cost only the trainable layers' arithmetic.
/// With tail layers a view is the cut tensor (MobileNetV2: 320×7×7 = 15680
/// values, 25× the embedding), so f16 storage matters.
#[derive(Debug, Clone)]
pub struct ViewCache {
    views: Vec<ViewStore>,
    precision: Precision,
}

impl ViewCache {
    /// A cache of `views` (`views[v]` is `[N, W]`: view `v` of every image),
    /// all the same shape, stored at `precision`.
    pub fn new(views: Vec<Array2<f32>>, precision: Precision) -> Result<Self, ViewError> {
        let mut builder = ViewCacheBuilder::new(views.len(), precision);
        for (v, rows) in views.into_iter().enumerate() {
            builder.push(v, rows)?;
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.views.first().map_or(0, |v| v.dim().0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Views per image.
    pub fn num_views(&self) -> usize {
        self.views.len()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes held by the stored views.
    pub fn memory_bytes(&self) -> usize {
        let (n, w) = self.views.first().map_or((0, 0), ViewStore::dim);
        self.views.len() * n * w * self.precision.bytes()
    }

    /// The listed images' view `v` as f32, `[rows.len(), W]`.
    pub fn rows(&self, v: usize, rows: &[usize]) -> Array2<f32> {
        let w = self.views[v].dim().1;
        let mut out = Array2::zeros((rows.len(), w));
        for (i, &r) in rows.iter().enumerate() {
            self.views[v].copy_row(r, out.row_mut(i));
        }
        out
    }

    /// View `v` of every image as f32.
    pub fn view(&self, v: usize) -> Array2<f32> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.rows(v, &all)
    }

    /// Two different views of each listed image.
    pub(crate) fn pair(&self, rows: &[usize], rng: &mut ChaCha8Rng) -> (Array2<f32>, Array2<f32>) {
        let v = self.views.len();
        let mut choice: Vec<usize> = (0..v).collect();
        let dim = self.views[0].dim().1;
        let mut x1 = Array2::zeros((rows.len(), dim));
        let mut x2 = Array2::zeros((rows.len(), dim));
        for (i, &r) in rows.iter().enumerate() {
            choice.shuffle(rng);
            self.views[choice[0]].copy_row(r, x1.row_mut(i));
            self.views[choice[1 % v]].copy_row(r, x2.row_mut(i));
        }
        (x1, x2)
    }
}
