"""Trust-region policy optimisation: the natural step with a KL-checked line search.

Given the surrogate gradient `g` and the natural direction `n = F^-1 g`,
the full step `s = sqrt(2 delta / g^T n) n` puts the quadratic model of the
KL divergence, `0.5 s^T F s`, at `delta` (Schulman et al. 2015). The line
search tries `f s` for `f = 1, beta, beta^2, ...` and accepts the largest `f`
at which

- the sampled KL between the old and the new policy is at most `delta`,
- the surrogate improves, by at least `accept_ratio` times the first-order
  prediction `f g^T s`,
- both are finite.

If no fraction passes, the parameters come back exactly as given (not a
partial step). Every trial point is evaluated in one `vmap`ped pass, so
the search costs one batched evaluation on an accelerator, not a host loop.

References:
  J. Schulman, S. Levine, P. Moritz, M. Jordan, P. Abbeel (2015), "Trust
  region policy optimization", ICML (appendix C: the line search).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxctl.util.checks import (
    PyTree,
    check_finite_positive,
    check_positive_int,
    check_same_structure,
    check_scalar,
    tree_as_float,
    tree_where,
)


class TRPOInfo(NamedTuple):
    """What the line search did.

    Attributes:
      accepted: whether a step was taken.
      step_fraction: the accepted `f` (0 when rejected).
      kl: the sampled KL at the accepted point (at the smallest trial when rejected).
      improvement: surrogate gain at the accepted point (at the smallest trial when rejected).
      expected_improvement: the first-order prediction `g^T s` of the full step.
    """
    accepted: jax.Array
    step_fraction: jax.Array
    kl: jax.Array
    improvement: jax.Array
    expected_improvement: jax.Array


def trpo_step(surrogate: Callable[[PyTree], jax.Array], kl: Callable[[PyTree], jax.Array],
              params: PyTree, g: PyTree, nat_g: PyTree, delta: Any, *,
              backtrack: float = 0.5, max_backtracks: int = 10,
              accept_ratio: float = 0.1) -> tuple[PyTree, TRPOInfo]:
    """One TRPO update of `params` (ascent on `surrogate`).

    Args:
      surrogate: `params -> scalar` to maximise, e.g. the importance-weighted
        advantage `mean(pi(a|s) / pi_old(a|s) A)` on the batch.
      kl: `params -> scalar`, the mean sampled `KL(pi_old || pi)` on the batch.
      params: the current (old) parameters.
      g: gradient of `surrogate` at `params`.
      nat_g: the natural direction `F^-1 g` (e.g. `jaxctl.natural_gradient`
        or CG on `jaxctl.fisher_operator`).
      delta: the KL bound, > 0.
      backtrack: the ratio `beta` between trial fractions, in (0, 1).
      max_backtracks: number of trial fractions `1, beta, ..., beta^(n-1)`.
      accept_ratio: the share of the first-order gain a trial must realise, >= 0.

    Returns:
      `(new_params, TRPOInfo)`; `new_params` is `params` itself when no
      trial passes, or when `g^T F^-1 g` is not finite and positive.
    """
    check_finite_positive("delta", delta)
    check_scalar("backtrack", backtrack, low=0.0, high=1.0, low_open=True, high_open=True)
    n = check_positive_int("max_backtracks", max_backtracks)
    check_scalar("accept_ratio", accept_ratio, low=0.0, high=float("inf"), high_open=True)
    check_same_structure("g", g, params, "params")
    check_same_structure("nat_g", nat_g, params, "params")
    g, nat_g = tree_as_float("g", g), tree_as_float("nat_g", nat_g)

    gn = optax.tree.vdot(g, nat_g)
    usable = jnp.isfinite(gn) & (gn > 0)
    scale = jnp.where(usable, jnp.sqrt(2 * delta / jnp.where(usable, gn, 1.0)), 0.0)
    expected = scale * gn
    base = surrogate(params)
    fractions = backtrack ** jnp.arange(n, dtype=jnp.result_type(gn))

    def trial(f):
        candidate = jax.tree.map(lambda p, d: p + (f * scale * d).astype(p.dtype), params, nat_g)
        return surrogate(candidate) - base, kl(candidate)

    gains, kls = jax.vmap(trial)(fractions)
    ok = (usable & jnp.isfinite(gains) & jnp.isfinite(kls) & (kls <= delta) & (gains > 0)
          & (gains >= accept_ratio * fractions * expected))
    first = jnp.argmax(ok)  # the largest passing fraction (0 when none passes)
    accepted = jnp.any(ok)
    pick = jnp.where(accepted, first, n - 1)
    f = jnp.where(accepted, fractions[first], 0.0)
    stepped = jax.tree.map(lambda p, d: p + (f * scale * d).astype(p.dtype), params, nat_g)
    new_params = tree_where(accepted, stepped, params)
    return new_params, TRPOInfo(accepted, f, kls[pick], gains[pick], expected)
