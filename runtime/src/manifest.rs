//! Model manifests: the contract between an exported ONNX encoder and edgeclr.
//!
//! An ONNX file says which tensors go in and out, but not how pixels become that
//! input tensor nor which output is the embedding. Getting either wrong does not
//! fail loudly: it silently produces worse embeddings. The manifest, a small TOML
//! file beside the `.onnx`, states those facts once, and [`Manifest::load`] checks
//! them (and the file's sha256) before any inference runs.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name looked up when a model is given as a directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Errors found while locating, parsing or validating a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no model manifest at {0} (expected a manifest.toml, a directory holding one, or an .onnx with a manifest.toml beside it)")]
    NotFound(PathBuf),
    #[error("cannot read manifest {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("manifest {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, C, H, W]`, PyTorch's layout.
    Nchw,
    /// `[N, H, W, C]`, TensorFlow's layout.
    Nhwc,
}

/// Order of the three colour channels the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

/// Resampling filter for the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
}

/// The model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the ONNX graph input.
    pub name: String,
    /// Shape of one sample, batch dimension excluded (`[3, H, W]` for NCHW).
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub channels: ChannelOrder,
}

/// How a decoded image becomes the input tensor, in the order applied:
/// resize (short side), centre crop, `x * scale`, `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Resize so the short side has this many pixels (aspect kept), as
    /// torchvision's `Resize(int)` does. Absent: resize straight to `crop`.
    pub resize_short_side: Option<u32>,
    pub filter: Filter,
    /// Centre crop `[height, width]` after the resize.
    pub crop: [u32; 2],
    /// Multiplier applied to 0..=255 pixel values before normalisation.
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Which graph outputs edgeclr reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name of the embedding tensor: a graph output, or any tensor a node
    /// computes (a classifier's penultimate layer, an earlier block); an
    /// intermediate tensor is made a graph output when the model is loaded.
    /// `[N, D]`, or a feature map `[N, C, H, W]` reduced by `pool`.
    pub embedding: String,
    /// How a feature-map embedding becomes a vector: `none` (the tensor as
    /// it is, flattened), `mean` (`[N, C]`), `grid:GxG` (adaptive average
    /// pooling to a G×G grid, then flattened: `[N, C·G·G]`) or `flatten`.
    /// An earlier block with a spatial grid can classify better than the
    /// final pooled output: it keeps where things are.
    #[serde(default, skip_serializing_if = "Pool::is_none")]
    pub pool: Pool,
    /// Name of the optional `[N, classes]` logits output.
    pub logits: Option<String>,
    pub embedding_dim: usize,
    pub num_classes: Option<usize>,
}

/// A parsed and validated model manifest. Paths inside are resolved against
/// the manifest's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The ONNX file.
    pub onnx: PathBuf,
    /// Hex sha256 of the ONNX file; checked when the model is loaded.
    pub sha256: String,
    pub licence: String,
    pub source: String,
    /// Optional text file of class names, one per line, index = logit index.
    #[serde(default)]
    pub classes: Option<PathBuf>,
    pub input: InputSpec,
    pub preprocess: PreprocessSpec,
    pub outputs: OutputSpec,
}

/// How a feature-map embedding `[N, C, H, W]` becomes `[N, D]`
/// ([`OutputSpec::pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pool {
    /// The tensor as the graph computes it, flattened per sample.
    #[default]
    None,
    /// Global average over `H, W`: `[N, C]`.
    Mean,
    /// Adaptive average pooling to a `g × g` grid (PyTorch's
    /// `adaptive_avg_pool2d` bins), flattened channel-major: `[N, C·g·g]`.
    Grid(usize),
    /// Every value, channel-major: `[N, C·H·W]` (a 4-D check on top of `None`).
    Flatten,
}

impl Pool {
    /// Whether the embedding is used as the graph computes it.
    pub fn is_none(&self) -> bool {
        *self == Pool::None
    }

