//! `edgeclr model init`: write a manifest for an ONNX file from what its graph
//! says and a preprocessing preset, check that it loads and runs, and say what
//! was guessed.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use edgeclr::atomic::write_atomic;
use edgeclr::manifest::{Pool, MANIFEST_FILE};
use edgeclr::model_init::{guess_manifest, manifest_toml, InitError, InitOptions, Preset};
use edgeclr::{Encoder, LoadOptions, Manifest, TractEncoder};
use ndarray::Array4;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write manifest.toml for an ONNX image model: input, layout, embedding
    /// and logits read from the graph, preprocessing from --preset, the sha256
    /// computed. The manifest is loaded and one image run before it is kept;
    /// what was guessed is printed, and what a person must confirm is marked.
    Init(InitArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The .onnx file.
    #[arg(value_name = "MODEL.onnx")]
    pub onnx: PathBuf,
    /// How pixels were normalised in training: torchvision (ImageNet
    /// mean/std, resize 256 -> crop 224), inception / tf / keras
    /// (x/127.5 - 1), tflite ((x - 127)/128, EfficientNet-Lite), caffe (BGR,
    /// ImageNet mean subtracted, 0..255), raw (0..255). Default: torchvision
    /// for a PyTorch export, else asked.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<Preset>,
    /// The embedding tensor, any tensor of the graph (default: the [N, D]
    /// output, else the classifier's input).
    #[arg(long, value_name = "TENSOR")]
    pub embedding: Option<String>,
    /// How a feature-map embedding becomes a vector: mean, grid:GxG, flatten
    /// (default for a feature map: mean).
    #[arg(long, value_name = "POOL", value_parser = parse_pool)]
    pub pool: Option<Pool>,
    /// The manifest's name (default: the file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Directory to write manifest.toml into (default: the model's directory).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Replace an existing manifest.toml.
    #[arg(long)]
    pub force: bool,
}

/// `edgeclr models`: the manifests under a models directory.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The directory holding one folder per model (default: the shipped `models/`).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Lists every `DIR/*/manifest.toml`: name, embedding, ONNX size (or how to
/// make a missing one), licence and description.
pub fn list(args: ListArgs) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| super::common::shipped("models"));
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(MANIFEST_FILE).is_file())
        .collect();
    entries.sort();
    if entries.is_empty() {
        bail!("no model manifests under {}", dir.display());
    }
    println!(
        "{:<24} {:<34} {:>9}  {:<13} description",
        "model", "embedding", "onnx", "licence"
    );
    for entry in entries {
        let folder = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = match Manifest::load(&entry) {
            Ok(m) => m,
            Err(e) => {
                println!("{folder:<24} (unreadable manifest: {e})");
                continue;
            }
        };
        let out = &manifest.outputs;
        let embedding = if out.pool.is_none() {
            format!("{} [{}]", out.embedding, out.embedding_dim)
        } else {
            format!("{} {} [{}]", out.embedding, out.pool, out.embedding_dim)
        };
        let size = match std::fs::metadata(&manifest.onnx) {
            Ok(m) => format!("{:.1} MB", m.len() as f64 / 1e6),
            Err(_) => "missing".into(),
        };
        println!(
            "{folder:<24} {embedding:<34} {size:>9}  {:<13} {}",
            manifest.licence,
            manifest.description.as_deref().unwrap_or("")
        );
        if !manifest.onnx.is_file() {
            let script = std::fs::read_dir(&entry)
                .ok()
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("export_") && n.ends_with(".py"))
                });
            match script {
                Some(s) => println!(
                    "{:<24} make it: python3 {} (see {})",
                    "",
                    s.display(),
                    entry.join("README.md").display()
                ),
                None => println!("{:<24} {} is not there", "", manifest.onnx.display()),
            }
        }
    }
    Ok(())
}

fn parse_pool(s: &str) -> Result<Pool, String> {
    Pool::try_from(s.to_owned()).map_err(|e| e.to_string())
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Init(args) => init(args),
    }
}

fn init(args: InitArgs) -> Result<()> {
    if !args.onnx.is_file() {
        bail!("{} is not a file", args.onnx.display());
    }
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => args
            .onnx
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from),
    };
    let path = dir.join(MANIFEST_FILE);
    if path.exists() && !args.force {
        return Err(InitError::Exists { path }.into());
    }
    let options = InitOptions {
        preset: args.preset,
        embedding: args.embedding.clone(),
        pool: args.pool,
        name: args.name.clone(),
    };
    let guess = guess_manifest(&args.onnx, &options)
        .with_context(|| format!("guessing a manifest for {}", args.onnx.display()))?;

    // Nothing is written until the guess loads and runs one image.
    let mut encoder = TractEncoder::load(&guess.manifest, &LoadOptions::default())
        .context("the guessed manifest does not load")?;
    let shape = guess.manifest.input.shape.clone();
    let zeros = Array4::<f32>::zeros((1, shape[0], shape[1], shape[2]));
    let out = encoder
        .run(zeros.view())
        .context("the guessed manifest loads but one image does not run")?;

    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = manifest_toml(&guess, &dir)?;
    write_atomic(&path, |f| std::io::Write::write_all(f, text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    // Read back through the normal path, as every verb will.
    Manifest::load(&path).with_context(|| format!("reading back {}", path.display()))?;

    println!("wrote {}", path.display());
    for note in &guess.notes {
        println!(
            "  {} {:<13} {:<28} {}",
            if note.confirm { "?" } else { " " },
            note.field,
            note.value,
            note.why
        );
    }
    println!(
        "  checked: loads with tract, one image -> embedding [1, {}]{}",
        out.embedding.ncols(),
        out.logits
            .map_or(String::new(), |l| format!(", logits [1, {}]", l.ncols()))
    );
    if guess.notes.iter().any(|n| n.confirm) {
        println!(
            "lines marked ? are guesses: confirm them in {} before you rely on the embeddings",
            path.display()
        );
    }
    Ok(())
}
