//! `edgeclr adapt` end to end for the run-level diagnostics: the collapse
//! alarm with `--rollback`, the PNG plots, and `--memory-budget` with the
//! peak RSS it promises. Small runs (64 images) so each takes seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::repo;
use edgeclr::adapt::checkpoint::Checkpoint;

fn scratch(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("edgeclr-adapt-diag-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn adapt(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeclr"))
        .current_dir(repo(""))
        .args(["adapt", "--images", "data/fashion-mnist", "--limit", "64"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("running edgeclr")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Pure alignment (`lambda=0`: no uniformity term) with a large step: every
/// embedding is pulled into one point by epoch 2 (measured: effective rank
/// 39.7 after epoch 1, 1.2 after epoch 2, from 44.4 frozen).
const COLLAPSING: &[&str] = &[
    "--loss",
    "align-uniform:lambda=0",
    "--lr",
    "0.05",
    "--batch-size",
    "32",
    "--bank-size",
    "0",
    "--epochs",
    "4",
];

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    image::image_dimensions(path).expect("readable PNG")
}

#[test]
fn a_collapse_is_rolled_back_to_the_last_healthy_epoch() {
    let out = scratch("rollback");
    let mut args = COLLAPSING.to_vec();
    args.push("--rollback");
    let o = adapt(&out, &args);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("collapse alarm at epoch 2"), "{stderr}");
    assert!(stdout.contains("rolled back"), "{stdout}");

    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("collapse.json")).unwrap()).unwrap();
    assert_eq!(record["epoch"], 2);
    assert_eq!(record["rolled_back_to_epoch"], 1);
    let ckpt = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let good = Checkpoint::load(&out.join("checkpoint.good.safetensors")).unwrap();
    assert_eq!((ckpt.epoch, good.epoch), (1, 1));
    assert_eq!(ckpt.step, good.step);
    let a = ckpt.tensors.get("adapter.up.weight").unwrap();
    let b = good.tensors.get("adapter.up.weight").unwrap();
    assert_eq!(a, b);
    // The log holds only healthy epochs; the run stopped at the alarm.
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(out.join("model").is_dir(), "the healthy state is exported");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn without_rollback_the_alarm_warns_and_keeps_the_good_checkpoint() {
    let out = scratch("warn");
    let o = adapt(&out, COLLAPSING);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("effective rank"), "{stderr}");
    assert!(stderr.contains("uniformity"), "{stderr}");
    assert!(!out.join("collapse.json").exists());
    let ckpt = Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let good = Checkpoint::load(&out.join("checkpoint.good.safetensors")).unwrap();
    assert_eq!((ckpt.epoch, good.epoch), (4, 1));
    // Plots of the whole run, of the promised size.
    for name in ["curves.png", "spectrum.png", "pca.png"] {
        assert_eq!(png_size(&out.join(name)), edgeclr::plot::SIZE, "{name}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn peak_rss_mib(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS: "))
        .and_then(|v| v.trim_end_matches(" MiB").parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS line in {stdout}"))
}

#[cfg(target_os = "linux")]
#[test]
fn a_budgeted_run_stays_under_its_budget() {
    let out = scratch("budget");
    let budget = 150.0;
    let o = adapt(
        &out,
        &[
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--memory-budget",
            "150",
        ],
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("memory plan:"), "{stdout}");
    let peak = peak_rss_mib(&stdout);
    assert!(
        peak > 30.0 && peak < budget,
        "peak RSS {peak} MiB, budget {budget}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_budget_too_small_is_refused_with_what_the_run_needs() {
    let out = scratch("refuse");
    let o = adapt(&out, &["--memory-budget", "40"]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("needs at least"), "{stderr}");
    assert!(!out.join("checkpoint.safetensors").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_tight_budget_shrinks_the_bank() {
    let out = scratch("shrink");
    // 64 images: the default bank (4096 keys) and its logits cost ~9 MiB; the
    // rest ~125 MiB.
    let o = adapt(&out, &["--epochs", "1", "--memory-budget", "126"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let plan = stdout
        .lines()
        .find(|l| l.starts_with("memory plan:"))
        .unwrap_or_default();
    assert!(plan.contains("bank 4096 →"), "{plan}");
    let _ = std::fs::remove_dir_all(&out);
}
