"""The two scalar rules of a Hessian-free step: damping update and line search.

`damping_update` is the Levenberg-Marquardt rule on the reduction ratio
`rho = (L(theta + d) - L(theta)) / (q(d) - q(0))` (Martens 2010, section
4.1); `backtrack_line_search` picks the CG iterate to use and its step
length (section 4.6). Both are pure functions of scalars and of the loss.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.optim.hf_config import DampingConfig, LineSearchConfig
from jaxctl.util.checks import PyTree


def damping_update(damping: jax.Array, rho: jax.Array,
                   config: DampingConfig = DampingConfig()) -> jax.Array:
    """Levenberg-Marquardt rule: `lambda * increase` if `rho < low` or `rho` is
    not finite, `lambda * decrease` if `rho > high`, clamped to `bounds`.

    Args:
      damping: scalar `lambda`.
      rho: scalar reduction ratio `(L(theta + d) - L(theta)) / (q(d) - q(0))`.
      config: a `DampingConfig` (`increase`, `decrease`, `low`, `high`, `bounds`).

    Returns:
      The new damping, same dtype as `damping`.

    Example:
      >>> float(damping_update(jnp.float32(1.0), jnp.float32(0.1)))
      1.5

    References:
      Martens (2010), section 4.1; Nocedal & Wright (2006), "Numerical
      Optimization", trust-region radius update.
    """
    good = jnp.isfinite(rho)
    factor = jnp.where(~good | (rho < config.low), config.increase,
                       jnp.where(rho > config.high, config.decrease, 1.0))
    return jnp.clip(damping * factor, *config.bounds).astype(jnp.result_type(damping))


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


_BACKTRACK, _ARMIJO, _DONE = 0, 1, 2


class _SearchCarry(NamedTuple):
    phase: jax.Array        # _BACKTRACK, _ARMIJO or _DONE
    index: jax.Array        # the iterate backtracking stands on
    best: jax.Array         # objective there
    rate: jax.Array         # the Armijo step length tried last
    value: jax.Array        # objective at rate * iterate
    shrinks: jax.Array
    evaluations: jax.Array


def backtrack_line_search(objective: Callable[[PyTree], jax.Array], iterates: PyTree,
                          num_iterates: jax.Array, value0: jax.Array, slopes: jax.Array,
                          config: LineSearchConfig = LineSearchConfig()) -> SearchResult:
    """CG backtracking (Martens 2010, section 4.6), then an Armijo line search.

    Backtracking: starting from the last stored iterate `d_{n-1}`, move to
    the previous one while the objective strictly decreases (or while it has
    been non-finite so far); the best is `d_j`. Line search: accept the first
    `a` in `1, shrink, shrink^2, ...` with `objective(a d_j) <= value0 + c a
    min(slope_j, 0)` (Armijo), at most `max_steps` shrinks, else `a = 0`; no
    shrinking at all when `c |slope_j| <= 4 eps |value0|` (the Armijo margin is
    below the float resolution of the loss, e.g. once training has converged).
    Non-finite objective values count as `+inf` and never satisfy the
    condition. Both phases run in ONE `lax.while_loop` with one call site of
    `objective`, so the model is compiled once for both.

    Args:
      objective: `d -> L(theta + d)`, scalar.
      iterates: pytree with a leading axis of stored iterates
        (`MartensCGResult.iterates`).
      num_iterates: int32 scalar, filled leading slots (>= 1).
      value0: `L(theta)`.
      slopes: `(K,)`, `g^T d_i` for every slot.
      config: a `LineSearchConfig` (Armijo `c`, `shrink`, `max_steps`).

    Returns:
      A `SearchResult(index, value, rate, new_value, evaluations)`.

    Example:
      >>> its = jnp.array([[0.5], [1.0], [2.0]])
      >>> r = backtrack_line_search(lambda d: (d[0] - 1.0) ** 2, its, jnp.int32(3),
      ...                           jnp.float32(1.0), -2.0 * its[:, 0])
      >>> int(r.index), float(r.rate)
      (1, 1.0)
    """
    c, shrink, max_steps = config.c, config.shrink, config.max_steps
    dtype = jnp.result_type(value0)
    # Every carry starts from the inputs (dtype and varying axes follow them).
    one = jnp.ones_like(value0, dtype)

    def evaluate(j, a):
        v = objective(jax.tree.map(lambda leaf: (a * leaf[j]).astype(leaf.dtype), iterates))
        return jnp.where(jnp.isfinite(v), v, jnp.inf).astype(dtype)

    def armijo_ok(j, a, v):
        return v <= value0 + a * c * jnp.minimum(slopes[j], 0.0)

    def phase_after_backtrack(j, v):
        # Below the loss's float resolution Armijo cannot tell a decrease from
        # rounding: shrinking further would only burn model evaluations.
        resolvable = c * jnp.abs(slopes[j]) > 4 * jnp.finfo(dtype).eps * jnp.abs(value0)
        return jnp.where(armijo_ok(j, one, v) | (max_steps == 0) | ~resolvable, _DONE, _ARMIJO)

    last = jnp.maximum(num_iterates - 1, 0).astype(jnp.int32)
    v_last = evaluate(last, one)
    phase0 = jnp.where(last > 0, _BACKTRACK, phase_after_backtrack(last, v_last))
    init = _SearchCarry(phase0.astype(jnp.int32), last, v_last, one, v_last,
                        jnp.zeros_like(last), jnp.ones_like(last))

    def body(s: _SearchCarry) -> _SearchCarry:
        backtracking = s.phase == _BACKTRACK
        j_eval = jnp.where(backtracking, s.index - 1, s.index)
        a_eval = jnp.where(backtracking, one, s.rate * shrink)
        v = evaluate(j_eval, a_eval)
        # Backtracking; while nothing finite has been seen, keep walking back.
        better = (v < s.best) | jnp.isinf(s.best)
        bt_j = jnp.where(better, j_eval, s.index)
        bt_v = jnp.where(better, v, s.best)
        bt_phase = jnp.where(~better | (bt_j == 0), phase_after_backtrack(bt_j, bt_v), _BACKTRACK)
        # Armijo search.
        shrinks = s.shrinks + 1
        ls_phase = jnp.where(armijo_ok(s.index, a_eval, v) | (shrinks >= max_steps), _DONE, _ARMIJO)
        return _SearchCarry(jnp.where(backtracking, bt_phase, ls_phase).astype(jnp.int32),
                            jnp.where(backtracking, bt_j, s.index),
                            jnp.where(backtracking, bt_v, s.best),
                            jnp.where(backtracking, one, a_eval),
                            jnp.where(backtracking, bt_v, v),
                            jnp.where(backtracking, s.shrinks, shrinks),
                            s.evaluations + 1)

    out = lax.while_loop(lambda s: s.phase < _DONE, body, init)
    success = armijo_ok(out.index, out.rate, out.value)
    return SearchResult(index=out.index, value=out.best,
                        rate=jnp.where(success, out.rate, 0.0).astype(dtype),
                        new_value=jnp.where(success, out.value, value0),
                        evaluations=out.evaluations)
