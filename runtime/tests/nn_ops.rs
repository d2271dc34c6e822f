//! The differentiable engine (`adapt::nn`), op by op: the forward against
//! tract on the same ONNX model, the backward against central finite
//! differences, the threaded row API against the whole-batch one, and the
//! typed refusals.
//!
//! Every op is checked twice: alone (the cut is the graph input, so only its
//! own parameters get gradients) and behind a prefix node (a 1×1 conv, a
//! Gemm or a per-channel Mul), so that its input gradient is exercised: the
//! prefix's parameter gradients flow through it.
//!
//! Run with `-- nn_ops --nocapture` to see the errors each case observed.

use edgeclr::adapt::nn::graph::CHUNK;
use edgeclr::adapt::nn::{import, Imported, NnError, ParamKind};
use ndarray::{Array2, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;

/// Largest forward difference to tract, relative to `max(1, max |y|)`.
const FORWARD_TOL: f32 = 1e-5;
/// Finite-difference step (in f32 parameter space).
const H: f32 = 1e-3;
/// `|fd − analytic| < FD_TOL · (1 + |analytic|)`.
const FD_TOL: f64 = 2e-3;
/// Parameters with more elements are checked on a random subset this big.
const FD_SUBSET: usize = 60;

// ---------------------------------------------------------------- data

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// One N(0, 1) sample (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = rng.random::<f64>().max(1e-12);
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn randn(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| normal(rng) * scale)
}

