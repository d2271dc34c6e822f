//! `edgeclr model init`: a manifest guessed from an ONNX graph, so that bringing
//! a model is one command instead of reading the manifest format field by field.
//!
//! What the graph states is read from it: the input's name, shape and layout
//! (NCHW or NHWC, from where the 3 channels are), the embedding (a `[N, D]`
//! output, else the input of the classifier, i.e. the last Gemm/MatMul with a
//! constant weight), the logits and their width, the file's sha256. What the
//! graph cannot state, how pixels were normalised in training, comes from a
//! named [`Preset`]; when no preset is given and the producer does not tell
//! (PyTorch → `torchvision`), the answer is an error asking for one. Every
//! guess is reported as a [`Guess`] note, with those a person must confirm
//! marked, and nothing is written until the guessed manifest loads and runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tract_onnx::pb;

use crate::backend::{tensor_shape, ModelError};
use crate::inspect::{Dim, OnnxSummary};
use crate::manifest::{
    ChannelOrder, Filter, InputSpec, Layout, Manifest, OutputSpec, Pool, PreprocessSpec,
};
use crate::onnx::{parse_proto, sha256_hex};

/// Why a manifest could not be guessed. Each says what was found and what
/// to pass instead.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    NoImageInput(String),
    #[error("the model has {} inputs ({}); edgeclr encoders take one image tensor", .0.len(), .0.join(", "))]
    SeveralInputs(Vec<String>),
    #[error("{0}")]
    Question(String),
    #[error("{0}")]
    Contradiction(String),
    #[error("{path} exists; pass --force to replace it")]
    Exists { path: PathBuf },
}

/// How a model's training pipeline turned pixels (0..=255) into its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// torchvision's ImageNet recipe: RGB, `x/255`, ImageNet mean/std,
    /// resize the short side to 256/224 of the input, centre crop.
    Torchvision,
    /// Inception / TensorFlow / Keras `tf` mode: RGB, `x/127.5 − 1`, resized
    /// straight to the input size.
    Inception,
    /// TensorFlow Lite / EfficientNet-Lite: RGB, `(x − 127) / 128`, resize
    /// the short side to 256/224 of the input (bicubic), centre crop.
    Tflite,
    /// Caffe / Keras `caffe` mode: BGR, 0..=255 minus the ImageNet mean
    /// (103.939, 116.779, 123.68 in BGR order), no scaling.
    Caffe,
    /// The pixels as they are: RGB, 0..=255.
    Raw,
}

impl Preset {
    /// Every preset name, as `--preset` takes them.
    pub const NAMES: &'static str = "torchvision, inception, tf, keras, tflite, caffe, raw";

    fn preprocess(self, h: u32, w: u32) -> (ChannelOrder, PreprocessSpec) {
        let spec = |resize, scale, mean, std| PreprocessSpec {
            resize_short_side: resize,
            filter: Filter::Bilinear,
            crop: [h, w],
            scale,
            mean,
            std,
        };
        // 256 for a 224 input: torchvision's Resize(256) + CenterCrop(224),
        // and the same region as TensorFlow's crop of 224/(224+32).
        let short_side = Some((h.min(w) as f64 * 256.0 / 224.0).round() as u32);
        match self {
            Preset::Torchvision => (
                ChannelOrder::Rgb,
                spec(
                    short_side,
                    1.0 / 255.0,
                    [0.485, 0.456, 0.406],
                    [0.229, 0.224, 0.225],
                ),
            ),
            Preset::Inception => (
                ChannelOrder::Rgb,
                spec(None, 1.0 / 255.0, [0.5; 3], [0.5; 3]),
            ),
            Preset::Tflite => {
                let mut s = spec(short_side, 1.0, [127.0; 3], [128.0; 3]);
                s.filter = Filter::Bicubic;
                (ChannelOrder::Rgb, s)
            }
            Preset::Caffe => (
                ChannelOrder::Bgr,
                spec(None, 1.0, [103.939, 116.779, 123.68], [1.0; 3]),
            ),
            Preset::Raw => (ChannelOrder::Rgb, spec(None, 1.0, [0.0; 3], [1.0; 3])),
        }
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "torchvision" | "torch" | "pytorch" => Ok(Preset::Torchvision),
            "inception" | "tf" | "tensorflow" | "keras" => Ok(Preset::Inception),
            "tflite" | "efficientnet-lite" => Ok(Preset::Tflite),
            "caffe" => Ok(Preset::Caffe),
            "raw" => Ok(Preset::Raw),
            _ => Err(format!("unknown preset '{s}' (presets: {})", Preset::NAMES)),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Torchvision => "torchvision",
            Preset::Inception => "inception",
            Preset::Tflite => "tflite",
            Preset::Caffe => "caffe",
            Preset::Raw => "raw",
        })
    }
}

