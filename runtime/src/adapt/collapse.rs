//! The collapse alarm: a pure rule over each epoch's label-free diagnostics
//! that says when an adaptation run has stopped learning a representation.
//!
//! Contrastive fine-tuning fails in two recognisable ways (Jing et al. 2022,
//! "Understanding Dimensional Collapse in Contrastive Self-supervised
//! Learning"; Wang & Isola 2020): the embeddings squeeze into a few
//! directions (*dimensional collapse*: the effective rank drops) or onto one
//! point (*complete collapse*: uniformity rises towards its maximum 0, since
//! `log mean exp(−t‖xᵢ−xⱼ‖²)` is 0 exactly when all points coincide). A loss
//! that is NaN/±Inf is the third, blunt failure. The rule, relative to the
//! diagnostics of the embeddings before adaptation (the adapter starts at
//! identity, so those are the frozen encoder's):
//!
//! - **rank**: effective rank < `rank_fraction` × its starting value;
//! - **uniformity**: uniformity > `uniformity_fraction` × its starting value,
//!   i.e. its distance to 0 shrank below that fraction (uniformity is ≤ 0;
//!   the rule is skipped when the start is already 0);
//! - **loss**: the epoch's mean loss is not finite (or any diagnostic is not).
//!
//! Nothing here does I/O: the CLI feeds it and decides what to do (warn, or
//! with `--rollback` restore the last healthy checkpoint and stop).

use std::fmt;

/// The thresholds of the alarm, as fractions of the starting values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CollapseRule {
    /// Alarm when effective rank < this × starting rank (default 0.5).
    pub rank_fraction: f64,
    /// Alarm when uniformity > this × starting uniformity (default 0.5: half
    /// of the way from the start to complete collapse at 0).
    pub uniformity_fraction: f64,
}

impl Default for CollapseRule {
    fn default() -> Self {
        Self {
            rank_fraction: 0.5,
            uniformity_fraction: 0.5,
        }
    }
}

/// The diagnostics of one epoch that the rule reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochHealth {
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// Uniformity (t = 2) of the adapted embeddings, ≤ 0.
    pub uniformity: f64,
    /// RankMe effective rank of the adapted embeddings.
    pub effective_rank: f64,
}

/// Why an epoch raised the alarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Symptom {
    NonFiniteLoss(f64),
    NonFiniteDiagnostic,
    RankDrop {
        rank: f64,
        start: f64,
        fraction: f64,
    },
    UniformityDrift {
        uniformity: f64,
        start: f64,
        fraction: f64,
    },
}

impl fmt::Display for Symptom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Symptom::NonFiniteLoss(v) => write!(f, "the loss is {v}"),
            Symptom::NonFiniteDiagnostic => {
                write!(f, "uniformity or effective rank is not finite")
            }
            Symptom::RankDrop {
                rank,
                start,
                fraction,
            } => write!(
                f,
                "effective rank {rank:.1} fell below {fraction} × its starting {start:.1}"
            ),
            Symptom::UniformityDrift {
                uniformity,
                start,
                fraction,
            } => write!(
                f,
                "uniformity {uniformity:.3} rose above {fraction} × its starting {start:.3} \
                 (0 = every embedding in one point)"
            ),
        }
    }
}

/// Errors of a rule that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CollapseError {
    #[error("collapse fraction {name} must be in (0, 1], got {value}")]
    BadFraction { name: &'static str, value: f64 },
    #[error("the starting diagnostics must be finite (uniformity {uniformity}, rank {rank})")]
    BadStart { uniformity: f64, rank: f64 },
}

/// The rule bound to a run's starting diagnostics.
#[derive(Debug, Clone)]
pub struct CollapseMonitor {
    rule: CollapseRule,
    start_uniformity: f64,
    start_rank: f64,
}

