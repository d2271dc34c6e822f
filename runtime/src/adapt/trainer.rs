//! The adaptation loop: a trainable adapter + projection head on top of the
//! frozen encoder, trained from unlabelled images with a contrastive objective.
//!
//! One step takes two views of a batch (their frozen embeddings), runs
//! adapter → head on each, evaluates the objective with its analytic gradient,
//! backpropagates through head and adapter, and updates the parameters. With
//! `--loss infonce` and a bank size > 0 the negatives come from a MoCo queue
//! filled by a momentum (EMA) copy of adapter + head; BYOL uses the EMA copy as
//! its target and trains a predictor; SigLIP learns its temperature and bias.

use ndarray::{Array2, ArrayD, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::bank::MemoryBank;
use super::layers::{
    adapter_backward, adapter_forward, init_adapter, init_mlp, mlp_backward, mlp_forward,
};
use super::loss::{self, Objective, SigmoidParams};
use super::optim::{CosineSchedule, Optimizer, OptimizerKind};
use super::params::Params;

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
    #[error("invalid adaptation setting: {0}")]
    Config(String),
    #[error("step {step}: {what} is not finite; the step was not applied (lower --lr?)")]
    NonFinite { step: u64, what: String },
}

/// Everything that defines a run; stored in checkpoints so a resume is exact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptConfig {
    /// Objective, e.g. `infonce`, `infonce:tau=0.2`, `align-uniform`, `spectral`.
    pub loss: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub optimizer: String,
    pub weight_decay: f32,
    pub warmup_epochs: usize,
    /// Width of the adapter's bottleneck.
    pub bottleneck: usize,
    pub head_hidden: usize,
    pub head_out: usize,
    /// MoCo queue length for `infonce` (0: in-batch negatives only).
    pub bank_size: usize,
    /// EMA momentum of the key/target copy.
    pub momentum: f32,
    pub seed: u64,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            loss: "infonce:tau=0.2".into(),
            epochs: 10,
            batch_size: 64,
            lr: 1e-3,
            optimizer: "adamw".into(),
            weight_decay: 1e-4,
            warmup_epochs: 1,
            bottleneck: 128,
            head_hidden: 512,
            head_out: 128,
            bank_size: 4096,
            momentum: 0.99,
            seed: 0,
        }
    }
}

impl AdaptConfig {
    pub fn objective(&self) -> Result<Objective, TrainError> {
        Ok(self.loss.parse::<Objective>()?)
    }

    fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.into()));
        if self.batch_size < 2 {
            return bad("batch size must be at least 2");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate must be positive");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum must be in [0, 1)");
        }
        if self.bank_size > 0 && self.bank_size < self.batch_size {
            return bad("bank size must be 0 or at least the batch size");
        }
        if self.bottleneck == 0 || self.head_hidden == 0 || self.head_out == 0 {
            return bad("layer widths must be positive");
        }
        self.objective()?;
        Ok(())
    }
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
    /// Momentum copy of adapter + head (keys for the bank, BYOL's target).
    pub ema: Params,
    optimizer: Box<dyn Optimizer>,
    pub bank: Option<MemoryBank>,
    schedule: CosineSchedule,
    pub step: u64,
    rng: ChaCha8Rng,
}

fn optimizer(config: &AdaptConfig) -> Result<Box<dyn Optimizer>, TrainError> {
    let kind: OptimizerKind = config.optimizer.parse()?;
    Ok(kind.build(config.lr, config.weight_decay))
}

