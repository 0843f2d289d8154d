"""Compiled planners: the model and task as arguments, one state or N states per call.

`jit_planner` fixes a planner's static configuration and jits it once.
`dynamics` and `reward` are passed as pytrees (`jax.tree_util.Partial`), so
a learned model whose parameters change after retraining reuses the
compiled code. `plan.batched` plans for N states (N environments stepping
together) in one call: one `vmap` over states, keys and warm starts, the
model and the bounds shared.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

import jaxctl.control.candidates as _cand
from jaxctl.control.planners import PLANNERS, PlanResult
from jaxctl.util import checks


def jit_planner(planner: Callable[..., PlanResult] | str, *, num_samples: int, horizon: int,
                **options: Any) -> Callable[..., PlanResult]:
    """A jitted planner whose model and task are arguments, so new model parameters never recompile.

    `plan(dynamics, reward, state, key, *, action_low, action_high,
    init_actions=None)` calls `planner` under one `jax.jit` with the static
    configuration (`num_samples`, `horizon`, `options`) fixed. A
    `jax.tree_util.Partial(fn, params)` traces `params` (retrained weights
    reuse the compiled code as long as `fn` and the shapes stay the same); a
    plain function is wrapped in a `Partial` with no arguments (compiled once
    per function object). Bounds (arrays or lists) are checked here, before
    tracing: finite, `(m,)`, `low <= high`.

    `plan.batched(dynamics, reward, states (N, n), keys (N, 2), *,
    action_low, action_high, init_actions=None (or (N, H, m)))` plans for N
    states in one compiled call and returns a `PlanResult` whose fields
    have a leading N axis; row i equals `plan` on state i with key i.
    (`jax.vmap(plan)` would map the keyword-only bounds too.)

    Args:
      planner: `random_shooting`, `cem`, `mppi` or one of their names.
      num_samples: K >= 1 (static).
      horizon: H >= 1 (static).
      **options: further static keyword options of the planner
        (e.g. `num_iterations`, `num_elites`, `temperature`, `chunk_size`).

    Returns:
      `plan(dynamics, reward, state, key, *, action_low, action_high,
      init_actions=None) -> PlanResult`, with `plan.batched` and
      `plan.jitted` (the compiled single-state planner).

    Example:
      >>> plan = jit_planner("cem", num_samples=128, horizon=10)
      >>> model = jax.tree_util.Partial(lambda a, x, u: a * x + u, jnp.float32(0.9))
      >>> cost = lambda x, u, y: -y @ y
      >>> res = plan(model, cost, jnp.ones(1), jax.random.PRNGKey(0),
      ...            action_low=-jnp.ones(1), action_high=jnp.ones(1))
      >>> many = plan.batched(model, cost, jnp.ones((4, 1)), jax.random.split(jax.random.PRNGKey(0), 4),
      ...                     action_low=-jnp.ones(1), action_high=jnp.ones(1))
      >>> many.actions.shape
      (4, 10, 1)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596.
    """
    if isinstance(planner, str):
        if planner not in PLANNERS:
            raise ValueError(f"planner must be one of {sorted(PLANNERS)}, got {planner!r}")
        planner = PLANNERS[planner]
    checks.check_positive_int("num_samples", num_samples)
    checks.check_positive_int("horizon", horizon)
    configured = functools.partial(planner, num_samples=num_samples, horizon=horizon, **options)
    jitted = jax.jit(configured)

    def one(dynamics, reward, state, key, low, high, init_actions):
        return configured(dynamics, reward, state, key, action_low=low, action_high=high,
                          init_actions=init_actions)

    many = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0, None, None, 0)))

    def bounds(action_low, action_high):
        # Arrays here (a list would reach jit as a list of tracers), checked while concrete.
        action_low, action_high = jnp.asarray(action_low), jnp.asarray(action_high)
        if checks.is_concrete(action_low) and checks.is_concrete(action_high):
            _cand.check_bounds(action_low, action_high)
        return action_low, action_high

    def plan(dynamics, reward, state, key, *, action_low, action_high, init_actions=None):
        low, high = bounds(action_low, action_high)
        return jitted(_as_pytree(dynamics), _as_pytree(reward), state, key,
                      action_low=low, action_high=high, init_actions=init_actions)

    def batched(dynamics, reward, states, keys, *, action_low, action_high, init_actions=None):
        low, high = bounds(action_low, action_high)
        states, keys = jnp.asarray(states), jnp.asarray(keys)
        if states.ndim < 2 or states.shape[0] < 1:
            raise ValueError(f"states must be (N, n) with N >= 1, got shape {states.shape}")
        if keys.shape[:1] != states.shape[:1]:
            raise ValueError(f"keys must have one key per state ({states.shape[0]}), "
                             f"got shape {keys.shape}")
        return many(_as_pytree(dynamics), _as_pytree(reward), states, keys, low, high, init_actions)

    plan.jitted = jitted  # exposed for compile-count checks and AOT lowering
    plan.batched = batched
    return plan


def _as_pytree(fn: Callable) -> jax.tree_util.Partial:
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)
