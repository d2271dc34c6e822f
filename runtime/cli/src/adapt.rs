//! `edgeclr adapt`: contrastive fine-tuning of an adapter + projection head on
//! top of the frozen encoder, from unlabelled images, on the device.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeclr::adapt::budget::RunShape;
use edgeclr::adapt::config::AdaptConfig;
use edgeclr::adapt::layers::RunLayers;
use edgeclr::adapt::loss::Objective;
use edgeclr::adapt::optim::OptimizerKind;
use edgeclr::adapt::session::run_dir::{self, EpochLog};
use edgeclr::adapt::session::val::ValSet;
use edgeclr::adapt::session::{Session, SessionEvents, SessionOptions, TrainViews};
use edgeclr::adapt::tail::{load_tail, write_trunk, ParamScope, TailChoice, TailSpec};
use edgeclr::adapt::trainer::{StepReport, Trainer};
use edgeclr::adapt::views::{Precision, ViewCache, ViewMaker};
use edgeclr::backend::load_encoder;
use edgeclr::data::{find_duplicates, Dataset};
use edgeclr::{Encoder, LoadOptions};

use super::common::{progress, ModelArgs};
use super::watch::CollapseArgs;

/// The library's defaults are the flags' defaults: one set, in
/// [`AdaptConfig::default`].
fn defaults() -> AdaptConfig {
    AdaptConfig::default()
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training images: a folder, an IDX file, or an IDX directory (its
    /// `train` split). Their labels (class subfolders, IDX labels) are used
    /// only by `--loss supcon` and `--loss ce`; the other objectives ignore them.
    #[arg(long, value_name = "DIR|IDX")]
    pub images: PathBuf,
    /// With `--loss supcon` or `ce`: keep the labels of only the first N
    /// images of each class (a few-shot set); the other images train
    /// unlabelled (supcon: each its own class of one; ce: not at all).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub labels_per_class: Option<u64>,
    /// Semi-supervised: labelled images (class subfolders, a CSV list or an
    /// IDX directory's `train` split, e.g. the shots enrolled in a k-NN head)
    /// trained beside --images, whose labels are then ignored: with
    /// `--loss supcon` the labelled ones are positives of their class and
    /// each unlabelled image is its own class of one (InfoNCE against the
    /// labelled bank); with `ce` only the labelled ones train.
    #[arg(long, value_name = "DIR|IDX", conflicts_with_all = ["labels_per_class", "stream"])]
    pub labelled: Option<PathBuf>,
    /// Labelled data for evaluation only, never trained on: k-NN and linear
    /// probe fitted on its train split, scored on its test split, every
    /// epoch. An IDX directory (train + t10k), a split tree (`train/` and
    /// `test/` class-per-subfolder folders), or, with --val-test, the train
    /// part alone (a folder, CSV list or IDX file).
    #[arg(long, value_name = "DIR")]
    pub val: Option<PathBuf>,
    /// The test part of --val, when --val names only its train part.
    #[arg(long, value_name = "PATH", requires = "val")]
    pub val_test: Option<PathBuf>,
    /// Run directory: checkpoint, metrics.jsonl, exported model.
    #[arg(long, short = 'o', value_name = "RUN_DIR")]
    pub out: PathBuf,
    /// Continue from RUN_DIR/checkpoint.safetensors.
    #[arg(long)]
    pub resume: bool,
    /// Objective: infonce[:tau=0.2], align-uniform[:lambda=1,t=2], spectral[:mu=1], sigmoid, byol,
    /// supcon[:tau=0.1] (supervised: images with the same label are positives; for unlabelled
    /// images nn=K nearest keys as positives, fnc=M next nearest dropped from negatives, uw=W
    /// their weight; defaults nn=0,fnc=0,uw=1),
    /// ce (supervised baseline: cross-entropy of a linear classifier, dropped at export).
    #[arg(long, default_value_t = defaults().loss)]
    pub loss: Objective,
    #[arg(long, default_value_t = defaults().epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = defaults().batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = defaults().lr)]
    pub lr: f32,
    /// sgd or adamw.
    #[arg(long, default_value_t = defaults().optimizer)]
    pub optimizer: OptimizerKind,
    #[arg(long, default_value_t = defaults().weight_decay)]
    pub weight_decay: f32,
    /// MoCo queue length for infonce and supcon (0: in-batch negatives only).
    #[arg(long, default_value_t = defaults().bank_size)]
    pub bank_size: usize,
    /// EMA momentum of the key encoder.
    #[arg(long, default_value_t = defaults().momentum)]
    pub momentum: f32,
    /// Adapter bottleneck width.
    #[arg(long, default_value_t = defaults().bottleneck)]
    pub bottleneck: usize,
    /// Output width of the projection head the loss reads (SimCLR's MLP,
    /// dropped after training); 0: no head, the loss reads the adapted
    /// embedding itself, so everything it learns is in what is exported.
    #[arg(long, default_value_t = defaults().head_out, value_name = "N")]
    pub head_out: usize,
    /// Augmented views per image in the view cache (≥ 2).
    #[arg(long, default_value_t = 2)]
    pub views: usize,
    /// Also train the last layers of the ONNX graph: `auto` (the last
    /// weighted layer before the embedding and what follows it; for
    /// MobileNetV2 the 1×1 conv 320→1280, ReLU6 and pooling), `blocks:K`
    /// (as --train-blocks) or the name of the first node to train (as
    /// --train-from). The trunk is cut before them and the views hold the
    /// cut tensor.
    #[arg(long, value_name = "auto|blocks:K|NODE", conflicts_with_all = ["train_blocks", "train_from"])]
    pub train_tail: Option<TailChoice>,
    /// Train the last K blocks of the encoder (and the layers after them),
    /// found from the graph's structure (residual Adds, fan-outs, linear
    /// bottlenecks; `edgeclr layers` lists them). Depthwise and grouped
    /// convs, residual Adds, BatchNorm and pooling are differentiated by
    /// edgeclr's engine; any other op is refused by name. Pretrained
    /// blocks want a smaller step than a fresh adapter: with 10 labels per
    /// class and the last 4 blocks, `--lr 3e-4` scored 2–3 points more
    /// 10-shot k-NN than the 1e-3 default, 3e-3 6–12 points less (README,
    /// "10-shot, other scopes").
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "train_from")]
    pub train_blocks: Option<u64>,
    /// Train every node from NODE to the embedding (NODE must read one data
    /// tensor: a skip connection may not cross the cut).
    #[arg(long, value_name = "NODE")]
    pub train_from: Option<String>,
    /// Which parameters of the trained layers move: `all`, `biases`
    /// (TinyTL-style: conv/linear biases and BatchNorm shifts) or `norm`
    /// (per-channel scales and shifts). Needs a trained scope.
    #[arg(long, value_name = "all|biases|norm", default_value_t = defaults().train_params)]
    pub train_params: ParamScope,
    /// Storage of the view cache: f16 or f32 (default: f16 with
    /// --train-tail, whose cut tensors are large; f32 otherwise).
    #[arg(long, value_name = "f16|f32")]
    pub cache_precision: Option<Precision>,
    /// Streaming mode: fresh augmented views through the trunk at every
    /// step (as from a camera), no view cache. Slower per epoch (two trunk
    /// passes per image per epoch), no cache memory.
    #[arg(long)]
    pub stream: bool,
    /// Drift guard: after every step, pull the adapter (and tail) back
    /// toward the source weights by this fraction of the way (0: off; e.g.
    /// 0.1 for a long --stream at lr 1e-3: weights stay within about
    /// lr / A of their source, README "A long stream"). With --val the best
    /// epoch is exported anyway; the anchor is for runs nobody checks.
    #[arg(long, default_value_t = defaults().anchor, value_name = "A")]
    pub anchor: f32,
    /// Use only the first N training images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    #[command(flatten)]
    pub collapse: CollapseArgs,
    /// Fit the run in this much memory: shrinks the bank, then the batch, to
    /// fit the estimate, or refuses with the memory the run needs.
    #[arg(long, value_name = "MB")]
    pub memory_budget: Option<u64>,
}

