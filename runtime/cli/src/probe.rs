//! `edgeclr probe`: linear evaluation of embeddings.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use edgeclr::probe::{LinearProbe, LinearProbeConfig};
use edgeclr::store::EmbeddingSet;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fit a softmax-regression probe on labelled embeddings (NAME.npy with NAME.labels.npy).
    Train {
        /// Labelled training embeddings (from `edgeclr embed`).
        #[arg(value_name = "EMB.npy")]
        embeddings: PathBuf,
        /// Where to write the probe (JSON).
        #[arg(long, short = 'o', value_name = "PROBE.json")]
        out: PathBuf,
        /// Inverse L2 strength, as scikit-learn's LogisticRegression(C=...).
        #[arg(long, short = 'C', default_value_t = 1.0)]
        c: f64,
        /// Maximum L-BFGS iterations.
        #[arg(long, default_value_t = 1000)]
        max_iter: usize,
        /// L2-normalise embeddings before training (and before each prediction).
        #[arg(long)]
        normalize: bool,
        /// Labelled embeddings to report accuracy on after training.
        #[arg(long, value_name = "EMB.npy")]
        eval: Option<PathBuf>,
    },
    /// Accuracy of a saved probe on labelled embeddings.
    Eval {
        #[arg(long, short = 'p', value_name = "PROBE.json")]
        probe: PathBuf,
        #[arg(value_name = "EMB.npy")]
        embeddings: PathBuf,
    },
    /// Predict classes for embeddings; writes CSV (row,class,name,probability) to stdout.
    Predict {
        #[arg(long, short = 'p', value_name = "PROBE.json")]
        probe: PathBuf,
        #[arg(value_name = "EMB.npy")]
        embeddings: PathBuf,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Train {
            embeddings,
            out,
            c,
            max_iter,
            normalize,
            eval,
        } => {
            let set = EmbeddingSet::load(&embeddings)?;
            let labels = set.require_labels(&embeddings)?;
            let config = LinearProbeConfig {
                c,
                max_iter,
                normalize,
                ..LinearProbeConfig::default()
            };
            let (mut probe, report) = LinearProbe::fit(
                set.embeddings.view(),
                labels,
                super::common::class_names(&set, labels),
                &config,
            )
            .context("training the probe")?;
            probe.model = Some(set.meta.model.clone()).filter(|m| !m.is_empty());
            let train_acc = probe.accuracy(set.embeddings.view(), labels)?;
            probe.save(&out)?;
            println!(
                "probe: {} classes × {} dims, C={c}, {} L-BFGS iterations ({}), train accuracy {:.2}% → {}",
                probe.classes().len(),
                probe.dim(),
                report.iterations,
                if report.converged { "converged" } else { "not converged: raise --max-iter" },
                train_acc * 100.0,
                out.display()
            );
            if let Some(eval) = eval {
                print_eval(&probe, &eval)?;
            }
        }
        Command::Eval { probe, embeddings } => {
            let probe = LinearProbe::load(&probe)?;
            print_eval(&probe, &embeddings)?;
        }
        Command::Predict { probe, embeddings } => {
            let probe = LinearProbe::load(&probe)?;
            let set = EmbeddingSet::load(&embeddings)?;
            let proba = probe.predict_proba(set.embeddings.view())?;
            println!("row,class,name,probability");
            for (row, p) in proba.rows().into_iter().enumerate() {
                let (class, prob) =
                    p.iter()
                        .copied()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
                            if v > best.1 {
                                (i, v)
                            } else {
                                best
                            }
                        });
                println!("{row},{class},{},{prob:.4}", probe.classes()[class]);
            }
        }
    }
    Ok(())
}

fn print_eval(probe: &LinearProbe, embeddings: &std::path::Path) -> Result<()> {
    let set = EmbeddingSet::load(embeddings)?;
    let labels = set.require_labels(embeddings)?;
    let acc = probe.accuracy(set.embeddings.view(), labels)?;
    println!(
        "accuracy on {} ({} embeddings): {:.2}%",
        embeddings.display(),
        labels.len(),
        acc * 100.0
    );
    Ok(())
}
