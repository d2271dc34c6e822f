//! An IDX image file (MNIST, Fashion-MNIST) as a looping frame source, for
//! tests and demos with labelled data.

use std::path::Path;

use image::RgbImage;

use super::{FrameSource, SourceError};
use edgeclr::data::Dataset;

/// Loops over the images of an IDX file or IDX directory (its `train` split).
#[derive(Debug)]
pub struct IdxSource {
    dataset: Dataset,
    next: usize,
}

impl IdxSource {
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let dataset = Dataset::open(path, None)?;
        if dataset.is_empty() || !matches!(dataset, Dataset::Idx(_)) {
            return Err(SourceError::NoMatch {
                path: path.to_path_buf(),
            });
        }
        Ok(Self { dataset, next: 0 })
    }

    /// The label of the frame the next call to `next_frame` returns.
    pub fn next_label(&self) -> Option<usize> {
        self.dataset.labels().map(|l| l[self.next])
    }
}

impl FrameSource for IdxSource {
    fn describe(&self) -> String {
        format!("idx {}", self.dataset.describe(self.next))
    }

    fn next_frame(&mut self) -> Result<RgbImage, SourceError> {
        let image = self.dataset.image(self.next)?;
        self.next = (self.next + 1) % self.dataset.len();
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_loops_the_fashion_sample() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
        let mut src = IdxSource::open(&dir).unwrap();
        let first = src.next_frame().unwrap();
        assert_eq!(first.dimensions(), (28, 28));
        let p = first.get_pixel(14, 14).0;
        assert!(p[0] == p[1] && p[1] == p[2], "grey replicated to RGB");
        assert!(IdxSource::open(Path::new("/no/such.idx")).is_err());
    }
}
