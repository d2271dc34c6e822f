//! `Conv`: NCHW convolution with any kernel, strides, pads and groups
//! (dilation 1), in three kernels chosen by shape:
//!
//! - **pointwise** (1×1, stride 1, no pad, one group): one GEMM per image,
//!   `Y = W·X` with `X` as `[C, H·W]` (matrixmultiply, through ndarray);
//! - **depthwise** (one group per channel, one filter per group): direct
//!   loops, the innermost over output columns so that at stride 1 it reads
//!   and writes contiguous rows the compiler vectorises;
//! - **general**: im2col per image and group, then a GEMM; its backward
//!   recomputes the columns instead of keeping them.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, Ix4};

use super::{
    attr_i, attr_ints, attr_s, const_f32, data_input, unsupported, weight_input, Constants, Keeps,
    Op, ParamKind, Parsed, Saved, Tensor,
};
use crate::adapt::nn::NnError;

/// A convolution; parameters: weight `[O, C/g, kh, kw]`, optional bias `[O]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    /// Top, left, bottom, right.
    pub pads: [usize; 4],
    pub group: usize,
    pub bias: bool,
}

/// Which loop nest runs a conv of these shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Pointwise,
    Depthwise,
    General,
}

pub(crate) fn parse(
    node: &tract_onnx::pb::NodeProto,
    consts: &Constants,
) -> Result<Parsed, NnError> {
    let data = data_input(node, consts)?;
    let weight = weight_input(node, consts, 1)?;
    let w = const_f32(node, consts, 1)?.ok_or_else(|| unsupported(node, "without a weight"))?;
    if w.ndim() != 4 {
        return Err(unsupported(
            node,
            format!("with a {}-D weight (only 2-D convolutions)", w.ndim()),
        ));
    }
    let two = |name: &str, default: i64| -> Result<[usize; 2], NnError> {
        match attr_ints(node, name) {
            None => Ok([default as usize; 2]),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 0) => {
                Ok([v[0] as usize, v[1] as usize])
            }
            Some(v) => Err(unsupported(node, format!("with {name} {v:?}"))),
        }
    };
    if two("dilations", 1)? != [1, 1] {
        return Err(unsupported(node, "with dilation ≠ 1"));
    }
    let strides = two("strides", 1)?;
    if strides.contains(&0) {
        return Err(unsupported(node, "with a zero stride"));
    }
    let kernel = [w.shape()[2], w.shape()[3]];
    if let Some(k) = attr_ints(node, "kernel_shape") {
        if k.len() != 2 || k[0] as usize != kernel[0] || k[1] as usize != kernel[1] {
            return Err(unsupported(
                node,
                format!(
                    "with kernel_shape {k:?} but a weight of shape {:?}",
                    w.shape()
                ),
            ));
        }
    }
    let pads = match attr_ints(node, "pads") {
        None => [0; 4],
        Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
            // ONNX order: [top, left, bottom, right].
            [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
        }
        Some(p) => return Err(unsupported(node, format!("with pads {p:?}"))),
    };
    match attr_s(node, "auto_pad").as_deref() {
        None | Some("NOTSET") | Some("VALID") | Some("") => {}
        Some(p) => {
            return Err(unsupported(
                node,
                format!("with auto_pad {p} (give explicit pads)"),
            ))
        }
    }
    let group = attr_i(node, "group", 1);
    if group < 1 {
        return Err(unsupported(node, format!("with group {group}")));
    }
    let mut params = vec![weight];
    let bias = node.input.get(2).is_some_and(|s| !s.is_empty());
    if bias {
        params.push(weight_input(node, consts, 2)?);
    }
    Ok(Parsed {
        op: Box::new(Conv {
            kernel,
            strides,
            pads,
            group: group as usize,
            bias,
        }),
        data: vec![data],
        params,
    })
}