// ---------------------------------------------------------------- protos

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn usizes(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

/// A float initialiser (little-endian raw_data).
fn f32_tensor(name: &str, value: &ArrayD<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: usizes(value.shape()),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: value.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A 1-D int64 initialiser (int64_data).
fn i64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// A float tensor's value info, with its dims if given.
fn value_info(name: &str, dims: Option<&[usize]>) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: dims.map(|d| pb::TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|&v| Dimension {
                            denotation: String::new(),
                            value: Some(dimension::Value::DimValue(v as i64)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
}

fn model_proto(graph: &pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph.clone()),
        ..Default::default()
    }
}

/// A conv's attributes and parameter shapes.
#[derive(Debug, Clone, Copy)]
struct ConvSpec {
    c: usize,
    o: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    /// ONNX order: top, left, bottom, right.
    pads: [usize; 4],
    group: usize,
    bias: bool,
}

impl ConvSpec {
    /// `k×k`, stride 1, no pads, one group, with a bias.
    fn new(c: usize, o: usize, k: usize) -> Self {
        ConvSpec {
            c,
            o,
            kernel: [k, k],
            strides: [1, 1],
            pads: [0; 4],
            group: 1,
            bias: true,
        }
    }

    fn kernel(mut self, kernel: [usize; 2]) -> Self {
        self.kernel = kernel;
        self
    }

    fn stride(mut self, s: usize) -> Self {
        self.strides = [s, s];
        self
    }

    fn strides(mut self, strides: [usize; 2]) -> Self {
        self.strides = strides;
        self
    }

    fn pad(mut self, p: usize) -> Self {
        self.pads = [p; 4];
        self
    }

    fn pads(mut self, pads: [usize; 4]) -> Self {
        self.pads = pads;
        self
    }

    fn group(mut self, group: usize) -> Self {
        self.group = group;
        self
    }

    fn depthwise(c: usize, k: usize) -> Self {
        ConvSpec::new(c, c, k).group(c)
    }

    fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

/// A graph under construction: nodes in order and their initialisers, with
/// random parameters from a seeded generator. Node names are their output
/// tensor names.
struct Builder {
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    rng: ChaCha8Rng,
}

impl Builder {
    fn new(seed: u64) -> Self {
        Builder {
            nodes: Vec::new(),
            inits: Vec::new(),
            rng: rng(seed),
        }
    }

    fn init(&mut self, name: &str, value: &ArrayD<f32>) -> String {
        self.inits.push(f32_tensor(name, value));
        name.to_owned()
    }

    fn randn(&mut self, name: &str, shape: &[usize], scale: f32) -> String {
        let v = randn(&mut self.rng, shape, scale);
        self.init(name, &v)
    }

    /// Uniform in `lo..hi`.
    fn uniform(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> String {
        let rng = &mut self.rng;
        let v = ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(lo..hi));
        self.init(name, &v)
    }

    fn ints(&mut self, name: &str, values: &[i64]) -> String {
        self.inits.push(i64_tensor(name, values));
        name.to_owned()
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.into()],
            attribute: attrs,
            ..Default::default()
        });
        name.to_owned()
    }

    /// A Conv with weights ~ N(0, 1/fan_in) and biases ~ N(0, 0.25).
    fn conv(&mut self, name: &str, input: &str, s: ConvSpec) -> String {
        let fan_in = s.c / s.group * s.kernel[0] * s.kernel[1];
        let w = self.randn(
            &format!("{name}.weight"),
            &[s.o, s.c / s.group, s.kernel[0], s.kernel[1]],
            1.0 / (fan_in as f32).sqrt(),
        );
        let mut inputs = vec![input.to_owned(), w];
        if s.bias {
            inputs.push(self.randn(&format!("{name}.bias"), &[s.o], 0.5));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(
            "Conv",
            name,
            &refs,
            vec![
                attr_ints("kernel_shape", &usizes(&s.kernel)),
                attr_ints("strides", &usizes(&s.strides)),
                attr_ints("pads", &usizes(&s.pads)),
                attr_ints("dilations", &[1, 1]),
                attr_int("group", s.group as i64),
            ],
        )
    }

    /// A Gemm `[N, k] → [N, o]` (weight `[o, k]` if `trans_b`, else
    /// `[k, o]`), with a bias of shape `bias` if given.
    fn gemm(
        &mut self,
        name: &str,
        input: &str,
        (k, o): (usize, usize),
        trans_b: bool,
        bias: Option<&[usize]>,
    ) -> String {
        let shape = if trans_b { [o, k] } else { [k, o] };
        let w = self.randn(&format!("{name}.weight"), &shape, 1.0 / (k as f32).sqrt());
        let mut inputs = vec![input.to_owned(), w];
        if let Some(b) = bias {
            inputs.push(self.randn(&format!("{name}.bias"), b, 0.5));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(
            "Gemm",
            name,
            &refs,
            vec![
                attr_float("alpha", 1.0),
                attr_float("beta", 1.0),
                attr_int("transB", i64::from(trans_b)),
            ],
        )
    }

    /// The graph from `x` (of shape `x_shape`, batch included) to `output`.
    fn graph(&self, x_shape: &[usize], output: &str) -> pb::GraphProto {
        pb::GraphProto {
            name: "nn_ops".into(),
            node: self.nodes.clone(),
            initializer: self.inits.clone(),
            input: vec![value_info("x", Some(x_shape))],
            output: vec![value_info(output, None)],
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------- checks

/// tract's output of `graph` for input `x`.
fn tract_run(graph: &pb::GraphProto, x: &ArrayD<f32>) -> ArrayD<f32> {
    use tract_onnx::prelude::*;
    let model = tract_onnx::onnx()
        .model_for_proto_model(&model_proto(graph))
        .expect("tract reads the model")
        .with_input_fact(0, f32::fact(x.shape()).into())
        .expect("input fact")
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .expect("runnable");
    let out = model
        .run(tvec!(Tensor::from(x.clone()).into()))
        .expect("tract runs the model");
    out[0]
        .to_plain_array_view::<f32>()
        .expect("f32 output")
        .to_owned()
}

fn engine(graph: &pb::GraphProto, x_shape: &[usize], output: &str) -> Imported {
    import(graph, "x", &x_shape[1..], output).expect("the engine imports the graph")
}

/// `Σ y ⊙ g` in f64.
fn loss(y: &ArrayD<f32>, g: &ArrayD<f32>) -> f64 {
    y.iter()
        .zip(g.iter())
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum()
}

/// What one case observed.
#[derive(Debug, Clone, Copy, Default)]
struct Errors {
    /// Max |engine − tract|.
    forward: f32,
    /// Worst `|fd − analytic| / (1 + |analytic|)`.
    fd: f64,
    /// Parameter elements checked by finite differences.
    elements: usize,
}

/// Every parameter's gradient (all of it, or [`FD_SUBSET`] random elements)
/// against central finite differences of `Σ y ⊙ g` for a random `g`.
fn fd_check(label: &str, imp: &Imported, x: &ArrayD<f32>, rng: &mut ChaCha8Rng) -> (f64, usize) {
    let graph = &imp.graph;
    let mut params = imp.init.clone();
    let refs: Vec<&ArrayD<f32>> = params.iter().collect();
    let (y, tape) = graph.forward(&refs, x.clone()).expect("forward");
    let g = randn(rng, y.shape(), 1.0);
    let trainable = vec![true; params.len()];
    let grads = graph
        .backward(&refs, &tape, g.clone(), &trainable)
        .expect("backward");
    assert_eq!(
        grads.len(),
        params.len(),
        "{label}: one gradient per parameter"
    );
    let mut worst = 0.0f64;
    let mut elements = 0;
    for (k, spec) in graph.params().iter().enumerate() {
        let an = grads[k]
            .clone()
            .unwrap_or_else(|| panic!("{label}: trainable '{}' has no gradient", spec.name));
        assert_eq!(
            an.shape(),
            spec.shape.as_slice(),
            "{label}: '{}'",
            spec.name
        );
        let n = params[k].len();
        let mut idx: Vec<usize> = if n <= FD_SUBSET {
            (0..n).collect()
        } else {
            rand::seq::index::sample(rng, n, FD_SUBSET).into_vec()
        };
        idx.sort_unstable();
        let an = an.as_standard_layout().into_owned();
        let an = an.as_slice().expect("standard layout");
        for i in idx {
            let v = params[k].as_slice().expect("standard layout")[i];
            let (vp, vm) = (v + H, v - H);
            let mut at = |value: f32| {
                params[k].as_slice_mut().expect("standard layout")[i] = value;
                let refs: Vec<&ArrayD<f32>> = params.iter().collect();
                loss(&graph.forward(&refs, x.clone()).expect("forward").0, &g)
            };
            let (lp, lm) = (at(vp), at(vm));
            at(v);
            let fd = (lp - lm) / (f64::from(vp) - f64::from(vm));
            let a = f64::from(an[i]);
            let rel = (fd - a).abs() / (1.0 + a.abs());
            assert!(
                rel < FD_TOL,
                "{label}: d/d {}[{i}]: finite difference {fd:.6}, backward {a:.6}",
                spec.name
            );
            worst = worst.max(rel);
            elements += 1;
        }
    }
    (worst, elements)
}

/// Forward against tract and backward against finite differences.
fn check(label: &str, graph: &pb::GraphProto, x: &ArrayD<f32>, output: &str) -> Errors {
    let imp = engine(graph, x.shape(), output);
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let (y, _) = imp.graph.forward(&refs, x.clone()).expect("forward");
    let want = tract_run(graph, x);
    assert_eq!(y.shape(), want.shape(), "{label}: output shape");
    assert_eq!(
        &y.shape()[1..],
        imp.graph.output_shape(),
        "{label}: output_shape()"
    );
    let forward = y
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(
        forward <= FORWARD_TOL * scale,
        "{label}: forward differs from tract by {forward:e} (outputs up to {scale})"
    );
    let (fd, elements) = fd_check(label, &imp, x, &mut rng(0x5eed));
    let e = Errors {
        forward,
        fd,
        elements,
    };
    println!(
        "nn_ops {label}: forward {:.2e}, worst fd {:.2e} over {} elements",
        e.forward, e.fd, e.elements
    );
    e
}

/// The node before the op under test, so that the op's input is an
/// interior value and its input gradient reaches the prefix's parameters.
fn prefix(b: &mut Builder, x_shape: &[usize]) -> String {
    let c = x_shape[1];
    if x_shape.len() == 4 {
        b.conv("pre", "x", ConvSpec::new(c, c, 1))
    } else {
        b.gemm("pre", "x", (c, c), true, Some(&[c]))
    }
}

/// `op` alone on the graph input, then behind [`prefix`]; returns both.
fn op_pair(
    label: &str,
    x_shape: &[usize],
    seed: u64,
    op: impl Fn(&mut Builder, &str) -> String,
) -> [Errors; 2] {
    let x = randn(&mut rng(seed ^ 0xa5a5), x_shape, 1.0);
    let mut b = Builder::new(seed);
    let out = op(&mut b, "x");
    let alone = check(
        &format!("{label} (alone)"),
        &b.graph(x_shape, &out),
        &x,
        &out,
    );
    let mut b = Builder::new(seed + 1);
    let pre = prefix(&mut b, x_shape);
    let out = op(&mut b, &pre);
    let behind = check(
        &format!("{label} (behind a prefix)"),
        &b.graph(x_shape, &out),
        &x,
        &out,
    );
    [alone, behind]
}

/// The shape of `node`'s output in the engine's import of `graph`.
fn output_shape(graph: &pb::GraphProto, x_shape: &[usize], output: &str) -> Vec<usize> {
    engine(graph, x_shape, output).graph.output_shape().to_vec()
}

fn conv_case(label: &str, x_shape: &[usize], spec: ConvSpec, seed: u64, want_hw: [usize; 2]) {
    op_pair(label, x_shape, seed, |b, x| b.conv("op", x, spec));
    let mut b = Builder::new(seed);
    let out = b.conv("op", "x", spec);
    assert_eq!(
        output_shape(&b.graph(x_shape, &out), x_shape, &out),
        [spec.o, want_hw[0], want_hw[1]],
        "{label}: output shape"
    );
}

// ---------------------------------------------------------------- Conv

#[test]
fn conv_pointwise_with_bias() {
    conv_case(
        "conv 1×1 with bias",
        &[2, 8, 5, 7],
        ConvSpec::new(8, 6, 1),
        1,
        [5, 7],
    );
}

#[test]
fn conv_pointwise_without_bias() {
    conv_case(
        "conv 1×1 without bias",
        &[2, 8, 5, 7],
        ConvSpec::new(8, 6, 1).no_bias(),
        2,
        [5, 7],
    );
}

#[test]
fn conv_depthwise_3x3_stride1_pad1() {
    conv_case(
        "depthwise 3×3 s1 p1",
        &[2, 6, 7, 9],
        ConvSpec::depthwise(6, 3).pad(1),
        3,
        [7, 9],
    );
}

#[test]
fn conv_depthwise_3x3_stride2_pad1_odd() {
    conv_case(
        "depthwise 3×3 s2 p1 on 7×7",
        &[2, 4, 7, 7],
        ConvSpec::depthwise(4, 3).stride(2).pad(1),
        4,
        [4, 4],
    );
}

#[test]
fn conv_depthwise_3x3_stride2_pad1_non_square() {
    // 7×10 → 4×5: an odd and an even axis, to catch H/W mix-ups.
    conv_case(
        "depthwise 3×3 s2 p1 on 7×10",
        &[2, 4, 7, 10],
        ConvSpec::depthwise(4, 3).stride(2).pad(1),
        5,
        [4, 5],
    );
}

#[test]
fn conv_depthwise_3x3_stride2_asymmetric_pads() {
    // TF "SAME" padding at stride 2: nothing on top/left, one on bottom/right.
    conv_case(
        "depthwise 3×3 s2 pads [0,0,1,1]",
        &[2, 4, 8, 10],
        ConvSpec::depthwise(4, 3).stride(2).pads([0, 0, 1, 1]),
        6,
        [4, 5],
    );
}

#[test]
fn conv_depthwise_5x5_pad2() {
    conv_case(
        "depthwise 5×5 p2",
        &[2, 5, 8, 9],
        ConvSpec::depthwise(5, 5).pad(2),
        7,
        [8, 9],
    );
}

#[test]
fn conv_depthwise_without_bias() {
    conv_case(
        "depthwise 3×3 s1 p1 without bias",
        &[2, 3, 6, 5],
        ConvSpec::depthwise(3, 3).pad(1).no_bias(),
        8,
        [6, 5],
    );
}

#[test]
fn conv_general_3x3_stride2_asymmetric_pads() {
    // (8 + 1 − 3)/2 + 1 = 4 rows, (9 + 1 − 3)/2 + 1 = 4 columns.
    conv_case(
        "conv 3×3 s2 pads [1,1,0,0] group 1",
        &[2, 3, 8, 9],
        ConvSpec::new(3, 5, 3).stride(2).pads([1, 1, 0, 0]),
        9,
        [4, 4],
    );
}

#[test]
fn conv_general_rectangular_kernel() {
    // 1×3 kernel, strides [2, 1], pads on the columns only.
    conv_case(
        "conv 1×3 strides [2,1] pads [0,1,0,1]",
        &[2, 3, 7, 6],
        ConvSpec::new(3, 4, 1)
            .kernel([1, 3])
            .strides([2, 1])
            .pads([0, 1, 0, 1]),
        10,
        [4, 6],
    );
}

#[test]
fn conv_grouped() {
    conv_case(
        "conv 3×3 p1 group 2 (4 → 6)",
        &[2, 4, 6, 7],
        ConvSpec::new(4, 6, 3).pad(1).group(2),
        11,
        [6, 7],
    );
}

#[test]
fn conv_depthwise_channel_multiplier() {
    // group = C but O = 2C: the general kernel, not the depthwise one.
    conv_case(
        "conv 3×3 p1 group 4 (4 → 8)",
        &[2, 4, 6, 5],
        ConvSpec::new(4, 8, 3).pad(1).group(4),
        12,
        [6, 5],
    );
}

#[test]
fn conv_pointwise_stride2() {
    conv_case(
        "conv 1×1 s2",
        &[2, 6, 7, 9],
        ConvSpec::new(6, 4, 1).stride(2),
        13,
        [4, 5],
    );
}

#[test]
fn conv_depthwise_2x2_stride2_odd_input() {
    // 7×9 → 3×4: the last row and column are never read.
    conv_case(
        "depthwise 2×2 s2 on 7×9",
        &[2, 3, 7, 9],
        ConvSpec::depthwise(3, 2).stride(2),
        15,
        [3, 4],
    );
}

#[test]
fn conv_pads_larger_than_half_the_kernel() {
    // Pad 2 around a 3×3 kernel: the corner outputs see only one pixel.
    conv_case(
        "depthwise 3×3 p2",
        &[2, 3, 5, 4],
        ConvSpec::depthwise(3, 3).pad(2),
        16,
        [7, 6],
    );
    conv_case(
        "conv 3×3 s3 p2 group 1",
        &[2, 3, 8, 7],
        ConvSpec::new(3, 4, 3).stride(3).pad(2),
        17,
        [4, 3],
    );
}

#[test]
fn conv_shared_weight() {
    // One initialiser used by two convs: one parameter whose gradient sums
    // both uses.
    let x_shape = [2, 4, 3, 5];
    let x = randn(&mut rng(18), &x_shape, 1.0);
    let mut b = Builder::new(18);
    let w = b.randn("shared.weight", &[4, 4, 1, 1], 0.5);
    let first = b.node("Conv", "first", &["x", &w], vec![]);
    // No clamp between the two uses: the loss is quadratic in the weight,
    // so central differences are exact up to rounding.
    let out = b.node("Conv", "second", &[&first, &w], vec![]);
    let g = b.graph(&x_shape, &out);
    let imp = engine(&g, &x_shape, &out);
    assert_eq!(imp.graph.params().len(), 1);
    assert_eq!(imp.graph.params()[0].name, "shared.weight");
    let e = check("shared 1×1 weight", &g, &x, &out);
    assert_eq!(e.elements, 16);
}

#[test]
fn conv_param_specs() {
    let mut b = Builder::new(14);
    let out = b.conv("op", "x", ConvSpec::depthwise(4, 3).pad(1));
    let imp = engine(&b.graph(&[1, 4, 5, 5], &out), &[1, 4, 5, 5], &out);
    let specs = imp.graph.params();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].name, "op.weight");
    assert_eq!(specs[0].shape, [4, 1, 3, 3]);
    assert_eq!(specs[0].kind, ParamKind::Weight);
    assert_eq!(specs[1].name, "op.bias");
    assert_eq!(specs[1].shape, [4]);
    assert_eq!(specs[1].kind, ParamKind::Bias);
    assert_eq!(imp.init.len(), 2);
    assert_eq!(imp.init[0].shape(), [4, 1, 3, 3]);
}

// ---------------------------------------------------------------- Gemm, MatMul

#[test]
fn gemm_trans_b_with_bias_o() {
    op_pair("Gemm transB=1 bias [O]", &[3, 10], 20, |b, x| {
        b.gemm("op", x, (10, 6), true, Some(&[6]))
    });
}

#[test]
fn gemm_no_trans_b_with_bias_1o() {
    op_pair("Gemm transB=0 bias [1,O]", &[3, 10], 21, |b, x| {
        b.gemm("op", x, (10, 6), false, Some(&[1, 6]))
    });
}

#[test]
fn gemm_without_bias() {
    op_pair("Gemm transB=1 no bias", &[4, 7], 22, |b, x| {
        b.gemm("op", x, (7, 5), true, None)
    });
}

#[test]
fn matmul() {
    op_pair("MatMul", &[3, 10], 23, |b, x| {
        let w = b.randn("op.weight", &[10, 6], 1.0 / 10f32.sqrt());
        b.node("MatMul", "op", &[x, &w], vec![])
    });
}

// ---------------------------------------------------------------- Add, Mul

#[test]
fn add_per_channel_constant_nchw() {
    op_pair("Add [1,C,1,1] on NCHW", &[2, 5, 4, 6], 30, |b, x| {
        let c = b.randn("op.bias", &[1, 5, 1, 1], 1.0);
        b.node("Add", "op", &[x, &c], vec![])
    });
}

#[test]
fn add_per_channel_constant_first_operand() {
    op_pair(
        "Add [C,1,1] + NCHW (constant first)",
        &[2, 5, 4, 6],
        31,
        |b, x| {
            let c = b.randn("op.bias", &[5, 1, 1], 1.0);
            b.node("Add", "op", &[&c, x], vec![])
        },
    );
}

#[test]
fn add_per_channel_constant_nc() {
    op_pair("Add [C] on [N,C]", &[3, 7], 32, |b, x| {
        let c = b.randn("op.bias", &[7], 1.0);
        b.node("Add", "op", &[x, &c], vec![])
    });
}

#[test]
fn add_scalar_constant() {
    op_pair("Add [1] on NCHW", &[2, 3, 4, 5], 33, |b, x| {
        let c = b.randn("op.bias", &[1], 1.0);
        b.node("Add", "op", &[x, &c], vec![])
    });
}

#[test]
fn residual_add_fan_out() {
    // v → conv → add(v, conv(v)): v fans out, its gradient is the sum of
    // both paths. Alone, v is the graph input; behind the prefix it is the
    // prefix's output, whose parameters then see the accumulated gradient.
    op_pair(
        "residual Add over a depthwise conv",
        &[2, 4, 6, 7],
        34,
        |b, x| {
            let branch = b.conv("branch", x, ConvSpec::depthwise(4, 3).pad(1));
            b.node("Add", "op", &[x, &branch], vec![])
        },
    );
    op_pair(
        "residual Add over a 1×1 conv",
        &[2, 4, 5, 3],
        35,
        |b, x| {
            let branch = b.conv("branch", x, ConvSpec::new(4, 4, 1));
            b.node("Add", "op", &[&branch, x], vec![])
        },
    );
}

#[test]
fn add_of_a_tensor_to_itself() {
    op_pair("Add(v, v)", &[2, 3, 4, 4], 36, |b, x| {
        b.node("Add", "op", &[x, x], vec![])
    });
}

#[test]
fn mul_per_channel_constant() {
    op_pair("Mul [1,C,1,1] on NCHW", &[2, 5, 4, 6], 40, |b, x| {
        let s = b.randn("op.scale", &[1, 5, 1, 1], 1.0);
        b.node("Mul", "op", &[x, &s], vec![])
    });
    op_pair("Mul [C] on [N,C]", &[3, 6], 41, |b, x| {
        let s = b.randn("op.scale", &[6], 1.0);
        b.node("Mul", "op", &[&s, x], vec![])
    });
}

#[test]
fn mul_and_add_param_kinds() {
    let mut b = Builder::new(42);
    let s = b.randn("s", &[1, 3, 1, 1], 1.0);
    let m = b.node("Mul", "m", &["x", &s], vec![]);
    let c = b.randn("c", &[1, 3, 1, 1], 1.0);
    let out = b.node("Add", "a", &[&m, &c], vec![]);
    let imp = engine(&b.graph(&[1, 3, 2, 2], &out), &[1, 3, 2, 2], &out);
    let kinds: Vec<(&str, ParamKind)> = imp
        .graph
        .params()
        .iter()
        .map(|p| (p.name.as_str(), p.kind))
        .collect();
    assert_eq!(kinds, [("s", ParamKind::Scale), ("c", ParamKind::Bias)]);
}

// ---------------------------------------------------------------- Relu, Clip

/// `x → Mul(s) → clamp`: `s` per channel in 0.5..1.5 and `x` such that
/// `x·s` keeps at least `0.1` from every kink in `kinks`, so that the
/// finite differences (which move `x·s` by at most `H·|x|`) never cross one.
fn clamp_case(
    label: &str,
    seed: u64,
    spread: f32,
    kinks: &[f32],
    clamp: impl Fn(&mut Builder, &str) -> String,
) {
    let x_shape = [2, 4, 5, 6];
    let mut r = rng(seed);
    let s: ArrayD<f32> = ArrayD::from_shape_fn(IxDyn(&[1, 4, 1, 1]), |_| r.random_range(0.5..1.5));
    let mut x = ArrayD::<f32>::zeros(IxDyn(&x_shape));
    for ((_, ch, _, _), v) in x
        .view_mut()
        .into_dimensionality::<ndarray::Ix4>()
        .expect("4-D")
        .indexed_iter_mut()
    {
        let z = loop {
            let z = normal(&mut r) * spread;
            if kinks.iter().all(|k| (z - k).abs() >= 0.1) {
                break z;
            }
        };
        *v = z / s[[0, ch, 0, 0]];
    }
    // Alone (no parameters: the forward only).
    let mut b = Builder::new(seed);
    let out = clamp(&mut b, "x");
    check(
        &format!("{label} (alone)"),
        &b.graph(&x_shape, &out),
        &x,
        &out,
    );
    // Behind the Mul: its scale's gradient flows through the clamp.
    let mut b = Builder::new(seed);
    let s = b.init("pre.scale", &s);
    let pre = b.node("Mul", "pre", &["x", &s], vec![]);
    let out = clamp(&mut b, &pre);
    let e = check(
        &format!("{label} (behind a Mul)"),
        &b.graph(&x_shape, &out),
        &x,
        &out,
    );
    assert_eq!(e.elements, 4);
}

#[test]
fn relu() {
    clamp_case("Relu", 50, 1.0, &[0.0], |b, x| {
        b.node("Relu", "op", &[x], vec![])
    });
}

#[test]
fn clip_0_6_constant_inputs() {
    // Spread 4: some values above 6, so both bounds are exercised.
    clamp_case("Clip(0, 6)", 51, 4.0, &[0.0, 6.0], |b, x| {
        let lo = b.init("op.min", &ArrayD::from_elem(IxDyn(&[]), 0.0));
        let hi = b.init("op.max", &ArrayD::from_elem(IxDyn(&[]), 6.0));
        b.node("Clip", "op", &[x, &lo, &hi], vec![])
    });
}

#[test]
fn clip_max_only() {
    // Opset-13 Clip with the min input left out (empty name): ReLU-less clamp.
    clamp_case("Clip(-inf, 6)", 53, 4.0, &[6.0], |b, x| {
        let hi = b.init("op.max", &ArrayD::from_elem(IxDyn(&[]), 6.0));
        b.node("Clip", "op", &[x, "", &hi], vec![])
    });
}

#[test]
fn clip_bounds_are_not_parameters() {
    let mut b = Builder::new(52);
    let lo = b.init("min", &ArrayD::from_elem(IxDyn(&[]), 0.0));
    let hi = b.init("max", &ArrayD::from_elem(IxDyn(&[]), 6.0));
    let out = b.node("Clip", "op", &["x", &lo, &hi], vec![]);
    let imp = engine(&b.graph(&[1, 2, 3, 3], &out), &[1, 2, 3, 3], &out);
    assert!(imp.graph.params().is_empty());
    // Exactly at a bound the gradient is zero (as PyTorch's ReLU6).
    let x = ArrayD::from_shape_vec(
        IxDyn(&[1, 2, 3, 3]),
        vec![
            -1.0, 0.0, 0.5, 3.0, 6.0, 7.0, 5.9, 0.1, -0.1, //
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, -3.0, 0.0,
        ],
    )
    .expect("shape");
    let (y, _) = imp.graph.forward(&[], x.clone()).expect("forward");
    let want = tract_run(&b.graph(&[1, 2, 3, 3], &out), &x);
    assert_eq!(y, want);
}

// ---------------------------------------------------------------- BatchNormalization

#[test]
fn batch_norm_inference() {
    op_pair("BatchNormalization eps 1e-3", &[2, 5, 4, 6], 60, |b, x| {
        let scale = b.randn("op.scale", &[5], 1.0);
        let shift = b.randn("op.shift", &[5], 1.0);
        let mean = b.randn("op.mean", &[5], 1.0);
        let var = b.uniform("op.var", &[5], 0.2, 2.0);
        b.node(
            "BatchNormalization",
            "op",
            &[x, &scale, &shift, &mean, &var],
            vec![attr_float("epsilon", 1e-3)],
        )
    });
    let mut b = Builder::new(61);
    let names: Vec<String> = ["g", "b", "m"]
        .iter()
        .map(|n| b.randn(n, &[3], 1.0))
        .collect();
    let var = b.uniform("v", &[3], 0.5, 1.5);
    let out = b.node(
        "BatchNormalization",
        "bn",
        &["x", &names[0], &names[1], &names[2], &var],
        vec![attr_float("epsilon", 1e-3)],
    );
    let imp = engine(&b.graph(&[1, 3, 2, 2], &out), &[1, 3, 2, 2], &out);
    let kinds: Vec<(&str, ParamKind)> = imp
        .graph
        .params()
        .iter()
        .map(|p| (p.name.as_str(), p.kind))
        .collect();
    // The running statistics stay constants.
    assert_eq!(kinds, [("g", ParamKind::Scale), ("b", ParamKind::Bias)]);
}

#[test]
fn batch_norm_tiny_variance() {
    // eps matters when σ² is small: 1/√(σ² + ε) with σ² ~ 1e-3.
    op_pair("BatchNormalization small var", &[2, 3, 3, 4], 62, |b, x| {
        let scale = b.randn("op.scale", &[3], 0.05);
        let shift = b.randn("op.shift", &[3], 1.0);
        let mean = b.randn("op.mean", &[3], 1.0);
        let var = b.uniform("op.var", &[3], 1e-4, 2e-3);
        b.node(
            "BatchNormalization",
            "op",
            &[x, &scale, &shift, &mean, &var],
            vec![attr_float("epsilon", 1e-3)],
        )
    });
}

// ---------------------------------------------------------------- pooling

#[test]
fn global_average_pool() {
    op_pair("GlobalAveragePool", &[2, 5, 4, 6], 70, |b, x| {
        b.node("GlobalAveragePool", "op", &[x], vec![])
    });
}

#[test]
fn reduce_mean_axes_2_3_no_keepdims() {
    let [_, behind] = op_pair("ReduceMean [2,3] keepdims 0", &[2, 5, 4, 6], 71, |b, x| {
        b.node(
            "ReduceMean",
            "op",
            &[x],
            vec![attr_ints("axes", &[2, 3]), attr_int("keepdims", 0)],
        )
    });
    assert!(behind.elements > 0);
    op_pair(
        "ReduceMean [-1,-2] keepdims 1",
        &[2, 3, 5, 4],
        72,
        |b, x| b.node("ReduceMean", "op", &[x], vec![attr_ints("axes", &[-1, -2])]),
    );
}

#[test]
fn reduce_mean_axes_as_input() {
    // Opset 18 gives the axes as an int64 input; tract reads this model at
    // opset 13, so the engine is checked against the plain mean instead.
    let x_shape = [2, 3, 4, 5];
    let x = randn(&mut rng(73), &x_shape, 1.0);
    let mut b = Builder::new(73);
    let axes = b.ints("axes", &[3, 2]);
    let out = b.node(
        "ReduceMean",
        "op",
        &["x", &axes],
        vec![attr_int("keepdims", 0)],
    );
    let imp = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    assert_eq!(imp.graph.output_shape(), [3]);
    let (y, _) = imp.graph.forward(&[], x.clone()).expect("forward");
    let want = x
        .into_shape_with_order((2, 3, 20))
        .expect("shape")
        .mean_axis(ndarray::Axis(2))
        .expect("mean");
    let d = y
        .iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-6, "{d}");
}

// ---------------------------------------------------------------- Flatten, Reshape

#[test]
fn flatten_axis_1() {
    op_pair("Flatten axis 1", &[2, 3, 4, 5], 80, |b, x| {
        b.node("Flatten", "op", &[x], vec![attr_int("axis", 1)])
    });
}

#[test]
fn reshape_keep_batch() {
    op_pair("Reshape [0,-1]", &[2, 3, 4, 5], 81, |b, x| {
        let shape = b.ints("op.shape", &[0, -1]);
        b.node("Reshape", "op", &[x, &shape], vec![])
    });
    op_pair("Reshape [0,12,5]", &[2, 3, 4, 5], 82, |b, x| {
        let shape = b.ints("op.shape", &[0, 12, 5]);
        b.node("Reshape", "op", &[x, &shape], vec![])
    });
}

#[test]
fn pooled_head_chain() {
    // A whole MobileNet-style tail: conv, BN, clip, depthwise, pool, flatten,
    // linear. The gradients of the first conv cross every op's backward.
    let x_shape = [2, 3, 7, 6];
    let x = randn(&mut rng(90), &x_shape, 1.0);
    let mut b = Builder::new(90);
    let expand = b.conv("expand", "x", ConvSpec::new(3, 6, 1));
    let bn = {
        let scale = b.randn("bn.scale", &[6], 1.0);
        let shift = b.randn("bn.shift", &[6], 1.0);
        let mean = b.randn("bn.mean", &[6], 0.2);
        let var = b.uniform("bn.var", &[6], 0.5, 2.0);
        b.node(
            "BatchNormalization",
            "bn",
            &[&expand, &scale, &shift, &mean, &var],
            vec![attr_float("epsilon", 1e-3)],
        )
    };
    let dw = b.conv("dw", &bn, ConvSpec::depthwise(6, 3).stride(2).pad(1));
    let project = b.conv("project", &dw, ConvSpec::new(6, 4, 1).no_bias());
    let pool = b.node("GlobalAveragePool", "pool", &[&project], vec![]);
    let flat = b.node("Flatten", "flat", &[&pool], vec![attr_int("axis", 1)]);
    let out = b.gemm("fc", &flat, (4, 3), true, Some(&[3]));
    let e = check("pooled head chain", &b.graph(&x_shape, &out), &x, &out);
    assert!(e.elements > 100);
}

// ---------------------------------------------------------------- frozen parameters

#[test]
fn frozen_parameters_still_pass_gradients() {
    let x_shape = [3, 4, 5, 5];
    let x = randn(&mut rng(100), &x_shape, 1.0);
    let mut b = Builder::new(100);
    let pre = b.conv("pre", "x", ConvSpec::new(4, 4, 1));
    let dw = b.conv("dw", &pre, ConvSpec::depthwise(4, 3).pad(1));
    let pool = b.node("GlobalAveragePool", "pool", &[&dw], vec![]);
    let out = b.node("Flatten", "flat", &[&pool], vec![attr_int("axis", 1)]);
    let imp = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    let names: Vec<&str> = imp.graph.params().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["pre.weight", "pre.bias", "dw.weight", "dw.bias"]);
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let (y, tape) = imp.graph.forward(&refs, x).expect("forward");
    let g = randn(&mut rng(101), y.shape(), 1.0);
    let all = imp
        .graph
        .backward(&refs, &tape, g.clone(), &[true; 4])
        .expect("backward");
    // Only the first conv trained: the frozen depthwise still passes its
    // input gradient back.
    let first = imp
        .graph
        .backward(&refs, &tape, g.clone(), &[true, true, false, false])
        .expect("backward");
    assert!(first[2].is_none() && first[3].is_none());
    for k in 0..2 {
        let (a, b) = (
            all[k].as_ref().expect("grad"),
            first[k].as_ref().expect("grad"),
        );
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + a.abs())));
    }
    // Only the last conv trained: nothing before it needs a gradient.
    let last = imp
        .graph
        .backward(&refs, &tape, g, &[false, false, true, true])
        .expect("backward");
    assert!(last[0].is_none() && last[1].is_none());
    for k in 2..4 {
        let (a, b) = (
            all[k].as_ref().expect("grad"),
            last[k].as_ref().expect("grad"),
        );
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + a.abs())));
    }
}

