//! Pooling: global average pooling over the pixels (`GlobalAveragePool`
//! and `ReduceMean` over axes `[2, 3]`, with or without keepdims), and the
//! windowed `MaxPool` and `AveragePool` (2-D kernels, strides, pads).

use super::{
    as_ncs, attr_i, attr_ints, attr_s, data_input, unsupported, Constants, Keeps, Op, ParamKind,
    Parsed, Saved, Tensor,
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
        Keeps::inputs(vec![false])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}

/// The window of a `MaxPool` or `AveragePool` over NCHW planes.
///
/// Every window holds at least one input pixel: pads are smaller than the
/// kernel, and in ceil mode a last window that would start in the bottom
/// (right) padding is dropped, as ONNX Runtime, PyTorch and tract do.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    /// Top, left, bottom, right.
    pub pads: [usize; 4],
    /// `ceil_mode = 1`: the output size rounds up.
    pub ceil: bool,
}

/// `MaxPool`: the largest value of each window (padded cells never win).
/// The gradient goes to the first maximum in row-major window order, as
/// PyTorch's does.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxPool {
    pub window: Window,
}

/// `AveragePool`: the mean of each window, over its input pixels only
/// (`count_include_pad = 0`) or over the whole kernel, padding counted as
/// zeros (`count_include_pad = 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct AveragePool {
    pub window: Window,
    pub count_include_pad: bool,
}

/// `MaxPool` / `AveragePool` (ONNX opset ≤ 19 attributes).
pub(crate) fn parse_window(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    let data = data_input(node, consts)?;
    let max = node.op_type == "MaxPool";
    let kernel = match attr_ints(node, "kernel_shape") {
        Some(k) if k.len() == 2 && k.iter().all(|&v| v >= 1) => [k[0] as usize, k[1] as usize],
        Some(k) => {
            return Err(unsupported(
                node,
                format!("with kernel_shape {k:?} (only 2-D pooling)"),
            ))
        }
        None => return Err(unsupported(node, "without kernel_shape")),
    };
    let two = |name: &str| -> Result<[usize; 2], NnError> {
        match attr_ints(node, name) {
            None => Ok([1, 1]),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => {
                Ok([v[0] as usize, v[1] as usize])
            }
            Some(v) => Err(unsupported(node, format!("with {name} {v:?}"))),
        }
    };
    let dilations = two("dilations")?;
    if dilations != [1, 1] {
        return Err(unsupported(
            node,
            format!("with dilations {dilations:?} (only dilation 1)"),
        ));
    }
    let strides = two("strides")?;
    let valid = match attr_s(node, "auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => false,
        Some("VALID") => true,
        Some(p) => {
            return Err(unsupported(
                node,
                format!("with auto_pad {p} (give explicit pads)"),
            ))
        }
    };
    let pads = match attr_ints(node, "pads") {
        None => [0; 4],
        Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
            [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
        }
        Some(p) => return Err(unsupported(node, format!("with pads {p:?}"))),
    };
    if valid && pads != [0; 4] {
        return Err(unsupported(
            node,
            format!("with auto_pad VALID and pads {pads:?}"),
        ));
    }
    if pads[0] >= kernel[0] || pads[2] >= kernel[0] || pads[1] >= kernel[1] || pads[3] >= kernel[1]
    {
        return Err(unsupported(
            node,
            format!("with pads {pads:?} not smaller than the kernel {kernel:?}"),
        ));
    }
    let ceil = match attr_i(node, "ceil_mode", 0) {
        0 => false,
        1 if max => true,
        1 => {
            return Err(unsupported(
                node,
                "with ceil_mode 1 (only ceil_mode 0 for AveragePool)",
            ))
        }
        m => return Err(unsupported(node, format!("with ceil_mode {m}"))),
    };
    let window = Window {
        kernel,
        strides,
        pads,
        ceil,
    };
    let op: Box<dyn Op> = if max {
        let order = attr_i(node, "storage_order", 0);
        if order != 0 {
            return Err(unsupported(
                node,
                format!("with storage_order {order} (only 0)"),
            ));
        }
        Box::new(MaxPool { window })
    } else {
        let count_include_pad = match attr_i(node, "count_include_pad", 0) {
            0 => false,
            1 => true,
            m => return Err(unsupported(node, format!("with count_include_pad {m}"))),
        };
        Box::new(AveragePool {
            window,
            count_include_pad,
        })
    };
    Ok(Parsed {
        op,
        data: vec![data],
        params: vec![],
    })
}

impl Window {
    /// Output positions along one axis of `size` input pixels.
    fn out_len(&self, axis: usize, size: usize) -> Option<usize> {
        let (k, s) = (self.kernel[axis], self.strides[axis]);
        let (before, after) = (self.pads[axis], self.pads[axis + 2]);
        let span = (size + before + after).checked_sub(k)?;
        let mut out = if self.ceil {
            span.div_ceil(s)
        } else {
            span / s
        } + 1;
        if self.ceil && (out - 1) * s >= size + before {
            out -= 1;
        }
        Some(out)
    }

