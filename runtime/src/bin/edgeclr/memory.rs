//! `--memory-budget` for `edgeclr adapt`, and the peak-RSS line every
//! long-running verb prints at its end.

use anyhow::Result;
use edgeclr::adapt::budget::{self, Calibration, PlanLimits, RunShape, MIB};

/// The settings the budget allows, printed; `None` without a budget.
pub fn plan(shape: RunShape, budget_mb: Option<u64>) -> Result<Option<RunShape>> {
    let Some(mb) = budget_mb else {
        return Ok(None);
    };
    let limits = PlanLimits {
        // TODO(tail): allow f16 once the f16 view cache lands in adapt::trainer.
        allow_f16: false,
        ..PlanLimits::default()
    };
    let plan = budget::plan(&shape, mb * MIB, &limits, &Calibration::default())?;
    println!("{plan}");
    Ok(Some(plan.shape))
}

/// Prints the process's peak resident memory (Linux; silent elsewhere).
pub fn print_peak_rss() {
    if let Some(bytes) = edgeclr::rss::peak_rss_bytes() {
        println!("peak RSS: {:.0} MiB", bytes as f64 / MIB as f64);
    }
}
