//! `edgeclr info`: what a model is and whether this build can run it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use edgeclr::inspect::OnnxSummary;
use edgeclr::{LoadOptions, Manifest, TractEncoder};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An .onnx file, a manifest.toml, or a model directory (default: the shipped model).
    #[arg(value_name = "MODEL")]
    model: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let path = super::common::resolve_model(args.model.as_deref());
    let manifest = Manifest::load(&path);
    let onnx = match (&manifest, path.extension().is_some_and(|e| e == "onnx")) {
        (_, true) => path.clone(),
        (Ok(m), false) => m.onnx.clone(),
        (Err(e), false) => return Err(anyhow::anyhow!("{e}")),
    };
    let bytes = std::fs::read(&onnx).with_context(|| format!("reading {}", onnx.display()))?;
    let summary = edgeclr::inspect::summarize(&onnx, &bytes)?;
    println!(
        "model file:  {} ({:.1} MB)",
        onnx.display(),
        bytes.len() as f64 / 1e6
    );
    println!("sha256:      {}", edgeclr::onnx::sha256_hex(&bytes));
    print_summary(&summary);
    match &manifest {
        Ok(m) => {
            println!("\n-- manifest --\n{m}");
            print!("\ntract:       ");
            match TractEncoder::load(m, &LoadOptions::default()) {
                Ok(_) => println!("loads, optimises and plans for a batch of N: runnable"),
                Err(e) => println!("cannot run it: {e}"),
            }
        }
        Err(e) => println!(
            "\nmanifest:    none usable ({e})\ntract:       needs a manifest to be checked and run"
        ),
    }
    Ok(())
}

fn print_summary(summary: &OnnxSummary) {
    println!("{summary}");
}
