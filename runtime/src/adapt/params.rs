//! Named trainable tensors: the one currency the adaptation pieces exchange.
//!
//! Layers read their weights from a [`Params`] and return gradients into
//! another [`Params`] of the same layout; the optimiser, the momentum (EMA)
//! copy, checkpoints and the ONNX export all work on that map. Keeping the
//! state in one ordered map (as candle's `VarMap` does) means a checkpoint or
//! an export can never miss a tensor a layer uses.
//!
//! **Names are resolved once.** Each name gets a slot when it is first
//! inserted; [`Params::id`] turns a name into a [`ParamId`] (that slot), and
//! the stores made from one `Params` — its clone, [`Params::with_prefix`]
//! (the momentum copy, the anchor's source weights), [`Params::zeros_like`],
//! [`Params::empty_like`] (a step's gradients, the optimiser's moments) —
//! keep its slots. A layer resolves its parameters when the trainer is
//! built, so a training step reads, accumulates and updates every tensor by
//! slot, with no string compared (as candle's `VarBuilder` resolves names
//! once into typed structs). A handle checks that its slot still holds the
//! name it was resolved from (a 64-bit tag), so a handle used on a store of
//! another layout is an error, never another tensor; the pairwise
//! operations ([`Params::accumulate`], [`Params::ema_update`], the
//! optimisers) fall back to names for such a store.
//!
//! Names used by edgeclr (row-major, `weight` is `[out, in]` as in PyTorch):
//!
//! | name | shape | what |
//! | --- | --- | --- |
//! | `adapter.down.weight`, `adapter.down.bias` | `[r, d]`, `[r]` | residual bottleneck adapter, down projection |
//! | `adapter.up.weight`, `adapter.up.bias` | `[d, r]`, `[d]` | up projection, zero at init (adapter = identity) |
//! | `head.fc1.*`, `head.fc2.*` | `[h, d]`, `[o, h]` | projection head (loss only, dropped at export) |
//! | `predictor.fc1.*`, `predictor.fc2.*` | `[h, o]`, `[o, h]` | BYOL predictor |
//! | `loss.t_prime`, `loss.bias` | `[1]` | SigLIP temperature and bias |
//! | `loss.classifier.weight`, `loss.classifier.bias` | `[C, d]`, `[C]` | `ce`'s softmax classifier (dropped at export) |
//! | `tail.<initialiser>` | as in the ONNX file | the encoder's own trained layers |

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, Zip};

/// Errors in parameter bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("no parameter named '{0}'")]
    Missing(String),
    #[error("parameter '{name}' has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("parameter '{0}' holds NaN or infinite values")]
    NonFinite(String),
    /// A handle used on a store that does not hold its parameter (a store
    /// not made from the one it was resolved in, or one lacking the tensor).
    #[error("parameter handle {0} does not belong to this store")]
    Handle(ParamId),
}

/// A parameter resolved once by name ([`Params::id`]): its slot, valid in
/// the store it was resolved in and every store made from that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamId {
    slot: usize,
    /// The name's hash: a handle checks its slot still holds that name.
    tag: u64,
}

impl std::fmt::Display for ParamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} ({:016x})", self.slot, self.tag)
    }
}

/// The names of a store's slots, shared by every store made from it.
#[derive(Debug, Clone, Default)]
struct Layout {
    /// The name of each slot.
    names: Vec<String>,
    /// The tag of each slot's name.
    tags: Vec<u64>,
    /// Name → slot; iterating it gives the name order every listing uses.
    index: BTreeMap<String, usize>,
}

impl Layout {
    /// The handle of `slot`.
    fn id(&self, slot: usize) -> ParamId {
        ParamId {
            slot,
            tag: self.tags[slot],
        }
    }
}

