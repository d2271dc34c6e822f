//! `edgeclr knn`: a k-NN head you can teach new classes from a few shots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use edgeclr::data::{decode_image, DecodeLimits};
use edgeclr::embed::embed_images;
use edgeclr::probe::KnnHead;
use edgeclr::store::EmbeddingSet;
use edgeclr::Preprocessor;
use ndarray::Array2;

use super::common::ModelArgs;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a head from labelled embeddings (NAME.npy with NAME.labels.npy).
    Fit {
        #[arg(value_name = "EMB.npy")]
        embeddings: PathBuf,
        #[arg(long, short = 'o', value_name = "HEAD.json")]
        out: PathBuf,
        /// Neighbours that vote.
        #[arg(short = 'k', long, default_value_t = 20)]
        k: usize,
    },
    /// Add a class from a few example images (or embeddings) without retraining;
    /// creates the head if it does not exist.
    Enroll {
        #[arg(long, value_name = "HEAD.json")]
        head: PathBuf,
        /// Name of the class to add (or to add examples to).
        #[arg(long = "class", value_name = "NAME")]
        class: String,
        /// Neighbours that vote, when creating a new head.
        #[arg(short = 'k', long, default_value_t = 5)]
        k: usize,
        #[command(flatten)]
        model: ModelArgs,
        /// Example images, or one .npy of embeddings.
        #[arg(required = true, value_name = "IMAGE|EMB.npy")]
        inputs: Vec<PathBuf>,
    },
    /// Remove a class and all its examples.
    Forget {
        #[arg(long, value_name = "HEAD.json")]
        head: PathBuf,
        #[arg(long = "class", value_name = "NAME")]
        class: String,
    },
    /// Accuracy on labelled embeddings.
    Eval {
        #[arg(long, value_name = "HEAD.json")]
        head: PathBuf,
        #[arg(value_name = "EMB.npy")]
        embeddings: PathBuf,
    },
    /// Predict classes for images or an embeddings .npy.
    Predict {
        #[arg(long, value_name = "HEAD.json")]
        head: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[arg(required = true, value_name = "IMAGE|EMB.npy")]
        inputs: Vec<PathBuf>,
    },
}

/// Embeddings for the inputs: one .npy, or images run through the model.
fn embeddings_of(inputs: &[PathBuf], model: &ModelArgs) -> Result<Array2<f32>> {
    if let [single] = inputs {
        if single.extension().is_some_and(|e| e == "npy") {
            return Ok(EmbeddingSet::load(single)?.embeddings);
        }
    }
    let mut encoder = model.load(true)?;
    let preprocessor = Preprocessor::new(encoder.manifest());
    let images = inputs
        .iter()
        .map(|p| decode_image(p, DecodeLimits::default()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(embed_images(&mut *encoder, &preprocessor, &images)?.embedding)
}

fn load_head(path: &Path) -> Result<KnnHead> {
    KnnHead::load(path).with_context(|| format!("loading k-NN head {}", path.display()))
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Fit { embeddings, out, k } => {
            let set = EmbeddingSet::load(&embeddings)?;
            let labels = set.require_labels(&embeddings)?;
            let classes = super::common::class_names(&set, labels);
            let head = KnnHead::from_labelled(set.embeddings.view(), labels, classes, k)?;
            head.save(&out)?;
            println!(
                "k-NN head: {} examples of {} classes, k={k} → {}",
                labels.len(),
                head.classes().len(),
                out.display()
            );
        }
        Command::Enroll {
            head,
            class,
            k,
            model,
            inputs,
        } => {
            let x = embeddings_of(&inputs, &model)?;
            let mut knn = if head.exists() {
                load_head(&head)?
            } else {
                KnnHead::new(x.ncols(), k)?
            };
            knn.enroll(&class, x.view())?;
            knn.save(&head)?;
            println!(
                "enrolled {} examples of '{class}'; the head now knows {} classes: {}",
                x.nrows(),
                knn.classes().len(),
                knn.classes().join(", ")
            );
        }
        Command::Forget { head, class } => {
            let mut knn = load_head(&head)?;
            let removed = knn.forget(&class)?;
            knn.save(&head)?;
            println!(
                "forgot '{class}' ({removed} examples); {} classes left",
                knn.classes().len()
            );
        }
        Command::Eval { head, embeddings } => {
            let knn = load_head(&head)?;
            let set = EmbeddingSet::load(&embeddings)?;
            let labels = set.require_labels(&embeddings)?;
            let acc = knn.accuracy(set.embeddings.view(), labels)?;
            println!(
                "k-NN accuracy on {} ({} embeddings): {:.2}%",
                embeddings.display(),
                labels.len(),
                acc * 100.0
            );
        }
        Command::Predict {
            head,
            model,
            inputs,
        } => {
            let knn = load_head(&head)?;
            if knn.classes().is_empty() {
                bail!(
                    "the head {} has no classes yet: enrol some first",
                    head.display()
                );
            }
            let x = embeddings_of(&inputs, &model)?;
            let names: Vec<String> = if x.nrows() == inputs.len() {
                inputs.iter().map(|p| p.display().to_string()).collect()
            } else {
                (0..x.nrows()).map(|i| format!("row {i}")).collect()
            };
            for (name, p) in names.iter().zip(knn.predict(x.view())?) {
                println!(
                    "{name}: {} ({:.0}% of the vote)",
                    knn.classes()[p.class],
                    p.score * 100.0
                );
            }
        }
    }
    Ok(())
}