// ---------------------------------------------------------------- threaded rows

#[test]
fn rows_api_is_thread_count_independent() {
    // 19 rows as asked of the API (2·8 + 3 at the original CHUNK of 8), and
    // 2·CHUNK + 3 whatever CHUNK is now: three chunks, the last one short.
    let mut sizes = vec![19, 2 * CHUNK + 3];
    sizes.dedup();
    for n in sizes {
        assert!(n % CHUNK != 0);
        rows_case(n);
    }
}

/// [`rows_api_is_thread_count_independent`] for a batch of `n` rows.
fn rows_case(n: usize) {
    let x_shape = [n, 4, 6, 6];
    let mut b = Builder::new(110);
    let pre = b.conv("pre", "x", ConvSpec::new(4, 6, 1));
    let act = b.node("Relu", "act", &[&pre], vec![]);
    let dw = b.conv("dw", &act, ConvSpec::depthwise(6, 3).stride(2).pad(1));
    let bn = {
        let scale = b.randn("bn.scale", &[6], 1.0);
        let shift = b.randn("bn.shift", &[6], 1.0);
        let mean = b.randn("bn.mean", &[6], 0.2);
        let var = b.uniform("bn.var", &[6], 0.5, 2.0);
        b.node(
            "BatchNormalization",
            "bn",
            &[&dw, &scale, &shift, &mean, &var],
            vec![attr_float("epsilon", 1e-3)],
        )
    };
    let pool = b.node("GlobalAveragePool", "pool", &[&bn], vec![]);
    let flat = b.node("Flatten", "flat", &[&pool], vec![attr_int("axis", 1)]);
    let out = b.gemm("fc", &flat, (6, 5), true, Some(&[5]));
    let imp = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    let graph = &imp.graph;
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let trainable = vec![true; refs.len()];
    let x = randn(&mut rng(111), &x_shape, 1.0);
    let rows: Array2<f32> = x
        .clone()
        .into_shape_with_order((n, 4 * 6 * 6))
        .expect("rows");
    let dy_rows = randn(&mut rng(112), &[n, 5], 1.0)
        .into_shape_with_order((n, 5))
        .expect("rows");

    // The whole batch at once.
    let (y_all, tape) = graph.forward(&refs, x).expect("forward");
    let g_all = graph
        .backward(&refs, &tape, dy_rows.clone().into_dyn(), &trainable)
        .expect("backward");

    let bits = |a: &ArrayD<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let mut first: Option<(Vec<u32>, Vec<Vec<u32>>)> = None;
    let (mut worst_y, mut worst_g) = (0.0f32, 0.0f32);
    for threads in [1, 2, 3, 16] {
        let (y, batch_tape) = graph
            .forward_rows(&refs, rows.view(), threads)
            .expect("forward_rows");
        assert_eq!(y.dim(), (n, 5));
        assert_eq!(batch_tape.rows(), n);
        let grads = graph
            .backward_rows(&refs, &batch_tape, dy_rows.view(), &trainable, threads)
            .expect("backward_rows");
        let grads: Vec<ArrayD<f32>> = grads
            .into_iter()
            .map(|g| g.expect("trainable parameter has a gradient"))
            .collect();
        let got = (
            bits(&y.clone().into_dyn()),
            grads.iter().map(bits).collect::<Vec<_>>(),
        );
        match &first {
            None => first = Some(got),
            Some(want) => assert!(
                *want == got,
                "{threads} threads give other bits than one thread"
            ),
        }
        // Against the whole batch, up to rounding (chunked sums).
        let ya = y_all.view().into_shape_with_order((n, 5)).expect("rows");
        for (a, b) in y.iter().zip(ya.iter()) {
            let d = (a - b).abs() / (1.0 + b.abs());
            worst_y = worst_y.max(d);
        }
        for (g, ga) in grads.iter().zip(&g_all) {
            let ga = ga.as_ref().expect("gradient");
            let scale = ga.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (a, b) in g.iter().zip(ga.iter()) {
                worst_g = worst_g.max((a - b).abs() / scale);
            }
        }
    }
    println!("nn_ops rows ({n}, chunk {CHUNK}): vs whole batch: outputs {worst_y:.2e}, gradients {worst_g:.2e}");
    assert!(
        worst_y <= 1e-6,
        "rows forward differs from forward by {worst_y:e}"
    );
    assert!(
        worst_g <= 1e-6,
        "rows backward differs from backward by {worst_g:e}"
    );
}

