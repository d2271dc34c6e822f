//! A folder of image files: flat (unlabelled) or one subfolder per class
//! (labelled, class names from the subfolder names, sorted).

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::{decode_image, DataError, DecodeLimits};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"];

/// Image files found under a directory, in sorted order.
#[derive(Debug)]
pub struct ImageFolder {
    files: Vec<PathBuf>,
    labels: Option<Vec<usize>>,
    classes: Option<Vec<String>>,
    limits: DecodeLimits,
}

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort();
    Ok(entries)
}

/// The class-per-subfolder names under `dir` that hold at least one image, sorted.
pub(super) fn class_dirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for sub in sorted_entries(dir)?.iter().filter(|p| p.is_dir()) {
        if sorted_entries(sub)?.iter().any(|p| is_image(p)) {
            names.push(
                sub.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    Ok(names)
}

impl ImageFolder {
    /// Scans `dir`. Images directly inside make an unlabelled set; otherwise
    /// each subfolder holding images is a class.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        Self::open_with_classes(dir, None)
    }

    /// A list of image files with their labels (from a CSV list, say).
    /// `labels[i]` indexes `classes`.
    pub fn from_files(
        files: Vec<PathBuf>,
        labels: Option<Vec<usize>>,
        classes: Option<Vec<String>>,
    ) -> Self {
        Self {
            files,
            labels,
            classes,
            limits: DecodeLimits::default(),
        }
    }

    /// As [`ImageFolder::open`], with the class list given: one split of a
    /// `train/` + `test/` tree numbers its classes by the union of both
    /// splits' class names, so label `i` is the same class in each, even when
    /// one split lacks a class.
    pub fn open_with_classes(dir: &Path, classes: Option<&[String]>) -> Result<Self, DataError> {
        let entries = sorted_entries(dir)?;
        let files: Vec<PathBuf> = entries.iter().filter(|p| is_image(p)).cloned().collect();
        if !files.is_empty() {
            return Ok(Self {
                files,
                labels: None,
                classes: None,
                limits: DecodeLimits::default(),
            });
        }
        let given = classes;
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut classes = Vec::new();
        for sub in entries.iter().filter(|p| p.is_dir()) {
            let images: Vec<PathBuf> = sorted_entries(sub)?
                .into_iter()
                .filter(|p| is_image(p))
                .collect();
            if images.is_empty() {
                continue;
            }
            let name = sub
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let label = match given {
                Some(given) => given.iter().position(|c| *c == name).ok_or_else(|| {
                    DataError::Labels(format!(
                        "{}: class '{name}' is not in the class list",
                        sub.display()
                    ))
                })?,
                None => {
                    classes.push(name);
                    classes.len() - 1
                }
            };
            labels.extend(std::iter::repeat_n(label, images.len()));
            files.extend(images);
        }
        if let Some(given) = given {
            classes = given.to_vec();
        }
        if files.is_empty() {
            return Err(DataError::Empty(dir.to_path_buf()));
        }
        Ok(Self {
            files,
            labels: Some(labels),
            classes: Some(classes),
            limits: DecodeLimits::default(),
        })
    }

    /// Replaces the decode limits (pixels, allocation) applied to each file.
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(PathBuf::as_path)
    }

    pub fn labels(&self) -> Option<&[usize]> {
        self.labels.as_deref()
    }

    pub fn class_names(&self) -> Option<Vec<String>> {
        self.classes.clone()
    }

    pub fn image(&self, index: usize) -> Result<RgbImage, DataError> {
        let path = self.path(index).ok_or(DataError::OutOfRange {
            index,
            len: self.len(),
        })?;
        decode_image(path, self.limits)
    }
}
