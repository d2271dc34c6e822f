//! The IDX format of MNIST and Fashion-MNIST: a big-endian header (magic with
//! element type and rank, then one u32 per dimension) followed by the data.
//! Files may be gzipped, as the datasets ship.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use image::{GrayImage, RgbImage};

use super::DataError;

/// An IDX array of unsigned bytes (the only element type the image datasets use).
#[derive(Debug, Clone)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Largest IDX payload accepted (1 GiB), checked against the header before reading.
const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads an IDX file (gzipped if its name ends in `.gz`).
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let bad = |message: String| DataError::BadIdx {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad(format!(
            "wrong magic {magic:02x?}: IDX files start with two zero bytes"
        )));
    }
    if magic[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not unsigned byte (0x08)",
            magic[2]
        )));
    }
    let rank = magic[3] as usize;
    if rank == 0 || rank > 4 {
        return Err(bad(format!("rank {rank} is not 1..=4")));
    }
    let mut dims = Vec::with_capacity(rank);
    for _ in 0..rank {
        let mut d = [0u8; 4];
        reader
            .read_exact(&mut d)
            .map_err(|e| bad(format!("truncated header: {e}")))?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let len = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let len = match len {
        Some(l) if l <= MAX_IDX_BYTES => l as usize,
        _ => {
            return Err(bad(format!(
                "declared shape {dims:?} is over the 1 GiB limit"
            )))
        }
    };
    let mut data = vec![0u8; len];
    reader
        .read_exact(&mut data)
        .map_err(|e| bad(format!("truncated data (shape {dims:?}): {e}")))?;
    Ok(IdxArray { dims, data })
}

/// Images (`[n, h, w]`) and, when found, labels (`[n]`) from IDX files.
#[derive(Debug)]
pub struct IdxDataset {
    path: PathBuf,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
    labels: Option<Vec<usize>>,
    class_names: Option<Vec<String>>,
}

impl IdxDataset {
    /// Opens an images file; `...-images-idx3-ubyte[.gz]` finds its
    /// `...-labels-idx1-ubyte[.gz]` beside it, and a `classes.txt` in the same
    /// directory names the classes.
    pub fn open(images: &Path) -> Result<Self, DataError> {
        let array = read_idx(images)?;
        if array.dims.len() != 3 {
            return Err(DataError::BadIdx {
                path: images.to_path_buf(),
                message: format!("images need rank 3 [n, h, w], found {:?}", array.dims),
            });
        }
        let (n, height, width) = (array.dims[0], array.dims[1], array.dims[2]);
        let labels = match labels_path(images) {
            Some(path) => {
                let l = read_idx(&path)?;
                if l.dims.len() != 1 {
                    return Err(DataError::BadIdx {
                        path,
                        message: format!("labels need rank 1, found {:?}", l.dims),
                    });
                }
                if l.dims[0] != n {
                    return Err(DataError::CountMismatch {
                        images: n,
                        labels: l.dims[0],
                    });
                }
                Some(l.data.iter().map(|&v| v as usize).collect::<Vec<_>>())
            }
            None => None,
        };
        let class_names = match (&labels, images.parent().map(|d| d.join("classes.txt"))) {
            (Some(labels), Some(p)) if p.is_file() => {
                let text = std::fs::read_to_string(&p).map_err(|source| DataError::Io {
                    path: p.clone(),
                    source,
                })?;
                let names: Vec<String> = text.lines().map(str::to_owned).collect();
                let max = labels.iter().copied().max().unwrap_or(0);
                if max >= names.len() {
                    return Err(DataError::BadIdx {
                        path: p,
                        message: format!("label {max} has no name ({} names)", names.len()),
                    });
                }
                Some(names)
            }
            (Some(labels), _) => {
                let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
                Some((0..classes).map(|c| c.to_string()).collect())
            }
            (None, _) => None,
        };
        Ok(Self {
            path: images.to_path_buf(),
            height,
            width,
            pixels: array.data,
            labels,
            class_names,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.pixels
            .len()
            .checked_div(self.height * self.width)
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn labels(&self) -> Option<&[usize]> {
        self.labels.as_deref()
    }

    pub fn class_names(&self) -> Option<Vec<String>> {
        self.class_names.clone()
    }

    /// Image `index` as RGB (the gray value replicated into three channels).
    pub fn image(&self, index: usize) -> Result<RgbImage, DataError> {
        if index >= self.len() {
            return Err(DataError::OutOfRange {
                index,
                len: self.len(),
            });
        }
        let size = self.height * self.width;
        let gray = GrayImage::from_raw(
            self.width as u32,
            self.height as u32,
            self.pixels[index * size..(index + 1) * size].to_vec(),
        )
        .ok_or_else(|| DataError::BadIdx {
            path: self.path.clone(),
            message: "image buffer has the wrong size".into(),
        })?;
        Ok(image::DynamicImage::ImageLuma8(gray).to_rgb8())
    }
}

fn labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    let labels = name.replace("images-idx3", "labels-idx1");
    (labels != name)
        .then(|| images.with_file_name(labels))
        .filter(|p| p.is_file())
}

/// Finds `<split>-images-idx3-ubyte[.gz]` in a directory.
pub(super) fn find_split(dir: &Path, split: &str) -> Option<PathBuf> {
    ["", ".gz"]
        .iter()
        .map(|ext| dir.join(format!("{split}-images-idx3-ubyte{ext}")))
        .find(|p| p.is_file())
}
