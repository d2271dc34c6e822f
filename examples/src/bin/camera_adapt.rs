//! camera-adapt: contrastive adaptation on the unlabelled camera stream, in a
//! background thread, while the foreground keeps classifying.
//!
//! The trainer thread keeps the most recent frames, and each step embeds two
//! augmented views of a batch of them with its own copy of the frozen
//! encoder and takes one `Trainer::train_step` (InfoNCE with a MoCo memory
//! bank by default). After every successful step it hands the adapter's
//! parameters to the foreground, which therefore always classifies with the
//! last good adapted head: a k-NN head over `--knn-from` reference images,
//! whose keys are re-adapted with each new adapter. Without `--knn-from` the
//! foreground shows the model's own (frozen) ImageNet labels. Checkpoints go
//! to `--out` every `--checkpoint-every` steps and at exit (`--resume`
//! continues from them). The screen shows step, loss, uniformity and
//! effective rank live.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use edgeclr::adapt::adapted::AdaptedModel;
use edgeclr::adapt::config::AdaptConfig;
use edgeclr::adapt::loss::Objective;
use edgeclr::adapt::session::run_dir::CHECKPOINT;
use edgeclr::adapt::session::{Session, SessionOptions};
use edgeclr::adapt::trainer::{TrainError, Trainer};
use edgeclr::adapt::views::ViewMaker;
use edgeclr::adapt::Params;
use edgeclr::data::Dataset;
use edgeclr::embed::{embed_dataset, embed_images, EmbedOptions};
use edgeclr::metrics::Diagnostics;
use edgeclr::probe::KnnHead;
use edgeclr::{Encoder, Manifest, Preprocessor};
use edgeclr_examples::cli::{next_frame, shipped};
use edgeclr_examples::display::{AdaptReadout, ScreenState};
use edgeclr_examples::heads::knn_top;
use edgeclr_examples::{CommonArgs, FpsMeter, Head, Screen};
use image::RgbImage;
use ndarray::Array2;
use rand::SeedableRng;

/// Contrastive adaptation on the live stream, with live diagnostics.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Run directory for checkpoint.safetensors.
    #[arg(long, short = 'o', value_name = "RUN_DIR")]
    out: PathBuf,
    /// Continue from RUN_DIR/checkpoint.safetensors (same settings).
    #[arg(long)]
    resume: bool,
    /// Labelled reference images (one subfolder per class): the foreground's
    /// k-NN head, re-adapted with every new adapter.
    #[arg(long, value_name = "DIR")]
    knn_from: Option<PathBuf>,
    /// Neighbours that vote in the k-NN head.
    #[arg(short = 'k', long, default_value_t = 3)]
    k: usize,
    /// How many classes to list.
    #[arg(long, default_value_t = 4)]
    top: usize,
    /// Objective: infonce[:tau=0.2], align-uniform, spectral, sigmoid, byol.
    #[arg(long, default_value_t = AdaptConfig::default().loss)]
    loss: Objective,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// MoCo memory bank length (0: in-batch negatives only).
    #[arg(long, default_value_t = 256)]
    bank_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Drift guard: after every step the adapter moves this fraction of the
    /// way back to its source weights (the identity), so an endless stream
    /// stays near the frozen encoder (0: off).
    #[arg(long, default_value_t = 0.0, value_name = "A")]
    anchor: f32,
    /// Recent frames the trainer samples its batches from.
    #[arg(long, default_value_t = 128)]
    buffer: usize,
    /// Write a checkpoint every N steps.
    #[arg(long, default_value_t = 50, value_name = "N")]
    checkpoint_every: u64,
    /// After the last frame, wait until the trainer has taken this many steps
    /// (so short runs still show a readout).
    #[arg(long, default_value_t = 0, value_name = "N")]
    min_steps: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

enum ToTrainer {
    Frame(RgbImage),
    /// No more frames: train until `min_steps`, checkpoint, stop.
    Finish {
        min_steps: u64,
    },
}

enum FromTrainer {
    /// The trainer is built (fresh or resumed): its adapter and step.
    Ready(Box<Params>, u64),
    /// A step succeeded: the adapter to classify with, and the readout.
    Step(Box<Params>, AdaptReadout),
    /// A step was skipped (non-finite loss); the previous adapter stays.
    Skipped(String),
    Failed(String),
}

