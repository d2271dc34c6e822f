//! A small, deterministic L-BFGS minimiser.
//!
//! Hand-written on purpose: the probe needs exactly one smooth unconstrained
//! minimisation, and the Rust crates that offer L-BFGS (argmin, ...) bring a
//! whole optimisation framework, its traits and its dependency tree to an
//! edge binary for one routine. The algorithm is the textbook one (Nocedal &
//! Wright, *Numerical Optimization*, 2nd ed., Alg. 7.4 with the strong-Wolfe
//! line search of Alg. 3.5/3.6), with the stopping rules of SciPy's
//! `L-BFGS-B` so results line up with scikit-learn.

use std::collections::VecDeque;

use serde::Serialize;

/// Settings of [`minimize`].
#[derive(Debug, Clone, PartialEq)]
pub struct LbfgsConfig {
    /// Number of curvature pairs kept; 10 is the usual sweet spot.
    pub memory: usize,
    /// Maximum number of iterations (each runs one line search).
    pub max_iter: usize,
    /// Stop when `max_i |g_i| <= grad_tol` (SciPy's `gtol`).
    pub grad_tol: f64,
    /// Stop when `(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= rel_tol`
    /// (SciPy's `ftol`): progress has fallen to rounding level.
    pub rel_tol: f64,
    /// Maximum objective evaluations per line search.
    pub max_line_search: usize,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        Self {
            memory: 10,
            max_iter: 1000,
            grad_tol: 1e-5,
            rel_tol: 64.0 * f64::EPSILON,
            max_line_search: 50,
        }
    }
}

/// Why [`minimize`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// The gradient's largest component fell below `grad_tol`.
    GradientTolerance,
    /// The relative decrease of the objective fell below `rel_tol`.
    RelativeDecrease,
    /// `max_iter` iterations ran without meeting a tolerance.
    MaxIterations,
    /// No step satisfying the Wolfe conditions was found, even along the
    /// steepest-descent direction; usually the tolerance is below what the
    /// objective's rounding noise allows.
    LineSearchFailed,
    /// The objective or gradient was NaN/Inf at the starting point.
    NonFiniteStart,
}

/// Outcome of [`minimize`]; the minimiser itself is written into `x`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LbfgsReport {
    /// Objective at the returned point.
    pub value: f64,
    /// Largest absolute gradient component at the returned point.
    pub grad_max: f64,
    /// Iterations performed.
    pub iterations: usize,
    /// Objective/gradient evaluations performed (line searches included).
    pub evaluations: usize,
    /// Why the iteration stopped.
    pub termination: Termination,
}

impl LbfgsReport {
    /// True when a tolerance was met, i.e. the point is a (numerical) optimum.
    pub fn converged(&self) -> bool {
        matches!(
            self.termination,
            Termination::GradientTolerance | Termination::RelativeDecrease
        )
    }
}

/// Sufficient-decrease constant of the Wolfe conditions.
const C1: f64 = 1e-4;
/// Curvature constant; 0.9 is the standard choice for quasi-Newton methods.
const C2: f64 = 0.9;