    /// Applies the pooling to a batch of outputs. `None` passes `x` through;
    /// the others need `[N, C, H, W]` (and a grid no finer than `H × W`).
    pub fn apply(&self, x: ndarray::ArrayViewD<'_, f32>) -> Result<ndarray::Array2<f32>, String> {
        let shape = x.shape().to_vec();
        let n = shape.first().copied().unwrap_or(0);
        if *self == Pool::None {
            let d: usize = shape.iter().skip(1).product();
            return x
                .to_shape((n, d))
                .map(|v| v.to_owned())
                .map_err(|e| e.to_string());
        }
        let [n, c, h, w] = shape[..] else {
            return Err(format!(
                "pool = \"{self}\" needs a [N, C, H, W] feature map, the tensor is {shape:?}"
            ));
        };
        let x = x
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(|e| e.to_string())?;
        let g = match *self {
            Pool::Mean => 1,
            Pool::Grid(g) if g > h || g > w => {
                return Err(format!(
                    "pool = \"{self}\" is finer than the {h}x{w} feature map"
                ))
            }
            Pool::Grid(g) => g,
            Pool::Flatten | Pool::None => {
                return x
                    .to_shape((n, c * h * w))
                    .map(|v| v.to_owned())
                    .map_err(|e| e.to_string())
            }
        };
        // Bin i covers rows floor(i·h/g) .. ceil((i+1)·h/g), as PyTorch's.
        let bins = |len: usize| -> Vec<(usize, usize)> {
            (0..g)
                .map(|i| (i * len / g, ((i + 1) * len).div_ceil(g)))
                .collect()
        };
        let (rows, cols) = (bins(h), bins(w));
        let mut out = ndarray::Array2::<f32>::zeros((n, c * g * g));
        for s in 0..n {
            for ch in 0..c {
                let plane = x.slice(ndarray::s![s, ch, .., ..]);
                for (i, &(r0, r1)) in rows.iter().enumerate() {
                    for (j, &(c0, c1)) in cols.iter().enumerate() {
                        let cell = plane.slice(ndarray::s![r0..r1, c0..c1]);
                        out[[s, (ch * g + i) * g + j]] = cell.sum() / cell.len() as f32;
                    }
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pool::None => f.write_str("none"),
            Pool::Mean => f.write_str("mean"),
            Pool::Grid(g) => write!(f, "grid:{g}x{g}"),
            Pool::Flatten => f.write_str("flatten"),
        }
    }
}

impl std::str::FromStr for Pool {
    type Err = String;

    /// `none`, `mean`, `flatten` or `grid:GxG` (G ≥ 1; `grid:G` too).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("pool {s:?}: expected none, mean, flatten or grid:GxG (e.g. grid:7x7)");
        Ok(match s.trim() {
            "none" => Pool::None,
            "mean" => Pool::Mean,
            "flatten" => Pool::Flatten,
            other => {
                let spec = other.strip_prefix("grid:").ok_or_else(bad)?;
                let (a, b) = spec.split_once('x').unwrap_or((spec, spec));
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a != b || a == 0 {
                    return Err(format!(
                        "pool {s:?}: the grid must be square and at least 1x1"
                    ));
                }
                Pool::Grid(a)
            }
        })
    }
}

impl TryFrom<String> for Pool {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Pool> for String {
    fn from(p: Pool) -> String {
        p.to_string()
    }
}

impl Manifest {
    /// Finds and loads the manifest for `model`, which may be a manifest file, a
    /// directory holding `manifest.toml`, or an `.onnx` file with a
    /// `manifest.toml` (or `<stem>.toml`) beside it.
    pub fn load(model: &Path) -> Result<Self, ManifestError> {
        let path = locate(model)?;
        let text = fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let mut manifest: Manifest = toml::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        manifest.onnx = dir.join(&manifest.onnx);
        manifest.classes = manifest.classes.map(|c| dir.join(c));
        manifest
            .validate()
            .map_err(|message| ManifestError::Invalid { path, message })?;
        Ok(manifest)
    }