fn config(args: &Args) -> AdaptConfig {
    AdaptConfig {
        loss: args.loss,
        // A stream has no epochs: one "epoch" per step, and a schedule long
        // enough that the learning rate stays near `lr` after a short warm-up.
        epochs: 1_000_000,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup_epochs: 10,
        bank_size: args.bank_size,
        seed: args.seed,
        anchor: args.anchor,
        ..AdaptConfig::default()
    }
}

struct TrainerThread {
    /// The library's session: the run directory's checkpoint and the one
    /// resume policy; this thread is the loop (a stream has no epochs).
    session: Session,
    encoder: Box<dyn Encoder>,
    views: ViewMaker,
    checkpoint_every: u64,
    capacity: usize,
    /// Picks each batch from the recent frames.
    rng: rand::rngs::StdRng,
    checkpoints: u64,
}

impl TrainerThread {
    fn save(&mut self) -> Result<()> {
        self.session.save_checkpoint(0)?;
        self.checkpoints += 1;
        Ok(())
    }

    fn step(&mut self, frames: &VecDeque<RgbImage>) -> Result<FromTrainer> {
        let batch = self.session.trainer().config.batch_size.min(frames.len());
        let picks = rand::seq::index::sample(&mut self.rng, frames.len(), batch);
        let picked: Vec<&RgbImage> = picks.iter().map(|i| &frames[i]).collect();
        let (x1, x2) = self.views.pairs(&mut *self.encoder, &picked)?;
        let report = match self.session.step(x1.view(), x2.view()) {
            Ok(r) => r,
            Err(e @ TrainError::NonFinite { .. }) => {
                return Ok(FromTrainer::Skipped(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let trainer = self.session.trainer();
        let (a1, a2) = (trainer.adapt(x1.view())?, trainer.adapt(x2.view())?);
        let diag = Diagnostics::compute(a1.view(), Some(a2.view())).ok();
        if self.checkpoint_every > 0 && report.step % self.checkpoint_every == 0 {
            self.save()?;
        }
        Ok(FromTrainer::Step(
            Box::new(self.session.trainer().params.clone()),
            AdaptReadout {
                step: report.step,
                loss: report.loss,
                uniformity: diag.as_ref().map(|d| d.uniformity),
                effective_rank: diag.as_ref().map(|d| d.effective_rank),
                checkpoints: self.checkpoints,
            },
        ))
    }

    fn run(mut self, rx: Receiver<ToTrainer>, tx: mpsc::Sender<FromTrainer>) {
        if let Err(e) = self.run_inner(&rx, &tx) {
            let _ = tx.send(FromTrainer::Failed(format!("{e:#}")));
        }
    }

    fn run_inner(
        &mut self,
        rx: &Receiver<ToTrainer>,
        tx: &mpsc::Sender<FromTrainer>,
    ) -> Result<()> {
        let mut frames: VecDeque<RgbImage> = VecDeque::with_capacity(self.capacity);
        let mut finish: Option<u64> = None;
        let capacity = self.capacity;
        let push =
            |frames: &mut VecDeque<RgbImage>, msg: ToTrainer, finish: &mut Option<u64>| match msg {
                ToTrainer::Frame(f) => {
                    if frames.len() == capacity {
                        frames.pop_front();
                    }
                    frames.push_back(f);
                }
                ToTrainer::Finish { min_steps } => *finish = Some(min_steps),
            };
        loop {
            loop {
                match rx.try_recv() {
                    Ok(msg) => push(&mut frames, msg, &mut finish),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        finish.get_or_insert(0);
                        break;
                    }
                }
            }
            if let Some(min_steps) = finish {
                if self.session.trainer().step >= min_steps {
                    break;
                }
                if frames.len() < 2 {
                    bail!(
                        "the stream ended with {} frame(s); training needs 2",
                        frames.len()
                    );
                }
            } else if frames.len() < self.session.trainer().config.batch_size {
                // Wait for enough distinct frames for a batch.
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(msg) => push(&mut frames, msg, &mut finish),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        finish.get_or_insert(0);
                    }
                }
                continue;
            }
            let update = self.step(&frames)?;
            if tx.send(update).is_err() {
                break;
            }
        }
        self.save()?;
        Ok(())
    }
}

/// The foreground's view of the adapter: a trainer of the same shape whose
/// parameters are replaced with each update (only `adapt` is used).
struct AdaptedKnn {
    /// The adapter the trainer thread last sent (inference only).
    view: AdaptedModel,
    raw_keys: Array2<f32>,
    labels: Vec<usize>,
    classes: Vec<String>,
    k: usize,
    head: KnnHead,
}

impl AdaptedKnn {
    fn new(view: AdaptedModel, dir: &Path, encoder: &mut dyn Encoder, k: usize) -> Result<Self> {
        let data = Dataset::open(dir, None)
            .with_context(|| format!("opening the reference images {}", dir.display()))?;
        let emb = embed_dataset(encoder, &data, &EmbedOptions::default(), |_| {})?;
        let labels = emb
            .labels
            .clone()
            .context("--knn-from needs one subfolder per class")?;
        let classes = emb.class_names.clone().unwrap_or_default();
        let mut this = Self {
            head: KnnHead::new(emb.embeddings.ncols(), k)?,
            view,
            raw_keys: emb.embeddings,
            labels,
            classes,
            k,
        };
        this.rebuild()?;
        Ok(this)
    }

