//! Hand-differentiated layers of the trainable head, reading their weights
//! from a [`Params`] map by name.
//!
//! | layer | forward | parameter names |
//! | --- | --- | --- |
//! | linear | `y = x·Wᵀ + b` | `{prefix}.weight` `[out, in]`, `{prefix}.bias` `[out]` |
//! | adapter (Houlsby-style residual bottleneck) | `y = x + up(relu(down(x)))` | `adapter.down.*`, `adapter.up.*` |
//! | MLP (projection head, BYOL predictor) | `y = fc2(relu(fc1(x)))` | `{prefix}.fc1.*`, `{prefix}.fc2.*` |
//!
//! Every forward takes a batch `x ∈ R^{B×in}` (rows are samples) and every
//! backward takes the upstream gradient `dy = ∂L/∂y` and returns `∂L/∂x`
//! together with the parameter gradients as a [`Params`] under the same names
//! as the weights, ready for [`Params::add_assign`] or an optimiser step.
//!
//! Backward formulas (for `y = x·Wᵀ + b`): `∂L/∂x = dy·W`,
//! `∂L/∂W = dyᵀ·x`, `∂L/∂b = Σ_rows dy`. ReLU passes the gradient where its
//! output is strictly positive (sub-gradient 0 at the kink, as PyTorch).
//!
//! Inputs and upstream gradients are validated (shapes, NaN/±Inf) so that a
//! corrupted batch is reported instead of silently poisoning the weights.

use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, Axis, Ix1, Ix2, Zip};
use rand::Rng;

use super::params::{Params, ParamsError};

/// Prefix of the residual adapter's parameters.
pub const ADAPTER_PREFIX: &str = "adapter";

/// Errors of the layer forward/backward passes.
#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    /// A parameter is missing or has the wrong shape.
    #[error(transparent)]
    Params(#[from] ParamsError),

    /// An input, upstream gradient or weight does not have the shape the layer needs.
    #[error("{what} has shape {got:?}, expected {expected}")]
    Shape {
        what: String,
        got: Vec<usize>,
        expected: String,
    },

    /// NaN or ±Inf in an input or upstream gradient.
    #[error("{what} has a non-finite value ({value}) at row {row}, column {col}")]
    NonFinite {
        what: String,
        row: usize,
        col: usize,
        value: f32,
    },
}

/// Result alias for this module.
pub type Result<T, E = LayersError> = std::result::Result<T, E>;

// ------------------------------------------------------------------ helpers

fn weight<'a>(p: &'a Params, prefix: &str) -> Result<ArrayView2<'a, f32>> {
    let name = format!("{prefix}.weight");
    let w = p.get(&name)?;
    w.view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| LayersError::Shape {
            what: name,
            got: w.shape().to_vec(),
            expected: "[out, in]".to_owned(),
        })
}

fn bias<'a>(p: &'a Params, prefix: &str, out: usize) -> Result<ArrayView1<'a, f32>> {
    let name = format!("{prefix}.bias");
    let b = p.get(&name)?;
    match b.view().into_dimensionality::<Ix1>() {
        Ok(v) if v.len() == out => Ok(v),
        _ => Err(LayersError::Shape {
            what: name,
            got: b.shape().to_vec(),
            expected: format!("[{out}]"),
        }),
    }
}

fn check_finite(what: &str, a: ArrayView2<f32>) -> Result<()> {
    if let Some(((row, col), &value)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(LayersError::NonFinite {
            what: what.to_owned(),
            row,
            col,
            value,
        });
    }
    Ok(())
}

fn check_cols(what: &str, a: ArrayView2<f32>, cols: usize) -> Result<()> {
    if a.ncols() != cols {
        return Err(LayersError::Shape {
            what: what.to_owned(),
            got: a.shape().to_vec(),
            expected: format!("[batch, {cols}]"),
        });
    }
    Ok(())
}

fn relu(mut a: Array2<f32>) -> Array2<f32> {
    a.mapv_inplace(|v| v.max(0.0));
    a
}

