"""Normalized natural-gradient steps (Rajeswaran et al. 2017).

Given the policy gradient `g` and the natural direction `n = F^-1 g`, the
step `sqrt(delta / (g^T F^-1 g)) F^-1 g` makes the quadratic model of the
KL divergence, `0.5 step^T F step`, equal `delta / 2`: the step size is set
in distribution space, not in parameter space. Ascent convention: add the
step to the parameters to increase the objective.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxctl.cg import tree_vdot

PyTree = Any


def normalized_step(g: PyTree, nat_g: PyTree, delta: float | jax.Array) -> tuple[PyTree, jax.Array]:
    """Rajeswaran's normalized natural-gradient step.

    `step = sqrt(delta / (g^T F^-1 g)) F^-1 g` with `F^-1 g = nat_g`, so
    `step^T F step = delta` whenever `g` lies in the range of `F`.
    If `g^T nat_g` is not finite or not positive (zero gradient, NaN scores,
    indefinite curvature), the step is exactly zero and `step_size` is 0:
    never NaN.

    Args:
      g: gradient, an array or pytree.
      nat_g: natural gradient `F^-1 g`, same structure as `g`.
      delta: trust-region size (> 0), the target value of `step^T F step`.

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
    if isinstance(delta, (int, float)) and not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    if jax.tree.structure(g) != jax.tree.structure(nat_g) or (
        jax.tree.map(jnp.shape, g) != jax.tree.map(jnp.shape, nat_g)
    ):
        raise ValueError(
            "g and nat_g must have the same structure and shapes, got "
            f"{jax.tree.map(jnp.shape, g)} and {jax.tree.map(jnp.shape, nat_g)}"
        )
    gFg = tree_vdot(g, nat_g)
    ok = jnp.isfinite(gFg) & (gFg > 0) & jnp.isfinite(delta) & (delta > 0)
    ok = ok & jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(nat_g)]))
    step_size = jnp.where(ok, jnp.sqrt(jnp.where(ok, delta / jnp.where(ok, gFg, 1.0), 0.0)), 0.0)
    # where(), not multiplication: 0 * NaN would still be NaN.
    step = jax.tree.map(lambda n: jnp.where(ok, step_size * n, 0.0).astype(n.dtype), nat_g)
    return step, step_size.astype(gFg.dtype)
