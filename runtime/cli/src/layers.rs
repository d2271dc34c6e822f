//! `edgeclr layers`: which tensor of the model to use as the embedding.
//!
//! Scans the outputs of the model's last blocks (found from the graph's
//! structure, `edgeclr::blocks`), each globally pooled and grid-pooled, and
//! prints for each: dimension, cost, label-free diagnostics of augmented
//! views (RankMe, alignment, uniformity) and, with labelled images, k-NN and
//! linear-probe accuracy cross-validated on them (never on a test split).
//! It recommends one: by accuracy with labels, else by the label-free rule
//! ([`label_free_score`]); `--write-manifest` writes a manifest that uses it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeclr::adapt::views::Precision;
use edgeclr::backend::{load_encoder, tensor_shape};
use edgeclr::data::Dataset;
use edgeclr::embed::{embed_dataset, EmbedOptions};
use edgeclr::manifest::Pool;
use edgeclr::metrics::{l2_normalize_rows, Diagnostics};
use edgeclr::probe::{KnnHead, LinearProbe, LinearProbeConfig};
use edgeclr::{LoadOptions, Manifest};
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::common::{at_least_one, progress, ModelArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Images for the label-free diagnostics (labels, if any, are not read):
    /// a folder, a CSV list, an IDX file or directory (its `train` split).
    #[arg(long, value_name = "DIR|IDX")]
    images: PathBuf,
    /// Labelled images for cross-validated k-NN and probe accuracy (the
    /// recommendation is then by accuracy): class subfolders, a CSV list or
    /// an IDX directory (its `train` split). Without it the pick is label-free.
    #[arg(long, value_name = "DIR|IDX")]
    labelled: Option<PathBuf>,
    /// Images of --images used (the first N).
    #[arg(long, default_value_t = 300, value_name = "N", value_parser = at_least_one)]
    limit: usize,
    /// Images of --labelled used (the first N).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = at_least_one)]
    labelled_limit: usize,
    /// Block outputs scanned, counting back from the embedding.
    #[arg(long, default_value_t = 5, value_name = "K", value_parser = at_least_one)]
    blocks: usize,
    /// Grids each feature map is pooled to (1: the global mean), comma-separated.
    #[arg(long, default_value = "1,2,4,7", value_name = "G,G,...")]
    grids: String,
    /// Folds of the cross-validation on --labelled.
    #[arg(long, default_value_t = 5, value_name = "F")]
    folds: usize,
    /// Neighbours voting in the k-NN accuracy.
    #[arg(short = 'k', long, default_value_t = 20)]
    k: usize,
    /// Writes a manifest (DIR/manifest.toml) that uses the recommended tap.
    #[arg(long, value_name = "DIR")]
    write_manifest: Option<PathBuf>,
    /// Writes every row as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Seed of the augmentations and the fold split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// One candidate embedding and what the scan measured.
#[derive(Debug, Clone, Serialize)]
struct Row {
    tensor: String,
    pool: String,
    dim: usize,
    /// Encoder time per image up to this tensor (all pools of a tensor share it).
    ms_per_image: f64,
    rankme: f64,
    alignment: f64,
    uniformity: f64,
    /// Alignment over the mean squared distance between different images:
    /// how much of the spread an augmentation moves an image.
    relative_alignment: f64,
    /// Share of images whose second view's nearest first view (cosine) is
    /// their own: instance retrieval across augmentations.
    retrieval: f64,
    knn_cv: Option<f64>,
    probe_cv: Option<f64>,
    #[serde(skip)]
    pool_value: Pool,
}

pub fn run(args: Args) -> Result<()> {
    if args.folds < 2 {
        bail!("--folds must be at least 2");
    }
    let grids = parse_grids(&args.grids)?;
    let base = args.model.manifest()?;
    let bytes =
        std::fs::read(&base.onnx).with_context(|| format!("reading {}", base.onnx.display()))?;
    let proto = edgeclr::onnx::parse_proto(&base.onnx, &bytes)?;
    let graph = proto.graph.as_ref().context("the model has no graph")?;
    let found = edgeclr::blocks::block_outputs(graph, &base.outputs.embedding);
    if found.is_empty() {
        bail!(
            "found no block outputs before '{}' in {} (a graph without a chain of blocks?)",
            base.outputs.embedding,
            base.onnx.display()
        );
    }
    let mut tensors: Vec<String> = found[found.len().saturating_sub(args.blocks)..].to_vec();
    tensors.push(base.outputs.embedding.clone());
    println!(
        "{}: {} block outputs found; scanning {} and the manifest's embedding '{}'",
        base.name,
        found.len(),
        tensors[..tensors.len() - 1].join(", "),
        base.outputs.embedding
    );

    let images = Dataset::open(&args.images, Some("train"))
        .with_context(|| format!("opening {}", args.images.display()))?;
    let n = args.limit.min(images.len());
    if n < 3 {
        bail!("--images has {n} images; the diagnostics need at least 3");
    }
    let labelled = match &args.labelled {
        Some(path) => {
            let data = Dataset::open(path, Some("train"))
                .with_context(|| format!("opening {}", path.display()))?;
            if data.labels().is_none() {
                bail!("--labelled {} has no labels", path.display());
            }
            Some(data)
        }
        None => None,
    };

    let backend = args.model.backend()?;
    let options = LoadOptions {
        threads: args.model.threads.max(1),
        embedding_only: true,
    };
    let mut rows = Vec::new();
    for tensor in &tensors {
        let reference = tensor == &base.outputs.embedding;
        let mut manifest = base.clone();
        let shape = tensor_shape(&proto, tensor, &base.input.shape)
            .with_context(|| format!("the shape of '{tensor}'"))?;
        manifest.outputs.embedding = tensor.clone();
        let spatial = shape.len() == 3;
        // The manifest's own embedding keeps its pooling; a feature map is
        // read whole and pooled here, once per grid.
        let pools: Vec<Pool> = if reference && !base.outputs.pool.is_none() || !spatial {
            vec![base.outputs.pool]
        } else {
            grids
                .iter()
                .filter(|&&g| g <= shape[1] && g <= shape[2])
                .map(|&g| if g == 1 { Pool::Mean } else { Pool::Grid(g) })
                .collect()
        };
        let read_pool = if spatial && pools.iter().all(|p| !p.is_none()) && !reference {
            Pool::Flatten
        } else {
            manifest.outputs.pool
        };
        manifest.outputs.pool = read_pool;
        manifest.outputs.embedding_dim = match read_pool {
            Pool::Mean => shape[0],
            Pool::Grid(g) => shape[0] * g * g,
            Pool::None | Pool::Flatten => shape.iter().product(),
        };
        let mut encoder = load_encoder(&backend, &manifest, &options)
            .with_context(|| format!("loading {} with '{tensor}' as the output", base.name))?;
        let started = Instant::now();
        let views =
            super::adapt::build_cache(&mut *encoder, &images, n, 2, args.seed, Precision::F32)?;
        let ms = started.elapsed().as_secs_f64() * 1000.0 / (2 * n) as f64;
        let plain = match &labelled {
            Some(data) => {
                let bar = progress(args.labelled_limit.min(data.len()) as u64, "labelled");
                let out = embed_dataset(
                    &mut *encoder,
                    data,
                    &EmbedOptions {
                        batch_size: 32,
                        strict: true,
                        limit: Some(args.labelled_limit),
                        ..EmbedOptions::default()
                    },
                    |i| bar.set_position(i as u64),
                )?;
                bar.finish_and_clear();
                let labels = out.labels.clone().unwrap_or_default();
                Some((out.embeddings, labels, out.class_names.unwrap_or_default()))
            }
            None => None,
        };
        for pool in pools {
            let pooled = |x: &Array2<f32>| -> Result<Array2<f32>> {
                if read_pool != Pool::Flatten {
                    return Ok(x.clone());
                }
                let x4 = x
                    .view()
                    .into_shape_with_order((x.nrows(), shape[0], shape[1], shape[2]))?
                    .into_dyn();
                pool.apply(x4).map_err(anyhow::Error::msg)
            };
            let (v1, v2) = (pooled(&views.view(0))?, pooled(&views.view(1))?);
            let diag = Diagnostics::compute(v1.view(), Some(v2.view()))?;
            let (u1, u2) = (l2_normalize_rows(v1.view()), l2_normalize_rows(v2.view()));
            let alignment = diag.alignment.unwrap_or(f64::NAN);
            let (knn_cv, probe_cv) = match &plain {
                Some((x, labels, classes)) => {
                    let x = pooled(x)?;
                    let (k, p) =
                        cross_validate(&x, labels, classes, args.folds, args.k, args.seed)?;
                    (Some(k), Some(p))
                }
                None => (None, None),
            };
            let row = Row {
                tensor: tensor.clone(),
                pool: pool.to_string(),
                dim: v1.ncols(),
                ms_per_image: ms,
                rankme: diag.effective_rank,
                alignment,
                uniformity: diag.uniformity,
                relative_alignment: alignment / mean_sq_distance(&u1),
                retrieval: retrieval(&u1, &u2),
                knn_cv,
                probe_cv,
                pool_value: pool,
            };
            print_row(&row, rows.is_empty());
            rows.push(row);
        }
    }

    let pick = recommend(&rows);
    let chosen = &rows[pick];
    println!();
    match chosen.probe_cv {
        Some(p) => println!(
            "recommended (best cross-validated probe, {p:.1}%): '{}' pooled {} ({} values)",
            chosen.tensor,
            chosen.pool,
            chosen.dim
        ),
        None => println!(
            "recommended (label-free: highest RankMe × (1 − retrieval)): '{}' pooled {} ({} values)",
            chosen.tensor, chosen.pool, chosen.dim
        ),
    }
    if let Some(json) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "model": base.name,
            "rows": rows,
            "recommended": pick,
        }))?;
        edgeclr::atomic::write_atomic(json, |f| {
            use std::io::Write;
            f.write_all(text.as_bytes())
        })
        .with_context(|| format!("writing {}", json.display()))?;
    }
    if let Some(dir) = &args.write_manifest {
        write_manifest(&base, chosen, dir)?;
    }
    Ok(())
}

