//! `BatchNormalization` in its inference form: `y = (x − μ)/√(σ² + ε)·γ + β`
//! with the running statistics μ, σ² frozen (the exported model keeps them)
//! and the per-channel scale γ and shift β trainable, as TinyTL and the
//! "norm" scope of `--train-params` train them.

use super::{
    as_ncs, attr_f, const_f32, data_input, unsupported, weight_input, Constants, Keeps, Op,
    ParamKind, Parsed, Saved, Tensor,
};
use crate::adapt::nn::NnError;

/// Inference batch norm; parameters: γ `[C]`, β `[C]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    pub mean: Vec<f32>,
    /// `1/√(σ² + ε)` per channel.
    pub inv_std: Vec<f32>,
}

pub(crate) fn parse(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    if node.output.len() > 1 && node.output[1..].iter().any(|o| !o.is_empty()) {
        return Err(unsupported(
            node,
            "in training mode (running statistics as outputs)",
        ));
    }
    let data = data_input(node, consts)?;
    let scale = weight_input(node, consts, 1)?;
    let shift = weight_input(node, consts, 2)?;
    let mean = const_f32(node, consts, 3)?.ok_or_else(|| unsupported(node, "without a mean"))?;
    let var = const_f32(node, consts, 4)?.ok_or_else(|| unsupported(node, "without a variance"))?;
    if mean.len() != var.len() {
        return Err(unsupported(
            node,
            "with mean and variance of different lengths",
        ));
    }
    let eps = attr_f(node, "epsilon", 1e-5);
    Ok(Parsed {
        op: Box::new(BatchNorm {
            mean: mean.iter().copied().collect(),
            inv_std: var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect(),
        }),
        data: vec![data],
        params: vec![scale, shift],
    })
}

impl Op for BatchNorm {
    fn output_shape(&self, inputs: &[&[usize]], params: &[&[usize]]) -> Result<Vec<usize>, String> {
        let c = super::channels(inputs[0])?;
        for p in params {
            if p.iter().product::<usize>() != c {
                return Err(format!("has a parameter of shape {p:?} for {c} channels"));
            }
        }
        if self.mean.len() != c {
            return Err(format!(
                "has statistics for {} channels, gets {c}",
                self.mean.len()
            ));
        }
        Ok(inputs[0].to_vec())
    }

    fn forward(&self, inputs: &[&Tensor], params: &[&Tensor]) -> Tensor {
        let x = inputs[0];
        let c = x.shape()[1];
        let s: usize = x.shape()[2..].iter().product();
        let gamma = params[0].as_slice().expect("standard layout");
        let beta = params[1].as_slice().expect("standard layout");
        let mut y = x.clone();
        for (i, lane) in y
            .as_slice_mut()
            .expect("standard layout")
            .chunks_exact_mut(s)
            .enumerate()
        {
            let ch = i % c;
            let (a, b) = (
                gamma[ch] * self.inv_std[ch],
                beta[ch] - gamma[ch] * self.inv_std[ch] * self.mean[ch],
            );
            lane.iter_mut().for_each(|v| *v = *v * a + b);
        }
        y
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        grads: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let g = as_ncs(&dy);
        let (n, c, _) = g.dim();
        let gamma = saved.params[0].as_slice().expect("standard layout");
        if grads[0].is_some() || grads[1].is_some() {
            // The input is kept only when γ trains (Op::keeps).
            let x = grads[0].is_some().then(|| as_ncs(saved.inputs[0]));
            let mut dgamma = vec![0.0f32; c];
            let mut dbeta = vec![0.0f32; c];
            for b in 0..n {
                for ch in 0..c {
                    let gl = g.slice(ndarray::s![b, ch, ..]);
                    dbeta[ch] += gl.sum();
                    if let Some(x) = &x {
                        dgamma[ch] += gl
                            .iter()
                            .zip(x.slice(ndarray::s![b, ch, ..]))
                            .map(|(d, v)| d * (v - self.mean[ch]) * self.inv_std[ch])
                            .sum::<f32>();
                    }
                }
            }
            for (slot, acc) in grads.iter_mut().zip([dgamma, dbeta]) {
                if let Some(t) = slot.as_mut() {
                    t.iter_mut().zip(acc).for_each(|(d, a)| *d += a);
                }
            }
        }
        let dx = want[0].then(|| {
            let s: usize = dy.shape()[2..].iter().product();
            let mut d = dy;
            for (i, lane) in d
                .as_slice_mut()
                .expect("standard layout")
                .chunks_exact_mut(s)
                .enumerate()
            {
                let a = gamma[i % c] * self.inv_std[i % c];
                lane.iter_mut().for_each(|v| *v *= a);
            }
            d
        });
        vec![dx]
    }

    fn keeps(&self, trainable: &[bool]) -> Keeps {
        Keeps::inputs(vec![trainable[0]])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![ParamKind::Scale, ParamKind::Bias]
    }
}
