//! Pointwise ops: `Add` (of a per-channel constant, or of two data tensors:
//! the residual connection), `Mul` by a per-channel constant, and the
//! clamps (`Relu`, `Clip`).

use super::{
    as_ncs, attr_f, channels, unsupported, Constants, Keeps, Op, ParamKind, Parsed, Saved, Tensor,
};
use crate::adapt::nn::NnError;

/// Whether a constant of shape `p` broadcasts onto `x` as one value per
/// channel (axis 1) or one value for everything; returns its value count.
fn per_channel(x: &[usize], p: &[usize]) -> Result<usize, String> {
    let c = channels(x)?;
    let numel: usize = p.iter().product();
    if numel == 1 && p.len() <= x.len() {
        return Ok(1);
    }
    // Right-aligned broadcast: the constant's axes line up with x's last ones.
    if p.len() > x.len() {
        return Err(format!(
            "a constant of shape {p:?} does not broadcast onto {x:?}"
        ));
    }
    let offset = x.len() - p.len();
    let fits = p.iter().enumerate().all(|(i, &d)| {
        let axis = offset + i;
        d == 1 || (axis == 1 && d == c)
    });
    if fits && numel == c {
        Ok(c)
    } else {
        Err(format!(
            "a constant of shape {p:?} is not one value per channel of {x:?}"
        ))
    }
}

/// `y = x + b`, `b` one value per channel (or one value).
#[derive(Debug, Clone, PartialEq)]
pub struct AddBias;

/// `y = a + b` of two data tensors of one shape (a residual connection).
#[derive(Debug, Clone, PartialEq)]
pub struct AddData;

/// `y = x · s`, `s` one value per channel (or one value).
#[derive(Debug, Clone, PartialEq)]
pub struct MulScale;

/// `y = clamp(x, min, max)`; `Relu` is `min = 0, max = ∞`. The backward
/// passes the gradient where `min < x < max` (zero at the bounds, as
/// PyTorch's ReLU6 does at 0 and 6).
#[derive(Debug, Clone, PartialEq)]
pub struct Clamp {
    pub min: f32,
    pub max: f32,
}

pub(crate) fn parse_binary(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
    is_data: &dyn Fn(&str) -> bool,
) -> Result<Parsed, NnError> {
    let (a, b) = match (node.input.first(), node.input.get(1)) {
        (Some(a), Some(b)) => (a.as_str(), b.as_str()),
        _ => return Err(unsupported(node, "without two inputs")),
    };
    let (da, db) = (is_data(a), is_data(b));
    let (ca, cb) = (consts.contains(a), consts.contains(b));
    let add = node.op_type == "Add";
    match (da, db) {
        (true, true) if add => Ok(Parsed {
            op: Box::new(AddData),
            data: vec![0, 1],
            params: vec![],
        }),
        (true, true) => Err(unsupported(
            node,
            "of two data tensors (only by a per-channel constant)",
        )),
        (true, false) if cb => Ok(Parsed {
            op: if add {
                Box::new(AddBias)
            } else {
                Box::new(MulScale)
            },
            data: vec![0],
            params: vec![1],
        }),
        (false, true) if ca => Ok(Parsed {
            op: if add {
                Box::new(AddBias)
            } else {
                Box::new(MulScale)
            },
            data: vec![1],
            params: vec![0],
        }),
        _ => Err(unsupported(
            node,
            "whose operands are neither data nor constants",
        )),
    }
}

pub(crate) fn parse_clamp(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    let data = super::data_input(node, consts)?;
    let op = if node.op_type == "Relu" {
        Clamp {
            min: 0.0,
            max: f32::INFINITY,
        }
    } else {
        let bound = |index: usize, attr: &str, default: f32| -> Result<f32, NnError> {
            match super::const_f32(node, consts, index)? {
                Some(t) if t.len() == 1 => Ok(t.iter().copied().next().unwrap_or(default)),
                Some(_) => Err(unsupported(node, "with a bound that is not a scalar")),
                None => Ok(attr_f(node, attr, default)),
            }
        };
        Clamp {
            min: bound(1, "min", f32::NEG_INFINITY)?,
            max: bound(2, "max", f32::INFINITY)?,
        }
    };
    Ok(Parsed {
        op: Box::new(op),
        data: vec![data],
        params: vec![],
    })
}

/// Sums `dy` per channel (or in total) into `acc`, weighted by `w` if given.
fn reduce_per_channel(dy: &Tensor, weight: Option<&Tensor>, acc: &mut Tensor) {
    let g = as_ncs(dy);
    let per_channel = acc.len() > 1;
    let accs = acc.as_slice_mut().expect("standard layout");
    let wv = weight.map(as_ncs);
    for b in 0..g.shape()[0] {
        for c in 0..g.shape()[1] {
            let lane = g.slice(ndarray::s![b, c, ..]);
            let s: f32 = match &wv {
                Some(w) => lane
                    .iter()
                    .zip(w.slice(ndarray::s![b, c, ..]))
                    .map(|(a, b)| a * b)
                    .sum(),
                None => lane.sum(),
            };
            accs[if per_channel { c } else { 0 }] += s;
        }
    }
}