/// Minimises `objective` starting from `x`, leaving the best point in `x`.
///
/// `objective(x, grad)` returns f(x) and writes ∇f(x) into `grad`. The
/// iteration is fully deterministic. A NaN/Inf value during a line search is
/// treated as "step too long", so objectives with a bounded domain work as
/// long as the start is inside it.
pub fn minimize<F>(mut objective: F, x: &mut [f64], cfg: &LbfgsConfig) -> LbfgsReport
where
    F: FnMut(&[f64], &mut [f64]) -> f64,
{
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut fx = objective(x, &mut g);
    let mut evaluations = 1;
    let report = |value, g: &[f64], iterations, evaluations, termination| LbfgsReport {
        value,
        grad_max: max_abs(g),
        iterations,
        evaluations,
        termination,
    };
    if !fx.is_finite() || g.iter().any(|v| !v.is_finite()) {
        return report(fx, &g, 0, evaluations, Termination::NonFiniteStart);
    }
    if max_abs(&g) <= cfg.grad_tol {
        return report(fx, &g, 0, evaluations, Termination::GradientTolerance);
    }

    let mut memory = Memory::new(cfg.memory);
    let mut dir = vec![0.0; n];
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    for iter in 1..=cfg.max_iter {
        let found = loop {
            memory.direction(&g, &mut dir);
            let fresh = memory.is_empty();
            let mut search = LineSearch {
                objective: &mut objective,
                x,
                fx,
                dir: &dir,
                slope: dot(&g, &dir),
                x_new: &mut x_new,
                g_new: &mut g_new,
                max_evals: cfg.max_line_search,
                evals: 0,
            };
            // Steepest descent has no scale information: make the first trial
            // step unit length. Quasi-Newton steps are already scaled.
            let found = search.run(if fresh { 1.0 / l2(&g) } else { 1.0 });
            evaluations += search.evals;
            if found.is_some() || fresh {
                break found;
            }
            // The quasi-Newton model may be stale: retry once along -g.
            memory.clear();
        };
        let Some(f_new) = found else {
            return report(fx, &g, iter, evaluations, Termination::LineSearchFailed);
        };

        memory.push(x, &x_new, &g, &g_new);
        let decrease = (fx - f_new) / fx.abs().max(f_new.abs()).max(1.0);
        x.copy_from_slice(&x_new);
        g.copy_from_slice(&g_new);
        fx = f_new;
        if max_abs(&g) <= cfg.grad_tol {
            return report(fx, &g, iter, evaluations, Termination::GradientTolerance);
        }
        if decrease <= cfg.rel_tol {
            return report(fx, &g, iter, evaluations, Termination::RelativeDecrease);
        }
    }
    report(
        fx,
        &g,
        cfg.max_iter,
        evaluations,
        Termination::MaxIterations,
    )
}

/// The last `m` curvature pairs (s, y, 1/sᵀy) that define the inverse-Hessian
/// approximation.
struct Memory {
    capacity: usize,
    pairs: VecDeque<(Vec<f64>, Vec<f64>, f64)>,
}

impl Memory {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            pairs: VecDeque::with_capacity(capacity),
        }
    }

    fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn clear(&mut self) {
        self.pairs.clear();
    }

    /// Stores the step just taken, unless it has no usable curvature
    /// (sᵀy ≤ 0 would make the approximation indefinite).
    fn push(&mut self, x: &[f64], x_new: &[f64], g: &[f64], g_new: &[f64]) {
        if self.capacity == 0 {
            return;
        }
        let s: Vec<f64> = x_new.iter().zip(x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        let has_curvature = sy > f64::EPSILON * dot(&y, &y); // false for NaN too
        if !has_curvature {
            return;
        }
        if self.pairs.len() == self.capacity {
            self.pairs.pop_front();
        }
        self.pairs.push_back((s, y, 1.0 / sy));
    }

    /// Two-loop recursion: `dir = -H g`, with H₀ = (sᵀy / yᵀy)·I.
    fn direction(&self, g: &[f64], dir: &mut [f64]) {
        for (d, gi) in dir.iter_mut().zip(g) {
            *d = -gi;
        }
        let mut alphas = Vec::with_capacity(self.pairs.len());
        for (s, y, rho) in self.pairs.iter().rev() {
            let alpha = rho * dot(s, dir);
            axpy(-alpha, y, dir);
            alphas.push(alpha);
        }
        if let Some((s, y, _)) = self.pairs.back() {
            let gamma = dot(s, y) / dot(y, y);
            dir.iter_mut().for_each(|d| *d *= gamma);
        }
        for ((s, y, rho), alpha) in self.pairs.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, dir);
            axpy(alpha - beta, s, dir);
        }
    }
}

/// One trial point of the line search: step length, value, directional derivative.
#[derive(Clone, Copy)]
struct Trial {
    step: f64,
    value: f64,
    slope: f64,
}

