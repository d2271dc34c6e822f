//! The layers a run adds on top of the encoder — the residual adapter, the
//! projection head, BYOL's predictor — written as ONNX nodes, and trained by
//! the engine ([`super::nn`]) like the encoder's own layers.
//!
//! | layer | forward | ONNX nodes | parameter names |
//! | --- | --- | --- | --- |
//! | linear | `y = x·Wᵀ + b` | `Gemm` (`transB = 1`) | `{prefix}.weight` `[out, in]`, `{prefix}.bias` `[out]` |
//! | adapter (Houlsby-style residual bottleneck) | `y = x + up(relu(down(x)))` | `Gemm`, `Relu`, `Gemm`, `Add` | `adapter.down.*`, `adapter.up.*` |
//! | MLP (projection head, BYOL predictor) | `y = fc2(relu(fc1(x)))` | `Gemm`, `Relu`, `Gemm` | `{prefix}.fc1.*`, `{prefix}.fc2.*` |
//!
//! Why ONNX nodes and not hand-written math: one description serves both
//! ends. [`Layer`] imports the nodes into an engine graph, whose ops have
//! their forward and backward checked against tract and finite differences;
//! export appends **the same nodes** ([`onnx_nodes`]) to the model with the
//! trained weights as initialisers, so what was trained is what ships.
//! Adding a layer kind is one arm of [`onnx_nodes`].
//!
//! A layer runs a batch as one engine pass (no row chunks): its weight
//! gradient is then one GEMM over the batch, the same bits as the
//! hand-differentiated layers this module replaced. Inputs and upstream
//! gradients are validated (shapes, NaN/±Inf) so that a corrupted batch is
//! reported instead of silently poisoning the weights.

use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayView2, Ix2};
use rand::Rng;
use tract_onnx::pb;

use super::nn::{self, Graph, KeepPlan, NnError, Tape};
use super::params::{ParamId, Params, ParamsError};

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

    /// The engine refused the layer's nodes (a bug if it ever happens: the
    /// nodes are this module's own).
    #[error("layer graph: {0}")]
    Engine(#[from] NnError),
}

/// Result alias for this module.
pub type Result<T, E = LayersError> = std::result::Result<T, E>;

/// The kinds of layer, with their widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `in → out`.
    Linear { input: usize, output: usize },
    /// `dim → bottleneck → dim`, plus the input.
    Adapter { dim: usize, bottleneck: usize },
    /// `in → hidden → out`.
    Mlp {
        input: usize,
        hidden: usize,
        output: usize,
    },
}

impl LayerKind {
    fn widths(self) -> (usize, usize) {
        match self {
            LayerKind::Linear { input, output } => (input, output),
            LayerKind::Adapter { dim, .. } => (dim, dim),
            LayerKind::Mlp { input, output, .. } => (input, output),
        }
    }

    /// `(suffix, shape)` of each parameter, in the nodes' order.
    fn param_shapes(self) -> Vec<(&'static str, Vec<usize>)> {
        match self {
            LayerKind::Linear { input, output } => {
                vec![("weight", vec![output, input]), ("bias", vec![output])]
            }
            LayerKind::Adapter { dim, bottleneck } => vec![
                ("down.weight", vec![bottleneck, dim]),
                ("down.bias", vec![bottleneck]),
                ("up.weight", vec![dim, bottleneck]),
                ("up.bias", vec![dim]),
            ],
            LayerKind::Mlp {
                input,
                hidden,
                output,
            } => vec![
                ("fc1.weight", vec![hidden, input]),
                ("fc1.bias", vec![hidden]),
                ("fc2.weight", vec![output, hidden]),
                ("fc2.bias", vec![output]),
            ],
        }
    }

