"""Hessian-free optimisation (truncated Gauss-Newton with CG), one pure step.

Notation: parameters `theta` (any pytree), a batch, model outputs
`z = f(theta, batch)` and a loss `L(z, batch)` convex in `z`; `g` the
gradient, `G = J^T H_L J` the Gauss-Newton matrix (`jaxctl.core.gauss_newton`),
`lambda` the damping. Each step minimises the damped quadratic model

    q(d) - q(0) = g^T d + d^T (G + lambda I + lambda mu S) d / 2

by conjugate gradient, where `S = J_h^T J_h / B` is Martens & Sutskever's
structural damping on hidden activations `h` (`mu = DampingConfig.structural`,
`B` the batch size), and then:

1. CG starts from `warm_start_factor * d_prev` (0.95, Martens 2010 section
   4.5) and stops on relative progress of `q` (`jaxctl.core.martens_cg.martens_cg`);
2. backtracking (section 4.6): the iterates stored on the geometric schedule
   are evaluated from the last backwards while the loss keeps decreasing;
   the best one is `d` (`backtrack_line_search`);
3. Levenberg-Marquardt damping (section 4.1): with
   `rho = (L(theta + d) - L(theta)) / (q(d) - q(0))`,
   `lambda *= increase` if `rho < 0.25`, `lambda *= decrease` if
   `rho > 0.75`, clamped to `bounds` (`damping_update`);
4. Armijo line search on `theta + a d`, `a = 1, 0.8, 0.8^2, ...`, accepting
   the first `a` with `L(theta + a d) <= L(theta) + c a g^T d`.

A non-finite loss or gradient, a CG breakdown before its first step
(negative curvature of a concave loss, say), or a line search that finds no
decrease rejects the step: the parameters are returned unchanged and the
damping goes up; the warm start is cleared unless it is a finite CG solution.

The settings come in three groups (`jaxctl.optim.hf_config`): `CGConfig`,
`DampingConfig`, `LineSearchConfig`. The step is one pure function (no hidden
`jit`): wrap it in `jax.jit`. The state holds int32 / float32 scalars and a
pytree like `params`, so the second call never recompiles.

Data parallelism: split the batch over a mesh axis before or inside the
`jit` (`jaxctl.util.mesh.shard_along(batch, mesh)`, parameters replicated);
XLA's partitioner then computes the loss, the gradient and every
Gauss-Newton product as local sums plus all-reduces of parameter-sized
vectors, and the batch never moves (`jaxctl reach --devices N`).

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
import optax
from jax import lax

from jaxctl.core.martens_cg import MartensCGResult, martens_cg
from jaxctl.core.gauss_newton import gauss_newton_model
from jaxctl.optim.hf_config import (
    CGConfig,
    DampingConfig,
    LineSearchConfig,
    check_cg_config,
    check_damping_config,
    check_line_search_config,
)
from jaxctl.optim.hf_search import backtrack_line_search, damping_update
from jaxctl.util import checks
from jaxctl.util.checks import PyTree


class HFState(NamedTuple):
    """State of `hessian_free`.

    Attributes:
      count: int32, steps taken (accepted or not).
      damping: float32, the Tikhonov damping `lambda` for the next step.
      warm_start: pytree like `params`, the last CG solution; the next solve
        starts from `CGConfig.warm_start_factor` times it.
    """

    count: jax.Array
    damping: jax.Array
    warm_start: PyTree


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
      cg_breakdown: bool, CG met non-positive or non-finite curvature (with
        `cg_steps == 0` the step is rejected).
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


class _Curvature(NamedTuple):
    value: jax.Array        # L(theta) on the batch
    grad: PyTree            # g, zero where not finite
    finite: jax.Array       # L(theta) and g are finite
    matvec: Callable[[PyTree], PyTree]  # v -> (G + lambda I + lambda mu S) v


def _martens_preconditioner(objective, params, batch, lam, exponent):
    """`r -> r / (diag(mean_i g_i^2) + lambda)^xi` from per-example gradients."""
    def example_grad(example):
        return jax.grad(objective)(params, jax.tree.map(lambda leaf: leaf[None], example))

    sq = jax.tree.map(lambda g: jnp.mean(g**2, axis=0), jax.vmap(example_grad)(batch))
    diag = jax.tree.map(lambda s: (s + lam) ** exponent, sq)
    diag = checks.tree_where(checks.tree_all_finite(diag), diag, optax.tree.ones_like(diag))
    return lambda r: jax.tree.map(jnp.divide, r, diag)


def _solve(config: CGConfig, curvature: _Curvature, warm_start: PyTree,
           preconditioner) -> MartensCGResult:
    """Martens' CG on `(G + lambda I) d = -g` from `warm_start_factor * warm_start`."""
    x0 = jax.tree.map(lambda d: (config.warm_start_factor * d).astype(d.dtype), warm_start)
    return martens_cg(curvature.matvec, jax.tree.map(jnp.negative, curvature.grad), x0=x0,
                      maxiter=config.maxiter, preconditioner=preconditioner, tol=config.tol,
                      min_gap=config.min_gap, gap_fraction=config.gap_fraction,
                      store_first=config.store_first, store_ratio=config.store_ratio)