impl Conv {
    fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let hp = h + self.pads[0] + self.pads[2];
        let wp = w + self.pads[1] + self.pads[3];
        if hp < self.kernel[0] || wp < self.kernel[1] {
            return None;
        }
        Some((
            (hp - self.kernel[0]) / self.strides[0] + 1,
            (wp - self.kernel[1]) / self.strides[1] + 1,
        ))
    }

    fn kernel_kind(&self, channels: usize, out_channels: usize) -> Kernel {
        if self.kernel == [1, 1] && self.strides == [1, 1] && self.pads == [0; 4] && self.group == 1
        {
            Kernel::Pointwise
        } else if self.group == channels && out_channels == channels {
            Kernel::Depthwise
        } else {
            Kernel::General
        }
    }

    /// Output columns `ox` whose input column `ox·s + k − pad` lies in `0..w`.
    fn valid_range(
        out: usize,
        input: usize,
        k: usize,
        pad: usize,
        stride: usize,
    ) -> (usize, usize) {
        // ox·s + k ≥ pad  and  ox·s + k < input + pad
        let lo = if k >= pad {
            0
        } else {
            (pad - k).div_ceil(stride)
        };
        let hi = if input + pad > k {
            (input + pad - k).div_ceil(stride).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

impl Op for Conv {
    fn output_shape(&self, inputs: &[&[usize]], params: &[&[usize]]) -> Result<Vec<usize>, String> {
        let &[n, c, h, w] = inputs[0] else {
            return Err(format!("takes [N, C, H, W], got {:?}", inputs[0]));
        };
        let ws = params[0];
        let (o, cg) = (ws[0], ws[1]);
        if c % self.group != 0 || o % self.group != 0 || cg * self.group != c {
            return Err(format!(
                "has {c} input channels but a weight {ws:?} with group {}",
                self.group
            ));
        }
        if self.bias && params[1].iter().product::<usize>() != o {
            return Err(format!(
                "has a bias of shape {:?} for {o} outputs",
                params[1]
            ));
        }
        let (ho, wo) = self.out_hw(h, w).ok_or_else(|| {
            format!(
                "kernel {:?} is larger than the padded {h}×{w} input",
                self.kernel
            )
        })?;
        Ok(vec![n, o, ho, wo])
    }

    fn forward(&self, inputs: &[&Tensor], params: &[&Tensor]) -> Tensor {
        let x = inputs[0]
            .view()
            .into_dimensionality::<Ix4>()
            .expect("4-D input");
        let (n, c, h, w) = x.dim();
        let o = params[0].shape()[0];
        let (ho, wo) = self.out_hw(h, w).expect("checked at import");
        let mut y = Tensor::zeros(vec![n, o, ho, wo]);
        let xs = x.as_slice().expect("standard layout");
        let wt = params[0].as_slice().expect("standard layout");
        let ys = y.as_slice_mut().expect("standard layout");
        match self.kernel_kind(c, o) {
            Kernel::Pointwise => {
                // One GEMM for the whole batch on channel-major [C, N·S]:
                // per-image products have only S columns (16 at 112 px),
                // too few for the GEMM to amortise packing W.
                let wm = ArrayView2::from_shape((o, c), wt).expect("weight [O, C, 1, 1]");
                let xc = channel_major(xs, n, c, h * w);
                let yc = wm.dot(&xc);
                from_channel_major(&yc, n, o, h * w, ys);
            }
            Kernel::Depthwise => {
                self.depthwise_forward(xs, (n, c, h, w), wt, ys, (ho, wo));
            }
            Kernel::General => {
                let g = self.group;
                let (cg, og) = (c / g, o / g);
                let kk = cg * self.kernel[0] * self.kernel[1];
                let wm = ArrayView2::from_shape((o, kk), wt).expect("weight [O, C/g·kh·kw]");
                for b in 0..n {
                    for gi in 0..g {
                        let col = self.im2col(
                            &xs[(b * c + gi * cg) * h * w..(b * c + (gi + 1) * cg) * h * w],
                            cg,
                            (h, w),
                            (ho, wo),
                        );
                        let wg = wm.slice(ndarray::s![gi * og..(gi + 1) * og, ..]);
                        let start = (b * o + gi * og) * ho * wo;
                        let mut yb = ArrayViewMut2::from_shape(
                            (og, ho * wo),
                            &mut ys[start..start + og * ho * wo],
                        )
                        .expect("group [O/g, S]");
                        general_mat_mul(1.0, &wg, &col, 0.0, &mut yb);
                    }
                }
            }
        }
        if self.bias {
            let bias = params[1].as_slice().expect("standard layout");
            let s = ho * wo;
            for (i, plane) in ys.chunks_exact_mut(s).enumerate() {
                let bv = bias[i % o];
                plane.iter_mut().for_each(|v| *v += bv);
            }
        }
        y
    }

    fn backward(
        &self,
        saved: &Saved,
        dy: Tensor,
        want_input: &[bool],
        param_grads: &mut [Option<Tensor>],
    ) -> Vec<Option<Tensor>> {
        let x = saved.inputs[0];
        let xshape = saved.input_shapes[0];
        let (n, c, h, w) = (xshape[0], xshape[1], xshape[2], xshape[3]);
        let o = saved.params[0].shape()[0];
        let (ho, wo) = (dy.shape()[2], dy.shape()[3]);
        // Empty unless the weight trains (Op::keeps).
        let xs = x.as_slice().expect("standard layout");
        let dys = dy.as_slice().expect("standard layout");
        let wt = saved.params[0].as_slice().expect("standard layout");
        if self.bias {
            if let Some(db) = param_grads[1].as_mut() {
                let db = db.as_slice_mut().expect("standard layout");
                for (i, plane) in dys.chunks_exact(ho * wo).enumerate() {
                    db[i % o] += plane.iter().sum::<f32>();
                }
            }
        }
        let mut dx = want_input[0].then(|| Tensor::zeros(xshape.to_vec()));
        let mut dw = param_grads[0].as_mut();
        match self.kernel_kind(c, o) {
            Kernel::Pointwise => {
                let s = h * w;
                let wm = ArrayView2::from_shape((o, c), wt).expect("weight [O, C, 1, 1]");
                let gc = channel_major(dys, n, o, s);
                if let Some(dw) = dw.as_deref_mut() {
                    let xc = channel_major(xs, n, c, s);
                    let mut dwm = dw
                        .view_mut()
                        .into_shape_with_order((o, c))
                        .expect("weight [O, C, 1, 1]");
                    general_mat_mul(1.0, &gc, &xc.t(), 1.0, &mut dwm);
                }
                if let Some(dx) = dx.as_mut() {
                    let dxc = wm.t().dot(&gc);
                    from_channel_major(&dxc, n, c, s, dx.as_slice_mut().expect("standard layout"));
                }
            }
            Kernel::Depthwise => {
                self.depthwise_backward(
                    xs,
                    (n, c, h, w),
                    wt,
                    dys,
                    (ho, wo),
                    dw.as_deref_mut()
                        .map(|t| t.as_slice_mut().expect("standard layout")),
                    dx.as_mut()
                        .map(|t| t.as_slice_mut().expect("standard layout")),
                );
            }
            Kernel::General => {
                let g = self.group;
                let (cg, og) = (c / g, o / g);
                let kk = cg * self.kernel[0] * self.kernel[1];
                let wm = ArrayView2::from_shape((o, kk), wt).expect("weight");
                for b in 0..n {
                    for gi in 0..g {
                        let xg = &xs[(b * c + gi * cg) * h * w..(b * c + (gi + 1) * cg) * h * w];
                        let start = (b * o + gi * og) * ho * wo;
                        let dyg = ArrayView2::from_shape(
                            (og, ho * wo),
                            &dys[start..start + og * ho * wo],
                        )
                        .expect("[O/g, S]");
                        if let Some(dw) = dw.as_deref_mut() {
                            let col = self.im2col(xg, cg, (h, w), (ho, wo));
                            let mut dwm = dw
                                .view_mut()
                                .into_shape_with_order((o, kk))
                                .expect("weight");
                            let mut dwg = dwm.slice_mut(ndarray::s![gi * og..(gi + 1) * og, ..]);
                            general_mat_mul(1.0, &dyg, &col.t(), 1.0, &mut dwg);
                        }
                        if let Some(dx) = dx.as_mut() {
                            let wg = wm.slice(ndarray::s![gi * og..(gi + 1) * og, ..]);
                            let dcol = wg.t().dot(&dyg);
                            let dxs = dx.as_slice_mut().expect("standard layout");
                            self.col2im(
                                &dcol,
                                cg,
                                (h, w),
                                (ho, wo),
                                &mut dxs
                                    [(b * c + gi * cg) * h * w..(b * c + (gi + 1) * cg) * h * w],
                            );
                        }
                    }
                }
            }
        }
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

impl Conv {
    /// The input rows and columns one kernel tap reads for output
    /// position `o`, or `None` in the padding.
    fn tap(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
        (o * stride + k).checked_sub(pad).filter(|&i| i < size)
    }

    /// Depthwise forward, channel-last: per image the planes are turned to
    /// `[H, W, C]` so that the innermost loop runs over the channels
    /// (hundreds, contiguous) whatever the plane size (4×4 at 112 px, where
    /// per-plane loops would be all overhead).
    fn depthwise_forward(
        &self,
        xs: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f32],
        ys: &mut [f32],
        (ho, wo): (usize, usize),
    ) {
        let [kh, kw] = self.kernel;
        let kk = kh * kw;
        let wl = to_channel_last(wt, c, kk);
        let mut xl = vec![0.0f32; h * w * c];
        let mut yl = vec![0.0f32; ho * wo * c];
        for b in 0..n {
            transpose_into(&xs[b * c * h * w..(b + 1) * c * h * w], c, h * w, &mut xl);
            yl.fill(0.0);
            for oy in 0..ho {
                for ky in 0..kh {
                    let Some(iy) = Self::tap(oy, ky, self.strides[0], self.pads[0], h) else {
                        continue;
                    };
                    for ox in 0..wo {
                        let out = &mut yl[(oy * wo + ox) * c..(oy * wo + ox + 1) * c];
                        for kx in 0..kw {
                            let Some(ix) = Self::tap(ox, kx, self.strides[1], self.pads[1], w)
                            else {
                                continue;
                            };
                            let xr = &xl[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                            let wr = &wl[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                            for ((o, &xv), &wv) in out.iter_mut().zip(xr).zip(wr) {
                                *o += xv * wv;
                            }
                        }
                    }
                }
            }
            transpose_into(
                &yl,
                ho * wo,
                c,
                &mut ys[b * c * ho * wo..(b + 1) * c * ho * wo],
            );
        }
    }

    /// Depthwise backward, channel-last as the forward: filter gradients
    /// added into `dw`, input gradients written into `dx`.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_backward(
        &self,
        xs: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f32],
        dys: &[f32],
        (ho, wo): (usize, usize),
        dw: Option<&mut [f32]>,
        dx: Option<&mut [f32]>,
    ) {
        let [kh, kw] = self.kernel;
        let kk = kh * kw;
        let wl = to_channel_last(wt, c, kk);
        let mut dwl = dw.as_ref().map(|_| vec![0.0f32; kk * c]);
        let mut dx = dx;
        let mut xl = vec![0.0f32; h * w * c];
        let mut gl = vec![0.0f32; ho * wo * c];
        let mut dxl = dx.as_ref().map(|_| vec![0.0f32; h * w * c]);
        for b in 0..n {
            if dwl.is_some() {
                transpose_into(&xs[b * c * h * w..(b + 1) * c * h * w], c, h * w, &mut xl);
            }
            transpose_into(
                &dys[b * c * ho * wo..(b + 1) * c * ho * wo],
                c,
                ho * wo,
                &mut gl,
            );
            if let Some(d) = dxl.as_mut() {
                d.fill(0.0);
            }
            for oy in 0..ho {
                for ky in 0..kh {
                    let Some(iy) = Self::tap(oy, ky, self.strides[0], self.pads[0], h) else {
                        continue;
                    };
                    for ox in 0..wo {
                        let g = &gl[(oy * wo + ox) * c..(oy * wo + ox + 1) * c];
                        for kx in 0..kw {
                            let Some(ix) = Self::tap(ox, kx, self.strides[1], self.pads[1], w)
                            else {
                                continue;
                            };
                            let t = ky * kw + kx;
                            let at = (iy * w + ix) * c;
                            if let Some(dwl) = dwl.as_mut() {
                                let xr = &xl[at..at + c];
                                for ((d, &gv), &xv) in
                                    dwl[t * c..(t + 1) * c].iter_mut().zip(g).zip(xr)
                                {
                                    *d += gv * xv;
                                }
                            }
                            if let Some(dxl) = dxl.as_mut() {
                                let wr = &wl[t * c..(t + 1) * c];
                                for ((d, &gv), &wv) in dxl[at..at + c].iter_mut().zip(g).zip(wr) {
                                    *d += gv * wv;
                                }
                            }
                        }
                    }
                }
            }
            if let (Some(dxl), Some(dx)) = (dxl.as_ref(), dx.as_deref_mut()) {
                transpose_into(dxl, h * w, c, &mut dx[b * c * h * w..(b + 1) * c * h * w]);
            }
        }
        if let (Some(dwl), Some(dw)) = (dwl, dw) {
            for ch in 0..c {
                for t in 0..kk {
                    dw[ch * kk + t] += dwl[t * c + ch];
                }
            }
        }
    }

    /// `[cg·kh·kw, ho·wo]` columns of `cg` input planes (zeros where padded).
    fn im2col(
        &self,
        planes: &[f32],
        cg: usize,
        (h, w): (usize, usize),
        (ho, wo): (usize, usize),
    ) -> Array2<f32> {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.strides;
        let (pt, pl) = (self.pads[0], self.pads[1]);
        let mut col = Array2::<f32>::zeros((cg * kh * kw, ho * wo));
        for ci in 0..cg {
            let plane = &planes[ci * h * w..(ci + 1) * h * w];
            for ky in 0..kh {
                let (oy0, oy1) = Self::valid_range(ho, h, ky, pt, sh);
                for kx in 0..kw {
                    let (ox0, ox1) = Self::valid_range(wo, w, kx, pl, sw);
                    let mut row = col.index_axis_mut(Axis(0), (ci * kh + ky) * kw + kx);
                    for oy in oy0..oy1 {
                        let iy = oy * sh + ky - pt;
                        for ox in ox0..ox1 {
                            row[oy * wo + ox] = plane[iy * w + ox * sw + kx - pl];
                        }
                    }
                }
            }
        }
        col
    }

    /// Adds columns back onto `cg` input planes (the adjoint of [`Self::im2col`]).
    fn col2im(
        &self,
        col: &Array2<f32>,
        cg: usize,
        (h, w): (usize, usize),
        (ho, wo): (usize, usize),
        planes: &mut [f32],
    ) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.strides;
        let (pt, pl) = (self.pads[0], self.pads[1]);
        for ci in 0..cg {
            let plane = &mut planes[ci * h * w..(ci + 1) * h * w];
            for ky in 0..kh {
                let (oy0, oy1) = Self::valid_range(ho, h, ky, pt, sh);
                for kx in 0..kw {
                    let (ox0, ox1) = Self::valid_range(wo, w, kx, pl, sw);
                    let row = col.index_axis(Axis(0), (ci * kh + ky) * kw + kx);
                    for oy in oy0..oy1 {
                        let iy = oy * sh + ky - pt;
                        for ox in ox0..ox1 {
                            plane[iy * w + ox * sw + kx - pl] += row[oy * wo + ox];
                        }
                    }
                }
            }
        }
    }
}

/// `[N, C, S]` rows as one channel-major `[C, N·S]` matrix.
fn channel_major(x: &[f32], n: usize, c: usize, s: usize) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((c, n * s));
    let dst = out.as_slice_mut().expect("fresh array");
    for b in 0..n {
        for ch in 0..c {
            dst[ch * n * s + b * s..ch * n * s + (b + 1) * s]
                .copy_from_slice(&x[(b * c + ch) * s..(b * c + ch + 1) * s]);
        }
    }
    out
}

/// The inverse of [`channel_major`], written into `out` (`[N, C, S]`).
fn from_channel_major(x: &Array2<f32>, n: usize, c: usize, s: usize, out: &mut [f32]) {
    let src = x.as_slice().expect("fresh array");
    for b in 0..n {
        for ch in 0..c {
            out[(b * c + ch) * s..(b * c + ch + 1) * s]
                .copy_from_slice(&src[ch * n * s + b * s..ch * n * s + (b + 1) * s]);
        }
    }
}

/// `[C, K]` filters as `[K, C]`.
fn to_channel_last(wt: &[f32], c: usize, kk: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; c * kk];
    transpose_into(wt, c, kk, &mut out);
    out
}

/// `src` as a `[rows, cols]` matrix, transposed into `dst` (`[cols, rows]`).
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    for r in 0..rows {
        for (k, &v) in src[r * cols..(r + 1) * cols].iter().enumerate() {
            dst[k * rows + r] = v;
        }
    }
}
