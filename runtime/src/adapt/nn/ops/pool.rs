//! Global average pooling over the pixels: `GlobalAveragePool` and
//! `ReduceMean` over axes `[2, 3]` (with or without keepdims).

use super::{
    as_ncs, attr_i, attr_ints, data_input, unsupported, Constants, Keeps, Op, ParamKind, Parsed,
    Saved, Tensor,
};
use crate::adapt::nn::NnError;

/// Mean over every axis after the channels; `keep` keeps them as size 1.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalMean {
    pub keep: bool,
}

pub(crate) fn parse(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    let data = data_input(node, consts)?;
    let keep = if node.op_type == "ReduceMean" {
        let axes = match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(name) => consts
                .ints(name)
                .ok_or_else(|| unsupported(node, "with axes that are not constant"))?
                .map_err(|e| unsupported(node, e))?,
            None => attr_ints(node, "axes").unwrap_or_default(),
        };
        let mut sorted = axes.clone();
        sorted.sort_unstable();
        if sorted != [2, 3] && sorted != [-2, -1] {
            return Err(unsupported(
                node,
                format!("over axes {axes:?} (only the pixels, [2, 3])"),
            ));
        }
        attr_i(node, "keepdims", 1) != 0
    } else {
        true
    };
    Ok(Parsed {
        op: Box::new(GlobalMean { keep }),
        data: vec![data],
        params: vec![],
    })
}

impl Op for GlobalMean {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        match inputs[0] {
            &[n, c, h, w] if h * w > 0 => Ok(if self.keep {
                vec![n, c, 1, 1]
            } else {
                vec![n, c]
            }),
            s => Err(format!("pools [N, C, H, W], got {s:?}")),
        }
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        let x = as_ncs(inputs[0]);
        let (n, c, s) = x.dim();
        let mean = x.sum_axis(ndarray::Axis(2)) / s as f32;
        let shape = if self.keep {
            vec![n, c, 1, 1]
        } else {
            vec![n, c]
        };
        mean.into_shape_with_order(shape)
            .expect("[N, C]")
            .into_dyn()
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let dx = want[0].then(|| {
            let shape = saved.input_shapes[0].to_vec();
            let s: usize = shape[2..].iter().product();
            let g = dy.as_slice().expect("standard layout");
            let mut d = Tensor::zeros(shape);
            for (lane, &v) in d
                .as_slice_mut()
                .expect("standard layout")
                .chunks_exact_mut(s)
                .zip(g)
            {
                lane.fill(v / s as f32);
            }
            d
        });
        vec![dx]
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

/// `MaxPool` / `AveragePool` (not yet: being written).
pub(crate) fn parse_window(
    node: &tract_onnx::pb::NodeProto,
    _consts: &Constants,
) -> Result<Parsed, NnError> {
    Err(unsupported(node, "is not implemented yet"))
}
