//! Ops that move values without computing: `Flatten` (axis 1) and
//! `Reshape` to a constant shape that keeps the batch axis (a view change,
//! whose backward reshapes the gradient back), `Pad` with a constant
//! (whose backward slices the gradient back) and `Concat` of data tensors
//! (whose backward splits it).

use ndarray::Slice;

use super::{
    attr, attr_f, attr_i, attr_ints, attr_s, const_f32, data_input, unsupported, Constants, Keeps,
    Op, ParamKind, Parsed, Saved, Tensor,
};
use crate::adapt::nn::NnError;

/// A reshape: `Flatten` is `target = [0, -1]`. Per ONNX, `0` copies the
/// input's axis and `-1` takes what is left.
#[derive(Debug, Clone, PartialEq)]
pub struct Reshape {
    pub target: Vec<i64>,
}

pub(crate) fn parse(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    let data = data_input(node, consts)?;
    let target = if node.op_type == "Flatten" {
        if attr_i(node, "axis", 1) != 1 {
            return Err(unsupported(node, "with axis ≠ 1 (only [N, ...] → [N, D])"));
        }
        vec![0, -1]
    } else {
        let target = node
            .input
            .get(1)
            .and_then(|n| consts.ints(n))
            .ok_or_else(|| unsupported(node, "with a shape that is not constant"))?
            .map_err(|e| unsupported(node, e))?;
        if attr_i(node, "allowzero", 0) != 0 {
            return Err(unsupported(node, "with allowzero = 1"));
        }
        // A folded `Shape` gives the batch axis as a symbol: first, it is
        // "copy the input's batch"; anywhere else the target depends on
        // the batch size.
        let mut target = target;
        match target
            .iter()
            .position(|&d| d == crate::adapt::nn::fold::BATCH)
        {
            Some(0) => target[0] = 0,
            Some(_) => {
                return Err(unsupported(
                    node,
                    "to a shape that moves the batch size to another axis",
                ))
            }
            None => {}
        }
        match target.first() {
            Some(0) | Some(-1) => {}
            _ => {
                return Err(unsupported(
                    node,
                    format!(
                        "to {target:?}, which does not keep the batch axis (use 0 or -1 first)"
                    ),
                ))
            }
        }
        if target.iter().filter(|&&d| d == -1).count() > 1 || target.iter().any(|&d| d < -1) {
            return Err(unsupported(node, format!("to {target:?}")));
        }
        target
    };
    Ok(Parsed {
        op: Box::new(Reshape { target }),
        data: vec![data],
        params: vec![],
    })
}

impl Reshape {
    fn resolve(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let total: usize = input.iter().product();
        let n = input[0];
        let mut out: Vec<usize> = Vec::with_capacity(self.target.len());
        let mut infer = None;
        for (i, &d) in self.target.iter().enumerate() {
            match d {
                0 => out.push(
                    *input
                        .get(i)
                        .ok_or_else(|| format!("copies axis {i} of {input:?}"))?,
                ),
                -1 => {
                    infer = Some(i);
                    out.push(1);
                }
                d => out.push(d as usize),
            }
        }
        if let Some(i) = infer {
            let known: usize = out.iter().product();
            if known == 0 || !total.is_multiple_of(known) {
                return Err(format!("cannot reshape {input:?} to {:?}", self.target));
            }
            out[i] = total / known;
        }
        if out.iter().product::<usize>() != total || out[0] != n {
            return Err(format!(
                "cannot reshape {input:?} to {:?} keeping the batch",
                self.target
            ));
        }
        Ok(out)
    }
}

impl Op for Reshape {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        self.resolve(inputs[0])
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        let shape = self.resolve(inputs[0].shape()).expect("checked at import");
        inputs[0]
            .clone()
            .into_shape_with_order(shape)
            .expect("standard layout")
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        vec![want[0].then(|| {
            dy.into_shape_with_order(saved.input_shapes[0])
                .expect("standard layout")
        })]
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        Keeps::inputs(vec![false])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}

/// `Pad` in constant mode: `pads` cells of `value` before and after each
/// axis (ONNX layout: all the befores, then all the afters), on the axes
/// `axes` (all of them, in order, when `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pad {
    pub pads: Vec<usize>,
    pub axes: Option<Vec<i64>>,
    pub value: f32,
}

