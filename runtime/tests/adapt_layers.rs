//! Trainable layers (`edgeclr::adapt::layers`: ONNX nodes run by the
//! engine) against central finite differences, and optimisers / schedule
//! (`edgeclr::adapt::optim`) against PyTorch's update formulas written out
//! independently here.

use edgeclr::adapt::layers::{
    init_adapter, init_linear, init_mlp, init_zero_linear, onnx_nodes, Layer, LayerCache,
    LayerKind, LayersError, RunLayers,
};
use edgeclr::adapt::optim::{AdamW, CosineSchedule, OptimError, Optimizer, OptimizerKind, Sgd};
use edgeclr::adapt::{Params, ParamsError};
use ndarray::{array, Array2, ArrayD, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------- helpers

// Each layer is built from the weights' shapes and resolved in them, as
// `AdaptedModel` does; gradients go into a store of the same layout.

fn linear_forward(
    p: &Params,
    prefix: &str,
    x: ArrayView2<f32>,
) -> Result<Array2<f32>, LayersError> {
    Ok(Layer::from_params(p, prefix, false)?.forward(p, x)?.0)
}

fn linear_backward(
    p: &Params,
    prefix: &str,
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
) -> Result<(Array2<f32>, Params), LayersError> {
    let layer = Layer::from_params(p, prefix, false)?.resolved(p)?;
    let (_, cache) = layer.forward(p, x)?;
    let mut grads = p.empty_like();
    let dx = layer.backward(p, &cache, dy, &mut grads)?;
    Ok((dx, grads))
}

fn adapter_forward(
    p: &Params,
    x: ArrayView2<f32>,
) -> Result<(Array2<f32>, (Layer, LayerCache)), LayersError> {
    let layer = Layer::from_params(p, "adapter", false)?.resolved(p)?;
    let (y, cache) = layer.forward(p, x)?;
    Ok((y, (layer, cache)))
}

fn adapter_backward(
    p: &Params,
    cache: &(Layer, LayerCache),
    dy: ArrayView2<f32>,
) -> Result<(Array2<f32>, Params), LayersError> {
    let mut grads = p.empty_like();
    let dx = cache.0.backward(p, &cache.1, dy, &mut grads)?;
    Ok((dx, grads))
}

fn mlp_forward(
    p: &Params,
    prefix: &str,
    x: ArrayView2<f32>,
) -> Result<(Array2<f32>, (Layer, LayerCache)), LayersError> {
    let layer = Layer::from_params(p, prefix, true)?.resolved(p)?;
    let (y, cache) = layer.forward(p, x)?;
    Ok((y, (layer, cache)))
}

fn mlp_backward(
    p: &Params,
    _prefix: &str,
    cache: &(Layer, LayerCache),
    dy: ArrayView2<f32>,
) -> Result<(Array2<f32>, Params), LayersError> {
    let mut grads = p.empty_like();
    let dx = cache.0.backward(p, &cache.1, dy, &mut grads)?;
    Ok((dx, grads))
}

fn rand_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-1.0f32..1.0))
}

/// Overwrites every tensor with U(-1, 1) values (so zero-initialised
/// projections still carry gradient to the layers before them).
fn randomize(p: &mut Params, rng: &mut ChaCha8Rng) {
    for (_, v) in p.iter_mut() {
        v.mapv_inplace(|_| rng.random_range(-1.0f32..1.0));
    }
}

