//! The collapse alarm's flags; the alarm, the rollback and the plots are
//! the library's session (`edgeclr::adapt::session`).

use edgeclr::adapt::collapse::CollapseRule;

/// Flags of the collapse alarm.
#[derive(Debug, Clone, clap::Args)]
pub struct CollapseArgs {
    /// On a collapse alarm, restore RUN_DIR/checkpoint.good.safetensors (the
    /// last healthy epoch), export that state and stop (instead of only warning).
    #[arg(long)]
    pub rollback: bool,
    /// Alarm when the effective rank falls below this fraction of its value
    /// before adaptation.
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub collapse_rank: f64,
    /// Alarm when uniformity rises above this fraction of its value before
    /// adaptation (it is ≤ 0; 0 means every embedding in one point).
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub collapse_uniformity: f64,
}

impl CollapseArgs {
    /// The library's alarm thresholds.
    pub fn rule(&self) -> CollapseRule {
        CollapseRule {
            rank_fraction: self.collapse_rank,
            uniformity_fraction: self.collapse_uniformity,
        }
    }
}
