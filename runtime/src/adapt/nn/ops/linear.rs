//! `Gemm` and `MatMul` by an initialiser: `y = x·Wᵀ + b` or `y = x·W (+ b)`
//! on `[N, K]` rows, one GEMM for the whole batch.

use ndarray::{Axis, Ix2};

use super::{
    attr_f, attr_i, data_input, unsupported, weight_input, Constants, Keeps, Op, ParamKind, Parsed,
    Saved, Tensor,
};
use crate::adapt::nn::NnError;

/// A dense layer; parameters: weight (`[O, K]` when `transposed`, as Gemm
/// with `transB = 1` stores it; `[K, O]` otherwise), optional bias (`O` values).
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub transposed: bool,
    pub bias: bool,
}

pub(crate) fn parse(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    let data = data_input(node, consts)?;
    let weight = weight_input(node, consts, 1)?;
    let (transposed, bias) = if node.op_type == "Gemm" {
        if attr_f(node, "alpha", 1.0) != 1.0 || attr_f(node, "beta", 1.0) != 1.0 {
            return Err(unsupported(node, "with alpha or beta ≠ 1"));
        }
        if attr_i(node, "transA", 0) != 0 {
            return Err(unsupported(node, "with transA = 1"));
        }
        (
            attr_i(node, "transB", 0) != 0,
            node.input.get(2).is_some_and(|s| !s.is_empty()),
        )
    } else {
        (false, false)
    };
    let mut params = vec![weight];
    if bias {
        params.push(weight_input(node, consts, 2)?);
    }
    Ok(Parsed {
        op: Box::new(Linear { transposed, bias }),
        data: vec![data],
        params,
    })
}

impl Linear {
    /// `(K, O)` of the weight.
    fn dims(&self, w: &[usize]) -> (usize, usize) {
        if self.transposed {
            (w[1], w[0])
        } else {
            (w[0], w[1])
        }
    }
}

impl Op for Linear {
    fn output_shape(&self, inputs: &[&[usize]], params: &[&[usize]]) -> Result<Vec<usize>, String> {
        let &[n, k] = inputs[0] else {
            return Err(format!("takes [N, K] rows, got {:?}", inputs[0]));
        };
        if params[0].len() != 2 {
            return Err(format!("has a weight of shape {:?} (not 2-D)", params[0]));
        }
        let (wk, o) = self.dims(params[0]);
        if wk != k {
            return Err(format!("takes {wk} inputs, gets {k}"));
        }
        if self.bias && params[1].iter().product::<usize>() != o {
            return Err(format!(
                "has a bias of shape {:?} for {o} outputs",
                params[1]
            ));
        }
        Ok(vec![n, o])
    }

    fn forward(&self, inputs: &[&Tensor], params: &[&Tensor]) -> Tensor {
        let x = inputs[0]
            .view()
            .into_dimensionality::<Ix2>()
            .expect("[N, K]");
        let w = params[0]
            .view()
            .into_dimensionality::<Ix2>()
            .expect("2-D weight");
        let mut y = if self.transposed {
            x.dot(&w.t())
        } else {
            x.dot(&w)
        };
        if self.bias {
            let o = y.ncols();
            let b = params[1]
                .view()
                .into_shape_with_order(o)
                .expect("bias of O values");
            y += &b.insert_axis(Axis(0));
        }
        y.into_dyn()
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want_input: &[bool],
        param_grads: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let w = saved.params[0]
            .view()
            .into_dimensionality::<Ix2>()
            .expect("2-D weight");
        let g = dy.view().into_dimensionality::<Ix2>().expect("[N, O]");
        if let Some(dw) = param_grads[0].as_mut() {
            let x = saved.inputs[0]
                .view()
                .into_dimensionality::<Ix2>()
                .expect("[N, K], kept for the weight gradient");
            let mut dw = dw
                .view_mut()
                .into_dimensionality::<Ix2>()
                .expect("2-D weight");
            if self.transposed {
                ndarray::linalg::general_mat_mul(1.0, &g.t(), &x, 1.0, &mut dw);
            } else {
                ndarray::linalg::general_mat_mul(1.0, &x.t(), &g, 1.0, &mut dw);
            }
        }
        if self.bias {
            if let Some(db) = param_grads[1].as_mut() {
                let sum = g.sum_axis(Axis(0));
                db.iter_mut().zip(sum.iter()).for_each(|(d, s)| *d += s);
            }
        }
        let dx = want_input[0].then(|| {
            if self.transposed {
                g.dot(&w).into_dyn()
            } else {
                g.dot(&w.t()).into_dyn()
            }
        });
        vec![dx]
    }

    fn keeps(&self, trainable: &[bool]) -> Keeps {
        Keeps::inputs(vec![trainable[0]])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        if self.bias {
            vec![ParamKind::Weight, ParamKind::Bias]
        } else {
            vec![ParamKind::Weight]
        }
    }
}