/// L = Σ y ⊙ R, accumulated in f64.
fn weighted_sum(y: &Array2<f32>, r: &Array2<f32>) -> f64 {
    y.iter()
        .zip(r.iter())
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

const H: f32 = 1e-3;

fn close(analytic: f32, numeric: f64) -> bool {
    (f64::from(analytic) - numeric).abs() <= 1e-3 + 1e-2 * numeric.abs()
}

/// Compares an analytic gradient with central differences of `loss` with
/// respect to every entry of `target` (perturbed in place through `perturb`).
/// Returns a description of the first mismatch.
fn fd_check_tensor(
    what: &str,
    analytic: &ArrayD<f32>,
    len: usize,
    mut loss_with: impl FnMut(usize, f32) -> f64,
) -> Result<(), String> {
    if analytic.len() != len {
        return Err(format!(
            "{what}: gradient has {} entries, expected {len}",
            analytic.len()
        ));
    }
    for (i, &a) in analytic.iter().enumerate() {
        let numeric = (loss_with(i, H) - loss_with(i, -H)) / (2.0 * f64::from(H));
        if !close(a, numeric) {
            return Err(format!("{what}[{i}]: analytic {a}, numeric {numeric}"));
        }
    }
    Ok(())
}

/// Checks `grads` (all parameter names of `p` with `prefix`) and `dx`
/// against finite differences of `forward` at (`p`, `x`) with L = Σ y ⊙ R.
fn fd_check(
    p: &Params,
    prefix: &str,
    x: &Array2<f32>,
    r: &Array2<f32>,
    dx: &Array2<f32>,
    grads: &Params,
    forward: impl Fn(&Params, &Array2<f32>) -> Array2<f32>,
) -> Result<(), String> {
    let names: Vec<String> = p.with_prefix(prefix).names().map(str::to_owned).collect();
    let grad_names: Vec<&str> = grads.names().collect();
    if grad_names != names.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(format!(
            "gradient names {grad_names:?}, parameters {names:?}"
        ));
    }
    for name in &names {
        let len = p.get(name).unwrap().len();
        fd_check_tensor(name, grads.get(name).unwrap(), len, |i, h| {
            let mut q = p.clone();
            let t = q.get_mut(name).unwrap();
            let slot = t.iter_mut().nth(i).unwrap();
            *slot += h;
            weighted_sum(&forward(&q, x), r)
        })?;
    }
    fd_check_tensor("dx", &dx.clone().into_dyn(), x.len(), |i, h| {
        let mut xx = x.clone();
        *xx.iter_mut().nth(i).unwrap() += h;
        weighted_sum(&forward(p, &xx), r)
    })
}

/// Smallest |pre-activation| of a ReLU input, to keep finite differences
/// away from the kink (where they are meaningless).
fn min_abs(a: &Array2<f32>) -> f32 {
    a.iter().fold(f32::INFINITY, |m, &v| m.min(v.abs()))
}

// ---------------------------------------------------- layers: gradients

#[test]
fn linear_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut p = Params::new();
    init_linear(&mut p, "lin", 5, 4, &mut rng);
    let x = rand_matrix(&mut rng, 3, 5);
    let r = rand_matrix(&mut rng, 3, 4);
    let y = linear_forward(&p, "lin", x.view()).unwrap();
    assert_eq!(y.dim(), (3, 4));
    // Hand value of one output: y[1, 2] = Σ_k x[1, k] W[2, k] + b[2].
    let w = p.get("lin.weight").unwrap();
    let b = p.get("lin.bias").unwrap();
    let hand: f32 = (0..5).map(|k| x[[1, k]] * w[[2, k]]).sum::<f32>() + b[[2]];
    assert!((y[[1, 2]] - hand).abs() < 1e-6);

    let (dx, grads) = linear_backward(&p, "lin", x.view(), r.view()).unwrap();
    fd_check(&p, "lin.", &x, &r, &dx, &grads, |q, xx| {
        linear_forward(q, "lin", xx.view()).unwrap()
    })
    .unwrap();
}

#[test]
fn adapter_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut p = Params::new();
    init_adapter(&mut p, 6, 3, &mut rng);
    randomize(&mut p, &mut rng);
    let x = rand_matrix(&mut rng, 4, 6);
    let r = rand_matrix(&mut rng, 4, 6);
    let pre = linear_forward(&p, "adapter.down", x.view()).unwrap();
    assert!(
        min_abs(&pre) > 10.0 * H,
        "pre-activation too close to the ReLU kink"
    );
    assert!(pre.iter().any(|&v| v < 0.0) && pre.iter().any(|&v| v > 0.0));

    let (_, cache) = adapter_forward(&p, x.view()).unwrap();
    let (dx, grads) = adapter_backward(&p, &cache, r.view()).unwrap();
    fd_check(&p, "adapter.", &x, &r, &dx, &grads, |q, xx| {
        adapter_forward(q, xx.view()).unwrap().0
    })
    .unwrap();
}

#[test]
fn mlp_backward_matches_finite_differences() {
    // The first seed whose fc1 pre-activations keep clear of the ReLU kink
    // and take both signs (deterministic; the guard makes the choice explicit).
    let (p, x, r) = (10..100)
        .find_map(|seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut p = Params::new();
            init_mlp(&mut p, "head", 5, 7, 4, &mut rng);
            // A second module in the same map must be ignored by the head.
            init_mlp(&mut p, "predictor", 4, 3, 4, &mut rng);
            let x = rand_matrix(&mut rng, 3, 5);
            let r = rand_matrix(&mut rng, 3, 4);
            let pre = linear_forward(&p, "head.fc1", x.view()).unwrap();
            let both_signs = pre.iter().any(|&v| v < 0.0) && pre.iter().any(|&v| v > 0.0);
            (min_abs(&pre) > 10.0 * H && both_signs).then_some((p, x, r))
        })
        .expect("a seed away from the ReLU kink");

    let (y, cache) = mlp_forward(&p, "head", x.view()).unwrap();
    assert_eq!(y.dim(), (3, 4));
    let (dx, grads) = mlp_backward(&p, "head", &cache, r.view()).unwrap();
    fd_check(&p, "head.", &x, &r, &dx, &grads, |q, xx| {
        mlp_forward(q, "head", xx.view()).unwrap().0
    })
    .unwrap();
}