/// The index of the recommended row: the best cross-validated probe (k-NN
/// breaks ties) when labels were given, else the best label-free score.
fn recommend(rows: &[Row]) -> usize {
    let key = |r: &Row| match (r.probe_cv, r.knn_cv) {
        (Some(p), Some(k)) => p + 1e-3 * k,
        _ => label_free_score(r),
    };
    (0..rows.len())
        .max_by(|&a, &b| key(&rows[a]).total_cmp(&key(&rows[b])))
        .unwrap_or(0)
}

/// The label-free rule: RankMe (how many directions the images spread
/// over) times the share of images that augmentation makes unrecognisable
/// (1 − [`Row::retrieval`]). Chosen over RankMe alone, relative alignment
/// and uniformity on three Fashion-MNIST samples (README, "Choosing the
/// layer"), where RankMe alone favours the widest late taps and pure
/// non-invariance the early ones; it is a measured rule, not a law.
fn label_free_score(r: &Row) -> f64 {
    r.rankme * (1.0 - r.retrieval)
}

/// Mean squared distance between unit rows `u` over pairs of different
/// rows: `2 − 2·mean_{i≠j} cos`, from the sum of the rows.
fn mean_sq_distance(u: &Array2<f32>) -> f64 {
    let n = u.nrows() as f64;
    let sum = u.mapv(f64::from).sum_axis(Axis(0));
    let mean_cos = (sum.dot(&sum) - n) / (n * (n - 1.0));
    2.0 - 2.0 * mean_cos
}