    fn rebuild(&mut self) -> Result<()> {
        let keys = self.view.embed(self.raw_keys.view())?;
        self.head =
            KnnHead::from_labelled(keys.view(), &self.labels, self.classes.clone(), self.k)?;
        Ok(())
    }

    fn update(&mut self, params: Params) -> Result<()> {
        self.view.set_params(&params)?;
        self.rebuild()
    }

    fn rank(&self, embedding: &Array2<f32>, top: usize) -> Result<Vec<(String, f32)>> {
        let q = self.view.embed(embedding.view())?;
        knn_top(&self.head, q.view(), top)
    }
}

/// What the screen shows of the adaptation, updated from the trainer's messages.
struct Live {
    readout: Option<AdaptReadout>,
    /// Recent losses for the chart.
    history: VecDeque<f32>,
    status: String,
}

impl Live {
    fn apply(&mut self, msg: FromTrainer, adapted: &mut Option<AdaptedKnn>) -> Result<()> {
        match msg {
            FromTrainer::Ready(params, step) => {
                if let Some(a) = adapted.as_mut() {
                    a.update(*params)?;
                }
                if step > 0 {
                    self.status = format!("resumed at step {step}");
                }
            }
            FromTrainer::Step(params, r) => {
                if let Some(a) = adapted.as_mut() {
                    a.update(*params)?;
                }
                self.history.push_back(r.loss as f32);
                if self.history.len() > 100 {
                    self.history.pop_front();
                }
                self.readout = Some(r);
                self.status = "adapting".into();
            }
            FromTrainer::Skipped(e) => {
                eprintln!("warning: {e}");
                self.status = "step skipped".into();
            }
            FromTrainer::Failed(e) => bail!("adaptation failed: {e}"),
        }
        Ok(())
    }
}

/// A session on a fresh trainer, or on the run directory's checkpoint when
/// resuming (the library's one resume policy: the checkpoint must be this
/// model's, trained with the settings these flags give; a difference is
/// refused, naming each setting).
fn open_session(
    cfg: AdaptConfig,
    dim: usize,
    run_dir: &Path,
    resume: bool,
    manifest: &Manifest,
) -> Result<Session> {
    let trainer = Trainer::new(cfg.clone(), dim, 1)?;
    let options = SessionOptions {
        resume,
        ..SessionOptions::new(run_dir)
    };
    let session = Session::open(trainer, manifest.clone(), cfg, &options)?;
    if let Some((_, step)) = session.resumed() {
        eprintln!(
            "resumed from {} at step {step}",
            session.run_dir().file(CHECKPOINT).display()
        );
    }
    Ok(session)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let c = &args.common;
    if args.batch_size < 2 {
        bail!("--batch-size must be at least 2");
    }
    let manifest = c.manifest()?;
    let dim = manifest.outputs.embedding_dim;
    let cfg = config(&args);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut encoder = c.load_encoder(&manifest, args.knn_from.is_some())?;
    let preprocessor = Preprocessor::new(&manifest);
    // The frozen encoder until the trainer thread sends its first adapter.
    let view = AdaptedModel::frozen();
    let (mut adapted, logits_head) = match &args.knn_from {
        Some(dir) => (
            Some(AdaptedKnn::new(
                view,
                &shipped(dir),
                &mut *encoder,
                args.k.max(1),
            )?),
            None,
        ),
        None => (None, Some(Head::load(&manifest, None, None)?)),
    };

    let views = ViewMaker::new(&manifest, args.seed)?;
    let train_encoder = c.load_encoder(&manifest, true)?;
    let (to_trainer, trainer_rx): (SyncSender<ToTrainer>, _) =
        mpsc::sync_channel(args.buffer.max(2));
    let (trainer_tx, updates) = mpsc::channel();
    // The Trainer is built on its own thread (it need not be Send).
    let (worker_manifest, run_dir) = (manifest.clone(), args.out.clone());
    let worker_cfg = cfg.clone();
    let (resume, checkpoint_every, capacity) =
        (args.resume, args.checkpoint_every, args.buffer.max(2));
    let rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let handle = thread::spawn(move || {
        let session = match open_session(worker_cfg, dim, &run_dir, resume, &worker_manifest) {
            Ok(s) => s,
            Err(e) => {
                let _ = trainer_tx.send(FromTrainer::Failed(format!("{e:#}")));
                return;
            }
        };
        let trainer = session.trainer();
        let ready = FromTrainer::Ready(Box::new(trainer.params.clone()), trainer.step);
        if trainer_tx.send(ready).is_err() {
            return;
        }
        TrainerThread {
            session,
            encoder: train_encoder,
            views,
            checkpoint_every,
            capacity,
            rng,
            checkpoints: 0,
        }
        .run(trainer_rx, trainer_tx)
    });

    let mut live = Live {
        readout: None,
        history: VecDeque::new(),
        status: "collecting frames".into(),
    };
    // The first message is the trainer's starting adapter (or its failure).
    let first = updates
        .recv()
        .context("the adaptation thread stopped before starting")?;
    live.apply(first, &mut adapted)?;
    let mut source = c.open_source()?;
    let mut screen = Screen::open(c)?;
    let mut fps = FpsMeter::new();
    eprintln!(
        "camera-adapt: {} on {}, {} (batch {}, bank {})",
        manifest.name,
        source.describe(),
        cfg.loss,
        cfg.batch_size,
        cfg.bank_size
    );

    let classify = |encoder: &mut dyn Encoder, adapted: &Option<AdaptedKnn>, frame: &RgbImage| {
        let out = embed_images(encoder, &preprocessor, std::slice::from_ref(frame))?;
        match (adapted, &logits_head) {
            (Some(a), _) => a.rank(&out.embedding, args.top.max(1)),
            (None, Some(h)) => h.rank(&out.embedding, out.logits.as_ref(), args.top.max(1)),
            (None, None) => Ok(Vec::new()),
        }
    };

    let mut n = 0u64;
    let mut last_frame = None;
    let mut last_fps = 0.0;
    while !c.done(n) {
        let frame = next_frame(&mut *source, c.retry_secs)?;
        match to_trainer.try_send(ToTrainer::Frame(frame.clone())) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {}
        }
        while let Ok(msg) = updates.try_recv() {
            live.apply(msg, &mut adapted)?;
        }
        let top = classify(&mut *encoder, &adapted, &frame)?;
        let (label, conf) = top.first().map_or(("-", 0.0), |(l, p)| (l.as_str(), *p));
        let step = live.readout.map_or(0, |r| r.step);
        println!("frame {n}: {label} {:.0}% step {step}", conf * 100.0);
        let state = ScreenState {
            title: "adapt".into(),
            frame: Some(frame.clone()),
            top,
            fps: {
                last_fps = fps.tick();
                last_fps
            },
            status: live.status.clone(),
            adapt: live.readout,
            loss_history: live.history.iter().copied().collect(),
        };
        screen.show(&state)?;
        last_frame = Some(frame);
        n += 1;
    }

    // Let the trainer reach --min-steps, then show the final state once.
    let _ = to_trainer.send(ToTrainer::Finish {
        min_steps: args.min_steps,
    });
    for msg in updates.iter() {
        live.apply(msg, &mut adapted)?;
    }
    if handle.join().is_err() {
        bail!("the adaptation thread panicked");
    }
    if let Some(frame) = last_frame {
        let top = classify(&mut *encoder, &adapted, &frame)?;
        let r = live.readout.unwrap_or_default();
        println!(
            "final: step {} loss {:.4} uniformity {} effective rank {} top-1 {}",
            r.step,
            r.loss,
            r.uniformity.map_or("-".into(), |u| format!("{u:.3}")),
            r.effective_rank.map_or("-".into(), |e| format!("{e:.1}")),
            top.first().map_or("-", |(l, _)| l.as_str())
        );
        let state = ScreenState {
            title: "adapt".into(),
            frame: Some(frame),
            top,
            fps: last_fps,
            status: "done, checkpoint saved".into(),
            adapt: live.readout,
            loss_history: live.history.iter().copied().collect(),
        };
        screen.show(&state)?;
    }
    Ok(())
}