/// The engine runs the layers' ONNX nodes as the formulas say (in plain
/// ndarray here), and those nodes are the ones export appends: the
/// adapter's are `Gemm, Relu, Gemm, Add` over `adapter.*`.
#[test]
fn layers_are_their_onnx_nodes() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut p = Params::new();
    init_adapter(&mut p, 6, 3, &mut rng);
    init_mlp(&mut p, "head", 6, 5, 4, &mut rng);
    randomize(&mut p, &mut rng);
    let x = rand_matrix(&mut rng, 7, 6);
    let w = |n: &str| {
        p.get(n)
            .unwrap()
            .clone()
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap()
    };
    let b = |n: &str| {
        p.get(n)
            .unwrap()
            .clone()
            .into_dimensionality::<ndarray::Ix1>()
            .unwrap()
    };
    let lin =
        |x: &Array2<f32>, l: &str| x.dot(&w(&format!("{l}.weight")).t()) + b(&format!("{l}.bias"));
    let relu = |a: Array2<f32>| a.mapv(|v| v.max(0.0));
    let adapted = &x + &lin(&relu(lin(&x, "adapter.down")), "adapter.up");
    let head = lin(&relu(lin(&adapted, "head.fc1")), "head.fc2");

    let adapter = Layer::adapter(6, 3).unwrap();
    let mlp = Layer::mlp("head", 6, 5, 4).unwrap();
    let a = adapter.embed(&p, x.view()).unwrap();
    let z = mlp.embed(&p, a.view()).unwrap();
    let diff = |u: &Array2<f32>, v: &Array2<f32>| {
        u.iter()
            .zip(v)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(diff(&a, &adapted) < 1e-5, "adapter: {}", diff(&a, &adapted));
    assert!(diff(&z, &head) < 1e-5, "head: {}", diff(&z, &head));
    assert_eq!(adapter.numel(), 6 * 3 + 3 + 3 * 6 + 6);
    assert_eq!(
        adapter.kind(),
        LayerKind::Adapter {
            dim: 6,
            bottleneck: 3
        }
    );

    let nodes = onnx_nodes(adapter.kind(), "adapter", "e_frozen", "e", "e");
    let ops: Vec<&str> = nodes.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["Gemm", "Relu", "Gemm", "Add"]);
    assert_eq!(
        nodes[0].input,
        ["e_frozen", "adapter.down.weight", "adapter.down.bias"]
    );
    assert_eq!(nodes[3].input, ["e_frozen", "e_adapter_up"]);
    assert_eq!(nodes[3].output, ["e"]);
    // The trained names are the exported initialisers' names.
    let names: Vec<&str> = adapter
        .graph()
        .params()
        .iter()
        .map(|q| q.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "adapter.down.weight",
            "adapter.down.bias",
            "adapter.up.weight",
            "adapter.up.bias"
        ]
    );
}

/// `--memory-budget` reads the layers' sizes from their graphs: the
/// parameters of the default adapter and head on 1280-d, and what their
/// backward keeps per sample (each Gemm's input, as its weight trains; the
/// ReLU outputs are those inputs, so no extra mask).
#[test]
fn run_layers_report_their_sizes() {
    let config = edgeclr::adapt::config::AdaptConfig::default();
    let layers = RunLayers::new(&config, 1280).unwrap();
    assert!(layers.predictor.is_none());
    let (d, r, h, o) = (1280, 128, 512, 128);
    assert_eq!(layers.numel(), 2 * d * r + r + d + d * h + h + h * o + o);
    assert_eq!(layers.kept_bytes_per_sample(), 4 * (d + r + d + h));
}

