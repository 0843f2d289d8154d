"""Open-loop model rollouts: `x_{t+1} = dynamics(x_t, u_t)` in one `lax.scan`.

Notation: `n` state size, `m` action size, `H` horizon. A model is a pure
callable `dynamics(state (n,), action (m,)) -> next_state (n,)`, a task a
pure callable `reward(state (n,), action (m,), next_state (n,)) -> ()`.

Scan carries are typed after the inputs (`carry_zero`): their dtype follows
the inputs (float64 under `jax_enable_x64`) and so do their varying manual
axes inside `jax.shard_map` and their sharding on explicit meshes, where a
carry started from a Python constant would not match the carry the step
returns.

References:
  Nagabandi, Kahn, Fearing, Levine (2018), "Neural network dynamics for
  model-based deep reinforcement learning with model-free fine-tuning",
  ICRA, https://arxiv.org/abs/1708.02596.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxctl.util import checks

Dynamics = Callable[[jax.Array, jax.Array], jax.Array]
Reward = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def carry_zero(*refs: jax.Array, dtype=None) -> jax.Array:
    """A scalar 0 typed after every array in `refs`, for starting a scan carry.

    Its dtype is `dtype` (default: the result type of `refs`); its varying
    manual axes (`shard_map`) and sharding are those `refs` combine to, so a
    carry built from it matches the carry a step computed from `refs` returns.

    Example:
      >>> z = carry_zero(jnp.ones(3), jnp.ones((2, 2)))
      >>> z.shape, float(z)
      ((), 0.0)
    """
    if not refs:
        raise ValueError("carry_zero needs at least one reference array")
    dtype = jnp.result_type(*refs) if dtype is None else dtype
    return functools.reduce(operator.add, [jnp.sum(jnp.zeros_like(r, dtype)) for r in refs])


def _check_actions(actions: jax.Array) -> jax.Array:
    actions = jnp.asarray(actions)
    if actions.ndim != 2 or actions.shape[0] == 0:
        raise ValueError(f"actions must have shape (H, m) with H >= 1, got {actions.shape}")
    return actions


def _start(dynamics: Dynamics, state: Any, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Checked `(x_0, actions)`, `x_0` in the dtype the model returns and typed after both."""
    actions = _check_actions(actions)
    state = checks.as_float("state", state)
    # A float64 model fed float32 states returns float64: start the carry there.
    out = jax.eval_shape(dynamics, state, actions[0])
    dtype = jnp.result_type(state, getattr(out, "dtype", state.dtype))
    return state.astype(dtype) + carry_zero(state, actions, dtype=dtype), actions


def simulate(dynamics: Dynamics, state: jax.Array, actions: jax.Array) -> jax.Array:
    """Open-loop states of an action sequence under `dynamics`.

    `x_{t+1} = dynamics(x_t, u_t)` for `t = 0 .. H-1`, in one `lax.scan`.

    Args:
      dynamics: `dynamics(state (n,), action (m,)) -> (n,)`.
      state: `(n,)` start state `x_0`.
      actions: `(H, m)` action sequence, `H >= 1`.

    Returns:
      `(H + 1, n)` states `x_0 .. x_H`.

    Example:
      >>> simulate(lambda x, u: x + u, jnp.zeros(1), jnp.ones((3, 1)))[:, 0].tolist()
      [0.0, 1.0, 2.0, 3.0]
    """
    x0, actions = _start(dynamics, state, actions)

    def step(x, u):
        x_next = dynamics(x, u)
        return x_next, x_next

    _, xs = lax.scan(step, x0, actions)
    return jnp.concatenate([x0[None], xs], axis=0)


def rollout(dynamics: Dynamics, reward: Reward, state: jax.Array,
            actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Predicted states and per-step rewards of an action sequence.

    `x_{t+1} = dynamics(x_t, u_t)`, `r_t = reward(x_t, u_t, x_{t+1})`.

    Args:
      dynamics: `dynamics(state (n,), action (m,)) -> (n,)`.
      reward: `reward(state (n,), action (m,), next_state (n,)) -> ()`.
      state: `(n,)` start state.
      actions: `(H, m)` action sequence, `H >= 1`.

    Returns:
      `(states (H + 1, n), rewards (H,))`.

    Example:
      >>> xs, rs = rollout(lambda x, u: x + u, lambda x, u, y: -y @ y,
      ...                  jnp.zeros(1), jnp.ones((2, 1)))
      >>> rs.tolist()
      [-1.0, -4.0]
    """
    x0, actions = _start(dynamics, state, actions)

    def step(x, u):
        x_next = dynamics(x, u)
        return x_next, (x_next, reward(x, u, x_next))

    _, (xs, rs) = lax.scan(step, x0, actions)
    return jnp.concatenate([x0[None], xs], axis=0), rs


def shift_actions(actions: jax.Array, fill: jax.Array | float | None = None) -> jax.Array:
    """The previous plan shifted one step forward, for warm-starting the next call.

    `(u_1, ..., u_{H-1}, fill)`; `fill` defaults to repeating `u_{H-1}`.

    Args:
      actions: `(H, m)` the previous plan (its first action was executed), `H >= 1`.
      fill: `(m,)` or scalar action appended at the end (e.g. the middle of
        the action bounds); `None` repeats the last action.

    Returns:
      `(H, m)` shifted plan.

    Example:
      >>> shift_actions(jnp.arange(3.0)[:, None], 0.0)[:, 0].tolist()
      [1.0, 2.0, 0.0]
    """
    actions = _check_actions(actions)
    last = actions[-1] if fill is None else jnp.broadcast_to(
        jnp.asarray(fill, actions.dtype), actions.shape[1:])
    return jnp.concatenate([actions[1:], last[None]], axis=0)
