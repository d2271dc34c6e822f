//! Linear probe, L-BFGS and k-NN head: correctness, persistence and input
//! validation.

use std::path::PathBuf;
use std::time::Instant;

use edgeclr::probe::lbfgs::{self, LbfgsConfig, Termination};
use edgeclr::probe::{KnnHead, LinearProbe, LinearProbeConfig, ProbeError, SoftmaxObjective};
use ndarray::{array, s, Array2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Standard normal via Box–Muller (rand 0.9 has no normal distribution without rand_distr).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn gaussian(rng: &mut ChaCha8Rng, rows: usize, cols: usize, scale: f64) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, cols), || (scale * normal(rng)) as f32)
}

/// `per_class` points around each of `centres` (rows) with unit-variance noise.
fn blobs(
    rng: &mut ChaCha8Rng,
    centres: &Array2<f32>,
    per_class: usize,
) -> (Array2<f32>, Vec<usize>) {
    let (k, d) = centres.dim();
    let mut x = gaussian(rng, k * per_class, d, 1.0);
    let mut labels = Vec::with_capacity(k * per_class);
    for c in 0..k {
        let mut block = x.slice_mut(s![c * per_class..(c + 1) * per_class, ..]);
        block += &centres.row(c);
        labels.extend(std::iter::repeat_n(c, per_class));
    }
    (x, labels)
}

fn names(k: usize) -> Vec<String> {
    (0..k).map(|c| format!("class{c}")).collect()
}

/// A per-test scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("edgeclr-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- L-BFGS

#[test]
fn lbfgs_minimises_ill_conditioned_quadratic() {
    // f(x) = Σ a_i (x_i - c_i)², condition number 1e4.
    let n = 50;
    let a: Vec<f64> = (0..n)
        .map(|i| 10f64.powf(4.0 * i as f64 / (n - 1) as f64))
        .collect();
    let c: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    let mut x = vec![0.0; n];
    // rel_tol = 0: stop on the gradient alone, however small f gets. (50
    // eigenvalues spread over four decades take SciPy's L-BFGS-B ~935
    // iterations to reach 1e-8; this implementation needs about as many.)
    let cfg = LbfgsConfig {
        grad_tol: 1e-8,
        rel_tol: 0.0,
        max_iter: 5000,
        ..LbfgsConfig::default()
    };
    let report = lbfgs::minimize(
        |x, g| {
            let mut f = 0.0;
            for i in 0..x.len() {
                let d = x[i] - c[i];
                f += a[i] * d * d;
                g[i] = 2.0 * a[i] * d;
            }
            f
        },
        &mut x,
        &cfg,
    );
    assert!(report.converged(), "{report:?}");
    for (xi, ci) in x.iter().zip(&c) {
        assert!((xi - ci).abs() < 1e-8, "x = {xi}, optimum {ci}");
    }
}

fn rosenbrock(x: &[f64], g: &mut [f64]) -> f64 {
    g.iter_mut().for_each(|v| *v = 0.0);
    let mut f = 0.0;
    for i in 0..x.len() - 1 {
        let (a, b) = (x[i], x[i + 1]);
        f += 100.0 * (b - a * a).powi(2) + (1.0 - a).powi(2);
        g[i] += -400.0 * a * (b - a * a) - 2.0 * (1.0 - a);
        g[i + 1] += 200.0 * (b - a * a);
    }
    f
}

#[test]
fn lbfgs_minimises_rosenbrock() {
    let cfg = LbfgsConfig {
        grad_tol: 1e-10,
        ..LbfgsConfig::default()
    };
    for start in [
        vec![-1.2, 1.0],
        vec![-1.2, 1.0, -1.2, 1.0, -1.2, 1.0, -1.2, 1.0, -1.2, 1.0],
    ] {
        let mut x = start;
        let report = lbfgs::minimize(rosenbrock, &mut x, &cfg);
        assert!(report.converged(), "{report:?}");
        assert!(report.value < 1e-14, "{report:?}");
        for xi in &x {
            assert!((xi - 1.0).abs() < 1e-6, "x = {x:?}");
        }
    }
}

#[test]
fn lbfgs_is_deterministic_and_honours_max_iter() {
    let cfg = LbfgsConfig {
        max_iter: 5,
        ..LbfgsConfig::default()
    };
    let run = || {
        let mut x = vec![-1.2, 1.0];
        let report = lbfgs::minimize(rosenbrock, &mut x, &cfg);
        (x, report)
    };
    let (x1, r1) = run();
    let (x2, r2) = run();
    assert_eq!(r1.termination, Termination::MaxIterations);
    assert_eq!(r1.iterations, 5);
    assert!(!r1.converged());
    assert_eq!((x1, r1), (x2, r2));
}