/// `dh ⊙ 1[h > 0]`, in place.
fn relu_backward(mut dh: Array2<f32>, h: ArrayView2<f32>) -> Array2<f32> {
    Zip::from(&mut dh).and(h).for_each(|d, &hv| {
        if hv <= 0.0 {
            *d = 0.0;
        }
    });
    dh
}

// ------------------------------------------------------------------- linear

/// `y = x·Wᵀ + b` with `W = {prefix}.weight` `[out, in]` and
/// `b = {prefix}.bias` `[out]`; `x` is `[batch, in]`, `y` is `[batch, out]`.
pub fn linear_forward(p: &Params, prefix: &str, x: ArrayView2<f32>) -> Result<Array2<f32>> {
    let w = weight(p, prefix)?;
    let b = bias(p, prefix, w.nrows())?;
    check_cols("linear input", x, w.ncols())?;
    check_finite("linear input", x)?;
    let mut y = x.dot(&w.t());
    y += &b;
    Ok(y)
}

/// Backward of [`linear_forward`] at input `x` for upstream gradient `dy`
/// `[batch, out]`: returns `∂L/∂x = dy·W` and the gradients
/// `{prefix}.weight = dyᵀ·x`, `{prefix}.bias = Σ_rows dy`.
pub fn linear_backward(
    p: &Params,
    prefix: &str,
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
) -> Result<(Array2<f32>, Params)> {
    let w = weight(p, prefix)?;
    bias(p, prefix, w.nrows())?;
    check_cols("linear input", x, w.ncols())?;
    check_cols("linear upstream gradient", dy, w.nrows())?;
    if dy.nrows() != x.nrows() {
        return Err(LayersError::Shape {
            what: "linear upstream gradient".to_owned(),
            got: dy.shape().to_vec(),
            expected: format!("[{}, {}]", x.nrows(), w.nrows()),
        });
    }
    check_finite("linear upstream gradient", dy)?;
    let dx = dy.dot(&w);
    let dw = dy.t().dot(&x);
    let db = dy.sum_axis(Axis(0));
    let mut grads = Params::new();
    grads.insert(format!("{prefix}.weight"), dw.into_dyn());
    grads.insert(format!("{prefix}.bias"), db.into_dyn());
    Ok((dx, grads))
}

/// PyTorch's default `nn.Linear` initialisation: `W` and `b` drawn from
/// `U(−1/√in, 1/√in)` (Kaiming-uniform with `a = √5`).
///
/// # Panics
/// If `in_dim == 0`.
pub fn init_linear(
    params: &mut Params,
    prefix: &str,
    in_dim: usize,
    out_dim: usize,
    rng: &mut impl Rng,
) {
    assert!(in_dim > 0, "init_linear: in_dim must be positive");
    let bound = 1.0 / (in_dim as f32).sqrt();
    let w =
        ArrayD::from_shape_simple_fn(vec![out_dim, in_dim], || rng.random_range(-bound..=bound));
    let b = ArrayD::from_shape_simple_fn(vec![out_dim], || rng.random_range(-bound..=bound));
    params.insert(format!("{prefix}.weight"), w);
    params.insert(format!("{prefix}.bias"), b);
}

/// A linear layer with all-zero weight and bias (the adapter's up
/// projection, so that the adapter starts as the identity).
pub fn init_zero_linear(params: &mut Params, prefix: &str, in_dim: usize, out_dim: usize) {
    params.insert(
        format!("{prefix}.weight"),
        ArrayD::zeros(vec![out_dim, in_dim]),
    );
    params.insert(format!("{prefix}.bias"), ArrayD::zeros(vec![out_dim]));
}

// ------------------------------------------------------------------ adapter

/// What [`adapter_backward`] needs from the forward pass.
#[derive(Debug, Clone)]
pub struct AdapterCache {
    /// The adapter input `x` `[batch, d]`.
    pub x: Array2<f32>,
    /// `relu(down(x))` `[batch, r]`.
    pub h: Array2<f32>,
}

