//! `edgeclr adapt --resume` follows the library's one resume policy
//! (`edgeclr::adapt::resume`): it continues a run only with the settings the
//! checkpoint was trained with, and a difference is refused naming each
//! setting. The C ABI (`runtime/capi/src/tests.rs`) and `camera-adapt`
//! (`examples/tests/`) have the same test.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::repo;

fn adapt(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeclr"))
        .current_dir(repo(""))
        .args(["adapt", "--images", "data/fashion-mnist", "--limit", "64"])
        .args(["--batch-size", "32", "--bank-size", "64", "--threads", "1"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running edgeclr")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn resume_refuses_other_settings_and_continues_with_the_same() {
    let run = std::env::temp_dir().join(format!("edgeclr-cli-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let first = adapt(&run, &["--epochs", "1", "--lr", "0.001"]);
    assert!(first.status.success(), "{}", stderr(&first));

    // --resume with another learning rate and another objective: refused,
    // both named with the checkpoint's value and this run's.
    let other = adapt(
        &run,
        &[
            "--resume", "--epochs", "1", "--lr", "0.01", "--loss", "spectral",
        ],
    );
    assert!(!other.status.success());
    let err = stderr(&other);
    assert!(err.contains("lr is 0.001 there, 0.01 here"), "{err}");
    assert!(
        err.contains("loss is \"infonce:tau=0.2\" there, \"spectral:mu=1\" here"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // One more epoch is refused too: the learning-rate schedule spans
    // `epochs`, so a longer run is another run. The same flags continue it.
    let longer = adapt(&run, &["--resume", "--epochs", "2", "--lr", "0.001"]);
    assert!(!longer.status.success());
    assert!(
        stderr(&longer).contains("epochs is 1 there, 2 here"),
        "{}",
        stderr(&longer)
    );
    let same = adapt(&run, &["--resume", "--epochs", "1", "--lr", "0.001"]);
    assert!(same.status.success(), "{}", stderr(&same));
    let out = String::from_utf8_lossy(&same.stdout);
    assert!(out.contains("resumed from"), "{out}");

    // --resume where no run is: an error naming the file, not a fresh run.
    let empty = run.join("elsewhere");
    let missing = adapt(&empty, &["--resume", "--epochs", "1"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("checkpoint.safetensors"),
        "{}",
        stderr(&missing)
    );
    let _ = std::fs::remove_dir_all(&run);
}
