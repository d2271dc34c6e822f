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
use edgeclr::adapt::config::AdaptConfig;
use edgeclr::adapt::trainer::Trainer;
use edgeclr::adapt::views::{Precision, ViewCache};
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
    /// Labelled data with train and test splits: an IDX directory (train +
    /// t10k) or a split tree (`train/` and `test/` class-per-subfolder folders).
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
    /// Epochs of the adaptation step on the train images; 0 skips it.
    #[arg(long, default_value_t = 30, value_name = "N")]
    adapt_epochs: usize,
    /// Objective of the adaptation step. `supcon` uses the train split's
    /// labels (same-class images are positives); the others use none.
    #[arg(long, default_value = "supcon:tau=0.1", value_name = "LOSS")]
    adapt_loss: String,
    /// Augmented views per train image for the adaptation step, besides the
    /// plain embedding the demo already has.
    #[arg(long, default_value_t = 1, value_name = "V")]
    adapt_views: usize,
    /// Width of the adaptation step's projection head; 0 (the default)
    /// trains the adapter's output directly, which is what k-NN and probes
    /// read (measured: with a 128-wide head that is thrown away, SupCon
    /// lowered k-NN on the pooled embedding, 83.8 -> 82.4; without, 86.0).
    #[arg(long, default_value_t = 0, value_name = "N")]
    adapt_head_out: usize,
    /// The embedding the adaptation step trains on: a model (manifest) read
    /// from the same or another ONNX file, or `same` for `--model`'s. The
    /// default is the shipped MobileNetV2 tapped at `features.13` on a 7x7
    /// grid: an earlier block with its layout kept classifies the shifted
    /// domain better than the final pooled vector, before any training.
    /// The report compares it with `--model`'s frozen embedding.
    #[arg(long, default_value = DEFAULT_ADAPT_MODEL, value_name = "MODEL|same")]
    adapt_model: String,
    /// Learning rate of the adaptation step.
    #[arg(long, default_value_t = AdaptConfig::default().lr, value_name = "LR")]
    adapt_lr: f32,
    /// A second objective trained on the same views, scope and budget, as
    /// the baseline the adaptation step is compared with: `ce` (the
    /// default) fine-tunes with cross-entropy through a linear classifier;
    /// `none` skips it.
    #[arg(long, default_value = "ce", value_name = "LOSS|none")]
    adapt_baseline: String,
    /// Seed of the adaptation step: its augmented views, initialisation and
    /// batch order (both objectives use it). Rerun with others to see the
    /// spread of a result on 500 test images.
    #[arg(long, default_value_t = AdaptConfig::default().seed, value_name = "SEED")]
    adapt_seed: u64,
}

/// The adaptation step's default embedding (`--adapt-model`).
const DEFAULT_ADAPT_MODEL: &str = "models/mobilenet_v2_f13_grid7";

/// Frozen vs adapted, as the adaptation step measured them.
#[derive(Debug, Serialize)]
struct AdaptReport {
    /// The model whose embedding was adapted (`--adapt-model`).
    model: String,
    loss: String,
    /// Whether the train split's labels were used (`supcon`).
    labelled: bool,
    epochs: usize,
    augmented_views: usize,
    seconds: f64,
    view_seconds: f64,
    frozen: Side,
    adapted: Side,
    /// `--adapt-baseline`, trained on the same views and scope.
    baseline: Option<BaselineReport>,
}

/// The baseline objective's run (`--adapt-baseline`).
#[derive(Debug, Serialize)]
struct BaselineReport {
    loss: String,
    seconds: f64,
    adapted: Side,
}

/// One column of the frozen-vs-adapted table (test split).
#[derive(Debug, Serialize)]
struct Side {
    knn_test_acc: f64,
    linear_probe_test_acc: f64,
    alignment: Option<f64>,
    uniformity: f64,
    effective_rank: f64,
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
    adaptation: Option<AdaptReport>,
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
                ..EmbeddingMeta::default()
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

