"""The 2-link arm reaching task behind gymnax's functional environment interface.

`ArmReach` subclasses `gymnax.environments.environment.Environment`, so it
plugs into any gymnax tooling (`reset(key, params) -> (obs, state)`,
`step(key, state, action, params)`, auto-reset at the time limit, spaces).
gymnax is an optional dependency (`pip install jaxctl[examples]`); only this
module imports it, `jaxctl.envs.arm` and `jaxctl.envs.reach_task` do not.

The interface of the installed gymnax (>= 1.0) returns
`(obs, state, reward, terminated, truncated, info)` from `step`; older gymnax
returned `(obs, state, reward, done, info)`. An episode is one reach of
`max_steps_in_episode` steps (DeWolf 2016: 40) from his start posture to a
target drawn uniformly from the target set; the episode ends by truncation
(`terminated` is always False), and the return is minus the task loss:

    reward_t = -alpha ||u_t||^2 / 2 - w_t ||x* - x_{t+1}||^2 / 2,
    w_t = 1 at the last step, `every_step_weight` before it.

Transitions are differentiable (`env.with_transition_gradients()` keeps
gradients through `step`), though training with `jaxctl.envs.closed_loop.rollout`
is the direct route.

References:
  I. Sutskever (2013), "Training recurrent neural networks", PhD thesis, ch. 6.
  T. DeWolf (2016), "Deep learning for control using augmented Hessian-free
  optimization", studywolf blog (the task's constants).
  R. T. Lange (2022), gymnax: a JAX-based reinforcement learning environment library.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

import jaxctl.envs.arm as _arm
import jaxctl.envs.closed_loop as _loop
import jaxctl.envs.reach_task as _task


@struct.dataclass
class ArmEnvState(environment.EnvState):
    """Arm state, the episode's target and the step counter.

    Fields: `q (2,)`, `dq (2,)`, `target_state (4,)` = `[q*, 0, 0]`,
    `target_xy (2,)` (m), `time` (int).
    """

    q: jax.Array
    dq: jax.Array
    target_state: jax.Array
    target_xy: jax.Array
    time: int


@struct.dataclass
class ArmEnvParams(environment.EnvParams):
    """Task constants (all may be traced; none selects a code path).

    Fields:
      dt: integration step (s), DeWolf (2016): 0.01.
      alpha: torque-penalty gain, DeWolf (2016): `10e-3 * dt`.
      every_step_weight: weight of the state error before the last step
        (0: the final-state loss of DeWolf 2016; 1: distance at every step).
      max_torque: half-width of the action space used by `action_space().sample`;
        actions are NOT clipped (the arm of DeWolf 2016 has no torque limit).
      max_steps_in_episode: steps per reach, DeWolf (2016): 40.
    """

    dt: float = _arm.DT
    alpha: float = _task.ALPHA
    every_step_weight: float = 0.0
    max_torque: float = 5.0
    max_steps_in_episode: int = _task.T_DEWOLF


class ArmReach(environment.Environment[ArmEnvState, ArmEnvParams]):
    """Centre-out reaching with the 2-link arm of DeWolf (2016) as a gymnax environment.

    Observation: `[target state, plant state]`, shape `(8,)` (the network
    input of DeWolf 2016). Action: torques `(2,)` (N m).

    Args:
      targets: a `jaxctl.envs.reach_task.TargetSet` (default: the 64 training targets).
      params: arm constants.

    Example:
      >>> env = ArmReach()
      >>> obs, state = env.reset(jax.random.PRNGKey(0), env.default_params)
      >>> obs, state, reward, terminated, truncated, info = env.step(
      ...     jax.random.PRNGKey(1), state, jnp.zeros(2), env.default_params)
    """

    _supports_transition_gradients = True

    def __init__(self, targets: _task.TargetSet | None = None,
                 params: _arm.ArmParams = _arm.ARM2):
        super().__init__()
        self.targets = _task.circle_targets(params=params) if targets is None else targets
        if self.targets.state.ndim != 2 or self.targets.state.shape[1] != 4:
            raise ValueError(f"targets.state must have shape (k, 4), got {self.targets.state.shape}")
        self.arm_params = params
        self.obs_shape = (8,)

    @property
    def default_params(self) -> ArmEnvParams:
        return ArmEnvParams()

    def reset_env(self, key: jax.Array, params: ArmEnvParams) -> tuple[jax.Array, ArmEnvState]:
        idx = jax.random.randint(key, (), 0, self.targets.state.shape[0])
        start = _task.start_state(dtype=self.targets.state.dtype)
        state = ArmEnvState(q=start[:2], dq=start[2:], target_state=self.targets.state[idx],
                            target_xy=self.targets.xy[idx], time=jnp.zeros((), jnp.int32))
        return self.get_obs(state), state

    def step_env(self, key: jax.Array, state: ArmEnvState, action: Any,
                 params: ArmEnvParams) -> tuple[jax.Array, ArmEnvState, jax.Array, jax.Array, dict]:
        del key
        u = jnp.asarray(action, state.q.dtype)
        if u.shape != (2,):
            raise ValueError(f"action must have shape (2,) = [u0, u1] torques, got {u.shape}")
        x = jnp.concatenate([state.q, state.dq])
        x_next = _arm.step(x, u, params.dt, params=self.arm_params)
        time = state.time + 1
        last = time >= params.max_steps_in_episode
        w = jnp.where(last, 1.0, params.every_step_weight)
        err = x_next - state.target_state
        reward = -0.5 * params.alpha * jnp.sum(u * u) - 0.5 * w * jnp.sum(err * err)
        new_state = ArmEnvState(q=x_next[:2], dq=x_next[2:], target_state=state.target_state,
                                target_xy=state.target_xy, time=time)
        obs, new_state = self._apply_transition_gradient_policy(self.get_obs(new_state), new_state)
        info = {"hand_xy": _arm.hand_position(x_next[:2], self.arm_params)}
        return obs, new_state, reward, jnp.zeros((), bool), info

    def get_obs(self, state: ArmEnvState, params=None, key=None) -> jax.Array:
        return _loop.network_input(state.target_state, jnp.concatenate([state.q, state.dq]))

    def is_terminated(self, state: ArmEnvState, params: ArmEnvParams) -> jax.Array:
        return jnp.zeros((), bool)

    @property
    def name(self) -> str:
        return "ArmReach-v0"

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params: ArmEnvParams | None = None) -> spaces.Box:
        params = self.default_params if params is None else params
        return spaces.Box(-params.max_torque, params.max_torque, (2,), jnp.float32)

    def observation_space(self, params: ArmEnvParams | None = None) -> spaces.Box:
        # States are squashed to (-2 pi - 1, 2 pi + 1) by the plant.
        bound = _arm.SQUASH_BOUND + 1.0
        return spaces.Box(-bound, bound, self.obs_shape, jnp.float32)

    def state_space(self, params: ArmEnvParams | None = None) -> spaces.Dict:
        bound = _arm.SQUASH_BOUND + 1.0
        return spaces.Dict({
            "q": spaces.Box(-bound, bound, (2,), jnp.float32),
            "dq": spaces.Box(-bound, bound, (2,), jnp.float32),
            "target_state": spaces.Box(-bound, bound, (4,), jnp.float32),
            "target_xy": spaces.Box(-1.0, 1.0, (2,), jnp.float32),
            "time": spaces.Discrete(self.default_params.max_steps_in_episode + 1),
        })