#[test]
fn rows_api_checks_widths() {
    let mut b = Builder::new(120);
    let out = b.conv("op", "x", ConvSpec::new(2, 3, 1));
    let imp = engine(&b.graph(&[1, 2, 3, 3], &out), &[1, 2, 3, 3], &out);
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let wrong = Array2::<f32>::zeros((4, 17));
    assert!(matches!(
        imp.graph.forward_rows(&refs, wrong.view(), 2),
        Err(NnError::Input { .. })
    ));
    let x = Array2::<f32>::zeros((4, 18));
    let (_, tape) = imp
        .graph
        .forward_rows(&refs, x.view(), 2)
        .expect("forward_rows");
    let dy = Array2::<f32>::zeros((4, 26));
    assert!(matches!(
        imp.graph
            .backward_rows(&refs, &tape, dy.view(), &[true, true], 2),
        Err(NnError::Input { .. })
    ));
}

// ---------------------------------------------------------------- refusals

#[test]
fn refuses_dilated_conv() {
    let mut b = Builder::new(130);
    let w = b.randn("w", &[3, 3, 3, 3], 0.3);
    let out = b.node(
        "Conv",
        "dilated",
        &["x", &w],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("dilations", &[2, 2]),
            attr_ints("pads", &[2, 2, 2, 2]),
        ],
    );
    let err = import(&b.graph(&[1, 3, 8, 8], &out), "x", &[3, 8, 8], &out)
        .expect_err("dilation 2 is refused");
    let text = err.to_string();
    match err {
        NnError::Unsupported { node, op, why } => {
            assert_eq!(node, "dilated");
            assert_eq!(op, "Conv");
            assert!(why.contains("dilation"), "{why}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(
        text.contains("'dilated'") && text.contains("Conv"),
        "{text}"
    );
}

#[test]
fn refuses_unknown_op_in_scope() {
    let mut b = Builder::new(131);
    let a = b.conv("a", "x", ConvSpec::new(3, 3, 1));
    let act = b.node("Sigmoid", "act", &[&a], vec![]);
    let out = b.conv("c", &act, ConvSpec::new(3, 2, 1));
    let g = b.graph(&[1, 3, 4, 4], &out);
    let err = import(&g, "x", &[3, 4, 4], &out).expect_err("Sigmoid is refused");
    let text = err.to_string();
    match err {
        NnError::Unsupported { node, op, why } => {
            assert_eq!(node, "act");
            assert_eq!(op, "Sigmoid");
            assert!(why.contains("Conv"), "lists the supported ops: {why}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert!(text.contains("'act'") && text.contains("Sigmoid"), "{text}");
    // Below the cut it does not matter.
    let imp = import(&g, "act", &[3, 4, 4], &out).expect("cut above the Sigmoid");
    assert_eq!(imp.graph.node_names().collect::<Vec<_>>(), ["c"]);
    assert_eq!(imp.graph.input_shape(), [3, 4, 4]);
}

#[test]
fn shape_subgraphs_fold_to_constants() {
    // PyTorch's `x.view(x.size(0), -1)`: Shape → Gather(0) → Unsqueeze →
    // Concat with [-1] → Reshape, then a Gemm: folded, batch kept symbolic.
    let mut b = Builder::new(132);
    let c = b.conv("c", "x", ConvSpec::new(3, 4, 1));
    let shape = b.node("Shape", "shp", &[&c], vec![]);
    b.inits.push(pb::TensorProto {
        name: "zero".into(),
        dims: vec![],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: vec![0],
        ..Default::default()
    });
    let n = b.node("Gather", "n", &[&shape, "zero"], vec![attr_int("axis", 0)]);
    b.ints("axes0", &[0]);
    let n1 = b.node("Unsqueeze", "n1", &[&n, "axes0"], vec![]);
    b.ints("minus1", &[-1]);
    let target = b.node(
        "Concat",
        "target",
        &[&n1, "minus1"],
        vec![attr_int("axis", 0)],
    );
    let flat = b.node("Reshape", "r", &[&c, &target], vec![]);
    let out = b.gemm("fc", &flat, (4 * 16, 5), true, Some(&[5]));
    let g = b.graph(&[3, 3, 4, 4], &out);
    let imp = import(&g, "x", &[3, 4, 4], &out).expect("the shape subgraph folds");
    assert_eq!(
        imp.graph.node_names().collect::<Vec<_>>(),
        ["c", "r", "fc"],
        "the shape ops are constants, not engine nodes"
    );
    // Batch 3 (not the 1 the import assumed): the engine matches tract.
    let x = randn(&mut rng(133), &[3, 3, 4, 4], 1.0);
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let (y, _) = imp.graph.forward(&refs, x.clone()).expect("forward");
    let want = tract_run(&g, &x);
    let d = (&y - &want).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
    assert!(d < 1e-5, "engine vs tract: {d}");

    // Arithmetic on the batch size is refused, naming the node.
    let mut b = Builder::new(134);
    let c = b.conv("c", "x", ConvSpec::new(3, 4, 1));
    let shape = b.node("Shape", "shp", &[&c], vec![]);
    b.ints("two", &[2]);
    let twice = b.node("Mul", "twice", &[&shape, "two"], vec![]);
    let out = b.node("Reshape", "r", &[&c, &twice], vec![]);
    let err =
        import(&b.graph(&[1, 3, 4, 4], &out), "x", &[3, 4, 4], &out).expect_err("batch arithmetic");
    match err {
        NnError::Unsupported { node, why, .. } => {
            assert_eq!(node, "twice");
            assert!(why.contains("batch size"), "{why}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn refuses_skip_connection_over_the_cut() {
    let mut b = Builder::new(133);
    let a = b.conv("a", "x", ConvSpec::new(3, 3, 1));
    let act = b.node("Relu", "act", &[&a], vec![]);
    let c = b.conv("c", &act, ConvSpec::new(3, 3, 1));
    let out = b.node("Add", "sum", &[&c, &a], vec![]);
    let g = b.graph(&[1, 3, 4, 4], &out);
    let err = import(&g, "act", &[3, 4, 4], &out).expect_err("the skip crosses the cut");
    match err {
        NnError::Graph(msg) => {
            assert!(msg.contains("skip connection"), "{msg}");
            assert!(msg.contains("'sum'") && msg.contains("Add"), "{msg}");
            assert!(msg.contains("'a'"), "names the tensor: {msg}");
        }
        other => panic!("expected Graph, got {other:?}"),
    }
    // Cut at the block boundary, the residual lies inside the scope.
    let imp = import(&g, "a", &[3, 4, 4], &out).expect("cut at the block input");
    assert_eq!(
        imp.graph.node_names().collect::<Vec<_>>(),
        ["act", "c", "sum"]
    );
}

#[test]
fn refuses_output_not_above_the_cut() {
    let mut b = Builder::new(134);
    let a = b.conv("a", "x", ConvSpec::new(3, 3, 1));
    let out = b.conv("c", &a, ConvSpec::new(3, 3, 1));
    let g = b.graph(&[1, 3, 4, 4], &out);
    assert!(matches!(
        import(&g, "c", &[3, 4, 4], "a"),
        Err(NnError::Graph(_))
    ));
}

#[test]
fn refuses_other_unsupported_forms() {
    let x_shape = [1, 4, 4, 4];
    // (node name, op, what the reason mentions, the graph's nodes)
    type Case = (&'static str, &'static str, &'static str);
    let mut cases: Vec<(Case, Builder, String)> = Vec::new();
    {
        let mut b = Builder::new(140);
        let w = b.randn("w", &[4, 4, 3, 3], 0.2);
        let out = b.node(
            "Conv",
            "same",
            &["x", &w],
            vec![pb::AttributeProto {
                name: "auto_pad".into(),
                r#type: AttributeType::String as i32,
                s: b"SAME_UPPER".to_vec(),
                ..Default::default()
            }],
        );
        cases.push((("same", "Conv", "auto_pad"), b, out));
    }
    {
        let mut b = Builder::new(141);
        let a = b.conv("a", "x", ConvSpec::new(4, 4, 1));
        let out = b.node("Mul", "gate", &["x", &a], vec![]);
        cases.push((("gate", "Mul", "two data tensors"), b, out));
    }
    {
        let mut b = Builder::new(142);
        let flat = b.node("Flatten", "flat", &["x"], vec![]);
        let w = b.randn("w", &[64, 3], 0.1);
        let out = b.node("Gemm", "fc", &[&flat, &w], vec![attr_int("transA", 1)]);
        cases.push((("fc", "Gemm", "transA"), b, out));
    }
    {
        let mut b = Builder::new(143);
        let flat = b.node("Flatten", "flat", &["x"], vec![]);
        let w = b.randn("w", &[64, 3], 0.1);
        let out = b.node("Gemm", "fc", &[&flat, &w], vec![attr_float("alpha", 0.5)]);
        cases.push((("fc", "Gemm", "alpha"), b, out));
    }
    {
        let mut b = Builder::new(144);
        let s = b.randn("s", &[1, 1, 4, 4], 1.0);
        let out = b.node("Mul", "spatial", &["x", &s], vec![]);
        cases.push((("spatial", "Mul", "per channel"), b, out));
    }
    {
        let mut b = Builder::new(145);
        let out = b.node("ReduceMean", "rm", &["x"], vec![attr_ints("axes", &[1])]);
        cases.push((("rm", "ReduceMean", "axes"), b, out));
    }
    {
        let mut b = Builder::new(146);
        let shape = b.ints("shape", &[2, -1]);
        let out = b.node("Reshape", "rs", &["x", &shape], vec![]);
        cases.push((("rs", "Reshape", "batch"), b, out));
    }
    for ((name, op_type, reason), b, out) in cases {
        let err = import(&b.graph(&x_shape, &out), "x", &x_shape[1..], &out).expect_err("refused");
        match err {
            NnError::Unsupported { node, op, why } => {
                assert_eq!((node.as_str(), op.as_str()), (name, op_type), "{why}");
                assert!(why.contains(reason), "{name}: {why}");
            }
            other => panic!("{name}: expected Unsupported, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- layouts

/// A one-conv graph, its parameters, an input and an upstream gradient.
fn layout_fixture() -> (Imported, ArrayD<f32>, ArrayD<f32>) {
    let x_shape = [3, 2, 4, 4];
    let mut b = Builder::new(150);
    let out = b.conv("op", "x", ConvSpec::new(2, 3, 1));
    let imp = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    let x = randn(&mut rng(151), &x_shape, 1.0);
    let g = randn(&mut rng(152), &[3, 3, 4, 4], 1.0);
    (imp, x, g)
}

/// `a` copied into column-major (Fortran) order: same shape and values.
fn column_major(a: &ArrayD<f32>) -> ArrayD<f32> {
    use ndarray::ShapeBuilder;
    let mut f = ArrayD::<f32>::zeros(IxDyn(a.shape()).f());
    f.assign(a);
    assert!(!f.is_standard_layout());
    f
}

#[test]
fn forward_takes_any_layout() {
    let (imp, x, _) = layout_fixture();
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let (y, _) = imp.graph.forward(&refs, x.clone()).expect("forward");
    let (yf, _) = imp.graph.forward(&refs, column_major(&x)).expect("forward");
    assert_eq!(yf, y);
}

#[test]
fn backward_takes_a_column_major_dy() {
    let (imp, x, g) = layout_fixture();
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let (_, tape) = imp.graph.forward(&refs, x).expect("forward");
    let want = imp
        .graph
        .backward(&refs, &tape, g.clone(), &[true, true])
        .expect("backward");
    let got = imp
        .graph
        .backward(&refs, &tape, column_major(&g), &[true, true])
        .expect("backward of a column-major dy");
    assert_eq!(got, want);
}

#[test]
fn forward_rows_takes_column_major_rows() {
    use ndarray::ShapeBuilder;
    let (imp, x, _) = layout_fixture();
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let (y, _) = imp.graph.forward(&refs, x.clone()).expect("forward");
    let rows = x.into_shape_with_order((3, 32)).expect("rows");
    let mut rows_f = Array2::<f32>::zeros((3, 32).f());
    rows_f.assign(&rows);
    let (y_rows, _) = imp
        .graph
        .forward_rows(&refs, rows_f.view(), 1)
        .expect("forward_rows of column-major rows");
    assert_eq!(
        y_rows.into_dyn(),
        y.into_shape_with_order(IxDyn(&[3, 48])).expect("rows")
    );
}

// ---------------------------------------------------------------- MaxPool, AveragePool

fn attr_string(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// `[N, C, H, W]` whose every plane is a random permutation of distinct
/// values 0.1 apart around 0: in every window the maximum leads the
/// runner-up by at least 0.1, far more than a finite-difference step moves
/// either, so the argmax never flips.
fn distinct_planes(seed: u64, shape: &[usize]) -> ArrayD<f32> {
    use rand::seq::SliceRandom;
    let mut r = rng(seed);
    let hw = shape[2] * shape[3];
    let mut values = Vec::with_capacity(shape.iter().product());
    for _ in 0..shape[0] * shape[1] {
        let mut plane: Vec<f32> = (0..hw)
            .map(|k| (k as f32 - (hw / 2) as f32) * 0.1)
            .collect();
        plane.shuffle(&mut r);
        values.extend(plane);
    }
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape")
}

/// A MaxPool alone (the forward against tract) and behind `x·s + t` per
/// channel, `s` in 0.5..1.5: a positive scale and a shift keep every
/// plane's order, so the pool's inputs keep [`distinct_planes`]' margins
/// (at least 0.05) and the finite differences of `s` and `t` check that
/// each window's gradient reaches its argmax and only it.
fn max_pool_case(
    label: &str,
    x_shape: &[usize],
    seed: u64,
    attrs: &[pb::AttributeProto],
    want_hw: [usize; 2],
) -> Errors {
    let c = x_shape[1];
    let x = distinct_planes(seed, x_shape);
    let pool = |b: &mut Builder, input: &str| b.node("MaxPool", "op", &[input], attrs.to_vec());
    let mut b = Builder::new(seed);
    let out = pool(&mut b, "x");
    let g = b.graph(x_shape, &out);
    assert_eq!(
        output_shape(&g, x_shape, &out),
        [c, want_hw[0], want_hw[1]],
        "{label}: output shape"
    );
    check(&format!("{label} (alone)"), &g, &x, &out);
    let mut b = Builder::new(seed);
    let s = b.uniform("pre.scale", &[1, c, 1, 1], 0.5, 1.5);
    let scaled = b.node("Mul", "pre", &["x", &s], vec![]);
    let t = b.randn("pre.shift", &[1, c, 1, 1], 1.0);
    let shifted = b.node("Add", "shift", &[&scaled, &t], vec![]);
    let out = pool(&mut b, &shifted);
    let e = check(
        &format!("{label} (behind a Mul and an Add)"),
        &b.graph(x_shape, &out),
        &x,
        &out,
    );
    assert_eq!(e.elements, 2 * c);
    e
}

#[test]
fn max_pool_3x3_stride2_pad1_odd() {
    // (7 + 2 − 3)/2 + 1 = 4; the border windows hold padding, which never
    // wins (many of their pixels are negative).
    max_pool_case(
        "MaxPool 3×3 s2 p1 on 7×7",
        &[2, 3, 7, 7],
        200,
        &[
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
        [4, 4],
    );
}

#[test]
fn max_pool_2x2_stride2() {
    max_pool_case(
        "MaxPool 2×2 s2 on 6×8",
        &[2, 3, 6, 8],
        201,
        &[
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ],
        [3, 4],
    );
    // Odd sizes: the last row and column are never read.
    max_pool_case(
        "MaxPool 2×2 s2 on 7×9",
        &[2, 2, 7, 9],
        202,
        &[
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ],
        [3, 4],
    );
}

#[test]
fn max_pool_ceil_mode_and_asymmetric_pads() {
    // ceil((7 − 2)/2) + 1 = 4 rows, ceil((9 − 2)/2) + 1 = 5 columns: the
    // last windows hang over the edge and read one row / column.
    max_pool_case(
        "MaxPool 2×2 s2 ceil_mode 1 on 7×9",
        &[2, 2, 7, 9],
        203,
        &[
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
            attr_int("ceil_mode", 1),
        ],
        [4, 5],
    );
    // ceil((6 + 1 − 3)/2) + 1 = 3, and (3 − 1)·2 < 6 + 0 keeps the third;
    // columns: ceil((5 + 2 − 3)/2) + 1 = 3.
    max_pool_case(
        "MaxPool 3×3 s2 pads [0,1,1,1] ceil_mode 1 on 6×5",
        &[2, 2, 6, 5],
        204,
        &[
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[0, 1, 1, 1]),
            attr_int("ceil_mode", 1),
        ],
        [3, 3],
    );
    // ceil_mode 1 where the last window would start in the padding: 4 + 1
    // padded rows, kernel 2, stride 2: ceil(3/2) + 1 = 3, but the third
    // window would start at padded row 4 (the padding): dropped.
    max_pool_case(
        "MaxPool 2×2 s2 pads [0,0,1,1] ceil_mode 1 on 4×4",
        &[1, 2, 4, 4],
        205,
        &[
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[0, 0, 1, 1]),
            attr_int("ceil_mode", 1),
        ],
        [2, 2],
    );
}

#[test]
fn max_pool_ties_go_to_the_first_maximum() {
    // As PyTorch: on ties the gradient goes to the first maximum of the
    // window in row-major order (and only to it).
    use edgeclr::adapt::nn::ops::pool::{MaxPool, Window};
    use edgeclr::adapt::nn::ops::{Op, Saved};
    let op = MaxPool {
        window: Window {
            kernel: [2, 2],
            strides: [1, 1],
            pads: [0; 4],
            ceil: false,
        },
    };
    // One 2×3 plane: windows [[1, 2], [2, 1]] and [[2, 0], [1, 2]].
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 3]), vec![1.0, 2.0, 0.0, 2.0, 1.0, 2.0])
        .expect("shape");
    let y = op.forward(&[&x], &[]);
    assert_eq!(y.as_slice().expect("standard layout"), [2.0, 2.0]);
    let dy = ArrayD::from_shape_vec(IxDyn(&[1, 1, 1, 2]), vec![10.0, 100.0]).expect("shape");
    let shape = [1, 1, 2, 3];
    let saved = Saved {
        inputs: &[&x],
        input_shapes: &[&shape],
        params: &[],
        output: &ArrayD::zeros(IxDyn(&[0])),
        output_mask: None,
    };
    let dx = op.backward(&saved, dy, &[true], &mut [])[0]
        .clone()
        .expect("input gradient");
    // The first window's first 2 is at (0, 1); the second window's at (0, 1)
    // too (its 2 at (1, 2) comes later).
    assert_eq!(
        dx.as_slice().expect("standard layout"),
        [0.0, 110.0, 0.0, 0.0, 0.0, 0.0]
    );
}

fn average_pool(b: &mut Builder, x: &str, include_pad: i64) -> String {
    b.node(
        "AveragePool",
        "op",
        &[x],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[1, 1]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_int("count_include_pad", include_pad),
        ],
    )
}

#[test]
fn average_pool_3x3_stride1_pad1_count_include_pad_0() {
    // The border windows divide by the pixels they hold (4 or 6), not 9.
    let x_shape = [2, 4, 6, 7];
    op_pair(
        "AveragePool 3×3 s1 p1 exclude pad",
        &x_shape,
        210,
        |b, x| average_pool(b, x, 0),
    );
    let mut b = Builder::new(210);
    let out = average_pool(&mut b, "x", 0);
    assert_eq!(
        output_shape(&b.graph(&x_shape, &out), &x_shape, &out),
        [4, 6, 7]
    );
}

#[test]
fn average_pool_3x3_stride1_pad1_count_include_pad_1() {
    op_pair(
        "AveragePool 3×3 s1 p1 include pad",
        &[2, 4, 6, 7],
        211,
        |b, x| average_pool(b, x, 1),
    );
}

#[test]
fn average_pool_2x2_stride2_asymmetric_pads() {
    // Rows: (7 + 1 − 2)/2 + 1 = 4; columns: (8 + 0 − 3)/2 + 1 = 3.
    op_pair(
        "AveragePool [2,3] strides [2,2] pads [1,0,0,0]",
        &[2, 3, 7, 8],
        212,
        |b, x| {
            b.node(
                "AveragePool",
                "op",
                &[x],
                vec![
                    attr_ints("kernel_shape", &[2, 3]),
                    attr_ints("strides", &[2, 2]),
                    attr_ints("pads", &[1, 0, 0, 0]),
                ],
            )
        },
    );
}

// ---------------------------------------------------------------- Pad

/// `Pad` (opset ≥ 11) of `x` by `pads`, with `value` as a scalar input.
fn pad_node(b: &mut Builder, x: &str, pads: &[i64], value: f32) -> String {
    let pads = b.ints("op.pads", pads);
    let value = b.init("op.value", &ArrayD::from_elem(IxDyn(&[]), value));
    b.node("Pad", "op", &[x, &pads, &value], vec![])
}

#[test]
fn pad_constant_zero() {
    let x_shape = [2, 3, 4, 5];
    let pads = [0, 0, 1, 2, 0, 0, 2, 1];
    op_pair("Pad [0,0,1,2, 0,0,2,1] value 0", &x_shape, 220, |b, x| {
        pad_node(b, x, &pads, 0.0)
    });
    let mut b = Builder::new(220);
    let out = pad_node(&mut b, "x", &pads, 0.0);
    let imp = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    assert_eq!(imp.graph.output_shape(), [3, 7, 8]);
    // The pads and the value are constants, not parameters.
    assert!(imp.graph.params().is_empty());
}

#[test]
fn pad_constant_half() {
    op_pair(
        "Pad [0,0,1,2, 0,0,2,1] value 0.5",
        &[2, 3, 4, 5],
        221,
        |b, x| pad_node(b, x, &[0, 0, 1, 2, 0, 0, 2, 1], 0.5),
    );
    // The channels too, and a pad on one side only.
    op_pair(
        "Pad [0,1,0,0, 0,2,0,3] value 0.5",
        &[2, 3, 4, 5],
        222,
        |b, x| pad_node(b, x, &[0, 1, 0, 0, 0, 2, 0, 3], 0.5),
    );
}

#[test]
fn pad_attributes_opset_10() {
    // Before opset 11 pads and value are attributes. tract reads the test
    // models at opset 13, so the engine is checked against itself with the
    // pads as inputs (checked against tract above).
    let x_shape = [2, 3, 4, 5];
    let x = randn(&mut rng(223), &x_shape, 1.0);
    let mut b = Builder::new(223);
    let out = b.node(
        "Pad",
        "op",
        &["x"],
        vec![
            attr_ints("pads", &[0, 0, 1, 2, 0, 0, 2, 1]),
            attr_float("value", 0.5),
            attr_string("mode", "constant"),
        ],
    );
    let old = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    let mut b = Builder::new(223);
    let out = pad_node(&mut b, "x", &[0, 0, 1, 2, 0, 0, 2, 1], 0.5);
    let new = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    let (y_old, _) = old.graph.forward(&[], x.clone()).expect("forward");
    let (y_new, _) = new.graph.forward(&[], x).expect("forward");
    assert_eq!(y_old, y_new);
    assert_eq!(y_old.shape(), [2, 3, 7, 8]);
}

// ---------------------------------------------------------------- Concat

#[test]
fn concat_of_two_branches_axis_1() {
    // x → conv_a, conv_b → concat: x fans out, its gradient sums both
    // branches (behind the prefix, the prefix's parameters see the sum).
    let x_shape = [2, 4, 5, 6];
    let branches = |b: &mut Builder, x: &str| {
        let a = b.conv("conv_a", x, ConvSpec::new(4, 3, 1));
        let c = b.conv("conv_b", x, ConvSpec::new(4, 2, 3).pad(1));
        b.node("Concat", "op", &[&a, &c], vec![attr_int("axis", 1)])
    };
    op_pair("Concat axis 1 of two branches", &x_shape, 230, branches);
    let mut b = Builder::new(230);
    let out = branches(&mut b, "x");
    assert_eq!(
        output_shape(&b.graph(&x_shape, &out), &x_shape, &out),
        [5, 5, 6]
    );
}

#[test]
fn concat_negative_axis() {
    // Along the columns: widths 6 and 6 − 2.
    let x_shape = [2, 3, 4, 6];
    let columns = |b: &mut Builder, x: &str| {
        let a = b.conv("conv_a", x, ConvSpec::new(3, 2, 1));
        let c = b.conv("conv_b", x, ConvSpec::new(3, 2, 1).kernel([1, 3]));
        b.node("Concat", "op", &[&a, &c], vec![attr_int("axis", -1)])
    };
    op_pair("Concat axis -1 of two branches", &x_shape, 231, columns);
    let mut b = Builder::new(231);
    let out = columns(&mut b, "x");
    assert_eq!(
        output_shape(&b.graph(&x_shape, &out), &x_shape, &out),
        [2, 4, 10]
    );
    // Along the channels, counted from the end, with the op's own input and
    // one branch used twice.
    op_pair("Concat axis -3 of (a, x, a)", &x_shape, 232, |b, x| {
        let a = b.conv("conv_a", x, ConvSpec::depthwise(3, 3).pad(1));
        b.node("Concat", "op", &[&a, x, &a], vec![attr_int("axis", -3)])
    });
    // Rows [N, D]: axis −1 is the features.
    op_pair("Concat axis -1 of [N, D] rows", &[3, 5], 233, |b, x| {
        let a = b.gemm("fc_a", x, (5, 4), true, Some(&[4]));
        let c = b.gemm("fc_b", x, (5, 2), false, None);
        b.node("Concat", "op", &[&a, &c], vec![attr_int("axis", -1)])
    });
}

// ---------------------------------------------------------------- what the backward keeps

#[test]
fn pool_pad_concat_keep_only_what_they_read() {
    // With only the biases trained, the tape drops what the backward of
    // AveragePool, Pad and Concat does not read; MaxPool keeps its input
    // (it recomputes the argmax). The gradients are those of a full tape.
    let x_shape = [3, 4, 7, 7];
    let x = distinct_planes(240, &x_shape);
    let mut b = Builder::new(240);
    let s = b.uniform("pre.scale", &[1, 4, 1, 1], 0.5, 1.5);
    let scaled = b.node("Mul", "pre", &["x", &s], vec![]);
    let t = b.randn("pre.shift", &[1, 4, 1, 1], 1.0);
    let shifted = b.node("Add", "shift", &[&scaled, &t], vec![]);
    let max = b.node(
        "MaxPool",
        "max",
        &[&shifted],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let pads = b.ints("pad.pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
    let padded = b.node("Pad", "pad", &[&max, &pads], vec![]);
    let avg = average_pool(&mut b, &padded, 0);
    let branch = b.conv("branch", &avg, ConvSpec::new(4, 2, 1));
    let out = b.node("Concat", "cat", &[&avg, &branch], vec![attr_int("axis", 1)]);
    let imp = engine(&b.graph(&x_shape, &out), &x_shape, &out);
    let graph = &imp.graph;
    let names: Vec<&str> = graph.node_names().collect();
    assert_eq!(names, ["pre", "shift", "max", "pad", "op", "branch", "cat"]);
    let trainable: Vec<bool> = graph
        .params()
        .iter()
        .map(|p| p.kind == ParamKind::Bias)
        .collect();
    let plan = graph.keep_plan(&trainable);
    // Values: x, pre, shift, max, pad, op, branch, cat.
    assert_eq!(
        plan.values,
        [false, false, true, false, false, false, false, false]
    );
    let refs: Vec<&ArrayD<f32>> = imp.init.iter().collect();
    let (y, full) = graph.forward(&refs, x.clone()).expect("forward");
    let (y_kept, kept) = graph
        .forward_keeping(&refs, x, Some(&plan))
        .expect("forward");
    assert_eq!(y, y_kept);
    let g = randn(&mut rng(241), y.shape(), 1.0);
    let want = graph
        .backward(&refs, &full, g.clone(), &trainable)
        .expect("backward");
    let got = graph
        .backward(&refs, &kept, g, &trainable)
        .expect("backward on the kept tape");
    assert_eq!(got, want);
    assert_eq!(got.iter().filter(|g| g.is_some()).count(), 2);
}

// ---------------------------------------------------------------- refusals of the pool, Pad and Concat forms

#[test]
fn refuses_unsupported_pool_pad_concat_forms() {
    let x_shape = [1, 4, 6, 6];
    // (node name, op, what the reason mentions)
    type Case = (&'static str, &'static str, &'static str);
    let mut cases: Vec<(Case, Builder, String)> = Vec::new();
    let pool = |dilations: &[i64]| {
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("dilations", dilations),
        ]
    };
    {
        let mut b = Builder::new(250);
        let out = b.node("MaxPool", "mp", &["x"], pool(&[2, 2]));
        cases.push((("mp", "MaxPool", "dilations"), b, out));
    }
    {
        let mut b = Builder::new(251);
        let mut attrs = pool(&[1, 1]);
        attrs.push(attr_int("ceil_mode", 1));
        let out = b.node("AveragePool", "ap", &["x"], attrs);
        cases.push((("ap", "AveragePool", "ceil_mode"), b, out));
    }
    {
        let mut b = Builder::new(252);
        let mut attrs = pool(&[1, 1]);
        attrs.push(attr_ints("pads", &[3, 3, 3, 3]));
        let out = b.node("MaxPool", "mp", &["x"], attrs);
        cases.push((("mp", "MaxPool", "smaller than the kernel"), b, out));
    }
    {
        let mut b = Builder::new(253);
        let mut attrs = pool(&[1, 1]);
        attrs.push(attr_string("auto_pad", "SAME_UPPER"));
        let out = b.node("MaxPool", "mp", &["x"], attrs);
        cases.push((("mp", "MaxPool", "auto_pad"), b, out));
    }
    {
        let mut b = Builder::new(254);
        let pads = b.ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1]);
        let out = b.node(
            "Pad",
            "pad",
            &["x", &pads],
            vec![attr_string("mode", "reflect")],
        );
        cases.push((("pad", "Pad", "reflect"), b, out));
    }
    {
        let mut b = Builder::new(255);
        let pads = b.ints("pads", &[1, 0, 0, 0, 1, 0, 0, 0]);
        let out = b.node("Pad", "pad", &["x", &pads], vec![]);
        cases.push((("pad", "Pad", "batch"), b, out));
    }
    {
        let mut b = Builder::new(256);
        let pads = b.ints("pads", &[0, 0, -1, 0, 0, 0, 0, 0]);
        let out = b.node("Pad", "pad", &["x", &pads], vec![]);
        cases.push((("pad", "Pad", "negative"), b, out));
    }
    {
        let mut b = Builder::new(257);
        let out = b.node("Concat", "cat", &["x", "x"], vec![attr_int("axis", 0)]);
        cases.push((("cat", "Concat", "axis 0"), b, out));
    }
    {
        let mut b = Builder::new(258);
        let out = b.node("Concat", "cat", &["x", "x"], vec![attr_int("axis", -4)]);
        cases.push((("cat", "Concat", "batch"), b, out));
    }
    {
        let mut b = Builder::new(259);
        let c = b.randn("c", &[1, 2, 6, 6], 1.0);
        let out = b.node("Concat", "cat", &["x", &c], vec![attr_int("axis", 1)]);
        cases.push((("cat", "Concat", "concat with a constant"), b, out));
    }
    {
        let mut b = Builder::new(260);
        let a = b.conv("a", "x", ConvSpec::new(4, 4, 1).stride(2));
        let out = b.node("Concat", "cat", &["x", &a], vec![attr_int("axis", 1)]);
        cases.push((("cat", "Concat", "differ"), b, out));
    }
    for ((name, op_type, reason), b, out) in cases {
        let err = import(&b.graph(&x_shape, &out), "x", &x_shape[1..], &out).expect_err("refused");
        match err {
            NnError::Unsupported { node, op, why } => {
                assert_eq!((node.as_str(), op.as_str()), (name, op_type), "{why}");
                assert!(why.contains(reason), "{name}: {why}");
            }
            other => panic!("{name}: expected Unsupported, got {other:?}"),
        }
    }
}
