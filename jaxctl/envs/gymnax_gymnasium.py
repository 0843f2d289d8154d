"""A gymnax environment object behind gymnasium's stateful interface.

`GymnaxAsGymnasium` gives a gymnax environment the gymnasium calls
(`reset(seed=)`, `step(action)`, the two spaces), so code written for
gymnasium, such as the aggregation loop (`jaxctl.experiments.aggregation`),
runs it unchanged. It duck-types gymnax (no import of it here).

References:
  Lange (2022), gymnax, https://github.com/RobertTLange/gymnax;
  Towers et al. (2024), Gymnasium, https://arxiv.org/abs/2407.17032.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class _Box(NamedTuple):
    """The part of `gymnasium.spaces.Box` that `GymnaxAsGymnasium` exposes."""

    low: np.ndarray
    high: np.ndarray
    shape: tuple[int, ...]

    def seed(self, seed: int | None = None) -> None:
        """No-op: the adapter samples nothing itself (gymnasium's spaces seed their sampler)."""


class GymnaxAsGymnasium:
    """A gymnax environment object behind gymnasium's stateful interface.

    `reset(seed=s)` draws the initial state with `PRNGKey(s)`; `step(a)`
    applies `env.step_env` (no auto-reset) with a key split from it and
    returns `(obs, reward, terminated, truncated, {})`, where `truncated`
    is gymnax's time limit (`env.is_truncated`). Both run jitted; the
    environment state lives in the adapter, so wrapping the same `env` N
    times gives N independent environments. Only continuous (Box) action
    spaces are supported.

    Args:
      env: a gymnax environment (e.g. `gymnax.make("Pendulum-v1")[0]`).
      env_params: its parameters (None: `env.default_params`).

    Example:
      >>> import gymnax
      >>> env = GymnaxAsGymnasium(gymnax.make("Pendulum-v1")[0])
      >>> obs, _ = env.reset(seed=0)
      >>> obs.shape, env.action_space.high
      ((3,), array([2.], dtype=float32))
      >>> o, r, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
      >>> o.shape, type(r), terminated, truncated
      ((3,), <class 'float'>, False, False)

    References:
      Lange (2022), gymnax, https://github.com/RobertTLange/gymnax;
      Towers et al. (2024), Gymnasium, https://arxiv.org/abs/2407.17032.
    """

    def __init__(self, env: Any, env_params: Any = None):
        if not (hasattr(env, "step_env") and hasattr(env, "reset_env")):
            raise TypeError(f"env must be a gymnax environment (with step_env and reset_env), "
                            f"got {type(env).__name__}")
        self.env = env
        self.params = env.default_params if env_params is None else env_params
        space = env.action_space(self.params)
        if not (hasattr(space, "low") and hasattr(space, "high")):
            raise ValueError(f"env must have a continuous (Box) action space, got "
                             f"{type(space).__name__}")
        shape = tuple(int(d) for d in space.shape)
        bound = lambda x: np.broadcast_to(np.asarray(x, np.float32), shape).copy()
        self.action_space = _Box(bound(space.low), bound(space.high), shape)
        obs_shape = tuple(int(d) for d in env.observation_space(self.params).shape)
        self.observation_space = _Box(np.full(obs_shape, -np.inf, np.float32),
                                      np.full(obs_shape, np.inf, np.float32), obs_shape)
        self._reset = jax.jit(env.reset_env)
        self._step = jax.jit(self._transition)
        self._key = self._state = None

    def _transition(self, key, state, action, params):
        obs, state, reward, terminated, _ = self.env.step_env(key, state, action, params)
        truncated = self.env.is_truncated(state, params) if hasattr(self.env, "is_truncated") \
            else jnp.zeros((), bool)
        return obs, state, jnp.reshape(reward, ()), terminated, truncated

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        """Draws a fresh state (`seed` None: 0) and returns `(observation, {})`."""
        self._key, k = jax.random.split(jax.random.PRNGKey(0 if seed is None else int(seed)))
        obs, self._state = self._reset(k, self.params)
        return np.asarray(obs, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One `step_env` transition from the current state."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape}, got "
                             f"{action.shape}")
        self._key, k = jax.random.split(self._key)
        obs, self._state, reward, terminated, truncated = self._step(k, self._state, action,
                                                                     self.params)
        return np.asarray(obs, np.float32), float(reward), bool(terminated), bool(truncated), {}
