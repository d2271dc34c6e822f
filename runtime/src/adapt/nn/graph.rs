//! The executor: runs an imported subgraph forward, keeping every value on a
//! [`Tape`], and backward, accumulating gradients where a value fans out
//! (the input of a residual block feeds both the block and its skip).
//!
//! Batches are split into fixed chunks of [`CHUNK`] rows that worker threads
//! take in turn; parameter gradients are summed in chunk order, so a run
//! gives the same bits on one thread or four (resume stays byte-exact on a
//! machine with another core count).

use ndarray::ArrayView2;

use super::ops::elementwise::add_into;
use super::ops::{Op, ParamKind, Saved, Tensor};
use super::NnError;

/// Rows per work item. Small enough that two threads share a batch of 32,
/// large enough that per-chunk overhead is noise next to the GEMMs.
pub const CHUNK: usize = 16;

/// One trainable tensor: its ONNX initialiser name, shape and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

/// One op of the graph: where it reads and writes on the tape.
#[derive(Debug)]
pub(crate) struct Node {
    pub name: String,
    pub op: Box<dyn Op>,
    /// Value ids of its data inputs (0 is the graph input).
    pub inputs: Vec<usize>,
    /// Parameter ids, in the op's order.
    pub params: Vec<usize>,
}

/// An imported subgraph: value `i + 1` is node `i`'s output, value 0 the
/// graph input; the last node's output is the graph output.
#[derive(Debug)]
pub struct Graph {
    pub(crate) nodes: Vec<Node>,
    pub(crate) params: Vec<ParamSpec>,
    /// Sample shape of the input (batch excluded).
    pub(crate) input_shape: Vec<usize>,
    /// Sample shape of the output (batch excluded).
    pub(crate) output_shape: Vec<usize>,
    /// Sample shape of every value, for memory accounting.
    pub(crate) value_shapes: Vec<Vec<usize>>,
}

/// The values of one forward pass that the backward reads (the others are
/// empty tensors), and every value's shape.
#[derive(Debug, Clone)]
pub struct Tape {
    values: Vec<Tensor>,
    shapes: Vec<Vec<usize>>,
    /// Inside-the-bounds masks of values kept only as masks.
    masks: Vec<Option<Vec<bool>>>,
}

/// What a training forward keeps for its backward: [`Graph::keep_plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct KeepPlan {
    /// Values kept in full, by id.
    pub values: Vec<bool>,
    /// Values kept only as an inside-the-bounds mask.
    pub masks: Vec<Option<(f32, f32)>>,
}

impl KeepPlan {
    /// Keep nothing: an inference forward, no backward to follow.
    pub fn nothing(values: usize) -> Self {
        KeepPlan {
            values: vec![false; values],
            masks: vec![None; values],
        }
    }
}

/// The values of a batched forward, one tape per chunk.
#[derive(Debug, Clone)]
pub struct BatchTape {
    chunks: Vec<Tape>,
    rows: usize,
}