    /// `(ho, wo)` for an `h×w` input, or why the kernel does not fit.
    fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize), String> {
        match (self.out_len(0, h), self.out_len(1, w)) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => Err(format!(
                "kernel {:?} is larger than the padded {h}×{w} input",
                self.kernel
            )),
        }
    }

    /// The input pixels `lo..hi` that output position `o` reads along
    /// `axis` (never empty, see [`Window`]).
    fn span(&self, axis: usize, o: usize, size: usize) -> (usize, usize) {
        let start = o * self.strides[axis];
        let before = self.pads[axis];
        let lo = start.saturating_sub(before);
        let hi = (start + self.kernel[axis]).saturating_sub(before).min(size);
        (lo, hi)
    }

    /// `f(plane, output index, rows, columns)` for every output pixel of an
    /// `[N, C, H, W]` input: `plane` is the (n, c) plane's index.
    fn for_each(
        &self,
        shape: &[usize],
        mut f: impl FnMut(usize, usize, (usize, usize), (usize, usize)),
    ) {
        let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3]);
        let (ho, wo) = self.out_hw(h, w).expect("checked at import");
        let cols: Vec<(usize, usize)> = (0..wo).map(|ox| self.span(1, ox, w)).collect();
        for p in 0..planes {
            for oy in 0..ho {
                let rows = self.span(0, oy, h);
                for (ox, &c) in cols.iter().enumerate() {
                    f(p, (p * ho + oy) * wo + ox, rows, c);
                }
            }
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let &[n, c, h, w] = input else {
            return Err(format!("pools [N, C, H, W], got {input:?}"));
        };
        let (ho, wo) = self.out_hw(h, w)?;
        Ok(vec![n, c, ho, wo])
    }
}

/// The offset in an `h×w`-wide plane of the first maximum of a window, in
/// row-major order (a NaN wins, as in PyTorch).
fn argmax(plane: &[f32], w: usize, (y0, y1): (usize, usize), (x0, x1): (usize, usize)) -> usize {
    let mut best = y0 * w + x0;
    let mut top = plane[best];
    for iy in y0..y1 {
        for (ix, &v) in plane[iy * w + x0..iy * w + x1].iter().enumerate() {
            if v > top || (v.is_nan() && !top.is_nan()) {
                top = v;
                best = iy * w + x0 + ix;
            }
        }
    }
    best
}

impl Op for MaxPool {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        self.window.output_shape(inputs[0])
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        let x = inputs[0];
        let shape = x.shape();
        let hw = shape[2] * shape[3];
        let xs = x.as_slice().expect("standard layout");
        let mut y = Tensor::zeros(self.window.output_shape(shape).expect("checked at import"));
        let ys = y.as_slice_mut().expect("standard layout");
        self.window.for_each(shape, |p, o, rows, cols| {
            let plane = &xs[p * hw..(p + 1) * hw];
            ys[o] = plane[argmax(plane, shape[3], rows, cols)];
        });
        y
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let dx = want[0].then(|| {
            let shape = saved.input_shapes[0];
            let hw = shape[2] * shape[3];
            let xs = saved.inputs[0].as_slice().expect("standard layout");
            let g = dy.as_slice().expect("standard layout");
            let mut d = Tensor::zeros(shape.to_vec());
            let ds = d.as_slice_mut().expect("standard layout");
            self.window.for_each(shape, |p, o, rows, cols| {
                let at = argmax(&xs[p * hw..(p + 1) * hw], shape[3], rows, cols);
                ds[p * hw + at] += g[o];
            });
            d
        });
        vec![dx]
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        // The argmax is recomputed from the input.
        Keeps::inputs(vec![true])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}

impl AveragePool {
    /// What a window of these rows and columns divides by.
    fn count(&self, (y0, y1): (usize, usize), (x0, x1): (usize, usize)) -> f32 {
        if self.count_include_pad {
            // ceil_mode 0: every window lies inside the padded input.
            (self.window.kernel[0] * self.window.kernel[1]) as f32
        } else {
            ((y1 - y0) * (x1 - x0)) as f32
        }
    }
}

impl Op for AveragePool {
    fn output_shape(&self, inputs: &[&[usize]], _: &[&[usize]]) -> Result<Vec<usize>, String> {
        self.window.output_shape(inputs[0])
    }

    fn forward(&self, inputs: &[&Tensor], _: &[&Tensor]) -> Tensor {
        let x = inputs[0];
        let shape = x.shape();
        let (hw, w) = (shape[2] * shape[3], shape[3]);
        let xs = x.as_slice().expect("standard layout");
        let mut y = Tensor::zeros(self.window.output_shape(shape).expect("checked at import"));
        let ys = y.as_slice_mut().expect("standard layout");
        self.window.for_each(shape, |p, o, rows, cols| {
            let plane = &xs[p * hw..(p + 1) * hw];
            let sum: f32 = (rows.0..rows.1)
                .map(|iy| plane[iy * w + cols.0..iy * w + cols.1].iter().sum::<f32>())
                .sum();
            ys[o] = sum / self.count(rows, cols);
        });
        y
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want: &[bool],
        _: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let dx = want[0].then(|| {
            let shape = saved.input_shapes[0];
            let (hw, w) = (shape[2] * shape[3], shape[3]);
            let g = dy.as_slice().expect("standard layout");
            let mut d = Tensor::zeros(shape.to_vec());
            let ds = d.as_slice_mut().expect("standard layout");
            self.window.for_each(shape, |p, o, rows, cols| {
                let v = g[o] / self.count(rows, cols);
                let plane = &mut ds[p * hw..(p + 1) * hw];
                for iy in rows.0..rows.1 {
                    plane[iy * w + cols.0..iy * w + cols.1]
                        .iter_mut()
                        .for_each(|d| *d += v);
                }
            });
            d
        });
        vec![dx]
    }

    fn keeps(&self, _: &[bool]) -> Keeps {
        Keeps::inputs(vec![false])
    }

    fn param_kinds(&self) -> Vec<ParamKind> {
        vec![]
    }
}