/// The checker is not vacuous: a gradient off by 5 % in one entry, or one
/// with a wrong sign in the input gradient, is reported.
#[test]
fn finite_difference_check_detects_wrong_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut p = Params::new();
    init_mlp(&mut p, "head", 5, 7, 4, &mut rng);
    let x = rand_matrix(&mut rng, 3, 5);
    let r = rand_matrix(&mut rng, 3, 4);
    let (_, cache) = mlp_forward(&p, "head", x.view()).unwrap();
    let (dx, grads) = mlp_backward(&p, "head", &cache, r.view()).unwrap();
    let forward = |q: &Params, xx: &Array2<f32>| mlp_forward(q, "head", xx.view()).unwrap().0;

    let mut bad = grads.clone();
    let w = bad.get_mut("head.fc2.weight").unwrap();
    let (i, big) = w
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .map(|(i, &v)| (i, v))
        .unwrap();
    assert!(big.abs() > 0.1);
    *w.iter_mut().nth(i).unwrap() *= 1.05;
    assert!(fd_check(&p, "head.", &x, &r, &dx, &bad, forward).is_err());

    let bad_dx = -&dx;
    assert!(fd_check(&p, "head.", &x, &r, &bad_dx, &grads, forward).is_err());
    assert!(fd_check(&p, "head.", &x, &r, &dx, &grads, forward).is_ok());
}

// ------------------------------------------------- layers: init, errors

#[test]
fn init_follows_pytorch_default_bounds() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut p = Params::new();
    init_linear(&mut p, "l", 16, 32, &mut rng);
    init_zero_linear(&mut p, "z", 3, 2);
    let bound = 1.0 / 4.0;
    let w = p.get("l.weight").unwrap();
    let b = p.get("l.bias").unwrap();
    assert_eq!(w.shape(), &[32, 16]);
    assert_eq!(b.shape(), &[32]);
    assert!(w.iter().chain(b.iter()).all(|v| v.abs() <= bound));
    // Spread over the interval, not a constant.
    assert!(w.iter().any(|&v| v > 0.8 * bound) && w.iter().any(|&v| v < -0.8 * bound));
    assert_eq!(p.get("z.weight").unwrap().shape(), &[2, 3]);
    assert!(p.get("z.weight").unwrap().iter().all(|&v| v == 0.0));
    assert!(p.get("z.bias").unwrap().iter().all(|&v| v == 0.0));

    let mut m = Params::new();
    init_mlp(&mut m, "predictor", 8, 16, 4, &mut rng);
    let names: Vec<&str> = m.names().collect();
    assert_eq!(
        names,
        [
            "predictor.fc1.bias",
            "predictor.fc1.weight",
            "predictor.fc2.bias",
            "predictor.fc2.weight"
        ]
    );
    assert_eq!(m.get("predictor.fc1.weight").unwrap().shape(), &[16, 8]);
    assert_eq!(m.get("predictor.fc2.weight").unwrap().shape(), &[4, 16]);
}

#[test]
fn adapter_is_identity_at_init_and_moves_after_one_sgd_step() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut p = Params::new();
    init_adapter(&mut p, 8, 2, &mut rng);
    assert_eq!(p.get("adapter.down.weight").unwrap().shape(), &[2, 8]);
    assert_eq!(p.get("adapter.up.weight").unwrap().shape(), &[8, 2]);
    let x = rand_matrix(&mut rng, 5, 8) * 3.0;
    let (y, cache) = adapter_forward(&p, x.view()).unwrap();
    assert_eq!(y, x, "adapter must be exactly the identity at init");

    let r = rand_matrix(&mut rng, 5, 8);
    let (dx, grads) = adapter_backward(&p, &cache, r.view()).unwrap();
    // With up = 0 the input gradient is the residual one and down gets nothing.
    assert_eq!(dx, r);
    assert!(grads
        .get("adapter.down.weight")
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    assert!(grads
        .get("adapter.up.weight")
        .unwrap()
        .iter()
        .any(|&v| v != 0.0));

    let mut sgd = Sgd::new(0.1, 0.9, 0.0, false);
    sgd.step(&mut p, &grads, 0.1).unwrap();
    let (y2, _) = adapter_forward(&p, x.view()).unwrap();
    assert!(
        y2.iter().zip(x.iter()).any(|(a, b)| (a - b).abs() > 1e-4),
        "adapter still the identity after a step"
    );
}

