//! `edgeclr`: run ONNX image encoders on the device, train probes and k-NN
//! heads on their embeddings, and report representation diagnostics.

mod adapt;
mod classify;
mod common;
mod demo;
mod embed;
mod info;
mod knn;
mod layers;
mod memory;
mod metrics;
mod model;
mod probe;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgeclr::backend;

/// Contrastive representation learning at the edge.
///
/// edgeclr runs an image encoder exported to ONNX (MobileNetV2 ships with it)
/// on this machine's CPU, turns images into embeddings, trains linear probes and
/// k-NN heads on them, and reports how healthy the representation is
/// (alignment, uniformity, effective rank).
///
/// Start with `edgeclr demo`.
#[derive(Debug, Parser)]
#[command(
    name = "edgeclr",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Embed the shipped Fashion-MNIST sample with the default model, train a
    /// linear probe and a k-NN head, print accuracies and diagnostics.
    Demo(demo::Args),
    /// Bring your own model: `model init MODEL.onnx` writes its manifest.
    #[command(subcommand)]
    Model(model::Command),
    /// The models available here (manifests under models/), with licence and size.
    Models(model::ListArgs),
    /// Describe a model: inputs, outputs, operators, manifest, and whether the
    /// tract backend can run it.
    Info(info::Args),
    /// ImageNet top-k for image files (models with a logits output).
    Classify(classify::Args),
    /// Embed a folder of images or an IDX dataset into a .npy file.
    Embed(embed::Args),
    /// Train, evaluate or apply a linear probe (softmax regression) on embeddings.
    #[command(subcommand)]
    Probe(probe::Command),
    /// A k-NN head that learns new classes from a few examples, no retraining.
    #[command(subcommand)]
    Knn(knn::Command),
    /// Alignment, uniformity, effective rank and singular spectrum of embeddings.
    Metrics(metrics::Args),
    /// Which tensor to use as the embedding: scans the last blocks' outputs,
    /// pooled globally and on grids, with label-free diagnostics and (given
    /// labelled images) cross-validated accuracy; recommends one.
    Layers(Box<layers::Args>),
    /// Adapt the encoder on the device from unlabelled images: contrastive
    /// training of an adapter + projection head on the frozen trunk, with a
    /// MoCo memory bank, checkpoints (--resume) and ONNX export.
    Adapt(Box<adapt::Args>),
}

/// Restores the default SIGPIPE action, so `edgeclr ... | head` ends quietly
/// like any Unix tool instead of failing on a closed stdout. Also ignores
/// SIGXFSZ, so a write past a file-size limit (`ulimit -f`, a full quota)
/// fails as an EFBIG error that names the file, instead of killing the
/// process: the atomic writers then keep the previous checkpoint.
#[cfg(unix)]
fn reset_sigpipe() {
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL and
    // SIG_IGN are valid dispositions for SIGPIPE and SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

#[cfg(not(unix))]
fn reset_sigpipe() {}

/// A panic inside a guarded tract call (a malformed model; see
/// `edgeclr::backend::in_guarded_tract_call`) is a model error, not a
/// crash. With `panic = "unwind"` the library catches it and returns the
/// error, so the hook only keeps the default "thread 'main' panicked" text off
/// the terminal. With `panic = "abort"` (the size-optimised board artefact)
/// nothing can catch it, so the hook prints the same error line the caught
/// error would give and exits with status 1 before the abort.
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !backend::in_guarded_tract_call() {
            return default_hook(info);
        }
        if cfg!(panic = "abort") {
            let error = backend::tract_panic_error(info.payload_as_str());
            eprintln!("error: loading the model: {error}");
            std::process::exit(1);
        }
    }));
}

fn main() -> ExitCode {
    reset_sigpipe();
    install_panic_hook();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Models(args) => model::list(args),
        Command::Info(args) => info::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Probe(cmd) => probe::run(cmd),
        Command::Knn(cmd) => knn::run(cmd),
        Command::Metrics(args) => metrics::run(args),
        Command::Layers(args) => layers::run(*args),
        Command::Adapt(args) => adapt::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated like anyhow's `{:#}`, but a cause
/// whose text the message already quotes (the library's errors name their I/O
/// source in the message) is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