    let backend = encoder.backend().to_owned();
    let adaptation = if args.adapt_epochs > 0 {
        let pooled = Side {
            knn_test_acc: knn_test,
            linear_probe_test_acc: probe_test,
            alignment: diagnostics.alignment,
            uniformity: diagnostics.uniformity,
            effective_rank: diagnostics.effective_rank,
        };
        let classes = train.class_names().unwrap_or_default();
        let labels = (train_labels, test_labels);
        Some(if args.adapt_model == "same" {
            let data = Labelled {
                train: &train_emb.embeddings,
                train_labels,
                test: &test_emb.embeddings,
                test_labels,
                flipped: &flipped,
                classes,
            };
            adapt_step(&args, &mut *encoder, &train, &data, pooled, None, &config)?
        } else {
            // One encoder at a time: the tap's replaces the main one.
            drop(encoder);
            let path = if args.adapt_model == DEFAULT_ADAPT_MODEL {
                shipped(DEFAULT_ADAPT_MODEL)
            } else {
                PathBuf::from(&args.adapt_model)
            };
            let tap_args = ModelArgs {
                model: Some(path),
                ..args.model.clone()
            };
            let mut tap = tap_args.load(true).context("loading --adapt-model")?;
            let tap_name = tap.manifest().name.clone();
            let tap_train = embed_split(&mut *tap, &train, args.batch_size, "train (tap)")?;
            let tap_test = embed_split(&mut *tap, &test, args.batch_size, "test (tap)")?;
            let tap_flipped = embed_flipped(&mut *tap, &test, args.batch_size)?;
            let data = Labelled {
                train: &tap_train.embeddings,
                train_labels: labels.0,
                test: &tap_test.embeddings,
                test_labels: labels.1,
                flipped: &tap_flipped,
                classes,
            };
            let frozen = score(&data, data.train, data.test, data.flipped, args.k, &config)?;
            let baseline = (manifest.name.as_str(), &pooled);
            adapt_step(
                &args,
                &mut *tap,
                &train,
                &data,
                frozen,
                Some(baseline),
                &config,
            )
            .with_context(|| format!("adapting {tap_name}"))?
        })
    } else {
        None
    };

    let report = Report {
        model: manifest.name.clone(),
        backend,
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
        adaptation,
    };
    let path = args.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!(
        "\nwrote embeddings, probe.json, knn.json and report.json to {}",
        args.out.display()
    );
    super::memory::print_peak_rss();
    Ok(())
}

/// The demo's embeddings and labels, for the adaptation step.
struct Labelled<'a> {
    train: &'a Array2<f32>,
    train_labels: &'a [usize],
    test: &'a Array2<f32>,
    test_labels: &'a [usize],
    flipped: &'a Array2<f32>,
    classes: Vec<String>,
}

/// k-NN, linear probe and diagnostics of one representation of the demo's
/// images (`train`, `test`, `flipped`: rows of `data`'s images), fitted on
/// the train split and scored on the test split.
fn score(
    data: &Labelled,
    train: &Array2<f32>,
    test: &Array2<f32>,
    flipped: &Array2<f32>,
    k: usize,
    probe_config: &LinearProbeConfig,
) -> Result<Side> {
    let knn = KnnHead::from_labelled(train.view(), data.train_labels, data.classes.clone(), k)?;
    let (probe, _) = LinearProbe::fit(
        train.view(),
        data.train_labels,
        data.classes.clone(),
        probe_config,
    )?;
    let diag = Diagnostics::compute(test.view(), Some(flipped.view()))?;
    Ok(Side {
        knn_test_acc: knn.accuracy(test.view(), data.test_labels)?,
        linear_probe_test_acc: probe.accuracy(test.view(), data.test_labels)?,
        alignment: diag.alignment,
        uniformity: diag.uniformity,
        effective_rank: diag.effective_rank,
    })
}

