//! `edgeclr metrics`: how healthy is a representation?

use std::path::PathBuf;

use anyhow::Result;
use edgeclr::metrics::Diagnostics;
use edgeclr::store::read_matrix;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Embeddings, one row per sample (.npy, f32).
    #[arg(value_name = "EMB.npy")]
    embeddings: PathBuf,
    /// Embeddings of positive partners (e.g. another augmented view), row i
    /// paired with row i; enables alignment.
    #[arg(long, value_name = "EMB2.npy")]
    pairs: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write the full singular spectrum (one value per line) to this file.
    #[arg(long, value_name = "FILE")]
    spectrum: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let x = read_matrix(&args.embeddings)?;
    let y = args.pairs.as_deref().map(read_matrix).transpose()?;
    let diag = Diagnostics::compute(x.view(), y.as_ref().map(|y| y.view()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&diag)?);
    } else {
        println!("{diag}");
    }
    if let Some(path) = args.spectrum {
        let text: String = diag.spectrum.iter().map(|s| format!("{s}\n")).collect();
        std::fs::write(&path, text)?;
    }
    Ok(())
}