/// Share of unit rows `i` of `b` whose most similar unit row of `a` is row `i`.
fn retrieval(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    let sim = b.dot(&a.t());
    let hits = sim
        .rows()
        .into_iter()
        .enumerate()
        .filter(|(i, row)| {
            let best = row
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map(|(j, _)| j);
            best == Some(*i)
        })
        .count();
    hits as f64 / a.nrows() as f64
}

/// k-NN and probe accuracy, each the mean over `folds` held-out folds of a
/// seeded shuffle of the labelled images.
fn cross_validate(
    x: &Array2<f32>,
    labels: &[usize],
    classes: &[String],
    folds: usize,
    k: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let n = x.nrows();
    if n < folds {
        bail!("{n} labelled images, fewer than --folds {folds}");
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let classes: Vec<String> = if classes.is_empty() {
        let c = labels.iter().max().map_or(0, |m| m + 1);
        (0..c).map(|i| i.to_string()).collect()
    } else {
        classes.to_vec()
    };
    let (mut knn, mut probe) = (0.0, 0.0);
    for f in 0..folds {
        let fold = |held_out: bool| -> Vec<usize> {
            order
                .iter()
                .enumerate()
                .filter(|(i, _)| (i % folds == f) == held_out)
                .map(|(_, &r)| r)
                .collect()
        };
        let (test, train) = (fold(true), fold(false));
        let pick = |rows: &[usize]| {
            (
                x.select(Axis(0), rows),
                rows.iter().map(|&r| labels[r]).collect::<Vec<_>>(),
            )
        };
        let (xtr, ytr) = pick(&train);
        let (xte, yte) = pick(&test);
        let head = KnnHead::from_labelled(xtr.view(), &ytr, classes.clone(), k)?;
        knn += head.accuracy(xte.view(), &yte)?;
        let (p, _) = LinearProbe::fit(
            xtr.view(),
            &ytr,
            classes.clone(),
            &LinearProbeConfig::default(),
        )?;
        probe += p.accuracy(xte.view(), &yte)?;
    }
    Ok((100.0 * knn / folds as f64, 100.0 * probe / folds as f64))
}

fn parse_grids(spec: &str) -> Result<Vec<usize>> {
    let grids = spec
        .split(',')
        .map(|g| {
            g.trim()
                .parse::<usize>()
                .ok()
                .filter(|&g| g >= 1)
                .with_context(|| format!("--grids: '{g}' is not a grid size of at least 1"))
        })
        .collect::<Result<Vec<_>>>()?;
    if grids.is_empty() {
        bail!("--grids names no grid");
    }
    Ok(grids)
}

fn print_row(r: &Row, header: bool) {
    if header {
        println!(
            "{:<28} {:<9} {:>6} {:>7} {:>7} {:>6} {:>7} {:>7} {:>6} {:>6} {:>6}",
            "tensor",
            "pool",
            "dim",
            "ms/img",
            "RankMe",
            "align",
            "unif",
            "rel.al",
            "retr",
            "k-NN",
            "probe"
        );
    }
    let acc = |a: Option<f64>| a.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "{:<28} {:<9} {:>6} {:>7.1} {:>7.1} {:>6.3} {:>7.3} {:>7.3} {:>6.3} {:>6} {:>6}",
        r.tensor,
        r.pool,
        r.dim,
        r.ms_per_image,
        r.rankme,
        r.alignment,
        r.uniformity,
        r.relative_alignment,
        r.retrieval,
        acc(r.knn_cv),
        acc(r.probe_cv)
    );
}

/// Writes DIR/manifest.toml: `base` with the chosen tensor and pooling.
fn write_manifest(base: &Manifest, row: &Row, dir: &std::path::Path) -> Result<()> {
    let mut manifest = base.clone();
    manifest.name = format!("{}_{}", base.name, sanitize(&row.tensor));
    manifest.description = Some(format!(
        "{} with '{}' pooled {} as the embedding (picked by edgeclr layers)",
        base.name, row.tensor, row.pool
    ));
    manifest.outputs.embedding = row.tensor.clone();
    manifest.outputs.pool = row.pool_value;
    manifest.outputs.embedding_dim = row.dim;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let guess = edgeclr::model_init::Guess {
        manifest,
        notes: Vec::new(),
    };
    let text = edgeclr::model_init::manifest_toml(&guess, dir)?;
    let path = dir.join("manifest.toml");
    edgeclr::atomic::write_atomic(&path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes())
    })
    .with_context(|| format!("writing {}", path.display()))?;
    // Load it back: a manifest that does not load is not written silently.
    Manifest::load(&path).with_context(|| format!("checking {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