#[test]
fn layer_errors_are_reported() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut p = Params::new();
    init_linear(&mut p, "lin", 5, 4, &mut rng);
    let x = rand_matrix(&mut rng, 3, 5);

    let wrong = rand_matrix(&mut rng, 3, 4);
    assert!(matches!(
        linear_forward(&p, "lin", wrong.view()),
        Err(LayersError::Shape { .. })
    ));
    assert!(matches!(
        linear_forward(&p, "nope", x.view()),
        Err(LayersError::Params(ParamsError::Missing(_)))
    ));
    let mut nan = x.clone();
    nan[[2, 1]] = f32::NAN;
    match linear_forward(&p, "lin", nan.view()) {
        Err(LayersError::NonFinite { row, col, .. }) => assert_eq!((row, col), (2, 1)),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    // Upstream gradient: wrong batch, wrong width, NaN.
    let dy = rand_matrix(&mut rng, 2, 4);
    assert!(matches!(
        linear_backward(&p, "lin", x.view(), dy.view()),
        Err(LayersError::Shape { .. })
    ));
    let dy = rand_matrix(&mut rng, 3, 5);
    assert!(matches!(
        linear_backward(&p, "lin", x.view(), dy.view()),
        Err(LayersError::Shape { .. })
    ));
    let mut dy = rand_matrix(&mut rng, 3, 4);
    dy[[0, 0]] = f32::INFINITY;
    assert!(matches!(
        linear_backward(&p, "lin", x.view(), dy.view()),
        Err(LayersError::NonFinite { .. })
    ));
    // A bias of the wrong length, a 1-D weight.
    let mut q = p.clone();
    q.insert("lin.bias", ArrayD::zeros(vec![3]));
    assert!(matches!(
        linear_forward(&q, "lin", x.view()),
        Err(LayersError::Shape { .. })
    ));
    q.insert("lin.weight", ArrayD::zeros(vec![20]));
    assert!(matches!(
        linear_forward(&q, "lin", x.view()),
        Err(LayersError::Shape { .. })
    ));
    // An adapter whose up projection does not return to the input width.
    let mut a = Params::new();
    init_linear(&mut a, "adapter.down", 5, 2, &mut rng);
    init_zero_linear(&mut a, "adapter.up", 2, 4);
    assert!(matches!(
        adapter_forward(&a, x.view()),
        Err(LayersError::Shape { .. })
    ));
}

// ------------------------------------------------------------ optimisers

/// w (2-D, decayed), b (1-D, never decayed) and three steps of gradients.
fn tiny_problem() -> (Params, Vec<Params>) {
    let mut p = Params::new();
    p.insert("w", array![[1.0f32, -2.0]].into_dyn());
    p.insert("b", array![0.5f32].into_dyn());
    let grads = [
        ([0.5f32, 1.0], 0.25f32),
        ([-0.2, 0.3], -1.0),
        ([0.1, -0.4], 0.5),
    ]
    .iter()
    .map(|&(gw, gb)| {
        let mut g = Params::new();
        g.insert("w", array![[gw[0], gw[1]]].into_dyn());
        g.insert("b", array![gb].into_dyn());
        g
    })
    .collect();
    (p, grads)
}

fn flat(p: &Params, name: &str) -> Vec<f32> {
    p.get(name).unwrap().iter().copied().collect()
}

#[test]
fn sgd_matches_pytorch_formulas() {
    let (lr, mu, wd) = (0.1f64, 0.9f64, 0.1f64);
    // Literal hand arithmetic for w[0] (g = 0.5, then -0.2):
    //   step 1: d = 0.5 + 0.1·1 = 0.6, buf = 0.6, w = 1 − 0.06 = 0.94
    //   step 2: d = −0.2 + 0.1·0.94 = −0.106, buf = 0.54 − 0.106 = 0.434,
    //           w = 0.94 − 0.0434 = 0.8966
    // and for b (no decay, g = 0.25, then -1.0):
    //   step 1: buf = 0.25, b = 0.475; step 2: buf = 0.225 − 1 = −0.775, b = 0.5525
    let (mut p, grads) = tiny_problem();
    let mut opt = Sgd::new(lr as f32, mu as f32, wd as f32, false);
    opt.step(&mut p, &grads[0], lr as f32).unwrap();
    assert!((flat(&p, "w")[0] - 0.94).abs() < 1e-6);
    assert!((flat(&p, "b")[0] - 0.475).abs() < 1e-6);
    opt.step(&mut p, &grads[1], lr as f32).unwrap();
    assert!((flat(&p, "w")[0] - 0.8966).abs() < 1e-6);
    assert!((flat(&p, "b")[0] - 0.5525).abs() < 1e-6);

    // All entries, three steps, scalar f64 reference; Nesterov too.
    for nesterov in [false, true] {
        let (mut p, grads) = tiny_problem();
        let mut reference: Vec<(String, Vec<f64>, bool)> = ["b", "w"]
            .iter()
            .map(|n| {
                let v = flat(&p, n).into_iter().map(f64::from).collect();
                (n.to_string(), v, *n == "w")
            })
            .collect();
        let mut bufs: Vec<Vec<f64>> = reference.iter().map(|r| vec![0.0; r.1.len()]).collect();
        let mut opt = Sgd::new(lr as f32, mu as f32, wd as f32, nesterov);
        for (t, g) in grads.iter().enumerate() {
            opt.step(&mut p, g, lr as f32).unwrap();
            for ((name, w, decay), buf) in reference.iter_mut().zip(bufs.iter_mut()) {
                let gv = flat(g, name);
                for k in 0..w.len() {
                    let d = f64::from(gv[k]) + if *decay { wd * w[k] } else { 0.0 };
                    buf[k] = if t == 0 { d } else { mu * buf[k] + d };
                    let upd = if nesterov { d + mu * buf[k] } else { buf[k] };
                    w[k] -= lr * upd;
                }
                for (k, got) in flat(&p, name).into_iter().enumerate() {
                    assert!(
                        (f64::from(got) - w[k]).abs() < 1e-6,
                        "nesterov={nesterov} step {t} {name}[{k}]: {got} vs {}",
                        w[k]
                    );
                }
            }
        }
    }
}

