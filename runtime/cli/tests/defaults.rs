//! The shipped defaults are found from any working directory: without
//! `--model` (and without `$EDGECLR_MODEL`) the CLI falls back to the source
//! tree it was built from. The fallback once pointed one level too high
//! (`runtime/models/…`) after the CLI moved into its own crate, and only runs
//! from the repository root, where the relative path wins, were tested.

use std::process::{Command, Output};

fn run_elsewhere(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeclr"))
        .current_dir(std::env::temp_dir())
        .env_remove("EDGECLR_MODEL")
        .args(args)
        .output()
        .expect("running edgeclr")
}

#[test]
fn info_finds_the_default_model_outside_the_repository() {
    let out = run_elsewhere(&["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "edgeclr info from {}: {}",
        std::env::temp_dir().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mobilenet_v2"), "{stdout}");
}

#[test]
fn models_lists_the_shipped_models_outside_the_repository() {
    let out = run_elsewhere(&["models"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "edgeclr models: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mobilenet_v2"), "{stdout}");
}
