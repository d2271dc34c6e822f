//! `edgeclr demo`: the whole foundation on the shipped model and data.
//!
//! Embeds the Fashion-MNIST sample (100/class train, 50/class test) with the
//! default encoder, trains a linear probe and a k-NN head on the train split,
//! reports test accuracy against a raw-pixel probe, and prints the
//! representation diagnostics of the test embeddings (alignment against a
//! horizontally flipped view).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeclr::data::Dataset;
use edgeclr::embed::{embed_dataset, embed_images, EmbedOptions, Embeddings};
use edgeclr::metrics::Diagnostics;
use edgeclr::probe::{KnnHead, LinearProbe, LinearProbeConfig};
use edgeclr::store::{EmbeddingMeta, EmbeddingSet};
use edgeclr::{Encoder, Preprocessor};
use ndarray::{concatenate, Array2, Axis};
use serde::Serialize;

use super::common::{progress, shipped, ModelArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled IDX data with train and t10k splits.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where embeddings, heads and the JSON report are written.
    #[arg(
        long,
        short = 'o',
        default_value = "target/edgeclr-demo",
        value_name = "DIR"
    )]
    out: PathBuf,
    /// Images per encoder call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Inverse L2 strength of the linear probes (scikit-learn's C).
    #[arg(long, short = 'C', default_value_t = 1.0)]
    c: f64,
    /// Neighbours voting in the k-NN head.
    #[arg(short = 'k', long, default_value_t = 20)]
    k: usize,
}

/// The numbers the demo reports; also written as `report.json`.
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    backend: String,
    train_images: usize,
    test_images: usize,
    embed_images_per_sec: f64,
    probe_c: f64,
    linear_probe_test_acc: f64,
    linear_probe_train_acc: f64,
    knn_k: usize,
    knn_test_acc: f64,
    raw_pixel_probe_test_acc: f64,
    diagnostics: Diagnostics,
}