#[test]
fn adamw_matches_pytorch_formulas() {
    let (lr, b1, b2, eps, wd) = (0.1f64, 0.9f64, 0.999f64, 1e-8f64, 0.01f64);
    // Literal hand arithmetic for w[0] (g = 0.5): decay 1 → 0.999;
    // m = 0.05, v = 2.5e-4; m̂ = 0.5, v̂ = 0.25, √v̂ = 0.5 → w = 0.999 − 0.1 = 0.899.
    // b (no decay, g = 0.25): b = 0.5 − 0.1 = 0.4.
    let (mut p, grads) = tiny_problem();
    let mut opt = AdamW::new(lr as f32, b1 as f32, b2 as f32, eps as f32, wd as f32);
    opt.step(&mut p, &grads[0], lr as f32).unwrap();
    assert!((flat(&p, "w")[0] - 0.899).abs() < 1e-6);
    assert!((flat(&p, "b")[0] - 0.4).abs() < 1e-6);

    // All entries, three steps with a varying learning rate, f64 reference.
    let (mut p, grads) = tiny_problem();
    let mut opt = AdamW::new(lr as f32, b1 as f32, b2 as f32, eps as f32, wd as f32);
    let mut reference: Vec<(String, Vec<f64>, bool)> = ["b", "w"]
        .iter()
        .map(|n| {
            let v = flat(&p, n).into_iter().map(f64::from).collect();
            (n.to_string(), v, *n == "w")
        })
        .collect();
    let mut ms: Vec<Vec<f64>> = reference.iter().map(|r| vec![0.0; r.1.len()]).collect();
    let mut vs = ms.clone();
    for (t, g) in grads.iter().enumerate() {
        let step_lr = lr * (1.0 - 0.25 * t as f64);
        opt.step(&mut p, g, step_lr as f32).unwrap();
        let tt = (t + 1) as i32;
        for (((name, w, decay), m), v) in reference.iter_mut().zip(ms.iter_mut()).zip(vs.iter_mut())
        {
            let gv = flat(g, name);
            for k in 0..w.len() {
                let gk = f64::from(gv[k]);
                if *decay {
                    w[k] *= 1.0 - step_lr * wd;
                }
                m[k] = b1 * m[k] + (1.0 - b1) * gk;
                v[k] = b2 * v[k] + (1.0 - b2) * gk * gk;
                let m_hat = m[k] / (1.0 - b1.powi(tt));
                let v_hat = v[k] / (1.0 - b2.powi(tt));
                w[k] -= step_lr * m_hat / (v_hat.sqrt() + eps);
            }
            for (k, got) in flat(&p, name).into_iter().enumerate() {
                assert!(
                    (f64::from(got) - w[k]).abs() < 1e-5,
                    "step {t} {name}[{k}]: {got} vs {}",
                    w[k]
                );
            }
        }
    }
    assert_eq!(opt.step, 3);
}

