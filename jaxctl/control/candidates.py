"""Candidate action sequences for the planners: configuration checks and scores.

Notation as in `jaxctl.control.planners`: `K` candidates of `H` actions of
size `m` from one state of size `n`. `validate` checks static configuration
and shapes at trace time (a `ValueError` names the argument); `scores` gives
each candidate its predicted return, `-inf` when the rollout, a reward or
the sum is not finite.

References:
  Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

import jaxctl.control.simulate as _sim
import jaxctl.util.mesh as _mesh
from jaxctl.util import checks


# ---------------------------------------------------------------------------
# Validation (runs at trace time: static shapes and configuration only).


def check_bounds(action_low: Any, action_high: Any) -> None:
    """Concrete bounds: finite, `(m,)` with `m >= 1`, and `low <= high` elementwise."""
    lo, hi = np.asarray(action_low), np.asarray(action_high)
    if lo.ndim != 1 or hi.shape != lo.shape or lo.shape[0] == 0:
        raise ValueError(f"action_low and action_high must both have shape (m,) with m >= 1, "
                         f"got {lo.shape} and {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"action_low and action_high must be finite, got low={lo.tolist()}, "
                         f"high={hi.tolist()}")
    if np.any(lo > hi):
        bad = np.nonzero(lo > hi)[0].tolist()
        raise ValueError(f"action_low must be <= action_high elementwise; violated at "
                         f"action indices {bad}: low={lo[bad].tolist()}, high={hi[bad].tolist()}")


def validate(dynamics, reward, state, num_samples, horizon, action_low, action_high,
              init_actions, chunk_size):
    num_samples = checks.check_positive_int("num_samples", num_samples)
    horizon = checks.check_positive_int("horizon", horizon)
    if chunk_size is not None:
        chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    state = checks.as_float("state", state)
    if state.ndim != 1 or state.shape[0] == 0:
        raise ValueError(f"state must have shape (n,) with n >= 1 (one unbatched state; vmap "
                         f"for batches), got {state.shape}")
    low, high = jnp.asarray(action_low, state.dtype), jnp.asarray(action_high, state.dtype)
    if checks.is_concrete(low) and checks.is_concrete(high):
        check_bounds(low, high)
    elif low.ndim != 1 or high.shape != low.shape or low.shape[0] == 0:
        raise ValueError(f"action_low and action_high must both have shape (m,) with m >= 1, "
                         f"got {low.shape} and {high.shape}")
    m = low.shape[0]
    if init_actions is not None:
        init_actions = checks.as_float("init_actions", init_actions).astype(state.dtype)
        if init_actions.shape != (horizon, m):
            raise ValueError(f"init_actions must have shape (horizon, m) = {(horizon, m)}, "
                             f"got {init_actions.shape}")
        # A non-finite warm start (a NaN plan from an earlier failure) would make every
        # candidate NaN: such entries restart from the middle of the bounds.
        init_actions = jnp.where(jnp.isfinite(init_actions),
                                 jnp.clip(init_actions, low, high), (low + high) / 2)
    action_spec = jax.ShapeDtypeStruct((m,), state.dtype)
    try:
        next_spec = jax.eval_shape(dynamics, state, action_spec)
    except (TypeError, ValueError) as err:
        raise ValueError(f"dynamics(state {state.shape}, action {(m,)}) failed: {err}") from err
    if getattr(next_spec, "shape", None) != state.shape:
        raise ValueError(f"dynamics(state, action) must return the next state with the shape of "
                         f"state {state.shape}, got {getattr(next_spec, 'shape', next_spec)}; "
                         f"is the state size the one the model was built for?")
    r_spec = jax.eval_shape(reward, state, action_spec, state)
    if getattr(r_spec, "shape", None) != ():
        raise ValueError(f"reward(state, action, next_state) must return a scalar, got shape "
                         f"{getattr(r_spec, 'shape', r_spec)}")
    # A float64 model or reward fed float32 states computes in float64: so do the carries.
    dtype = jnp.result_type(state, next_spec.dtype, r_spec.dtype)
    state, low, high = state.astype(dtype), low.astype(dtype), high.astype(dtype)
    if init_actions is not None:
        init_actions = init_actions.astype(dtype)
    return state, low, high, init_actions, num_samples, horizon, chunk_size


# ---------------------------------------------------------------------------
# Scoring candidates.


def score_one(dynamics, reward, state, actions):
    """Return of one candidate, `-inf` unless every predicted state, reward and the sum is finite.

    The sum can overflow to `+-inf` although every reward is finite: it then
    scores `-inf` too, so an overflowing candidate is never picked.
    """
    def step(carry, u):
        x, total, ok = carry
        x_next = dynamics(x, u)
        r = reward(x, u, x_next)
        ok = ok & jnp.all(jnp.isfinite(x_next)) & jnp.isfinite(r)
        return (x_next, total + r, ok), None

    # Carries typed after the inputs (dtype, shard_map axes, sharding), not Python constants.
    zero = _sim.carry_zero(state, actions, dtype=state.dtype)
    init = (state + zero, zero, jnp.isfinite(zero))
    (_, total, ok), _ = lax.scan(step, init, actions)
    return jnp.where(ok & jnp.isfinite(total), total, -jnp.inf)


def _local_scores(dynamics, reward, state, candidates, chunk_size):
    score = functools.partial(score_one, dynamics, reward, state)
    if chunk_size is None or chunk_size >= candidates.shape[0]:
        return jax.vmap(score)(candidates)
    return lax.map(score, candidates, batch_size=chunk_size)


def scores(dynamics, reward, state, candidates, chunk_size, mesh=None, axis="data"):
    """`(K,)` returns of `(K, H, m)` candidates; non-finite rollouts score `-inf`.

    With a `mesh`, the candidates are split over its axis `axis` and every
    device scores its own K / N of them (`chunk_size` then bounds each
    device's chunk); the K returns are then replicated (an all-gather of K
    scalars), so the selection that follows is the same on every device.
    """
    if mesh is None:
        return _local_scores(dynamics, reward, state, candidates, chunk_size)
    local = jax.shard_map(
        lambda x, c: _local_scores(dynamics, reward, x, c, chunk_size), mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis)), out_specs=PartitionSpec(axis))
    return _mesh.replicate(local(_mesh.replicate(state, mesh),
                                 _mesh.shard_along(candidates, mesh, axis)), mesh)


def take_rows(candidates, idx, mesh=None, axis="data"):
    """`candidates[idx]` for replicated indices `idx`; with a `mesh`, each device
    contributes the rows it holds and a `psum` assembles them (E H m floats,
    never the K candidates)."""
    if mesh is None:
        return candidates[idx]
    k_local = candidates.shape[0] // _mesh.axis_size(mesh, axis)

    def local(idx, block):
        j = idx - lax.axis_index(axis) * k_local
        mine = (j >= 0) & (j < k_local)
        rows = block[jnp.clip(j, 0, k_local - 1)]
        mask = jnp.reshape(mine, mine.shape + (1,) * (rows.ndim - mine.ndim))
        return lax.psum(jnp.where(mask, rows, jnp.zeros_like(rows)), axis)

    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(axis)),
                         out_specs=PartitionSpec())(
        _mesh.replicate(idx, mesh), _mesh.shard_along(candidates, mesh, axis))


def weighted_sum(w, candidates, mesh=None, axis="data"):
    """`sum_k w_k candidates_k` (`(H, m)`); with a `mesh`, local sums plus a `psum`."""
    def local(w, c):
        return jnp.einsum("k,khm->hm", w, c)

    if mesh is None:
        return local(w, candidates)
    return jax.shard_map(lambda w, c: lax.psum(local(w, c), axis), mesh=mesh,
                         in_specs=PartitionSpec(axis), out_specs=PartitionSpec())(
        *_mesh.shard_along((w, candidates), mesh, axis))


def count_finite(scores):
    return jnp.sum(jnp.isfinite(scores)).astype(jnp.int32)


def finite_std(scores):
    """Standard deviation of the finite scores; 1 when it is 0 or undefined (fewer than 2)."""
    ok = jnp.isfinite(scores)
    n = jnp.sum(ok)
    x = jnp.where(ok, scores, 0.0)
    mean = jnp.sum(x) / jnp.maximum(n, 1)
    var = jnp.sum(jnp.where(ok, (x - mean) ** 2, 0.0)) / jnp.maximum(n, 1)
    std = jnp.sqrt(var)
    return jnp.where((n > 1) & (std > 0) & jnp.isfinite(std), std, jnp.ones_like(std))