    /// The kind of the `prefix` layer whose weights are in `p`, read from
    /// their shapes (`mlp`: an MLP rather than an adapter or linear layer).
    fn from_params(p: &Params, prefix: &str, mlp: bool) -> Result<Self> {
        let matrix = |name: String| -> Result<(usize, usize)> {
            let w = p.get(&name)?;
            match *w.shape() {
                [rows, cols] => Ok((rows, cols)),
                _ => Err(LayersError::Shape {
                    what: name,
                    got: w.shape().to_vec(),
                    expected: "[out, in]".to_owned(),
                }),
            }
        };
        if mlp {
            let (hidden, input) = matrix(format!("{prefix}.fc1.weight"))?;
            let (output, _) = matrix(format!("{prefix}.fc2.weight"))?;
            Ok(LayerKind::Mlp {
                input,
                hidden,
                output,
            })
        } else if p.contains(&format!("{prefix}.down.weight")) {
            let (bottleneck, dim) = matrix(format!("{prefix}.down.weight"))?;
            Ok(LayerKind::Adapter { dim, bottleneck })
        } else {
            let (output, input) = matrix(format!("{prefix}.weight"))?;
            Ok(LayerKind::Linear { input, output })
        }
    }
}

/// The ONNX nodes of a `kind` layer whose parameters are named
/// `{prefix}.*`, reading `input` and writing `output`; the tensors between
/// are `{stem}_{prefix}_{step}` and the nodes `edgeclr/{prefix}/{step}`.
/// Export appends exactly these (with `stem` the embedding's name).
pub fn onnx_nodes(
    kind: LayerKind,
    prefix: &str,
    input: &str,
    output: &str,
    stem: &str,
) -> Vec<pb::NodeProto> {
    use crate::onnx::{gemm, node};
    let name = |step: &str| format!("edgeclr/{prefix}/{step}");
    let value = |step: &str| format!("{stem}_{prefix}_{step}");
    let param = |suffix: &str| format!("{prefix}.{suffix}");
    match kind {
        LayerKind::Linear { .. } => vec![gemm(
            &name("linear"),
            input,
            &param("weight"),
            &param("bias"),
            output,
        )],
        LayerKind::Adapter { .. } => vec![
            gemm(
                &name("down"),
                input,
                &param("down.weight"),
                &param("down.bias"),
                &value("down"),
            ),
            node(
                &name("relu"),
                "Relu",
                &[&value("down")],
                &value("relu"),
                vec![],
            ),
            gemm(
                &name("up"),
                &value("relu"),
                &param("up.weight"),
                &param("up.bias"),
                &value("up"),
            ),
            node(&name("add"), "Add", &[input, &value("up")], output, vec![]),
        ],
        LayerKind::Mlp { .. } => vec![
            gemm(
                &name("fc1"),
                input,
                &param("fc1.weight"),
                &param("fc1.bias"),
                &value("fc1"),
            ),
            node(
                &name("relu"),
                "Relu",
                &[&value("fc1")],
                &value("relu"),
                vec![],
            ),
            gemm(
                &name("fc2"),
                &value("relu"),
                &param("fc2.weight"),
                &param("fc2.bias"),
                output,
            ),
        ],
    }
}

/// One layer as an engine graph, its parameters named in a [`Params`] (the
/// run's storage and checkpoint format) and resolved once to handles there
/// ([`Layer::resolve`]).
#[derive(Debug, Clone)]
pub struct Layer {
    kind: LayerKind,
    graph: Arc<Graph>,
    /// The [`Params`] name of each engine parameter, by id.
    keys: Vec<String>,
    /// The handle of each, once resolved (empty before: names are used).
    ids: Vec<ParamId>,
    /// Every parameter trains.
    trainable: Vec<bool>,
    /// What the backward reads (ReLU outputs as masks).
    keep: KeepPlan,
}

/// What [`Layer::backward`] needs from [`Layer::forward`].
#[derive(Debug, Clone)]
pub struct LayerCache {
    tape: Tape,
}

impl Layer {
    /// A `kind` layer with parameters `{prefix}.*`.
    pub fn new(kind: LayerKind, prefix: &str) -> Result<Self> {
        let (input, _) = kind.widths();
        let shapes = kind.param_shapes();
        let graph = pb::GraphProto {
            node: onnx_nodes(kind, prefix, "x", "y", "x"),
            initializer: shapes
                .iter()
                .map(|(suffix, shape)| {
                    crate::onnx::f32_initializer(
                        &format!("{prefix}.{suffix}"),
                        &ArrayD::zeros(shape.clone()),
                    )
                })
                .collect(),
            ..Default::default()
        };
        let imported = nn::import(&graph, "x", &[input], "y")?;
        let g = imported.graph;
        let keys: Vec<String> = g.params().iter().map(|p| p.name.clone()).collect();
        let trainable = vec![true; keys.len()];
        let keep = g.keep_plan(&trainable);
        Ok(Self {
            kind,
            graph: Arc::new(g),
            keys,
            ids: Vec::new(),
            trainable,
            keep,
        })
    }

