"""Hessian-free optimisation (truncated Gauss-Newton with CG), one pure step.

Notation: parameters `theta` (any pytree), a batch, model outputs
`z = f(theta, batch)` and a loss `L(z, batch)` convex in `z`; `g` the
gradient, `G = J^T H_L J` the Gauss-Newton matrix (`jaxctl.core.gauss_newton`),
`lambda` the damping. Each step minimises the damped quadratic model

    q(d) - q(0) = g^T d + d^T (G + lambda I + lambda mu S) d / 2

by conjugate gradient, where `S = J_h^T J_h / B` is Martens & Sutskever's
structural damping on hidden activations `h` (`mu = structural_damping`,
`B` the batch size), and then:

1. CG starts from `warm_start * d_prev` (0.95, Martens 2010 section 4.5)
   and stops on relative progress of `q` (`jaxctl.core.cg.martens_cg`);
2. backtracking (section 4.6): the iterates stored on the geometric schedule
   are evaluated from the last backwards while the loss keeps decreasing;
   the best one is `d` (`backtrack_line_search`);
3. Levenberg-Marquardt damping (section 4.1): with
   `rho = (L(theta + d) - L(theta)) / (q(d) - q(0))`,
   `lambda *= increase` if `rho < 0.25`, `lambda *= decrease` if
   `rho > 0.75`, clamped to `damping_bounds`;
4. Armijo line search on `theta + a d`, `a = 1, 0.8, 0.8^2, ...`, accepting
   the first `a` with `L(theta + a d) <= L(theta) + c a g^T d`.

A non-finite loss, gradient or curvature, or a line search that finds no
decrease, rejects the step: the parameters are returned unchanged, the
damping goes up and the warm start is cleared if it is not finite.

The step is one pure function (no hidden `jit`): wrap it in `jax.jit`. The
state holds int32 / float32 scalars and a pytree like `params`, so the
second call never recompiles.

References:
  J. Martens (2010), "Deep learning via Hessian-free optimization", ICML.
  J. Martens and I. Sutskever (2011), "Learning recurrent neural networks
  with Hessian-free optimization", ICML.
  N. N. Schraudolph (2002), "Fast curvature matrix-vector products for
  second-order gradient descent", Neural Computation.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.core.cg import martens_cg, tree_axpy, tree_vdot
from jaxctl.core.gauss_newton import gauss_newton_model

PyTree = Any


class HFState(NamedTuple):
    """State of `hessian_free`.

    Attributes:
      count: int32, steps taken (accepted or not).
      damping: float32, the Tikhonov damping `lambda` for the next step.
      delta: pytree like `params`, the last CG solution (warm start).
    """

    count: jax.Array
    damping: jax.Array
    delta: PyTree


class HFStats(NamedTuple):
    """What one Hessian-free step did (all scalars).

    Attributes:
      loss: `L(theta)` before the step.
      new_loss: `L` at the returned parameters (`loss` if rejected).
      damping: the damping used for this step's curvature.
      rho: reduction ratio of the backtracked CG iterate (NaN if undefined).
      predicted: `q(d) - q(0)` for that iterate (damped model).
      grad_norm: `||g||`.
      cg_steps: int32, CG iterations taken.
      cg_iterate: int32, the CG step of the iterate chosen by backtracking.
      cg_breakdown: bool, CG met non-positive or non-finite curvature.
      learning_rate: the Armijo step length `a` (0 if rejected).
      evaluations: int32, loss evaluations of backtracking and line search.
      accepted: bool, the parameters changed.
    """

    loss: jax.Array
    new_loss: jax.Array
    damping: jax.Array
    rho: jax.Array
    predicted: jax.Array
    grad_norm: jax.Array
    cg_steps: jax.Array
    cg_iterate: jax.Array
    cg_breakdown: jax.Array
    learning_rate: jax.Array
    evaluations: jax.Array
    accepted: jax.Array


class HessianFree(NamedTuple):
    """The pure functions of a Hessian-free optimizer (from `hessian_free`).

    Attributes:
      init: `params -> HFState`.
      step: `(params, state, batch, curvature_batch=None) ->
        (params, state, HFStats)`.
    """

    init: Callable[[PyTree], HFState]
    step: Callable[..., tuple[PyTree, HFState, HFStats]]


def _tree_where(pred: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), x, y)


def _tree_all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def damping_update(damping: jax.Array, rho: jax.Array, *, increase: float = 1.5,
                   decrease: float = 2.0 / 3.0, bounds: tuple[float, float] = (1e-8, 1e8),
                   low: float = 0.25, high: float = 0.75) -> jax.Array:
    """Levenberg-Marquardt rule: `lambda * increase` if `rho < low` or `rho` is
    not finite, `lambda * decrease` if `rho > high`, clamped to `bounds`.

    Args:
      damping: scalar `lambda`.
      rho: scalar reduction ratio `(L(theta + d) - L(theta)) / (q(d) - q(0))`.
      increase, decrease: factors (> 1 and < 1).
      bounds: `(min, max)` damping.
      low, high: the thresholds on `rho`.

    Returns:
      The new damping, same dtype as `damping`.

    Example:
      >>> float(damping_update(jnp.float32(1.0), jnp.float32(0.1)))
      1.5

    References:
      Martens (2010), section 4.1; Nocedal & Wright, "Numerical
      Optimization", trust-region radius update.
    """
    good = jnp.isfinite(rho)
    factor = jnp.where(~good | (rho < low), increase, jnp.where(rho > high, decrease, 1.0))
    return jnp.clip(damping * factor, bounds[0], bounds[1]).astype(jnp.result_type(damping))


class SearchResult(NamedTuple):
    """Outcome of `backtrack_line_search`.

    Attributes:
      index: int32, the stored iterate chosen by backtracking.
      value: objective at that iterate (`+inf` if not finite).
      rate: the Armijo step length `a` (0 if no `a` satisfied the condition).
      new_value: objective at `a` times the chosen iterate (`value0` if
        `rate == 0`).
      evaluations: int32, objective evaluations made.
    """

    index: jax.Array
    value: jax.Array
    rate: jax.Array
    new_value: jax.Array
    evaluations: jax.Array


def backtrack_line_search(objective: Callable[[PyTree], jax.Array], iterates: PyTree,
                          num_iterates: jax.Array, value0: jax.Array, slopes: jax.Array, *,
                          c: float = 0.01, shrink: float = 0.8,
                          max_steps: int = 60) -> SearchResult:
    """CG backtracking (Martens 2010, section 4.6), then an Armijo line search.

    Backtracking: starting from the last stored iterate `d_{n-1}`, move to
    the previous one while the objective strictly decreases (or while it has
    been non-finite so far); the best is `d_j`. Line search: accept the first `a` in `1, shrink, shrink^2, ...`
    with `objective(a d_j) <= value0 + c a min(slope_j, 0)` (Armijo), at most
    `max_steps` shrinks, else `a = 0`; no shrinking at all when
    `c |slope_j| <= 4 eps |value0|` (the Armijo margin is below the float
    resolution of the loss, e.g. once training has converged). Non-finite
    objective values count as `+inf` and never satisfy the condition. Both phases run in ONE
    `lax.while_loop` with one call site of `objective`, so the model is
    compiled once for both.

    Args:
      objective: `d -> L(theta + d)`, scalar.
      iterates: pytree with a leading axis of stored iterates
        (`MartensCGResult.iterates`).
      num_iterates: int32 scalar, filled leading slots (>= 1).
      value0: `L(theta)`.
      slopes: `(K,)`, `g^T d_i` for every slot.
      c, shrink, max_steps: Armijo constant, shrink factor, budget.

    Returns:
      A `SearchResult(index, value, rate, new_value, evaluations)`.

    Example:
      >>> its = jnp.array([[0.5], [1.0], [2.0]])
      >>> r = backtrack_line_search(lambda d: (d[0] - 1.0) ** 2, its, jnp.int32(3),
      ...                           jnp.float32(1.0), -2.0 * its[:, 0])
      >>> int(r.index), float(r.rate)
      (1, 1.0)
    """
    dtype = jnp.result_type(value0)

    def evaluate(j, a):
        v = objective(jax.tree.map(lambda leaf: (a * leaf[j]).astype(leaf.dtype), iterates))
        return jnp.where(jnp.isfinite(v), v, jnp.inf).astype(dtype)

    def armijo_ok(j, a, v):
        return v <= value0 + a * c * jnp.minimum(slopes[j], 0.0)

    last = jnp.maximum(num_iterates - 1, 0).astype(jnp.int32)
    one = jnp.ones((), dtype)
    # carry: phase (0 backtrack, 1 line search, 2 done), j, best value, a, v(a), shrinks, evals
    v_last = evaluate(last, one)

    def phase_after_backtrack(j, v):
        # Below the loss's float resolution Armijo cannot tell a decrease from
        # rounding: shrinking further would only burn model evaluations.
        resolvable = c * jnp.abs(slopes[j]) > 4 * jnp.finfo(dtype).eps * jnp.abs(value0)
        return jnp.where(armijo_ok(j, one, v) | (max_steps == 0) | ~resolvable, 2, 1)

    phase0 = jnp.where(last > 0, 0, phase_after_backtrack(last, v_last))
    init = (phase0.astype(jnp.int32), last, v_last, one, v_last,
            jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32))

    def cond(carry):
        return carry[0] < 2

    def body(carry):
        phase, j, best_v, a, v_a, n_shrink, evals = carry
        backtracking = phase == 0
        j_eval = jnp.where(backtracking, j - 1, j)
        a_eval = jnp.where(backtracking, one, a * shrink)
        v = evaluate(j_eval, a_eval)
        # backtracking branch
        # While nothing finite has been seen, keep walking back.
        better = (v < best_v) | jnp.isinf(best_v)
        bt_j = jnp.where(better, j_eval, j)
        bt_v = jnp.where(better, v, best_v)
        bt_done = ~better | (bt_j == 0)
        bt_phase = jnp.where(bt_done, phase_after_backtrack(bt_j, bt_v), 0)
        # line-search branch
        ls_shrinks = n_shrink + 1
        ls_phase = jnp.where(armijo_ok(j, a_eval, v) | (ls_shrinks >= max_steps), 2, 1)
        return (jnp.where(backtracking, bt_phase, ls_phase).astype(jnp.int32),
                jnp.where(backtracking, bt_j, j),
                jnp.where(backtracking, bt_v, best_v),
                jnp.where(backtracking, one, a_eval),
                jnp.where(backtracking, bt_v, v),
                jnp.where(backtracking, n_shrink, ls_shrinks),
                evals + 1)

    _, j, best_v, a, v_a, _, evals = lax.while_loop(cond, body, init)
    success = armijo_ok(j, a, v_a)
    return SearchResult(index=j, value=best_v, rate=jnp.where(success, a, 0.0).astype(dtype),
                        new_value=jnp.where(success, v_a, value0), evaluations=evals)


def hessian_free(
    model: Callable[[PyTree, Any], PyTree],
    loss: Callable[[PyTree, Any], jax.Array],
    *,
    maxiter: int = 250,
    init_damping: float = 1.0,
    damping_bounds: tuple[float, float] = (1e-8, 1e8),
    damping_increase: float = 1.5,
    damping_decrease: float = 2.0 / 3.0,
    reject_increase: float = 1.5,
    warm_start: float = 0.95,
    cg_tol: float = 5e-6,
    cg_min_gap: int = 10,
    store_first: int = 5,
    store_ratio: float = 1.3,
    armijo_c: float = 0.01,
    line_search_shrink: float = 0.8,
    line_search_steps: int = 60,
    structural_damping: float = 0.0,
    preconditioner: str | None = None,
    preconditioner_exponent: float = 0.75,
) -> HessianFree:
    """Builds a Hessian-free optimizer (Martens 2010; Martens & Sutskever 2011).

    Args:
      model: `(params, batch) -> outputs` (any pytree). With
        `structural_damping > 0` it must return `(outputs, hidden)`, where
        every leaf of `hidden` has the batch on its leading axis (e.g.
        `RNNOutputs.hidden` vmapped); the penalty is on those activations.
      loss: `(outputs, batch) -> scalar`, convex in `outputs` (e.g. a batch
        mean of `squared_error`, plus an L2 penalty on torques).
      maxiter: CG budget per step (`hessianfree`'s `CG_iter`).
      init_damping: initial `lambda` (Martens and `hessianfree`: 1; for a
        batch-mean loss of small scale start lower, e.g. 1e-3 -- the rule
        adapts it either way within `damping_bounds`).
      damping_bounds: `(min, max)` clamp of `lambda`.
      damping_increase, damping_decrease: Levenberg-Marquardt factors.
      reject_increase: damping factor when the loss or gradient is not
        finite (the step is rejected).
      warm_start: CG starts from this times the previous CG solution.
      cg_tol, cg_min_gap: Martens' CG stopping rule (see `martens_cg`).
      store_first, store_ratio: iterates stored for backtracking.
      armijo_c, line_search_shrink, line_search_steps: Armijo line search.
      structural_damping: `mu`; adds `lambda mu J_h^T J_h / B` to the
        curvature (0 disables).
      preconditioner: `None` or `"martens"`: `M = (diag(mean_i g_i^2) +
        lambda)^xi` from per-example gradients (every batch leaf must carry
        examples on its leading axis, and `model` / `loss` must accept a
        batch of one).
      preconditioner_exponent: `xi` (Martens: 0.75).

    Returns:
      `HessianFree(init, step)`. `step(params, state, batch,
      curvature_batch=None)` computes the gradient on `batch` and the
      curvature on `curvature_batch` (a smaller subset, Martens 2010
      section 4.7) or on `batch` when it is `None`.

    Example:
      >>> def model(params, batch):
      ...     return jax.vmap(lambda x: mlp_apply(params, x))(batch["x"])
      >>> def loss(out, batch):
      ...     return jnp.mean(jax.vmap(squared_error)(out, batch["y"]))
      >>> opt = hessian_free(model, loss, maxiter=50, init_damping=1e-2)
      >>> state = opt.init(params)
      >>> step = jax.jit(opt.step)
      >>> for _ in range(30):
      ...     params, state, stats = step(params, state, batch)

    References:
      J. Martens (2010), "Deep learning via Hessian-free optimization";
      J. Martens and I. Sutskever (2011), "Learning recurrent neural
      networks with Hessian-free optimization", ICML (structural damping).
    """
    if not isinstance(maxiter, int) or maxiter < 1:
        raise ValueError(f"maxiter must be a positive int, got {maxiter!r}")
    lo, hi = damping_bounds
    if not 0 < lo <= hi:
        raise ValueError(f"damping_bounds must satisfy 0 < min <= max, got {damping_bounds}")
    if not lo <= init_damping <= hi:
        raise ValueError(f"init_damping must lie in damping_bounds {damping_bounds}, "
                         f"got {init_damping}")
    if not (damping_increase > 1 and reject_increase > 1 and 0 < damping_decrease < 1):
        raise ValueError("damping_increase and reject_increase must be > 1 and "
                         "damping_decrease in (0, 1)")
    if not 0 <= warm_start <= 1:
        raise ValueError(f"warm_start must be in [0, 1], got {warm_start}")
    if not (0 < armijo_c < 1 and 0 < line_search_shrink < 1 and line_search_steps >= 0):
        raise ValueError("need 0 < armijo_c < 1, 0 < line_search_shrink < 1, "
                         "line_search_steps >= 0")
    if structural_damping < 0:
        raise ValueError(f"structural_damping must be >= 0, got {structural_damping}")
    if preconditioner not in (None, "martens"):
        raise ValueError(f"preconditioner must be None or 'martens', got {preconditioner!r}")
    structural = structural_damping > 0

    def outputs_of(model_out):
        if not structural:
            return model_out
        if not (isinstance(model_out, tuple) and len(model_out) == 2):
            raise ValueError("with structural_damping > 0, model must return (outputs, hidden)")
        return model_out[0]

    def objective(params, batch):
        return loss(outputs_of(model(params, batch)), batch)

    def curvature_loss(batch, lam):
        """Loss on the model's raw outputs whose Gauss-Newton matrix is the
        curvature CG sees (structural damping included, gradient unchanged)."""
        if not structural:
            return lambda out: loss(out, batch)

        def with_structure(model_out):
            out, hidden = outputs_of(model_out), model_out[1]
            # (h - stop_gradient(h)) is 0 with zero gradient, but its Hessian
            # is the identity: exactly the structural term lambda mu J_h^T J_h / B.
            penalty = sum(jnp.sum((h - lax.stop_gradient(h)) ** 2) / h.shape[0]
                          for h in jax.tree.leaves(hidden))
            return loss(out, batch) + 0.5 * lam * structural_damping * penalty

        return with_structure

    def init(params: PyTree) -> HFState:
        return HFState(count=jnp.zeros((), jnp.int32),
                       damping=jnp.asarray(init_damping, jnp.float32),
                       delta=jax.tree.map(jnp.zeros_like, params))

    def step(params: PyTree, state: HFState, batch: Any,
             curvature_batch: Any = None) -> tuple[PyTree, HFState, HFStats]:
        leaves = jax.tree.leaves(params)
        if not leaves:
            raise ValueError("params must hold at least one array")
        dtype = jnp.result_type(*leaves)
        lam = state.damping.astype(dtype)

        gn = gauss_newton_model(lambda p: model(p, batch), curvature_loss(batch, lam), params)
        if curvature_batch is None:
            gn_matvec = gn.matvec
        else:
            gn_matvec = gauss_newton_model(lambda p: model(p, curvature_batch),
                                           curvature_loss(curvature_batch, lam), params).matvec
        value0, grad = gn.value, gn.grad
        inputs_ok = jnp.isfinite(value0) & _tree_all_finite(grad)
        # A non-finite gradient must not reach CG's arithmetic (or the params).
        grad = _tree_where(inputs_ok, grad, jax.tree.map(jnp.zeros_like, grad))

        def damped(v):
            return tree_axpy(lam, v, gn_matvec(v))

        precond = None
        if preconditioner == "martens":
            def example_grad(example):
                one = jax.tree.map(lambda leaf: leaf[None], example)
                return jax.grad(objective)(params, one)
            sq = jax.tree.map(lambda g: jnp.mean(g**2, axis=0), jax.vmap(example_grad)(batch))
            diag = jax.tree.map(lambda s: (s + lam) ** preconditioner_exponent, sq)
            diag = _tree_where(_tree_all_finite(diag), diag, jax.tree.map(jnp.ones_like, diag))
            precond = lambda r: jax.tree.map(jnp.divide, r, diag)

        x0 = jax.tree.map(lambda d: (warm_start * d).astype(d.dtype), state.delta)
        cg = martens_cg(damped, jax.tree.map(jnp.negative, grad), x0=x0, maxiter=maxiter,
                        preconditioner=precond, tol=cg_tol, min_gap=cg_min_gap,
                        store_first=store_first, store_ratio=store_ratio)

        def loss_at(d):
            return objective(tree_axpy(1.0, d, params), batch)

        slopes = jax.vmap(lambda d: tree_vdot(grad, d))(cg.iterates)
        search = backtrack_line_search(loss_at, cg.iterates, cg.num_iterates, value0, slopes,
                                       c=armijo_c, shrink=line_search_shrink,
                                       max_steps=line_search_steps)
        best = search.index
        delta = jax.tree.map(lambda leaf: leaf[best], cg.iterates)
        # q(d) - q(0) = phi(d) of the damped model CG minimised, tracked by CG.
        predicted = cg.iterate_phi[best]
        model_ok = jnp.isfinite(predicted) & (predicted < 0)
        rho = jnp.where(model_ok, (search.value - value0) / jnp.where(model_ok, predicted, -1.0),
                        jnp.nan)
        rate = search.rate
        accepted = inputs_ok & jnp.isfinite(predicted) & (rate > 0)
        new_params = _tree_where(
            accepted, jax.tree.map(lambda p, d: p + rate.astype(d.dtype) * d, params, delta), params)

        new_damping = jnp.where(
            inputs_ok,
            damping_update(state.damping, rho.astype(jnp.float32), increase=damping_increase,
                           decrease=damping_decrease, bounds=damping_bounds),
            jnp.clip(state.damping * reject_increase, lo, hi)).astype(jnp.float32)
        warm_ok = inputs_ok & _tree_all_finite(cg.x)
        new_delta = _tree_where(warm_ok, cg.x, jax.tree.map(jnp.zeros_like, cg.x))
        new_state = HFState(count=state.count + 1, damping=new_damping, delta=new_delta)
        stats = HFStats(
            loss=value0, new_loss=jnp.where(accepted, search.new_value, value0), damping=state.damping,
            rho=rho, predicted=predicted, grad_norm=jnp.sqrt(tree_vdot(grad, grad)),
            cg_steps=cg.num_steps, cg_iterate=cg.iterate_steps[best],
            cg_breakdown=cg.breakdown, learning_rate=jnp.where(accepted, rate, 0.0),
            evaluations=search.evaluations, accepted=accepted)
        return new_params, new_state, stats

    return HessianFree(init=init, step=step)
