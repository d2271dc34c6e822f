//! The settings of an adaptation run: one typed struct with one set of
//! defaults, read by every front-end (the CLI's flags default to
//! [`AdaptConfig::default`]'s values, the C ABI overrides its keys from
//! JSON, the camera app sets what it streams) and stored in every
//! checkpoint, so a resume is exact ([`super::resume`]).
//!
//! The objective, the optimiser and the trained scope are typed values
//! parsed once where they enter (`FromStr`), not strings parsed when first
//! used; a checkpoint stores each as the text it parses from
//! (`"loss": "supcon:tau=0.1"`, `"optimizer": "adamw"`,
//! `"train_tail": "blocks:4"`), so the JSON reads as the flags do.

use serde::{Deserialize, Serialize};

use super::loss::Objective;
use super::optim::OptimizerKind;
use super::tail::{ParamScope, TailChoice};
use super::trainer::TrainError;

/// Everything that defines a run; stored in checkpoints so a resume is exact.
/// Unknown fields are refused (a C caller's typo in a key, a checkpoint from
/// a newer edgeclr with settings this one does not know).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptConfig {
    /// Objective and its hyper-parameters, stored as its spec
    /// (`infonce:tau=0.2`, `supcon:tau=0.1`, `spectral:mu=1`, ...).
    #[serde(with = "as_text")]
    pub loss: Objective,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    /// `sgd` or `adamw`, stored by name.
    #[serde(with = "as_text")]
    pub optimizer: OptimizerKind,
    pub weight_decay: f32,
    pub warmup_epochs: usize,
    /// Width of the adapter's bottleneck.
    pub bottleneck: usize,
    pub head_hidden: usize,
    /// Width of the projection head's output; 0: no head, the loss reads
    /// the adapted embedding itself (what k-NN and probes use), so what the
    /// loss learns cannot stay in a head that is thrown away.
    pub head_out: usize,
    /// MoCo queue length for `infonce` (0: in-batch negatives only).
    pub bank_size: usize,
    /// EMA momentum of the key/target copy.
    pub momentum: f32,
    pub seed: u64,
    /// The trained layers of the ONNX graph (`auto`, `blocks:K` or the first
    /// node's name; `None`: adapter only), stored as that text. Absent in
    /// older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_as_text")]
    pub train_tail: Option<TailChoice>,
    /// Which of the tail's parameters train (`all`, `biases`, `norm`).
    /// Absent in older checkpoints.
    #[serde(default, skip_serializing_if = "is_all")]
    pub train_params: ParamScope,
    /// Classes of the softmax classifier that `--loss ce` trains (labels
    /// must be below it); 0 for every other objective. Absent in older
    /// checkpoints.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub classes: usize,
    /// Pull toward the source weights after every step: the adapter and
    /// tail move by `anchor × (source − current)` (0: off). A guard for
    /// long unsupervised streams, which are known to drift away from what
    /// the frozen encoder could do (long-run test-time adaptation decays);
    /// the fixed point balances the loss's pull against this one. Absent
    /// in older checkpoints.
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub anchor: f32,
}

fn is_all(p: &ParamScope) -> bool {
    *p == ParamScope::All
}

fn is_zero_f32(x: &f32) -> bool {
    *x == 0.0
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self {
            // τ = 0.2 (MoCo v2's), not `infonce`'s bare default of 0.1:
            // what `edgeclr adapt` has always run.
            loss: Objective::Infonce { tau: 0.2 },
            epochs: 10,
            batch_size: 64,
            lr: 1e-3,
            optimizer: OptimizerKind::AdamW,
            weight_decay: 1e-4,
            warmup_epochs: 1,
            bottleneck: 128,
            head_hidden: 512,
            head_out: 128,
            bank_size: 4096,
            momentum: 0.99,
            seed: 0,
            train_tail: None,
            train_params: ParamScope::All,
            classes: 0,
            anchor: 0.0,
        }
    }
}

impl AdaptConfig {
    /// Width of what the loss (and the bank) sees for `dim`-wide adapted
    /// embeddings: the head's output, or the embedding without a head.
    pub fn loss_dim(&self, dim: usize) -> usize {
        if self.head_out == 0 {
            dim
        } else {
            self.head_out
        }
    }

    /// Checks every setting's domain and that they fit together.
    pub fn validate(&self) -> Result<(), TrainError> {
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
        if !(0.0..=1.0).contains(&self.anchor) {
            return bad("anchor must be in [0, 1] (0: off; 1: never leave the source weights)");
        }
        if self.bank_size > 0 && self.bank_size < self.batch_size {
            return bad("bank size must be 0 or at least the batch size");
        }
        if self.bottleneck == 0 || (self.head_out > 0 && self.head_hidden == 0) {
            return bad("layer widths must be positive");
        }
        self.loss.validate()?;
        let objective = self.loss;
        if self.head_out == 0 && objective.needs_predictor() {
            return bad("byol needs a projection head (head_out > 0)");
        }
        if objective.needs_classes() && self.classes < 2 {
            return bad("ce needs the number of classes (at least 2) of the labels it trains on");
        }
        if !objective.needs_classes() && self.classes != 0 {
            return bad("classes is only used by --loss ce");
        }
        Ok(())
    }
}

/// Serde as the value's text: `Display` out, `FromStr` in.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// [`as_text`] for an optional value (`null` or absent: `None`).
mod opt_as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(de::Error::custom))
            .transpose()
    }
}