def _reduction_ratio(actual: jax.Array, predicted: jax.Array) -> jax.Array:
    """`rho = actual / predicted`, NaN unless the model predicts a finite decrease."""
    model_ok = jnp.isfinite(predicted) & (predicted < 0)
    return jnp.where(model_ok, actual / jnp.where(model_ok, predicted, -1.0), jnp.nan)


def _next_damping(config: DampingConfig, damping: jax.Array, rho: jax.Array,
                  usable: jax.Array) -> jax.Array:
    """The LM rule on `rho` for a usable step, else `damping * reject_increase`."""
    rejected = jnp.clip(damping * config.reject_increase, *config.bounds)
    return jnp.where(usable, damping_update(damping, rho.astype(jnp.float32), config),
                     rejected).astype(jnp.float32)


def hessian_free(
    model: Callable[[PyTree, Any], PyTree],
    loss: Callable[[PyTree, Any], jax.Array],
    *,
    cg: CGConfig = CGConfig(),
    damping: DampingConfig = DampingConfig(),
    line_search: LineSearchConfig = LineSearchConfig(),
) -> HessianFree:
    """Builds a Hessian-free optimizer (Martens 2010; Martens & Sutskever 2011).

    Args:
      model: `(params, batch) -> outputs` (any pytree). With
        `damping.structural > 0` it must return `(outputs, hidden)`, where
        every leaf of `hidden` has the batch on its leading axis (e.g.
        `RNNOutputs.hidden` vmapped); the penalty is on those activations.
      loss: `(outputs, batch) -> scalar`, convex in `outputs` (e.g. a batch
        mean of `squared_error`, plus an L2 penalty on torques).
      cg: a `CGConfig`: budget `maxiter`, stopping rule, warm start,
        stored iterates, preconditioner.
      damping: a `DampingConfig`: initial `lambda`, the Levenberg-Marquardt
        rule and bounds, the structural damping `mu`.
      line_search: a `LineSearchConfig`: the Armijo search.

    Returns:
      `HessianFree(init, step)`. `step(params, state, batch,
      curvature_batch=None)` computes the gradient on `batch` and the
      curvature on `curvature_batch` (a smaller subset, Martens 2010
      section 4.7) or on `batch` when it is `None`.

    Raises:
      ValueError: a setting is out of range (the message names the field).

    Example:
      >>> X = jax.random.normal(jax.random.PRNGKey(0), (32, 3))
      >>> batch = (X, jnp.tanh(X @ jnp.array([1.0, -2.0, 0.5])))
      >>> model = lambda w, b: jnp.tanh(b[0] @ w)
      >>> loss = lambda z, b: 0.5 * jnp.mean((z - b[1]) ** 2)
      >>> opt = hessian_free(model, loss, cg=CGConfig(maxiter=20),
      ...                    damping=DampingConfig(initial=1e-2))
      >>> w = jnp.zeros(3)
      >>> state, step = opt.init(w), jax.jit(opt.step)
      >>> for _ in range(10):
      ...     w, state, stats = step(w, state, batch)
      >>> bool(loss(model(w, batch), batch) < 1e-6)
      True

    References:
      J. Martens (2010), "Deep learning via Hessian-free optimization";
      J. Martens and I. Sutskever (2011), "Learning recurrent neural
      networks with Hessian-free optimization", ICML (structural damping).
    """
    cg, damping = check_cg_config(cg), check_damping_config(damping)
    line_search = check_line_search_config(line_search)
    mu = checks.concrete_scalar("DampingConfig.structural", damping.structural)
    structural = mu is None or mu > 0  # a traced mu is taken as nonzero

    def outputs_of(model_out):
        if not structural:
            return model_out
        if not (isinstance(model_out, tuple) and len(model_out) == 2):
            raise ValueError("with DampingConfig.structural > 0, model must return "
                             "(outputs, hidden)")
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
            return loss(out, batch) + 0.5 * lam * damping.structural * penalty

        return with_structure

    def curvature(params, batch, curvature_batch, lam) -> _Curvature:
        gn = gauss_newton_model(lambda p: model(p, batch), curvature_loss(batch, lam), params)
        gn_matvec = gn.matvec
        if curvature_batch is not None:
            gn_matvec = gauss_newton_model(lambda p: model(p, curvature_batch),
                                           curvature_loss(curvature_batch, lam), params).matvec
        finite = jnp.isfinite(gn.value) & checks.tree_all_finite(gn.grad)
        # A non-finite gradient must not reach CG's arithmetic (or the params).
        grad = checks.tree_where(finite, gn.grad, optax.tree.zeros_like(gn.grad))
        return _Curvature(gn.value, grad, finite,
                          lambda v: optax.tree.add_scale(gn_matvec(v), lam, v))

    def init(params: PyTree) -> HFState:
        return HFState(count=jnp.zeros((), jnp.int32),
                       damping=jnp.asarray(damping.initial, jnp.float32),
                       warm_start=optax.tree.zeros_like(params))

    def step(params: PyTree, state: HFState, batch: Any,
             curvature_batch: Any = None) -> tuple[PyTree, HFState, HFStats]:
        leaves = jax.tree.leaves(params)
        if not leaves:
            raise ValueError("params must hold at least one array")
        lam = state.damping.astype(jnp.result_type(*leaves))
        curv = curvature(params, batch, curvature_batch, lam)
        precond = None
        if cg.preconditioner == "martens":
            precond = _martens_preconditioner(objective, params, batch, lam,
                                              cg.preconditioner_exponent)
        sol = _solve(cg, curv, state.warm_start, precond)
        slopes = jax.vmap(lambda d: optax.tree.vdot(curv.grad, d))(sol.iterates)
        search = backtrack_line_search(lambda d: objective(optax.tree.add(params, d), batch),
                                       sol.iterates, sol.num_iterates, curv.value, slopes,
                                       line_search)
        direction = jax.tree.map(lambda leaf: leaf[search.index], sol.iterates)
        # q(d) - q(0) = phi(d) of the damped model CG minimised, tracked by CG.
        predicted = sol.iterate_phi[search.index]
        rho = _reduction_ratio(search.value - curv.value, predicted)
        # A breakdown before CG's first step leaves nothing but the warm start.
        usable = curv.finite & ~(sol.breakdown & (sol.num_steps == 0))
        accepted = usable & jnp.isfinite(predicted) & (search.rate > 0)
        # The step length has the loss's dtype; the parameters keep their own.
        moved = jax.tree.map(lambda p, d: p + search.rate.astype(d.dtype) * d, params, direction)
        new_params = checks.tree_where(accepted, moved, params)
        keep_warm = usable & checks.tree_all_finite(sol.x)
        new_state = HFState(
            count=state.count + 1, damping=_next_damping(damping, state.damping, rho, usable),
            warm_start=checks.tree_where(keep_warm, sol.x, optax.tree.zeros_like(sol.x)))
        stats = HFStats(
            loss=curv.value, new_loss=jnp.where(accepted, search.new_value, curv.value),
            damping=state.damping, rho=rho, predicted=predicted,
            grad_norm=jnp.sqrt(optax.tree.vdot(curv.grad, curv.grad)),
            cg_steps=sol.num_steps, cg_iterate=sol.iterate_steps[search.index],
            cg_breakdown=sol.breakdown, learning_rate=jnp.where(accepted, search.rate, 0.0),
            evaluations=search.evaluations, accepted=accepted)
        return new_params, new_state, stats

    return HessianFree(init=init, step=step)