/// `Pad` with a constant value: pads and value as constant inputs (opset
/// ≥ 11, with the optional `axes` input of opset 18) or as attributes
/// (opset < 11).
pub(crate) fn parse_pad(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    let data = data_input(node, consts)?;
    match attr_s(node, "mode").as_deref() {
        None | Some("constant") => {}
        Some(m) => return Err(unsupported(node, format!("with mode {m} (only constant)"))),
    }
    let input = |k: usize| node.input.get(k).filter(|s| !s.is_empty());
    let const_ints = |k: usize, what: &str| -> Result<Option<Vec<i64>>, NnError> {
        match input(k) {
            None => Ok(None),
            Some(name) => consts
                .ints(name)
                .ok_or_else(|| unsupported(node, format!("with {what} that are not constant")))?
                .map(Some)
                .map_err(|e| unsupported(node, e)),
        }
    };
    let pads = match const_ints(1, "pads")? {
        Some(p) => p,
        None => attr_ints(node, "pads").ok_or_else(|| unsupported(node, "without pads"))?,
    };
    let value = if input(2).is_some() {
        let v = const_f32(node, consts, 2)?.unwrap_or_default();
        if v.len() != 1 {
            return Err(unsupported(
                node,
                format!(
                    "with a constant_value of shape {:?} (only a scalar)",
                    v.shape()
                ),
            ));
        }
        v.iter().copied().next().unwrap_or(0.0)
    } else {
        attr_f(node, "value", 0.0)
    };
    let axes = const_ints(3, "axes")?;
    let axis_count = axes.as_ref().map_or(pads.len() / 2, Vec::len);
    if pads.is_empty() || pads.len() != 2 * axis_count {
        return Err(unsupported(
            node,
            format!("with pads {pads:?} for {axis_count} axes"),
        ));
    }
    if pads.iter().any(|&p| p < 0) {
        return Err(unsupported(
            node,
            format!("with negative pads {pads:?} (cropping is not supported)"),
        ));
    }
    let op = Pad {
        pads: pads.iter().map(|&p| p as usize).collect(),
        axes,
        value,
    };
    if op.axes.is_none() && (op.pads[0] != 0 || op.pads[axis_count] != 0) {
        return Err(unsupported(
            node,
            format!("with pads {pads:?} on the batch axis 0"),
        ));
    }
    Ok(Parsed {
        op: Box::new(op),
        data: vec![data],
        params: vec![],
    })
}

impl Pad {
    /// `(before, after)` per axis of a rank-`rank` input.
    fn per_axis(&self, rank: usize) -> Result<Vec<(usize, usize)>, String> {
        let half = self.pads.len() / 2;
        let mut out = vec![(0, 0); rank];
        let axes: Vec<i64> = match &self.axes {
            Some(a) => a.clone(),
            None if half == rank => (0..rank as i64).collect(),
            None => {
                return Err(format!(
                    "has pads for {half} axes on an input of rank {rank}"
                ))
            }
        };
        for (i, &a) in axes.iter().enumerate() {
            let axis = if a < 0 { a + rank as i64 } else { a };
            if axis < 0 || axis >= rank as i64 {
                return Err(format!("pads axis {a} of a rank-{rank} input"));
            }
            if axes[..i]
                .iter()
                .any(|&o| (o + rank as i64) % rank as i64 == axis)
            {
                return Err(format!("pads axis {a} twice"));
            }
            let (b, e) = (self.pads[i], self.pads[i + half]);
            if axis == 0 && (b, e) != (0, 0) {
                return Err(format!("with pads {:?} on the batch axis 0", self.pads));
            }
            out[axis as usize] = (b, e);
        }
        Ok(out)
    }

    /// Where the input lies in the output, per axis.
    fn inner(&self, input: &[usize]) -> Vec<(usize, usize)> {
        self.per_axis(input.len())
            .expect("checked at import")
            .iter()
            .zip(input)
            .map(|(&(b, _), &d)| (b, b + d))
            .collect()
    }
}

impl Op for Pad {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        let input = inputs[0];
        Ok(self
            .per_axis(input.len())?
            .iter()
            .zip(input)
            .map(|(&(b, e), &d)| b + d + e)
            .collect())
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        let x = inputs[0];
        let shape: Vec<usize> = self
            .per_axis(x.ndim())
            .expect("checked at import")
            .iter()
            .zip(x.shape())
            .map(|(&(b, e), &d)| b + d + e)
            .collect();
        let inner = self.inner(x.shape());
        let mut y = Tensor::from_elem(shape, self.value);
        y.slice_each_axis_mut(|ax| {
            let (lo, hi) = inner[ax.axis.index()];
            Slice::from(lo..hi)
        })
        .assign(x);
        y
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        vec![want[0].then(|| {
            let inner = self.inner(saved.input_shapes[0]);
            dy.slice_each_axis(|ax| {
                let (lo, hi) = inner[ax.axis.index()];
                Slice::from(lo..hi)
            })
            .as_standard_layout()
            .into_owned()
        })]
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        Keeps::inputs(vec![false])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}

