//! The adaptation loop: a trainable adapter + projection head on top of the
//! frozen encoder, trained from unlabelled images with a contrastive objective.
//!
//! One step takes two views of a batch (their frozen embeddings), runs
//! adapter → head on each, evaluates the objective with its analytic gradient,
//! backpropagates through head and adapter, and updates the parameters. With
//! `--loss infonce` and a bank size > 0 the negatives come from a MoCo queue
//! filled by a momentum (EMA) copy of adapter + head; BYOL uses the EMA copy as
//! its target and trains a predictor; SigLIP learns its temperature and bias.
//!
//! With trainable tail layers ([`super::tail`]) the step's inputs are the
//! frozen trunk's outputs (the cut tensor, flattened) instead of embeddings:
//! tail → adapter → head, and the momentum copy holds the tail too.

use ndarray::{Array2, ArrayD, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::adapted::{self, AdaptedModel};
use super::bank::MemoryBank;
use super::config::AdaptConfig;
use super::layers::{init_adapter, init_mlp, Layer, LayerCache, RunLayers};
use super::loss::{self, Objective, SigmoidParams};
use super::optim::{CosineSchedule, Optimizer};
use super::params::{ParamId, Params};
use super::tail::{self, TailCache, TailSpec, TAIL_PREFIX};
use super::views::ViewCache;

/// Errors of the training loop.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Loss(#[from] loss::LossError),
    #[error(transparent)]
    Params(#[from] super::params::ParamsError),
    #[error(transparent)]
    Layers(#[from] super::layers::LayersError),
    #[error(transparent)]
    Optim(#[from] super::optim::OptimError),
    #[error(transparent)]
    Bank(#[from] super::bank::BankError),
    #[error(transparent)]
    Tail(#[from] super::tail::TailError),
    #[error("invalid adaptation setting: {0}")]
    Config(String),
    #[error("step {step}: {what} is not finite; the step was not applied (lower --lr?)")]
    NonFinite { step: u64, what: String },
}

/// Names of the `ce` objective's classifier in [`Params`] (`[C, D]`, `[C]`).
pub const CLASSIFIER_WEIGHT: &str = "loss.classifier.weight";
/// See [`CLASSIFIER_WEIGHT`].
pub const CLASSIFIER_BIAS: &str = "loss.classifier.bias";
/// Names of SigLIP's learnt temperature and bias in [`Params`] (`[1]` each).
const SIGMOID_T_PRIME: &str = "loss.t_prime";
const SIGMOID_BIAS: &str = "loss.bias";

/// A 2-D view of a parameter that must be a matrix.
fn matrix<'a>(p: &'a ArrayD<f32>, name: &str) -> Result<ArrayView2<'a, f32>, TrainError> {
    p.view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|e| TrainError::Config(format!("{name}: {e}")))
}

/// The result of one optimisation step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub loss: f64,
    pub lr: f32,
    pub grad_norm: f64,
}

/// Trainable state and the machinery to update it.
pub struct Trainer {
    pub config: AdaptConfig,
    objective: Objective,
    /// Adapter, head, predictor and loss parameters.
    pub params: Params,
    /// The residual adapter on the embedding, as an engine graph.
    adapter: Layer,
    /// The projection head (`None` when `head_out = 0`).
    head: Option<Layer>,
    /// BYOL's predictor on the head's output.
    predictor: Option<Layer>,
    /// Momentum copy of tail + adapter + head (keys for the bank, BYOL's target).
    pub ema: Params,
    /// The trainable tail layers, when the trunk is cut below the embedding.
    tail: Option<TailSpec>,
    /// The tail's original weights: the frozen encoder's embedding.
    tail_init: Params,
    /// Handles of the objective's own parameters (`ce`'s classifier weight
    /// and bias, SigLIP's `t_prime` and bias), resolved once.
    loss_ids: Option<[ParamId; 2]>,
    /// Adapter and tail weights at construction (the adapter is the
    /// identity there): what [`AdaptConfig::anchor`] pulls toward.
    source: Params,
    optimizer: Box<dyn Optimizer>,
    pub bank: Option<MemoryBank>,
    schedule: CosineSchedule,
    pub step: u64,
    rng: ChaCha8Rng,
    /// The label of each training image, by index (`None`: unlabelled), for
    /// objectives that read labels; not part of a checkpoint (it comes with
    /// the images, like the view cache).
    labels: Option<Vec<Option<usize>>>,
}

fn optimizer(config: &AdaptConfig) -> Result<Box<dyn Optimizer>, TrainError> {
    Ok(config.optimizer.build(config.lr, config.weight_decay))
}

impl Trainer {
    /// A fresh trainer for `dim`-wide frozen embeddings and `steps_per_epoch`.
    pub fn new(
        config: AdaptConfig,
        dim: usize,
        steps_per_epoch: usize,
    ) -> Result<Self, TrainError> {
        Self::with_tail(config, None, dim, steps_per_epoch)
    }

    /// A fresh trainer that also trains `tail` (its spec and initial
    /// weights, from [`super::tail::load_tail`]); its inputs are then the
    /// trunk's outputs. Without a tail this is [`Trainer::new`].
    pub fn with_tail(
        config: AdaptConfig,
        tail: Option<(TailSpec, Params)>,
        dim: usize,
        steps_per_epoch: usize,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if tail.is_some() != config.train_tail.is_some() {
            return Err(TrainError::Config(
                "config.train_tail and the tail layers given disagree".into(),
            ));
        }
        let dim = tail.as_ref().map_or(dim, |(spec, _)| spec.out_dim);
        let objective = config.loss;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut params = Params::new();
        init_adapter(&mut params, dim, config.bottleneck, &mut rng);
        if config.head_out > 0 {
            init_mlp(
                &mut params,
                "head",
                dim,
                config.head_hidden,
                config.head_out,
                &mut rng,
            );
        }
        if objective.needs_predictor() {
            init_mlp(
                &mut params,
                "predictor",
                config.head_out,
                config.head_hidden,
                config.head_out,
                &mut rng,
            );
        }
        if objective.needs_classes() {
            // Zero-initialised, as a linear probe: the first step's softmax
            // is uniform and no random direction is imposed on the embedding.
            let d = config.loss_dim(dim);
            params.insert(CLASSIFIER_WEIGHT, ArrayD::zeros(vec![config.classes, d]));
            params.insert(CLASSIFIER_BIAS, ArrayD::zeros(vec![config.classes]));
        }
        if objective == Objective::Sigmoid {
            let init = SigmoidParams::default();
            params.insert(
                SIGMOID_T_PRIME,
                ArrayD::from_elem(vec![1], init.t_prime as f32),
            );
            params.insert(SIGMOID_BIAS, ArrayD::from_elem(vec![1], init.bias as f32));
        }
        let tail = match tail {
            Some((mut spec, init)) => {
                for name in spec.param_names() {
                    init.get(&name)?;
                }
                params.extend(init);
                spec.resolve(&params)?;
                Some(spec)
            }
            None => None,
        };
        // Every store below is made from `params`, so the handles the
        // layers resolve there reach their tensors by slot in all of them.
        let tail_init = params.with_prefix(TAIL_PREFIX);
        let loss_ids = match objective {
            Objective::Ce => Some([params.id(CLASSIFIER_WEIGHT)?, params.id(CLASSIFIER_BIAS)?]),
            Objective::Sigmoid => Some([params.id(SIGMOID_T_PRIME)?, params.id(SIGMOID_BIAS)?]),
            _ => None,
        };
        let mut source = params.with_prefix("adapter.");
        source.extend(params.with_prefix(TAIL_PREFIX));
        let mut ema = params.with_prefix("adapter.");
        ema.extend(params.with_prefix("head."));
        ema.extend(params.with_prefix(TAIL_PREFIX));
        let bank = match config.bank_size {
            k if k > 0 && objective.uses_bank() => Some(MemoryBank::new(k, config.loss_dim(dim))?),
            _ => None,
        };
        let total = (config.epochs * steps_per_epoch).max(1);
        let schedule = CosineSchedule {
            base_lr: config.lr,
            warmup_steps: config.warmup_epochs * steps_per_epoch,
            total_steps: total,
            min_lr: 0.0,
        };
        let RunLayers {
            adapter,
            head,
            predictor,
        } = RunLayers::new(&config, dim)?;
        let adapter = adapter.resolved(&params)?;
        let head = head.map(|l| l.resolved(&params)).transpose()?;
        let predictor = predictor.map(|l| l.resolved(&params)).transpose()?;
        Ok(Self {
            optimizer: optimizer(&config)?,
            objective,
            params,
            adapter,
            head,
            predictor,
            ema,
            tail,
            tail_init,
            loss_ids,
            source,
            bank,
            schedule,
            step: 0,
            rng,
            labels: None,
            config,
        })
    }

    /// Labels of the training images, by the index [`Trainer::train_epoch`]
    /// and [`Trainer::train_epoch_stream`] use (`None` for an unlabelled
    /// image). Objectives that read labels (`supcon`) put same-label samples
    /// on the positive side; the others ignore them.
    pub fn set_labels(&mut self, labels: Vec<Option<usize>>) {
        self.labels = Some(labels);
    }

    /// The labels of the images in `batch` (None: no labels were set).
    fn batch_labels(&self, batch: &[usize]) -> Result<Option<Vec<Option<usize>>>, TrainError> {
        let Some(labels) = &self.labels else {
            return Ok(None);
        };
        batch
            .iter()
            .map(|&i| {
                labels.get(i).copied().ok_or_else(|| {
                    TrainError::Config(format!(
                        "image {i} has no entry in the {} labels set for training",
                        labels.len()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The objective the run trains.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// The trainable tail layers, if any.
    pub fn tail(&self) -> Option<&TailSpec> {
        self.tail.as_ref()
    }

    /// Width of the adapted embedding.
    pub fn embedding_dim(&self) -> Result<usize, TrainError> {
        Ok(self.params.get("adapter.up.bias")?.len())
    }

    /// Tail (if any) then adapter, with the weights in `p`; caches for backward.
    fn forward(
        &self,
        p: &Params,
        x: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, LayerCache, Option<TailCache>), TrainError> {
        match &self.tail {
            Some(spec) => {
                let (e, tc) = tail::forward(spec, p, x)?;
                let (a, ac) = self.adapter.forward(p, e.view())?;
                Ok((a, ac, Some(tc)))
            }
            None => {
                let (a, ac) = self.adapter.forward(p, x)?;
                Ok((a, ac, None))
            }
        }
    }

    /// Adapted embeddings (tail, if any, then adapter): what probes and
    /// exports use. `x` is what [`Trainer::train_step`] takes.
    pub fn adapt(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, TrainError> {
        adapted::embed_chunked(self.tail.as_ref(), Some(&self.adapter), &self.params, x)
    }

    /// This run's trained part as it stands, for inference only (no head,
    /// momentum copy, optimiser or bank).
    pub fn adapted_model(&self) -> Result<AdaptedModel, TrainError> {
        AdaptedModel::new(&self.params, self.tail.clone())
    }

    /// The frozen encoder's embeddings of `x`: `x` itself without a tail,
    /// else the tail with its original weights (no adapter).
    pub fn frozen(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, TrainError> {
        match &self.tail {
            Some(spec) => adapted::embed_chunked(Some(spec), None, &self.tail_init, x),
            None => Ok(x.to_owned()),
        }
    }

    /// The projection head with the weights in `p` (the identity, with no
    /// cache, when the run has none: `head_out = 0`).
    fn head(
        &self,
        p: &Params,
        a: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Option<LayerCache>), TrainError> {
        let Some(head) = &self.head else {
            return Ok((a.to_owned(), None));
        };
        let (z, cache) = head.forward(p, a)?;
        Ok((z, Some(cache)))
    }

    /// Keys from the momentum copy (no gradient).
    fn ema_keys(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, TrainError> {
        adapted::chunked(x, |c| {
            let a = adapted::embed_rows(self.tail.as_ref(), Some(&self.adapter), &self.ema, c)?;
            Ok(self.head(&self.ema, a.view())?.0)
        })
    }

    /// Fills the bank with keys of `x` before training, so the first steps
    /// already see `bank_size` negatives (MoCo starts from random keys).
    /// Row `i` of `x` is training image `i`: with labels set
    /// ([`Trainer::set_labels`]) its key is enqueued with its label.
    pub fn prefill_bank(&mut self, x: ArrayView2<f32>) -> Result<(), TrainError> {
        if self.bank.is_none() {
            return Ok(());
        }
        let step = self.config.batch_size;
        for (c, chunk) in x.axis_chunks_iter(Axis(0), step).enumerate() {
            let keys = self.ema_keys(chunk)?;
            let rows: Vec<usize> = (c * step..c * step + chunk.nrows()).collect();
            let labels = self.batch_labels(&rows)?;
            if let Some(bank) = self.bank.as_mut() {
                bank.enqueue_labelled(keys.view(), labels.as_deref())?;
            }
        }
        Ok(())
    }

    /// One optimisation step on two views `x1`, `x2` of the same batch, `[B, W]`:
    /// the frozen trunk's outputs, i.e. the frozen embeddings, or with a tail
    /// the flattened cut tensor (`[B, C·H·W]`). This is the whole per-step
    /// API: a camera app augments two views of each frame, runs the trunk on
    /// them, and calls this.
    ///
    /// With a MoCo bank the keys of `x2` are computed once by the momentum
    /// copy, used as the positives, and exactly those keys are enqueued after
    /// the update (MoCo's Algorithm 1).
    pub fn train_step(
        &mut self,
        x1: ArrayView2<f32>,
        x2: ArrayView2<f32>,
    ) -> Result<StepReport, TrainError> {
        self.train_step_labelled(x1, x2, None)
    }

    /// [`Trainer::train_step`] with the label of each row (`None` for an
    /// unlabelled row; `labels: None`: all unlabelled). Only objectives
    /// that read labels use them; the bank stores them with the keys.
    pub fn train_step_labelled(
        &mut self,
        x1: ArrayView2<f32>,
        x2: ArrayView2<f32>,
        labels: Option<&[Option<usize>]>,
    ) -> Result<StepReport, TrainError> {
        let unlabelled;
        let labels = match labels {
            Some(l) if l.len() != x1.nrows() => {
                return Err(TrainError::Config(format!(
                    "{} labels for a batch of {}",
                    l.len(),
                    x1.nrows()
                )))
            }
            Some(l) => l,
            None => {
                unlabelled = vec![None; x1.nrows()];
                &unlabelled
            }
        };
        let moco_keys = match &self.bank {
            Some(_) if self.objective.uses_bank() => Some(self.ema_keys(x2)?),
            _ => None,
        };
        // With a non-empty bank, MoCo's loss reads only the queries of view 1
        // (view 2 enters as the momentum encoder's keys), so the online
        // network neither runs nor backpropagates view 2: with a trainable
        // tail that saves two of the step's five large matmuls.
        let bank_loss = match (&self.bank, &moco_keys) {
            (Some(bank), Some(keys)) if !bank.is_empty() => Some((bank, keys)),
            _ => None,
        };
        let (a1, ac1, tc1) = self.forward(&self.params, x1)?;
        let (z1, hc1) = self.head(&self.params, a1.view())?;
        // Same layout as the parameters: gradients accumulate by handle.
        let mut grads = self.params.empty_like();
        let (value, dz1, view2) = match bank_loss {
            Some((bank, keys)) => {
                let out = match self.objective {
                    Objective::Supcon { tau, nn, fnc, uw } => loss::supcon_bank_with(
                        z1.view(),
                        keys.view(),
                        labels,
                        bank.negatives(),
                        bank.labels(),
                        &loss::SupconParams { tau, nn, fnc, uw },
                    )?,
                    Objective::Infonce { tau } => {
                        loss::infonce_bank(z1.view(), keys.view(), bank.negatives(), tau)?
                    }
                    other => {
                        return Err(TrainError::Config(format!(
                            "{other} does not use a memory bank"
                        )))
                    }
                };
                (out.value, out.grad, None)
            }
            None => {
                let (a2, ac2, tc2) = self.forward(&self.params, x2)?;
                let (z2, hc2) = self.head(&self.params, a2.view())?;
                let (value, dz1, dz2) = match self.objective {
                    Objective::Infonce { tau } => {
                        let out = loss::nt_xent(z1.view(), z2.view(), tau)?;
                        (out.value, out.grad_z1, out.grad_z2)
                    }
                    Objective::Supcon { tau, nn, fnc, uw } => {
                        let params = loss::SupconParams { tau, nn, fnc, uw };
                        let out = loss::supcon_with(z1.view(), z2.view(), labels, &params)?;
                        (out.value, out.grad_z1, out.grad_z2)
                    }
                    Objective::AlignUniform { lambda, t } => {
                        let out = loss::align_uniform(z1.view(), z2.view(), lambda, t)?;
                        (out.value, out.grad_z1, out.grad_z2)
                    }
                    Objective::Spectral { mu } => {
                        let out = loss::spectral(z1.view(), z2.view(), mu)?;
                        (out.value, out.grad_z1, out.grad_z2)
                    }
                    Objective::Sigmoid => {
                        let [t_id, b_id] = self.loss_ids()?;
                        let sp = SigmoidParams {
                            t_prime: f64::from(self.params.get_by(t_id, SIGMOID_T_PRIME)?[[0]]),
                            bias: f64::from(self.params.get_by(b_id, SIGMOID_BIAS)?[[0]]),
                        };
                        let out = loss::sigmoid_loss(z1.view(), z2.view(), sp)?;
                        grads.accumulate_at(
                            t_id,
                            SIGMOID_T_PRIME,
                            ArrayD::from_elem(vec![1], out.grad_t_prime as f32),
                        )?;
                        grads.accumulate_at(
                            b_id,
                            SIGMOID_BIAS,
                            ArrayD::from_elem(vec![1], out.grad_bias as f32),
                        )?;
                        (out.value, out.grad_z1, out.grad_z2)
                    }
                    Objective::Ce => {
                        // Both views are classified; the loss is their mean.
                        let [w_id, b_id] = self.loss_ids()?;
                        let w = matrix(
                            self.params.get_by(w_id, CLASSIFIER_WEIGHT)?,
                            CLASSIFIER_WEIGHT,
                        )?;
                        let b = self.params.get_by(b_id, CLASSIFIER_BIAS)?;
                        let b = b
                            .view()
                            .into_dimensionality::<ndarray::Ix1>()
                            .map_err(|e| TrainError::Config(format!("{CLASSIFIER_BIAS}: {e}")))?;
                        let o1 = loss::cross_entropy(z1.view(), labels, w, b)?;
                        let o2 = loss::cross_entropy(z2.view(), labels, w, b)?;
                        let half = |a: Array2<f32>| a.mapv(|v| 0.5 * v);
                        grads.accumulate_at(
                            w_id,
                            CLASSIFIER_WEIGHT,
                            half(o1.grad_weight + o2.grad_weight).into_dyn(),
                        )?;
                        grads.accumulate_at(
                            b_id,
                            CLASSIFIER_BIAS,
                            (0.5 * (o1.grad_bias + o2.grad_bias)).into_dyn(),
                        )?;
                        (
                            0.5 * (o1.value + o2.value),
                            half(o1.grad_z),
                            half(o2.grad_z),
                        )
                    }
                    Objective::Byol => {
                        let predictor = self
                            .predictor
                            .as_ref()
                            .ok_or_else(|| TrainError::Config("BYOL without a predictor".into()))?;
                        let (p1, pc1) = predictor.forward(&self.params, z1.view())?;
                        let (p2, pc2) = predictor.forward(&self.params, z2.view())?;
                        let t1 = self.ema_keys(x1)?;
                        let t2 = self.ema_keys(x2)?;
                        let out = loss::byol_symmetric(p1.view(), p2.view(), t1.view(), t2.view())?;
                        let dz1 = predictor.backward(
                            &self.params,
                            &pc1,
                            out.grad_p1.view(),
                            &mut grads,
                        )?;
                        let dz2 = predictor.backward(
                            &self.params,
                            &pc2,
                            out.grad_p2.view(),
                            &mut grads,
                        )?;
                        (out.value, dz1, dz2)
                    }
                };
                (value, dz1, Some((dz2, hc2, ac2, tc2)))
            }
        };
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                what: "the loss".into(),
            });
        }
        let mut backward = vec![(&hc1, &ac1, &tc1, &dz1)];
        if let Some((dz2, hc2, ac2, tc2)) = &view2 {
            backward.push((hc2, ac2, tc2, dz2));
        }
        for (hc, ac, tc, dz) in backward {
            let da = match (hc, &self.head) {
                (Some(hc), Some(head)) => head.backward(&self.params, hc, dz.view(), &mut grads)?,
                _ => dz.clone(),
            };
            let dx = self
                .adapter
                .backward(&self.params, ac, da.view(), &mut grads)?;
            if let (Some(spec), Some(tc)) = (&self.tail, tc) {
                tail::backward(spec, &self.params, tc, dx.view(), &mut grads)?;
            }
        }
        if let Some(name) = grads.first_non_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                what: format!("the gradient of {name}"),
            });
        }
        let lr = self.schedule.lr(self.step as usize);
        let grad_norm = grads.global_norm();
        let before = self.params.clone();
        self.optimizer.step(&mut self.params, &grads, lr)?;
        if let Some(name) = self.params.first_non_finite() {
            let what = format!("parameter {name} after the update");
            self.params = before;
            return Err(TrainError::NonFinite {
                step: self.step,
                what,
            });
        }
        if self.config.anchor > 0.0 {
            // θ ← θ + a·(θ₀ − θ).
            let a = self.config.anchor;
            self.params
                .zip_mut_with(&self.source, |t, s0| *t += a * (s0 - *t))?;
        }
        let momentum = self.config.momentum;
        self.ema.ema_update(&self.params, momentum)?;
        if let (Some(bank), Some(keys)) = (self.bank.as_mut(), &moco_keys) {
            bank.enqueue_labelled(keys.view(), Some(labels))?;
        }
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss: value,
            lr,
            grad_norm,
        })
    }

    /// This epoch's batches over `n` images: a fresh shuffle, chunks of
    /// the batch size, a last chunk of one image dropped.
    fn epoch_batches(&mut self, n: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        order
            .chunks(self.config.batch_size)
            .filter(|b| b.len() >= 2)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// One pass over a view cache: each image once per epoch, two distinct
    /// random views of it per step. Returns the mean loss.
    pub fn train_epoch(
        &mut self,
        cache: &ViewCache,
        on_step: impl FnMut(&StepReport),
    ) -> Result<f64, TrainError> {
        if cache.num_views() < 2 {
            return Err(TrainError::Config(format!(
                "training needs at least two views per image, the cache has {}",
                cache.num_views()
            )));
        }
        self.run_epoch(
            cache.len(),
            |batch, rng| Ok::<_, TrainError>(cache.pair(batch, rng)),
            on_step,
        )
    }

    /// One pass over `n` images in streaming mode: `views(batch)` returns
    /// two freshly augmented views of the listed images through the frozen
    /// trunk (as a camera would), nothing is cached. Returns the mean loss.
    pub fn train_epoch_stream<E: From<TrainError>>(
        &mut self,
        n: usize,
        mut views: impl FnMut(&[usize]) -> Result<(Array2<f32>, Array2<f32>), E>,
        on_step: impl FnMut(&StepReport),
    ) -> Result<f64, E> {
        self.run_epoch(n, |batch, _| views(batch), on_step)
    }

    /// The loop both epoch kinds share: shuffled batches of `n` images, two
    /// views of each batch from `views` (which may draw from the trainer's
    /// RNG), one step each; the mean loss (NaN for an epoch with no step).
    fn run_epoch<E: From<TrainError>>(
        &mut self,
        n: usize,
        mut views: impl FnMut(&[usize], &mut ChaCha8Rng) -> Result<(Array2<f32>, Array2<f32>), E>,
        mut on_step: impl FnMut(&StepReport),
    ) -> Result<f64, E> {
        let mut total = 0.0;
        let mut steps = 0;
        for batch in self.epoch_batches(n) {
            let (x1, x2) = views(&batch, &mut self.rng)?;
            let labels = self.batch_labels(&batch)?;
            let report = self.train_step_labelled(x1.view(), x2.view(), labels.as_deref())?;
            total += report.loss;
            steps += 1;
            on_step(&report);
        }
        Ok(if steps == 0 {
            f64::NAN
        } else {
            total / steps as f64
        })
    }

    /// The handles of the objective's own two parameters.
    fn loss_ids(&self) -> Result<[ParamId; 2], TrainError> {
        self.loss_ids.ok_or_else(|| {
            TrainError::Config(format!("{} holds no parameters of its own", self.objective))
        })
    }

    /// Steps one epoch takes on `n` images.
    pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
        let full = n / batch_size;
        full + usize::from(n % batch_size >= 2)
    }
}

/// Prefix of the momentum copy's tensors in a checkpoint.
const EMA: &str = "ema.";
const RNG: &str = "trainer.rng_word_pos";

/// A u128 as eight exact 16-bit chunks (f32 holds integers < 2^24 exactly).
fn u128_to_tensor(v: u128) -> ArrayD<f32> {
    ArrayD::from_shape_fn(vec![8], |i| ((v >> (16 * i[0])) & 0xffff) as f32)
}

fn tensor_to_u128(t: &ArrayD<f32>) -> u128 {
    t.iter()
        .enumerate()
        .map(|(i, &c)| (c as u128) << (16 * i))
        .sum()
}

impl Trainer {
    /// Everything needed to continue exactly where this run is: parameters,
    /// EMA copy, optimiser state, bank, shuffling RNG position, step.
    pub fn checkpoint(
        &self,
        manifest: &crate::Manifest,
        config: &AdaptConfig,
        epoch: u64,
    ) -> Result<super::checkpoint::Checkpoint, TrainError> {
        let mut tensors = self.params.clone();
        for (name, t) in self.ema.iter() {
            tensors.insert(format!("{EMA}{name}"), t.clone());
        }
        tensors.extend(self.optimizer.state());
        if let Some(bank) = &self.bank {
            tensors.extend(bank.to_params());
        }
        tensors.insert(RNG, u128_to_tensor(self.rng.get_word_pos()));
        Ok(super::checkpoint::Checkpoint {
            step: self.step,
            epoch,
            model: manifest.name.clone(),
            model_sha256: manifest.sha256.clone(),
            config_json: serde_json::to_string(config)
                .map_err(|e| TrainError::Config(e.to_string()))?,
            tensors,
        })
    }

    /// Restores the state [`Trainer::checkpoint`] saved (the step comes from
    /// the checkpoint's metadata via `step`).
    pub fn restore_from(&mut self, ckpt: &super::checkpoint::Checkpoint) -> Result<(), TrainError> {
        let tensors = &ckpt.tensors;
        let saved_tail = tensors.names().any(|n| n.starts_with(TAIL_PREFIX));
        if saved_tail != self.tail.is_some() {
            return Err(TrainError::Config(if saved_tail {
                "the checkpoint was trained with tail layers (--train-tail); resume with the \
                 same --train-tail"
                    .into()
            } else {
                "the checkpoint was trained without tail layers; resume without --train-tail".into()
            }));
        }
        let names: Vec<String> = self.params.names().map(str::to_owned).collect();
        for name in names {
            let saved = tensors.get(&name)?.clone();
            *self.params.get_mut(&name)? = saved;
        }
        let names: Vec<String> = self.ema.names().map(str::to_owned).collect();
        for name in names {
            let saved = tensors.get(&format!("{EMA}{name}"))?.clone();
            *self.ema.get_mut(&name)? = saved;
        }
        self.optimizer.load_state(tensors)?;
        if self.bank.is_some() {
            self.bank = Some(MemoryBank::from_params(tensors)?);
        }
        self.rng.set_word_pos(tensor_to_u128(tensors.get(RNG)?));
        self.step = ckpt.step;
        Ok(())
    }
}
