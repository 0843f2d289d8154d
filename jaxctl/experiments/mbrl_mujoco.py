"""Model-based RL on gymnasium MuJoCo tasks (Nagabandi et al. 2018): the
environment steps in Python, the planner is one jitted call per step.

HalfCheetah-v5 (and Swimmer-v5): forward return per aggregation iteration
against random, the horizon sweep (Nagabandi et al. 2018, Fig. 5), the
open-loop prediction error (Fig. 6) and the initial-data-size study (Fig. 7).

References:
  A. Nagabandi, G. Kahn, R. Fearing, S. Levine (2018), "Neural network
  dynamics for model-based deep reinforcement learning with model-free
  fine-tuning", ICRA.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxctl.control.planners as mpc
import jaxctl.control.simulate as _sim
import jaxctl.envs.mbrl_tasks as mbrl_tasks
from jaxctl.experiments.mbrl import Buffer, MBRLSettings, ModelTrainer, fit, planner_budget
from jaxctl.experiments.progress import Progress
import jaxctl.models.dynamics as dyn
import jaxctl.models.dynamics_training as dyn_train


def _make_actor(planner: str, cfg_horizon: int, num_samples: int, reward: Callable,
                low: jax.Array, high: jax.Array, warm_start: bool):
    """Jitted `act(model, obs, key, prev_plan) -> (action, next warm start, predicted return)`."""
    num_samples, options = planner_budget(planner, num_samples)
    fill = (low + high) / 2

    def act(model, obs, key, prev):
        res = mpc.PLANNERS[planner](
            jax.tree_util.Partial(dyn.dynamics_predict, model), reward, obs, key,
            num_samples=num_samples, horizon=cfg_horizon, action_low=low, action_high=high,
            init_actions=prev if warm_start else None, **options)
        return res.actions[0], _sim.shift_actions(res.actions, fill), res.total_reward

    return jax.jit(act)


def _mpc_episode(env, act, model, key, steps: int, seed: int, m: int, horizon: int,
                 bar: Progress | None = None, offset: int = 0):
    prev = [jnp.zeros((horizon, m), jnp.float32)]
    keys = np.asarray(jax.random.split(key, steps))

    def policy(t, obs):
        action, prev[0], _ = act(model, obs, keys[t], prev[0])
        if bar is not None and (t + 1) % 25 == 0:
            bar.update(offset + t + 1)
        return np.asarray(action)

    return mbrl_tasks.gymnasium_episode(env, policy, steps, seed)


def _forward_return(ep: mbrl_tasks.Episode) -> float:
    return float(np.sum(ep.rewards))


def mujoco_experiment(env_name: str, cfg: MBRLSettings, key: jax.Array, planner: str,
                      warm_start: bool, seed: int) -> dict:
    """Random data, `cfg.iterations` rounds of MPC + refits, the open-loop check and the
    studies `cfg` asks for (horizon sweep, planner comparison, initial data size)."""
    import gymnasium

    env = gymnasium.make(env_name)
    n, m = env.observation_space.shape[0], env.action_space.shape[0]
    low = jnp.asarray(env.action_space.low, jnp.float32)
    high = jnp.asarray(env.action_space.high, jnp.float32)
    task = mbrl_tasks.FORWARD_TASKS[env_name]
    reward = mbrl_tasks.forward_velocity_reward(task.velocity_index, task.ctrl_cost_weight)
    T = cfg.episode_steps
    short = env_name.split("-")[0].lower()
    keys = jax.random.split(key, 8)

    def random_episode(s, steps):
        rng = np.random.default_rng(s)
        return mbrl_tasks.gymnasium_episode(
            env, lambda t, o: rng.uniform(env.action_space.low, env.action_space.high), steps, s)

    largest_init = max((cfg.random_episodes, *cfg.data_sizes))
    capacity = largest_init * T + max(cfg.iterations, cfg.data_iterations) * T
    trainer = ModelTrainer(cfg)

    # Random data: also the random-policy baseline.
    random_eps = [random_episode(seed + i, T) for i in range(largest_init)]
    random_returns = np.array([_forward_return(e) for e in random_eps[:cfg.random_episodes]])
    print(f"  {short}: random policy return over {T} steps {random_returns.mean():.1f} "
          f"+- {random_returns.std():.1f}")

    def aggregation_run(num_random: int, iterations: int, steps: int, k: jax.Array,
                        label: str, act, horizon: int, epochs: int):
        buffer = Buffer(capacity, n, m)
        for e in random_eps[:num_random]:
            buffer.add(e.observations, e.actions)
        ks = jax.random.split(k, 3)
        state, _ = fit(trainer, trainer.initial_state(ks[0], buffer), buffer, ks[1], epochs,
                       f"{label}: train on {num_random} random rollouts")
        returns, seconds = [], []
        for it in range(iterations + 1):
            bar = Progress(steps, f"{label}: MPC rollout {it}")
            t0 = time.perf_counter()
            ep = _mpc_episode(env, act, state.model, jax.random.fold_in(ks[2], it), steps,
                              seed + 1000 + it, m, horizon, bar)
            bar.close()
            seconds.append((time.perf_counter() - t0) / max(len(ep.actions), 1))
            returns.append(_forward_return(ep))
            print(f"  {label} iteration {it}: return {returns[-1]:.1f} over {len(ep.actions)} steps")
            if it == iterations:
                break
            buffer.add(ep.observations, ep.actions)
            state, _ = fit(trainer, state, buffer, jax.random.fold_in(ks[1], it + 1),
                           cfg.retrain_epochs, f"{label}: retrain {it + 1}")
        return state.model, returns, seconds, buffer

    actors: dict[int, Callable] = {}

    def actor(h):
        if h not in actors:
            actors[h] = _make_actor(planner, h, cfg.num_samples, reward, low, high, warm_start)
        return actors[h]

    act = actor(cfg.horizon)
    t0 = time.perf_counter()
    model, returns, seconds, buffer = aggregation_run(
        cfg.random_episodes, cfg.iterations, T, keys[0], short, act, cfg.horizon, cfg.epochs)
    result: dict[str, Any] = {
        "episode_steps": T,
        "random_return_mean": float(random_returns.mean()),
        "random_return_std": float(random_returns.std()),
        "mpc_return_per_iteration": returns,
        "seconds_per_env_step": float(np.median(seconds)),
        "aggregation_seconds": time.perf_counter() - t0,
        "transitions": buffer.count,
    }

    # Fig. 6: open-loop prediction of the final model on a held-out random rollout.
    L = min(cfg.open_loop_steps, T)
    held = random_episode(seed + 10_000, L)
    pred = jax.jit(dyn_train.open_loop_prediction)(model, jnp.asarray(held.observations),
                                              jnp.asarray(held.actions))
    result["open_loop_error"] = np.asarray(pred.error).tolist()
    vi = task.velocity_index
    result["open_loop_velocity"] = {"true": np.asarray(pred.true[:, vi]).tolist(),
                                    "predicted": np.asarray(pred.predicted[:, vi]).tolist()}

    # Fig. 5: horizon sweep with the final model (same K), random return over the same length.
    if cfg.sweep_horizons:
        sweep = {}
        bar = Progress(len(cfg.sweep_horizons) * cfg.sweep_steps, f"{short}: horizon sweep")
        for i, h in enumerate(cfg.sweep_horizons):
            ep = _mpc_episode(env, actor(h), model, jax.random.fold_in(keys[1], h),
                              cfg.sweep_steps, seed + 2000, m, h, bar, i * cfg.sweep_steps)
            sweep[str(h)] = _forward_return(ep)
        bar.close()
        result["horizon_sweep"] = {"steps": cfg.sweep_steps, "returns": sweep,
                                   "random_return": float(np.mean([
                                       np.sum(e.rewards[:cfg.sweep_steps]) for e in random_eps]))}

    # The three planners on the final model (CEM: K/3 candidates x 3 refits; CEM and
    # MPPI warm-started from the shifted previous plan), same start state.
    if cfg.compare_steps:
        compare = {}
        for name in sorted(mpc.PLANNERS):
            act_p = _make_actor(name, cfg.horizon, cfg.num_samples, reward, low, high,
                                name != "random_shooting")
            ep = _mpc_episode(env, act_p, model, keys[3], cfg.compare_steps, seed + 3000, m,
                              cfg.horizon)
            compare[name] = _forward_return(ep)
            print(f"  {short} final model, {name}: return {compare[name]:.1f} over "
                  f"{cfg.compare_steps} steps")
        result["planner_returns_final_model"] = {"steps": cfg.compare_steps, "returns": compare}

    # Fig. 7: initial random data size vs aggregation.
    if cfg.data_sizes:
        study = {}
        for d in cfg.data_sizes:
            _, rets, _, _ = aggregation_run(d, cfg.data_iterations, cfg.data_steps,
                                            jax.random.fold_in(keys[2], d),
                                            f"{short} data={d}", act, cfg.horizon,
                                            cfg.epochs)
            study[str(d)] = rets
        result["data_size_study"] = {"steps": cfg.data_steps, "random_rollout_steps": T,
                                     "returns": study, "random_return": float(np.mean([
                                         np.sum(e.rewards[:cfg.data_steps]) for e in random_eps]))}
    env.close()
    return result