/// `Concat` of data tensors along `axis` (negative: from the end; never
/// the batch axis).
#[derive(Debug, Clone, PartialEq)]
pub struct Concat {
    pub axis: i64,
    /// How many inputs it joins.
    pub inputs: usize,
}

/// `Concat` whose inputs are all data tensors (values computed in the
/// scope, or the cut itself).
pub(crate) fn parse_concat(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
    is_data: &dyn Fn(&str) -> bool,
) -> Result<Parsed, NnError> {
    for name in &node.input {
        if !is_data(name) {
            return Err(unsupported(
                node,
                if consts.contains(name) {
                    format!("of '{name}', a constant (concat with a constant is not supported)")
                } else {
                    format!("of '{name}', which is not a value of the scope")
                },
            ));
        }
    }
    let axis = attr(node, "axis")
        .map(|a| a.i)
        .ok_or_else(|| unsupported(node, "without axis"))?;
    if axis == 0 {
        return Err(unsupported(node, "along axis 0, the batch"));
    }
    Ok(Parsed {
        op: Box::new(Concat {
            axis,
            inputs: node.input.len(),
        }),
        data: (0..node.input.len()).collect(),
        params: vec![],
    })
}

impl Concat {
    /// The axis of rank-`rank` inputs.
    fn resolve(&self, rank: usize) -> Result<usize, String> {
        let axis = if self.axis < 0 {
            self.axis + rank as i64
        } else {
            self.axis
        };
        match axis {
            0 => Err(format!("along axis {}, the batch", self.axis)),
            a if a > 0 && a < rank as i64 => Ok(a as usize),
            _ => Err(format!("along axis {} of rank-{rank} inputs", self.axis)),
        }
    }

    /// `(rows, widths)`: the inputs as `[rows, width]` blocks, each row of
    /// the output their widths side by side.
    fn blocks(axis: usize, shapes: &[&[usize]]) -> (usize, Vec<usize>) {
        let rows = shapes[0][..axis].iter().product();
        let widths = shapes.iter().map(|s| s[axis..].iter().product()).collect();
        (rows, widths)
    }
}

impl Op for Concat {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        let first = inputs.first().ok_or("has no inputs")?;
        let axis = self.resolve(first.len())?;
        let mut out = first.to_vec();
        for s in &inputs[1..] {
            let fits = s.len() == first.len()
                && s.iter()
                    .zip(first.iter())
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !fits {
                return Err(format!(
                    "joins shapes {inputs:?}, which differ off axis {}",
                    self.axis
                ));
            }
            out[axis] += s[axis];
        }
        Ok(out)
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        let shapes: Vec<&[usize]> = inputs.iter().map(|x| x.shape()).collect();
        let axis = self.resolve(shapes[0].len()).expect("checked at import");
        let mut shape = shapes[0].to_vec();
        shape[axis] = shapes.iter().map(|s| s[axis]).sum();
        let (rows, widths) = Self::blocks(axis, &shapes);
        let mut y = Vec::with_capacity(shape.iter().product());
        for r in 0..rows {
            for (x, &w) in inputs.iter().zip(&widths) {
                y.extend_from_slice(&x.as_slice().expect("standard layout")[r * w..(r + 1) * w]);
            }
        }
        Tensor::from_shape_vec(shape, y).expect("the shapes add up")
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let shapes = saved.input_shapes;
        let axis = self.resolve(shapes[0].len()).expect("checked at import");
        let (rows, widths) = Self::blocks(axis, shapes);
        let total: usize = widths.iter().sum();
        let g = dy.as_slice().expect("standard layout");
        let mut offset = 0;
        shapes
            .iter()
            .zip(&widths)
            .zip(want)
            .map(|((&s, &w), &wanted)| {
                let start = offset;
                offset += w;
                wanted.then(|| {
                    let mut d = Vec::with_capacity(rows * w);
                    for r in 0..rows {
                        d.extend_from_slice(&g[r * total + start..r * total + start + w]);
                    }
                    Tensor::from_shape_vec(s.to_vec(), d).expect("the shapes add up")
                })
            })
            .collect()
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        Keeps::inputs(vec![false; self.inputs])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}