fn embed_split(
    encoder: &mut dyn Encoder,
    dataset: &Dataset,
    batch: usize,
    what: &str,
) -> Result<Embeddings> {
    let bar = progress(dataset.len() as u64, what);
    let options = EmbedOptions {
        batch_size: batch,
        strict: true,
        ..EmbedOptions::default()
    };
    let out = embed_dataset(encoder, dataset, &options, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    Ok(out)
}

/// Embeddings of horizontally flipped images: the positive view for alignment.
fn embed_flipped(
    encoder: &mut dyn Encoder,
    dataset: &Dataset,
    batch: usize,
) -> Result<Array2<f32>> {
    let preprocessor = Preprocessor::new(encoder.manifest());
    let bar = progress(dataset.len() as u64, "flipped view");
    let mut parts = Vec::new();
    for start in (0..dataset.len()).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(dataset.len());
        let images = (start..end)
            .map(|i| {
                dataset
                    .image(i)
                    .map(|im| image::imageops::flip_horizontal(&im))
            })
            .collect::<Result<Vec<_>, _>>()?;
        parts.push(embed_images(encoder, &preprocessor, &images)?.embedding);
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    Ok(concatenate(Axis(0), &views)?)
}

/// Raw pixels scaled to [0, 1], one flattened image per row: the baseline.
fn raw_pixels(dataset: &Dataset) -> Result<Array2<f32>> {
    let first = dataset.image(0)?;
    let d = (first.width() * first.height()) as usize;
    let mut x = Array2::<f32>::zeros((dataset.len(), d));
    for (i, mut row) in x.rows_mut().into_iter().enumerate() {
        let img = image::DynamicImage::ImageRgb8(dataset.image(i)?).to_luma8();
        if img.as_raw().len() != d {
            bail!("image {i} has a different size from image 0");
        }
        row.iter_mut()
            .zip(img.as_raw())
            .for_each(|(v, &p)| *v = p as f32 / 255.0);
    }
    Ok(x)
}

pub fn run(args: Args) -> Result<()> {
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| shipped("data/fashion-mnist"));
    let train = Dataset::open(&data, Some("train"))
        .with_context(|| format!("opening {}", data.display()))?;
    let test = Dataset::open(&data, Some("t10k"))
        .with_context(|| format!("opening {}", data.display()))?;
    let (Some(train_labels), Some(test_labels)) = (train.labels(), test.labels()) else {
        bail!(
            "the demo needs labelled data ({} has no labels)",
            data.display()
        );
    };
    let classes = train.class_names().unwrap_or_default();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut encoder = args.model.load(true)?;
    let manifest = encoder.manifest().clone();
    println!(
        "edgeclr demo: {} ({}-d embeddings, {} backend, {} thread(s)) on {} ({} train / {} test images)",
        manifest.name,
        manifest.outputs.embedding_dim,
        encoder.backend(),
        args.model.threads,
        data.display(),
        train.len(),
        test.len()
    );

    let started = Instant::now();
    let train_emb = embed_split(&mut *encoder, &train, args.batch_size, "train")?;
    let test_emb = embed_split(&mut *encoder, &test, args.batch_size, "test")?;
    let embed_secs = started.elapsed().as_secs_f64();
    let rate = (train.len() + test.len()) as f64 / embed_secs;
    println!(
        "embedded {} images in {embed_secs:.1}s ({rate:.1} images/s)",
        train.len() + test.len()
    );
    let flipped = embed_flipped(&mut *encoder, &test, args.batch_size)?;

    for (name, e) in [("train", &train_emb), ("test", &test_emb)] {
        EmbeddingSet {
            embeddings: e.embeddings.clone(),
            labels: e.labels.clone(),
            meta: EmbeddingMeta {
                model: manifest.name.clone(),
                backend: encoder.backend().into(),
                normalized: false,
                source: data.display().to_string(),
                class_names: e.class_names.clone(),
                skipped: vec![],
            },
        }
        .save(&args.out.join(format!("{name}.npy")))?;
    }

    let config = LinearProbeConfig {
        c: args.c,
        ..LinearProbeConfig::default()
    };
    let (mut probe, fit) = LinearProbe::fit(
        train_emb.embeddings.view(),
        train_labels,
        classes.clone(),
        &config,
    )?;
    probe.model = Some(manifest.name.clone());
    probe.save(args.out.join("probe.json"))?;
    let probe_train = probe.accuracy(train_emb.embeddings.view(), train_labels)?;
    let probe_test = probe.accuracy(test_emb.embeddings.view(), test_labels)?;

    let knn = KnnHead::from_labelled(
        train_emb.embeddings.view(),
        train_labels,
        classes.clone(),
        args.k,
    )?;
    knn.save(args.out.join("knn.json"))?;
    let knn_test = knn.accuracy(test_emb.embeddings.view(), test_labels)?;

    let (raw_train, raw_test) = (raw_pixels(&train)?, raw_pixels(&test)?);
    let (raw_probe, _) = LinearProbe::fit(raw_train.view(), train_labels, classes, &config)?;
    let raw_test_acc = raw_probe.accuracy(raw_test.view(), test_labels)?;

    let diagnostics = Diagnostics::compute(test_emb.embeddings.view(), Some(flipped.view()))?;

    println!();
    println!("  head                              test accuracy");
    println!(
        "  linear probe on {:<17} {:>6.2}%   (train {:.2}%, {} L-BFGS iterations)",
        manifest.name,
        probe_test * 100.0,
        probe_train * 100.0,
        fit.iterations
    );
    println!(
        "  k-NN (k={:<2}, cosine)               {:>6.2}%",
        args.k,
        knn_test * 100.0
    );
    println!(
        "  linear probe on raw pixels        {:>6.2}%   (baseline)",
        raw_test_acc * 100.0
    );
    println!();
    println!("representation diagnostics (test embeddings, L2-normalised; positives = horizontal flips):");
    println!("{diagnostics}");

    let report = Report {
        model: manifest.name.clone(),
        backend: encoder.backend().into(),
        train_images: train.len(),
        test_images: test.len(),
        embed_images_per_sec: rate,
        probe_c: args.c,
        linear_probe_test_acc: probe_test,
        linear_probe_train_acc: probe_train,
        knn_k: args.k,
        knn_test_acc: knn_test,
        raw_pixel_probe_test_acc: raw_test_acc,
        diagnostics,
    };
    let path = args.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!(
        "\nwrote embeddings, probe.json, knn.json and report.json to {}",
        args.out.display()
    );
    Ok(())
}