/// The train and test parts of `--val` (and `--val-test`).
fn val_datasets(val: &Path, val_test: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let open = |path: &Path, split: Option<&str>| {
        Dataset::open(path, split).with_context(|| format!("opening {}", path.display()))
    };
    match val_test {
        Some(test) => Ok((open(val, None)?, open(test, None)?)),
        None if Dataset::has_splits(val) => {
            Ok((open(val, Some("train"))?, open(val, Some("test"))?))
        }
        None => bail!(
            "--val {} has no train and test splits (an IDX directory or train/ + test/ folders); \
             name the test part with --val-test",
            val.display()
        ),
    }
}

/// Frozen embeddings of `--val`'s two parts, with a progress bar.
fn load_val(encoder: &mut dyn Encoder, train: &Dataset, test: &Dataset) -> Result<ValSet> {
    let bar = progress((train.len() + test.len()) as u64, "val");
    let val = ValSet::embed(encoder, train, test, |done| bar.set_position(done as u64))
        .context("--val")?;
    bar.finish_and_clear();
    Ok(val)
}

/// Refuses a training set of copies of one image (no negatives: adaptation
/// could only collapse the encoder) and warns when copies make up half of it
/// (false negatives in every batch and in the memory bank).
fn check_duplicates(data: &Dataset, n: usize) -> Result<()> {
    let report = find_duplicates(data, n).context("checking the training images for copies")?;
    if report.all_identical() {
        bail!(
            "all {} training images are the same picture: contrastive adaptation learns by telling \
             images apart, so it has nothing to learn and would only collapse the encoder",
            report.images
        );
    }
    if report.duplicates() * 2 >= report.images {
        eprintln!(
            "warning: {} of {} training images repeat another one ({} distinct, the most repeated {}×); \
             copies act as false negatives",
            report.duplicates(),
            report.images,
            report.distinct,
            report.largest_group
        );
    }
    Ok(())
}