impl Graph {
    /// The trainable tensors, by parameter id.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Sample shape of the input (the cut tensor), batch excluded.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Sample shape of the output, batch excluded.
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// Names of the nodes, in execution order.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.name.as_str())
    }

    /// Bytes of activations one sample keeps on the tape (f32 values).
    pub fn activation_bytes_per_sample(&self) -> usize {
        self.value_shapes
            .iter()
            .map(|s| s.iter().product::<usize>() * 4)
            .sum()
    }

    fn check_params(&self, params: &[&Tensor]) -> Result<(), NnError> {
        if params.len() != self.params.len() {
            return Err(NnError::Graph(format!(
                "{} parameters given for {} in the graph",
                params.len(),
                self.params.len()
            )));
        }
        for (p, spec) in params.iter().zip(&self.params) {
            if !p.is_standard_layout() {
                return Err(NnError::Graph(format!(
                    "parameter '{}' is not in standard (row-major) layout",
                    spec.name
                )));
            }
            if p.shape() != spec.shape.as_slice() {
                return Err(NnError::Graph(format!(
                    "parameter '{}' has shape {:?}, the graph needs {:?}",
                    spec.name,
                    p.shape(),
                    spec.shape
                )));
            }
        }
        Ok(())
    }

    /// Forward pass of one batch `x` (`[N, ...input_shape]`), keeping every
    /// value on the tape.
    pub fn forward(&self, params: &[&Tensor], x: Tensor) -> Result<(Tensor, Tape), NnError> {
        self.forward_keeping(params, x, None)
    }

    /// What the backward reads when the parameters flagged in `trainable`
    /// train ([`super::ops::Op::keeps`]), for [`Graph::forward_keeping`]: a
    /// value is kept in full if any op reads it in full, else as a mask if
    /// its producer asks for one.
    pub fn keep_plan(&self, trainable: &[bool]) -> KeepPlan {
        let mut values = vec![false; self.nodes.len() + 1];
        let mut masks = vec![None; self.nodes.len() + 1];
        for (i, node) in self.nodes.iter().enumerate() {
            let own: Vec<bool> = node
                .params
                .iter()
                .map(|&p| trainable.get(p).copied().unwrap_or(true))
                .collect();
            let k = node.op.keeps(&own);
            for (&v, &needed) in node.inputs.iter().zip(&k.inputs) {
                values[v] |= needed;
            }
            values[i + 1] |= k.output;
            masks[i + 1] = k.output_mask;
        }
        // A value kept in full needs no mask beside it.
        for (m, &full) in masks.iter_mut().zip(&values) {
            if full {
                *m = None;
            }
        }
        KeepPlan { values, masks }
    }

    /// Bytes per sample of the values the backward keeps for `trainable`
    /// (all values: [`Graph::activation_bytes_per_sample`]).
    pub fn kept_bytes_per_sample(&self, trainable: &[bool]) -> usize {
        let plan = self.keep_plan(trainable);
        plan.values
            .iter()
            .zip(&plan.masks)
            .zip(&self.value_shapes)
            .map(|((&k, m), s)| {
                let n = s.iter().product::<usize>();
                if k {
                    n * 4
                } else if m.is_some() {
                    n
                } else {
                    0
                }
            })
            .sum()
    }

    /// [`Graph::forward`] that drops, as soon as its last consumer has
    /// run, every value not flagged in `keep` (`None`: keep all).
    pub fn forward_keeping(
        &self,
        params: &[&Tensor],
        x: Tensor,
        keep: Option<&KeepPlan>,
    ) -> Result<(Tensor, Tape), NnError> {
        self.check_params(params)?;
        if x.shape().get(1..) != Some(self.input_shape.as_slice()) {
            return Err(NnError::Input {
                got: x.shape().to_vec(),
                why: format!("the graph takes [N, {:?}]", self.input_shape),
            });
        }
        let x = if x.is_standard_layout() {
            x
        } else {
            x.as_standard_layout().into_owned()
        };
        let mut uses = vec![0usize; self.nodes.len() + 1];
        for node in &self.nodes {
            for &v in &node.inputs {
                uses[v] += 1;
            }
        }
        let last = self.nodes.len();
        let mut shapes = Vec::with_capacity(self.nodes.len() + 1);
        shapes.push(x.shape().to_vec());
        let mut values = Vec::with_capacity(self.nodes.len() + 1);
        let mut masks: Vec<Option<Vec<bool>>> = vec![None; self.nodes.len() + 1];
        values.push(x);
        for (i, node) in self.nodes.iter().enumerate() {
            let inputs: Vec<&Tensor> = node.inputs.iter().map(|&v| &values[v]).collect();
            let p: Vec<&Tensor> = node.params.iter().map(|&i| params[i]).collect();
            let y = node.op.forward(&inputs, &p);
            if let Some((lo, hi)) = keep.and_then(|k| k.masks[i + 1]) {
                masks[i + 1] = Some(y.iter().map(|&v| v > lo && v < hi).collect());
            }
            shapes.push(y.shape().to_vec());
            values.push(y);
            if let Some(keep) = keep {
                for &v in &node.inputs {
                    uses[v] -= 1;
                    if uses[v] == 0 && !keep.values[v] && v != last {
                        values[v] = Tensor::zeros(vec![0]);
                    }
                }
            }
        }
        let out = values[last].clone();
        if let Some(keep) = keep {
            if !keep.values[last] {
                values[last] = Tensor::zeros(vec![0]);
            }
        }
        Ok((
            out,
            Tape {
                values,
                shapes,
                masks,
            },
        ))
    }

    /// Which values need a gradient when the parameters marked in
    /// `trainable` are trained: those computed from a trainable one.
    fn needs_grad(&self, trainable: &[bool]) -> Vec<bool> {
        let mut needs = vec![false; self.nodes.len() + 1];
        for (i, node) in self.nodes.iter().enumerate() {
            needs[i + 1] =
                node.params.iter().any(|&p| trainable[p]) || node.inputs.iter().any(|&v| needs[v]);
        }
        needs
    }

    /// Gradients of the parameters marked in `trainable` (`None` for the
    /// others) for upstream gradient `dy` on the output of `tape`'s pass.
    pub fn backward(
        &self,
        params: &[&Tensor],
        tape: &Tape,
        dy: Tensor,
        trainable: &[bool],
    ) -> Result<Vec<Option<Tensor>>, NnError> {
        Ok(self
            .backward_with_input(params, tape, dy, trainable, false)?
            .0)
    }

    /// [`Graph::backward`] that also returns the gradient of the graph's
    /// input when `want_input` (`None` otherwise): what a graph stacked on
    /// another passes down (the adapter's to the trained encoder layers).
    pub fn backward_with_input(
        &self,
        params: &[&Tensor],
        tape: &Tape,
        dy: Tensor,
        trainable: &[bool],
        want_input: bool,
    ) -> Result<(Vec<Option<Tensor>>, Option<Tensor>), NnError> {
        self.check_params(params)?;
        let out = tape.shapes.last().cloned().unwrap_or_default();
        if dy.shape() != out.as_slice() {
            return Err(NnError::Input {
                got: dy.shape().to_vec(),
                why: format!("the upstream gradient must have the output's shape {out:?}"),
            });
        }
        let dy = if dy.is_standard_layout() {
            dy
        } else {
            dy.as_standard_layout().into_owned()
        };
        if trainable.len() != self.params.len() {
            return Err(NnError::Graph(format!(
                "{} trainable flags for {} parameters",
                trainable.len(),
                self.params.len()
            )));
        }
        let mut needs = self.needs_grad(trainable);
        if want_input {
            // Every value computed from the input then carries a gradient.
            needs[0] = true;
            for (i, node) in self.nodes.iter().enumerate() {
                needs[i + 1] = needs[i + 1] || node.inputs.iter().any(|&v| needs[v]);
            }
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len() + 1];
        let last = self.nodes.len();
        grads[last] = Some(dy);
        let mut pgrads: Vec<Option<Tensor>> = self
            .params
            .iter()
            .zip(trainable)
            .map(|(spec, &t)| t.then(|| Tensor::zeros(spec.shape.clone())))
            .collect();
        for (i, node) in self.nodes.iter().enumerate().rev() {
            let Some(g) = grads[i + 1].take() else {
                continue;
            };
            if !needs[i + 1] {
                continue;
            }
            let inputs: Vec<&Tensor> = node.inputs.iter().map(|&v| &tape.values[v]).collect();
            let input_shapes: Vec<&[usize]> = node
                .inputs
                .iter()
                .map(|&v| tape.shapes[v].as_slice())
                .collect();
            let p: Vec<&Tensor> = node.params.iter().map(|&k| params[k]).collect();
            let want: Vec<bool> = node
                .inputs
                .iter()
                .map(|&v| (v != 0 || want_input) && needs[v])
                .collect();
            // The op adds into its own slots; they go back after.
            let mut slots: Vec<Option<Tensor>> =
                node.params.iter().map(|&k| pgrads[k].take()).collect();
            let saved = Saved {
                inputs: &inputs,
                input_shapes: &input_shapes,
                params: &p,
                output: &tape.values[i + 1],
                output_mask: tape.masks[i + 1].as_deref(),
            };
            let dx = node.op.backward(&saved, g, &want, &mut slots);
            for (&k, slot) in node.params.iter().zip(slots) {
                if slot.is_some() {
                    pgrads[k] = slot;
                }
            }
            for (&v, d) in node.inputs.iter().zip(dx) {
                let Some(d) = d else { continue };
                match grads[v].as_mut() {
                    Some(acc) => add_into(acc, &d),
                    None => grads[v] = Some(d),
                }
            }
        }
        let dx = want_input.then(|| {
            grads[0]
                .take()
                .unwrap_or_else(|| Tensor::zeros(tape.shapes[0].clone()))
        });
        Ok((pgrads, dx))
    }

    /// [`Graph::forward`] of `x` given as flattened rows `[N, ∏input_shape]`,
    /// split into chunks run on up to `threads` threads; the output comes
    /// back as `[N, ∏output_shape]` rows.
    pub fn forward_rows(
        &self,
        params: &[&Tensor],
        x: ArrayView2<f32>,
        threads: usize,
    ) -> Result<(ndarray::Array2<f32>, BatchTape), NnError> {
        self.forward_rows_keeping(params, x, threads, None)
    }

    /// [`Graph::forward_rows`] keeping only the values flagged in `keep`
    /// ([`Graph::keep_plan`]) for the backward.
    pub fn forward_rows_keeping(
        &self,
        params: &[&Tensor],
        x: ArrayView2<f32>,
        threads: usize,
        keep: Option<&KeepPlan>,
    ) -> Result<(ndarray::Array2<f32>, BatchTape), NnError> {
        let width: usize = self.input_shape.iter().product();
        if x.ncols() != width || x.nrows() == 0 {
            return Err(NnError::Input {
                got: vec![x.nrows(), x.ncols()],
                why: format!(
                    "expected [N, {width}] (the cut tensor {:?}, flattened)",
                    self.input_shape
                ),
            });
        }
        let n = x.nrows();
        let starts: Vec<usize> = (0..n).step_by(CHUNK).collect();
        let results = run_chunks(starts.len(), threads, |c| {
            let lo = starts[c];
            let hi = (lo + CHUNK).min(n);
            let mut shape = vec![hi - lo];
            shape.extend(&self.input_shape);
            let chunk = x
                .slice(ndarray::s![lo..hi, ..])
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(shape)
                .map_err(|e| NnError::Input {
                    got: vec![hi - lo, width],
                    why: e.to_string(),
                })?;
            self.forward_keeping(params, chunk.into_dyn(), keep)
        });
        let out_width: usize = self.output_shape.iter().product();
        let mut out = ndarray::Array2::<f32>::zeros((n, out_width));
        let mut chunks = Vec::with_capacity(results.len());
        for (c, r) in results.into_iter().enumerate() {
            let (y, tape) = r?;
            let lo = starts[c];
            let rows = y.shape()[0];
            let y2 = y
                .into_shape_with_order((rows, out_width))
                .map_err(|e| NnError::Graph(e.to_string()))?;
            out.slice_mut(ndarray::s![lo..lo + rows, ..]).assign(&y2);
            chunks.push(tape);
        }
        Ok((out, BatchTape { chunks, rows: n }))
    }

    /// [`Graph::backward`] of a [`Graph::forward_rows`] pass, `dy` as rows.
    pub fn backward_rows(
        &self,
        params: &[&Tensor],
        tape: &BatchTape,
        dy: ArrayView2<f32>,
        trainable: &[bool],
        threads: usize,
    ) -> Result<Vec<Option<Tensor>>, NnError> {
        let out_width: usize = self.output_shape.iter().product();
        if dy.dim() != (tape.rows, out_width) {
            return Err(NnError::Input {
                got: vec![dy.nrows(), dy.ncols()],
                why: format!("expected the forward's [{}, {out_width}]", tape.rows),
            });
        }
        let results = run_chunks(tape.chunks.len(), threads, |c| {
            let lo = c * CHUNK;
            let rows = tape.chunks[c].shapes[0][0];
            let mut shape = vec![rows];
            shape.extend(&self.output_shape);
            let g = dy
                .slice(ndarray::s![lo..lo + rows, ..])
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(shape)
                .map_err(|e| NnError::Graph(e.to_string()))?;
            self.backward(params, &tape.chunks[c], g.into_dyn(), trainable)
        });
        let mut total: Option<Vec<Option<Tensor>>> = None;
        for r in results {
            let g = r?;
            match total.as_mut() {
                None => total = Some(g),
                Some(t) => {
                    for (acc, g) in t.iter_mut().zip(g) {
                        if let (Some(a), Some(g)) = (acc.as_mut(), g) {
                            add_into(a, &g);
                        }
                    }
                }
            }
        }
        Ok(total.unwrap_or_else(|| vec![None; self.params.len()]))
    }
}

impl Tape {
    /// Rows of the batch it was recorded on.
    pub fn rows(&self) -> usize {
        self.shapes
            .first()
            .and_then(|s| s.first())
            .copied()
            .unwrap_or(0)
    }
}

impl BatchTape {
    /// Bytes this tape holds.
    pub fn bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|t| {
                t.values.iter().map(|v| v.len() * 4).sum::<usize>()
                    + t.masks.iter().flatten().map(Vec::len).sum::<usize>()
            })
            .sum()
    }

    /// Rows of the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// `f(0..n)` on up to `threads` scoped threads (chunk `c` on thread
/// `c % threads`); results in chunk order.
fn run_chunks<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|c| (c, f(c)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (c, r) in done {
                        slots[c] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots.into_iter().flatten().collect()
}
