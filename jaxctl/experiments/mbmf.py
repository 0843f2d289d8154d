"""Model-based to model-free (MB-MF, Nagabandi et al. 2018, Sec. VI): distil MPC, then NPG.

1. Behaviour cloning. A Gaussian MLP policy's mean `mu_theta(z(s))` fits
   the actions the MPC controller took in the aggregation rounds (the MPC
   rows of `Aggregation.buffer`): Adam on `1/2 mean ||mu_theta(z(s)) -
   a_MPC||^2` over random mini-batches. `z` is the NPG agent's observation
   normalisation, with the statistics of the MPC rows; they stay fixed
   through the DAgger refits (NPG then keeps updating them). The log
   standard deviation stays at its initial value.
2. DAgger (Ross et al. 2011). `dagger_iterations` times, the policy's mean
   drives the N environments, and the MPC controller labels every state it
   visits (one batched planner call per step, as in an aggregation round).
   The labelled states join the data and the policy is fitted again on all
   of it.
3. The fitted `npg_mujoco.State` starts `npg_mujoco.train`, which
   fine-tunes it with NPG. Its environment steps continue from those the
   model-based phase used (`Distilled.env_steps`).

Their settings for HalfCheetah (nn_dynamics `mbmf.py`) are a 64-64 tanh MLP,
Adam 1e-3 with batch 512 for 300 epochs, 3 DAgger iterations of 2 rollouts,
a policy standard deviation of 0.5, then TRPO with batches of 50k steps.

References:
  A. Nagabandi, G. Kahn, R. Fearing, S. Levine (2018), "Neural network
  dynamics for model-based deep reinforcement learning with model-free
  fine-tuning", ICRA, https://arxiv.org/abs/1708.02596.
  S. Ross, G. Gordon, D. Bagnell (2011), "A reduction of imitation learning
  and structured prediction to no-regret online learning", AISTATS.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxctl.envs.mbrl_tasks import FORWARD_TASKS, forward_velocity_reward
from jaxctl.experiments import npg_mujoco
from jaxctl.experiments.aggregation import PITCH_INDEX, Aggregation, step_together
from jaxctl.models.features import RunningStats, normalize_obs, running_stats_update
from jaxctl.models.policies import Policy
from jaxctl.util.checks import PyTree, check_finite_positive, check_int, check_positive_int


def behavior_clone(policy: Policy, params: PyTree, stats: RunningStats, observations: jax.Array,
                   actions: jax.Array, key: jax.Array, *, epochs: int, batch_size: int = 512,
                   learning_rate: float = 1e-3) -> tuple[PyTree, jax.Array]:
    """Fits the policy's mean to `actions` on `normalize_obs(stats, observations)`.

    `epochs * ceil(N / B)` Adam steps on `1/2 mean_b ||policy.mode(params, z_b) - a_b||^2`,
    mini-batches of B rows drawn uniformly with replacement, in one jitted `lax.scan`.
    Parameters the mean does not use (the log standard deviation) get zero gradients and
    stay as they are.

    Args:
      policy: a `Policy` (e.g. `gaussian_policy(n, m, hidden=(64, 64))`).
      params: its parameters.
      stats: the observation statistics `z` uses.
      observations: `(N, n)`, N >= 1.
      actions: `(N, m)`, the labels.
      key: PRNG key.
      epochs: passes' worth of steps (>= 1).
      batch_size: B (>= 1).
      learning_rate: Adam step (> 0).

    Returns:
      `(params, losses)`, `losses` the mini-batch loss of every step.
    """
    observations = jnp.asarray(observations, jnp.float32)
    actions = jnp.asarray(actions, jnp.float32)
    if observations.ndim != 2 or actions.ndim != 2 or len(observations) != len(actions):
        raise ValueError(f"observations and actions must be (N, n) and (N, m) with the same N, "
                         f"got {observations.shape} and {actions.shape}")
    if len(observations) == 0:
        raise ValueError("observations must hold at least one row, got N = 0")
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    check_finite_positive("learning_rate", learning_rate)
    steps = epochs * math.ceil(len(observations) / batch_size)
    return _clone(policy, steps, batch_size, float(learning_rate))(
        params, stats, observations, actions, key)


def _clone(policy: Policy, steps: int, batch_size: int, learning_rate: float):
    opt = optax.adam(learning_rate)

    @jax.jit
    def run(params, stats, observations, actions, key):
        z = normalize_obs(stats, observations)

        def loss(p, idx):
            pred = jax.vmap(policy.mode, (None, 0))(p, z[idx])
            return 0.5 * jnp.mean(jnp.sum((pred - actions[idx]) ** 2, -1))

        def step(carry, k):
            p, s = carry
            idx = jax.random.randint(k, (batch_size,), 0, len(z))
            value, grads = jax.value_and_grad(loss)(p, idx)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                           jax.random.split(key, steps))
        return params, losses

    return run


class Distilled(NamedTuple):
    """The outcome of `distill`.

    Attributes:
      state: the `npg_mujoco.State` holding the fitted policy and its statistics.
      returns: `(dagger_iterations, N)` the environment's return of each policy rollout,
        per DAgger iteration (the policy fitted on the labels gathered before it).
      labelled: states labelled after each fit (the first entry: the MPC rows).
      losses: the last mini-batch loss of each fit.
      env_steps: environment steps of the model-based phase: the aggregation buffer's
        transitions plus the DAgger rollouts.
      observations, labels: `(labelled[-1], n)` and `(labelled[-1], m)`, the states and the
        MPC actions the last fit used.
    """

    state: npg_mujoco.State
    returns: np.ndarray
    labelled: list[int]
    losses: list[float]
    env_steps: int
    observations: np.ndarray
    labels: np.ndarray


def distill(agg: Aggregation, cfg: npg_mujoco.MujocoSettings, key: jax.Array, *,
            dagger_iterations: int = 3, epochs: int = 300, batch_size: int = 512,
            learning_rate: float = 1e-3) -> Distilled:
    """Behaviour cloning on `agg`'s MPC rollouts, then DAgger with `agg`'s MPC as the labeller.

    Args:
      agg: an `Aggregation` after at least one `round()` (a fitted model, MPC rows).
      cfg: the NPG settings the policy is built for (`cfg.hidden`, `cfg.log_std_init`).
      key: PRNG key.
      dagger_iterations: policy rollouts and refits after the first fit (>= 0); each runs
        one rollout per environment of `agg`.
      epochs, batch_size, learning_rate: `behavior_clone`'s.

    Returns:
      `Distilled`; `npg_mujoco.train(cfg, ..., init_state=result.state)` fine-tunes it.
    """
    if agg.state is None or agg.buffer.count <= agg.random_count:
        raise ValueError("agg must have run at least one round() (a fitted model and MPC "
                         "rollouts to imitate)")
    dagger_iterations = check_int("dagger_iterations", dagger_iterations, low=0)
    n, m = agg.buffer.states.shape[1], agg.buffer.actions.shape[1]
    policy, init, _, _ = npg_mujoco.make_agent(cfg, n, m, np.asarray(agg.low),
                                              np.asarray(agg.high))
    k_init, k_fit, k_plan = jax.random.split(key, 3)
    rows = slice(agg.random_count, agg.buffer.count)
    observations, labels = agg.buffer.states[rows].copy(), agg.buffer.actions[rows].copy()
    state = init(k_init)
    stats = running_stats_update(state.stats, jnp.asarray(observations))
    params, fit_losses, labelled, returns, steps = state.params, [], [], [], agg.buffer.count
    mode = jax.jit(jax.vmap(policy.mode, (None, 0)))
    N, T = len(agg.envs), agg.settings.episode_steps
    for it in range(dagger_iterations + 1):
        params, losses = behavior_clone(policy, params, stats, observations, labels,
                                        jax.random.fold_in(k_fit, it), epochs=epochs,
                                        batch_size=batch_size, learning_rate=learning_rate)
        fit_losses.append(float(losses[-1]))
        labelled.append(len(observations))
        if it == dagger_iterations:
            break
        mpc, step_labels = agg.mpc_policy(jax.random.fold_in(k_plan, it))[0], []

        def act(t, obs):
            step_labels.append(mpc(t, obs))
            z = normalize_obs(stats, jnp.asarray(obs))
            return np.clip(np.asarray(mode(params, z)), agg.low, agg.high)

        seeds = [agg.seed * 100_000 + 50_000 + 1000 * it + i for i in range(N)]
        episodes, _ = step_together(agg.envs, act, T, seeds)
        stacked = np.stack(step_labels)  # (steps taken, N, m)
        new_obs = [ep.observations[:len(ep.actions)] for ep in episodes]
        new_labels = [stacked[:len(ep.actions), i] for i, ep in enumerate(episodes)]
        observations = np.concatenate([observations, *new_obs])
        labels = np.concatenate([labels, *new_labels])
        returns.append([float(np.sum(ep.rewards)) for ep in episodes])
        steps += sum(len(ep.actions) for ep in episodes)
    return Distilled(state._replace(params=params, stats=stats),
                     np.asarray(returns, np.float64).reshape(dagger_iterations, N), labelled,
                     fit_losses, steps, observations, labels)


class MBMFSettings(NamedTuple):
    """The model-based phase of `run` (defaults: Nagabandi et al. 2018's MB-MF, module doc).

    Attributes:
      rounds: aggregation rounds before distilling (each: a fit, then N MPC rollouts).
      environments: N, the environments stepped together.
      dagger_iterations, epochs, batch_size, learning_rate: `distill`'s.
    """

    rounds: int = 3
    environments: int = 10
    dagger_iterations: int = 3
    epochs: int = 300
    batch_size: int = 512
    learning_rate: float = 1e-3


# Nagabandi et al. (2018) fine-tune a 64-64 tanh Gaussian MLP policy with standard deviation 0.5.
POLICY = {"hidden": (64, 64), "log_std_init": math.log(0.5)}


def run(cfg: npg_mujoco.MujocoSettings, seed: int, iterations: int, settings: MBMFSettings,
        agg_settings: Any, *, max_seconds: float = float("inf"),
        callback: Callable | None = None) -> dict:
    """MB-MF on `cfg.task`: aggregation rounds, `distill`, then `npg_mujoco.train` from it.

    The planner's reward is the task's forward velocity minus its control cost
    (`FORWARD_TASKS`: HalfCheetah and Swimmer). The fine-tuning log's `env_steps` count the
    model-based phase's steps too, so it is compared with NPG from scratch step for step.

    Returns:
      A JSON-ready dict: `mpc_returns` (rounds x N), `dagger_returns`, `model_based_steps`,
      `model_based_seconds`, and `finetune`, the NPG log.
    """
    import gymnasium

    env_id = npg_mujoco.TASKS[cfg.task]
    if env_id not in FORWARD_TASKS:
        usable = sorted(k for k, v in npg_mujoco.TASKS.items() if v in FORWARD_TASKS)
        raise ValueError(f"task must be one of {usable} for MB-MF (a forward-velocity reward "
                         f"the planner can use), got {cfg.task!r}")
    check_positive_int("rounds", settings.rounds)
    check_positive_int("environments", settings.environments)
    task = FORWARD_TASKS[env_id]
    reward = forward_velocity_reward(task.velocity_index, task.ctrl_cost_weight)
    envs = [gymnasium.make(env_id) for _ in range(settings.environments)]
    start = time.perf_counter()
    key_agg, key_distill = jax.random.split(jax.random.PRNGKey(seed))
    agg = Aggregation(envs, agg_settings._replace(iterations=settings.rounds), reward, key_agg,
                      seed=seed, pitch_index=PITCH_INDEX.get(env_id))
    mpc = [agg.round(f"{cfg.task} seed {seed} round {r}").returns.tolist()
           for r in range(settings.rounds)]
    result = distill(agg, cfg, key_distill, dagger_iterations=settings.dagger_iterations,
                     epochs=settings.epochs, batch_size=settings.batch_size,
                     learning_rate=settings.learning_rate)
    model_seconds = time.perf_counter() - start
    for env in envs:
        env.close()
    def counted(log):
        return {**log, "env_steps": [s + result.env_steps for s in log["env_steps"]],
                "seconds": [s + model_seconds for s in log["seconds"]]}

    report = None if callback is None else (lambda it, log: callback(it, counted(log)))
    log = counted(npg_mujoco.train(cfg, seed, iterations, max_seconds, callback=report,
                                   init_state=result.state))
    return {"mpc_returns": mpc, "dagger_returns": result.returns.tolist(),
            "model_based_steps": result.env_steps, "model_based_seconds": model_seconds,
            "finetune": log}
