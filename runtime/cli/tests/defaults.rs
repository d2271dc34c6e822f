//! The shipped defaults are found from any working directory: without
//! `--model` (and without `$EDGECLR_MODEL`) the CLI falls back to the source
//! tree it was built from. The fallback once pointed one level too high
//! (`runtime/models/…`) after the CLI moved into its own crate, and only runs
//! from the repository root, where the relative path wins, were tested.

use std::process::Command;

/// Runs `edgeclr ARGS` from the temp directory and returns its stdout,
/// failing the test with its stderr if it did not succeed.
fn run_elsewhere(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeclr"))
        .current_dir(std::env::temp_dir())
        .env_remove("EDGECLR_MODEL")
        .args(args)
        .output()
        .expect("running edgeclr");
    assert!(
        out.status.success(),
        "edgeclr {} from {}: {}",
        args.join(" "),
        std::env::temp_dir().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn info_finds_the_default_model_outside_the_repository() {
    let stdout = run_elsewhere(&["info"]);
    assert!(stdout.contains("mobilenet_v2"), "{stdout}");
}

#[test]
fn models_lists_the_shipped_models_outside_the_repository() {
    let stdout = run_elsewhere(&["models"]);
    assert!(stdout.contains("mobilenet_v2"), "{stdout}");
}
