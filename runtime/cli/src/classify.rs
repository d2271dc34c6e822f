//! `edgeclr classify`: top-k classes for image files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use edgeclr::data::{decode_image, DecodeLimits};
use edgeclr::embed::embed_images;
use edgeclr::Preprocessor;

use super::common::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// How many classes to show per image.
    #[arg(long, short = 'k', default_value_t = 5)]
    top: usize,
    /// Image files (PNG, JPEG, BMP, GIF, TIFF, WebP).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// Softmax of one row of logits, computed stably.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

pub fn run(args: Args) -> Result<()> {
    let mut encoder = args.model.load(false)?;
    let manifest = encoder.manifest().clone();
    if manifest.outputs.logits.is_none() {
        bail!(
            "model '{}' has no logits output; classify needs one (use `edgeclr probe predict` or `edgeclr knn predict` on its embeddings)",
            manifest.name
        );
    }
    let names = manifest.class_names()?;
    let preprocessor = Preprocessor::new(&manifest);
    let mut failures = 0;
    for path in &args.images {
        let image = match decode_image(path, DecodeLimits::default()) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("warning: {e}");
                failures += 1;
                continue;
            }
        };
        let out = embed_images(&mut *encoder, &preprocessor, &[image])
            .with_context(|| format!("classifying {}", path.display()))?;
        let logits = out.logits.context("the model returned no logits")?;
        let probs = softmax(logits.row(0).as_slice().context("logits not contiguous")?);
        let mut ranked: Vec<usize> = (0..probs.len()).collect();
        ranked.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        println!("{}", path.display());
        for &c in ranked.iter().take(args.top) {
            let name = names
                .as_ref()
                .and_then(|n| n.get(c))
                .map_or("", String::as_str);
            println!("  {:>6.2}%  {:>4}  {}", probs[c] * 100.0, c, name);
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} images could not be read",
            args.images.len()
        );
    }
    Ok(())
}
