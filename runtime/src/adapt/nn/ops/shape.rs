//! `Flatten` (axis 1) and `Reshape` to a constant shape that keeps the
//! batch axis: a view change, whose backward reshapes the gradient back.

use super::{
    attr_i, data_input, unsupported, Constants, Keeps, Op, ParamKind, Parsed, Saved, Tensor,
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
        Keeps {
            inputs: vec![false],
            output: false,
            output_mask: None,
        }
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}

/// `Pad` with a constant value (not yet: being written).
pub(crate) fn parse_pad(
    node: &tract_onnx::pb::NodeProto,
    _consts: &Constants,
) -> Result<Parsed, NnError> {
    Err(unsupported(node, "is not implemented yet"))
}

/// `Concat` of data tensors (not yet: being written).
pub(crate) fn parse_concat(
    node: &tract_onnx::pb::NodeProto,
    _consts: &Constants,
    _is_data: &dyn Fn(&str) -> bool,
) -> Result<Parsed, NnError> {
    Err(unsupported(node, "is not implemented yet"))
}