    /// Resolves the layer's parameters in `p` once, checking their shapes:
    /// from then on its passes reach them by handle in `p` and in every
    /// store made from it (the momentum copy, the gradients), with no name
    /// looked up. A store of another layout still works, by name.
    pub fn resolve(&mut self, p: &Params) -> Result<()> {
        let ids = self
            .keys
            .iter()
            .zip(self.graph.params())
            .map(|(key, spec)| {
                let id = p.id(key)?;
                check_shape(key, p.at(id)?, &spec.shape)?;
                Ok(id)
            })
            .collect::<Result<_>>()?;
        self.ids = ids;
        Ok(())
    }

    /// The same layer with its parameters resolved in `p`.
    pub fn resolved(mut self, p: &Params) -> Result<Self> {
        self.resolve(p)?;
        Ok(self)
    }

    /// The residual adapter (`adapter.*`).
    pub fn adapter(dim: usize, bottleneck: usize) -> Result<Self> {
        Self::new(LayerKind::Adapter { dim, bottleneck }, ADAPTER_PREFIX)
    }

    /// A two-layer MLP (`{prefix}.fc1.*`, `{prefix}.fc2.*`).
    pub fn mlp(prefix: &str, input: usize, hidden: usize, output: usize) -> Result<Self> {
        Self::new(
            LayerKind::Mlp {
                input,
                hidden,
                output,
            },
            prefix,
        )
    }

    /// The `prefix` layer of the weights in `p`, its widths read from them:
    /// an MLP when `mlp`, else an adapter (`{prefix}.down.*`) or a linear
    /// layer (`{prefix}.weight`).
    pub fn from_params(p: &Params, prefix: &str, mlp: bool) -> Result<Self> {
        Self::new(LayerKind::from_params(p, prefix, mlp)?, prefix)
    }

    /// Its kind and widths.
    pub fn kind(&self) -> LayerKind {
        self.kind
    }

    /// The engine graph it runs on.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Number of parameter values.
    pub fn numel(&self) -> usize {
        self.graph
            .params()
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Bytes of activations per sample its backward keeps.
    pub fn kept_bytes_per_sample(&self) -> usize {
        self.graph.kept_bytes_per_sample(&self.trainable)
    }

    fn bind<'a>(&self, p: &'a Params) -> Result<Vec<&'a ArrayD<f32>>> {
        self.keys
            .iter()
            .zip(self.graph.params())
            .enumerate()
            .map(|(i, (key, spec))| {
                let t = p.get_resolved(self.ids.get(i).copied(), key)?;
                check_shape(key, t, &spec.shape)?;
                Ok(t)
            })
            .collect()
    }

    fn run(&self, p: &Params, x: ArrayView2<f32>, keep: &KeepPlan) -> Result<(Array2<f32>, Tape)> {
        let (input, _) = self.kind.widths();
        check_cols("layer input", x, input)?;
        check_finite("layer input", x)?;
        let params = self.bind(p)?;
        let (y, tape) = self
            .graph
            .forward_keeping(&params, x.to_owned().into_dyn(), Some(keep))?;
        Ok((into_matrix(y)?, tape))
    }

    /// The layer's output for `x` `[batch, in]`, and what its backward needs.
    pub fn forward(&self, p: &Params, x: ArrayView2<f32>) -> Result<(Array2<f32>, LayerCache)> {
        let (y, tape) = self.run(p, x, &self.keep)?;
        Ok((y, LayerCache { tape }))
    }

    /// The output alone, keeping nothing for a backward.
    pub fn embed(&self, p: &Params, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let nothing = KeepPlan::nothing(self.keep.values.len());
        Ok(self.run(p, x, &nothing)?.0)
    }

    /// `∂L/∂x` for upstream gradient `dy` `[batch, out]`; the gradient of
    /// every parameter is added into `grads` (by handle when `grads` was
    /// made from the store the layer was resolved in, else by name).
    pub fn backward(
        &self,
        p: &Params,
        cache: &LayerCache,
        dy: ArrayView2<f32>,
        grads: &mut Params,
    ) -> Result<Array2<f32>> {
        let (_, output) = self.kind.widths();
        let rows = cache.tape_rows();
        check_cols("layer upstream gradient", dy, output)?;
        if dy.nrows() != rows {
            return Err(LayersError::Shape {
                what: "layer upstream gradient".to_owned(),
                got: dy.shape().to_vec(),
                expected: format!("[{rows}, {output}]"),
            });
        }
        check_finite("layer upstream gradient", dy)?;
        let params = self.bind(p)?;
        let (param_grads, dx) = self.graph.backward_with_input(
            &params,
            &cache.tape,
            dy.to_owned().into_dyn(),
            &self.trainable,
            true,
        )?;
        let dx = dx.ok_or_else(|| NnError::Graph("no input gradient".into()))?;
        add_grads(grads, &self.keys, &self.ids, param_grads)?;
        into_matrix(dx)
    }
}

