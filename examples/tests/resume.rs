//! `camera-adapt --resume` follows the library's one resume policy
//! (`edgeclr::adapt::resume`), as `edgeclr adapt --resume`
//! (`runtime/cli/tests/resume.rs`) and the C ABI's `edgeclr_trainer_resume`
//! (`runtime/capi/src/tests.rs`) do: it continues only with the settings the
//! checkpoint was trained with and names each one that differs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn camera_adapt(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_camera-adapt"))
        .current_dir(repo())
        .args([
            "--source",
            "folder:data/fashion-folder",
            "--display",
            "none",
        ])
        .args(["--batch-size", "4", "--bank-size", "8", "--frames", "4"])
        .args(["--threads", "1"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running camera-adapt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn resume_refuses_other_settings_and_continues_with_the_same() {
    let run = std::env::temp_dir().join(format!("edgeclr-camera-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    let first = camera_adapt(&run, &["--lr", "0.001", "--min-steps", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(run.join("checkpoint.safetensors").exists());

    let other = camera_adapt(&run, &["--resume", "--lr", "0.01", "--anchor", "0.05"]);
    assert!(!other.status.success());
    let err = stderr(&other);
    assert!(err.contains("lr is 0.001 there, 0.01 here"), "{err}");
    assert!(
        err.contains("anchor is (default) there, 0.05 here"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let same = camera_adapt(&run, &["--resume", "--lr", "0.001", "--min-steps", "4"]);
    assert!(same.status.success(), "{}", stderr(&same));
    assert!(stderr(&same).contains("resumed from"), "{}", stderr(&same));

    // --resume with no checkpoint: an error naming the file, not a fresh run.
    let missing = camera_adapt(&run.join("elsewhere"), &["--resume"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("checkpoint.safetensors"),
        "{}",
        stderr(&missing)
    );
    let _ = std::fs::remove_dir_all(&run);
}