#[test]
fn lbfgs_reports_non_finite_start_and_survives_nan_steps() {
    let mut x = vec![1.0];
    let report = lbfgs::minimize(
        |_, g| {
            g[0] = 1.0;
            f64::NAN
        },
        &mut x,
        &LbfgsConfig::default(),
    );
    assert_eq!(report.termination, Termination::NonFiniteStart);
    assert_eq!(x, vec![1.0]);

    // -log(x) + x has its minimum at x = 1 and is undefined for x <= 0; the
    // line search must back off from NaN trial points.
    let mut x = vec![0.05];
    let report = lbfgs::minimize(
        |x, g| {
            g[0] = -1.0 / x[0] + 1.0;
            if x[0] > 0.0 {
                -x[0].ln() + x[0]
            } else {
                f64::NAN
            }
        },
        &mut x,
        &LbfgsConfig {
            grad_tol: 1e-10,
            ..LbfgsConfig::default()
        },
    );
    assert!(report.converged(), "{report:?}");
    assert!((x[0] - 1.0).abs() < 1e-8);
}

// ---------------------------------------------------------------- objective

#[test]
fn objective_gradient_matches_central_differences() {
    let mut r = rng(1);
    let (n, d, k, c) = (30, 7, 3, 0.7);
    let x = gaussian(&mut r, n, d, 1.5);
    let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
    let obj = SoftmaxObjective::new(x.view(), &labels, k, c).unwrap();
    assert_eq!(obj.n_params(), k * (d + 1));
    let params: Vec<f64> = (0..obj.n_params()).map(|_| 0.5 * normal(&mut r)).collect();
    let mut grad = vec![0.0; params.len()];
    obj.value_and_gradient(&params, &mut grad).unwrap();

    let h = 1e-5;
    let mut scratch = vec![0.0; params.len()];
    for i in 0..params.len() {
        let mut p = params.clone();
        p[i] = params[i] + h;
        let up = obj.value_and_gradient(&p, &mut scratch).unwrap();
        p[i] = params[i] - h;
        let down = obj.value_and_gradient(&p, &mut scratch).unwrap();
        let fd = (up - down) / (2.0 * h);
        let err = (grad[i] - fd).abs() / grad[i].abs().max(1.0);
        assert!(
            err < 1e-6,
            "param {i}: analytic {} vs numeric {fd}",
            grad[i]
        );
    }
}

#[test]
fn objective_value_matches_definition() {
    let mut r = rng(2);
    let (n, d, k, c) = (12, 4, 3, 2.5);
    let x = gaussian(&mut r, n, d, 1.0);
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % k).collect();
    let obj = SoftmaxObjective::new(x.view(), &labels, k, c).unwrap();

    // At zero every class has probability 1/k.
    let mut grad = vec![0.0; obj.n_params()];
    let f0 = obj
        .value_and_gradient(&vec![0.0; obj.n_params()], &mut grad)
        .unwrap();
    assert!((f0 - c * n as f64 * (k as f64).ln()).abs() < 1e-12);

    // Elsewhere: ½‖W‖² + C Σ CE, written out naively.
    let params: Vec<f64> = (0..obj.n_params()).map(|_| normal(&mut r)).collect();
    let (w, b) = params.split_at(k * d);
    let mut expected = 0.5 * w.iter().map(|v| v * v).sum::<f64>();
    for (i, &y) in labels.iter().enumerate() {
        let z: Vec<f64> = (0..k)
            .map(|j| {
                b[j] + (0..d)
                    .map(|t| w[j * d + t] * f64::from(x[[i, t]]))
                    .sum::<f64>()
            })
            .collect();
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        expected += c * (lse - z[y]);
    }
    let f = obj.value_and_gradient(&params, &mut grad).unwrap();
    assert!(
        (f - expected).abs() < 1e-10 * expected.abs(),
        "{f} vs {expected}"
    );

    assert!(matches!(
        obj.value_and_gradient(&params[1..], &mut grad),
        Err(ProbeError::ParamCount { .. })
    ));
}

// ---------------------------------------------------------------- linear probe

