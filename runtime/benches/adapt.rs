//! Adaptation benchmark: steps/s and peak RSS of one training step, edgeclr
//! against the same math in PyTorch on CPU, in one run.
//!
//! `cargo bench --features ort --bench adapt [-- --steps N]` prints a table and
//! writes target/bench-adapt.json. The head-only step is batch 64 of 1280-d
//! frozen embeddings → residual adapter (bottleneck 128) → head 512 → 128,
//! InfoNCE (τ = 0.2) against a MoCo bank of 4096 keys, AdamW, EMA update and
//! enqueue — `Trainer::train_step`, as `edgeclr adapt` runs it. The peer is
//! runtime/benches/peer_torch_adapt.py (skipped when `import torch` fails).
//! Each side's peak RSS is measured in its own process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use edgeclr::adapt::trainer::{AdaptConfig, Trainer};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 64;
const DIM: usize = 1280;
const BANK: usize = 4096;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// A trainer with a full bank and two batches of random views.
fn head_only() -> (Trainer, Array2<f32>, Array2<f32>) {
    let config = AdaptConfig {
        loss: "infonce:tau=0.2".into(),
        batch_size: BATCH,
        bank_size: BANK,
        ..AdaptConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x1 = Array2::from_shape_fn((BATCH, DIM), |_| rng.random::<f32>());
    let x2 = &x1 + &Array2::from_shape_fn((BATCH, DIM), |_| 0.1 * rng.random::<f32>());
    let fill = Array2::from_shape_fn((BANK, DIM), |_| rng.random::<f32>());
    let mut trainer = Trainer::new(config, DIM, 1000).expect("bench config");
    trainer.prefill_bank(fill.view()).expect("prefill");
    (trainer, x1, x2)
}

/// Steps per second over `steps` steps after `warmup`.
fn time_head_only(steps: usize, warmup: usize) -> f64 {
    let (mut trainer, x1, x2) = head_only();
    for _ in 0..warmup {
        trainer.train_step(x1.view(), x2.view()).expect("step");
    }
    let t = Instant::now();
    for _ in 0..steps {
        trainer.train_step(x1.view(), x2.view()).expect("step");
    }
    steps as f64 / t.elapsed().as_secs_f64()
}

/// This binary again, running only `steps` steps, for its own peak RSS.
fn own_rss(steps: usize) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args(["--rss-only", &steps.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RSS_MB ").and_then(|v| v.parse().ok()))
}

/// The PyTorch peer's JSON line, `None` if torch is unavailable.
fn torch_peer(steps: usize, threads: usize) -> Option<serde_json::Value> {
    let ok = Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return None;
    }
    let out = Command::new("python3")
        .arg(repo("runtime/benches/peer_torch_adapt.py"))
        .args([
            "--steps",
            &steps.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn main() {
    if let Some(steps) = arg("--rss-only") {
        let steps = steps.parse().unwrap_or(20);
        time_head_only(steps, 0);
        println!("RSS_MB {}", edgeclr::rss::peak_rss_mib());
        return;
    }
    let steps: usize = arg("--steps").and_then(|s| s.parse().ok()).unwrap_or(50);
    let ours = time_head_only(steps, 5);
    let ours_rss = own_rss(steps);
    let peers: Vec<(usize, Option<serde_json::Value>)> =
        [1, 2].iter().map(|&t| (t, torch_peer(steps, t))).collect();

    println!(
        "edgeclr adapt benchmark: head-only step, batch {BATCH}, {DIM}-d → adapter 128 → head 512 → 128, \
         InfoNCE + MoCo bank {BANK}, AdamW ({steps} steps)"
    );
    println!(
        "{:<28} {:>8} {:>10} {:>14} {:>10}",
        "runtime", "threads", "steps/s", "peak RSS MB", "vs torch"
    );
    let torch1 = peers[0]
        .1
        .as_ref()
        .and_then(|p| p["steps_per_sec"].as_f64());
    let fmt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
    println!(
        "{:<28} {:>8} {:>10.1} {:>14} {:>10}",
        "edgeclr (head-only)",
        1,
        ours,
        fmt(ours_rss, 0),
        fmt(torch1.map(|t| ours / t), 2)
    );
    for (threads, peer) in &peers {
        match peer {
            Some(p) => println!(
                "{:<28} {:>8} {:>10.1} {:>14} {:>10}",
                "pytorch (head-only)",
                threads,
                p["steps_per_sec"].as_f64().unwrap_or(f64::NAN),
                fmt(p["peak_rss_mb"].as_f64(), 0),
                ""
            ),
            None => println!(
                "{:<28} {:>8} {:>10}",
                "pytorch (head-only)", threads, "unavailable (python3 -c 'import torch' failed)"
            ),
        }
    }
    // TODO(tail): a "tail + head" row (last 1×1 conv 320→1280 + ReLU6 + pool
    // trainable) once the trainable tail layers land in adapt::tail, with the
    // matching step in peer_torch_adapt.py (--tail).
    println!(
        "{:<28} {:>8} {:>10}",
        "edgeclr (tail + head)", "-", "not measured yet (tail layers not on main)"
    );

    let json = serde_json::json!({
        "batch": BATCH, "dim": DIM, "bank": BANK, "steps": steps,
        "edgeclr_head_only": {"threads": 1, "steps_per_sec": ours, "peak_rss_mb": ours_rss},
        "torch_head_only": peers.iter().map(|(t, p)| serde_json::json!({"threads": t, "result": p})).collect::<Vec<_>>(),
        "ratio_vs_torch_1_thread": torch1.map(|t| ours / t),
    });
    let path = repo("target/bench-adapt.json");
    let written = std::fs::create_dir_all(repo("target")).and_then(|()| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
    });
    if let Err(e) = written {
        eprintln!("writing {}: {e}", path.display());
    } else {
        println!("wrote {}", path.display());
    }
}