/// Adds a residual bottleneck adapter `d → bottleneck → d` under
/// `adapter.down.*` (PyTorch default init) and `adapter.up.*` (zeros), so
/// the adapter is exactly the identity at init.
pub fn init_adapter(params: &mut Params, dim: usize, bottleneck: usize, rng: &mut impl Rng) {
    init_linear(params, "adapter.down", dim, bottleneck, rng);
    init_zero_linear(params, "adapter.up", bottleneck, dim);
}

/// `y = x + up(relu(down(x)))`.
pub fn adapter_forward(p: &Params, x: ArrayView2<f32>) -> Result<(Array2<f32>, AdapterCache)> {
    let h = relu(linear_forward(p, "adapter.down", x)?);
    let mut y = linear_forward(p, "adapter.up", h.view())?;
    if y.dim() != x.dim() {
        return Err(LayersError::Shape {
            what: "adapter.up output".to_owned(),
            got: y.shape().to_vec(),
            expected: format!("{:?} (the adapter input)", x.shape()),
        });
    }
    y += &x;
    let cache = AdapterCache { x: x.to_owned(), h };
    Ok((y, cache))
}

/// Backward of [`adapter_forward`]: `∂L/∂x` (residual path plus bottleneck
/// path) and the gradients of `adapter.down.*` and `adapter.up.*`.
pub fn adapter_backward(
    p: &Params,
    cache: &AdapterCache,
    dy: ArrayView2<f32>,
) -> Result<(Array2<f32>, Params)> {
    let (dh, mut grads) = linear_backward(p, "adapter.up", cache.h.view(), dy)?;
    let da = relu_backward(dh, cache.h.view());
    let (dx_down, grads_down) = linear_backward(p, "adapter.down", cache.x.view(), da.view())?;
    grads.extend(grads_down);
    let dx = dx_down + dy;
    Ok((dx, grads))
}

// ---------------------------------------------------------------------- MLP

/// What [`mlp_backward`] needs from the forward pass.
#[derive(Debug, Clone)]
pub struct MlpCache {
    /// The MLP input `x` `[batch, in]`.
    pub x: Array2<f32>,
    /// `relu(fc1(x))` `[batch, hidden]`.
    pub h: Array2<f32>,
}

/// Adds a two-layer MLP `in → hidden → out` under `{prefix}.fc1.*` and
/// `{prefix}.fc2.*` (PyTorch default init); `prefix` is `"head"` or
/// `"predictor"` in edgeclr.
pub fn init_mlp(
    params: &mut Params,
    prefix: &str,
    in_dim: usize,
    hidden: usize,
    out_dim: usize,
    rng: &mut impl Rng,
) {
    init_linear(params, &format!("{prefix}.fc1"), in_dim, hidden, rng);
    init_linear(params, &format!("{prefix}.fc2"), hidden, out_dim, rng);
}

/// `y = fc2(relu(fc1(x)))`.
pub fn mlp_forward(
    p: &Params,
    prefix: &str,
    x: ArrayView2<f32>,
) -> Result<(Array2<f32>, MlpCache)> {
    let h = relu(linear_forward(p, &format!("{prefix}.fc1"), x)?);
    let y = linear_forward(p, &format!("{prefix}.fc2"), h.view())?;
    let cache = MlpCache { x: x.to_owned(), h };
    Ok((y, cache))
}

/// Backward of [`mlp_forward`]: `∂L/∂x` and the gradients of
/// `{prefix}.fc1.*` and `{prefix}.fc2.*`.
pub fn mlp_backward(
    p: &Params,
    prefix: &str,
    cache: &MlpCache,
    dy: ArrayView2<f32>,
) -> Result<(Array2<f32>, Params)> {
    let (dh, mut grads) = linear_backward(p, &format!("{prefix}.fc2"), cache.h.view(), dy)?;
    let da = relu_backward(dh, cache.h.view());
    let (dx, grads1) = linear_backward(p, &format!("{prefix}.fc1"), cache.x.view(), da.view())?;
    grads.extend(grads1);
    Ok((dx, grads))
}
