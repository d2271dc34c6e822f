//! `--memory-budget` for `edgeclr adapt`, and the peak-RSS line every
//! long-running verb prints at its end.

use anyhow::Result;
use edgeclr::adapt::budget::{self, Calibration, PlanLimits, RunShape, MIB};

/// The settings the budget allows, printed; `None` without a budget.
/// `allow_f16` is false when the user fixed the cache precision.
pub fn plan(shape: RunShape, budget_mb: Option<u64>, allow_f16: bool) -> Result<Option<RunShape>> {
    let Some(mb) = budget_mb else {
        return Ok(None);
    };
    let limits = PlanLimits {
        allow_f16,
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