impl Trainer {
    /// A fresh trainer for `dim`-wide frozen embeddings and `steps_per_epoch`.
    pub fn new(
        config: AdaptConfig,
        dim: usize,
        steps_per_epoch: usize,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let objective = config.objective()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut params = Params::new();
        init_adapter(&mut params, dim, config.bottleneck, &mut rng);
        init_mlp(
            &mut params,
            "head",
            dim,
            config.head_hidden,
            config.head_out,
            &mut rng,
        );
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
        if objective == Objective::Sigmoid {
            let init = SigmoidParams::default();
            params.insert(
                "loss.t_prime",
                ArrayD::from_elem(vec![1], init.t_prime as f32),
            );
            params.insert("loss.bias", ArrayD::from_elem(vec![1], init.bias as f32));
        }
        let mut ema = params.with_prefix("adapter.");
        ema.extend(params.with_prefix("head."));
        let bank = match (&objective, config.bank_size) {
            (Objective::Infonce { .. }, k) if k > 0 => Some(MemoryBank::new(k, config.head_out)?),
            _ => None,
        };
        let total = (config.epochs * steps_per_epoch).max(1);
        let schedule = CosineSchedule {
            base_lr: config.lr,
            warmup_steps: config.warmup_epochs * steps_per_epoch,
            total_steps: total,
            min_lr: 0.0,
        };
        Ok(Self {
            optimizer: optimizer(&config)?,
            objective,
            params,
            ema,
            bank,
            schedule,
            step: 0,
            rng,
            config,
        })
    }