/// `x ∘ p` broadcast per channel.
fn per_channel_map(x: &Tensor, p: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
    let mut y = x.clone();
    let shape = x.shape().to_vec();
    let ps = p.as_slice().expect("standard layout");
    let c = shape[1];
    let s: usize = shape[2..].iter().product();
    let per_channel = ps.len() > 1;
    for (i, lane) in y
        .as_slice_mut()
        .expect("standard layout")
        .chunks_exact_mut(s)
        .enumerate()
    {
        let v = ps[if per_channel { i % c } else { 0 }];
        lane.iter_mut().for_each(|x| *x = f(*x, v));
    }
    y
}

impl Op for AddBias {
    fn output_shape(&self, inputs: &[&[usize]], params: &[&[usize]]) -> Result<Vec<usize>, String> {
        per_channel(inputs[0], params[0])?;
        Ok(inputs[0].to_vec())
    }

    fn forward(&self, inputs: &[&Tensor], params: &[&Tensor]) -> Tensor {
        per_channel_map(inputs[0], params[0], |x, b| x + b)
    }

    fn backward(
        &self,
        _: &Saved,
        dy: Tensor,
        want: &[bool],
        grads: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        if let Some(db) = grads[0].as_mut() {
            reduce_per_channel(&dy, None, db);
        }
        vec![want[0].then_some(dy)]
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        Keeps::inputs(vec![false])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![ParamKind::Bias]
    }
}

impl Op for AddData {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        if inputs[0] != inputs[1] {
            return Err(format!(
                "adds tensors of shapes {:?} and {:?} (broadcasting two data tensors is not supported)",
                inputs[0], inputs[1]
            ));
        }
        Ok(inputs[0].to_vec())
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        let mut y = inputs[0].clone();
        add_into(&mut y, inputs[1]);
        y
    }

    fn backward(
        &self,
        _: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        match want {
            [true, true] => vec![Some(dy.clone()), Some(dy)],
            [a, b] => vec![a.then_some(dy.clone()), b.then_some(dy)],
            _ => want.iter().map(|&w| w.then(|| dy.clone())).collect(),
        }
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        Keeps::inputs(vec![false, false])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}

impl Op for MulScale {
    fn output_shape(&self, inputs: &[&[usize]], params: &[&[usize]]) -> Result<Vec<usize>, String> {
        per_channel(inputs[0], params[0])?;
        Ok(inputs[0].to_vec())
    }

    fn forward(&self, inputs: &[&Tensor], params: &[&Tensor]) -> Tensor {
        per_channel_map(inputs[0], params[0], |x, s| x * s)
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        grads: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        if let Some(ds) = grads[0].as_mut() {
            reduce_per_channel(&dy, Some(saved.inputs[0]), ds);
        }
        vec![want[0].then(|| per_channel_map(&dy, saved.params[0], |g, s| g * s))]
    }

    fn keeps(&self, trainable: &[bool]) -> Keeps {
        Keeps::inputs(vec![trainable[0]])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![ParamKind::Scale]
    }
}

impl Op for Clamp {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        Ok(inputs[0].to_vec())
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        inputs[0].mapv(|v| v.max(self.min).min(self.max))
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let dx = want[0].then(|| {
            let mut d = dy;
            let ds = d.as_slice_mut().expect("standard layout");
            match saved.output_mask {
                Some(mask) => {
                    for (d, &pass) in ds.iter_mut().zip(mask) {
                        *d = if pass { *d } else { 0.0 };
                    }
                }
                None => {
                    // A select, not a branch, so that the loop vectorises.
                    let y = saved.output.as_slice().expect("standard layout");
                    for (d, &v) in ds.iter_mut().zip(y) {
                        let pass = v > self.min && v < self.max;
                        *d = if pass { *d } else { 0.0 };
                    }
                }
            }
            d
        });
        vec![dx]
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        // The mask min < x < max is min < y < max: a mask of the output
        // suffices.
        Keeps {
            inputs: vec![false],
            output: false,
            output_mask: Some((self.min, self.max)),
        }
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}

/// `acc += x` for two tensors of one shape, both in standard layout (a
/// plain slice loop: ndarray's dynamic-rank `+=` walks indices).
pub fn add_into(acc: &mut Tensor, x: &Tensor) {
    let xs = x.as_slice().expect("standard layout");
    for (a, &v) in acc
        .as_slice_mut()
        .expect("standard layout")
        .iter_mut()
        .zip(xs)
    {
        *a += v;
    }
}
