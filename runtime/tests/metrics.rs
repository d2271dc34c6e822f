//! Representation diagnostics against numpy references and known geometry.

use std::path::PathBuf;

use edgeclr::metrics::{
    alignment, effective_rank, l2_normalize_rows, singular_values, uniformity, Diagnostics,
    MetricsError, UNIFORMITY_T,
};
use ndarray::{array, Array2};
use ndarray_npy::read_npy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Standard normal via Box–Muller (rand 0.9 has no normal distribution without rand_distr).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn gaussian(seed: u64, rows: usize, cols: usize) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || normal(&mut rng) as f32)
}

/// `|a - b| <= tol · max(1, |b|)`: absolute for small values, relative for large.
fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * b.abs().max(1.0),
        "{what}: got {a}, expected {b}"
    );
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(data("metrics_ref.json")).expect("metrics_ref.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn ref_f64(r: &serde_json::Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn matches_numpy_reference() {
    let x: Array2<f32> = read_npy(data("metrics_x.npy")).expect("metrics_x.npy");
    let y: Array2<f32> = read_npy(data("metrics_y.npy")).expect("metrics_y.npy");
    let r = reference();
    let t = ref_f64(&r, "uniform_t");

    assert_close(
        alignment(x.view(), y.view()).unwrap(),
        ref_f64(&r, "align"),
        1e-5,
        "align",
    );
    assert_close(
        uniformity(x.view(), t).unwrap(),
        ref_f64(&r, "uniform_x"),
        1e-5,
        "uniform_x",
    );
    assert_close(
        uniformity(y.view(), t).unwrap(),
        ref_f64(&r, "uniform_y"),
        1e-5,
        "uniform_y",
    );

    let spectrum = singular_values(x.view()).unwrap();
    let expected: Vec<f64> = r["spectrum_x"]
        .as_array()
        .expect("spectrum_x")
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    assert_eq!(spectrum.len(), expected.len());
    for (i, (s, e)) in spectrum.iter().zip(&expected).enumerate() {
        assert_close(*s, *e, 1e-5, &format!("sigma_{i}"));
    }
    assert_close(
        effective_rank(&spectrum),
        ref_f64(&r, "rankme_x"),
        1e-5,
        "rankme_x",
    );
    let spectrum_y = singular_values(y.view()).unwrap();
    assert_close(
        effective_rank(&spectrum_y),
        ref_f64(&r, "rankme_y"),
        1e-5,
        "rankme_y",
    );

    // The reference rows are already unit-norm, so re-normalising in
    // Diagnostics changes nothing beyond f32 rounding.
    let d = Diagnostics::compute(x.view(), Some(y.view())).unwrap();
    assert_eq!((d.n, d.dim), (64, 16));
    assert_close(
        d.alignment.unwrap(),
        ref_f64(&r, "align"),
        1e-5,
        "diag align",
    );
    assert_close(d.uniformity, ref_f64(&r, "uniform_x"), 1e-5, "diag uniform");
    assert_close(
        d.effective_rank,
        ref_f64(&r, "rankme_x"),
        1e-5,
        "diag rankme",
    );
}

#[test]
fn uniform_points_on_sphere_reach_population_bound() {
    // For x, y uniform on S^{d-1}, E exp(-2‖x-y‖²) → e^{-4 + 8/d}: -3.9375 at d = 128.
    let x = l2_normalize_rows(gaussian(11, 4000, 128).view());
    let u = uniformity(x.view(), 2.0).unwrap();
    assert!((u - -3.9375).abs() < 0.05, "uniformity {u}");
}