fn tag(name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// An ordered map from parameter name to tensor, whose names are resolved
/// once into [`ParamId`] slots (module docs).
#[derive(Debug, Clone, Default)]
pub struct Params {
    layout: Arc<Layout>,
    /// By slot (`None`: this store does not hold that parameter).
    values: Vec<Option<ArrayD<f32>>>,
}

impl PartialEq for Params {
    /// Same names with the same tensors, whatever the layouts.
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tensor (a new name gets the next slot).
    pub fn insert(&mut self, name: impl Into<String>, value: ArrayD<f32>) {
        let name = name.into();
        if let Some(&slot) = self.layout.index.get(&name) {
            self.values[slot] = Some(value);
            return;
        }
        let layout = Arc::make_mut(&mut self.layout);
        let slot = layout.names.len();
        layout.tags.push(tag(&name));
        layout.index.insert(name.clone(), slot);
        layout.names.push(name);
        self.values.push(Some(value));
    }

    pub fn get(&self, name: &str) -> Result<&ArrayD<f32>, ParamsError> {
        self.layout
            .index
            .get(name)
            .and_then(|&s| self.values[s].as_ref())
            .ok_or_else(|| ParamsError::Missing(name.to_owned()))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut ArrayD<f32>, ParamsError> {
        self.layout
            .index
            .get(name)
            .and_then(|&s| self.values[s].as_mut())
            .ok_or_else(|| ParamsError::Missing(name.to_owned()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_ok()
    }

    /// The handle of the tensor named `name` (resolve once, then use
    /// [`Params::at`]).
    pub fn id(&self, name: &str) -> Result<ParamId, ParamsError> {
        match self.layout.index.get(name) {
            Some(&slot) if self.values[slot].is_some() => Ok(self.layout.id(slot)),
            _ => Err(ParamsError::Missing(name.to_owned())),
        }
    }

    /// The slot `id` names, if this store's layout has it there.
    fn slot(&self, id: ParamId) -> Option<usize> {
        (self.layout.tags.get(id.slot) == Some(&id.tag)).then_some(id.slot)
    }

    /// The tensor behind a handle, with no name looked up.
    pub fn at(&self, id: ParamId) -> Result<&ArrayD<f32>, ParamsError> {
        self.slot(id)
            .and_then(|s| self.values[s].as_ref())
            .ok_or(ParamsError::Handle(id))
    }

    /// The slot of `name`, by its handle `id` when this store shares the
    /// layout `id` came from, else by the name.
    fn find(&self, id: ParamId, name: &str) -> Option<usize> {
        self.slot(id)
            .or_else(|| self.layout.index.get(name).copied())
    }

    /// The tensor resolved as `id` from `name`: by slot when this store
    /// shares that layout, else by name (a store of another layout).
    pub fn get_by(&self, id: ParamId, name: &str) -> Result<&ArrayD<f32>, ParamsError> {
        self.find(id, name)
            .and_then(|s| self.values[s].as_ref())
            .ok_or_else(|| ParamsError::Missing(name.to_owned()))
    }

    /// By handle when one was resolved ([`Params::get_by`]), else by name: a
    /// layer's or tail's parameter, resolved or not.
    pub fn get_resolved(
        &self,
        id: Option<ParamId>,
        name: &str,
    ) -> Result<&ArrayD<f32>, ParamsError> {
        match id {
            Some(id) => self.get_by(id, name),
            None => self.get(name),
        }
    }

    /// [`Params::get_by`], mutable.
    pub fn get_by_mut(&mut self, id: ParamId, name: &str) -> Result<&mut ArrayD<f32>, ParamsError> {
        match self.find(id, name) {
            Some(s) => self.values[s].as_mut(),
            None => None,
        }
        .ok_or_else(|| ParamsError::Missing(name.to_owned()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArrayD<f32>)> {
        self.iter_ids().map(|(_, k, v)| (k, v))
    }

    /// Every tensor with its handle and name, in name order.
    pub fn iter_ids(&self) -> impl Iterator<Item = (ParamId, &str, &ArrayD<f32>)> {
        let layout = &self.layout;
        layout.index.iter().filter_map(move |(k, &slot)| {
            self.values[slot]
                .as_ref()
                .map(|v| (layout.id(slot), k.as_str(), v))
        })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut ArrayD<f32>)> {
        let mut refs: Vec<Option<&mut ArrayD<f32>>> =
            self.values.iter_mut().map(Option::as_mut).collect();
        self.layout
            .index
            .iter()
            .filter_map(move |(k, &slot)| refs[slot].take().map(|v| (k.as_str(), v)))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.values.iter().filter(|v| v.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of scalars held.
    pub fn numel(&self) -> usize {
        self.values.iter().flatten().map(|v| v.len()).sum()
    }

    /// The tensors whose names start with `prefix` (e.g. `"adapter."`), in
    /// this store's layout (its handles stay valid there).
    pub fn with_prefix(&self, prefix: &str) -> Params {
        let values = self
            .layout
            .names
            .iter()
            .zip(&self.values)
            .map(|(k, v)| v.as_ref().filter(|_| k.starts_with(prefix)).cloned())
            .collect();
        Params {
            layout: Arc::clone(&self.layout),
            values,
        }
    }

    /// Moves every tensor of `other` into `self` (replacing same names).
    pub fn extend(&mut self, other: Params) {
        let Params { layout, values } = other;
        for (name, value) in layout.names.iter().zip(values) {
            if let Some(value) = value {
                self.insert(name.clone(), value);
            }
        }
    }

    /// Zeros shaped like every tensor here (a gradient or optimiser buffer),
    /// in this layout.
    pub fn zeros_like(&self) -> Params {
        Params {
            layout: Arc::clone(&self.layout),
            values: self
                .values
                .iter()
                .map(|v| v.as_ref().map(|v| ArrayD::zeros(v.raw_dim())))
                .collect(),
        }
    }

    /// A store with this layout and no tensor: where a step's gradients
    /// accumulate by handle ([`Params::accumulate_at`]).
    pub fn empty_like(&self) -> Params {
        Params {
            layout: Arc::clone(&self.layout),
            values: vec![None; self.values.len()],
        }
    }

    /// Whether `other` was made from the same store as `self` with no name
    /// added since (then every handle of one is valid in the other).
    pub fn same_layout(&self, other: &Params) -> bool {
        Arc::ptr_eq(&self.layout, &other.layout)
    }

    /// `self`'s tensors in `like`'s layout (names `like` lacks are added
    /// after its own), so that `like`'s handles reach them by slot.
    pub fn relaid_like(&self, like: &Params) -> Params {
        let mut out = like.empty_like();
        out.extend(self.clone());
        out
    }

    /// `self[name] += value` for every tensor of `other` (gradient accumulation).
    pub fn add_assign(&mut self, other: &Params) -> Result<(), ParamsError> {
        for (id, name, g) in other.iter_ids() {
            let dst = self.get_by_mut(id, name)?;
            check_shape(name, dst.view(), g.view())?;
            *dst += g;
        }
        Ok(())
    }

    /// Adds every tensor of `other` into `self`, inserting names `self` lacks
    /// (summing the gradients of a parameter used more than once).
    pub fn accumulate(&mut self, other: Params) -> Result<(), ParamsError> {
        let Params { layout, values } = other;
        for (slot, g) in values.into_iter().enumerate() {
            if let Some(g) = g {
                self.accumulate_at(layout.id(slot), &layout.names[slot], g)?;
            }
        }
        Ok(())
    }

    /// Adds `g` into the tensor `id` (resolved from `name`), or stores it
    /// when this store has none yet: by slot when `id` is of this layout,
    /// else by name.
    pub fn accumulate_at(
        &mut self,
        id: ParamId,
        name: &str,
        g: ArrayD<f32>,
    ) -> Result<(), ParamsError> {
        let slot = self.find(id, name);
        self.accumulate_slot(slot, name, g)
    }

    /// Adds `g` into the tensor `name` (stores it when there is none yet).
    pub fn accumulate_named(&mut self, name: &str, g: ArrayD<f32>) -> Result<(), ParamsError> {
        let slot = self.layout.index.get(name).copied();
        self.accumulate_slot(slot, name, g)
    }

    fn accumulate_slot(
        &mut self,
        slot: Option<usize>,
        name: &str,
        g: ArrayD<f32>,
    ) -> Result<(), ParamsError> {
        let Some(slot) = slot else {
            self.insert(name, g);
            return Ok(());
        };
        match &mut self.values[slot] {
            Some(dst) => {
                check_shape(name, dst.view(), g.view())?;
                *dst += &g;
            }
            empty => *empty = Some(g),
        }
        Ok(())
    }

    /// The first tensor holding NaN or ±Inf, if any: a step must never write one.
    pub fn first_non_finite(&self) -> Option<&str> {
        self.iter()
            .find(|(_, v)| v.iter().any(|x| !x.is_finite()))
            .map(|(k, _)| k)
    }

    /// Euclidean norm over all tensors (for gradient clipping and reports).
    pub fn global_norm(&self) -> f64 {
        self.iter()
            .flat_map(|(_, v)| v.iter())
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    /// `f(self[name], other[name])` for every tensor `other` holds, by slot
    /// where the layouts agree; shapes checked; `self` must hold each name.
    pub fn zip_mut_with(
        &mut self,
        other: &Params,
        mut f: impl FnMut(&mut f32, f32),
    ) -> Result<(), ParamsError> {
        for (id, name, src) in other.iter_ids() {
            let dst = self.get_by_mut(id, name)?;
            check_shape(name, dst.view(), src.view())?;
            Zip::from(dst).and(src).for_each(|t, &s| f(t, s));
        }
        Ok(())
    }

    /// Exponential moving average toward `online`, as MoCo/BYOL's momentum
    /// encoder: `self = m·self + (1−m)·online`, over the names `self` holds.
    pub fn ema_update(&mut self, online: &Params, momentum: f32) -> Result<(), ParamsError> {
        let layout = Arc::clone(&self.layout);
        for (slot, target) in self.values.iter_mut().enumerate() {
            let Some(target) = target else { continue };
            let name = &layout.names[slot];
            let src = online.get_by(layout.id(slot), name)?;
            check_shape(name, target.view(), src.view())?;
            Zip::from(target)
                .and(src)
                .for_each(|t, &o| *t = momentum * *t + (1.0 - momentum) * o);
        }
        Ok(())
    }
}

fn check_shape(name: &str, a: ArrayViewD<f32>, b: ArrayViewD<f32>) -> Result<(), ParamsError> {
    if a.shape() != b.shape() {
        return Err(ParamsError::Shape {
            name: name.to_owned(),
            got: b.shape().to_vec(),
            expected: a.shape().to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn ema_moves_toward_online_and_checks_shapes() {
        let mut target = Params::new();
        target.insert("a", arr1(&[0.0f32, 10.0]).into_dyn());
        let mut online = Params::new();
        online.insert("a", arr1(&[1.0f32, 0.0]).into_dyn());
        target.ema_update(&online, 0.9).unwrap();
        let a = target.get("a").unwrap();
        assert!((a[[0]] - 0.1).abs() < 1e-6 && (a[[1]] - 9.0).abs() < 1e-6);
        online.insert("a", arr1(&[1.0f32]).into_dyn());
        assert!(matches!(
            target.ema_update(&online, 0.9),
            Err(ParamsError::Shape { .. })
        ));
    }

    #[test]
    fn bookkeeping() {
        let mut p = Params::new();
        p.insert("adapter.x", ArrayD::ones(vec![2, 3]));
        p.insert("head.y", ArrayD::ones(vec![4]));
        assert_eq!(p.numel(), 10);
        assert_eq!(p.with_prefix("adapter.").len(), 1);
        let mut g = p.zeros_like();
        g.add_assign(&p).unwrap();
        assert!((g.global_norm() - 10f64.sqrt()).abs() < 1e-9);
        assert!(p.first_non_finite().is_none());
        p.get_mut("head.y").unwrap()[[1]] = f32::NAN;
        assert_eq!(p.first_non_finite(), Some("head.y"));
    }

    #[test]
    fn handles_reach_their_tensor_in_every_store_made_from_theirs() {
        let mut p = Params::new();
        p.insert("b", arr1(&[1.0f32, 2.0]).into_dyn());
        p.insert("a", arr1(&[3.0f32]).into_dyn());
        let b = p.id("b").unwrap();
        assert_eq!(p.at(b).unwrap(), p.get("b").unwrap());
        // Derived stores keep the slots.
        let sub = p.with_prefix("b");
        assert_eq!(sub.at(b).unwrap(), p.get("b").unwrap());
        assert!(matches!(
            sub.at(p.id("a").unwrap()),
            Err(ParamsError::Handle(_))
        ));
        let mut grads = p.empty_like();
        assert!(grads.is_empty() && grads.same_layout(&p));
        grads
            .accumulate_at(b, "b", arr1(&[1.0f32, 1.0]).into_dyn())
            .unwrap();
        grads
            .accumulate_at(b, "b", arr1(&[1.0f32, 1.0]).into_dyn())
            .unwrap();
        assert_eq!(grads.get("b").unwrap(), &arr1(&[2.0f32, 2.0]).into_dyn());
        assert_eq!(grads.names().collect::<Vec<_>>(), ["b"]);
        // A store of another layout: the handle is refused, never another tensor...
        let mut other = Params::new();
        other.insert("a", arr1(&[9.0f32]).into_dyn());
        other.insert("b", arr1(&[5.0f32, 6.0]).into_dyn());
        assert!(matches!(other.at(b), Err(ParamsError::Handle(_))));
        // ...and the pairwise operations fall back to names.
        assert_eq!(other.get_by(b, "b").unwrap()[[1]], 6.0);
        let mut sum = other.clone();
        sum.add_assign(&grads).unwrap();
        assert_eq!(sum.get("b").unwrap(), &arr1(&[7.0f32, 8.0]).into_dyn());
        // Listing order is by name, whatever the slots.
        assert_eq!(p.names().collect::<Vec<_>>(), ["a", "b"]);
        let relaid = other.relaid_like(&p);
        assert!(relaid.same_layout(&p) && relaid == other);
        assert_eq!(relaid.at(b).unwrap()[[0]], 5.0);
    }
}
