//! Adaptation benchmark: steps/s and peak RSS of one training step, edgeclr
//! against the same math in PyTorch on CPU, in one run.
//!
//! `cargo bench --features ort --bench adapt [-- --steps N]` prints a table and
//! writes target/bench-adapt.json. The head-only step is batch 64 of 1280-d
//! frozen embeddings → residual adapter (bottleneck 128) → head 512 → 128,
//! InfoNCE (τ = 0.2) against a MoCo bank of 4096 keys, AdamW, EMA update and
//! enqueue — `Trainer::train_step`, as `edgeclr adapt` runs it. The peer is
//! runtime/benches/peer_torch_adapt.py (skipped when `import torch` fails).
//!
//! The tail + head step also trains MobileNetV2's last layers
//! (`edgeclr adapt --train-tail auto`): its inputs are the flattened cut
//! tensor (320×7×7 = 15680 values per view), which goes through the 1×1 conv
//! 320→1280 + bias, ReLU6 and global average pooling (`adapt::tail`, with the
//! model's own weights) before the same adapter, head, bank and optimiser;
//! its peer is the same script with `--tail`.
//!
//! Each side's peak RSS is measured in its own process.
//!
//! The engine rows time forward + backward of a trained scope alone (no
//! adapter, head or loss: `loss = Σ y·g` for a fixed `g`) on batches of 64
//! cached cut tensors: MobileNetV2's last 1×1 conv (`auto`), its last 4
//! blocks with all parameters, and the last 4 blocks with biases only
//! (TinyTL-style), at 112 and 224 px input, on 1 and 2 threads. The peer,
//! runtime/benches/peer_torch_scope.py, rebuilds the same subgraph node by
//! node from the ONNX file in PyTorch and runs the same step.
//!
//! `-- --whole-model [--rounds N]` measures the engine's forward alone over
//! the whole MobileNetV2 (input → embedding) against tract and ONNX Runtime
//! on the same batches: whether the engine could serve as a pure-Rust
//! inference backend (it would have to beat tract).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use edgeclr::adapt::config::AdaptConfig;
use edgeclr::adapt::tail::{self, load_tail, ParamScope, TailChoice, TailSpec};
use edgeclr::adapt::trainer::Trainer;
use edgeclr::adapt::Params;
use edgeclr::Manifest;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 64;
const DIM: usize = 1280;
const BANK: usize = 4096;
/// Pixels of MobileNetV2's cut tensor (7×7 at 224×224 input).
const CUT_PIXELS: usize = 49;

/// Which step is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Adapter + head on frozen 1280-d embeddings.
    HeadOnly,
    /// MobileNetV2's 1×1 conv + ReLU6 + pool, then adapter + head.
    TailHead,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::HeadOnly => "head-only",
            Mode::TailHead => "tail + head",
        }
    }

    /// The flag that selects this mode in the RSS child and the peer script.
    fn flag(self) -> Option<&'static str> {
        match self {
            Mode::HeadOnly => None,
            Mode::TailHead => Some("--tail"),
        }
    }
}

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
        loss: "infonce:tau=0.2".parse().expect("objective spec"),
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