impl CollapseMonitor {
    /// A monitor comparing every epoch with the embeddings before adaptation.
    pub fn new(
        rule: CollapseRule,
        start_uniformity: f64,
        start_rank: f64,
    ) -> Result<Self, CollapseError> {
        for (name, value) in [
            ("rank_fraction", rule.rank_fraction),
            ("uniformity_fraction", rule.uniformity_fraction),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(CollapseError::BadFraction { name, value });
            }
        }
        if !(start_uniformity.is_finite() && start_rank.is_finite()) {
            return Err(CollapseError::BadStart {
                uniformity: start_uniformity,
                rank: start_rank,
            });
        }
        Ok(Self {
            rule,
            start_uniformity,
            start_rank,
        })
    }

    /// Every symptom `epoch` shows; empty when the epoch is healthy.
    pub fn check(&self, epoch: &EpochHealth) -> Vec<Symptom> {
        let mut symptoms = Vec::new();
        if !epoch.loss.is_finite() {
            symptoms.push(Symptom::NonFiniteLoss(epoch.loss));
        }
        if !(epoch.uniformity.is_finite() && epoch.effective_rank.is_finite()) {
            symptoms.push(Symptom::NonFiniteDiagnostic);
            return symptoms;
        }
        let fraction = self.rule.rank_fraction;
        if epoch.effective_rank < fraction * self.start_rank {
            symptoms.push(Symptom::RankDrop {
                rank: epoch.effective_rank,
                start: self.start_rank,
                fraction,
            });
        }
        let fraction = self.rule.uniformity_fraction;
        if self.start_uniformity < 0.0 && epoch.uniformity > fraction * self.start_uniformity {
            symptoms.push(Symptom::UniformityDrift {
                uniformity: epoch.uniformity,
                start: self.start_uniformity,
                fraction,
            });
        }
        symptoms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor() -> CollapseMonitor {
        CollapseMonitor::new(CollapseRule::default(), -1.2, 240.0).unwrap()
    }

    fn health(loss: f64, uniformity: f64, effective_rank: f64) -> EpochHealth {
        EpochHealth {
            loss,
            uniformity,
            effective_rank,
        }
    }

    #[test]
    fn healthy_epochs_raise_nothing() {
        let m = monitor();
        // Better than the start, and slightly worse but within the fractions.
        assert!(m.check(&health(3.0, -2.5, 300.0)).is_empty());
        assert!(m.check(&health(3.0, -0.61, 121.0)).is_empty());
    }

    #[test]
    fn rank_below_the_fraction_alarms() {
        let s = monitor().check(&health(3.0, -1.2, 119.0));
        assert_eq!(
            s,
            vec![Symptom::RankDrop {
                rank: 119.0,
                start: 240.0,
                fraction: 0.5
            }]
        );
        assert!(s[0].to_string().contains("119.0"));
    }

    #[test]
    fn uniformity_towards_zero_alarms() {
        let s = monitor().check(&health(3.0, -0.59, 240.0));
        assert!(matches!(s.as_slice(), [Symptom::UniformityDrift { .. }]));
        // Complete collapse shows both symptoms.
        assert_eq!(monitor().check(&health(3.0, 0.0, 1.0)).len(), 2);
    }

    #[test]
    fn non_finite_values_alarm() {
        let m = monitor();
        assert!(matches!(
            m.check(&health(f64::NAN, -1.2, 240.0)).as_slice(),
            [Symptom::NonFiniteLoss(v)] if v.is_nan()
        ));
        assert!(matches!(
            m.check(&health(f64::INFINITY, -1.2, 240.0)).as_slice(),
            [Symptom::NonFiniteLoss(_)]
        ));
        assert!(matches!(
            m.check(&health(1.0, f64::NAN, 240.0)).as_slice(),
            [Symptom::NonFiniteDiagnostic]
        ));
    }

    #[test]
    fn a_start_at_zero_skips_the_uniformity_rule() {
        let m = CollapseMonitor::new(CollapseRule::default(), 0.0, 10.0).unwrap();
        assert!(m.check(&health(1.0, 0.0, 10.0)).is_empty());
    }

    #[test]
    fn fractions_and_starts_are_validated() {
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let rule = CollapseRule {
                rank_fraction: bad,
                ..CollapseRule::default()
            };
            assert!(matches!(
                CollapseMonitor::new(rule, -1.0, 10.0),
                Err(CollapseError::BadFraction { .. })
            ));
        }
        assert!(matches!(
            CollapseMonitor::new(CollapseRule::default(), f64::NAN, 10.0),
            Err(CollapseError::BadStart { .. })
        ));
    }
}