/// Strong-Wolfe line search along `dir` from `x` (Nocedal & Wright Alg. 3.5/3.6).
/// On success `x_new`/`g_new` hold the accepted point.
struct LineSearch<'a, F> {
    objective: &'a mut F,
    x: &'a [f64],
    fx: f64,
    dir: &'a [f64],
    slope: f64,
    x_new: &'a mut [f64],
    g_new: &'a mut [f64],
    max_evals: usize,
    evals: usize,
}

impl<F: FnMut(&[f64], &mut [f64]) -> f64> LineSearch<'_, F> {
    fn eval(&mut self, step: f64) -> Trial {
        for ((xn, xi), di) in self.x_new.iter_mut().zip(self.x).zip(self.dir) {
            *xn = xi + step * di;
        }
        self.evals += 1;
        let value = (self.objective)(self.x_new, self.g_new);
        Trial {
            step,
            value,
            slope: dot(self.g_new, self.dir),
        }
    }

    fn armijo(&self, t: &Trial) -> bool {
        t.value.is_finite() && t.value <= self.fx + C1 * t.step * self.slope
    }

    fn curvature(&self, t: &Trial) -> bool {
        t.slope.abs() <= -C2 * self.slope
    }

    /// Returns the accepted objective value, or `None` if no step was found.
    fn run(&mut self, step0: f64) -> Option<f64> {
        let descent = self.slope < 0.0; // false for NaN too
        if !descent || !step0.is_finite() {
            return None;
        }
        let mut prev = Trial {
            step: 0.0,
            value: self.fx,
            slope: self.slope,
        };
        let mut step = step0;
        while self.evals < self.max_evals {
            let t = self.eval(step);
            if !self.armijo(&t) || (prev.step > 0.0 && t.value >= prev.value) {
                return self.zoom(prev, t);
            }
            if self.curvature(&t) {
                return Some(t.value);
            }
            if t.slope >= 0.0 {
                return self.zoom(t, prev);
            }
            prev = t;
            step *= 2.0;
        }
        None
    }

    /// Shrinks the bracket [lo, hi] known to contain a Wolfe point. `lo` always
    /// satisfies sufficient decrease and has the lowest value seen.
    fn zoom(&mut self, mut lo: Trial, mut hi: Trial) -> Option<f64> {
        while self.evals < self.max_evals {
            let t = self.eval(interpolate(&lo, &hi));
            if !self.armijo(&t) || t.value >= lo.value {
                hi = t;
            } else {
                if self.curvature(&t) {
                    return Some(t.value);
                }
                if t.slope * (hi.step - lo.step) >= 0.0 {
                    hi = lo;
                }
                lo = t;
            }
            if (hi.step - lo.step).abs() <= f64::EPSILON * lo.step.abs().max(1.0) {
                break;
            }
        }
        // Out of budget: settle for sufficient decrease alone, which still
        // guarantees progress, if any trial achieved it.
        if lo.step > 0.0 {
            let t = self.eval(lo.step);
            return Some(t.value);
        }
        None
    }
}

/// Minimiser of the cubic through both trials, kept at least 10% of the bracket
/// away from its ends; bisection when the cubic is unusable (e.g. `hi` is NaN).
fn interpolate(lo: &Trial, hi: &Trial) -> f64 {
    let (a, b) = (lo.step.min(hi.step), lo.step.max(hi.step));
    let margin = 0.1 * (b - a);
    let d1 = lo.slope + hi.slope - 3.0 * (lo.value - hi.value) / (lo.step - hi.step);
    let disc = d1 * d1 - lo.slope * hi.slope;
    let cubic = if disc >= 0.0 {
        let d2 = (hi.step - lo.step).signum() * disc.sqrt();
        hi.step - (hi.step - lo.step) * (hi.slope + d2 - d1) / (hi.slope - lo.slope + 2.0 * d2)
    } else {
        f64::NAN
    };
    if cubic.is_finite() {
        cubic.clamp(a + margin, b - margin)
    } else {
        0.5 * (a + b)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

fn l2(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}
