//! Labelled and unlabelled image sets: IDX files (MNIST, Fashion-MNIST) and
//! folders of image files. A [`Dataset`] hands out decoded RGB images one at a
//! time, so a folder of thousands of photos never sits in memory at once.

mod decode;
mod duplicates;
mod folder;
mod idx;
mod list;

use std::path::{Path, PathBuf};

use image::RgbImage;

pub use decode::{decode_image, decode_image_bytes, DecodeLimits};
pub use duplicates::{find_duplicates, DuplicateReport};
pub use folder::ImageFolder;
pub use idx::{read_idx, IdxArray, IdxDataset};
pub use list::read_image_list;

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
    #[error("{0}")]
    Labels(String),
    #[error("{path}:{line}: {message}")]
    List {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

/// A source of images, optionally labelled.
#[derive(Debug)]
pub enum Dataset {
    Idx(IdxDataset),
    Folder(ImageFolder),
}

/// The names a split can go by: IDX files call the test split `t10k`,
/// folder trees call it `test`.
fn split_names(split: &str) -> &'static [&'static str] {
    match split {
        "train" => &["train"],
        "test" | "t10k" => &["test", "t10k"],
        "val" => &["val"],
        _ => &[],
    }
}

impl Dataset {
    /// Opens `path`:
    /// - an IDX images file (`*-images-idx3-ubyte[.gz]`, its labels file found
    ///   beside it);
    /// - a `.csv` list of images, one `path[,label]` per line (an optional
    ///   `path,label` header; paths relative to the list's folder);
    /// - a directory holding IDX splits (`split` picks `train` or `t10k`);
    /// - a split tree, `train/` and `test/` (or `t10k/`, `val/`) folders of
    ///   class-per-subfolder images (`split` picks one; `test` and `t10k` name
    ///   the same split), labels numbered alike in every split;
    /// - a folder of images (class-per-subfolder gives labels).
    pub fn open(path: &Path, split: Option<&str>) -> Result<Self, DataError> {
        if !path.exists() {
            return Err(DataError::Missing(path.to_path_buf()));
        }
        if path.is_file() {
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
            {
                return Ok(Dataset::Folder(read_image_list(path)?));
            }
            return Ok(Dataset::Idx(IdxDataset::open(path)?));
        }
        let split = split.unwrap_or("train");
        if let Some(images) = split_names(split)
            .iter()
            .find_map(|name| idx::find_split(path, name))
        {
            return Ok(Dataset::Idx(IdxDataset::open(&images)?));
        }
        if let Some(splits) = split_tree(path) {
            let dir = split_names(split)
                .iter()
                .map(|name| path.join(name))
                .find(|d| d.is_dir())
                .ok_or_else(|| {
                    DataError::Labels(format!(
                        "{}: no '{split}' split (it has {})",
                        path.display(),
                        splits.join(", ")
                    ))
                })?;
            let mut classes = Vec::new();
            for name in &splits {
                classes.extend(folder::class_dirs(&path.join(name))?);
            }
            classes.sort();
            classes.dedup();
            let classes = (!classes.is_empty()).then_some(classes);
            return Ok(Dataset::Folder(ImageFolder::open_with_classes(
                &dir,
                classes.as_deref(),
            )?));
        }
        Ok(Dataset::Folder(ImageFolder::open(path)?))
    }

    /// Whether `path` is a split tree or an IDX directory, i.e. holds both a
    /// train and a test split for [`Dataset::open`].
    pub fn has_splits(path: &Path) -> bool {
        let idx = |split: &str| {
            split_names(split)
                .iter()
                .any(|name| idx::find_split(path, name).is_some())
        };
        (idx("train") && idx("test")) || split_tree(path).is_some()
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

/// The split folders of a split tree (`train/` beside `test/`, `t10k/` or
/// `val/`), or `None` when `dir` is not one.
fn split_tree(dir: &Path) -> Option<Vec<String>> {
    let present: Vec<String> = ["train", "test", "t10k", "val"]
        .iter()
        .filter(|name| dir.join(name).is_dir())
        .map(|name| name.to_string())
        .collect();
    (present.len() >= 2 && present[0] == "train").then_some(present)
}