#[test]
fn linear_probe_separates_gaussian_blobs() {
    let mut r = rng(3);
    let centres = gaussian(&mut r, 4, 16, 3.0);
    let (x, y) = blobs(&mut r, &centres, 50);
    let (x_test, y_test) = blobs(&mut r, &centres, 50);
    let (probe, report) =
        LinearProbe::fit(x.view(), &y, names(4), &LinearProbeConfig::default()).unwrap();
    assert!(report.converged, "{report:?}");
    assert!(report.objective.is_finite() && report.objective > 0.0);
    assert_eq!(probe.dim(), 16);
    assert_eq!(probe.classes().len(), 4);
    assert!(probe.accuracy(x.view(), &y).unwrap() >= 0.99);
    assert!(probe.accuracy(x_test.view(), &y_test).unwrap() >= 0.97);

    let proba = probe.predict_proba(x_test.view()).unwrap();
    for row in proba.outer_iter() {
        assert!((row.sum() - 1.0).abs() < 1e-5);
    }
    // Starting from zero, every step is a combination of gradients whose
    // class-sums vanish, so the solution is centred like scikit-learn's.
    assert!(probe.bias().sum().abs() < 1e-4);
    for col in probe.weights().axis_iter(Axis(1)) {
        assert!(col.sum().abs() < 1e-4);
    }
}

#[test]
fn linear_probe_normalisation_is_applied_at_predict_time() {
    let mut r = rng(4);
    let centres = gaussian(&mut r, 3, 8, 3.0);
    let (x, y) = blobs(&mut r, &centres, 30);
    let cfg = LinearProbeConfig {
        normalize: true,
        ..LinearProbeConfig::default()
    };
    let (probe, _) = LinearProbe::fit(x.view(), &y, names(3), &cfg).unwrap();
    assert!(probe.normalized);
    let scaled = &x * 37.0;
    assert_eq!(
        probe.predict(x.view()).unwrap(),
        probe.predict(scaled.view()).unwrap()
    );
}

#[test]
fn linear_probe_save_load_round_trip() {
    let mut r = rng(5);
    let centres = gaussian(&mut r, 3, 10, 2.0);
    let (x, y) = blobs(&mut r, &centres, 20);
    let (mut probe, _) =
        LinearProbe::fit(x.view(), &y, names(3), &LinearProbeConfig::default()).unwrap();
    probe.model = Some("mobilenet_v2".into());
    let dir = TempDir::new("probe-round-trip");
    let path = dir.join("probe.json");
    probe.save(&path).unwrap();
    assert!(!PathBuf::from(format!("{}.tmp", path.display())).exists());

    let loaded = LinearProbe::load(&path).unwrap();
    assert_eq!(loaded, probe);
    assert_eq!(loaded.model.as_deref(), Some("mobilenet_v2"));
    assert_eq!(
        loaded.predict(x.view()).unwrap(),
        probe.predict(x.view()).unwrap()
    );
    assert_eq!(
        loaded.predict_proba(x.view()).unwrap(),
        probe.predict_proba(x.view()).unwrap()
    );
    assert_eq!(loaded.class_index("class2").unwrap(), 2);
    assert!(matches!(
        loaded.class_index("nope"),
        Err(ProbeError::UnknownClass(_))
    ));
}

#[test]
fn linear_probe_load_rejects_other_formats_and_versions() {
    let mut r = rng(6);
    let x = gaussian(&mut r, 6, 3, 1.0);
    let (probe, _) = LinearProbe::fit(
        x.view(),
        &[0, 1, 0, 1, 0, 1],
        names(2),
        &LinearProbeConfig::default(),
    )
    .unwrap();
    let dir = TempDir::new("probe-versions");
    let path = dir.join("versions.json");
    probe.save(&path).unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let write_variant = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
        LinearProbe::load(&path)
    };

    let err = write_variant(&|v| v["version"] = 2.into()).unwrap_err();
    assert!(
        matches!(err, ProbeError::UnsupportedVersion { found: Some(2), .. }),
        "{err}"
    );
    let err = write_variant(&|v| v["format"] = "edgeclr-knn".into()).unwrap_err();
    assert!(matches!(err, ProbeError::WrongFormat { .. }), "{err}");
    let err = write_variant(&|v| {
        v.as_object_mut().unwrap().remove("format");
    })
    .unwrap_err();
    assert!(matches!(err, ProbeError::WrongFormat { .. }), "{err}");
    let err = write_variant(&|v| v["weights"][1] = serde_json::json!([1.0])).unwrap_err();
    assert!(
        matches!(err, ProbeError::Json { .. }) && err.to_string().contains("weight row 1"),
        "{err}"
    );

    std::fs::write(&path, "not json").unwrap();
    assert!(matches!(
        LinearProbe::load(&path),
        Err(ProbeError::Json { .. })
    ));
    assert!(matches!(
        LinearProbe::load(dir.join("missing.json")),
        Err(ProbeError::Io { .. })
    ));

    // A k-NN head is not a probe, and vice versa.
    let head = KnnHead::from_labelled(x.view(), &[0, 1, 0, 1, 0, 1], names(2), 3).unwrap();
    head.save(&path).unwrap();
    assert!(matches!(
        LinearProbe::load(&path),
        Err(ProbeError::WrongFormat { .. })
    ));
    probe.save(&path).unwrap();
    assert!(matches!(
        KnnHead::load(&path),
        Err(ProbeError::WrongFormat { .. })
    ));
}

