//! Image files as a looping frame source: a directory (flat or one subfolder
//! per class, as [`ImageFolder`] reads it) or a glob in the last path
//! component (`photos/*.png`).

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::{FrameSource, SourceError};
use edgeclr::data::{decode_image, DataError, DecodeLimits, ImageFolder};

/// Loops over image files in sorted order.
#[derive(Debug)]
pub struct FolderSource {
    description: String,
    files: Vec<PathBuf>,
    next: usize,
}

/// `*` matches any run of characters, `?` one character.
fn wildcard_match(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            wildcard_match(&pattern[1..], name)
                || (!name.is_empty() && wildcard_match(pattern, &name[1..]))
        }
        (Some('?'), Some(_)) => wildcard_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn glob(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let pattern: Vec<char> = path
        .file_name()
        .map(|n| n.to_string_lossy().chars().collect())
        .unwrap_or_default();
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name: Vec<char> = entry.file_name().to_string_lossy().chars().collect();
        if entry.path().is_file() && wildcard_match(&pattern, &name) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

impl FolderSource {
    /// Opens a directory or a glob such as `data/photos/*.png`.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let is_glob = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(['*', '?']));
        let files = if is_glob {
            glob(path)?
        } else {
            if !path.exists() {
                return Err(DataError::Missing(path.to_path_buf()).into());
            }
            let folder = ImageFolder::open(path)?;
            (0..folder.len())
                .filter_map(|i| folder.path(i).map(Path::to_path_buf))
                .collect()
        };
        if files.is_empty() {
            return Err(SourceError::NoMatch {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            description: format!("folder {}", path.display()),
            files,
            next: 0,
        })
    }

    /// The files, in the order frames come.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for FolderSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    /// The next file, decoded; an unreadable file is an error for that frame
    /// only (the following call moves on to the next file).
    fn next_frame(&mut self) -> Result<RgbImage, SourceError> {
        let path = &self.files[self.next % self.files.len()];
        self.next = (self.next + 1) % self.files.len();
        Ok(decode_image(path, DecodeLimits::default())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photos() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/photos")
    }

    #[test]
    fn wildcards() {
        let m = |p: &str, n: &str| {
            wildcard_match(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*.png", "coffee.png"));
        assert!(m("c*e.png", "coffee.png"));
        assert!(m("?at.png", "cat.png"));
        assert!(!m("*.png", "rocket.jpg"));
        assert!(!m("?.png", "ab.png"));
    }

    #[test]
    fn a_folder_loops_in_sorted_order() {
        let mut src = FolderSource::open(&photos()).unwrap();
        let n = src.files().len();
        assert!(n >= 4);
        let first = src.next_frame().unwrap();
        for _ in 1..n {
            src.next_frame().unwrap();
        }
        assert_eq!(src.next_frame().unwrap(), first);
    }

    #[test]
    fn a_glob_selects_files() {
        let src = FolderSource::open(&photos().join("c*.png")).unwrap();
        let names: Vec<_> = src
            .files()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["chelsea.png", "coffee.png"]);
        assert!(matches!(
            FolderSource::open(&photos().join("*.nothing")),
            Err(SourceError::NoMatch { .. })
        ));
        assert!(FolderSource::open(Path::new("/no/such/dir")).is_err());
    }
}
