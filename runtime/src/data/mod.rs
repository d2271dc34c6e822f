//! Labelled and unlabelled image sets: IDX files (MNIST, Fashion-MNIST) and
//! folders of image files. A [`Dataset`] hands out decoded RGB images one at a
//! time, so a folder of thousands of photos never sits in memory at once.

mod decode;
mod duplicates;
mod folder;
mod idx;

use std::path::{Path, PathBuf};

use image::RgbImage;

pub use decode::{decode_image, decode_image_bytes, DecodeLimits};
pub use duplicates::{find_duplicates, DuplicateReport};
pub use folder::ImageFolder;
pub use idx::{read_idx, IdxArray, IdxDataset};

/// Errors raised while reading datasets and image files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an IDX file ({message})")]
    BadIdx { path: PathBuf, message: String },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error(
        "{path}: image is {width}x{height}, over the {limit}-pixel limit (set by DecodeLimits)"
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u64,
    },
    #[error("{0}: no images found (looked for .png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp)")]
    Empty(PathBuf),
    #[error("{images} images but {labels} labels")]
    CountMismatch { images: usize, labels: usize },
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("index {index} is out of range for a dataset of {len}")]
    OutOfRange { index: usize, len: usize },
}

/// A source of images, optionally labelled.
#[derive(Debug)]
pub enum Dataset {
    Idx(IdxDataset),
    Folder(ImageFolder),
}

impl Dataset {
    /// Opens `path`: an IDX images file (`*-images-idx3-ubyte[.gz]`, its labels
    /// file found beside it), a directory holding one IDX split (`--split`
    /// picks `train` or `t10k`), or a folder of images (class-per-subfolder
    /// gives labels).
    pub fn open(path: &Path, split: Option<&str>) -> Result<Self, DataError> {
        if !path.exists() {
            return Err(DataError::Missing(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Dataset::Idx(IdxDataset::open(path)?));
        }
        if let Some(images) = idx::find_split(path, split.unwrap_or("train")) {
            return Ok(Dataset::Idx(IdxDataset::open(&images)?));
        }
        Ok(Dataset::Folder(ImageFolder::open(path)?))
    }

    pub fn len(&self) -> usize {
        match self {
            Dataset::Idx(d) => d.len(),
            Dataset::Folder(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Labels, when the source has them (index = image index).
    pub fn labels(&self) -> Option<&[usize]> {
        match self {
            Dataset::Idx(d) => d.labels(),
            Dataset::Folder(d) => d.labels(),
        }
    }

    /// Class names (index = label), when the source has labels.
    pub fn class_names(&self) -> Option<Vec<String>> {
        match self {
            Dataset::Idx(d) => d.class_names(),
            Dataset::Folder(d) => d.class_names(),
        }
    }

    /// A short description for each image: a file path or `idx[i]`.
    pub fn describe(&self, index: usize) -> String {
        match self {
            Dataset::Idx(d) => format!("{}[{index}]", d.path().display()),
            Dataset::Folder(d) => d
                .path(index)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("#{index}")),
        }
    }

    /// Decodes image `index` as 8-bit RGB (grayscale is replicated to 3 channels).
    pub fn image(&self, index: usize) -> Result<RgbImage, DataError> {
        match self {
            Dataset::Idx(d) => d.image(index),
            Dataset::Folder(d) => d.image(index),
        }
    }
}