#[test]
fn linear_probe_rejects_invalid_input() {
    let cfg = LinearProbeConfig::default();
    let x = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]];
    let fit = |x: &Array2<f32>, y: &[usize], classes: Vec<String>, cfg: &LinearProbeConfig| {
        LinearProbe::fit(x.view(), y, classes, cfg).map(|_| ())
    };
    let empty = Array2::<f32>::zeros((0, 2));
    assert!(matches!(
        fit(&empty, &[], names(2), &cfg),
        Err(ProbeError::Empty(_))
    ));
    assert!(matches!(
        fit(&x, &[0, 1], names(2), &cfg),
        Err(ProbeError::LabelCountMismatch { labels: 2, rows: 3 })
    ));
    assert!(matches!(
        fit(&x, &[0, 1, 2], names(2), &cfg),
        Err(ProbeError::LabelOutOfRange {
            row: 2,
            label: 2,
            classes: 2
        })
    ));
    assert!(matches!(
        fit(&x, &[0, 0, 0], names(2), &cfg),
        Err(ProbeError::EmptyClass(_))
    ));
    assert!(matches!(
        fit(&x, &[0, 1, 0], vec!["a".into(), "a".into()], &cfg),
        Err(ProbeError::DuplicateClass(_))
    ));
    assert!(matches!(
        fit(&x, &[0, 0, 0], names(1), &cfg),
        Err(ProbeError::InvalidConfig(_))
    ));
    let bad_c = LinearProbeConfig {
        c: 0.0,
        ..cfg.clone()
    };
    assert!(matches!(
        fit(&x, &[0, 1, 0], names(2), &bad_c),
        Err(ProbeError::InvalidConfig(_))
    ));
    let mut nan = x.clone();
    nan[[1, 1]] = f32::NAN;
    assert!(matches!(
        fit(&nan, &[0, 1, 0], names(2), &cfg),
        Err(ProbeError::NonFinite { row: 1, col: 1, .. })
    ));

    let (probe, _) = LinearProbe::fit(x.view(), &[0, 1, 0], names(2), &cfg).unwrap();
    let wide = Array2::<f32>::zeros((2, 3));
    assert!(matches!(
        probe.predict(wide.view()),
        Err(ProbeError::DimMismatch {
            expected: 2,
            found: 3
        })
    ));
    assert!(matches!(
        probe.predict(empty.view()),
        Err(ProbeError::Empty(_))
    ));
    let inf = array![[f32::INFINITY, 0.0]];
    assert!(matches!(
        probe.predict_proba(inf.view()),
        Err(ProbeError::NonFinite { .. })
    ));
    assert!(matches!(
        probe.accuracy(x.view(), &[0, 1, 5]),
        Err(ProbeError::LabelOutOfRange { .. })
    ));
}