/// A trainer with MobileNetV2's tail layers, a full bank and two batches of
/// random cut tensors. The bank is filled from the batch itself, 64 rows at
/// a time, so no 4096 × 15680 fill matrix inflates the peak RSS.
fn tail_head() -> (Trainer, Array2<f32>, Array2<f32>) {
    let manifest = Manifest::load(&repo("models/mobilenet_v2")).expect("models/mobilenet_v2");
    let tail =
        load_tail(&manifest, &TailChoice::Auto, ParamScope::All).expect("MobileNetV2 tail layers");
    let width = tail.0.channels * CUT_PIXELS;
    let config = AdaptConfig {
        loss: "infonce:tau=0.2".parse().expect("objective spec"),
        batch_size: BATCH,
        bank_size: BANK,
        train_tail: Some(edgeclr::adapt::tail::TailChoice::Auto),
        ..AdaptConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x1 = Array2::from_shape_fn((BATCH, width), |_| rng.random_range(-1.0f32..3.0));
    let x2 = &x1 + &Array2::from_shape_fn((BATCH, width), |_| 0.1 * rng.random::<f32>());
    let mut trainer = Trainer::with_tail(config, Some(tail), 0, 1000).expect("bench config");
    for _ in 0..BANK / BATCH {
        trainer.prefill_bank(x2.view()).expect("prefill");
    }
    (trainer, x1, x2)
}

/// Steps per second over `steps` steps after `warmup`.
fn time_step(mode: Mode, steps: usize, warmup: usize) -> f64 {
    let (mut trainer, x1, x2) = match mode {
        Mode::HeadOnly => head_only(),
        Mode::TailHead => tail_head(),
    };
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
fn own_rss(mode: Mode, steps: usize) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args(["--rss-only", &steps.to_string()])
        .args(mode.flag())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RSS_MB ").and_then(|v| v.parse().ok()))
}

/// Whether `python3` can import torch (the peers need it).
fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The PyTorch peer's JSON line, `None` if torch is unavailable.
fn torch_peer(mode: Mode, steps: usize, threads: usize) -> Option<serde_json::Value> {
    if !torch_available() {
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
        .args(mode.flag())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// One step's measurements: ours (1 thread) and the peer's per thread count.
struct Row {
    mode: Mode,
    ours: f64,
    ours_rss: Option<f64>,
    peers: Vec<(usize, Option<serde_json::Value>)>,
}

impl Row {
    fn measure(mode: Mode, steps: usize) -> Self {
        let ours = time_step(mode, steps, 5);
        let ours_rss = own_rss(mode, steps);
        let peers = [1, 2]
            .iter()
            .map(|&t| (t, torch_peer(mode, steps, t)))
            .collect();
        Self {
            mode,
            ours,
            ours_rss,
            peers,
        }
    }

    /// PyTorch's single-thread steps/s.
    fn torch1(&self) -> Option<f64> {
        self.peers[0]
            .1
            .as_ref()
            .and_then(|p| p["steps_per_sec"].as_f64())
    }

    fn print(&self) {
        let fmt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        let label = self.mode.label();
        println!(
            "{:<28} {:>8} {:>10.1} {:>14} {:>10}",
            format!("edgeclr ({label})"),
            1,
            self.ours,
            fmt(self.ours_rss, 0),
            fmt(self.torch1().map(|t| self.ours / t), 2)
        );
        for (threads, peer) in &self.peers {
            match peer {
                Some(p) => println!(
                    "{:<28} {:>8} {:>10.1} {:>14} {:>10}",
                    format!("pytorch ({label})"),
                    threads,
                    p["steps_per_sec"].as_f64().unwrap_or(f64::NAN),
                    fmt(p["peak_rss_mb"].as_f64(), 0),
                    ""
                ),
                None => println!(
                    "{:<28} {:>8} {:>10}",
                    format!("pytorch ({label})"),
                    threads,
                    "unavailable (python3 -c 'import torch' failed)"
                ),
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "edgeclr": {"threads": 1, "steps_per_sec": self.ours, "peak_rss_mb": self.ours_rss},
            "torch": self.peers.iter().map(|(t, p)| serde_json::json!({"threads": t, "result": p})).collect::<Vec<_>>(),
            "ratio_vs_torch_1_thread": self.torch1().map(|t| self.ours / t),
        })
    }
}

/// One engine row: which scope, input size and parameters.
#[derive(Debug, Clone)]
struct ScopeCase {
    choice: TailChoice,
    px: usize,
    params: ParamScope,
}

impl ScopeCase {
    fn all() -> Vec<ScopeCase> {
        let mut cases = Vec::new();
        for px in [112, 224] {
            for (choice, params) in [
                (TailChoice::Auto, ParamScope::All),
                (TailChoice::Blocks(4), ParamScope::All),
                (TailChoice::Blocks(4), ParamScope::Biases),
            ] {
                cases.push(ScopeCase { choice, px, params });
            }
        }
        cases
    }

    fn label(&self) -> String {
        let scope = match &self.choice {
            TailChoice::Auto => "last 1x1 conv".to_string(),
            TailChoice::Blocks(k) => format!("last {k} blocks"),
            TailChoice::Node(n) => n.clone(),
        };
        format!("{scope}, {}, {} px", self.params, self.px)
    }

    fn spec(&self) -> (TailSpec, Params) {
        let manifest = Manifest::load(&repo("models/mobilenet_v2")).expect("models/mobilenet_v2");
        let proto = edgeclr::onnx::parse_proto(
            &manifest.onnx,
            &std::fs::read(&manifest.onnx).expect("the shipped model"),
        )
        .expect("MobileNetV2");
        TailSpec::from_model(
            &proto,
            &manifest.outputs.embedding,
            &self.choice,
            &[3, self.px, self.px],
            self.params,
        )
        .expect("MobileNetV2 scope")
    }
}

/// Views/s of forward + backward of `case` on `threads` threads.
fn time_scope(case: &ScopeCase, threads: usize, steps: usize) -> (f64, TailSpec) {
    let (mut spec, init) = case.spec();
    spec.threads = threads;
    spec.resolve(&init).expect("resolve the scope's parameters");
    let width: usize = spec.cut_shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let x = Array2::from_shape_fn((BATCH, width), |_| rng.random_range(-1.0f32..1.0));
    let g = Array2::from_shape_fn((BATCH, spec.out_dim), |_| rng.random_range(-1.0f32..1.0));
    let step = || {
        let (_, cache) = tail::forward(&spec, &init, x.view()).expect("forward");
        let mut grads = init.empty_like();
        tail::backward(&spec, &init, &cache, g.view(), &mut grads).expect("backward");
    };
    step();
    let t = Instant::now();
    for _ in 0..steps {
        step();
    }
    ((BATCH * steps) as f64 / t.elapsed().as_secs_f64(), spec)
}

/// The PyTorch peer of one engine row.
fn torch_scope_peer(
    case: &ScopeCase,
    spec: &TailSpec,
    threads: usize,
    steps: usize,
) -> Option<serde_json::Value> {
    let shape: Vec<String> = spec.cut_shape.iter().map(ToString::to_string).collect();
    let out = Command::new("python3")
        .arg(repo("runtime/benches/peer_torch_scope.py"))
        .args([
            "--onnx",
            &repo("models/mobilenet_v2/mobilenet_v2.onnx")
                .display()
                .to_string(),
        ])
        .args(["--cut", &spec.cut, "--shape", &shape.join(",")])
        .args([
            "--threads",
            &threads.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .args(["--params", &case.params.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// This binary again, running only one engine row, for its own peak RSS.
fn scope_rss(index: usize, threads: usize, steps: usize) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args([
            "--scope-rss",
            &index.to_string(),
            &threads.to_string(),
            &steps.to_string(),
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RSS_MB ").and_then(|v| v.parse().ok()))
}

/// Measures and prints the engine rows; returns them as JSON.
fn engine_rows(steps: usize, torch: bool) -> serde_json::Value {
    println!(
        "\nengine: forward + backward of a MobileNetV2 scope, batch {BATCH} cached cut tensors ({steps} steps)"
    );
    println!(
        "{:<40} {:>7} {:>10} {:>10} {:>8} {:>9} {:>10} {:>7}",
        "scope", "threads", "edgeclr/s", "torch/s", "ratio", "RSS MB", "torch RSS", "RSS ×"
    );
    let mut rows = Vec::new();
    for (i, case) in ScopeCase::all().iter().enumerate() {
        for threads in [1, 2] {
            let (ours, spec) = time_scope(case, threads, steps);
            let rss = scope_rss(i, threads, steps.min(5));
            let peer = torch
                .then(|| torch_scope_peer(case, &spec, threads, steps))
                .flatten();
            let theirs = peer.as_ref().and_then(|p| p["views_per_sec"].as_f64());
            let their_rss = peer.as_ref().and_then(|p| p["peak_rss_mb"].as_f64());
            let fmt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
            println!(
                "{:<40} {:>7} {:>10.0} {:>10} {:>8} {:>9} {:>10} {:>7}",
                case.label(),
                threads,
                ours,
                fmt(theirs, 0),
                fmt(theirs.map(|t| ours / t), 2),
                fmt(rss, 0),
                fmt(their_rss, 0),
                fmt(rss.zip(their_rss).map(|(a, b)| b / a), 1),
            );
            rows.push(serde_json::json!({
                "scope": case.label(), "threads": threads,
                "edgeclr_views_per_sec": ours, "edgeclr_peak_rss_mb": rss,
                "torch": peer, "ratio": theirs.map(|t| ours / t),
                "activation_mib_per_batch": spec.graph().activation_bytes_per_sample() as f64 * BATCH as f64 / (1 << 20) as f64,
            }));
        }
    }
    serde_json::Value::Array(rows)
}

/// The stretch: forward-only throughput (images/s) over the whole
/// MobileNetV2, input → embedding, in the engine (nothing kept for a
/// backward), in tract and in ONNX Runtime, batch 1 and 32, 1 and 2
/// threads; each configuration once per round, best round kept (this VM's
/// speed drifts), with the engine's largest difference from tract.
fn whole_model_rows(rounds: usize) -> serde_json::Value {
    use edgeclr::adapt::nn::{self, KeepPlan};
    use edgeclr::backend::{load_encoder, Backend};
    use edgeclr::LoadOptions;

    let manifest = Manifest::load(&repo("models/mobilenet_v2")).expect("default model manifest");
    let proto = edgeclr::onnx::load_verified(&manifest).expect("read the model");
    let graph = proto.graph.as_ref().expect("the model holds a graph");
    let imported = nn::import(
        graph,
        &manifest.input.name,
        &manifest.input.shape,
        &manifest.outputs.embedding,
    )
    .expect("the engine imports the whole MobileNetV2");
    let engine = imported.graph;
    let weights: Vec<_> = imported.init.iter().collect();
    let nothing = KeepPlan::nothing(engine.keep_plan(&vec![false; weights.len()]).values.len());
    let mut backends = vec![("tract", Backend::Tract)];
    if cfg!(feature = "ort") && std::env::var_os("ORT_DYLIB_PATH").is_some() {
        backends.push(("ort", "ort".parse().expect("ort backend name")));
    }
    let width: usize = manifest.input.shape.iter().product();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let images = 32;
    let x = Array2::from_shape_fn((images, width), |_| rng.random_range(-2.0f32..2.0));
    let shape = [images, 3, 224, 224];
    let x4 = x
        .view()
        .into_shape_with_order(shape)
        .expect("NCHW batch")
        .to_owned();
    println!(
        "\nwhole MobileNetV2, forward only, 224 px, {images} images per configuration, best of {rounds} rounds (images/s)"
    );
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>10} {:>14} {:>12}",
        "batch", "threads", "engine", "tract", "ort", "engine/tract", "max |diff|"
    );
    let mut rows = Vec::new();
    for batch in [1usize, 32] {
        for threads in [1usize, 2] {
            let options = LoadOptions {
                threads,
                embedding_only: true,
            };
            let mut encoders: Vec<_> = backends
                .iter()
                .map(|(name, b)| (*name, load_encoder(b, &manifest, &options).expect("load")))
                .collect();
            let mut best = vec![0.0f64; 1 + encoders.len()];
            let mut diff = 0.0f32;
            for round in 0..=rounds {
                let t = Instant::now();
                let mut ours = Vec::new();
                for start in (0..images).step_by(batch) {
                    let rows = x.slice(ndarray::s![start..start + batch, ..]);
                    let (y, _) = engine
                        .forward_rows_keeping(&weights, rows, threads, Some(&nothing))
                        .expect("engine forward");
                    ours.push(y);
                }
                let rate = images as f64 / t.elapsed().as_secs_f64();
                // Round 0 warms every runtime up and is not counted.
                if round > 0 {
                    best[0] = best[0].max(rate);
                }
                for (i, (name, encoder)) in encoders.iter_mut().enumerate() {
                    let t = Instant::now();
                    for (c, start) in (0..images).step_by(batch).enumerate() {
                        let out = encoder
                            .run(x4.slice(ndarray::s![start..start + batch, .., .., ..]))
                            .expect("encode");
                        if *name == "tract" && round == 0 {
                            let d = (&out.embedding - &ours[c]).mapv(f32::abs);
                            diff = d.iter().fold(diff, |a, &b| a.max(b));
                        }
                    }
                    if round > 0 {
                        best[1 + i] = best[1 + i].max(images as f64 / t.elapsed().as_secs_f64());
                    }
                }
            }
            let ort = best.get(2).copied();
            let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            println!(
                "{batch:>6} {threads:>8} {:>10.1} {:>10.1} {:>10} {:>14.2} {:>12.1e}",
                best[0],
                best[1],
                fmt(ort),
                best[0] / best[1],
                diff
            );
            rows.push(serde_json::json!({
                "batch": batch, "threads": threads, "engine_images_per_sec": best[0],
                "tract_images_per_sec": best[1], "ort_images_per_sec": ort,
                "engine_vs_tract": best[0] / best[1], "max_abs_diff_vs_tract": diff,
            }));
        }
    }
    serde_json::Value::Array(rows)
}

fn main() {
    let tail = std::env::args().any(|a| a == "--tail");
    let mode = if tail { Mode::TailHead } else { Mode::HeadOnly };
    if let Some(steps) = arg("--rss-only") {
        let steps = steps.parse().unwrap_or(20);
        time_step(mode, steps, 0);
        println!("RSS_MB {}", edgeclr::rss::peak_rss_mib());
        return;
    }
    if let Some(index) = arg("--scope-rss") {
        let rest: Vec<usize> = std::env::args()
            .skip_while(|a| a != "--scope-rss")
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        let cases = ScopeCase::all();
        let case = &cases[index.parse::<usize>().unwrap_or(0).min(cases.len() - 1)];
        time_scope(
            case,
            rest.get(1).copied().unwrap_or(1),
            rest.get(2).copied().unwrap_or(3),
        );
        println!("RSS_MB {}", edgeclr::rss::peak_rss_mib());
        return;
    }
    let steps: usize = arg("--steps").and_then(|s| s.parse().ok()).unwrap_or(50);
    if std::env::args().any(|a| a == "--whole-model") {
        let rounds = arg("--rounds").and_then(|s| s.parse().ok()).unwrap_or(3);
        let rows = whole_model_rows(rounds);
        let path = repo("target/bench-adapt-whole-model.json");
        if let Err(e) = std::fs::write(
            &path,
            serde_json::to_string_pretty(&rows).unwrap_or_default(),
        ) {
            eprintln!("writing {}: {e}", path.display());
        }
        return;
    }
    if std::env::args().any(|a| a == "--engine-only") {
        let rows = engine_rows(steps.min(20), torch_available());
        let path = repo("target/bench-adapt-engine.json");
        if let Err(e) = std::fs::write(
            &path,
            serde_json::to_string_pretty(&rows).unwrap_or_default(),
        ) {
            eprintln!("writing {}: {e}", path.display());
        }
        return;
    }
    let head = Row::measure(Mode::HeadOnly, steps);
    let tail = Row::measure(Mode::TailHead, steps);

    println!(
        "edgeclr adapt benchmark: batch {BATCH}, {DIM}-d → adapter 128 → head 512 → 128, \
         InfoNCE + MoCo bank {BANK}, AdamW ({steps} steps); tail + head adds MobileNetV2's \
         1×1 conv 320→1280 + ReLU6 + pool on 320×7×7 cut tensors"
    );
    println!(
        "{:<28} {:>8} {:>10} {:>14} {:>10}",
        "runtime", "threads", "steps/s", "peak RSS MB", "vs torch"
    );
    head.print();
    tail.print();
    let torch = head.torch1().is_some();
    let engine = engine_rows(steps.min(20), torch);

    let json = serde_json::json!({
        "batch": BATCH, "dim": DIM, "bank": BANK, "steps": steps,
        "head_only": head.json(),
        "tail_head": tail.json(),
        "engine": engine,
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