#[test]
fn adamw_minimises_a_quadratic() {
    // f(w) = ½ Σ a_k (w_k − c_k)², ∇f = a ⊙ (w − c), badly conditioned.
    let a = [1.0f32, 10.0, 100.0, 0.1];
    let c = [1.0f32, -2.0, 0.5, 3.0];
    let mut p = Params::new();
    p.insert("x", ArrayD::zeros(vec![4]));
    let loss = |p: &Params| -> f64 {
        let w = p.get("x").unwrap();
        (0..4)
            .map(|k| 0.5 * f64::from(a[k]) * f64::from(w[[k]] - c[k]).powi(2))
            .sum()
    };
    let start = loss(&p);
    let sched = CosineSchedule {
        base_lr: 0.1,
        warmup_steps: 10,
        total_steps: 600,
        min_lr: 1e-4,
    };
    let mut opt = AdamW::new(0.1, 0.9, 0.999, 1e-8, 0.01);
    for step in 0..600 {
        let w = p.get("x").unwrap();
        let mut g = Params::new();
        g.insert(
            "x",
            ArrayD::from_shape_fn(vec![4], |i| a[i[0]] * (w[[i[0]]] - c[i[0]])),
        );
        opt.step(&mut p, &g, sched.lr(step)).unwrap();
    }
    let w = flat(&p, "x");
    for k in 0..4 {
        assert!((w[k] - c[k]).abs() < 1e-2, "x[{k}] = {} vs {}", w[k], c[k]);
    }
    assert!(loss(&p) < 1e-4 * start);
}

fn state_round_trip(make: impl Fn() -> Box<dyn Optimizer>) {
    let (mut p, grads) = tiny_problem();
    let mut a = make();
    a.step(&mut p, &grads[0], 0.05).unwrap();
    a.step(&mut p, &grads[1], 0.05).unwrap();
    let state = a.state();

    // A checkpoint map may also hold the model: foreign names are ignored.
    let mut checkpoint = state.clone();
    checkpoint.extend(p.clone());
    let mut b = make();
    b.load_state(&checkpoint).unwrap();
    assert_eq!(b.state(), state);

    let mut pa = p.clone();
    let mut pb = p.clone();
    for g in [&grads[2], &grads[0]] {
        a.step(&mut pa, g, 0.03).unwrap();
        b.step(&mut pb, g, 0.03).unwrap();
        assert_eq!(pa, pb, "restored optimiser diverged");
    }
    // Without the state the next step differs (the state matters).
    let mut c = make();
    let mut pc = p.clone();
    c.step(&mut pc, &grads[2], 0.03).unwrap();
    let mut pa2 = p.clone();
    let mut a2 = make();
    a2.load_state(&state).unwrap();
    a2.step(&mut pa2, &grads[2], 0.03).unwrap();
    assert_ne!(pc, pa2);
}

#[test]
fn optimizer_state_round_trip_gives_identical_steps() {
    state_round_trip(|| Box::new(Sgd::new(0.1, 0.9, 0.1, false)));
    state_round_trip(|| Box::new(AdamW::new(0.1, 0.9, 0.999, 1e-8, 0.01)));

    let (mut p, grads) = tiny_problem();
    let mut sgd = Sgd::new(0.1, 0.9, 0.1, false);
    sgd.step(&mut p, &grads[0], 0.1).unwrap();
    let names: Vec<String> = sgd.state().names().map(str::to_owned).collect();
    assert_eq!(names, ["sgd.momentum.b", "sgd.momentum.w"]);
    let mut adam = AdamW::default();
    adam.step(&mut p, &grads[0], 0.1).unwrap();
    let s = adam.state();
    let names: Vec<&str> = s.names().collect();
    assert_eq!(
        names,
        [
            "adamw.m.b",
            "adamw.m.w",
            "adamw.step",
            "adamw.v.b",
            "adamw.v.w"
        ]
    );
    assert_eq!(s.get("adamw.step").unwrap().shape(), &[1]);
    assert_eq!(s.get("adamw.step").unwrap()[[0]], 1.0);

    // Broken states are refused.
    let mut bad = s.clone();
    bad.insert("adamw.step", ArrayD::from_elem(vec![1], 1.5));
    assert!(matches!(
        adam.load_state(&bad),
        Err(OptimError::InvalidState(_))
    ));
    let mut bad = s.clone();
    bad.insert("adamw.v.w", ArrayD::zeros(vec![3]));
    assert!(adam.load_state(&bad).is_err());
    let mut bad = s.clone();
    bad.insert("adamw.m.w", ArrayD::from_elem(vec![1, 2], f32::NAN));
    assert!(matches!(
        adam.load_state(&bad),
        Err(OptimError::NonFinite(_))
    ));
    assert!(matches!(
        adam.load_state(&Params::new()),
        Err(OptimError::InvalidState(_))
    ));
    // A restored buffer of the wrong shape is caught at the next step.
    let mut bad = sgd.state();
    bad.insert("sgd.momentum.w", ArrayD::zeros(vec![2, 1]));
    sgd.load_state(&bad).unwrap();
    assert!(matches!(
        sgd.step(&mut p, &grads[1], 0.1),
        Err(OptimError::Params(ParamsError::Shape { .. }))
    ));
}

