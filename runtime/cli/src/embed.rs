//! `edgeclr embed`: a dataset → `.npy` embeddings (+ labels, + metadata).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeclr::data::Dataset;
use edgeclr::embed::{embed_dataset, EmbedOptions, Shard};
use edgeclr::store::{labels_path, EmbeddingMeta, EmbeddingSet, Format, Rows};

use super::common::{at_least_one, progress, ModelArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A folder of images (one subfolder per class gives labels), a CSV list
    /// (`path[,label]` per row), an IDX images file
    /// (`*-images-idx3-ubyte[.gz]`, labels found beside it), or a directory
    /// holding splits (IDX files, or `train/` and `test/` folders).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Split to read from a directory of splits (`train`, `test`; `t10k` is
    /// `test`).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Output file. With `--format npy`: labels go to NAME.labels.npy,
    /// metadata to NAME.json.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// npy (numpy, three files), parquet (one table: index, path, label,
    /// class, embedding; model and sha256 in its metadata; DuckDB, pandas,
    /// Spark read it) or safetensors (one file: embeddings, indices, labels).
    #[arg(long, default_value = "npy", value_name = "npy|parquet|safetensors")]
    pub format: Format,
    /// Images per encoder call.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub batch_size: usize,
    /// L2-normalise the embeddings (cosine geometry).
    #[arg(long)]
    pub normalize: bool,
    /// Stop at the first unreadable image instead of skipping it with a warning.
    #[arg(long)]
    pub strict: bool,
    /// Embed only the first N images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Embed only shard I of N (from 1): a contiguous 1/N of the images
    /// (after --limit), so N processes or machines split one job; their
    /// outputs, concatenated in shard order, are the unsharded output.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

pub fn run(args: Args) -> Result<()> {
    let dataset = Dataset::open(&args.input, Some(&args.split))
        .with_context(|| format!("opening {}", args.input.display()))?;
    if dataset.is_empty() {
        bail!("{} holds no images", args.input.display());
    }
    let mut encoder = args.model.load(true)?;
    let options = EmbedOptions {
        batch_size: args.batch_size,
        normalize: args.normalize,
        strict: args.strict,
        keep_logits: false,
        limit: args.limit,
        shard: args.shard,
    };
    let total = args.limit.map_or(dataset.len(), |l| l.min(dataset.len()));
    let total = args.shard.map_or(total, |shard| shard.range(total).len());
    if total == 0 {
        bail!(
            "shard {} of {} holds no images (fewer images than shards)",
            args.shard.map_or_else(String::new, |s| s.to_string()),
            args.input.display()
        );
    }
    let bar = progress(total as u64, "embedding");
    let started = Instant::now();
    let result = embed_dataset(&mut *encoder, &dataset, &options, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    for s in &result.skipped {
        eprintln!("warning: skipped {}: {}", s.source, s.reason);
    }
    if result.embeddings.nrows() == 0 {
        bail!("no image of {} could be embedded", args.input.display());
    }
    let set = EmbeddingSet {
        embeddings: result.embeddings,
        labels: result.labels,
        meta: EmbeddingMeta {
            model: encoder.manifest().name.clone(),
            backend: encoder.backend().into(),
            normalized: args.normalize,
            source: args.input.display().to_string(),
            class_names: result.class_names,
            skipped: result.skipped.iter().map(|s| s.source.clone()).collect(),
            first_index: result
                .indices
                .first()
                .copied()
                .filter(|_| args.shard.is_some()),
            shard: args.shard.map(|s| s.to_string()),
            model_sha256: Some(encoder.manifest().sha256.clone()),
        },
    };
    let paths: Vec<String> = result
        .indices
        .iter()
        .map(|&i| dataset.describe(i))
        .collect();
    let rows = Rows {
        indices: &result.indices,
        paths: &paths,
    };
    set.save_as(&args.out, args.format, &rows)?;
    let (n, d) = set.embeddings.dim();
    println!(
        "embedded {n} images into {} [{n}, {d}] in {secs:.1}s ({:.1} images/s){}{}",
        args.out.display(),
        n as f64 / secs,
        if set.labels.is_some() && args.format == Format::Npy {
            format!(", labels in {}", labels_path(&args.out).display())
        } else {
            String::new()
        },
        if result.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} skipped", result.skipped.len())
        },
    );
    Ok(())
}
