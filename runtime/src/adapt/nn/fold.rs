//! Folding the small shape computations of real exports into constants.
//!
//! PyTorch exports compute pads and reshape targets at run time with little
//! subgraphs (`Shape → Gather → Unsqueeze → Concat → Reshape`, or the pads
//! of TF-style "same" padding from the input's height and width). With the
//! cut tensor's shape fixed they are constants; folding them here lets the
//! ops that read them ([`super::ops`]) see plain initialisers.
//!
//! The batch size is not fixed: `Shape` yields [`BATCH`] for axis 0, which
//! passes through gathers, slices and concatenations unchanged, reads as `0`
//! ("copy the input's axis") in a reshape target, and is refused by
//! arithmetic (a computation that depends on the batch size).

use tract_onnx::pb;

use super::ops::{attr, tensor_f32, tensor_ints};

/// The batch axis's size inside folded integer tensors.
pub const BATCH: i64 = i64::MIN + 1;

/// Ops this module folds.
pub const FOLDABLE: &[&str] = &[
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Slice",
    "Cast",
    "ConstantOfShape",
    "Identity",
    "Add",
    "Sub",
    "Mul",
    "Div",
];

/// A small constant tensor.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Ints(Vec<i64>, Vec<usize>),
    Floats(Vec<f32>, Vec<usize>),
}

impl Value {
    fn shape(&self) -> &[usize] {
        match self {
            Value::Ints(_, s) | Value::Floats(_, s) => s,
        }
    }

    fn ints(&self) -> Result<&[i64], String> {
        match self {
            Value::Ints(v, _) => Ok(v),
            Value::Floats(..) => Err("expects an integer tensor".into()),
        }
    }

    fn into_proto(self, name: &str) -> pb::TensorProto {
        use pb::tensor_proto::DataType;
        let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect();
        match self {
            Value::Ints(v, s) => pb::TensorProto {
                name: name.to_owned(),
                dims: dims(&s),
                data_type: DataType::Int64 as i32,
                int64_data: v,
                ..Default::default()
            },
            Value::Floats(v, s) => pb::TensorProto {
                name: name.to_owned(),
                dims: dims(&s),
                data_type: DataType::Float as i32,
                float_data: v,
                ..Default::default()
            },
        }
    }

    fn from_proto(t: &pb::TensorProto) -> Result<Value, String> {
        let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        if t.data_type == pb::tensor_proto::DataType::Float as i32 {
            let a = tensor_f32(t)?;
            Ok(Value::Floats(a.iter().copied().collect(), shape))
        } else {
            Ok(Value::Ints(tensor_ints(t)?, shape))
        }
    }
}

/// A `Shape`/`Slice` bound: negative counts from the end, then clamped
/// into `0..=len`, as ONNX says.
fn clamp_index(v: i64, len: i64) -> usize {
    (if v < 0 { v + len } else { v }).clamp(0, len) as usize
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r.max(1)).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} out of range for rank {rank}"))
    }
}

/// Integer arithmetic with scalar/1-D broadcasting; the batch size refuses.
fn arith(op: &str, a: &Value, b: &Value) -> Result<Value, String> {
    let (x, y) = (a.ints()?, b.ints()?);
    if x.contains(&BATCH) || y.contains(&BATCH) {
        return Err("computes with the batch size, which is not fixed".into());
    }
    let n = x.len().max(y.len());
    if !(x.len() == n || x.len() == 1) || !(y.len() == n || y.len() == 1) {
        return Err("broadcasts beyond scalars and vectors".into());
    }
    let shape = if x.len() >= y.len() {
        a.shape()
    } else {
        b.shape()
    }
    .to_vec();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (p, q) = (
            x[if x.len() == 1 { 0 } else { i }],
            y[if y.len() == 1 { 0 } else { i }],
        );
        out.push(
            match op {
                "Add" => p.checked_add(q),
                "Sub" => p.checked_sub(q),
                "Mul" => p.checked_mul(q),
                _ => (q != 0).then(|| p.div_euclid(q)),
            }
            .ok_or("overflows or divides by zero")?,
        );
    }
    Ok(Value::Ints(out, shape))
}

