//! Exact duplicates in a training set.
//!
//! Contrastive adaptation learns by telling images apart: every other image
//! in the batch and in the memory bank is a negative. A set of copies of one
//! image (a camera left facing a wall, a folder filled by a stuck capture
//! loop) has no negatives at all, and a set that is mostly copies turns the
//! memory bank into false negatives. Augmentation hides this from the
//! diagnostics: two crops of one picture still differ, so the effective rank
//! of the views stays healthy while there is nothing to learn. Hence a check
//! on the stored bytes, before any encoder time is spent.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::{DataError, Dataset};

/// How many of a set's images are distinct as stored (file bytes or IDX pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateReport {
    /// Images looked at.
    pub images: usize,
    /// Distinct images (byte-identical files, or identical IDX pixels, count as one).
    pub distinct: usize,
    /// Copies of the most repeated image (1 when every image is distinct).
    pub largest_group: usize,
}

impl DuplicateReport {
    /// Every image is the same picture: contrastive learning has no negatives.
    pub fn all_identical(&self) -> bool {
        self.images > 1 && self.distinct == 1
    }

    /// Images that repeat an earlier one.
    pub fn duplicates(&self) -> usize {
        self.images - self.distinct
    }
}

/// Counts the distinct images among the first `n` of `data` by a SHA-256 of
/// what each one is stored as: a folder's file bytes (read, not decoded, so a
/// folder of large photos costs a read per file) or an IDX image's pixels.
/// Byte-identical files are the copies that matter here; two captures of a
/// still scene differ in sensor noise and are left to the diagnostics.
pub fn find_duplicates(data: &Dataset, n: usize) -> Result<DuplicateReport, DataError> {
    let n = n.min(data.len());
    let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
    for index in 0..n {
        let digest: [u8; 32] = match data {
            Dataset::Folder(folder) => {
                let path = folder.path(index).ok_or(DataError::OutOfRange {
                    index,
                    len: data.len(),
                })?;
                let bytes = std::fs::read(path).map_err(|source| DataError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                Sha256::digest(&bytes).into()
            }
            Dataset::Idx(idx) => Sha256::digest(idx.image(index)?.as_raw()).into(),
        };
        *seen.entry(digest).or_default() += 1;
    }
    Ok(DuplicateReport {
        images: n,
        distinct: seen.len(),
        largest_group: seen.values().copied().max().unwrap_or(0),
    })
}