/// Adapts on the train images (`edgeclr adapt`'s trainer; with `supcon`,
/// the default, using their labels; views: the plain embedding the demo has
/// plus `adapt_views` augmented ones), then scores frozen vs adapted on the
/// test split, which training never sees.
fn adapt_step(
    args: &Args,
    encoder: &mut dyn Encoder,
    train: &Dataset,
    data: &Labelled,
    frozen: Side,
    baseline_model: Option<(&str, &Side)>,
    probe_config: &LinearProbeConfig,
) -> Result<AdaptReport> {
    let model = encoder.manifest().name.clone();
    let started = Instant::now();
    let n = train.len();
    let augmented = super::adapt::build_cache(
        encoder,
        train,
        n,
        args.adapt_views.max(1),
        args.adapt_seed,
        Precision::F32,
    )?;
    let mut views = vec![data.train.clone()];
    views.extend((0..augmented.num_views()).map(|v| augmented.view(v)));
    let cache = ViewCache::new(views, Precision::F32)?;
    let view_seconds = started.elapsed().as_secs_f64();
    let (config, adapted) = train_and_score(
        args,
        &args.adapt_loss,
        &cache,
        data,
        probe_config,
        "adapting",
    )?;
    let labelled = config.loss.uses_labels();
    let baseline = match args.adapt_baseline.as_str() {
        "none" => None,
        loss => {
            let t0 = Instant::now();
            let (config, adapted) =
                train_and_score(args, loss, &cache, data, probe_config, "baseline")
                    .with_context(|| format!("the --adapt-baseline {loss} run"))?;
            Some(BaselineReport {
                loss: config.loss.to_string(),
                seconds: t0.elapsed().as_secs_f64(),
                adapted,
            })
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    println!();
    println!(
        "adaptation ({}, {} epochs on the {n} train images {}, {} augmented view(s); \
         {seconds:.0}s: {view_seconds:.0}s embedding views, {:.0}s training and scoring{}):",
        config.loss,
        args.adapt_epochs,
        if labelled {
            "with their labels"
        } else {
            "without labels"
        },
        args.adapt_views.max(1),
        seconds - view_seconds,
        baseline.as_ref().map_or(String::new(), |b| format!(
            ", {:.0}s of it the {} baseline",
            b.seconds, b.loss
        ))
    );
    // With a tap, the first column is `--model`'s frozen embedding (the
    // demo's main table), so the gain over it is read off one row.
    let mut head = match baseline_model {
        Some((name, _)) => format!("{name:>24} {model:>24} {:>24}", config.loss),
        None => format!("{:>24} {:>24}", "frozen", config.loss),
    };
    if let Some(b) = &baseline {
        head += &format!(" {:>24}", format!("{} (baseline)", b.loss));
    }
    println!("  {:<22} {head}", "");
    let row = |name: &str, pick: &dyn Fn(&Side) -> f64, pct: bool| {
        let s = if pct { 100.0 } else { 1.0 };
        let unit = if pct { "%" } else { " " };
        let mut line = format!("  {name:<22}");
        for side in baseline_model
            .map(|(_, b)| b)
            .into_iter()
            .chain([&frozen, &adapted])
            .chain(baseline.as_ref().map(|b| &b.adapted))
        {
            line += &format!(" {:>23.2}{unit}", pick(side) * s);
        }
        println!("{line}");
    };
    row(&format!("k-NN (k={})", args.k), &|s| s.knn_test_acc, true);
    row("linear probe", &|s| s.linear_probe_test_acc, true);
    row("alignment", &|s| s.alignment.unwrap_or(f64::NAN), false);
    row("uniformity", &|s| s.uniformity, false);
    row("effective rank", &|s| s.effective_rank, false);
    Ok(AdaptReport {
        model,
        loss: config.loss.to_string(),
        labelled,
        epochs: args.adapt_epochs,
        augmented_views: args.adapt_views.max(1),
        seconds,
        view_seconds,
        frozen,
        adapted,
        baseline,
    })
}

/// Trains `loss` on `cache` (the demo's adaptation settings) and scores
/// the adapted embedding of the train, test and flipped test images.
fn train_and_score(
    args: &Args,
    loss: &str,
    cache: &ViewCache,
    data: &Labelled,
    probe_config: &LinearProbeConfig,
    what: &str,
) -> Result<(AdaptConfig, Side)> {
    let objective: edgeclr::adapt::loss::Objective = loss.parse()?;
    let config = AdaptConfig {
        loss: objective,
        epochs: args.adapt_epochs,
        batch_size: 64,
        bank_size: 1024,
        head_out: args.adapt_head_out,
        lr: args.adapt_lr,
        seed: args.adapt_seed,
        classes: if objective.needs_classes() {
            data.classes.len()
        } else {
            0
        },
        ..AdaptConfig::default()
    };
    let n = cache.len();
    let steps = Trainer::steps_per_epoch(n, config.batch_size);
    let mut trainer = Trainer::new(config.clone(), data.train.ncols(), steps)?;
    if objective.uses_labels() {
        trainer.set_labels(data.train_labels.iter().copied().map(Some).collect());
    }
    trainer.prefill_bank(cache.view(1).view())?;
    let bar = progress((steps * args.adapt_epochs) as u64, what);
    for _ in 0..args.adapt_epochs {
        trainer.train_epoch(cache, |_| bar.inc(1))?;
    }
    bar.finish_and_clear();
    let adapted = score(
        data,
        &trainer.adapt(data.train.view())?,
        &trainer.adapt(data.test.view())?,
        &trainer.adapt(data.flipped.view())?,
        args.k,
        probe_config,
    )?;
    Ok((config, adapted))
}