    /// Adapted embeddings (adapter only): what probes and exports use.
    pub fn adapt(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, TrainError> {
        Ok(adapter_forward(&self.params, x)?.0)
    }

    /// Keys from the momentum copy (no gradient).
    fn ema_keys(&self, x: ArrayView2<f32>) -> Result<Array2<f32>, TrainError> {
        let (a, _) = adapter_forward(&self.ema, x)?;
        Ok(mlp_forward(&self.ema, "head", a.view())?.0)
    }

    /// Fills the bank with keys of `x` before training, so the first steps
    /// already see `bank_size` negatives (MoCo starts from random keys).
    pub fn prefill_bank(&mut self, x: ArrayView2<f32>) -> Result<(), TrainError> {
        if self.bank.is_none() {
            return Ok(());
        }
        let keys = self.ema_keys(x)?;
        if let Some(bank) = self.bank.as_mut() {
            for chunk in keys.axis_chunks_iter(Axis(0), self.config.batch_size) {
                bank.enqueue(chunk)?;
            }
        }
        Ok(())
    }

    /// One optimisation step on two views `x1`, `x2` (frozen embeddings, `[B, D]`).
    pub fn train_step(
        &mut self,
        x1: ArrayView2<f32>,
        x2: ArrayView2<f32>,
    ) -> Result<StepReport, TrainError> {
        let (a1, ac1) = adapter_forward(&self.params, x1)?;
        let (a2, ac2) = adapter_forward(&self.params, x2)?;
        let (z1, hc1) = mlp_forward(&self.params, "head", a1.view())?;
        let (z2, hc2) = mlp_forward(&self.params, "head", a2.view())?;
        let mut grads = Params::new();
        let (value, dz1, dz2) = match self.objective {
            Objective::Infonce { tau } => match &self.bank {
                Some(bank) if !bank.is_empty() => {
                    let keys = self.ema_keys(x2)?;
                    let out = loss::infonce_bank(z1.view(), keys.view(), bank.negatives(), tau)?;
                    (out.value, out.grad, Array2::zeros(z2.raw_dim()))
                }
                _ => {
                    let out = loss::nt_xent(z1.view(), z2.view(), tau)?;
                    (out.value, out.grad_z1, out.grad_z2)
                }
            },
            Objective::AlignUniform { lambda, t } => {
                let out = loss::align_uniform(z1.view(), z2.view(), lambda, t)?;
                (out.value, out.grad_z1, out.grad_z2)
            }
            Objective::Spectral { mu } => {
                let out = loss::spectral(z1.view(), z2.view(), mu)?;
                (out.value, out.grad_z1, out.grad_z2)
            }
            Objective::Sigmoid => {
                let sp = SigmoidParams {
                    t_prime: f64::from(self.params.get("loss.t_prime")?[[0]]),
                    bias: f64::from(self.params.get("loss.bias")?[[0]]),
                };
                let out = loss::sigmoid_loss(z1.view(), z2.view(), sp)?;
                grads.insert(
                    "loss.t_prime",
                    ArrayD::from_elem(vec![1], out.grad_t_prime as f32),
                );
                grads.insert(
                    "loss.bias",
                    ArrayD::from_elem(vec![1], out.grad_bias as f32),
                );
                (out.value, out.grad_z1, out.grad_z2)
            }
            Objective::Byol => {
                let (p1, pc1) = mlp_forward(&self.params, "predictor", z1.view())?;
                let (p2, pc2) = mlp_forward(&self.params, "predictor", z2.view())?;
                let t1 = self.ema_keys(x1)?;
                let t2 = self.ema_keys(x2)?;
                let out = loss::byol_symmetric(p1.view(), p2.view(), t1.view(), t2.view())?;
                let (dz1, g1) = mlp_backward(&self.params, "predictor", &pc1, out.grad_p1.view())?;
                let (dz2, g2) = mlp_backward(&self.params, "predictor", &pc2, out.grad_p2.view())?;
                grads.accumulate(g1)?;
                grads.accumulate(g2)?;
                (out.value, dz1, dz2)
            }
        };
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step,
                what: "the loss".into(),
            });
        }
        for (hc, ac, dz) in [(&hc1, &ac1, &dz1), (&hc2, &ac2, &dz2)] {
            let (da, gh) = mlp_backward(&self.params, "head", hc, dz.view())?;
            let (_, ga) = adapter_backward(&self.params, ac, da.view())?;
            grads.accumulate(gh)?;
            grads.accumulate(ga)?;
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
        let momentum = self.config.momentum;
        self.ema.ema_update(&self.params, momentum)?;
        if let (Some(_), Objective::Infonce { .. }) = (&self.bank, self.objective) {
            let keys = self.ema_keys(x2)?;
            if let Some(bank) = self.bank.as_mut() {
                bank.enqueue(keys.view())?;
            }
        }
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss: value,
            lr,
            grad_norm,
        })
    }

    /// One pass over a view cache: each image once per epoch, two distinct
    /// random views of it per step. Returns the mean loss.
    pub fn train_epoch(
        &mut self,
        cache: &ViewCache,
        mut on_step: impl FnMut(&StepReport),
    ) -> Result<f64, TrainError> {
        let n = cache.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        let mut total = 0.0;
        let mut steps = 0;
        for batch in order.chunks(self.config.batch_size) {
            if batch.len() < 2 {
                continue;
            }
            let (x1, x2) = cache.pair(batch, &mut self.rng);
            let report = self.train_step(x1.view(), x2.view())?;
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

    /// Steps one epoch takes on `n` images.
    pub fn steps_per_epoch(n: usize, batch_size: usize) -> usize {
        let full = n / batch_size;
        full + usize::from(n % batch_size >= 2)
    }
}

/// Frozen embeddings of `V` augmented views of every training image, computed
/// once so that many epochs cost only the head's arithmetic.
#[derive(Debug, Clone)]
pub struct ViewCache {
    /// `views[v]` is `[N, D]`: view `v` of every image.
    pub views: Vec<Array2<f32>>,
}

impl ViewCache {
    pub fn len(&self) -> usize {
        self.views.first().map_or(0, |v| v.nrows())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn memory_bytes(&self) -> usize {
        self.views
            .iter()
            .map(|v| v.len() * std::mem::size_of::<f32>())
            .sum()
    }

    /// Two different views of each listed image.
    fn pair(&self, rows: &[usize], rng: &mut ChaCha8Rng) -> (Array2<f32>, Array2<f32>) {
        let v = self.views.len();
        let mut choice: Vec<usize> = (0..v).collect();
        let dim = self.views[0].ncols();
        let mut x1 = Array2::zeros((rows.len(), dim));
        let mut x2 = Array2::zeros((rows.len(), dim));
        for (i, &r) in rows.iter().enumerate() {
            choice.shuffle(rng);
            x1.row_mut(i).assign(&self.views[choice[0]].row(r));
            x2.row_mut(i).assign(&self.views[choice[1 % v]].row(r));
        }
        (x1, x2)
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
