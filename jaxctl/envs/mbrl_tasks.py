"""Task rewards and environment adapters for model-based RL with MPC.

Rewards have the planner signature `reward(state (n,), action (m,),
next_state (n,)) -> ()` and are pure JAX, so the planners can vmap and jit
them. Two environment families:

* gymnax (`Pendulum-v1`): all JAX; `gymnax_episode` runs a closed loop in
  one `lax.scan` (the planner inside), and vmaps over episodes.
* gymnasium MuJoCo (`HalfCheetah-v5`, `Swimmer-v5`, the real MuJoCo engine):
  the environment steps in Python, the policy (a jitted planner) is called
  once per step by `gymnasium_episode`.

`jaxctl.envs.gymnax_gymnasium.GymnaxAsGymnasium` puts a gymnax environment
object behind gymnasium's calls, for code written for gymnasium.

References:
  Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596 (forward and
  trajectory-following rewards, Sec. V).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxctl.util import checks


class ForwardTask(NamedTuple):
    """Where a gymnasium MuJoCo observation keeps the forward velocity, and the control cost.

    Attributes:
      velocity_index: index of the x-velocity of the root in the default
        observation (positions excluded).
      ctrl_cost_weight: the environment's `ctrl_cost_weight` (reward
        `v_x - w ||a||^2`, the environment's own forward reward minus the
        healthy/contact terms these two tasks do not have).
    """

    velocity_index: int
    ctrl_cost_weight: float


# gymnasium v5 defaults: HalfCheetah obs = qpos[1:] (8) + qvel (9), qvel[0] = root x
# velocity; Swimmer obs = qpos[2:] (3) + qvel (5), qvel[0] = x velocity.
FORWARD_TASKS: dict[str, ForwardTask] = {
    "HalfCheetah-v5": ForwardTask(8, 0.1),
    "Swimmer-v5": ForwardTask(3, 1e-4),
}


def forward_velocity_reward(velocity_index: int, ctrl_cost_weight: float = 0.0) -> Callable:
    """The "x_vel" task (Nagabandi et al. 2018): forward velocity after the step minus control cost.

    `r(s, a, s') = s'[i] - w ||a||^2`, with `i` the x-velocity entry of the
    observation (`FORWARD_TASKS` lists it for the gymnasium tasks).

    Args:
      velocity_index: `i`, static.
      ctrl_cost_weight: `w >= 0`.

    Returns:
      `reward(state (n,), action (m,), next_state (n,)) -> ()`.

    Example:
      >>> r = forward_velocity_reward(1, 0.5)
      >>> float(r(jnp.zeros(2), jnp.ones(2), jnp.array([0.0, 3.0])))
      2.0

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. V.
    """
    velocity_index = int(velocity_index)
    if ctrl_cost_weight < 0:
        raise ValueError(f"ctrl_cost_weight must be >= 0, got {ctrl_cost_weight}")

    def reward(state, action, next_state):
        if not -next_state.shape[0] <= velocity_index < next_state.shape[0]:
            raise ValueError(f"velocity_index {velocity_index} is out of range for a state of "
                             f"shape {next_state.shape}")
        return next_state[velocity_index] - ctrl_cost_weight * jnp.sum(action ** 2)

    return reward


def upright_reward(reward: Callable, pitch_index: int, weight: float,
                   limit: float = math.pi / 2) -> Callable:
    """`reward` minus a penalty for pitching past `limit`: `r(s, a, s') - w max(0, |s'[p]| - limit)`.

    A deviation from Nagabandi et al. (2018) for a planner that exploits a
    flip: HalfCheetah earns forward velocity on its back too, and the
    penalty (per radian beyond `limit`, in reward units) makes the
    upside-down gait cost more than it earns. The environment's reward is
    unchanged; only the planner sees the penalty.

    Args:
      reward: a planner reward `reward(s, a, s') -> ()`.
      pitch_index: `p`, the observation entry of the torso pitch (radians), static.
      weight: `w >= 0`.
      limit: the pitch, in radians, where the penalty starts (> 0).

    Returns:
      The penalised reward, same signature.

    Example:
      >>> r = upright_reward(lambda s, a, s2: s2[0], 1, 10.0)
      >>> round(float(r(jnp.zeros(2), jnp.zeros(1), jnp.array([3.0, -2.0]))), 4)  # 3 - 10 (2 - pi/2)
      -1.292
    """
    pitch_index = int(pitch_index)
    checks.check_scalar("weight", weight, low=0.0, high=float("inf"), high_open=True)
    checks.check_finite_positive("limit", limit)

    def penalised(state, action, next_state):
        if not -next_state.shape[0] <= pitch_index < next_state.shape[0]:
            raise ValueError(f"pitch_index {pitch_index} is out of range for a state of "
                             f"shape {next_state.shape}")
        excess = jnp.maximum(jnp.abs(next_state[pitch_index]) - limit, 0.0)
        return reward(state, action, next_state) - weight * excess

    return penalised


class PathProjection(NamedTuple):
    """Closest point of a polyline to a position.

    Attributes:
      progress: `()` arc length from the first waypoint to the closest point.
      distance: `()` distance from the position to the closest point (the
        perpendicular distance when the closest point is inside a segment).
    """

    progress: jax.Array
    distance: jax.Array


def project_on_path(waypoints: jax.Array, position: jax.Array) -> PathProjection:
    """Projects a 2-D position on the polyline through `waypoints`.

    For segment `i` from `P_i` to `P_{i+1}`: `t_i = clip((p - P_i).d_i / |d_i|^2, 0, 1)`,
    `q_i = P_i + t_i d_i`; the closest segment `j = argmin_i |p - q_i|` gives
    `progress = sum_{i<j} |d_i| + t_j |d_j|` and `distance = |p - q_j|`.

    Args:
      waypoints: `(L + 1, 2)` polyline vertices, L >= 1 segments.
      position: `(2,)`.

    Returns:
      `PathProjection`.

    Example:
      >>> wp = jnp.array([[0.0, 0.0], [10.0, 0.0]])
      >>> pr = project_on_path(wp, jnp.array([3.0, -2.0]))
      >>> float(pr.progress), float(pr.distance)
      (3.0, 2.0)

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. V-B.
    """
    if waypoints.ndim != 2 or waypoints.shape[0] < 2 or waypoints.shape[1] != 2:
        raise ValueError(f"waypoints must have shape (L + 1, 2) with L >= 1, got {waypoints.shape}")
    start, seg = waypoints[:-1], waypoints[1:] - waypoints[:-1]
    seg_len2 = jnp.sum(seg ** 2, axis=-1)
    tiny = jnp.finfo(waypoints.dtype).tiny
    t = jnp.clip(jnp.sum((position - start) * seg, axis=-1) / jnp.maximum(seg_len2, tiny), 0, 1)
    closest = start + t[:, None] * seg
    dist = jnp.linalg.norm(position - closest, axis=-1)
    j = jnp.argmin(dist)
    seg_len = jnp.sqrt(seg_len2)
    before = jnp.concatenate([jnp.zeros(1, seg_len.dtype), jnp.cumsum(seg_len)[:-1]])
    return PathProjection(before[j] + t[j] * seg_len[j], dist[j])


def waypoint_reward(waypoints: jax.Array, position_indices: tuple[int, int] = (0, 1), *,
                    progress_weight: float = 1.0, distance_weight: float = 1.0,
                    ctrl_cost_weight: float = 0.0) -> Callable:
    """Trajectory following: reward progress along a polyline, penalise distance from it.

    `r(s, a, s') = c_p (progress(p') - progress(p)) - c_d distance(p') - w ||a||^2`,
    where `p = s[position_indices]` and progress / distance come from
    `project_on_path`.

    Args:
      waypoints: `(L + 1, 2)` polyline vertices.
      position_indices: the two state entries holding the (x, y) position.
      progress_weight: `c_p`.
      distance_weight: `c_d`.
      ctrl_cost_weight: `w`.

    Returns:
      `reward(state (n,), action (m,), next_state (n,)) -> ()`.

    Example:
      >>> r = waypoint_reward(jnp.array([[0.0, 0.0], [10.0, 0.0]]), distance_weight=0.5)
      >>> float(r(jnp.array([1.0, 0.0]), jnp.zeros(1), jnp.array([2.0, 1.0])))
      0.5

    References:
      Nagabandi et al. (2018), https://arxiv.org/abs/1708.02596, Sec. V-B.
    """
    waypoints = jnp.asarray(waypoints, jnp.float32)
    idx = jnp.asarray(position_indices)
    if idx.shape != (2,):
        raise ValueError(f"position_indices must hold two indices, got {position_indices}")
    project_on_path(waypoints, jnp.zeros(2, waypoints.dtype))  # validates the shape

    def reward(state, action, next_state):
        before = project_on_path(waypoints, state[idx])
        after = project_on_path(waypoints, next_state[idx])
        return (progress_weight * (after.progress - before.progress)
                - distance_weight * after.distance - ctrl_cost_weight * jnp.sum(action ** 2))

    return reward


def pendulum_reward(state: jax.Array, action: jax.Array, next_state: jax.Array) -> jax.Array:
    """Pendulum-v1's reward written on its observation `(cos th, sin th, th_dot)`.

    `r = -(th^2 + 0.1 th_dot^2 + 0.001 u^2)`, `th = atan2(sin th, cos th)` in
    `(-pi, pi]`, evaluated at the state before the step (as gymnax does).

    Args:
      state: `(3,)` observation.
      action: `(1,)` torque.
      next_state: `(3,)` (unused).

    Returns:
      `()` reward.

    Example:
      >>> float(pendulum_reward(jnp.array([1.0, 0.0, 0.0]), jnp.zeros(1), jnp.zeros(3)))
      -0.0

    References:
      gymnax `Pendulum-v1`; Brockman et al. (2016), OpenAI Gym.
    """
    theta = jnp.arctan2(state[1], state[0])
    return -(theta ** 2 + 0.1 * state[2] ** 2 + 0.001 * jnp.sum(action ** 2))


class Episode(NamedTuple):
    """One closed-loop episode.

    Attributes:
      observations: `(T + 1, n)`.
      actions: `(T, m)`.
      rewards: `(T,)` the environment's rewards.
    """

    observations: Any
    actions: Any
    rewards: Any


def gymnax_episode(env: Any, env_params: Any, policy: Callable, policy_state: Any,
                   key: jax.Array, num_steps: int) -> tuple[Episode, Any]:
    """A closed-loop episode of a gymnax environment in one `lax.scan` (jit / vmap it).

    `a_t, c_{t+1} = policy(c_t, o_t, k_t)`, `o_{t+1} = env.step_env(o_t, a_t)`;
    no auto-reset (the episode is exactly `num_steps` long).

    Args:
      env: a gymnax environment (e.g. `gymnax.make("Pendulum-v1")[0]`).
      env_params: its parameters.
      policy: `policy(carry, obs (n,), key) -> (action (m,), carry)`, pure.
      policy_state: the initial carry (e.g. a warm-start plan).
      key: PRNG key.
      num_steps: T (static).

    Returns:
      `(Episode, final policy carry)`.

    Example:
      >>> import gymnax
      >>> env, p = gymnax.make("Pendulum-v1")
      >>> pol = lambda c, o, k: (jax.random.uniform(k, (1,), minval=-2, maxval=2), c)
      >>> ep, _ = gymnax_episode(env, p, pol, None, jax.random.PRNGKey(0), 5)
      >>> ep.observations.shape
      (6, 3)

    References:
      Lange (2022), gymnax, https://github.com/RobertTLange/gymnax.
    """
    k_reset, k_run = jax.random.split(key)
    obs0, env_state = env.reset_env(k_reset, env_params)

    def step(carry, k):
        obs, env_state, pol = carry
        k_pol, k_env = jax.random.split(k)
        action, pol = policy(pol, obs, k_pol)
        obs_next, env_state, reward, _, _ = env.step_env(k_env, env_state, action, env_params)
        return (obs_next, env_state, pol), (obs_next, action, reward)

    (_, _, pol), (obs, actions, rewards) = lax.scan(
        step, (obs0, env_state, policy_state), jax.random.split(k_run, num_steps))
    return Episode(jnp.concatenate([obs0[None], obs]), actions, rewards), pol


def gymnasium_episode(env: Any, policy: Callable[[int, np.ndarray], np.ndarray], num_steps: int,
                      seed: int) -> Episode:
    """A closed-loop episode of a gymnasium environment, stepped in Python.

    Stops early if the environment terminates (truncation is ignored: the
    length is `num_steps`). Observations are returned as float32 numpy.

    Args:
      env: a gymnasium environment (e.g. `gymnasium.make("HalfCheetah-v5")`).
      policy: `policy(t, obs) -> action` (numpy in, numpy out).
      num_steps: T.
      seed: reset seed.

    Returns:
      `Episode` of numpy arrays.

    Example:
      >>> import gymnasium
      >>> env = gymnasium.make("Swimmer-v5")
      >>> ep = gymnasium_episode(env, lambda t, o: env.action_space.sample(), 4, seed=0)
      >>> ep.actions.shape
      (4, 2)

    References:
      Towers et al. (2024), Gymnasium, https://arxiv.org/abs/2407.17032.
    """
    obs, _ = env.reset(seed=int(seed))
    env.action_space.seed(int(seed))
    observations, actions, rewards = [np.asarray(obs, np.float32)], [], []
    for t in range(int(num_steps)):
        action = np.asarray(policy(t, observations[-1]), np.float32)
        obs, reward, terminated, _, _ = env.step(action)
        observations.append(np.asarray(obs, np.float32))
        actions.append(action)
        rewards.append(float(reward))
        if terminated:
            break
    return Episode(np.stack(observations), np.stack(actions), np.asarray(rewards, np.float32))