/// The layers one run trains on an embedding of width `dim`: the adapter,
/// the projection head (unless `head_out = 0`) and BYOL's predictor. Built
/// once from the settings; the trainer runs them and `--memory-budget`
/// reads their sizes from their graphs.
#[derive(Debug, Clone)]
pub struct RunLayers {
    pub adapter: Layer,
    pub head: Option<Layer>,
    pub predictor: Option<Layer>,
}

impl RunLayers {
    /// For `config` on `dim`-wide embeddings.
    pub fn new(config: &super::config::AdaptConfig, dim: usize) -> Result<Self> {
        let adapter = Layer::adapter(dim, config.bottleneck)?;
        let head = (config.head_out > 0)
            .then(|| Layer::mlp("head", dim, config.head_hidden, config.head_out))
            .transpose()?;
        let predictor = config
            .loss
            .needs_predictor()
            .then(|| {
                Layer::mlp(
                    "predictor",
                    config.head_out,
                    config.head_hidden,
                    config.head_out,
                )
            })
            .transpose()?;
        Ok(Self {
            adapter,
            head,
            predictor,
        })
    }

    fn all(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.adapter)
            .chain(self.head.as_ref())
            .chain(self.predictor.as_ref())
    }

    /// Parameter values of all of them.
    pub fn numel(&self) -> usize {
        self.all().map(Layer::numel).sum()
    }

    /// Bytes of activations per sample their backward keeps.
    pub fn kept_bytes_per_sample(&self) -> usize {
        self.all().map(Layer::kept_bytes_per_sample).sum()
    }
}

impl LayerCache {
    fn tape_rows(&self) -> usize {
        self.tape.rows()
    }
}

/// Adds each engine parameter's gradient (`None`: frozen) into `grads`,
/// by handle where resolved (`ids` empty: by name).
pub(crate) fn add_grads(
    grads: &mut Params,
    keys: &[String],
    ids: &[ParamId],
    param_grads: Vec<Option<ArrayD<f32>>>,
) -> Result<(), ParamsError> {
    for (i, (key, g)) in keys.iter().zip(param_grads).enumerate() {
        let Some(g) = g else { continue };
        match ids.get(i) {
            Some(&id) => grads.accumulate_at(id, key, g)?,
            None => grads.accumulate_named(key, g)?,
        }
    }
    Ok(())
}

/// A weight's shape against the one its graph was built for.
fn check_shape(key: &str, t: &ArrayD<f32>, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(LayersError::Shape {
            what: key.to_owned(),
            got: t.shape().to_vec(),
            expected: format!("{expected:?}"),
        });
    }
    Ok(())
}

fn into_matrix(y: ArrayD<f32>) -> Result<Array2<f32>> {
    let shape = y.shape().to_vec();
    y.into_dimensionality::<Ix2>()
        .map_err(|_| LayersError::Shape {
            what: "layer output".to_owned(),
            got: shape,
            expected: "[batch, width]".to_owned(),
        })
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

// ------------------------------------------------------------------ init

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

/// Adds a residual bottleneck adapter `d → bottleneck → d` under
/// `adapter.down.*` (PyTorch default init) and `adapter.up.*` (zeros), so
/// the adapter is exactly the identity at init.
pub fn init_adapter(params: &mut Params, dim: usize, bottleneck: usize, rng: &mut impl Rng) {
    init_linear(params, "adapter.down", dim, bottleneck, rng);
    init_zero_linear(params, "adapter.up", bottleneck, dim);
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
