"""One model, many paths (Nagabandi et al. 2018, Fig. 4): change only the reward.

One dynamics model of gymnasium Swimmer-v5, trained once on random
rollouts plus one aggregation round, then MPC follows a straight line, a
left turn and a right turn by planning with `waypoint_reward` for each path.

The observation keeps the root's planar position (`exclude_current_
positions_from_observation=False`: entries 0 and 1 are x and y). Dynamics do
not depend on where the swimmer is, and random rollouts barely leave the
origin, so the model is made translation-free: its inputs see the position
as 0 and its targets hold the position change,

    s' = shift(s) + f(zero(s), a),   zero(s) = s with s[0:2] = 0,
    shift(s) = s[0:2] padded with zeros,

(`add_relative` stores the data that way, `relative_dynamics` plans with
it). The planner's reward is progress along the path, minus the distance to
it and the heading error (`path_reward`; their Swimmer reward has the same
three terms, weights 200-500, 0.1-4 and 0.9-2, tuned per path, plus
penalties for bending the joints past 60 degrees). A path's score is the mean distance of the driven positions to the
polyline and the progress along it (`project_on_path`).

Their Swimmer setup (`swimmer_trajfollow.yaml`): 200 random rollouts, a
500-unit MLP, 70 epochs, random shooting with 5000 candidates, horizon 5
with actions held for 3 steps. Here: fewer, longer random rollouts, 1000
candidates, horizon 15, one action per step (`PathSettings`).

References:
  A. Nagabandi, G. Kahn, R. Fearing, S. Levine (2018), "Neural network
  dynamics for model-based deep reinforcement learning with model-free
  fine-tuning", ICRA, https://arxiv.org/abs/1708.02596, Sec. V-B, Fig. 4.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxctl.control.planning import jit_planner
from jaxctl.envs.mbrl_tasks import gymnasium_episode, project_on_path, waypoint_reward
from jaxctl.experiments.mbrl import Buffer, MBRLSettings, ModelTrainer, fit
import jaxctl.models.dynamics as dyn
from jaxctl.util.checks import check_finite_positive, check_positive_int

POSITION = slice(0, 2)  # x, y of the root when the positions stay in the observation
YAW = 2  # Swimmer-v5's root angle in the same observation (qpos[2])


def paths(length: float) -> dict[str, np.ndarray]:
    """The three paths from the origin along +x: straight (`length`), and a left and a right
    90-degree turn after `length / 2`, then `length / 2` sideways (three vertices each, so one
    compiled planner serves all)."""
    check_finite_positive("length", length)
    h = length / 2
    return {"straight": np.array([[0.0, 0.0], [h, 0.0], [length, 0.0]], np.float32),
            "left": np.array([[0.0, 0.0], [h, 0.0], [h, h]], np.float32),
            "right": np.array([[0.0, 0.0], [h, 0.0], [h, -h]], np.float32)}


def add_relative(buffer: Buffer, observations: np.ndarray, actions: np.ndarray) -> None:
    """Adds an episode with the position inputs zeroed and the position targets made changes."""
    start = buffer.count
    buffer.add(observations, actions)
    rows = slice(start, buffer.count)
    position = buffer.states[rows, POSITION].copy()
    buffer.states[rows, POSITION] = 0.0
    buffer.next_states[rows, POSITION] -= position


def _relative_step(model: dyn.DynamicsModel, state: jax.Array, action: jax.Array) -> jax.Array:
    position = state[POSITION]
    nxt = dyn.dynamics_predict(model, state.at[POSITION].set(0.0), action)
    return nxt.at[POSITION].add(position)


def relative_dynamics(model: dyn.DynamicsModel) -> jax.tree_util.Partial:
    """`(s, a) -> s'` of a translation-free model (module doc), a pytree for the planners."""
    return jax.tree_util.Partial(_relative_step, model)


class PathSettings(NamedTuple):
    """Sizes of `run`.

    Attributes:
      model: the dynamics model and its training (`MBRLSettings`: hidden, epochs, batch).
      random_episodes, random_steps: the random rollouts the model first learns from.
      episode_steps: steps of every path-following rollout.
      num_samples, horizon: random shooting's K and H.
      length: path length in metres.
      progress_weight, distance_weight: `waypoint_reward`'s weights (per metre).
      heading_weight: per radian of heading error (`path_reward`).
    """

    model: MBRLSettings = MBRLSettings(hidden=(500,), epochs=70, retrain_epochs=70)
    random_episodes: int = 100
    random_steps: int = 1000
    episode_steps: int = 1000
    num_samples: int = 1000
    horizon: int = 15
    length: float = 3.0
    progress_weight: float = 250.0
    distance_weight: float = 1.0
    heading_weight: float = 1.0


def _path_reward(waypoints, weights, state, action, next_state):
    progress_weight, distance_weight, heading_weight = weights[0], weights[1], weights[2]
    reward = waypoint_reward(waypoints, progress_weight=progress_weight,
                             distance_weight=distance_weight)
    seg = waypoints[1:] - waypoints[:-1]
    ends = jnp.cumsum(jnp.linalg.norm(seg, axis=-1))
    j = jnp.minimum(jnp.searchsorted(ends, project_on_path(waypoints, next_state[POSITION])
                                     .progress), len(seg) - 1)
    turn = next_state[YAW] - jnp.arctan2(seg[j, 1], seg[j, 0])
    off = jnp.abs(jnp.arctan2(jnp.sin(turn), jnp.cos(turn)))
    return reward(state, action, next_state) - heading_weight * off


def path_reward(waypoints: np.ndarray, settings: PathSettings) -> jax.tree_util.Partial:
    """`waypoint_reward` minus `heading_weight` times the heading error: the angle between the
    root's yaw after the step and the direction of the path segment nearest to it, wrapped to
    [0, pi]. The path and the weights are traced leaves, so one compile serves all paths."""
    weights = [settings.progress_weight, settings.distance_weight, settings.heading_weight]
    return jax.tree_util.Partial(_path_reward, jnp.asarray(waypoints, jnp.float32),
                                 jnp.asarray(weights, jnp.float32))


def follow(plan, model: dyn.DynamicsModel, env, waypoints: np.ndarray, settings: PathSettings,
           key: jax.Array, seed: int):
    """One MPC rollout along `waypoints` with `plan` (a `jit_planner`); `(Episode, mean distance
    to the path, final progress along it)`."""
    reward = path_reward(waypoints, settings)
    low = jnp.asarray(env.action_space.low, jnp.float32)
    high = jnp.asarray(env.action_space.high, jnp.float32)
    dynamics = relative_dynamics(model)

    def policy(t, obs):
        res = plan(dynamics, reward, jnp.asarray(obs), jax.random.fold_in(key, t),
                   action_low=low, action_high=high)
        return np.asarray(res.actions[0])

    ep = gymnasium_episode(env, policy, settings.episode_steps, seed)
    wp = jnp.asarray(waypoints)
    proj = jax.vmap(lambda p: project_on_path(wp, p))(jnp.asarray(ep.observations[:, POSITION]))
    return ep, float(jnp.mean(proj.distance)), float(proj.progress[-1])


def run(settings: PathSettings, seed: int, env_name: str = "Swimmer-v5") -> dict:
    """Trains one model (random rollouts, then one aggregation round of the three paths) and
    follows each path with it; JSON-ready per-path positions, distances and progress."""
    import gymnasium

    for name in ("random_episodes", "random_steps", "episode_steps"):
        check_positive_int(name, getattr(settings, name))
    start = time.perf_counter()
    env = gymnasium.make(env_name, exclude_current_positions_from_observation=False)
    n, m = env.observation_space.shape[0], env.action_space.shape[0]
    key_model, key_fit, key_plan = jax.random.split(jax.random.PRNGKey(seed), 3)
    buffer = Buffer(settings.random_episodes * settings.random_steps
                    + 3 * settings.episode_steps, n, m)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    for i in range(settings.random_episodes):
        ep = gymnasium_episode(env, lambda t, o: rng.uniform(low, high), settings.random_steps,
                               seed * 100_000 + i)
        add_relative(buffer, ep.observations, ep.actions)
    trainer = ModelTrainer(settings.model)
    state = trainer.initial_state(key_model, buffer)
    state, _ = fit(trainer, state, buffer, key_fit, settings.model.epochs, f"{env_name}: fit 0")
    targets = paths(settings.length)
    plan = jit_planner("random_shooting", num_samples=settings.num_samples,
                       horizon=settings.horizon, chunk_size=min(100, settings.num_samples))
    out = {"env_name": env_name, "seed": seed, "paths": {}, "waypoints": {}}
    for r, rnd in enumerate(("aggregation", "evaluation")):
        for j, (name, wp) in enumerate(targets.items()):
            ep, distance, progress = follow(plan, state.model, env, wp, settings,
                                            jax.random.fold_in(key_plan, 10 * r + j),
                                            seed * 100_000 + 90_000 + j)
            if rnd == "aggregation":
                add_relative(buffer, ep.observations, ep.actions)
            else:
                out["paths"][name] = {"positions": ep.observations[:, POSITION].tolist(),
                                      "mean_distance": distance, "progress": progress,
                                      "return": float(np.sum(ep.rewards))}
                out["waypoints"][name] = wp.tolist()
        if rnd == "aggregation":
            state, _ = fit(trainer, state, buffer, jax.random.fold_in(key_fit, 1),
                           settings.model.retrain_epochs, f"{env_name}: fit 1")
    env.close()
    out["transitions"] = buffer.count
    out["seconds"] = time.perf_counter() - start
    return out