#[test]
fn uniformity_blocks_match_naive_pairwise_sum() {
    // 1100 rows span three row blocks, exercising the blocked pair loop.
    let x = gaussian(12, 1100, 6) * 0.5;
    let t = 0.7;
    let mut terms = Vec::new();
    for i in 0..x.nrows() {
        for j in i + 1..x.nrows() {
            let d2: f64 = x
                .row(i)
                .iter()
                .zip(x.row(j))
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            terms.push(-t * d2);
        }
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let naive =
        max + (terms.iter().map(|v| (v - max).exp()).sum::<f64>() / terms.len() as f64).ln();
    assert_close(uniformity(x.view(), t).unwrap(), naive, 1e-9, "uniformity");
}

#[test]
fn collapsed_set_has_zero_uniformity_and_rank_one() {
    let row = array![0.3f32, -1.2, 0.5, 2.0, 0.1, -0.7, 0.0, 1.1];
    let x = Array2::from_shape_fn((50, 8), |(_, j)| row[j]);
    let d = Diagnostics::compute(x.view(), Some(x.view())).unwrap();
    assert!(d.uniformity.abs() < 1e-9, "uniformity {}", d.uniformity);
    assert!(
        (d.effective_rank - 1.0).abs() < 1e-3,
        "rank {}",
        d.effective_rank
    );
    assert_eq!(d.alignment, Some(0.0));
    assert_eq!(d.spectrum.len(), 8);
}

#[test]
fn orthonormal_rows_have_full_effective_rank() {
    // Gram–Schmidt on random rows: k orthonormal vectors in R^24.
    let k = 7;
    let mut q = gaussian(13, k, 24).mapv(f64::from);
    for i in 0..k {
        for j in 0..i {
            let proj = q.row(i).dot(&q.row(j));
            let rj = q.row(j).to_owned();
            q.row_mut(i).scaled_add(-proj, &rj);
        }
        let norm = q.row(i).dot(&q.row(i)).sqrt();
        q.row_mut(i).mapv_inplace(|v| v / norm);
    }
    let q = q.mapv(|v| v as f32);
    let spectrum = singular_values(q.view()).unwrap();
    assert_eq!(spectrum.len(), k);
    for s in &spectrum {
        assert!((s - 1.0).abs() < 1e-5, "{spectrum:?}");
    }
    let rank = effective_rank(&spectrum);
    assert!((rank - k as f64).abs() < 1e-3 * k as f64, "rank {rank}");
}

#[test]
fn singular_values_agree_for_tall_and_wide_inputs() {
    // xᵀx (tall, > one row block) and xxᵀ (wide) paths give the same spectrum.
    let x = gaussian(14, 700, 9);
    let xt = x.t().to_owned();
    let tall = singular_values(x.view()).unwrap();
    let wide = singular_values(xt.view()).unwrap();
    assert_eq!(tall.len(), 9);
    assert_eq!(wide.len(), 9);
    for (a, b) in tall.iter().zip(&wide) {
        assert_close(*a, *b, 1e-9, "sigma");
    }
    assert!(
        tall.windows(2).all(|w| w[0] >= w[1]),
        "not descending: {tall:?}"
    );

    let diag = array![
        [3.0f32, 0.0, 0.0],
        [0.0, -5.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0]
    ];
    let s = singular_values(diag.view()).unwrap();
    for (a, b) in s.iter().zip([5.0, 3.0, 1.0]) {
        assert_close(*a, b, 1e-12, "diag sigma");
    }
}

#[test]
fn effective_rank_edge_cases() {
    assert_eq!(effective_rank(&[]), 0.0);
    assert_eq!(effective_rank(&[0.0, 0.0]), 0.0);
    assert!((effective_rank(&[2.0]) - 1.0).abs() < 1e-6);
    assert!((effective_rank(&[1.0; 10]) - 10.0).abs() < 1e-4);
}

#[test]
fn l2_normalize_keeps_zero_rows() {
    let x = array![[3.0f32, 4.0], [0.0, 0.0], [-1e-30, 0.0]];
    let n = l2_normalize_rows(x.view());
    assert_eq!(n, array![[0.6f32, 0.8], [0.0, 0.0], [-1.0, 0.0]]);
}

#[test]
fn invalid_input_is_an_error() {
    let mut x = gaussian(15, 10, 4);
    x[[6, 2]] = f32::NAN;
    let err = uniformity(x.view(), 2.0).unwrap_err();
    assert!(
        matches!(err, MetricsError::NonFinite { row: 6, col: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("row 6"), "{err}");
    assert!(matches!(
        singular_values(x.view()),
        Err(MetricsError::NonFinite { row: 6, .. })
    ));
    assert!(matches!(
        Diagnostics::compute(x.view(), None),
        Err(MetricsError::NonFinite { row: 6, .. })
    ));
    let ok = gaussian(16, 10, 4);
    assert!(matches!(
        alignment(ok.view(), x.view()),
        Err(MetricsError::NonFinite { .. })
    ));
    x[[6, 2]] = f32::INFINITY;
    assert!(matches!(
        Diagnostics::compute(ok.view(), Some(x.view())),
        Err(MetricsError::NonFinite { row: 6, .. })
    ));

    let short = gaussian(17, 9, 4);
    assert!(matches!(
        alignment(ok.view(), short.view()),
        Err(MetricsError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        Diagnostics::compute(ok.view(), Some(short.view())),
        Err(MetricsError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        uniformity(ok.slice(ndarray::s![..1, ..]), 2.0),
        Err(MetricsError::TooFewRows { .. })
    ));
    assert!(matches!(
        uniformity(ok.view(), 0.0),
        Err(MetricsError::InvalidTemperature(_))
    ));
    let empty = Array2::<f32>::zeros((0, 4));
    assert!(matches!(
        singular_values(empty.view()),
        Err(MetricsError::Empty(_))
    ));
    assert!(matches!(
        alignment(empty.view(), empty.view()),
        Err(MetricsError::Empty(_))
    ));
}

#[test]
fn report_is_readable_and_serialisable() {
    let x = gaussian(18, 40, 6);
    let d = Diagnostics::compute(x.view(), None).unwrap();
    assert_close(
        d.uniformity,
        uniformity(l2_normalize_rows(x.view()).view(), UNIFORMITY_T).unwrap(),
        1e-12,
        "uniformity",
    );
    let text = d.to_string();
    assert!(text.contains("alignment"), "{text}");
    assert!(
        text.contains("population minimum ≈ −4 for large dim; 0 = collapsed"),
        "{text}"
    );
    assert!(text.contains("of 6"), "{text}");
    assert!(text.contains("top singular values"), "{text}");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["n"], 40);
    assert!(json["alignment"].is_null());
    assert_eq!(json["spectrum"].as_array().unwrap().len(), 6);
}