#[test]
fn linear_probe_fits_1000x1280_in_seconds() {
    let mut r = rng(7);
    let centres = gaussian(&mut r, 10, 1280, 0.15);
    let (x, y) = blobs(&mut r, &centres, 100);
    let start = Instant::now();
    let (probe, report) =
        LinearProbe::fit(x.view(), &y, names(10), &LinearProbeConfig::default()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("1000×1280, 10 classes: {report:?} in {secs:.2}s");
    assert!(report.converged, "{report:?}");
    assert!(probe.accuracy(x.view(), &y).unwrap() > 0.9);
    // Generous bound for shared CI machines; typically well under a second.
    assert!(secs < 20.0, "fit took {secs:.1}s");
}

// ---------------------------------------------------------------- k-NN head

/// Unit-ish blobs around random directions, the geometry a cosine head sees.
fn shots(rng: &mut ChaCha8Rng, centre: &Array2<f32>, n: usize) -> Array2<f32> {
    let noise = gaussian(rng, n, centre.ncols(), 0.1);
    &noise + &centre.row(0)
}

#[test]
fn knn_enrols_few_shot_classes_without_retraining() {
    let mut r = rng(8);
    let d = 32;
    let centres: Vec<Array2<f32>> = (0..4).map(|_| gaussian(&mut r, 1, d, 1.0)).collect();
    let mut head = KnnHead::new(d, 3).unwrap();
    for (c, centre) in centres.iter().take(3).enumerate() {
        head.enroll(&format!("class{c}"), shots(&mut r, centre, 5).view())
            .unwrap();
    }
    assert_eq!(head.classes(), &names(3)[..]);
    assert_eq!(head.keys_per_class(), vec![5, 5, 5]);

    let queries: Vec<Array2<f32>> = centres.iter().map(|c| shots(&mut r, c, 20)).collect();
    for (c, q) in queries.iter().take(3).enumerate() {
        let predictions = head.predict(q.view()).unwrap();
        for p in &predictions {
            assert_eq!(p.class, c);
            assert!(p.score > 0.5 && p.score <= 1.0);
            assert_eq!(p.top[0], (p.class, p.score));
        }
        assert_eq!(head.accuracy(q.view(), &[c; 20]).unwrap(), 1.0);
    }

    // A fourth class: the old keys are untouched and the new class is recognised.
    let before = head.clone();
    head.enroll("class3", shots(&mut r, &centres[3], 5).view())
        .unwrap();
    assert_eq!(head.classes().len(), 4);
    assert_eq!(head.keys_per_class(), vec![5, 5, 5, 5]);
    for (c, q) in queries.iter().enumerate() {
        assert_eq!(head.accuracy(q.view(), &[c; 20]).unwrap(), 1.0, "class {c}");
    }
    for q in queries.iter().take(3) {
        assert_eq!(
            head.predict(q.view()).unwrap(),
            before.predict(q.view()).unwrap()
        );
    }

    // Enrolling more shots of an existing class appends to it.
    head.enroll("class1", shots(&mut r, &centres[1], 2).view())
        .unwrap();
    assert_eq!(head.keys_per_class(), vec![5, 7, 5, 5]);

    // Forgetting removes the class; later classes shift down one index.
    assert_eq!(head.forget("class1").unwrap(), 7);
    assert_eq!(head.classes(), &["class0", "class2", "class3"]);
    assert_eq!(head.keys_per_class(), vec![5, 5, 5]);
    assert_eq!(head.accuracy(queries[3].view(), &[2; 20]).unwrap(), 1.0);
    assert!(head
        .predict(queries[1].view())
        .unwrap()
        .iter()
        .all(|p| p.top.iter().all(|&(c, _)| c < 3)));
    assert!(matches!(
        head.forget("class1"),
        Err(ProbeError::UnknownClass(_))
    ));
}

#[test]
fn knn_votes_are_similarity_weighted_with_ties_to_lower_index() {
    // Keys: class "a" twice at 72° from the query, class "b" once at 0°.
    let angle = 72f32.to_radians();
    let keys_a = array![[angle.cos(), angle.sin()], [angle.cos(), -angle.sin()]];
    let key_b = array![[1.0f32, 0.0]];
    let mut head = KnnHead::new(2, 3).unwrap();
    head.enroll("a", keys_a.view()).unwrap();
    head.enroll("b", key_b.view()).unwrap();
    let p = &head.predict(array![[1.0f32, 0.0]].view()).unwrap()[0];
    // b: 1.0 vs a: 2·cos 72° ≈ 0.618 — a majority of neighbours loses to a closer one.
    assert_eq!(p.class, 1);
    let a = 2.0 * angle.cos();
    assert!((p.score - 1.0 / (1.0 + a)).abs() < 1e-6);
    assert_eq!(p.top.len(), 2);
    assert_eq!(p.top[1].0, 0);

    // Exact tie: the query is equidistant from one key of each class.
    let mut head = KnnHead::new(2, 2).unwrap();
    head.enroll("x", array![[1.0f32, 0.0]].view()).unwrap();
    head.enroll("y", array![[0.0f32, 1.0]].view()).unwrap();
    let p = &head.predict(array![[1.0f32, 1.0]].view()).unwrap()[0];
    assert_eq!(p.class, 0);
    assert!((p.score - 0.5).abs() < 1e-6);

    // k larger than the number of keys uses them all.
    let head = KnnHead::from_labelled(
        array![[1.0f32, 0.0], [0.0, 1.0]].view(),
        &[0, 1],
        names(2),
        50,
    )
    .unwrap();
    let p = &head.predict(array![[0.9f32, 0.1]].view()).unwrap()[0];
    assert_eq!(p.class, 0);
    assert_eq!(p.top.len(), 2);
}

#[test]
fn knn_from_labelled_matches_enrolment() {
    let mut r = rng(9);
    let centres = gaussian(&mut r, 3, 12, 1.0);
    let (x, y) = blobs(&mut r, &(&centres * 3.0), 10);
    let from = KnnHead::from_labelled(x.view(), &y, names(3), 5).unwrap();
    let mut enrolled = KnnHead::new(12, 5).unwrap();
    for c in 0..3 {
        enrolled
            .enroll(&format!("class{c}"), x.slice(s![c * 10..(c + 1) * 10, ..]))
            .unwrap();
    }
    let q = gaussian(&mut r, 40, 12, 2.0);
    assert_eq!(
        from.predict(q.view()).unwrap(),
        enrolled.predict(q.view()).unwrap()
    );
    assert_eq!(from.num_keys(), 30);
    assert_eq!(from.k(), 5);
}

#[test]
fn knn_save_load_round_trip() {
    let mut r = rng(10);
    let mut head = KnnHead::new(8, 4).unwrap();
    head.model = Some("resnet18".into());
    for c in ["cat", "dog", "fox"] {
        head.enroll(c, gaussian(&mut r, 6, 8, 1.0).view()).unwrap();
    }
    let dir = TempDir::new("knn-round-trip");
    let path = dir.join("knn.json");
    head.save(&path).unwrap();
    let loaded = KnnHead::load(&path).unwrap();
    assert_eq!(loaded, head);
    let q = gaussian(&mut r, 25, 8, 1.0);
    assert_eq!(
        loaded.predict(q.view()).unwrap(),
        head.predict(q.view()).unwrap()
    );

    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["version"] = 7.into();
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(matches!(
        KnnHead::load(&path),
        Err(ProbeError::UnsupportedVersion { found: Some(7), .. })
    ));
    v["version"] = 1.into();
    v["labels"][0] = 9.into();
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(matches!(KnnHead::load(&path), Err(ProbeError::Json { .. })));
}

#[test]
fn knn_rejects_invalid_input() {
    assert!(matches!(
        KnnHead::new(4, 0),
        Err(ProbeError::InvalidConfig(_))
    ));
    assert!(matches!(
        KnnHead::new(0, 3),
        Err(ProbeError::InvalidConfig(_))
    ));
    let mut head = KnnHead::new(3, 2).unwrap();
    let q = array![[1.0f32, 2.0, 3.0]];
    assert!(matches!(head.predict(q.view()), Err(ProbeError::Empty(_))));

    assert!(matches!(
        head.enroll("a", Array2::<f32>::zeros((0, 3)).view()),
        Err(ProbeError::Empty(_))
    ));
    assert!(matches!(
        head.enroll("a", array![[1.0f32, 2.0]].view()),
        Err(ProbeError::DimMismatch {
            expected: 3,
            found: 2
        })
    ));
    assert!(matches!(
        head.enroll("a", array![[1.0f32, 2.0, 3.0], [0.0, f32::NAN, 1.0]].view()),
        Err(ProbeError::NonFinite { row: 1, col: 1, .. })
    ));
    assert!(matches!(
        head.enroll("a", array![[0.0f32, 0.0, 0.0]].view()),
        Err(ProbeError::ZeroNorm { row: 0, .. })
    ));
    // Failed enrolments leave no trace.
    assert!(head.classes().is_empty());
    assert_eq!(head.num_keys(), 0);

    head.enroll("a", q.view()).unwrap();
    assert!(matches!(
        head.predict(array![[1.0f32, 2.0, 3.0, 4.0]].view()),
        Err(ProbeError::DimMismatch { .. })
    ));
    assert!(matches!(
        head.predict(array![[f32::NEG_INFINITY, 0.0, 0.0]].view()),
        Err(ProbeError::NonFinite { .. })
    ));
    assert!(matches!(
        head.accuracy(q.view(), &[1]),
        Err(ProbeError::LabelOutOfRange { .. })
    ));
    assert!(matches!(
        KnnHead::from_labelled(q.view(), &[0], vec!["a".into(), "a".into()], 1),
        Err(ProbeError::DuplicateClass(_))
    ));
}