    /// Parses a manifest from TOML text; relative paths are kept as they are.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: PathBuf::from("<string>"),
            message: e.to_string(),
        })?;
        manifest
            .validate()
            .map_err(|message| ManifestError::Invalid {
                path: PathBuf::from("<string>"),
                message,
            })?;
        Ok(manifest)
    }

    /// Height and width of the tensor the model takes.
    pub fn input_hw(&self) -> (usize, usize) {
        let [h, w] = self.preprocess.crop;
        (h as usize, w as usize)
    }

    /// Checks the facts that must agree with each other.
    fn validate(&self) -> Result<(), String> {
        let (h, w) = self.input_hw();
        let expected = match self.input.layout {
            Layout::Nchw => vec![3, h, w],
            Layout::Nhwc => vec![h, w, 3],
        };
        if self.input.shape != expected {
            return Err(format!(
                "input.shape {:?} does not match a {:?} layout with crop {}x{} (expected {:?})",
                self.input.shape, self.input.layout, h, w, expected
            ));
        }
        if h == 0 || w == 0 {
            return Err("preprocess.crop must be non-zero".into());
        }
        if let Some(short) = self.preprocess.resize_short_side {
            if (short as usize) < h.min(w) {
                return Err(format!(
                    "preprocess.resize_short_side {short} is smaller than the crop {h}x{w}"
                ));
            }
        }
        if !(self.preprocess.scale.is_finite() && self.preprocess.scale > 0.0) {
            return Err("preprocess.scale must be a positive number".into());
        }
        if self
            .preprocess
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
            || self.preprocess.mean.iter().any(|m| !m.is_finite())
        {
            return Err("preprocess.mean must be finite and preprocess.std positive".into());
        }
        if self.outputs.embedding_dim == 0 {
            return Err("outputs.embedding_dim must be non-zero".into());
        }
        if self.outputs.num_classes.is_some() && self.outputs.logits.is_none() {
            return Err("outputs.num_classes is set but outputs.logits is not".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "sha256 must be 64 hex digits (run `sha256sum {}`)",
                self.onnx.display()
            ));
        }
        Ok(())
    }

    /// Reads the class-name file, if the manifest names one.
    pub fn class_names(&self) -> Result<Option<Vec<String>>, ManifestError> {
        let Some(path) = &self.classes else {
            return Ok(None);
        };
        let text = fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let names: Vec<String> = text.lines().map(str::to_owned).collect();
        if let Some(n) = self.outputs.num_classes {
            if names.len() != n {
                return Err(ManifestError::Invalid {
                    path: path.clone(),
                    message: format!("{} class names for {} logits", names.len(), n),
                });
            }
        }
        Ok(Some(names))
    }
}

fn locate(model: &Path) -> Result<PathBuf, ManifestError> {
    let candidates: Vec<PathBuf> = if model.is_dir() {
        vec![model.join(MANIFEST_FILE)]
    } else if model.extension().is_some_and(|e| e == "onnx") {
        let dir = model.parent().unwrap_or(Path::new("."));
        vec![model.with_extension("toml"), dir.join(MANIFEST_FILE)]
    } else {
        vec![model.to_path_buf()]
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| ManifestError::NotFound(model.to_path_buf()))
}

impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.preprocess;
        writeln!(f, "name:        {}", self.name)?;
        if let Some(d) = &self.description {
            writeln!(f, "description: {d}")?;
        }
        writeln!(f, "onnx:        {}", self.onnx.display())?;
        writeln!(f, "sha256:      {}", self.sha256)?;
        writeln!(f, "licence:     {}", self.licence)?;
        writeln!(f, "source:      {}", self.source)?;
        writeln!(
            f,
            "input:       {} {:?} {:?} {:?}",
            self.input.name, self.input.shape, self.input.layout, self.input.channels
        )?;
        match p.resize_short_side {
            Some(s) => write!(f, "preprocess:  resize short side {s} ({:?}), ", p.filter)?,
            None => write!(f, "preprocess:  resize ({:?}), ", p.filter)?,
        }
        writeln!(
            f,
            "centre crop {}x{}, x*{:.6}, mean {:?}, std {:?}",
            p.crop[0], p.crop[1], p.scale, p.mean, p.std
        )?;
        write!(
            f,
            "outputs:     embedding '{}' [N,{}]",
            self.outputs.embedding, self.outputs.embedding_dim
        )?;
        if !self.outputs.pool.is_none() {
            write!(f, " (pool {})", self.outputs.pool)?;
        }
        if let Some(l) = &self.outputs.logits {
            write!(
                f,
                ", logits '{l}' [N,{}]",
                self.outputs.num_classes.unwrap_or(0)
            )?;
        }
        Ok(())
    }
}