/// [`edgeclr::adapt::views::build_cache`] with a progress bar (shared with
/// `edgeclr demo` and `edgeclr layers`).
pub(super) fn build_cache(
    encoder: &mut dyn Encoder,
    data: &Dataset,
    n: usize,
    views: usize,
    seed: u64,
    precision: Precision,
) -> Result<ViewCache> {
    let bar = progress((n * views) as u64, "views");
    let cache =
        edgeclr::adapt::views::build_cache(encoder, data, n, views, seed, precision, |done, _| {
            bar.set_position(done as u64)
        })?;
    bar.finish_and_clear();
    Ok(cache)
}

/// Images used for the per-epoch diagnostics in streaming mode.
const STREAM_DIAG_IMAGES: usize = 256;

impl Args {
    /// The trained scope from --train-tail, --train-blocks or --train-from.
    fn tail_choice(&self) -> Result<Option<TailChoice>> {
        Ok(
            match (&self.train_tail, self.train_blocks, &self.train_from) {
                (Some(t), _, _) => Some(t.clone()),
                (None, Some(k), _) => Some(TailChoice::Blocks(k as usize)),
                (None, None, Some(n)) => Some(TailChoice::Node(n.clone())),
                (None, None, None) => None,
            },
        )
    }
}

pub fn run(mut args: Args) -> Result<()> {
    if args.views < 2 {
        bail!("--views must be at least 2 (a positive pair needs two views)");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let data = Dataset::open(&args.images, Some("train"))
        .with_context(|| format!("opening {}", args.images.display()))?;
    let n = args.limit.map_or(data.len(), |l| l.min(data.len()));
    check_duplicates(&data, n)?;
    let labelled = match &args.labelled {
        Some(path) => {
            let set = Dataset::open(path, Some("train"))
                .with_context(|| format!("opening --labelled {}", path.display()))?;
            if set.labels().is_none() {
                bail!(
                    "--labelled {} has no labels (class subfolders, a CSV list with labels or IDX labels)",
                    path.display()
                );
            }
            Some(set)
        }
        None => None,
    };
    // Training images: the first `n` of --images, then every --labelled one.
    let total = n + labelled.as_ref().map_or(0, Dataset::len);
    let manifest = args.model.manifest()?;
    // With tail layers the backend runs the trunk (the model cut below them),
    // and the views hold the cut tensor.
    let train_tail = args.tail_choice()?;
    if train_tail.is_none() && args.train_params != ParamScope::All {
        bail!("--train-params {} needs layers to train (--train-blocks, --train-from or --train-tail)", args.train_params);
    }
    let mut tail = match &train_tail {
        Some(choice) => {
            let (spec, init) = load_tail(&manifest, choice, args.train_params)
                .with_context(|| format!("finding the tail layers of {}", manifest.name))?;
            let trunk = write_trunk(&manifest, &spec, &args.out.join("trunk"))?;
            println!(
                "training tail layers {} ({} parameters); the trunk is cut at '{}' ({} values per image)",
                spec.nodes.join(", "),
                init.numel(),
                spec.cut,
                trunk.outputs.embedding_dim
            );
            let trained: usize = spec
                .param_names()
                .iter()
                .filter_map(|n| init.get(n).ok())
                .map(|t| t.len())
                .sum();
            let (kept, all) = spec.activation_bytes_per_sample();
            println!(
                "trains {} of them ({trained}); the backward keeps {:.1} KiB of activations per view ({:.1} KiB if it kept every value)",
                args.train_params,
                kept as f64 / 1024.0,
                all as f64 / 1024.0
            );
            Some((spec, init, trunk))
        }
        None => None,
    };
    let mut precision = args.cache_precision.unwrap_or(if tail.is_some() {
        Precision::F16
    } else {
        Precision::F32
    });
    let view_width = tail
        .as_ref()
        .map_or(manifest.outputs.embedding_dim, |(_, _, trunk)| {
            trunk.outputs.embedding_dim
        });
    let shape = memory_shape(
        &args,
        &manifest,
        total,
        view_width,
        precision,
        tail.as_ref().map(|(spec, _, _)| spec),
    )?;
    let allow_f16 = args.cache_precision.is_none();
    if let Some(plan) = super::memory::plan(shape, args.memory_budget, allow_f16)? {
        (args.bank_size, args.batch_size) = (plan.bank, plan.batch);
        precision = plan.precision;
        args.model.threads = plan.threads;
    }
    // The trained layers' forward/backward splits each batch over as many
    // threads as the backend uses (results do not depend on the count).
    if let Some((spec, _, _)) = tail.as_mut() {
        spec.threads = args.model.threads;
    }
    let objective = args.loss;
    let labels = if let Some(set) = &labelled {
        if !objective.uses_labels() {
            bail!("--labelled needs --loss supcon or ce (the objectives that read labels)");
        }
        let mut labels = vec![None; n];
        labels.extend(set.labels().unwrap_or_default().iter().map(|&c| Some(c)));
        Some(labels)
    } else if objective.uses_labels() {
        Some(training_labels(
            &data,
            n,
            args.labels_per_class,
            &args.loss.to_string(),
        )?)
    } else if args.labels_per_class.is_some() {
        bail!("--labels-per-class needs --loss supcon or ce (the objectives that read labels)");
    } else {
        None
    };
    let classes = match (&labels, objective.needs_classes()) {
        (Some(labels), true) => labels.iter().flatten().max().map_or(0, |&c| c + 1),
        _ => 0,
    };
    let config = AdaptConfig {
        loss: args.loss,
        classes,
        anchor: args.anchor,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        optimizer: args.optimizer,
        weight_decay: args.weight_decay,
        bottleneck: args.bottleneck,
        head_out: args.head_out,
        bank_size: args.bank_size,
        momentum: args.momentum,
        seed: args.seed,
        train_tail: train_tail.clone(),
        train_params: args.train_params,
        ..AdaptConfig::default()
    };
    let mut encoder: Box<dyn Encoder> = match &tail {
        Some((_, _, trunk)) => {
            let options = LoadOptions {
                threads: args.model.threads.max(1),
                embedding_only: true,
            };
            load_encoder(&args.model.backend()?, trunk, &options)
                .with_context(|| format!("loading the trunk {}", trunk.onnx.display()))?
        }
        None => args.model.load(true)?,
    };
    let tail = tail.map(|(spec, init, _)| (spec, init));
    if total < args.batch_size {
        bail!(
            "{} training images, fewer than one batch of {}",
            total,
            args.batch_size
        );
    }
    let steps = Trainer::steps_per_epoch(total, args.batch_size);
    let mut trainer =
        Trainer::with_tail(config.clone(), tail, manifest.outputs.embedding_dim, steps)?;
    if let Some(labels) = labels {
        let known = labels.iter().flatten().count();
        println!(
            "{}: {known} of {total} training images labelled",
            config.loss
        );
        trainer.set_labels(labels);
    }
    let options = SessionOptions {
        run_dir: args.out.clone(),
        resume: args.resume,
        collapse: args.collapse.rule(),
        rollback: args.collapse.rollback,
    };
    // The library's session: the one resume policy (same model, same
    // settings; a difference is refused, naming each setting), the epoch
    // loop and its crash rules, the alarm, best-on-val and the export.
    let mut session = Session::open(trainer, manifest.clone(), config, &options)?;
    if let Some((epoch, step)) = session.resumed() {
        println!(
            "resumed from {} at epoch {epoch}, step {step}",
            session.run_dir().file(run_dir::CHECKPOINT).display()
        );
    }
    // Validation embeddings first: the streaming views below hold the encoder.
    let val = match &args.val {
        Some(dir) => {
            let (train, test) = val_datasets(dir, args.val_test.as_deref())?;
            Some(load_val(&mut *encoder, &train, &test)?)
        }
        None => None,
    };
    let started = Instant::now();
    let mut views = if args.stream {
        let diag = build_cache(
            &mut *encoder,
            &data,
            n.min(STREAM_DIAG_IMAGES),
            2,
            args.seed ^ 0x5eed,
            precision,
        )?;
        let maker = Box::new(ViewMaker::new(&manifest, args.seed)?);
        println!(
            "streaming: fresh views every step; diagnostics on {} images × 2 views, {:.1} MiB ({precision})",
            diag.len(),
            diag.memory_bytes() as f64 / (1 << 20) as f64,
        );
        TrainViews::Stream {
            maker,
            encoder: &mut *encoder,
            data: &data,
            images: n,
            seed: args.seed,
            diag,
        }
    } else {
        let mut cache = build_cache(&mut *encoder, &data, n, args.views, args.seed, precision)?;
        if let Some(set) = &labelled {
            // The labelled images follow the unlabelled ones, as their labels do.
            let extra = build_cache(
                &mut *encoder,
                set,
                set.len(),
                args.views,
                args.seed ^ 0x1abe1,
                precision,
            )?;
            let joined = (0..args.views)
                .map(|v| ndarray::concatenate![ndarray::Axis(0), cache.view(v), extra.view(v)])
                .collect();
            cache = ViewCache::new(joined, precision)?;
        }
        println!(
            "view cache: {} images × {} views, {:.1} MiB ({precision}), built in {:.0}s",
            total,
            args.views,
            cache.memory_bytes() as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
        TrainViews::Cache(cache)
    };
    let summary = session.run(&mut views, val.as_ref(), &mut Printer::default())?;
    println!(
        "exported the adapted encoder to {} ({})",
        summary.exported.onnx.display(),
        summary.exported.name
    );
    if let (Some(f), Some(a)) = (summary.frozen, summary.adapted) {
        println!("\n                 k-NN (k=20)   linear probe");
        println!(
            "  frozen         {:>9.2}%   {:>10.2}%",
            f.knn * 100.0,
            f.probe * 100.0
        );
        println!(
            "  adapted        {:>9.2}%   {:>10.2}%",
            a.knn * 100.0,
            a.probe * 100.0
        );
    }
    println!("run directory: {}", args.out.display());
    super::memory::print_peak_rss();
    Ok(())
}

/// How `edgeclr adapt` shows a session: a progress bar per epoch, a line
/// per epoch, warnings on stderr, decisions on stdout.
#[derive(Default)]
struct Printer {
    bar: Option<indicatif::ProgressBar>,
}

impl SessionEvents for Printer {
    fn epoch_begins(&mut self, epoch: usize, steps: usize) {
        self.bar = Some(progress(steps as u64, &format!("epoch {epoch}")));
    }

    fn step(&mut self, _report: &StepReport) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn epoch_ends(&mut self, log: &EpochLog) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        println!(
            "epoch {:>3}  loss {:.4}  align {:.4}  uniform {:.3}  rank {:.1}{}",
            log.epoch,
            log.loss,
            log.alignment.unwrap_or(f64::NAN),
            log.uniformity,
            log.effective_rank,
            log.knn_acc
                .map_or(String::new(), |k| format!("  k-NN {:.2}%", k * 100.0))
        );
    }

    fn warning(&mut self, message: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!("warning: {message}");
    }

    fn notice(&mut self, message: &str) {
        println!("{message}");
    }
}

/// The labels `--loss supcon` (or `ce`) trains with: those of the first `n` images,
/// or with `per_class`, only the first `per_class` of each class.
fn training_labels(
    data: &Dataset,
    n: usize,
    per_class: Option<u64>,
    loss: &str,
) -> Result<Vec<Option<usize>>> {
    let Some(labels) = data.labels() else {
        bail!(
            "--loss {loss} needs labelled --images (class subfolders or an IDX directory with \
             labels); use infonce for unlabelled images"
        );
    };
    let mut seen = std::collections::HashMap::<usize, u64>::new();
    Ok(labels[..n]
        .iter()
        .map(|&c| {
            let count = seen.entry(c).or_insert(0);
            *count += 1;
            per_class.is_none_or(|k| *count <= k).then_some(c)
        })
        .collect())
}

/// What `--memory-budget` plans over: the run as the flags describe it, with
/// views `view_width` wide (the embedding, or the cut tensor with a tail).
fn memory_shape(
    args: &Args,
    manifest: &edgeclr::Manifest,
    images: usize,
    view_width: usize,
    precision: Precision,
    tail: Option<&TailSpec>,
) -> Result<RunShape> {
    let tail_params = tail.map_or(0, |t| {
        t.graph()
            .params()
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    });
    let tail_kept_bytes = tail.map_or(0, |t| t.activation_bytes_per_sample().0);
    let val_images = match &args.val {
        Some(val) => {
            let (train, test) = val_datasets(val, args.val_test.as_deref())?;
            train.len() + test.len()
        }
        None => 0,
    };
    // The adapter, head and predictor this run will train, for their sizes.
    let embed_dim = tail.map_or(view_width, |t| t.out_dim);
    let layers = RunLayers::new(
        &AdaptConfig {
            loss: args.loss,
            bottleneck: args.bottleneck,
            head_out: args.head_out,
            ..AdaptConfig::default()
        },
        embed_dim,
    )?;
    Ok(RunShape {
        images,
        views: args.views,
        dim: view_width,
        val_images,
        bank: args.bank_size,
        batch: args.batch_size,
        head_out: if args.head_out == 0 {
            embed_dim
        } else {
            args.head_out
        },
        layer_params: layers.numel(),
        layer_kept_bytes: layers.kept_bytes_per_sample(),
        model_file_bytes: std::fs::metadata(&manifest.onnx).map_or(0, |m| m.len()),
        precision,
        threads: args.model.threads,
        tail_params,
        tail_kept_bytes,
        embed_dim: tail.map_or(0, |t| t.out_dim),
    })
}