/// What the user told `model init`; everything else is read or asked.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub preset: Option<Preset>,
    /// The embedding tensor (any tensor of the graph).
    pub embedding: Option<String>,
    /// How a feature-map embedding becomes a vector (default for a feature map: `mean`).
    pub pool: Option<Pool>,
    /// Manifest name (default: the file's stem).
    pub name: Option<String>,
}

/// One fact of a guessed manifest and where it came from.
#[derive(Debug, Clone)]
pub struct Note {
    pub field: &'static str,
    pub value: String,
    pub why: String,
    /// Not stated by the graph or the user: a person must check it.
    pub confirm: bool,
}

/// A guessed manifest (its `onnx` the path given) and how each field was chosen.
#[derive(Debug, Clone)]
pub struct Guess {
    pub manifest: Manifest,
    pub notes: Vec<Note>,
}

/// Ops that pass a classifier's output on to the graph output unchanged in
/// meaning (logits, probabilities).
const AFTER_CLASSIFIER: &[&str] = &[
    "Softmax",
    "LogSoftmax",
    "Identity",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Add",
    "Sigmoid",
];

/// Guesses a manifest for the ONNX file `onnx`.
pub fn guess_manifest(onnx: &Path, options: &InitOptions) -> Result<Guess, InitError> {
    let bytes = std::fs::read(onnx).map_err(|source| InitError::Io {
        path: onnx.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    let proto = parse_proto(onnx, &bytes).map_err(ModelError::from)?;
    drop(bytes);
    let summary = OnnxSummary::from_proto(&proto);
    let mut notes = Vec::new();
    let mut note = |field, value: String, why: String, confirm| {
        notes.push(Note {
            field,
            value,
            why,
            confirm,
        })
    };

    // The input: one float image tensor.
    let input = match summary.inputs.as_slice() {
        [] => {
            return Err(InitError::NoImageInput(
                "the model has no input tensor".into(),
            ))
        }
        [one] => one,
        many => {
            return Err(InitError::SeveralInputs(
                many.iter().map(|i| i.name.clone()).collect(),
            ))
        }
    };
    let dims = match &input.dims {
        Some(d) if d.len() == 4 => d.clone(),
        other => {
            return Err(InitError::NoImageInput(format!(
                "input '{}' is {}: not an image batch [N, C, H, W] or [N, H, W, C]",
                input.name,
                other
                    .as_ref()
                    .map_or("of undeclared shape".into(), |d| format!(
                        "[{}]",
                        d.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")
                    ))
            )))
        }
    };
    if input.dtype != "float" {
        return Err(InitError::NoImageInput(format!(
            "input '{}' holds {} values; edgeclr feeds float32 images",
            input.name, input.dtype
        )));
    }
    let fixed = |d: &Dim| match d {
        Dim::Fixed(v) if *v > 0 => Some(*v as u32),
        _ => None,
    };
    let (c1, c3) = (fixed(&dims[1]), fixed(&dims[3]));
    let layout = match (c1, c3) {
        (Some(3), _) => Layout::Nchw,
        (_, Some(3)) => Layout::Nhwc,
        (Some(c), _) | (_, Some(c)) if c == 1 || c == 4 => {
            return Err(InitError::Contradiction(format!(
                "input '{}' takes {c}-channel images ([{}]); edgeclr feeds 3-channel RGB/BGR images",
                input.name,
                dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")
            )))
        }
        _ => {
            return Err(InitError::NoImageInput(format!(
                "input '{}' is [{}]: no dimension of 3 channels at position 1 (NCHW) or 3 (NHWC)",
                input.name,
                dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let (hd, wd) = match layout {
        Layout::Nchw => (&dims[2], &dims[3]),
        Layout::Nhwc => (&dims[1], &dims[2]),
    };
    note(
        "input",
        format!("{} {}", input.name, format!("{layout:?}").to_lowercase()),
        format!(
            "the graph's only input, [{}]: 3 channels at position {}",
            dims.iter()
                .map(Dim::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if layout == Layout::Nchw { 1 } else { 3 }
        ),
        false,
    );
    let (h, w) = match (fixed(hd), fixed(wd)) {
        (Some(h), Some(w)) => (h, w),
        _ => {
            return Err(InitError::Question(format!(
                "input '{}' has a dynamic size ({hd} x {wd}): which size was the model trained at? \
                 Export it with a fixed size (e.g. 224 x 224), or write input.shape and \
                 preprocess.crop by hand",
                input.name
            )))
        }
    };

    // The preprocessing: told, or read from the producer, or asked.
    let producer = summary.producer.to_lowercase();
    let preset = match options.preset {
        Some(p) => {
            note("preprocess", p.to_string(), "--preset".into(), false);
            p
        }
        None if producer.contains("pytorch") => {
            note(
                "preprocess",
                "torchvision".into(),
                format!(
                    "producer '{}': the ImageNet recipe most PyTorch models use; confirm, or pass --preset",
                    summary.producer
                ),
                true,
            );
            Preset::Torchvision
        }
        None => {
            return Err(InitError::Question(format!(
                "how were pixels normalised when this model was trained? The graph cannot say \
                 (producer: '{}'). Pass --preset NAME ({}): torchvision = ImageNet mean/std, \
                 inception/tf/keras = x/127.5 - 1, tflite = (x - 127)/128, caffe = BGR minus the \
                 mean, raw = 0..255",
                if summary.producer.is_empty() {
                    "none"
                } else {
                    &summary.producer
                },
                Preset::NAMES
            )))
        }
    };
    let (channels, preprocess) = preset.preprocess(h, w);
    if layout == Layout::Nhwc && preset == Preset::Torchvision && options.preset.is_none() {
        note(
            "layout",
            "nhwc".into(),
            "an NHWC input from PyTorch is unusual: check the layout".into(),
            true,
        );
    }

    // The embedding and the logits.
    let graph = proto.graph.clone().unwrap_or_default();
    let classifier = find_classifier(&graph);
    let logits = classifier
        .as_ref()
        .and_then(|(_, out)| reaches_output(&graph, out));
    let embedding = match &options.embedding {
        Some(name) => {
            note("embedding", name.clone(), "--embedding".into(), false);
            name.clone()
        }
        None => {
            let candidates: Vec<&str> = summary
                .outputs
                .iter()
                .filter(|o| Some(&o.name) != logits.as_ref())
                .filter(|o| o.dims.as_ref().is_none_or(|d| d.len() == 2))
                .map(|o| o.name.as_str())
                .collect();
            match (candidates.as_slice(), &classifier) {
                ([one], _) => {
                    note(
                        "embedding",
                        one.to_string(),
                        "the graph's [N, D] output that is not the classifier's".into(),
                        false,
                    );
                    one.to_string()
                }
                ([], Some((input, _))) => {
                    note(
                        "embedding",
                        input.clone(),
                        "the input of the classifier (the last Gemm/MatMul with constant weights)"
                            .into(),
                        false,
                    );
                    input.clone()
                }
                _ => {
                    let outputs: Vec<&str> =
                        summary.outputs.iter().map(|o| o.name.as_str()).collect();
                    return Err(InitError::Question(format!(
                        "which tensor is the embedding? No single [N, D] output and no classifier \
                         to take the input of (outputs: {}). Pass --embedding TENSOR",
                        outputs.join(", ")
                    )));
                }
            }
        }
    };
    let sample: Vec<usize> = match layout {
        Layout::Nchw => vec![3, h as usize, w as usize],
        Layout::Nhwc => vec![h as usize, w as usize, 3],
    };
    let shape_of = |tensor: &str| -> Result<Vec<usize>, InitError> {
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| InitError::NoImageInput("the model has no graph".into()))?;
        crate::onnx::require_tensor(graph, tensor)
            .map_err(|e| InitError::Question(e.to_string()))?;
        Ok(tensor_shape(&proto, tensor, &sample)?)
    };
    let embedding_shape = shape_of(&embedding)?;
    let pool = match (options.pool, embedding_shape.len()) {
        (Some(p), _) => p,
        (None, 3) => {
            note(
                "pool",
                "mean".into(),
                format!(
                    "'{embedding}' is a feature map {embedding_shape:?}: averaged over the grid; \
                     `grid:GxG` keeps where things are"
                ),
                true,
            );
            Pool::Mean
        }
        (None, _) => Pool::None,
    };
    let embedding_dim = match (pool, embedding_shape.as_slice()) {
        (Pool::None | Pool::Flatten, dims) => dims.iter().product(),
        (Pool::Mean, [c, _, _]) => *c,
        (Pool::Grid(g), [c, _, _]) => c * g * g,
        (p, dims) => {
            return Err(InitError::Contradiction(format!(
                "pool '{p}' needs a feature map [N, C, H, W]; '{embedding}' is [N, {}]",
                dims.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    note(
        "embedding_dim",
        embedding_dim.to_string(),
        format!(
            "shape inference: '{embedding}' is [N, {}]",
            dims_text(&embedding_shape)
        ),
        false,
    );
    let (logits, num_classes) = match logits.filter(|l| *l != embedding) {
        Some(l) => {
            let classes: usize = shape_of(&l)?.iter().product();
            note(
                "logits",
                format!("{l} ({classes} classes)"),
                "the classifier's output".into(),
                false,
            );
            (Some(l), Some(classes))
        }
        None => (None, None),
    };
    let name = options.name.clone().unwrap_or_else(|| {
        onnx.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    note(
        "licence",
        "unknown".into(),
        "the graph does not say: write the weights' licence before you ship the model".into(),
        true,
    );
    let manifest = Manifest {
        name,
        description: None,
        onnx: onnx.to_path_buf(),
        sha256,
        licence: "unknown".into(),
        source: format!(
            "{} (producer: {}); manifest written by edgeclr model init",
            onnx.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            if summary.producer.is_empty() {
                "not recorded"
            } else {
                &summary.producer
            }
        ),
        classes: None,
        input: InputSpec {
            name: input.name.clone(),
            shape: sample,
            layout,
            channels,
        },
        preprocess,
        outputs: OutputSpec {
            embedding,
            pool,
            logits,
            embedding_dim,
            num_classes,
        },
    };
    Ok(Guess { manifest, notes })
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The classifier: the last Gemm or MatMul whose weight is a constant
/// (an initialiser or a Constant node), as `(data input, output)`.
fn find_classifier(graph: &pb::GraphProto) -> Option<(String, String)> {
    let constant = |name: &str| {
        graph.initializer.iter().any(|t| t.name == name)
            || graph
                .node
                .iter()
                .any(|n| n.op_type == "Constant" && n.output.iter().any(|o| o == name))
    };
    // ONNX lists nodes in topological order: the last such node is nearest the output.
    graph.node.iter().rev().find_map(|n| {
        let matmul = n.op_type == "Gemm" || n.op_type == "MatMul";
        if matmul && n.input.len() >= 2 && constant(&n.input[1]) && !constant(&n.input[0]) {
            Some((n.input[0].clone(), n.output.first()?.clone()))
        } else {
            None
        }
    })
}

/// The graph output `tensor` becomes through at most a few pass-on ops
/// (softmax, reshape, a bias add), if any.
fn reaches_output(graph: &pb::GraphProto, tensor: &str) -> Option<String> {
    let mut current = tensor.to_owned();
    for _ in 0..4 {
        if graph.output.iter().any(|o| o.name == current) {
            return Some(current);
        }
        let next = graph.node.iter().find(|n| {
            AFTER_CLASSIFIER.contains(&n.op_type.as_str()) && n.input.first() == Some(&current)
        })?;
        current = next.output.first()?.clone();
    }
    graph
        .output
        .iter()
        .any(|o| o.name == current)
        .then_some(current)
}

/// The manifest as TOML, its `onnx` path relative to `dir` when the model is
/// inside it, with a header listing the guesses a person must confirm.
pub fn manifest_toml(guess: &Guess, dir: &Path) -> Result<String, InitError> {
    let mut manifest = guess.manifest.clone();
    manifest.onnx = relative_to(&guess.manifest.onnx, dir);
    let body = toml::to_string(&manifest)
        .map_err(|e| InitError::Question(format!("cannot write the manifest as TOML: {e}")))?;
    let mut text = String::from(
        "# edgeclr model manifest, guessed by `edgeclr model init`. Paths are relative to this file.\n",
    );
    let confirm: Vec<&Note> = guess.notes.iter().filter(|n| n.confirm).collect();
    if !confirm.is_empty() {
        text.push_str("# Confirm before you rely on it:\n");
        for n in confirm {
            text.push_str(&format!("#   {} = {}: {}\n", n.field, n.value, n.why));
        }
    }
    text.push('\n');
    text.push_str(&body);
    Ok(text)
}

fn relative_to(path: &Path, dir: &Path) -> PathBuf {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (path, dir) = (canon(path), canon(dir));
    match path.strip_prefix(&dir) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => path,
    }
}