/// The constant output of `node`, if it is a foldable op whose inputs are
/// all known: `constant(name)` gives constant inputs, `shape_of(name)` the
/// shape (batch first) of a data tensor. `Ok(None)`: not foldable here.
pub fn fold<'c>(
    node: &pb::NodeProto,
    constant: &dyn Fn(&str) -> Option<&'c pb::TensorProto>,
    shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> Result<Option<pb::TensorProto>, String> {
    let op = node.op_type.as_str();
    if !FOLDABLE.contains(&op) {
        return Ok(None);
    }
    let out = match node.output.first() {
        Some(o) => o.as_str(),
        None => return Ok(None),
    };
    if op == "Shape" {
        let Some(shape) = node.input.first().and_then(|i| shape_of(i)) else {
            return Ok(None);
        };
        let mut dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        dims[0] = BATCH;
        let rank = dims.len() as i64;
        let start = clamp_index(attr(node, "start").map_or(0, |a| a.i), rank);
        let end = clamp_index(attr(node, "end").map_or(rank, |a| a.i), rank);
        let dims = dims[start..end.max(start)].to_vec();
        let n = dims.len();
        return Ok(Some(Value::Ints(dims, vec![n]).into_proto(out)));
    }
    // Every other op: all (non-empty) inputs must be constants.
    let mut inputs = Vec::with_capacity(node.input.len());
    for name in &node.input {
        if name.is_empty() {
            inputs.push(None);
            continue;
        }
        match constant(name) {
            Some(t) => inputs.push(Some(Value::from_proto(t)?)),
            None => return Ok(None),
        }
    }
    let input = |i: usize| -> Result<&Value, String> {
        inputs
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("needs input {i}"))
    };
    let axes_of = |i: usize, attr_name: &str| -> Result<Vec<i64>, String> {
        match inputs.get(i).and_then(Option::as_ref) {
            Some(v) => Ok(v.ints()?.to_vec()),
            None => Ok(attr(node, attr_name)
                .map(|a| a.ints.clone())
                .unwrap_or_default()),
        }
    };
    let value = match op {
        "Identity" => input(0)?.clone(),
        "Gather" => {
            let data = input(0)?;
            let idx = input(1)?.ints()?;
            if data.shape().len() != 1 {
                return Err("gathers from a tensor that is not 1-D".into());
            }
            let axis = attr(node, "axis").map_or(0, |a| a.i);
            if axis != 0 {
                return Err(format!("gathers on axis {axis}"));
            }
            let n = data.shape()[0] as i64;
            let picks: Result<Vec<usize>, String> = idx
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + n } else { i };
                    if (0..n).contains(&j) {
                        Ok(j as usize)
                    } else {
                        Err(format!("index {i} out of range"))
                    }
                })
                .collect();
            let picks = picks?;
            let shape = input(1)?.shape().to_vec();
            match data {
                Value::Ints(v, _) => Value::Ints(picks.iter().map(|&j| v[j]).collect(), shape),
                Value::Floats(v, _) => Value::Floats(picks.iter().map(|&j| v[j]).collect(), shape),
            }
        }
        "Unsqueeze" | "Squeeze" => {
            let v = input(0)?.clone();
            let axes = axes_of(1, "axes")?;
            let mut shape = v.shape().to_vec();
            if op == "Unsqueeze" {
                let rank = shape.len() + axes.len();
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Result<_, _>>()?;
                axes.sort_unstable();
                for a in axes {
                    shape.insert(a.min(shape.len()), 1);
                }
            } else if axes.is_empty() {
                shape.retain(|&d| d != 1);
            } else {
                let rank = shape.len();
                let axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| norm_axis(a, rank))
                    .collect::<Result<_, _>>()?;
                shape = shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect();
            }
            match v {
                Value::Ints(d, _) => Value::Ints(d, shape),
                Value::Floats(d, _) => Value::Floats(d, shape),
            }
        }
        "Concat" => {
            let mut all = Vec::new();
            for v in inputs.iter().flatten() {
                if v.shape().len() > 1 {
                    return Err("concatenates tensors that are not 1-D".into());
                }
                all.extend_from_slice(v.ints()?);
            }
            let n = all.len();
            Value::Ints(all, vec![n])
        }
        "Slice" => {
            let data = input(0)?;
            let v = data.ints()?;
            if data.shape().len() != 1 {
                return Err("slices a tensor that is not 1-D".into());
            }
            let first = |i: usize, default: i64| -> Result<i64, String> {
                match inputs.get(i).and_then(Option::as_ref) {
                    Some(t) => t
                        .ints()?
                        .first()
                        .copied()
                        .ok_or_else(|| "empty slice bound".into()),
                    None => Ok(default),
                }
            };
            let n = v.len() as i64;
            let step = first(4, 1)?;
            if step != 1 {
                return Err(format!("slices with step {step}"));
            }
            let (s, e) = (clamp_index(first(1, 0)?, n), clamp_index(first(2, n)?, n));
            let out = v[s..e.max(s)].to_vec();
            let len = out.len();
            Value::Ints(out, vec![len])
        }
        "Cast" => {
            let to = attr(node, "to").map_or(0, |a| a.i) as i32;
            use pb::tensor_proto::DataType;
            let v = input(0)?;
            if to == DataType::Float as i32 {
                match v {
                    Value::Ints(d, s) if !d.contains(&BATCH) => {
                        Value::Floats(d.iter().map(|&x| x as f32).collect(), s.clone())
                    }
                    Value::Ints(..) => return Err("casts the batch size".into()),
                    f => f.clone(),
                }
            } else if to == DataType::Int64 as i32 || to == DataType::Int32 as i32 {
                match v {
                    Value::Floats(d, s) => {
                        Value::Ints(d.iter().map(|&x| x as i64).collect(), s.clone())
                    }
                    i => i.clone(),
                }
            } else {
                return Err(format!("casts to data type {to}"));
            }
        }
        "ConstantOfShape" => {
            let dims = input(0)?.ints()?;
            if dims.contains(&BATCH) {
                return Err("builds a tensor as large as the batch".into());
            }
            let shape: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
            let n: usize = shape.iter().product();
            if n > 1 << 16 {
                return Err(format!("builds a {n}-element constant"));
            }
            match attr(node, "value").and_then(|a| a.t.as_ref()) {
                Some(t) => match Value::from_proto(t)? {
                    Value::Ints(v, _) => {
                        Value::Ints(vec![v.first().copied().unwrap_or(0); n], shape)
                    }
                    Value::Floats(v, _) => {
                        Value::Floats(vec![v.first().copied().unwrap_or(0.0); n], shape)
                    }
                },
                None => Value::Floats(vec![0.0; n], shape),
            }
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let (a, b) = (input(0)?, input(1)?);
            // Float arithmetic is the network's own, not a shape computation.
            if matches!(a, Value::Floats(..)) || matches!(b, Value::Floats(..)) {
                return Ok(None);
            }
            arith(op, a, b)?
        }
        _ => return Ok(None),
    };
    Ok(Some(value.into_proto(out)))
}