#[test]
fn bad_gradients_leave_parameters_untouched() {
    let (p0, grads) = tiny_problem();
    let optimisers: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Sgd::new(0.1, 0.9, 0.1, true)),
        Box::new(AdamW::default()),
    ];
    for mut opt in optimisers {
        let mut p = p0.clone();
        opt.step(&mut p, &grads[0], 0.1).unwrap();
        let (before, state) = (p.clone(), opt.state());

        let mut nan = grads[1].clone();
        nan.get_mut("w").unwrap()[[0, 1]] = f32::NAN;
        assert!(matches!(
            opt.step(&mut p, &nan, 0.1),
            Err(OptimError::NonFinite(_))
        ));
        let mut unknown = grads[1].clone();
        unknown.insert("zzz", ArrayD::zeros(vec![1]));
        assert!(matches!(
            opt.step(&mut p, &unknown, 0.1),
            Err(OptimError::Params(ParamsError::Missing(_)))
        ));
        let mut shape = grads[1].clone();
        shape.insert("w", ArrayD::zeros(vec![2]));
        assert!(matches!(
            opt.step(&mut p, &shape, 0.1),
            Err(OptimError::Params(ParamsError::Shape { .. }))
        ));
        assert!(matches!(
            opt.step(&mut p, &grads[1], f32::NAN),
            Err(OptimError::InvalidParameter { .. })
        ));
        assert_eq!(p, before);
        assert_eq!(opt.state(), state);

        // Parameters without a gradient are skipped.
        let mut only_b = Params::new();
        only_b.insert("b", array![1.0f32].into_dyn());
        opt.step(&mut p, &only_b, 0.1).unwrap();
        assert_eq!(p.get("w").unwrap(), before.get("w").unwrap());
        assert_ne!(p.get("b").unwrap(), before.get("b").unwrap());
    }
    let mut bad = Sgd::new(0.1, 1.0, 0.0, false);
    let mut p = p0.clone();
    assert!(bad.step(&mut p, &grads[0], 0.1).is_err());
    let mut bad = Sgd::new(0.1, 0.0, 0.0, true);
    assert!(bad.step(&mut p, &grads[0], 0.1).is_err());
    let mut bad = AdamW::new(0.1, 0.9, 0.999, 0.0, 0.0);
    assert!(bad.step(&mut p, &grads[0], 0.1).is_err());
    assert_eq!(p, p0);
}

// ------------------------------------------------------ schedule, kind

#[test]
fn cosine_schedule_warms_up_then_decays_to_min() {
    let s = CosineSchedule {
        base_lr: 0.5,
        warmup_steps: 10,
        total_steps: 110,
        min_lr: 0.01,
    };
    assert_eq!(s.lr(0), 0.0);
    assert!((s.lr(5) - 0.25).abs() < 1e-7);
    assert!((s.lr(10) - 0.5).abs() < 1e-7);
    // Half way through the cosine: (base + min) / 2.
    assert!((s.lr(60) - 0.255).abs() < 1e-6);
    assert!((s.lr(110) - 0.01).abs() < 1e-7);
    assert!((s.lr(1000) - 0.01).abs() < 1e-7);
    for step in 0..10 {
        assert!(s.lr(step + 1) > s.lr(step), "warm-up must increase");
    }
    for step in 10..110 {
        assert!(s.lr(step + 1) < s.lr(step), "must decrease at {step}");
    }
    let no_warmup = CosineSchedule {
        warmup_steps: 0,
        ..s
    };
    assert!((no_warmup.lr(0) - 0.5).abs() < 1e-7);
    assert!((no_warmup.lr(110) - 0.01).abs() < 1e-7);
}

#[test]
fn optimizer_kind_parses_cli_values() {
    assert_eq!("sgd".parse::<OptimizerKind>().unwrap(), OptimizerKind::Sgd);
    assert_eq!(
        " AdamW ".parse::<OptimizerKind>().unwrap(),
        OptimizerKind::AdamW
    );
    assert!(matches!(
        "adam".parse::<OptimizerKind>(),
        Err(OptimError::UnknownKind(_))
    ));
    for kind in [OptimizerKind::Sgd, OptimizerKind::AdamW] {
        assert_eq!(kind.to_string().parse::<OptimizerKind>().unwrap(), kind);
        let (mut p, grads) = tiny_problem();
        let mut opt = kind.build(0.1, 0.0);
        opt.step(&mut p, &grads[0], 0.1).unwrap();
        assert_ne!(p, tiny_problem().0);
    }
}
