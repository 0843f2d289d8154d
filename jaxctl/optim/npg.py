"""Normalized natural-gradient steps (Rajeswaran et al. 2017).

Given the policy gradient `g` and the natural direction `n = F^-1 g`, the
step `sqrt(delta / (g^T F^-1 g)) F^-1 g` makes the quadratic model of the
KL divergence, `0.5 step^T F step`, equal `delta / 2`: the step size is set
in distribution space, not in parameter space. Ascent convention: add the
step to the parameters to increase the objective.

`npg(delta, ...)` wraps the step as an optax transformation (descent
convention, like every optax optimizer): its `update` takes the loss
gradient plus the per-sample scores (or a Fisher-vector product) as extra
arguments and composes with `optax.chain`, `jax.jit` and `jax.vmap`.
`delta` and the dampings may be arrays, traced values or (for `delta`) a
schedule, so `optax.inject_hyperparams(npg)(delta=...)` works.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from jaxctl.core.cg import cg
from jaxctl.core.fisher import METHODS, fisher_vector_product, natural_gradient
from jaxctl.core.jacobians import leading_size, ravel_per_sample
from jaxctl.core.sharded import sharded_natural_gradient
from jaxctl.util.checks import (
    PyTree,
    check_choice,
    check_finite_positive,
    check_nonnegative,
    check_positive_int,
    check_same_structure,
    concrete_scalar,
    tree_all_finite,
    tree_as_float,
)


def normalized_step(g: PyTree, nat_g: PyTree, delta: float | jax.Array) -> tuple[PyTree, jax.Array]:
    """Rajeswaran's normalized natural-gradient step.

    `step = sqrt(delta / (g^T F^-1 g)) F^-1 g` with `F^-1 g = nat_g`, so
    `step^T F step = delta` whenever `g` lies in the range of `F`.
    If `g^T nat_g` is not finite or not positive (zero gradient, NaN scores,
    indefinite curvature), or a traced `delta` is not positive, the step is
    exactly zero and `step_size` is 0: never NaN. Integer inputs are promoted
    to float.

    Args:
      g: gradient, an array or pytree.
      nat_g: natural gradient `F^-1 g`, same structure as `g`.
      delta: trust-region size (> 0), the target value of `step^T F step`;
        a Python, numpy or jax scalar, possibly traced.

    Returns:
      `(step, step_size)`: the step (structure of `g`) and the scalar
      `sqrt(delta / g^T F^-1 g)` (0 when the step is rejected).

    Example:
      >>> step, size = normalized_step(jnp.array([2.0]), jnp.array([1.0]), 0.5)
      >>> float(size)  # sqrt(0.5 / 2)
      0.5

    References:
      Rajeswaran, Lowrey, Todorov & Kakade (2017), "Towards generalization
      and simplicity in continuous control", eq. (5). Kakade (2001), "A
      natural policy gradient".
    """
    check_finite_positive("delta", delta)
    check_same_structure("nat_g", nat_g, g, "g")
    return _normalized_step(g, nat_g, delta)


def _normalized_step(g: PyTree, nat_g: PyTree, delta: float | jax.Array,
                     quad: jax.Array | None = None) -> tuple[PyTree, jax.Array]:
    """`normalized_step` without the host-side checks (for scheduled `delta`).

    `quad = x^T M x` of an iterative solve `x ~ M^-1 g` normalizes by
    `max(g^T x, x^T M x)`: the two agree for conjugate-gradient iterates from
    zero (`r_k^T x_k = 0`), and where rounding breaks that the larger keeps
    `step^T M step <= delta`, so a wrong but finite solve cannot take a long
    step."""
    g = tree_as_float("g", g)
    nat_g = tree_as_float("nat_g", nat_g)
    gFg = optax.tree.vdot(g, nat_g)
    if quad is not None:
        gFg = jnp.maximum(gFg, quad.astype(gFg.dtype))
    delta = jnp.asarray(delta, gFg.dtype)
    ok = jnp.isfinite(gFg) & (gFg > 0) & jnp.isfinite(delta) & (delta > 0) & tree_all_finite(nat_g)
    step_size = jnp.where(ok, jnp.sqrt(jnp.where(ok, delta / jnp.where(ok, gFg, 1.0), 0.0)), 0.0)
    # where(), not multiplication: 0 * NaN would still be NaN.
    step = jax.tree.map(lambda n: jnp.where(ok, step_size * n, 0.0).astype(n.dtype), nat_g)
    return step, step_size.astype(gFg.dtype)


class NPGState(NamedTuple):
    """State of the `npg` transformation (stable dtypes: a second call never recompiles).

    Attributes:
      count: int32, number of updates taken (the step of a `delta` schedule).
      step_size: float32, the last normalization factor
        `sqrt(delta / g^T F^-1 g)` (0 when the last step was rejected).
      solver_steps: int32, CG iterations of the last update (0 for the dense
        solve).
    """

    count: jax.Array
    step_size: jax.Array
    solver_steps: jax.Array


FISHER_MODES = ("dense", "cg")


def _flat_scores(scores: PyTree, updates: PyTree, P: int) -> jax.Array:
    """The (T, P) score matrix from per-sample scores shaped like `updates` (or already (T, P))."""
    scores = tree_as_float("scores", scores)
    shapes = jax.tree.map(jnp.shape, updates)
    same_tree = jax.tree.structure(scores) == jax.tree.structure(updates)
    if same_tree:
        score_shapes = jax.tree.map(jnp.shape, scores)
        ok = all(
            len(s) == len(u) + 1 and s[1:] == u
            for s, u in zip(jax.tree.leaves(score_shapes, is_leaf=lambda x: isinstance(x, tuple)),
                            jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)))
        )
        if ok:
            leading_size("scores", scores)
            G, _ = ravel_per_sample(scores)
            return G
    if isinstance(scores, jax.Array) and scores.ndim == 2 and scores.shape[1] == P:
        leading_size("scores", scores)
        return scores
    raise ValueError(
        "scores must be per-sample scores shaped like the updates with a leading sample "
        f"axis T (updates have shapes {shapes}), or a (T, {P}) score matrix; got shapes "
        f"{jax.tree.map(jnp.shape, scores)}"
    )


def npg(
    delta: float | jax.Array | Callable[[jax.Array], jax.Array],
    *,
    fisher: str = "dense",
    rtol: float | jax.Array = 1e-6,
    damping: float | jax.Array = 0.0,
    rel_damping: float | jax.Array = 0.0,
    method: str = "auto",
    cg_maxiter: int | None = None,
    cg_tol: float | None = None,
    mesh: Mesh | None = None,
    axis: str = "data",
) -> optax.GradientTransformationExtraArgs:
    """Normalized natural policy gradient as an optax transformation.

    Takes the gradient `u` of a loss to MINIMISE (optax's convention; for
    the policy-gradient surrogate `L = -1/T sum_t log pi(a_t|s_t) A_t`,
    `u = -g` with `g = 1/T sum_t score_t A_t`) and returns the update

        -sqrt(delta / (u^T M^-1 u)) M^-1 u,   M = F + lambda I,

    so `optax.apply_updates(params, updates)` moves the parameters by the
    normalized natural step of Rajeswaran et al. (2017) (ascent on the
    return). The step satisfies `step^T M step = delta`, i.e. the quadratic
    model of the KL divergence between old and new policy is `delta / 2`
    (exactly `step^T F step = delta` without damping, when `u` is in the
    range of `F`). A step that cannot be normalized (zero gradient,
    non-finite scores) is exactly zero, never NaN.

    The Fisher `F = 1/T sum_t score_t score_t^T` comes from the per-sample
    scores passed to `update`:

    - `fisher="dense"` (DeWolf 2018): `jaxctl.core.fisher.natural_gradient` on the
      (T, P) score matrix, eigenvalues below `rtol * max eigenvalue` clipped
      (pseudo-inverse). Damping `lambda = damping + rel_damping * max
      eigenvalue`: Tikhonov damping relative to the largest eigenvalue bounds
      the condition number of `M` by `1 + 1 / rel_damping`, which keeps the
      normalized step from being spent along poorly estimated, nearly null
      directions of a 200-sample Fisher (the undamped step's failure mode).
    - `fisher="cg"` (mjrl): `cg_maxiter` conjugate-gradient steps on
      `v -> F v + damping v`, with either the scores (`G^T (G v) / T`) or a
      matrix-free operator `fvp` (e.g. `jaxctl.fisher_operator`, which never
      forms the scores). Early stopping regularises; only absolute damping.
      The step is normalized by `max(g^T x, x^T M x)` for the CG solution
      `x` (one more product): equal for exact CG iterates, and a wrong but
      finite solve still gives `step^T M step <= delta`.

    Args:
      delta: trust-region size `step^T M step` (> 0). DeWolf (2018) used
        0.001 with the undamped pseudo-inverse; Rajeswaran et al. 0.01-0.1.
        A Python, numpy or jax scalar (traced values pass; a non-positive
        one gives a zero step), or a schedule `count -> delta`.
      fisher: `"dense"` or `"cg"`.
      rtol: relative eigenvalue cut-off of the dense pseudo-inverse (>= 0).
      damping: absolute Tikhonov damping (>= 0).
      rel_damping: damping relative to the largest Fisher eigenvalue (>= 0,
        dense only; with `fisher="cg"` a traced non-zero value gives a zero
        step).
      method: dense solver, see `jaxctl.core.fisher.natural_gradient`.
      cg_maxiter: CG budget, a static int (None: 10, as in mjrl).
      cg_tol: CG relative tolerance (None: 1e-10).
      mesh, axis: with a `jax.sharding.Mesh`, `scores` are a (T, P) matrix
        (or per-sample pytree) whose samples are split over the mesh axis
        `axis` (e.g. from `jaxctl.core.sharded.sharded_scores`), and the
        solve never gathers them: `fisher="dense"` uses TSQR (needs T / N >= P),
        `fisher="cg"` CG on local products plus an all-reduce
        (`jaxctl.core.sharded.sharded_natural_gradient`; its `method` argument
        is then ignored).

    `delta`, `rtol` and the dampings may be arrays, so
    `optax.inject_hyperparams(npg)(delta=0.01)` exposes them in its state
    (the `None` defaults of the CG settings keep them static; pass
    `static_args=("cg_maxiter", "cg_tol")` to inject_hyperparams if you set
    them).

    Returns:
      An `optax.GradientTransformationExtraArgs` whose
      `update(updates, state, params=None, *, scores=None, fvp=None)`
      takes `scores`, the per-sample scores (a pytree like `updates` with a
      leading axis T, as `jaxctl.per_sample_grads` returns, or a (T, P)
      matrix), or, for `fisher="cg"`, `fvp`, a linear map `v -> F v` on
      params-like pytrees. Other extra arguments are ignored, so it chains.
      The state is an `NPGState`.

    Example:
      >>> from jaxctl.core.jacobians import per_sample_grads
      >>> from jaxctl.control.rl import score_gradient
      >>> log_prob = lambda w, s, a: jax.nn.log_softmax(s @ w)[a]   # linear softmax policy
      >>> w = jnp.zeros((4, 2))
      >>> obs, actions = jnp.ones((8, 4)).at[:, 0].set(jnp.arange(8.0)), jnp.arange(8) % 2
      >>> adv = jnp.linspace(-1.0, 1.0, 8)
      >>> scores = per_sample_grads(log_prob, w, obs, actions)            # (8, 4, 2)
      >>> grads = -score_gradient(scores, adv)                            # loss gradient
      >>> opt = npg(0.01, rel_damping=0.01)
      >>> updates, state = jax.jit(opt.update)(grads, opt.init(w), w, scores=scores)
      >>> w = optax.apply_updates(w, updates)                             # ascent on the return

    References:
      Kakade (2001), "A natural policy gradient". Rajeswaran, Lowrey,
      Todorov & Kakade (2017), "Towards generalization and simplicity in
      continuous control" (normalized step, CG on the Fisher).
    """
    if not callable(delta):
        check_finite_positive("delta", delta)
    check_choice("fisher", fisher, FISHER_MODES)
    check_choice("method", method, METHODS)
    cg_maxiter = check_positive_int("cg_maxiter", 10 if cg_maxiter is None else cg_maxiter)
    cg_tol = check_nonnegative("cg_tol", 1e-10 if cg_tol is None else cg_tol)
    for name, value in (("rtol", rtol), ("damping", damping), ("rel_damping", rel_damping)):
        check_nonnegative(name, value)
    rel = concrete_scalar("rel_damping", rel_damping)
    if fisher == "cg" and rel is not None and rel != 0:
        raise ValueError("rel_damping needs the largest Fisher eigenvalue, which CG does not "
                         "compute: use fisher='dense' or an absolute damping with fisher='cg'")

    def init_fn(params: PyTree) -> NPGState:
        del params
        return NPGState(count=jnp.zeros((), jnp.int32), step_size=jnp.zeros((), jnp.float32),
                        solver_steps=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, scores=None, fvp=None, **extra_args):
        del params, extra_args
        updates = tree_as_float("updates", updates)
        u, unravel = ravel_pytree(updates)
        P = u.shape[0]
        if P == 0:
            raise ValueError("updates must hold at least one parameter (P >= 1)")
        # Typed after the state (dtype, shard_map's varying axes), not a constant.
        solver_steps = jnp.zeros_like(state.solver_steps)
        quad = None  # x^T M x of an iterative solve (see _normalized_step)
        if fvp is not None:
            if fisher != "cg":
                raise ValueError("fvp (a matrix-free Fisher operator) needs fisher='cg'; "
                                 "pass scores for the dense Fisher")
            if scores is not None:
                raise ValueError("pass either scores or fvp, not both")
            matvec = lambda v: jax.tree.map(lambda a, b: a + damping * b, fvp(v), v)
            res = cg(matvec, updates, maxiter=cg_maxiter, tol=cg_tol)
            nat, _ = ravel_pytree(res.x)
            nat = jnp.where(tree_all_finite(nat), nat, 0.0)
            x = unravel(nat)
            quad = optax.tree.vdot(x, matvec(x))
            solver_steps = res.num_steps
        elif scores is not None:
            G = _flat_scores(scores, updates, P)
            if mesh is not None:
                nat = sharded_natural_gradient(
                    G, u, mesh=mesh, axis=axis, method="tsqr" if fisher == "dense" else "cg",
                    rtol=rtol, damping=damping, rel_damping=rel_damping, maxiter=cg_maxiter,
                    tol=cg_tol)
            elif fisher == "dense":
                nat = natural_gradient(G, u, rtol=rtol, damping=damping,
                                       rel_damping=rel_damping, method=method)
            else:
                res = cg(lambda v: fisher_vector_product(G, v, damping), u,
                         maxiter=cg_maxiter, tol=cg_tol)
                finite = tree_all_finite((G, res.x))
                nat = jnp.where(finite, res.x, 0.0)
                quad = jnp.vdot(nat, fisher_vector_product(G, nat, damping))
                solver_steps = res.num_steps
        else:
            raise ValueError("npg.update needs the per-sample scores (scores=...) "
                             "or, with fisher='cg', a Fisher-vector product (fvp=...)")
        if fisher == "cg":  # a traced rel_damping that CG cannot honour rejects the step
            nat = jnp.where(jnp.asarray(rel_damping) == 0, nat, 0.0)
        delta_t = delta(state.count) if callable(delta) else delta
        step, step_size = _normalized_step(u, nat.astype(u.dtype), delta_t, quad)
        new_updates = unravel(-step)
        new_state = NPGState(count=state.count + jnp.ones((), jnp.int32),
                             step_size=step_size.astype(jnp.float32),
                             solver_steps=solver_steps.astype(jnp.int32))
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
