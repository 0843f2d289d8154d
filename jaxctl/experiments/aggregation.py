"""Data aggregation with N environments stepped together (Nagabandi et al. 2018).

One round: fit the dynamics model `f(s, a) -> s' - s` on every transition
collected so far (the normalisation statistics are recomputed from the
whole buffer first, `ModelTrainer.run`), then run N MPC rollouts at once:
at every step the N observations are planned in ONE jitted call
(`jit_planner(...).batched`, a vmap over states and keys with the model and
the bounds shared), and each environment takes its own first action. The
new transitions join the buffer for the next round. Before the first round,
`settings.random_episodes` rollouts of uniform random actions fill it. The
environments are gymnasium ones (a list, a `SyncVectorEnv`, or one) or
gymnax environment objects (`GymnaxAsGymnasium`).

The recipe of Nagabandi et al. (2018) for HalfCheetah (their
`cheetah_forward.yaml`) is `MBRLSettings(hidden=(500,), num_samples=1000,
horizon=20, episode_steps=1000, random_episodes=10, iterations=9,
mpc_episodes=10, epochs=60, retrain_epochs=60, batch_size=512,
learning_rate=1e-3)` (`nagabandi_settings`), with random shooting and no
warm start. Where this loop differs from their released code:

* mini-batches draw uniformly from the whole buffer; theirs take 90% of
  each batch from the aggregated MPC data and 10% from the random data
  (`fraction_use_new: 0.9`);
* the normalisation statistics are recomputed from the whole buffer every
  round; theirs stay those of the random data;
* every MPC rollout joins the buffer; theirs keep 9 of the 10
  (`rollouts_forTraining: 9`), and their yaml runs 7 rounds, not 9;
* the planned action is executed as is; theirs adds `N(0, 0.005^2)` noise
  to it (`noise_actions_during_MPC_rollouts`);
* training noise is drawn afresh per mini-batch, in units of each column's
  spread (`jaxctl.models.dynamics_training.dynamics_train` explains the
  difference).

Posture: HalfCheetah-v5's observation is `qpos[1:]` followed by `qvel`, so
index 1 is `rooty`, the torso pitch in radians (Gymnasium documentation,
HalfCheetah-v5, "Observation Space": 0 rootz, 1 rooty). A step counts as
flipped when `|rooty| > pi/2` (the torso pitched past 90 degrees).

References:
  A. Nagabandi, G. Kahn, R. Fearing, S. Levine (2018), "Neural network
  dynamics for model-based deep reinforcement learning with model-free
  fine-tuning", ICRA, https://arxiv.org/abs/1708.02596.
  Towers et al. (2024), Gymnasium, https://arxiv.org/abs/2407.17032.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jaxctl.control.simulate as _sim
from jaxctl.control.planning import jit_planner
from jaxctl.envs.gymnax_gymnasium import GymnaxAsGymnasium
from jaxctl.envs.mbrl_tasks import Episode
from jaxctl.experiments.mbrl import (Buffer, MBRLSettings, ModelState, ModelTrainer, fit,
                                     planner_budget)
import jaxctl.models.dynamics as dyn

PITCH_INDEX = {"HalfCheetah-v5": 1}  # rooty in the default observation (see the module doc)


def nagabandi_settings(**changes: Any) -> MBRLSettings:
    """The HalfCheetah recipe of Nagabandi et al. (2018) (module doc), with `changes` applied."""
    return MBRLSettings(hidden=(500,), num_samples=1000, horizon=20, episode_steps=1000,
                        random_episodes=10, iterations=9, mpc_episodes=10, epochs=60,
                        retrain_epochs=60, batch_size=512, learning_rate=1e-3)._replace(**changes)


def environments(envs: Any) -> list:
    """The N environments of `envs`, as gymnasium-style objects; checks N >= 1 and equal sizes.

    `envs` is one environment or a list of them, gymnasium or gymnax (a
    gymnax object is wrapped in `GymnaxAsGymnasium` with its default
    parameters; wrap it yourself for others), or a
    `gymnasium.vector.SyncVectorEnv` (its `.envs`, stepped one by one here,
    so its auto-reset never applies).
    """
    if hasattr(envs, "step_env") or (hasattr(envs, "step") and not hasattr(envs, "envs")):
        envs = [envs]
    envs = [GymnaxAsGymnasium(e) if hasattr(e, "step_env") else e
            for e in getattr(envs, "envs", envs)]
    if not envs:
        raise ValueError("envs must hold at least one environment, got N = 0")
    shapes = [(e.observation_space.shape, e.action_space.shape) for e in envs]
    for i, s in enumerate(shapes):
        if s != shapes[0]:
            raise ValueError(f"envs must share observation and action shapes: environment 0 has "
                             f"{shapes[0]}, environment {i} has {s} (observation, action)")
    return envs


def step_together(envs: Sequence, policy: Callable[[int, np.ndarray], np.ndarray],
                  num_steps: int, seeds: Sequence[int]) -> tuple[list[Episode], float]:
    """Runs one closed-loop episode in each of N environments, the N observations decided together.

    `a_t = policy(t, o_t)` with `o_t (N, n)`, `a_t (N, m)`. An environment
    that terminates stops there (its episode is shorter; the others go on);
    truncation is ignored, the length is `num_steps`.

    Args:
      envs: N gymnasium-style environments (see `environments`).
      policy: `policy(t, observations (N, n)) -> actions (N, m)` (numpy).
      num_steps: T.
      seeds: N reset seeds.

    Returns:
      `(episodes, env_seconds)`: N `Episode`s of float32 numpy arrays and the
      wall time spent inside `env.step`.
    """
    obs = []
    for env, s in zip(envs, seeds, strict=True):
        env.action_space.seed(int(s))
        obs.append(np.asarray(env.reset(seed=int(s))[0], np.float32))
    trace = [([o], [], []) for o in obs]
    alive = np.ones(len(envs), bool)
    env_seconds = 0.0
    for t in range(int(num_steps)):
        actions = np.asarray(policy(t, np.stack([tr[0][-1] for tr in trace])), np.float32)
        t0 = time.perf_counter()
        for i in np.flatnonzero(alive):
            o, r, terminated, _, _ = envs[i].step(actions[i])
            trace[i][0].append(np.asarray(o, np.float32))
            trace[i][1].append(actions[i])
            trace[i][2].append(float(r))
            alive[i] = not terminated
        env_seconds += time.perf_counter() - t0
        if not alive.any():
            break
    episodes = [Episode(np.stack(o), np.stack(a), np.asarray(r, np.float32)) for o, a, r in trace]
    return episodes, env_seconds


def flipped_fraction(observations: np.ndarray, pitch_index: int | None) -> float:
    """Fraction of the steps after which `|observations[t, pitch_index]| > pi/2` (nan if no index)."""
    if pitch_index is None:
        return float("nan")
    pitch = np.asarray(observations)[1:, pitch_index]
    return float(np.mean(np.abs(pitch) > np.pi / 2)) if len(pitch) else float("nan")


def batched_actor(planner: str, settings: MBRLSettings, reward: Callable, low: jax.Array,
                  high: jax.Array, warm_start: bool, chunk_size: int | None):
    """`act(model, observations (N, n), key, prev (N, H, m)) -> (actions (N, m), next warm starts)`:
    one `plan.batched` call for the N states, key i = `split(key, N)[i]`."""
    k, options = planner_budget(planner, settings.num_samples)
    plan = jit_planner(planner, num_samples=k, horizon=settings.horizon, chunk_size=chunk_size,
                       **options)
    fill = (low + high) / 2

    def act(model, observations, key, prev):
        keys = jax.random.split(key, observations.shape[0])
        res = plan.batched(jax.tree_util.Partial(dyn.dynamics_predict, model), reward,
                           observations, keys, action_low=low, action_high=high,
                           init_actions=prev if warm_start else None)
        shifted = jax.vmap(_sim.shift_actions, in_axes=(0, None))(res.actions, fill)
        return res.actions[:, 0], shifted

    return act


class RoundResult(NamedTuple):
    """One aggregation round.

    Attributes:
      trained_on: transitions the model was fitted on before these rollouts.
      returns: `(N,)` the environment's return of each MPC rollout.
      flipped: `(N,)` fraction of steps with `|pitch| > pi/2` (nan without a pitch index).
      steps: environment steps of the N rollouts.
      plan_seconds: median wall time of one batched planner call (N states).
      env_seconds: wall time inside `env.step` for the N rollouts.
      rollout_seconds, train_seconds: wall time of the rollouts and of the fit.
      loss: last mini-batch training loss.
    """

    trained_on: int
    returns: np.ndarray
    flipped: np.ndarray
    steps: int
    plan_seconds: float
    env_seconds: float
    rollout_seconds: float
    train_seconds: float
    loss: float


class Aggregation:
    """The aggregation loop of Nagabandi et al. (2018) over N environments.

    `Aggregation(envs, settings, reward, key)` collects the random
    rollouts; each `round()` fits the model on the whole buffer and runs
    `len(envs)` MPC rollouts of `settings.episode_steps` with it
    (`settings.mpc_episodes` is not used: N is the number of environments).

    Args:
      envs: N environments: gymnasium or gymnax, in a list, a `SyncVectorEnv`, or
        one of them (`environments`).
      settings: `MBRLSettings` (sizes, training; `iterations` sizes the buffer).
      reward: the planner's `reward(s, a, s') -> ()`, pure JAX.
      key: PRNG key.
      seed: base of the environment reset seeds (distinct per round and rollout).
      planner: `random_shooting`, `cem` or `mppi`.
      warm_start: start each plan from the shifted previous one (off in Nagabandi et al. 2018).
      chunk_size: candidates per vmapped chunk (memory and cache; None: all K at once).
      pitch_index: observation index of the torso pitch for `flipped` (None: not measured).
      like: another `Aggregation` with the same settings, reward, planner and
        action bounds whose compiled trainer and planner are reused (seeds).

    Example:
      >>> import gymnasium
      >>> from jaxctl.envs.mbrl_tasks import forward_velocity_reward
      >>> envs = [gymnasium.make("Swimmer-v5") for _ in range(2)]
      >>> cfg = nagabandi_settings(hidden=(16,), num_samples=8, horizon=2, episode_steps=5,
      ...                          random_episodes=2, iterations=1, epochs=1, retrain_epochs=1)
      >>> agg = Aggregation(envs, cfg, forward_velocity_reward(3, 1e-4), jax.random.PRNGKey(0))
      >>> agg.random_returns.shape, agg.buffer.count
      ((2,), 10)

      Then `result = agg.round()` fits the model and returns the two MPC
      rollouts' `result.returns`, once per round.
    """

    def __init__(self, envs: Any, settings: MBRLSettings, reward: Callable, key: jax.Array, *,
                 seed: int = 0, planner: str = "random_shooting", warm_start: bool = False,
                 chunk_size: int | None = 100, pitch_index: int | None = None,
                 like: "Aggregation | None" = None):
        self.envs = environments(envs)
        self.settings, self.seed, self.pitch_index = settings, int(seed), pitch_index
        space = self.envs[0].action_space
        self.low = jnp.asarray(space.low, jnp.float32)
        self.high = jnp.asarray(space.high, jnp.float32)
        n, m = self.envs[0].observation_space.shape[0], space.shape[0]
        N, T = len(self.envs), settings.episode_steps
        self.buffer = Buffer((settings.random_episodes + settings.iterations * N) * T, n, m)
        if like is not None:
            self.trainer, self.act = like.trainer, like.act
        else:
            self.trainer = ModelTrainer(settings)
            chunk = None if chunk_size is None else min(chunk_size, settings.num_samples)
            self.act = batched_actor(planner, settings, reward, self.low, self.high, warm_start,
                                     chunk)
        self.key_init, self.key_fit, self.key_plan = jax.random.split(key, 3)
        self.state: ModelState | None = None
        self.rounds_done = 0
        self.random_returns = self._random_rollouts()
        self.random_count = self.buffer.count  # rows before it are random, after it MPC

    def _random_rollouts(self) -> np.ndarray:
        """Fills the buffer with `random_episodes` uniform-random rollouts; returns their returns."""
        rng = np.random.default_rng(self.seed)
        N, total, returns = len(self.envs), self.settings.random_episodes, []
        for start in range(0, total, N):
            envs = self.envs[:min(N, total - start)]
            policy = lambda t, o: rng.uniform(self.low, self.high, (len(o), self.low.shape[0]))
            seeds = [self.seed * 100_000 + start + i for i in range(len(envs))]
            episodes, _ = step_together(envs, policy, self.settings.episode_steps, seeds)
            for ep in episodes:
                self.buffer.add(ep.observations, ep.actions)
                returns.append(float(np.sum(ep.rewards)))
        return np.asarray(returns)

    def round(self, desc: str = "aggregation") -> RoundResult:
        """Fits the model on the buffer, runs the N MPC rollouts, adds them to the buffer."""
        cfg, r = self.settings, self.rounds_done
        t0 = time.perf_counter()
        if self.state is None:
            self.state = self.trainer.initial_state(self.key_init, self.buffer)
        epochs = cfg.epochs if r == 0 else cfg.retrain_epochs
        trained_on = self.buffer.count
        self.state, loss = fit(self.trainer, self.state, self.buffer,
                               jax.random.fold_in(self.key_fit, r), epochs,
                               f"{desc}: fit {r} on {trained_on} transitions")
        train_seconds = time.perf_counter() - t0

        policy, plan_times = self.mpc_policy(jax.random.fold_in(self.key_plan, r))
        t0 = time.perf_counter()
        seeds = [self.seed * 100_000 + 1000 * (r + 1) + i for i in range(len(self.envs))]
        episodes, env_seconds = step_together(self.envs, policy, cfg.episode_steps, seeds)
        rollout_seconds = time.perf_counter() - t0
        for ep in episodes:
            self.buffer.add(ep.observations, ep.actions)
        self.rounds_done += 1
        return RoundResult(
            trained_on, np.asarray([float(np.sum(ep.rewards)) for ep in episodes]),
            np.asarray([flipped_fraction(ep.observations, self.pitch_index) for ep in episodes]),
            sum(len(ep.actions) for ep in episodes),
            float(np.median(plan_times[1:] or plan_times)), env_seconds, rollout_seconds,
            train_seconds, loss)

    def mpc_policy(self, key: jax.Array) -> tuple[Callable[[int, np.ndarray], np.ndarray], list]:
        """The MPC controller of the current model as a `step_together` policy.

        Step t plans the N observations in one batched call with key `fold_in(key, t)`
        (from the shifted previous plan when warm-started). Returns the policy and the
        list it appends each call's wall time to."""
        N, H, m = len(self.envs), self.settings.horizon, self.low.shape[0]
        model, prev, seconds = self.state.model, [jnp.zeros((N, H, m), jnp.float32)], []

        def policy(t, obs):
            t0 = time.perf_counter()
            actions, prev[0] = self.act(model, jnp.asarray(obs), jax.random.fold_in(key, t),
                                        prev[0])
            actions = np.asarray(actions)
            seconds.append(time.perf_counter() - t0)
            return actions

        return policy, seconds

    def planner_seconds(self, num_states: int, repeats: int = 5) -> float:
        """Best wall time of one batched planner call on `num_states` copies of a buffer state
        (compiled first), with the current model."""
        if self.state is None:
            raise ValueError("planner_seconds needs a fitted model: call round() first")
        obs = jnp.asarray(np.repeat(self.buffer.states[:1], num_states, axis=0))
        prev = jnp.zeros((num_states, self.settings.horizon, self.low.shape[0]), jnp.float32)
        key = jax.random.PRNGKey(0)
        jax.block_until_ready(self.act(self.state.model, obs, key, prev))
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(self.act(self.state.model, obs, key, prev))
            best = min(best, time.perf_counter() - t0)
        return best
